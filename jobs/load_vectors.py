"""``python -m jobs.load_vectors --snapshot ID``: load a snapshot's video vectors into its Milvus collection.

Reads every ``vectors/videos-*`` shard, (re)creates the snapshot's collection
(``videos`` in the snapshot's own Milvus Lite file, or ``videos_<snapshot id>`` on
a server), writes the vectors in batches, flushes, and checks that the collection
holds exactly as many rows as the shards less the ids it skipped: an id that
breaks the id rule (:mod:`rec_core.ids`) is left out of the collection, logged and
reported (``skipped_ids``, ``skipped_examples``), and the rest is loaded; one bad
id must not fail the publish. Idempotent: a rerun drops and rebuilds
the collection. Run it as ONE task: in embedded mode this process is the only one
that may open the snapshot's Lite file, and it closes it before returning.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs.cli import settings_for
from rec_core.snapshot.layout import SnapshotError
from rec_core.snapshot.remote import run_synced
from rec_core.snapshot.vector_load import load_vectors
from rec_core.snapshot.vector_store import VectorStoreError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", required=True, help="snapshot id (its video vector shards must exist)")
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    args = parser.parse_args(argv)
    settings = settings_for(args)
    try:
        summary = run_synced(settings.paths, args.snapshot, lambda: load_vectors(settings, args.snapshot))
    except (SnapshotError, VectorStoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
