"""``python -m jobs.ingest_inbox``: take what the API accepted since the last run into the lake.

How records are merged, and why a crash at any point loses nothing and duplicates
nothing, is :mod:`rec_core.data.inbox_merge`. Prints the summary as JSON; exit code 2
when the lake refuses the commit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs.cli import settings_for
from rec_core.data.inbox_merge import ingest_inbox
from rec_core.data.lake import LakeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    args = parser.parse_args(argv)
    settings = settings_for(args)
    try:
        print(json.dumps(ingest_inbox(settings)))
    except LakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
