"""``python -m jobs.evaluate [--model VERSION] --json FILE``: a model version against the baselines.

Ranks the full catalogue on the held-out split of the live lake, excluding what
each user interacted with in training, for the two-tower model and for MostPop,
ItemKNN and EASE; writes the JSON (shape below) and a Markdown report with PNG
plots (``--report DIR``, default ``<data root>/reports/<version>/``)::

    {"dataset": ..., "split": {...}, "models": {"two_tower": {"recall@20": ...}, "most_pop": {...}, ...}}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs.cli import settings_for
from rec_core.atomic import write_bytes_atomic
from rec_core.data.lake import LakeError
from rec_core.eval.evaluation import markdown_table, write_report
from rec_core.model.errors import ModelStoreError
from rec_core.model.release import evaluate_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model version (default: the current one)")
    parser.add_argument("--json", type=Path, required=True, help="write the comparison JSON here")
    parser.add_argument("--report", type=Path, help="folder for report.md and its PNGs")
    parser.add_argument("--no-baselines", action="store_true", help="only the two-tower model")
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    args = parser.parse_args(argv)
    settings = settings_for(args)
    try:
        result = evaluate_model(settings, args.model, with_baselines=not args.no_baselines)
    except (LakeError, ModelStoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_bytes_atomic(args.json, json.dumps(result, indent=2).encode())
    report_dir = args.report or settings.paths.reports_dir / result["model_version"]
    report = write_report(result, report_dir, f"Evaluation of {result['model_version']} on {result['dataset']}")
    print(markdown_table(result["models"]))
    print(f"\nJSON: {args.json}\nreport: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
