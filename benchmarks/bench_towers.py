"""The two towers at inference, fp32 against int8 dynamic quantization: speed and quality.

A model is trained on the tiny synthetic world (seed 42, its own data root under
``data/bench/towers-world``, so caption embeddings are cached after the first
run), then quantized with :func:`rec_core.model.towers.quantize_int8`. Both towers are
timed on prebuilt inputs (``N_ROWS`` videos and users, the world's rows
repeated), fp32 and int8 alternately in the same run, best of ``ROUNDS``; the
quality change is the held-out metrics of both models on the same split, the
cosine between their video vectors and the overlap of their top-50 lists.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.common import BenchRow, stopwatch
from rec_core.eval.evaluation import load_lake_data, two_tower_metrics
from rec_core.model.towers import TwoTower, quantize_int8
from rec_core.model.training import TrainConfig, prepare, scorer, train
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data

NAME = "bench_towers"
N_ROWS = 20_000
CHUNK = 4096
ROUNDS = 3
TOP_K = 50
CONFIG = TrainConfig(epochs=6, batch_size=256, patience=3, seed=3)


def _time(fn, inputs: list) -> float:
    with torch.inference_mode(), stopwatch() as t:
        for b in inputs:
            fn(b)
    return t[0]


def run() -> list[BenchRow]:
    base = Settings.load()
    settings = base.override(data_dir=base.paths.data_dir / "bench" / "towers-world")
    generate_data(settings, "tiny", seed=42)
    data = load_lake_data(settings.paths, settings.batch)
    prepared = prepare(
        data.split, data.videos, data.interactions, data.follows, data.text(settings.paths, settings.model)
    )
    with stopwatch() as fit:
        fp32: TwoTower = train(prepared, CONFIG).model.eval()
    with stopwatch() as quant:
        int8 = quantize_int8(fp32)

    video_rows = np.arange(N_ROWS) % len(prepared.catalogue)
    user_rows = np.arange(N_ROWS) % len(prepared.histories)
    videos = [prepared.catalogue.batch(video_rows[a : a + CHUNK], prepared.stats) for a in range(0, N_ROWS, CHUNK)]
    users = [
        prepared.histories.batch(user_rows[a : a + CHUNK], prepared.catalogue, prepared.stats)
        for a in range(0, N_ROWS, CHUNK)
    ]
    times: dict[tuple[str, str], list[float]] = {}
    for model in (fp32, int8):  # warm-up
        _time(model.video, videos[:1])
        _time(model.user, users[:1])
    for _ in range(ROUNDS):
        for name, model in (("fp32", fp32), ("int8", int8)):
            times.setdefault(("video", name), []).append(_time(model.video, videos))
            times.setdefault(("user", name), []).append(_time(model.user, users))
    rate = {key: N_ROWS / min(t) for key, t in times.items()}

    quality = {name: two_tower_metrics(model, prepared, on="test") for name, model in (("fp32", fp32), ("int8", int8))}
    vec32, score32 = scorer(fp32, prepared)
    vec8, score8 = scorer(int8, prepared)
    cosines = (vec32 * vec8).sum(1).numpy()
    warm = np.flatnonzero(data.split.user_has_train)
    top32 = torch.topk(score32(warm), TOP_K, dim=1).indices.numpy()
    top8 = torch.topk(score8(warm), TOP_K, dim=1).indices.numpy()
    overlap = np.mean([len(np.intersect1d(a, b)) / TOP_K for a, b in zip(top32, top8, strict=True)])

    threads = torch.get_num_threads()
    note = f"{N_ROWS:,} rows in chunks of {CHUNK}, {threads} torch threads, best of {ROUNDS}"
    rows = [
        BenchRow(NAME, "train tiny world (fp32)", fit[0], "s", f"{len(data.split.train):,} interactions"),
        BenchRow(NAME, "quantize both towers", quant[0], "s"),
    ]
    for tower in ("video", "user"):
        rows += [
            BenchRow(NAME, f"{tower} tower throughput, fp32", rate[(tower, "fp32")], f"{tower}s/s", note),
            BenchRow(NAME, f"{tower} tower throughput, int8 dynamic", rate[(tower, "int8")], f"{tower}s/s", note),
            BenchRow(
                NAME,
                f"{tower} tower int8 speed-up over fp32",
                rate[(tower, "int8")] / rate[(tower, "fp32")],
                "x",
                "same run, alternated",
            ),
        ]
    rows += [
        BenchRow(NAME, "video vector cosine fp32 vs int8, mean", float(cosines.mean()), "", f"min {cosines.min():.4f}"),
        BenchRow(NAME, f"top-{TOP_K} overlap fp32 vs int8", float(overlap), "", f"{len(warm)} warm users"),
    ]
    for metric in ("recall@20", "recall@50", "ndcg@20"):
        a, b = quality["fp32"][metric], quality["int8"][metric]
        rows.append(BenchRow(NAME, f"test {metric}, int8 (fp32)", b, "", f"fp32 {a:.4f}, change {b - a:+.4f}"))
    return rows
