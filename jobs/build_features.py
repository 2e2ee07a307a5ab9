"""``python -m jobs.build_features``: embed every video's caption and hashtags into the feature cache.

Cached by a hash of (model id, text), so a rerun encodes only new or changed
videos; training and serving read the same cache. ``--shards N --shard I``
encodes part I of N of the texts (what one mapped Airflow task does): run every
part, on as many machines as you like, and the cache is whole.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.cli import settings_for
from rec_core.data.lake import LakeError
from rec_core.model.release import build_features
from rec_core.settings import SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    parser.add_argument("--shards", type=int, default=1, help="parts the texts are split into (default 1: all)")
    parser.add_argument("--shard", type=int, default=0, help="the part this call encodes, 0..shards-1")
    args = parser.parse_args(argv)
    if args.shards < 1 or not 0 <= args.shard < args.shards:
        parser.error(f"--shard must be in 0..{args.shards - 1} and --shards at least 1")
    settings = settings_for(args)
    try:
        print(build_features(settings, args.shards, args.shard))
    except (LakeError, SettingsError) as exc:  # SettingsError: a REC_TEXT_MODEL found bad only when it loads
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
