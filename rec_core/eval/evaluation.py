"""Evaluation of a two-tower model against the baselines on one temporal split.

The live lake is loaded once into a :class:`LakeData`; every model (a freshly
trained one, the current one, an old version) is scored over the full
catalogue on the same held-out split, and the result has the shape other tools
read::

    {"dataset": ..., "split": {...}, "models": {"two_tower": {...}, "most_pop": {...}, ...}}
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from rec_core.arrays import sorted_unique
from rec_core.atomic import write_bytes_atomic
from rec_core.data.lake import lake_for
from rec_core.data.split import Protocol, Split, SplitPart, split_from_lake, training_view
from rec_core.eval.baselines import MostPop, Recommender, evaluate_baselines
from rec_core.eval.intervals import Interval
from rec_core.eval.plots import comparison_png
from rec_core.eval.ranking_metrics import ServedAs, UserMetrics, build_targets, user_metrics
from rec_core.eval.user_sample import with_test_sample
from rec_core.feed.policy import FeedPolicy
from rec_core.model.features import FeatureStats, follows_frame, interaction_frame, video_frame
from rec_core.model.store import LoadedModel
from rec_core.model.text_features import embed_videos_text
from rec_core.model.towers import TwoTower
from rec_core.model.training import TrainingData, evaluation_scorer, prepare
from rec_core.model.vocabs import Vocabs
from rec_core.settings import BatchSettings, ModelSettings, PathSettings

log = logging.getLogger(__name__)

REPORT_METRICS = ["recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "ndcg@50", "hit_rate@50"]


@dataclass(slots=True)
class LakeData:
    """The live lake as the model code wants it, plus its temporal split."""

    dataset: str
    lake_version: str
    split: Split
    videos: pl.DataFrame
    interactions: pl.DataFrame
    follows: pl.DataFrame

    def text(self, paths: PathSettings, model: ModelSettings, text_model: str | None = None) -> np.ndarray:
        """Caption embeddings aligned with the catalogue (cached; only new captions are encoded)."""
        if text_model:
            model = dataclasses.replace(model, text_model=text_model)
        table = self.videos.select("video_id", "caption", "hashtags").to_arrow()
        vectors, _ = embed_videos_text(table, paths, model)
        return vectors

    def served_as(self, policy: FeedPolicy | None = None) -> ServedAs:
        """Evaluate rankings as served: the feed policy, with this split's cold videos as the fresh ones."""
        _, creator_codes = np.unique(self.videos["creator_id"].to_numpy().astype(str), return_inverse=True)
        return ServedAs(policy or FeedPolicy(), self.split.cold_item_mask, creator_codes.astype(np.int64))

    def with_test_sample(self, users: int) -> LakeData:
        """This lake with the split's test part cut to a fixed sample of ``users`` users (0: all of them;
        :mod:`rec_core.eval.user_sample`)."""
        sampled = with_test_sample(self.split, users)
        if sampled is self.split:
            return self
        tested = len(sorted_unique(self.split.test.user_idx))
        log.info("evaluating on %d of the %d test users (a fixed sample by id hash)", users, tested)
        return dataclasses.replace(self, split=sampled)

    def prepare(
        self, text: np.ndarray, vocabs: Vocabs | None = None, stats: FeatureStats | None = None
    ) -> TrainingData:
        """Tower inputs from what this split's training may see: under leave-last-out, a user's own held-out
        interactions are before ``valid_start``, so the frames are cut per user first (``training_view``)."""
        interactions, follows = (training_view(self.split, frame) for frame in (self.interactions, self.follows))
        return prepare(self.split, self.videos, interactions, follows, text, vocabs=vocabs, stats=stats)


def load_lake_data(paths: PathSettings, batch: BatchSettings, protocol: Protocol = "temporal") -> LakeData:
    lake = lake_for(paths, batch)
    version = lake.current()
    split = split_from_lake(lake, protocol)
    videos = video_frame(lake.read("videos"))
    if not np.array_equal(videos["video_id"].to_numpy().astype(object), split.item_ids):
        raise AssertionError("catalogue order differs between the split and the videos table")
    return LakeData(
        dataset=version.manifest.get("source", "unknown"),
        lake_version=version.name,
        split=split,
        videos=videos,
        interactions=interaction_frame(lake.read("interactions")),
        follows=follows_frame(lake.read("follows")),
    )


def prepare_loaded(
    model: LoadedModel, data: LakeData, paths: PathSettings, model_settings: ModelSettings
) -> TrainingData:
    """Inputs for a saved model on ``data``'s split, with that model's own vocabularies and statistics."""
    text = data.text(paths, model_settings, model.config.get("text_model"))
    return data.prepare(text, vocabs=model.vocabs, stats=model.stats)


def two_tower_metrics(
    net: TwoTower, prepared: TrainingData, on: SplitPart = "test", served: ServedAs | None = None
) -> dict[str, float]:
    return two_tower_user_metrics(net, prepared, on, served).summary()


def two_tower_user_metrics(
    net: TwoTower, prepared: TrainingData, on: SplitPart = "test", served: ServedAs | None = None
) -> UserMetrics:
    """The towers over the full catalogue, per evaluated user of ``on`` (for paired intervals)."""
    targets = build_targets(prepared.split, on)
    return user_metrics(evaluation_scorer(net, prepared, targets.history), targets, served=served)


def most_pop_user_metrics(split: Split) -> UserMetrics:
    """MostPop (fitted on training) on the test part, per user: the bar of the towers as trained."""
    return user_metrics(MostPop().fit(split), build_targets(split, "test"))


def comparison(dataset: str, split: Split, models: dict[str, dict[str, float]]) -> dict:
    return {"dataset": dataset, "split": split.summary(), "models": models}


def baseline_metrics(
    split: Split,
    on: SplitPart = "test",
    served: ServedAs | None = None,
    models: Sequence[Recommender] | None = None,
) -> dict[str, dict[str, float]]:
    """The baselines (default: MostPop, ItemKNN, EASE) fitted on ``split``'s training part, measured on ``on``."""
    return evaluate_baselines(split, on=on, served=served, models=models)


def write_report(result: dict, folder: Path, title: str) -> Path:
    """A Markdown report with PNG plots beside it; returns the Markdown file."""
    folder.mkdir(parents=True, exist_ok=True)
    models = result["models"]
    write_bytes_atomic(folder / "comparison.png", comparison_png(models, REPORT_METRICS, title))
    cold = {name: {"cold_recall@50": m.get("cold_recall@50", 0.0)} for name, m in models.items()}
    write_bytes_atomic(folder / "cold.png", comparison_png(cold, ["cold_recall@50"], "cold-video recall@50"))
    lines = [
        f"# {title}",
        "",
        f"Dataset: `{result['dataset']}`. Split: {result['split']}.",
        "",
        markdown_table(models),
        "",
        "![comparison](comparison.png)",
        "",
        "![cold videos](cold.png)",
        "",
    ]
    path = folder / "report.md"
    write_bytes_atomic(path, "\n".join(lines).encode())
    return path


def markdown_table(models: dict[str, dict[str, float]], intervals: dict[str, dict[str, Interval]] | None = None) -> str:
    """One row per model; a metric with an interval in ``intervals[model]`` shows it beside the value."""
    columns = [*REPORT_METRICS, "coverage@50", "cold_recall@50"]
    rows = ["| model | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for name, m in models.items():
        known = (intervals or {}).get(name, {})
        cells = (str(known[c]) if c in known else _fmt(m.get(c)) for c in columns)
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _fmt(value: float | None) -> str:
    if value is None or value != value:  # NaN: no user had such an item
        return "n/a"
    return f"{value:.4f}"
