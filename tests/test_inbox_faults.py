"""The inbox under real write faults: a full disk and a failed segment open, on a small tmpfs.

Nothing is mocked: a tmpfs mounted with a few hundred KiB (or a handful of inodes)
makes the kernel answer ENOSPC exactly where a full production disk would.
Mounting needs root (CAP_SYS_ADMIN); elsewhere these tests skip and say why.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rec_core.data.inbox import InboxWriteError, InboxWriter, read_new

AT = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


def _mount_tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to make a real full disk (needs root): {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _mount_tmpfs(tmp_path / "disk", "size=256k,mode=0755")


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    yield from _mount_tmpfs(tmp_path / "inodes", "size=4m,nr_inodes=12,mode=0755")


def fill(path: Path) -> None:
    """Write ``path`` until the file system has no byte left."""
    chunk = b"x" * 4096
    with path.open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with path.open("ab", buffering=0) as fh:  # the last partial page too
        try:
            while True:
                fh.write(b"x")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def event(i: int) -> tuple[str, dict]:
    return ("event", {"user_id": f"u{i}", "video_id": f"v{i}", "type": "watch", "completion": 0.5})


def test_a_failed_append_on_a_full_disk_keeps_nothing_and_the_next_one_succeeds(small_disk: Path) -> None:
    inbox = small_disk / "inbox"
    writer = InboxWriter(inbox)
    writer.append_many([event(0), event(1)], AT)  # acknowledged
    filler = small_disk / "filler"
    fill(filler)
    # Bigger than what is left in the segment's last page: the kernel writes part of it, then says ENOSPC.
    with pytest.raises(InboxWriteError, match="No space left"):
        writer.append_many([event(i) for i in range(100, 400)], AT)
    with pytest.raises(InboxWriteError):  # still full: refused again, still nothing kept
        writer.append_many([event(i) for i in range(500, 800)], AT)
    filler.unlink()  # space is back
    writer.append_many([event(2)], AT)
    writer.close()
    batch = read_new(inbox)
    assert [r.data["user_id"] for r in batch.records] == ["u0", "u1", "u2"]
    assert batch.bad_lines == 0
    # The refused append's segment takes nothing after it: a reader that caught part of the refused lines before
    # the truncation (the batch, a shipper) never sees other bytes at the offsets it read.
    segments = sorted(inbox.glob("*.jsonl"))
    first = segments[0]
    # The second refusal wrote nothing (the disk was full): its segment stays open, so a full disk does not open a
    # new file for every refused request; u2 went into it.
    assert len(segments) == 2
    assert [json.loads(line)["data"]["user_id"] for line in first.read_bytes().splitlines()] == ["u0", "u1"]


def test_a_failed_segment_open_does_not_break_later_writes(few_inodes: Path) -> None:
    inbox = few_inodes / "inbox"
    writer = InboxWriter(inbox, max_segment_bytes=200)  # every append after the first opens a new segment
    writer.append_many([event(0)], AT)
    fillers: list[Path] = []
    with pytest.raises(OSError) as full:  # use up every inode: the next segment cannot be created
        for i in range(1000):
            path = few_inodes / f"f{i}"
            path.touch()
            fillers.append(path)
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(InboxWriteError):
        writer.append_many([event(1)], AT)
    with pytest.raises(InboxWriteError):
        writer.append_many([event(2)], AT)
    for path in fillers:
        path.unlink()
    writer.append_many([event(3)], AT)
    writer.append_many([event(4)], AT)
    writer.close()
    batch = read_new(inbox)
    assert [r.data["user_id"] for r in batch.records] == ["u0", "u3", "u4"]
    assert batch.bad_lines == 0


def test_a_writer_starts_on_a_full_disk_and_writes_once_space_is_back(few_inodes: Path) -> None:
    """Opening lazily: a process that starts while the disk is full serves, refuses writes, then recovers."""
    inbox = few_inodes / "inbox"
    inbox.mkdir()
    fillers = []
    try:
        for i in range(1000):
            path = few_inodes / f"f{i}"
            path.touch()
            fillers.append(path)
    except OSError:
        pass
    writer = InboxWriter(inbox)
    with pytest.raises(InboxWriteError):
        writer.append("event", event(1)[1], AT)
    for path in fillers:
        path.unlink()
    writer.append("event", event(2)[1], AT)
    writer.close()
    assert [r.data["user_id"] for r in read_new(inbox).records] == ["u2"]
