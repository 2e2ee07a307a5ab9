"""The towers' engagement head in numpy (rec_core.feed.engagement), which the batch, the API and the offline
evaluation all run: it must compute the torch module's function, and the same floats for a user's list whether
that list goes through alone (a live page) or inside a block of users (the batch, the evaluation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rec_core.feed.engagement import LIST_ROWS, EngagementHead
from rec_core.model.towers import EngagementHead as TorchHead


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_the_numpy_head_computes_the_torch_heads_function(approximate: str) -> None:
    torch.manual_seed(3)
    module = TorchHead(16).eval()
    module.mlp[2].approximate = approximate
    with torch.no_grad():  # a trained head's LayerNorm is not the identity it starts as
        module.mlp[1].weight.uniform_(0.5, 1.5)
        module.mlp[1].bias.uniform_(-0.2, 0.2)
    head = EngagementHead.of(module)
    rng = np.random.default_rng(0)
    users = rng.standard_normal((5, 16)).astype(np.float32)
    videos = rng.standard_normal((5, 7, 16)).astype(np.float32)
    with torch.inference_mode():
        expected = module(
            torch.from_numpy(np.repeat(users, 7, axis=0)), torch.from_numpy(videos.reshape(-1, 16))
        ).numpy()
    np.testing.assert_allclose(head(users, videos).reshape(-1, 3), expected, rtol=1e-5, atol=2e-6)


def test_a_list_gets_the_same_floats_alone_and_inside_a_block_of_users() -> None:
    """Lists of many users through ``over_lists`` (blocks of LIST_ROWS) against each list alone: bit for bit, or
    the ranker could order one user's candidates differently offline, in the batch and live."""
    torch.manual_seed(4)
    head = EngagementHead.of(TorchHead(32).eval())
    rng = np.random.default_rng(1)
    videos = rng.standard_normal((500, 32)).astype(np.float32)
    users = rng.standard_normal((2 * LIST_ROWS + 3, 32)).astype(np.float32)
    items = rng.integers(0, 500, (len(users), 60))
    items[2, 40:] = -1  # a short list
    valid = items >= 0

    def gather(codes: np.ndarray) -> np.ndarray:
        return videos[codes]

    together = head.over_lists(users, items, valid, gather)
    assert together.shape == (len(users), 60, 3) and np.isnan(together[2, 40:]).all()
    assert np.isfinite(together[valid]).all()
    for r in range(len(users)):
        alone = head.over_lists(users[r : r + 1], items[r : r + 1], valid[r : r + 1], gather)
        np.testing.assert_array_equal(alone[0], together[r], err_msg=f"row {r}")
