"""``python -m jobs.publish``: validate a built snapshot and make it live; list snapshots; roll back.

    python -m jobs.publish --snapshot ID                  validate, publish, rebuild the warehouse
    python -m jobs.publish --snapshot ID --validate-only  validate and write the manifest; publish nothing
    python -m jobs.publish --rollback                     the previous snapshot becomes live again
    python -m jobs.publish --list                         every snapshot folder and its state

A refused snapshot exits with status 2 and lists every reason; the live snapshot
is untouched. Publishing the live snapshot again is a no-op. Exit status 1 means
the publish or rollback happened but the warehouse could not be rebuilt (rerun
``python -m jobs.summarize``). See :mod:`rec_core.snapshot.validate` and
:mod:`rec_core.snapshot.publish` for the protocol.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

from jobs.cli import settings_for
from rec_core.data.lake import LakeError
from rec_core.data.warehouse import build_warehouse
from rec_core.settings import BatchSettings, PathSettings
from rec_core.snapshot.layout import SnapshotError
from rec_core.snapshot.publish import ABANDONED_AFTER, list_snapshots, rollback
from rec_core.snapshot.publish import publish as publish_snapshot
from rec_core.snapshot.remote import run_synced
from rec_core.snapshot.validate import validate_snapshot

log = logging.getLogger("jobs.publish")


def format_list(paths: PathSettings) -> str:
    rows = [("", "snapshot", "state", "published_at", "model_version", "users", "feed rows")]
    for s in list_snapshots(paths):
        rows.append(
            (
                "*" if s.live else "",
                s.snapshot_id,
                s.state,
                s.published_at or "-",
                s.model_version or "-",
                str(s.counts.get("feed_users", "-")),
                str(s.counts.get("feed_rows", "-")),
            )
        )
    if len(rows) == 1:
        return f"no snapshots under {paths.snapshots_dir}"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _rebuild_warehouse(paths: PathSettings, batch: BatchSettings) -> int:
    try:
        print(f"warehouse rebuilt: {build_warehouse(paths, batch)}")
    except Exception as exc:  # the swap already happened: report it, but do not pretend the publish failed
        print(f"warning: the warehouse could not be rebuilt ({exc}); run `python -m jobs.summarize`", file=sys.stderr)
        return 1
    return 0


def _hours_at_least_one(text: str) -> float:
    """0 removed a snapshot begun a second before, under the build still writing it."""
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of hours, got {text!r}") from None
    if not hours >= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"must be at least 1 hour, got {text}")
    return hours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--snapshot", metavar="ID", help="the snapshot to validate and publish")
    action.add_argument("--rollback", action="store_true", help="make the previously published snapshot live again")
    action.add_argument("--list", action="store_true", help="list snapshots and which one is live")
    parser.add_argument("--validate-only", action="store_true", help="with --snapshot: validate, do not publish")
    parser.add_argument(
        "--allow-older",
        action="store_true",
        help="with --snapshot: publish it even though it began before the live snapshot (refused otherwise)",
    )
    parser.add_argument(
        "--abandoned-after-hours",
        type=_hours_at_least_one,
        default=ABANDONED_AFTER.total_seconds() / 3600,
        help="never-published snapshot folders untouched this long are removed when pruning (default: %(default)s; "
        "at least 1, so that a build in progress, which touches its folder at every stage, is never taken for one)",
    )
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    args = parser.parse_args(argv)
    if args.validate_only and not args.snapshot:
        parser.error("--validate-only needs --snapshot ID")
    settings = settings_for(args)
    try:
        if args.list:
            print(format_list(settings.paths))
            return 0
        if args.rollback:
            target = rollback(settings.paths)
            print(f"rolled back: {target} is live")
            return _rebuild_warehouse(settings.paths, settings.batch)
        # On the object store: validated against a pulled copy, the manifest pushed back (as the stage does).
        manifest = run_synced(settings.paths, args.snapshot, lambda: validate_snapshot(settings.paths, args.snapshot))
        print(f"snapshot {args.snapshot} is valid: {manifest.counts}")
        if args.validate_only:
            return 0
        result = publish_snapshot(
            settings.paths,
            args.snapshot,
            keep=settings.batch.snapshots_keep,
            abandoned_after=dt.timedelta(hours=args.abandoned_after_hours),
            allow_older=args.allow_older,
        )
    except (SnapshotError, LakeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not result.changed:
        print(f"snapshot {args.snapshot} is already live; nothing to do")
        return 0
    print(f"published: {result.snapshot_id} is live (previous: {result.previous or 'none'})")
    if result.pruned:
        print(f"pruned: {', '.join(result.pruned)}")
    return _rebuild_warehouse(settings.paths, settings.batch)


if __name__ == "__main__":
    raise SystemExit(main())
