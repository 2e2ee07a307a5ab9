"""Import a data set in canonical CSV/Parquet form, replacing the lake's four tables in one commit.

    python -m jobs.import_dataset --videos FILE --interactions FILE [--users FILE] [--follows FILE]
        [--strict] [--dry-run] [--report-json FILE] [--data-dir DIR]

The columns, their defaults and the bad-row reasons are documented in
:mod:`rec_core.data.import_spec`. The report is printed to stdout (and written as JSON
with ``--report-json``). Exit codes: 0 imported, or identical to the live lake
version already; 1 rejected (a bad row under ``--strict``, or no valid video);
2 unusable input (missing file or required column, unreadable file, bad
setting). On 1 and 2 the lake is untouched.

Run by hand, it reads any path it is given; the ``import_dataset`` DAG confines its
paths to the import folder (:mod:`rec_core.data.import_paths`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.cli import run_import_command
from rec_core.data.file_import import import_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.import_dataset", description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=Path, required=True, help="videos file (.csv or .parquet)")
    parser.add_argument("--interactions", type=Path, required=True, help="interactions file (.csv or .parquet)")
    parser.add_argument("--users", type=Path, help="users file (optional; users are derived from interactions)")
    parser.add_argument("--follows", type=Path, help="follows file (optional; no follows without it)")
    parser.add_argument("--strict", action="store_true", help="fail the import on any bad row")
    parser.add_argument("--dry-run", action="store_true", help="validate and report only; do not touch the lake")
    parser.add_argument("--report-json", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR / settings)")
    args = parser.parse_args(argv)
    return run_import_command(
        lambda settings: import_dataset(
            args.videos,
            args.interactions,
            args.users,
            args.follows,
            strict=args.strict,
            dry_run=args.dry_run,
            settings=settings,
        ),
        data_dir=args.data_dir,
        strict=args.strict,
        report_json=args.report_json,
    )


if __name__ == "__main__":
    raise SystemExit(main())
