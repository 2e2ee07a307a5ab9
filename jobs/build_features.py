"""``python -m jobs.build_features``: embed every video's caption and hashtags into the feature cache.

Cached by a hash of (model id, text), so a rerun encodes only new or changed
videos; training and serving read the same cache.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.cli import settings_for
from rec_core.data.lake import LakeError
from rec_core.model.release import build_features


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    args = parser.parse_args(argv)
    settings = settings_for(args)
    try:
        print(build_features(settings))
    except LakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
