"""Import a data set in canonical CSV/Parquet form, replacing the lake's four tables in one commit.

    python -m jobs.import_dataset --videos FILE --interactions FILE [--users FILE] [--follows FILE]
        [--strict] [--dry-run] [--report-json FILE] [--data-dir DIR]

The columns, their defaults and the bad-row reasons are documented in
:mod:`rec_core.data.ingest`. The report is printed to stdout (and written as JSON
with ``--report-json``). Exit codes: 0 imported, or identical to the live lake
version already; 1 rejected (a bad row under ``--strict``, or no valid video);
2 unusable input (missing file or required column, unreadable file, bad
setting). On 1 and 2 the lake is untouched.

Run by hand, it reads any path it is given: whoever has a shell on the worker can
read those files anyway. The ``import_dataset`` DAG is different: its params come
from anyone allowed to trigger a run, so it passes every path through
:func:`resolve_import_path`, which confines it to ``settings.import_root``
(``REC_IMPORT_DIR``, default ``<data root>/import``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rec_core.atomic import write_bytes_atomic
from rec_core.data.ingest import ImportReport, IngestError, InputError, read_canonical, run_import
from rec_core.data.lake import lake_for
from rec_core.progress import setup_logging
from rec_core.settings import Settings, SettingsError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_REJECTED, EXIT_INPUT = 0, 1, 2


class ImportPathError(InputError):
    """A DAG param names a path that is missing, not a file, or leads outside the import folder."""


def resolve_import_path(settings: Settings, raw: str | os.PathLike[str], param: str) -> Path:
    """The real file a DAG param names, refused unless it lies inside ``settings.import_root``.

    Relative paths are taken from the import folder. Symlinks are followed (``resolve(strict=True)``) and the
    target is what is checked, so a link inside the folder cannot lead out of it. Returns the resolved path,
    which the import then opens, so the file checked is the file read (short of a swap of a folder inside the
    import folder between the check and the read, which needs write access to that folder).
    """
    configured = settings.import_root.absolute()
    try:
        root = configured.resolve(strict=True)
    except OSError:
        raise ImportPathError(
            f"param {param!r}: the import folder {configured} does not exist; create it and put the files "
            "there (or set REC_IMPORT_DIR)"
        ) from None
    candidate = Path(raw)
    candidate = candidate if candidate.is_absolute() else root / candidate
    outside = (
        f"param {param!r}: {str(raw)!r} is outside the import folder {root}; the import DAG reads only files "
        "inside it (REC_IMPORT_DIR): copy the file there, or run `python -m jobs.import_dataset` by hand"
    )
    # A lexical check first, so that a path plainly outside is refused without probing the filesystem there
    # (the error would otherwise tell a DAG user which files exist outside the folder).
    lexical = Path(os.path.normpath(candidate))
    if not (lexical.is_relative_to(root) or lexical.is_relative_to(configured)):
        raise ImportPathError(outside)
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, dangling link, permission denied, or a symlink loop
        raise ImportPathError(
            f"param {param!r}: {str(raw)!r} does not exist in the import folder {root} (or cannot be read)"
        ) from None
    if not resolved.is_relative_to(root):
        raise ImportPathError(outside)
    if not resolved.is_file():
        raise ImportPathError(f"param {param!r}: {str(raw)!r} in the import folder {root} is not a file")
    return resolved


def import_dataset(
    videos: Path,
    interactions: Path,
    users: Path | None = None,
    follows: Path | None = None,
    *,
    strict: bool = False,
    dry_run: bool = False,
    settings: Settings | None = None,
) -> ImportReport:
    """Validate the files and make them the lake's content; raises ``IngestError`` if nothing was imported."""
    settings = settings or Settings.load()
    raw = read_canonical(videos, interactions, users, follows)
    lake = None if dry_run else lake_for(settings)
    source = "import_dataset " + " ".join(f"{t}={p}" for t, p in raw.names.items())
    return run_import(raw, lake, strict=strict, source=source)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true", help="fail the import on any bad row")
    parser.add_argument("--dry-run", action="store_true", help="validate and report only; do not touch the lake")
    parser.add_argument("--report-json", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR / settings)")


def run_cli(args: argparse.Namespace, do_import: Callable[[Settings], ImportReport]) -> int:
    """The shared tail of the import CLIs: settings, logging, report printing, exit code."""
    try:
        settings = Settings.load()
        if args.data_dir is not None:
            settings = dataclasses.replace(settings, data_dir=args.data_dir)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    setup_logging(settings.log_level)
    try:
        report = do_import(settings)
        code = EXIT_OK
    except IngestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        report = exc.report or ImportReport(source="import", strict=args.strict, status="error", error=str(exc))
        code = EXIT_INPUT if isinstance(exc, InputError) else EXIT_REJECTED
    print(report.format_text())
    if args.report_json is not None:
        write_bytes_atomic(args.report_json, (report.to_json() + "\n").encode())
        log.info("report written to %s", args.report_json)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.import_dataset", description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=Path, required=True, help="videos file (.csv or .parquet)")
    parser.add_argument("--interactions", type=Path, required=True, help="interactions file (.csv or .parquet)")
    parser.add_argument("--users", type=Path, help="users file (optional; users are derived from interactions)")
    parser.add_argument("--follows", type=Path, help="follows file (optional; no follows without it)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    return run_cli(
        args,
        lambda settings: import_dataset(
            args.videos,
            args.interactions,
            args.users,
            args.follows,
            strict=args.strict,
            dry_run=args.dry_run,
            settings=settings,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
