"""Import MovieLens (ml-latest-small layout) into the lake through the canonical importer.

    python -m jobs.import_movielens [--path ../shared/datasets/movielens-small]
        [--strict] [--dry-run] [--report-json FILE] [--data-dir DIR]

The mapping (movies -> videos, ratings -> watches, genres and tags -> hashtags)
is documented in :mod:`rec_core.data.movielens`; validation, report and exit codes
are those of ``jobs.import_dataset``. The files are read in place, never copied.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.cli import run_import_command
from rec_core.data.movielens import DEFAULT_PATH, import_movielens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.import_movielens", description=__doc__.split("\n")[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH, help="MovieLens folder (default: %(default)s)")
    parser.add_argument("--strict", action="store_true", help="fail the import on any bad row")
    parser.add_argument("--dry-run", action="store_true", help="validate and report only; do not touch the lake")
    parser.add_argument("--report-json", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR / settings)")
    args = parser.parse_args(argv)
    return run_import_command(
        lambda settings: import_movielens(args.path, strict=args.strict, dry_run=args.dry_run, settings=settings),
        data_dir=args.data_dir,
        strict=args.strict,
        report_json=args.report_json,
    )


if __name__ == "__main__":
    raise SystemExit(main())
