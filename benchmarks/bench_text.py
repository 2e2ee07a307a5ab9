"""Text encoder throughput in each runtime (torch and ONNX Runtime, fp32 and int8) and each batch engine that
stands in for torch fp32 (ONNX Runtime's graph, bf16 autocast), and the embedding cache on a rerun.

The four runtimes (``REC_TEXT_MODEL=<model>``, ``+int8``, ``+onnx``, ``+onnx-int8``) and the two stand-ins
(``REC_TEXT_BATCH_ENGINE=onnx|bf16``) are timed alternately in the same run (best of ``ROUNDS`` each), so the speed-up
ratios survive the drift of a shared machine, and each one's vectors are compared with torch fp32's (cosine, mean and
min). The captions are a sample of the default synthetic world's, the texts the pipeline encodes. bf16 is only fast
on a CPU with AMX tiles or AMD's AVX512-BF16 (``native_bf16``, printed in the notes).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.common import BenchRow, stopwatch
from rec_core.data.lake import Lake
from rec_core.model.text_encoder import (
    WHEEL_MODEL,
    TextEncoder,
    amx_available,
    cpu_vendor,
    native_bf16,
    video_text,
)
from rec_core.model.text_features import embed_videos_text
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data

NAME = "bench_text"
# Label -> (suffix of REC_TEXT_MODEL (rec_core.model.text_encoder.RUNTIMES), batch engine); the first is the reference.
RUNS = {
    "fp32": ("", "torch"),
    "int8": ("+int8", "torch"),
    "onnx fp32": ("+onnx", "torch"),
    "onnx int8": ("+onnx-int8", "torch"),
    "bf16 stand-in": ("", "bf16"),
}
N_CAPTIONS = 2_000
ROUNDS = 2
CACHED_REPEATS = 5


def world_videos(n: int, seed: int = 7) -> pa.Table:
    """``n`` videos sampled from the default synthetic world (seed 42): the captions and hashtags the pipeline
    encodes, with their real length mix."""
    with tempfile.TemporaryDirectory(prefix="bench-text-world-") as tmp:
        settings = Settings.of(data_dir=Path(tmp))
        generate_data(settings, "default", seed=42)
        videos = Lake(settings.paths.lake_dir).read("videos", columns=["video_id", "caption", "hashtags"])
    rows = np.sort(np.random.default_rng(seed).choice(videos.num_rows, size=min(n, videos.num_rows), replace=False))
    return videos.take(pa.array(rows))


def run() -> list[BenchRow]:
    videos = world_videos(N_CAPTIONS)
    pairs = zip(videos["caption"].to_pylist(), videos["hashtags"].to_pylist(), strict=True)
    texts = [video_text(c, h) for c, h in pairs]
    with stopwatch() as imports:
        import torch
        import transformers  # noqa: F401  (timed apart from the model load)
    encoders: dict[str, TextEncoder] = {}
    loads: dict[str, float] = {}
    for name, (suffix, engine) in RUNS.items():
        with stopwatch() as load:
            encoders[name] = TextEncoder(WHEEL_MODEL + suffix, engine=engine)
        loads[name] = load[0]
    for enc in encoders.values():  # warm-up: first-call allocations and kernel selection
        enc.encode(texts[:64], show_progress=False)

    times: dict[str, list[float]] = {name: [] for name in encoders}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(ROUNDS):
        for name, enc in encoders.items():
            with stopwatch() as t:
                vectors[name] = enc.encode(texts, show_progress=False)
            times[name].append(t[0])
    rates = {name: N_CAPTIONS / min(seconds) for name, seconds in times.items()}
    fp32 = encoders["fp32"]

    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        settings = Settings.of(data_dir=Path(tmp))
        _, cold = embed_videos_text(videos, settings.paths, settings.model, fp32)
        warm_seconds = []
        for _ in range(CACHED_REPEATS):
            _, warm = embed_videos_text(videos, settings.paths, settings.model)  # encoder=None: must not load a model
            assert warm.misses == 0, warm
            warm_seconds.append(warm.seconds)

    threads = torch.get_num_threads()
    native = "AMX tiles" if amx_available() else f"AVX512-BF16 ({cpu_vendor()})" if native_bf16() else "none"
    note = (
        f"{N_CAPTIONS} captions of the default world, {threads} torch threads, best of {ROUNDS}, native bf16: {native}"
    )
    rows = [BenchRow(NAME, "import torch + transformers", imports[0], "s", "once per process")]
    for name, (suffix, engine) in RUNS.items():
        setting = f"REC_TEXT_MODEL={WHEEL_MODEL}{suffix}, engine {engine} (runs as {encoders[name].runs_as})"
        rows.append(BenchRow(NAME, f"model load, {name}", loads[name], "s", setting))
    for name in RUNS:
        rows.append(BenchRow(NAME, f"encode throughput, {name}", rates[name], "captions/s", note))
    for name in list(RUNS)[1:]:
        cosines = (vectors["fp32"] * vectors[name]).sum(axis=1)
        rows += [
            BenchRow(NAME, f"{name} speed-up over fp32", rates[name] / rates["fp32"], "x", "same run, alternated"),
            BenchRow(NAME, f"cosine fp32 vs {name}, mean", float(cosines.mean()), "", f"min {cosines.min():.6f}"),
        ]
    return [
        *rows,
        BenchRow(
            NAME,
            "cache cold run (encode + write), fp32",
            N_CAPTIONS / cold.seconds,
            "videos/s",
            f"{cold.encoded} distinct texts encoded",
        ),
        BenchRow(
            NAME,
            "cache fully hit rerun",
            N_CAPTIONS / statistics.median(warm_seconds),
            "videos/s",
            f"median of {CACHED_REPEATS}, no model load",
        ),
    ]
