"""Text encoder throughput, fp32 against int8, and the embedding cache on a rerun.

fp32 and int8 are timed alternately in the same run (best of ``ROUNDS`` each), so
the speed-up ratio survives the drift of a shared machine. Captions are generated
here from a small word list: short, hashtag-laden, a realistic length mix.
"""

from __future__ import annotations

import random
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.common import BenchRow, stopwatch
from rec_core.model.text_encoder import TextEncoder, video_text
from rec_core.model.text_features import embed_videos_text
from rec_core.settings import Settings

NAME = "bench_text"
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
    with stopwatch() as load_fp32:
        fp32 = TextEncoder()
    with stopwatch() as load_int8:
        int8 = TextEncoder(quantize=True)
    for enc in (fp32, int8):  # warm-up: first-call allocations and kernel selection
        enc.encode(texts[:64], show_progress=False)

    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(ROUNDS):
        for name, enc in (("fp32", fp32), ("int8", int8)):
            with stopwatch() as t:
                vectors[name] = enc.encode(texts, show_progress=False)
            times[name].append(t[0])
    fp32_rate = N_CAPTIONS / min(times["fp32"])
    int8_rate = N_CAPTIONS / min(times["int8"])
    cosines = (vectors["fp32"] * vectors["int8"]).sum(axis=1)

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
    return [
        BenchRow(NAME, "import torch + transformers", imports[0], "s", "once per process"),
        BenchRow(NAME, "model load, fp32", load_fp32[0], "s"),
        BenchRow(NAME, "model load + quantize, int8", load_int8[0], "s"),
        BenchRow(NAME, "encode throughput, fp32", fp32_rate, "captions/s", note),
        BenchRow(NAME, "encode throughput, int8 dynamic", int8_rate, "captions/s", note),
        BenchRow(NAME, "int8 speed-up over fp32", int8_rate / fp32_rate, "x", "same run, alternated"),
        BenchRow(NAME, "cosine fp32 vs int8, mean", float(cosines.mean()), "", f"min {cosines.min():.4f}"),
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
