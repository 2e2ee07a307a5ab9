"""Text encoder throughput in each runtime (torch and ONNX Runtime, fp32 and int8), and the embedding cache on a
rerun.

The four runtimes (``REC_TEXT_MODEL=<model>``, ``+int8``, ``+onnx``, ``+onnx-int8``) are timed alternately in the
same run (best of ``ROUNDS`` each), so the speed-up ratios survive the drift of a shared machine, and each one's
vectors are compared with torch fp32's (cosine, mean and min). Captions are generated here from a small word list:
short, hashtag-laden, a realistic length mix.
"""

from __future__ import annotations

import random
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.common import BenchRow, stopwatch
from rec_core.model.text_encoder import WHEEL_MODEL, TextEncoder, video_text
from rec_core.model.text_features import embed_videos_text
from rec_core.settings import Settings

NAME = "bench_text"
# Label -> suffix of REC_TEXT_MODEL (rec_core.model.text_encoder.RUNTIMES); the first is the reference.
RUNS = {"fp32": "", "int8": "+int8", "onnx fp32": "+onnx", "onnx int8": "+onnx-int8"}
N_CAPTIONS = 2_000
ROUNDS = 2
CACHED_REPEATS = 5

_WORD_TEXT = (
    "my first try at baking sourdough bread homemade pasta recipe easy dinner in 10 minutes "
    "leg day gym workout squat deadlift new record morning routine skincare makeup tutorial "
    "cat dog puppy funny moments fail compilation prank on my brother dance challenge trend "
    "football goal skills messi ronaldo highlights travel vlog paris tokyo beach sunset hike "
    "guitar cover piano song singing live minecraft speedrun league of legends ranked game "
    "coding tips python budget money saving hacks diy home decor garden plants outfit ideas"
)
_TAG_TEXT = (
    "fyp foryou viral food baking fitness gym beauty pets cats dogs comedy dance football "
    "travel music gaming minecraft tech diy fashion asmr learnontiktok"
)
_WORDS, _TAGS = _WORD_TEXT.split(), _TAG_TEXT.split()


def synthetic_videos(n: int, seed: int = 7) -> pa.Table:
    rng = random.Random(seed)
    captions, hashtags = [], []
    for _ in range(n):
        # Mostly short captions with a long tail, like real feeds.
        length = min(40, max(2, int(rng.lognormvariate(2.0, 0.6))))
        captions.append(" ".join(rng.choices(_WORDS, k=length)))
        hashtags.append(rng.sample(_TAGS, k=rng.randint(0, 6)))
    return pa.table(
        {
            "video_id": [f"bench-{i:06d}" for i in range(n)],
            "caption": captions,
            "hashtags": pa.array(hashtags, pa.list_(pa.string())),
        }
    )


def run() -> list[BenchRow]:
    videos = synthetic_videos(N_CAPTIONS)
    pairs = zip(videos["caption"].to_pylist(), videos["hashtags"].to_pylist(), strict=True)
    texts = [video_text(c, h) for c, h in pairs]
    with stopwatch() as imports:
        import torch
        import transformers  # noqa: F401  (timed apart from the model load)
    encoders: dict[str, TextEncoder] = {}
    loads: dict[str, float] = {}
    for name, suffix in RUNS.items():
        with stopwatch() as load:
            encoders[name] = TextEncoder(WHEEL_MODEL + suffix)
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
    note = f"{N_CAPTIONS} synthetic captions, {threads} torch threads, best of {ROUNDS}"
    rows = [BenchRow(NAME, "import torch + transformers", imports[0], "s", "once per process")]
    for name, suffix in RUNS.items():
        rows.append(BenchRow(NAME, f"model load, {name}", loads[name], "s", f"REC_TEXT_MODEL={WHEEL_MODEL}{suffix}"))
    for name in RUNS:
        rows.append(BenchRow(NAME, f"encode throughput, {name}", rates[name], "captions/s", note))
    for name in list(RUNS)[1:]:
        cosines = (vectors["fp32"] * vectors[name]).sum(axis=1)
        rows += [
            BenchRow(NAME, f"{name} speed-up over fp32", rates[name] / rates["fp32"], "x", "same run, alternated"),
            BenchRow(NAME, f"cosine fp32 vs {name}, mean", float(cosines.mean()), "", f"min {cosines.min():.4f}"),
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
