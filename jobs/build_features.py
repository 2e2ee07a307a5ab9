"""``python -m jobs.build_features``: embed every video's caption and hashtags into the feature cache.

Cached by a hash of (model id, text), so a rerun encodes only new or changed
videos; training and serving read the same cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from jobs.cli import settings_for
from rec_core.data.lake import LakeError, lake_for
from rec_core.model.text_features import embed_videos_text
from rec_core.settings import Settings


def build_features(settings: Settings) -> dict:
    lake = lake_for(settings)
    videos = lake.read("videos", columns=["video_id", "caption", "hashtags"])
    _, stats = embed_videos_text(videos, settings)
    return {"videos": videos.num_rows, **dataclasses.asdict(stats)}


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
