"""Baselines are measured once per split: a second release on the same lake reads them, a changed split does not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rec_core.eval.baseline_cache import KEEP, cached_baselines, split_fingerprint
from rec_core.eval.evaluation import baseline_metrics, load_lake_data
from rec_core.settings import Settings


def quality(metrics: dict) -> dict:
    """The figures, without how long they took to measure."""
    return {m: {k: v for k, v in f.items() if not k.endswith("_seconds")} for m, f in metrics.items()}


def test_baselines_are_measured_once_per_split(api_world: Path, tmp_path: Path) -> None:
    settings = Settings.load({"REC_DATA_DIR": str(api_world)})
    split = load_lake_data(settings.paths, settings.batch).split
    measured: list[int] = []

    def measure() -> dict:
        measured.append(1)
        return baseline_metrics(split)

    first = cached_baselines(tmp_path, split, measure)
    assert "most_pop" in first and "item_knn" in first and len(measured) == 1
    again = cached_baselines(tmp_path, load_lake_data(settings.paths, settings.batch).split, measure)
    assert again == first and len(measured) == 1  # the same lake gives the same split: read, not refitted

    # One test interaction fewer is another split: measured again, kept beside the first.
    fewer = dataclasses.replace(split, test=split.test.select(split.test.user_idx != split.test.user_idx[0]))
    assert split_fingerprint(fewer, "test") != split_fingerprint(split, "test")
    assert split_fingerprint(split, "valid") != split_fingerprint(split, "test")
    # MostPop alone (a release's default) is kept apart from all three: neither is served for the other.
    assert split_fingerprint(split, "test", "most_pop") != split_fingerprint(split, "test")
    alone = cached_baselines(tmp_path, split, lambda: {"most_pop": first["most_pop"]}, which="most_pop")
    assert set(alone) == {"most_pop"} and cached_baselines(tmp_path, split, measure) == first and len(measured) == 1
    (tmp_path / f"{split_fingerprint(split, 'test', 'most_pop')}.json").unlink()
    cached_baselines(tmp_path, fewer, lambda: {"most_pop": {"recall@50": 0.5}})
    assert len(list(tmp_path.glob("*.json"))) == 2

    # A damaged entry is measured again, not trusted.
    (tmp_path / f"{split_fingerprint(split, 'test')}.json").write_text("{not json")
    remeasured = cached_baselines(tmp_path, split, measure)
    assert len(measured) == 2 and quality(remeasured) == quality(first)

    # Bounded: the least recently used entries go.
    for i in range(KEEP + 3):
        other = dataclasses.replace(split, test_start_ms=split.test_start_ms + i + 1)
        cached_baselines(tmp_path, other, lambda: {"most_pop": {"recall@50": 0.0}})
    assert len(list(tmp_path.glob("*.json"))) == KEEP
