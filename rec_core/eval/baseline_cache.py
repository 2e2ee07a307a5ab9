"""Baseline metrics kept by the split they were measured on, so a release fits the baselines once per lake version.

Every release evaluates the candidate beside MostPop, ItemKNN and EASE on the same held-out split; the baselines
do not depend on the candidate, only on the split, so refitting them each time is waste (ItemKNN's fit alone took
7.5 minutes at the large scale). Their metrics are stored under ``<data root>/cache/baselines/<fingerprint>.json``,
where the fingerprint hashes the split itself (every user, item and interaction of every part, the cut times, the
positive rule) with :data:`FORMAT`. A new lake version, another protocol or a change to the split's rules gives
another fingerprint; a change to a baseline or a metric must bump :data:`FORMAT`. An unreadable entry is measured
again. At most :data:`KEEP` entries are kept, the least recently used go first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rec_core.atomic import write_bytes_atomic
from rec_core.data.split import Split

log = logging.getLogger(__name__)

FORMAT = 1
KEEP = 8

Metrics = dict[str, dict[str, float]]


def split_fingerprint(split: Split, on: str, which: str = "all") -> str:
    """A hash of everything the metrics of the baselines ``which`` on ``split``'s part ``on`` can depend on."""
    digest = hashlib.blake2b(digest_size=16)
    rules = {
        "format": FORMAT,
        "on": on,
        "which": which,
        "protocol": split.protocol,
        "positive": split.positive,
        "min_completion": split.min_completion,
        "valid_start_ms": split.valid_start_ms,
        "test_start_ms": split.test_start_ms,
    }
    digest.update(json.dumps(rules, sort_keys=True).encode())
    for ids in (split.user_ids, split.item_ids):
        digest.update("\x00".join(map(str, ids.tolist())).encode())
        digest.update(b"\x01")
    arrays = [split.item_created_ms, split.user_valid_start_ms, split.user_test_start_ms]
    for part in (split.train, split.valid, split.test):
        arrays += [part.user_idx, part.item_idx, part.ts_ms, part.completion, part.liked]
    for array in arrays:
        digest.update(str(array.dtype).encode() + np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def cached_baselines(
    folder: Path, split: Split, measure: Callable[[], Metrics], on: str = "test", which: str = "all"
) -> Metrics:
    """The metrics of the baselines named by ``which`` on ``split``: from ``folder`` when measured on this very split
    before, else ``measure()``, stored for the next release."""
    path = folder / f"{split_fingerprint(split, on, which)}.json"
    if path.is_file():
        try:
            metrics = json.loads(path.read_bytes())
            os.utime(path)  # recently used: pruned last
            log.info("baselines of this split from %s (measured before on the same split)", path)
            return metrics
        except (OSError, ValueError) as exc:
            log.warning("baseline cache entry %s is unreadable (%s): measuring again", path, exc)
    metrics = measure()
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, json.dumps(metrics, indent=1).encode())
    _prune(folder)
    return metrics


def _prune(folder: Path) -> None:
    entries = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[KEEP:]:
        stale.unlink(missing_ok=True)
