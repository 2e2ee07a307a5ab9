"""The tiled product + selection against the whole product selected by top_k_rows: the same indices and values,
ties, exclusions and rows that defeat the sample included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rec_core.feed.candidates import ExclusionCSR, iter_top_k
from rec_core.feed.tiled_top_k import product_top_k
from rec_core.feed.top_k_kernel import SAMPLE_RUN, sample_runs, top_k_rows

N = 20_000


def _expected(scores: np.ndarray, csr: ExclusionCSR, k: int) -> tuple[np.ndarray, np.ndarray]:
    masked = scores.copy()
    for r in range(len(scores)):
        masked[r, csr.row(r)] = -np.inf
    indices, values, _ = top_k_rows(masked, k)
    return indices, values


def _one_row_at_a_time(scores: np.ndarray, csr: ExclusionCSR, k: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Row r's scores as the product of a 1-d user (1.0) with 1-d videos (the row): any float, NaN and -inf too."""
    out_i, out_v = [], []
    for r in range(len(scores)):
        videos_t = torch.from_numpy(np.ascontiguousarray(scores[r : r + 1]))
        excluded = csr.row(r)
        i, v, _ = product_top_k(
            torch.ones((1, 1)), videos_t, k, np.array([0, len(excluded)], dtype=np.int64), excluded, tile
        )
        out_i.append(i[0])
        out_v.append(v[0])
    return np.array(out_i), np.array(out_v)


@pytest.mark.parametrize(("k", "tile"), [(1, 8192), (40, 3000), (1500, 8192), (1500, 1024)])
def test_tiles_select_what_the_whole_product_selects(k: int, tile: int) -> None:
    rng = np.random.default_rng(11)
    scores = rng.standard_normal((10, N)).astype(np.float32)
    scores[1] = np.round(scores[1], 1)  # ties everywhere, the k-th place included
    scores[2] = 0.25  # every value tied
    scores[3, : N - k // 2] = -np.inf  # fewer than k finite scores: made again in full
    step = N // sample_runs(N, k)  # row 4: the best 3k values all lie outside the sampled runs
    outside = np.flatnonzero(np.arange(N) % step >= SAMPLE_RUN)[: 3 * k]
    scores[4] = -1.0
    scores[4, outside] = rng.uniform(1, 2, len(outside)).astype(np.float32)
    zeros = rng.choice(N, 2000, replace=False)  # row 5: 0.0 and -0.0 are equal, so in index order
    scores[5] = -1.0
    scores[5, zeros] = np.where(rng.random(2000) < 0.5, 0.0, -0.0).astype(np.float32)
    scores[6, rng.choice(N, 500, replace=False)] = np.nan  # NaN counts as -inf
    users, videos = [], []
    # Exclusions: none; the row's best 200 (the sample's top among them); all but k - 1 of the row (too few left);
    # every tile's first and last video; random ones.
    rows = [
        np.zeros(0, dtype=np.int64),
        np.argsort(-scores[1], kind="stable")[:200],
        np.arange(N)[k - 1 :] if k > 1 else np.arange(N),
        np.zeros(0, dtype=np.int64),
        np.concatenate([np.arange(0, N, tile), np.arange(tile - 1, N, tile)]),
        rng.choice(N, 3000, replace=False),
        rng.choice(N, 10, replace=False),
        np.arange(N)[::2],
        np.zeros(0, dtype=np.int64),
        rng.choice(N, N - k, replace=False),  # exactly k left
    ]
    for r, excluded in enumerate(rows):
        users += [r] * len(excluded)
        videos += list(excluded)
    csr = ExclusionCSR.from_pairs(np.array(users, dtype=np.int64), np.array(videos, dtype=np.int64), len(scores))
    want_i, want_v = _expected(scores, csr, k)
    got_i, got_v = _one_row_at_a_time(scores, csr, k, tile)
    assert np.array_equal(got_i, want_i)
    assert np.array_equal(got_v, want_v)


def test_a_batch_of_users_selects_what_the_whole_product_selects() -> None:
    """Many rows in one call, the sample's threshold per row, exclusions per row, a last tile shorter than the rest."""
    rng = np.random.default_rng(3)
    users = rng.standard_normal((300, 16)).astype(np.float32)
    videos = rng.standard_normal((N + 123, 16)).astype(np.float32)
    scores = users @ videos.T
    csr = ExclusionCSR.from_pairs(rng.integers(0, 300, 30_000), rng.integers(0, N + 123, 30_000), 300)
    for k, tile in [(500, 8192), (1500, 4000)]:
        got_i, got_v, again = product_top_k(
            torch.from_numpy(users), torch.from_numpy(videos.T.copy()), k, csr.indptr, csr.indices, tile
        )
        # The product in one piece, as BLAS sums it, may round differently from the tiles' products: compare with
        # the tiles' own scores, the order of each score's sum being the same in both.
        want_i, want_v = _expected(_tiled_scores(users, videos, tile), csr, k)
        assert np.array_equal(got_i, want_i) and np.array_equal(got_v, want_v)
        assert again == 0  # random scores never defeat the sample
        assert np.allclose(got_v, np.take_along_axis(scores, got_i, axis=1), atol=1e-5)


def _tiled_scores(users: np.ndarray, videos: np.ndarray, tile: int) -> np.ndarray:
    u = torch.from_numpy(users)
    v = torch.from_numpy(videos.T.copy())
    return torch.cat([u @ v[:, lo : lo + tile] for lo in range(0, v.shape[1], tile)], dim=1).numpy()


def test_candidates_keep_subsets_and_exclusions_with_tiles() -> None:
    """iter_top_k's subsets (the fresh videos) and its main list agree with a selection from the whole product."""
    rng = np.random.default_rng(5)
    users = rng.standard_normal((40, 8)).astype(np.float32)
    videos = rng.standard_normal((9_000, 8)).astype(np.float32)
    csr = ExclusionCSR.from_pairs(rng.integers(0, 40, 4_000), rng.integers(0, 9_000, 4_000), 40)
    subset = np.sort(rng.choice(9_000, 700, replace=False))
    (batch,) = list(iter_top_k(users, videos, 300, exclude=csr, batch_size=64, subsets=[(subset, 30)]))
    full = _tiled_scores(users, videos, 8192)
    masked = full.copy()
    for u in range(40):
        masked[u, csr.row(u)] = -np.inf
    subset_scores = (torch.from_numpy(users) @ torch.from_numpy(videos[subset].T.copy())).numpy()
    for u in range(40):
        want = np.lexsort((np.arange(9_000), -masked[u]))[:300]
        assert batch.indices[u].tolist() == want.tolist()
        sub_scores = subset_scores[u].copy()
        sub_scores[np.isin(subset, csr.row(u))] = -np.inf
        sub_want = subset[np.lexsort((subset, -sub_scores))][:30]
        assert batch.subsets[0][0][u].tolist() == sub_want.tolist()


def test_tiled_selection_refuses_what_it_cannot_select() -> None:
    with pytest.raises(ValueError, match="k=6 for rows of 5"):
        product_top_k(torch.ones((2, 1)), torch.ones((1, 5)), 6, np.zeros(3, dtype=np.int64), np.zeros(0, np.int64))
    indices, values, again = product_top_k(
        torch.ones((0, 1)), torch.ones((1, 5)), 3, np.zeros(1, dtype=np.int64), np.zeros(0, np.int64)
    )
    assert indices.shape == values.shape == (0, 3) and again == 0


def test_the_threshold_is_taken_after_the_exclusions() -> None:
    """Rows whose best 2,000 videos are excluded (a heavy watcher's history, which a trained model scores highest):
    a threshold from the sample with them in would sit above every video left, and every row would be made again."""
    rng = np.random.default_rng(8)
    users = rng.standard_normal((64, 16)).astype(np.float32)
    videos = rng.standard_normal((N, 16)).astype(np.float32)
    scores = _tiled_scores(users, videos, 8192)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :2000]
    csr = ExclusionCSR.from_pairs(np.repeat(np.arange(64), 2000), best.ravel(), 64)
    got_i, got_v, again = product_top_k(
        torch.from_numpy(users), torch.from_numpy(videos.T.copy()), 500, csr.indptr, csr.indices
    )
    want_i, want_v = _expected(scores, csr, 500)
    assert np.array_equal(got_i, want_i) and np.array_equal(got_v, want_v)
    assert again == 0
