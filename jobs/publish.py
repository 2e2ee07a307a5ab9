"""``python -m jobs.publish``: validate a built snapshot and make it live; list; roll back.

    python -m jobs.publish --snapshot ID            validate, publish, rebuild the warehouse
    python -m jobs.publish --snapshot ID --validate-only
    python -m jobs.publish --rollback               the previous snapshot becomes live again
    python -m jobs.publish --list

A refused snapshot exits with status 2 and every reason; the live one is untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from jobs.cli import settings_for
from rec_core.lake import LakeError
from rec_core.settings import Settings
from rec_core.snapshot import list_snapshots, rollback, validate_snapshot
from rec_core.snapshot import publish as publish_snapshot
from rec_core.snapshot_layout import SnapshotError
from rec_core.warehouse import build_warehouse


def validate(settings: Settings, snapshot_id: str) -> dict:
    return dataclasses.asdict(validate_snapshot(settings, snapshot_id))


def publish(settings: Settings, snapshot_id: str) -> dict:
    return dataclasses.asdict(publish_snapshot(settings, snapshot_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", help="snapshot id")
    parser.add_argument("--validate-only", action="store_true")
    parser.add_argument("--rollback", action="store_true")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    args = parser.parse_args(argv)
    if not (args.snapshot or args.rollback or args.list):
        parser.error("give --snapshot ID, --rollback or --list")
    settings = settings_for(args)
    try:
        if args.list:
            for row in list_snapshots(settings):
                print(json.dumps(row))
            return 0
        if args.rollback:
            print(f"live: {rollback(settings)}")
        else:
            print(json.dumps(validate(settings, args.snapshot)["counts"]))
            if args.validate_only:
                return 0
            print(json.dumps(publish(settings, args.snapshot)))
        print(f"warehouse: {build_warehouse(settings)}")
    except (SnapshotError, LakeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
