"""What every ``python -m jobs.<stage>`` command shares: settings with ``--data-dir`` on top, logging; and the
tail the import commands share (the printed report and the exit code)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from rec_core.atomic import write_bytes_atomic
from rec_core.data.import_report import ImportReport, IngestError, InputError
from rec_core.data.lake import LakeError
from rec_core.model.errors import ModelStoreError
from rec_core.progress import setup_logging
from rec_core.runtime import apply_torch_threads
from rec_core.settings import Settings, SettingsError
from rec_core.snapshot.layout import SnapshotError
from rec_core.snapshot.remote import run_synced

log = logging.getLogger(__name__)


def settings_for(args: argparse.Namespace, *, logging: bool = True) -> Settings:
    """Settings from ``REC_*`` (and ``--data-dir`` when given); a bad setting exits with status 2 and names it."""
    try:
        settings = Settings.load()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if getattr(args, "data_dir", None) is not None:
        settings = settings.override(data_dir=args.data_dir)
    if logging:
        setup_logging(settings.log_level)
    apply_torch_threads(settings.model)
    return settings


def int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low``, refused as ``must be <what>`` before anything runs."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "0 or a positive integer")


def shard_cli(job: Callable[[Settings, str, int], dict], doc: str | None, argv: list[str] | None) -> int:
    """``--snapshot ID --shard I [--data-dir DIR]``; prints the job's summary as JSON. Shared by the embed jobs.
    With snapshots on the object store the job works on a copy pulled first and pushes what it wrote (as a
    pipeline stage does)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", required=True, help="snapshot id (its build.json must exist)")
    parser.add_argument("--shard", type=int, required=True, help="shard index, 0-based")
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    args = parser.parse_args(argv)
    settings = settings_for(args)
    try:
        summary = run_synced(settings.paths, args.snapshot, lambda: job(settings, args.snapshot, args.shard))
    except (SnapshotError, LakeError, ModelStoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


# ---- the import commands' shared tail ---------------------------------------------

EXIT_OK, EXIT_REJECTED, EXIT_INPUT = 0, 1, 2


def run_import_command(
    do_import: Callable[[Settings], ImportReport], *, data_dir: Path | None, strict: bool, report_json: Path | None
) -> int:
    """Settings, logging, the printed report (and its JSON copy) and the exit code of an import command.

    Exit codes: 0 imported, or identical to the live lake version already; 1 rejected (a bad row under
    ``strict``, or no valid video); 2 unusable input or a bad setting. On 1 and 2 the lake is untouched.
    """
    try:
        settings = Settings.load()
        if data_dir is not None:
            settings = settings.override(data_dir=data_dir)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    setup_logging(settings.log_level)
    if report_json is not None and report_json.is_dir():  # found after the commit, it broke "the lake untouched"
        print(f"error: --report-json {report_json} is a folder: name a file", file=sys.stderr)
        return EXIT_INPUT
    try:
        report = do_import(settings)
        code = EXIT_OK
    except IngestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        report = exc.report or ImportReport(source="import", strict=strict, status="error", error=str(exc))
        code = EXIT_INPUT if isinstance(exc, InputError) else EXIT_REJECTED
    except LakeError as exc:  # another commit (an inbox ingest) moved the lake while this import read it
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(report.format_text())
    if report_json is not None:
        try:
            write_bytes_atomic(report_json, (report.to_json() + "\n").encode())
            log.info("report written to %s", report_json)
        except OSError as exc:  # the import's outcome stands; only its copy is missing
            print(f"warning: the report could not be written to {report_json}: {exc}", file=sys.stderr)
    return code
