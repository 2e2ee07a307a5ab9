"""``python -m jobs.summarize``: rebuild the DuckDB warehouse and print a summary of the lake and live snapshot.

The queries (:mod:`rec_core.data.summary`) are the ones an analyst would start with; they run against the
warehouse file that ``duckdb -readonly data/warehouse.duckdb`` opens too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.cli import settings_for
from rec_core.data.lake import LakeError
from rec_core.data.summary import format_results, summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    args = parser.parse_args(argv)
    settings = settings_for(args)
    try:
        results = summarize(settings)
    except LakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_results(results))
    print(f"\nWarehouse: {settings.paths.warehouse_path} (duckdb -readonly; `SHOW TABLES` lists the views)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
