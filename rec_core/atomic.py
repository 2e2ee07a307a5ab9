"""Crash-safe file writes: write to a temporary name beside the target, fsync, rename.

A reader therefore sees either the old file or the new one, never half of one
(docs/architecture.md, invariant 2). A writer killed mid-write leaves its temporary file, named with its process
id, for :func:`remove_dead_temps` to clear.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path; on success it is fsync'd and renamed onto ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


_TEMP_OF_PID = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]+\.tmp$")


def remove_dead_temps(folder: Path, older_than_s: float = 3600.0) -> list[str]:
    """Remove the temporary files in ``folder`` of writes that were killed (a torn copy never renamed into place:
    up to a GB beside the caption cache); returns the names removed. A file goes only once untouched for
    ``older_than_s`` (a write takes seconds; the folder may be shared with machines whose processes this one cannot
    see) and when no process of this machine has the pid in its name."""
    removed = []
    cutoff = time.time() - older_than_s
    for path in folder.glob(".*.tmp") if folder.is_dir() else ():
        match = _TEMP_OF_PID.match(path.name)
        try:
            old = path.stat().st_mtime < cutoff
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            continue
        if match and old and not process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process of this machine has ``pid`` (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_with(target: Path, writer: Callable[[Path], None]) -> None:
    """Run ``writer(tmp_path)`` and atomically move the result onto ``target``."""
    with atomic_path(target) as tmp:
        writer(tmp)


@contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[None]:
    """One holder at a time among the processes of this machine (``flock`` on ``lock_file``, created if absent)."""
    import fcntl

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as fh:  # never truncated: a lock file's content is nobody's
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
