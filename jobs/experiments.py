"""``python -m jobs.experiments``: start, change, stop, list experiments, and write an experiment's report.

    python -m jobs.experiments start pop-vs-towers --arms "towers=model:0.5,pop=most_pop:0.5"
    python -m jobs.experiments change pop-vs-towers --arms "towers=model:0.3,pop=most_pop:0.3"
    python -m jobs.experiments stop pop-vs-towers
    python -m jobs.experiments list
    python -m jobs.experiments report pop-vs-towers

    python -m jobs.experiments start new-vs-old --arms "new=model:0.5,old=m20261201T101500Z-0a1b2c3d:0.5"

An arm is ``name=variant:share``: the variant ``model`` (the snapshot's model), ``most_pop``, or a model version
of the model store (``python -m jobs.models list``: an earlier or a not-promoted one); shares are
fractions of all users (the rest are in no arm). Start, change and stop take effect at the next snapshot
(``recsys_pipeline`` or ``refresh_embeddings``); the report reads what the lake has taken in
(``ingest_inbox``), into ``<data root>/reports/experiments/<name>/``. The Airflow DAG ``experiments`` does
the same from the UI. Exit code 2 names the field that is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import msgspec

from jobs.cli import settings_for
from rec_core.experiments import registry
from rec_core.experiments.spec import ExperimentError, parse_arms
from rec_core.model.store import model_store
from rec_core.settings import Settings

ACTIONS = ("start", "change", "stop", "list", "report")


def apply(settings: Settings, action: str, name: str = "", arms: str = "") -> dict:
    """One action, as the CLI and the DAG run it; returns what it did, JSON-friendly."""
    path = settings.paths.experiments_file
    if action == "list":
        return {"experiments": [msgspec.to_builtins(e) for e in registry.read_experiments(path)]}
    if not name:
        raise ExperimentError("name", f"{action} needs the experiment's name")
    if action in ("start", "change"):
        versions = model_store(settings.paths).versions()
        edit = registry.start if action == "start" else registry.change
        return msgspec.to_builtins(edit(path, name, parse_arms(arms), versions))
    if action == "stop":
        return msgspec.to_builtins(registry.stop(path, name))
    if action == "report":
        from rec_core.experiments.report import report  # the warehouse and plots: only for this one

        return report(settings, name)
    raise ExperimentError("action", f"must be one of {', '.join(ACTIONS)}, got {action!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("name", nargs="?", default="", help="the experiment (all but list)")
    parser.add_argument("--arms", default="", help='start / change: "name=variant:share,..."')
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    args = parser.parse_args(argv)
    settings = settings_for(args)
    try:
        print(json.dumps(apply(settings, args.action, args.name, args.arms), indent=2))
    except ExperimentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
