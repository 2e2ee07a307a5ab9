"""A release's evaluation as of test_start, two ways, side by side: each stack ranking the full catalogue, against
the stacks read off their own lists together.

On the lake under ``--data`` and one stored version (``--version``, default the current one, else the newest),
on the gate's test users:

- **full catalogue**, as the release evaluated until December 5 2026: retrieval alone, retrieval + the version's
  ranker and MostPop of that instant, one after the other, each scoring every video for every user (a (users,
  n_videos) matrix per batch), masking the training history and taking the top 50;
- **own lists**: :meth:`~rec_core.model.ranking.AsOfTestStart.stacks_metrics`, the three together, batch by batch,
  each handing over its top 50 (:class:`~rec_core.eval.ranking_metrics.TopScorer`), both stacks reading one
  candidate block a batch.

Both run in this process, full first; the per-user figures must be identical (checked, else it exits 1). Reports
seconds and test users/s per way, and the ratio.

    python -m benchmarks.evaluation_paths --data D [--version V] [--json F]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from rec_core.eval.ranking_metrics import user_metrics
from rec_core.model.ranking import MOST_POP_AT_TEST, RANKED, RETRIEVAL, AsOfTestStart, PopularityAsOf
from rec_core.model.release import _towers, release_data
from rec_core.model.store import ModelStore
from rec_core.progress import setup_logging
from rec_core.rank.ranker import Ranker
from rec_core.rank.scoring import RankedRetrieval
from rec_core.settings import Settings

log = logging.getLogger(__name__)


def compare(settings: Settings, version: str | None) -> dict:
    store = ModelStore(settings.paths.models_dir)
    loaded = store.load(version or store.current() or max(store.versions(), default=None))
    data = release_data(settings)
    towers = _towers(loaded, data, settings)
    ranker = Ranker.load_if_present(store.root / loaded.version)
    if ranker is None:
        raise SystemExit(f"version {loaded.version} has no ranker: nothing to compare")
    instant = AsOfTestStart.of(data)
    users = len(instant.targets.users)

    started = time.perf_counter()
    view = instant.view(towers)
    stacks = {
        RETRIEVAL: RankedRetrieval(view, instant.state, None, ranker.n_candidates),
        RANKED: RankedRetrieval(view, instant.state, ranker, ranker.n_candidates),
        MOST_POP_AT_TEST: PopularityAsOf.of(instant.state),
    }
    # A plain function hides each scorer's top(): the full-catalogue path.
    full = {name: user_metrics(lambda batch, s=scorer: s(batch), instant.targets) for name, scorer in stacks.items()}
    full_s = time.perf_counter() - started

    started = time.perf_counter()
    together = instant.stacks_metrics(towers, ranker)
    own_s = time.perf_counter() - started

    differing = [
        f"{name} {key}"
        for name, metrics in full.items()
        for key, values in metrics.values.items()
        if not np.array_equal(values, together[name].values[key], equal_nan=True)
    ]
    return {
        "version": loaded.version,
        "test_users": users,
        "videos": int(data.split.n_items),
        "full_catalogue_s": round(full_s, 1),
        "own_lists_s": round(own_s, 1),
        "full_catalogue_users_per_s": round(users / full_s, 1),
        "own_lists_users_per_s": round(users / own_s, 1),
        "speed_up": round(full_s / own_s, 2),
        "identical_per_user": not differing,
        "differing": differing,
        "recall@50": {name: round(m.mean("recall@50"), 4) for name, m in together.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="data root (lake and models)")
    parser.add_argument("--version", help="model version (default: the current one, else the newest)")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args(argv)
    setup_logging()
    result = compare(Settings.load().override(data_dir=args.data), args.version)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result["identical_per_user"] else 1


if __name__ == "__main__":
    sys.exit(main())
