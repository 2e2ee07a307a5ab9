"""Pure-logic unit tests of the tower modules and the loss."""

import numpy as np
import torch

from rec_core.features import Vocabs, _gather_ranges
from rec_core.towers import USER_DENSE, VIDEO_DENSE, TowerConfig, TwoTower, UserBatch, VideoBatch, sampled_softmax_loss


def _video_batch(n: int, cfg: TowerConfig) -> VideoBatch:
    g = torch.Generator().manual_seed(0)
    return VideoBatch(
        text=torch.randn(n, cfg.text_dim, generator=g),
        item_idx=torch.arange(n) % cfg.n_items,
        creator_idx=torch.zeros(n, dtype=torch.long),
        hashtag_idx=torch.tensor([1, 2, 1], dtype=torch.long),
        hashtag_offsets=torch.tensor([0] + [3] * (n - 1), dtype=torch.long),
        dense=torch.randn(n, len(VIDEO_DENSE), generator=g),
    )


def _user_batch(n: int, cfg: TowerConfig) -> UserBatch:
    empty = torch.zeros(0, dtype=torch.long)
    offsets = torch.zeros(n, dtype=torch.long)
    return UserBatch(
        watched_text=torch.randn(n, cfg.text_dim),
        liked_text=torch.zeros(n, cfg.text_dim),
        watched_idx=torch.tensor([1, 2], dtype=torch.long),
        watched_offsets=torch.tensor([0] + [2] * (n - 1), dtype=torch.long),
        liked_idx=empty,
        liked_offsets=offsets,
        followed_idx=empty,
        followed_offsets=offsets,
        dense=torch.randn(n, len(USER_DENSE)),
    )


def test_towers_output_unit_vectors_in_one_space() -> None:
    cfg = TowerConfig(embedding_dim=16, text_dim=8, n_items=5, n_creators=3, n_hashtags=4)
    model = TwoTower(cfg).eval()
    v = model.video(_video_batch(4, cfg))
    u = model.user(_user_batch(3, cfg))
    assert v.shape == (4, 16) and u.shape == (3, 16)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(u.norm(dim=1), torch.ones(3))


def test_id_dropout_only_in_training() -> None:
    cfg = TowerConfig(embedding_dim=8, text_dim=4, n_items=5, n_creators=2, n_hashtags=3, id_dropout=1.0)
    model = TwoTower(cfg)
    batch = _video_batch(4, cfg)
    model.eval()
    with_ids = model.video(batch)
    model.train()
    without_ids = model.video(batch)
    assert not torch.allclose(with_ids, without_ids)
    # With every id dropped, the item id no longer matters.
    other = _video_batch(4, cfg)
    other.item_idx = torch.tensor([4, 3, 2, 1])
    torch.testing.assert_close(model.video(other), without_ids)


def test_sampled_softmax_prefers_the_diagonal() -> None:
    u = torch.eye(3)
    good = sampled_softmax_loss(u, torch.eye(3), torch.tensor([1, 2, 3]), None, 0.1)
    bad = sampled_softmax_loss(u, torch.eye(3)[[1, 2, 0]], torch.tensor([1, 2, 3]), None, 0.1)
    assert good < 0.01 < bad


def test_duplicate_item_in_batch_is_not_its_own_negative() -> None:
    u = torch.eye(2)
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # the same video twice
    same = sampled_softmax_loss(u[[0, 0]], v, torch.tensor([7, 7]), None, 0.1)
    assert same < 1e-4  # without the mask this would be log(2)


def test_log_q_correction_subtracts_log_q_from_every_column() -> None:
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=1)
    v = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=1)
    log_q = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    expected = torch.nn.functional.cross_entropy(u @ v.T / 0.2 - log_q, torch.arange(4))
    got = sampled_softmax_loss(u, v, torch.tensor([1, 2, 3, 4]), log_q, 0.2)
    torch.testing.assert_close(got, expected)
    # A popular positive (large q) costs more than the same pair would without correction.
    assert got != sampled_softmax_loss(u, v, torch.tensor([1, 2, 3, 4]), None, 0.2)


def test_vocab_lookup_maps_unknown_to_zero() -> None:
    vocab = np.array(["a", "c", "e"], dtype=object)
    np.testing.assert_array_equal(Vocabs.lookup(vocab, np.array(["c", "b", "e", "z"], dtype=object)), [2, 0, 3, 0])


def test_gather_ranges() -> None:
    flat = np.array([10, 11, 12, 13, 14])
    values, offsets = _gather_ranges(flat, np.array([3, 0, 2]), np.array([5, 0, 3]))
    np.testing.assert_array_equal(values, [13, 14, 12])
    np.testing.assert_array_equal(offsets, [0, 2, 2])
