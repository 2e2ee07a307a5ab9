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

from jobs.import_dataset import add_common_arguments, run_cli
from rec_core.data import movielens
from rec_core.data.ingest import ImportReport, run_import
from rec_core.data.lake import lake_for
from rec_core.settings import Settings

# The shared data sets sit beside the repository; resolving from this file makes the default
# independent of the working directory.
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "movielens-small"


def import_movielens(
    path: Path = DEFAULT_PATH,
    *,
    strict: bool = False,
    dry_run: bool = False,
    settings: Settings | None = None,
) -> ImportReport:
    """Convert the MovieLens folder to canonical tables and import them; raises ``IngestError`` on failure."""
    settings = settings or Settings.load()
    raw = movielens.load(Path(path))
    lake = None if dry_run else lake_for(settings)
    return run_import(raw, lake, strict=strict, source=f"import_movielens {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.import_movielens", description=__doc__.split("\n")[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH, help="MovieLens folder (default: %(default)s)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    return run_cli(
        args, lambda settings: import_movielens(args.path, strict=args.strict, dry_run=args.dry_run, settings=settings)
    )


if __name__ == "__main__":
    raise SystemExit(main())
