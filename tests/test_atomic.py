"""Crash-safe writes (rec_core.atomic): a write killed mid-way leaves the old file and a torn temporary copy that
:func:`remove_dead_temps` clears, while a live writer's temporary file is left to it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rec_core.atomic import remove_dead_temps, write_bytes_atomic


def test_a_write_killed_midway_keeps_the_old_file_and_its_torn_copy_is_cleared(tmp_path: Path) -> None:
    target = tmp_path / "cache.parquet"
    write_bytes_atomic(target, b"old and whole")
    script = f"""
import os, signal
from pathlib import Path
from rec_core.atomic import write_with
def half_then_die(tmp):
    tmp.write_bytes(b"half of the new")
    os.kill(os.getpid(), signal.SIGKILL)
write_with(Path({str(target)!r}), half_then_die)
"""
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ}, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-500:]
    (torn,) = tmp_path.glob(".cache.parquet.*.tmp")
    assert target.read_bytes() == b"old and whole" and torn.read_bytes() == b"half of the new"

    assert remove_dead_temps(tmp_path) == [], "a recent one may be another machine's write in progress"
    mine = tmp_path / f".other.json.{os.getpid()}.abc123.tmp"  # this machine's live process: its own
    mine.write_bytes(b"being written")
    hours_ago = time.time() - 2 * 3600
    for temp in (torn, mine):
        os.utime(temp, (hours_ago, hours_ago))
    assert remove_dead_temps(tmp_path) == [torn.name]
    assert mine.exists() and target.read_bytes() == b"old and whole"
    assert remove_dead_temps(tmp_path / "absent") == []
