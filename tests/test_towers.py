"""Unit tests of the tower modules, the loss, the time-aware catalogue features and int8 inference."""

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rec_core.model.features import NEW_VIDEO_COLUMNS, FeatureStats, _gather_ranges, build_catalogue
from rec_core.model.store import ModelStore, ModelStoreError
from rec_core.model.towers import (
    LEGACY_VIDEO_DENSE,
    USER_DENSE,
    VIDEO_DENSE,
    TowerConfig,
    TwoTower,
    UserBatch,
    VideoBatch,
    mean_bag,
    quantize_int8,
    sampled_softmax_loss,
)
from rec_core.model.vocabs import HASHED_LOOKUP, Vocabs


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


def test_another_positive_of_the_same_user_is_not_a_negative() -> None:
    g = torch.Generator().manual_seed(3)
    u = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    v = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    users = torch.tensor([5, 5, 8])  # rows 0 and 1 are two watches of one user
    got = sampled_softmax_loss(u, v, torch.tensor([1, 2, 3]), None, 0.1, user_idx=users)
    logits = u @ v.T / 0.1
    logits[0, 1] = logits[1, 0] = float("-inf")
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(logits, torch.arange(3)))
    assert got < sampled_softmax_loss(u, v, torch.tensor([1, 2, 3]), None, 0.1)  # one fewer negative each


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
    # Mapped (fixed-width) ids: an id that only starts with one of them is not it.
    mapped = np.array(["a", "c", "e"])
    np.testing.assert_array_equal(Vocabs.lookup(mapped, np.array(["c", "cx", "e", "ab"], dtype=object)), [2, 0, 3, 0])


@given(
    lengths=st.lists(st.integers(0, 6), max_size=8),
    seed=st.integers(0, 2**16),
    sparse=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_mean_bag_is_embedding_bags_mean_without_index_zero(lengths: list[int], seed: int, sparse: bool) -> None:
    """The towers' pooling is the rule ``F.embedding_bag(mode="mean", padding_idx=0)`` states, forward and backward:
    unknown ids (0) left out of each mean, empty and all-unknown bags zeros, no gradient to row 0."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 5, (sum(lengths),), generator=gen)  # many zeros: bags of unknown ids alone happen
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(lengths)[:-1]]) if lengths else [], dtype=torch.long)
    table = torch.randn(5, 3, generator=gen)
    weights = [table.clone().requires_grad_() for _ in range(2)]
    pooled = mean_bag(weights[0], idx, offsets, sparse=sparse)
    reference = (
        torch.nn.functional.embedding_bag(idx, weights[1], offsets, mode="mean", padding_idx=0, sparse=sparse)
        if lengths
        else weights[1].new_zeros((0, 3))
    )
    torch.testing.assert_close(pooled, reference, rtol=0, atol=1e-6)
    if lengths:
        upstream = torch.randn(len(lengths), 3, generator=gen)
        (pooled * upstream).sum().backward()
        (reference * upstream).sum().backward()
        grads = [w.grad.to_dense() if w.grad.is_sparse else w.grad for w in weights]
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)
        assert not grads[0][0].any()


def test_gather_ranges() -> None:
    flat = np.array([10, 11, 12, 13, 14])
    values, offsets = _gather_ranges(flat, np.array([3, 0, 2]), np.array([5, 0, 3]))
    np.testing.assert_array_equal(values, [13, 14, 12])
    np.testing.assert_array_equal(offsets, [0, 2, 2])


def test_extra_negatives_join_the_softmax_and_never_mask_the_positive_away() -> None:
    g = torch.Generator().manual_seed(2)
    u = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    v = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    extra = torch.nn.functional.normalize(torch.randn(2, 4, generator=g), dim=1)
    log_q, extra_q = torch.log(torch.tensor([0.5, 0.2, 0.1])), torch.log(torch.tensor([0.01, 0.02]))
    ids, extra_ids = torch.tensor([1, 2, 3]), torch.tensor([9, 2])  # extra video 2 is row 1's own positive
    got = sampled_softmax_loss(u, v, ids, log_q, 0.1, extra, extra_ids, extra_q)
    logits = torch.cat([u @ v.T / 0.1 - log_q, u @ extra.T / 0.1 - extra_q], dim=1)
    logits[1, 4] = float("-inf")
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(logits, torch.arange(3)))
    assert got > sampled_softmax_loss(u, v, ids, log_q, 0.1)  # more negatives, a harder softmax


def test_int8_towers_agree_with_fp32_and_leave_the_original_alone() -> None:
    cfg = TowerConfig(embedding_dim=16, text_dim=32, n_items=5, n_creators=3, n_hashtags=4)
    torch.manual_seed(0)
    model = TwoTower(cfg).eval()
    before = {k: t.clone() for k, t in model.state_dict().items()}
    int8 = quantize_int8(model)
    assert any("quantized" in type(m).__module__ for m in int8.modules())
    assert not any("quantized" in type(m).__module__ for m in model.modules())
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[key])
    with torch.inference_mode():
        videos, users = _video_batch(8, cfg), _user_batch(8, cfg)
        cos_v = (model.video(videos) * int8.video(videos)).sum(1)
        cos_u = (model.user(users) * int8.user(users)).sum(1)
        assert not torch.equal(model.video(videos), int8.video(videos))  # really a different computation
    assert cos_v.min() > 0.98 and cos_u.min() > 0.98, (cos_v, cos_u)


def _catalogue_world() -> tuple[pl.DataFrame, pl.DataFrame]:
    day = 86_400_000
    videos = pl.DataFrame(
        {
            "video_id": ["a", "b", "c"],
            "creator_id": ["x", "x", "c"],
            "hashtags": [["t"], [], ["t"]],
            "duration_s": [10.0, 20.0, 30.0],
            "width": [1080, 1080, 1920],
            "height": [1920, 1920, 1080],
            "creator_followers": [5, 5, 0],
            "creator_likes": [7, 7, 0],
            "created_ms": [0, 10 * day, 30 * day],
        }
    )
    # Video a: watched on days 1, 2, 20 and 25 (liked on day 2); b: on day 12; c: never before as-of.
    events = pl.DataFrame(
        {
            "video_id": ["a", "a", "a", "a", "b", "c"],
            "ts_ms": [1 * day, 2 * day, 20 * day, 25 * day, 12 * day, 40 * day],
            "liked": [False, True, False, False, False, True],
            "commented": [False] * 6,
            "shared": [False] * 6,
        }
    )
    return videos, events


@settings(max_examples=40, deadline=None)
@given(
    vocab=st.sets(st.text(alphabet="abé日0_", max_size=4), max_size=30),
    ids=st.lists(st.text(alphabet="abé日0_", max_size=6), max_size=40),
)
def test_vocab_lookup_is_the_index_rule_whether_ids_are_searched_or_hashed(vocab: set[str], ids: list[str]) -> None:
    """A few ids are searched, many are hashed: both give each id its place in the sorted vocabulary plus one, 0
    for an id it does not hold (code-point order, as Python sorts strings)."""
    ordered = np.array(sorted(vocab), dtype=object)
    rule = {v: i + 1 for i, v in enumerate(ordered)}
    expected = [rule.get(i, 0) for i in ids]
    few = Vocabs.lookup(ordered, np.array(ids, dtype=object))
    assert few.tolist() == expected and few.dtype == np.int64
    # The same vocabulary as fixed-width strings (mapped from a snapshot), searched in its own width: ids longer
    # than that width, whose cut-off prefix it may hold, are still not found.
    fixed = Vocabs.lookup(np.array(ordered.tolist(), dtype=str), np.array(ids, dtype=object))
    assert fixed.tolist() == expected and fixed.dtype == np.int64
    repeats = -(-HASHED_LOOKUP // max(len(ids), 1))  # enough rows for the hashed path
    many = Vocabs.lookup(ordered, np.array(ids * repeats, dtype=object))
    assert many.tolist() == expected * repeats and many.dtype == np.int64
    # Mapped from a snapshot's files, and looked up with fixed-width ids (a mapped catalogue's), few or many.
    with tempfile.TemporaryDirectory() as folder:
        whole = Vocabs(ordered, ordered[:1], ordered[:0])
        for name, data in whole.mapped_files().items():
            (Path(folder) / name).write_bytes(data)
        mapped = Vocabs.load(Path(folder))
        assert isinstance(mapped.items, np.memmap) and mapped.sizes == whole.sizes
        for times in (1, repeats):
            found = Vocabs.lookup(mapped.items, np.array(ids * times, dtype=str))
            assert found.tolist() == expected * times and found.dtype == np.int64


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_videos=st.integers(1, 30), n_events=st.integers(0, 400))
def test_a_catalogue_counted_at_its_instant_is_the_timelines_to_the_bit(
    seed: int, n_videos: int, n_events: int
) -> None:
    """The embed shards and evaluations count each video's events at as-of; training sorts them into a timeline
    for earlier instants too. Both must give the towers the very same dense features (the batch's vectors and the
    training's would drift apart otherwise): events on window edges, repeated instants, flags in any mix."""
    day = 86_400_000
    rng = np.random.default_rng(seed)
    as_of = 200 * day
    ids = [f"v{i:03d}" for i in range(n_videos)]
    videos = pl.DataFrame(
        {
            "video_id": ids,
            "creator_id": [f"c{i % 4}" for i in range(n_videos)],
            "hashtags": [["t"]] * n_videos,
            "duration_s": rng.uniform(1, 60, n_videos),
            "width": [1080] * n_videos,
            "height": [1920] * n_videos,
            "creator_followers": [3] * n_videos,
            "creator_likes": [2] * n_videos,
            "created_ms": rng.integers(0, as_of + 5 * day, n_videos),
        }
    )
    # Instants on the day grid hit the windows' edges (as_of - d days) exactly; a few fall after as-of.
    ts = np.where(
        rng.random(n_events) < 0.5, rng.integers(0, 205, n_events) * day, rng.integers(0, as_of + day, n_events)
    )
    events = pl.DataFrame(
        {
            "video_id": [ids[i] for i in rng.integers(0, n_videos, n_events)],
            "ts_ms": ts.astype(np.int64),
            "liked": rng.random(n_events) < 0.3,
            "commented": rng.random(n_events) < 0.2,
            "shared": rng.random(n_events) < 0.1,
        },
        schema_overrides={"video_id": pl.String},
    )
    vocabs = Vocabs(np.array(ids, dtype=object), np.array(["c0"], dtype=object), np.array(["t"], dtype=object))
    text = np.zeros((n_videos, 4), dtype=np.float32)
    kept = build_catalogue(videos, events, text, vocabs, as_of, timeline=True)
    counted = build_catalogue(videos, events, text, vocabs, as_of)
    assert counted.timeline is None and kept.timeline is not None
    np.testing.assert_array_equal(counted.dense, kept.dense)
    np.testing.assert_array_equal(kept.dense_at(np.arange(n_videos), as_of), kept.dense)
    with pytest.raises(ValueError, match="no timeline"):
        counted.dense_at(np.arange(n_videos), as_of)


def test_catalogue_features_as_of_any_earlier_instant() -> None:
    day = 86_400_000
    videos, events = _catalogue_world()
    vocabs = Vocabs(np.array(["a", "b"], dtype=object), np.array(["x"], dtype=object), np.array([], dtype=object))
    as_of = 30 * day
    cat = build_catalogue(videos, events, np.zeros((3, 4), dtype=np.float32), vocabs, as_of, timeline=True)
    col = {name: i for i, name in enumerate(VIDEO_DENSE)}
    # At the cut: a has 4 views (one liked), two in the last 30 days, none in the last 1 or 7 days.
    a = cat.dense[0]
    assert np.expm1(a[col["log_views"]]) == pytest.approx(4)
    assert a[col["like_rate"]] == pytest.approx(1 / (4 + 20))
    assert np.expm1(a[col["age_days"]]) == pytest.approx(30)
    assert [round(float(np.expm1(a[col[f"log_views_{d}d"]]))) for d in (1, 7, 30, 180)] == [0, 1, 4, 4]
    # c is posted at the cut and its day-40 view is in the future: it looks brand new.
    assert np.all(cat.dense[2][NEW_VIDEO_COLUMNS] == 0)
    np.testing.assert_allclose(cat.dense_at(np.arange(3), as_of), cat.dense)
    np.testing.assert_allclose(cat.dense_at(np.arange(3), 100 * day), cat.dense)  # nothing after the cut is known
    # On day 2 (before that day's watch) a had one view, a day earlier, and was two days old.
    then = cat.dense_at(np.array([0, 1]), np.array([2 * day, 11 * day]))
    assert np.expm1(then[0, col["log_views"]]) == pytest.approx(1)
    assert np.expm1(then[0, col["log_views_1d"]]) == pytest.approx(1)  # [day 1, day 2)
    assert np.expm1(then[0, col["log_views_7d"]]) == pytest.approx(1)
    assert np.expm1(then[0, col["age_days"]]) == pytest.approx(2)
    assert np.all(then[1, NEW_VIDEO_COLUMNS[:4]] == 0) and np.expm1(then[1, col["age_days"]]) == pytest.approx(1)
    # Fixed columns do not move with time.
    static = [col[c] for c in ("log_duration", "log_aspect", "log_creator_followers", "log_creator_likes")]
    np.testing.assert_allclose(then[:, static], cat.dense[:2][:, static])


def test_as_new_hides_id_and_views_and_the_creator_only_on_a_creators_first_video() -> None:
    videos, events = _catalogue_world()
    vocabs = Vocabs(np.array(["a", "b"], dtype=object), np.array(["c", "x"], dtype=object), np.array([], dtype=object))
    cat = build_catalogue(videos, events, np.zeros((3, 4), dtype=np.float32), vocabs, 30 * 86_400_000)
    np.testing.assert_array_equal(cat.creator_debut, [True, False, True])
    stats = FeatureStats.fit(cat.dense, np.zeros((1, len(USER_DENSE))))
    rows = np.array([0, 1, 2])
    batch = cat.batch(rows, stats, as_new=np.array([True, True, False]))
    np.testing.assert_array_equal(batch.item_idx, [0, 0, 0])  # c has no id: never watched before the cut
    np.testing.assert_array_equal(batch.creator_idx, [0, 2, 1])  # b is x's second video: x is known by then
    new = stats.video(np.zeros((1, len(VIDEO_DENSE)), dtype=np.float32))[0, NEW_VIDEO_COLUMNS]
    np.testing.assert_allclose(batch.dense[:2, NEW_VIDEO_COLUMNS], np.tile(new, (2, 1)), rtol=1e-5)
    np.testing.assert_allclose(cat.batch(rows, stats).dense[2], batch.dense[2])


def test_a_model_saved_with_fewer_dense_inputs_still_loads_and_scores(tmp_path: Path) -> None:
    videos, events = _catalogue_world()
    vocabs = Vocabs(np.array(["a", "b"], dtype=object), np.array(["x"], dtype=object), np.array(["t"], dtype=object))
    cat = build_catalogue(videos, events, np.zeros((3, 8), dtype=np.float32), vocabs, 30 * 86_400_000)
    legacy = FeatureStats.fit(cat.dense[:, :LEGACY_VIDEO_DENSE], np.zeros((2, len(USER_DENSE))))
    cfg = TowerConfig(embedding_dim=8, text_dim=8, n_items=3, n_creators=2, n_hashtags=2)
    model = TwoTower(dataclasses.replace(cfg, video_dense=LEGACY_VIDEO_DENSE)).eval()
    store = ModelStore(tmp_path)
    store.save("m1", model, vocabs, legacy, {}, {})
    config = json.loads((tmp_path / "m1" / "config.json").read_text())
    del config["tower"]["video_dense"]  # what a version written before the field existed has
    (tmp_path / "m1" / "config.json").write_text(json.dumps(config))
    loaded = store.load("m1")
    assert loaded.model.cfg.video_dense == LEGACY_VIDEO_DENSE
    with torch.inference_mode():
        got = loaded.model.video(cat.batch(np.arange(3), loaded.stats))
        want = model.video(cat.batch(np.arange(3), legacy))
    torch.testing.assert_close(got, want)
    assert store.load("m1", quantize=True).model.video(cat.batch(np.arange(3), loaded.stats)).shape == (3, 8)


def _mapped_from(path: Path, tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s bytes lie in a mapping of the file at ``path`` (Linux: /proc/self/maps)."""
    ptr, target = tensor.data_ptr(), str(path.resolve())
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *_, name = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in span.split("-"))
        if name == target and lo <= ptr < hi:
            return True
    return False


def test_a_loaded_version_maps_its_weights_and_never_writes_them(tmp_path: Path) -> None:
    cfg = TowerConfig(embedding_dim=8, text_dim=8, n_items=50, n_creators=5, n_hashtags=4)
    model = TwoTower(cfg).eval()
    vocabs = Vocabs(np.array(["a"], dtype=object), np.array(["x"], dtype=object), np.array(["t"], dtype=object))
    stats = FeatureStats.fit(np.zeros((2, len(VIDEO_DENSE))), np.zeros((2, len(USER_DENSE))))
    store = ModelStore(tmp_path)
    store.save("m1", model, vocabs, stats, {}, {})
    weights = tmp_path / "m1" / "weights.safetensors"
    before = weights.read_bytes()

    loaded = store.load("m1").model
    table = loaded.video.item_emb.weight
    # Shared by every process that loads the version (API workers), not a copy on each one's heap.
    assert _mapped_from(weights, table)
    assert table.data_ptr() == loaded.user.item_emb.weight.data_ptr()  # the towers' tied id table, once
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
    with torch.no_grad():
        table.add_(1.0)  # a private mapping: the process's own copy of the page, not the file
    assert weights.read_bytes() == before

    tensors = safetensors.torch.load_file(weights)
    del tensors[sorted(tensors)[0]]
    safetensors.torch.save_file(tensors, weights)
    with pytest.raises(ModelStoreError, match="weights missing"):
        store.load("m1")
