"""The API's inbox shipped to the object store and reassembled by the batch, against moto's S3 server: byte for
byte (so offsets mean the same on both sides), through a shipper killed between its upload and its record, a
torn last line, another process holding the ship lock, and pruning on both sides."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rec_core.data.inbox import InboxWriter, mark_consumed, prune_consumed, read_new
from rec_core.data.log_shipping import (
    INBOX,
    SHIPPED,
    LogShipper,
    pull_log,
    push_consumed,
    stored_consumed,
)
from rec_core.settings import Settings
from rec_core.storage.object_store import open_store


def events(n: int, first: int = 0) -> list[tuple[str, dict]]:
    return [("event", {"user_id": f"u{i}", "video_id": f"v{i}", "type": "watch"}) for i in range(first, first + n)]


def test_shipped_segments_reassemble_byte_for_byte_through_a_kill_and_a_torn_line(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    store = open_store(Settings.load(s3_env).paths)
    api, mirror = tmp_path / "api" / "inbox", tmp_path / "batch" / "inbox"
    writer = InboxWriter(api)
    shipper = LogShipper(store, INBOX, api)
    writer.append_many(events(5))
    assert shipper.ship() > 0
    writer.append_many(events(5, first=5))
    recorded = (api / SHIPPED).read_bytes()
    shipper.ship()
    # Killed after its upload, before recording it: the next shipper uploads an overlapping chunk again.
    (api / SHIPPED).write_bytes(recorded)
    writer.append_many(events(3, first=10))
    segment = next(api.glob("*.jsonl"))
    with segment.open("ab") as fh:  # a writer mid-line: not shipped until its newline is there
        fh.write(b'{"kind":"event"')
    shipper.ship()
    assert len(store.keys(f"{INBOX}/{segment.name}/")) == 3  # [0,a) [a,b) and the overlapping [a,c)

    pull_log(store, INBOX, mirror)
    whole = segment.read_bytes()
    assert (mirror / segment.name).read_bytes() == whole[: whole.rfind(b"\n") + 1]
    assert pull_log(store, INBOX, mirror) == mirror and (mirror / segment.name).stat().st_size == whole.rfind(b"\n") + 1
    read = read_new(mirror)
    assert [r.data["user_id"] for r in read.records] == [f"u{i}" for i in range(13)]
    assert read.offsets == read_new(api).offsets  # the API's replay offsets mean the same segment bytes

    # The batch records its offsets on the store; a segment it prunes goes there, then from the API's disk.
    mark_consumed(mirror, read.offsets)
    os.utime(mirror / segment.name, (0, 0))
    os.utime(segment, (0, 0))
    writer.close()
    pruned = prune_consumed(mirror)
    assert pruned == [segment.name]
    push_consumed(store, INBOX, mirror, pruned)
    assert stored_consumed(store, INBOX) == json.loads((mirror / "consumed.json").read_text())
    assert store.keys(f"{INBOX}/{segment.name}/") == []
    # The API keeps a segment whose tail it never shipped (the torn line): only what the store had may go.
    assert LogShipper(store, INBOX, api, idle_s=0).drop_pruned() == [] and segment.exists()


def test_a_quiet_segment_fully_shipped_and_pruned_leaves_the_api_disk(s3_env: dict[str, str], tmp_path: Path) -> None:
    store = open_store(Settings.load(s3_env).paths)
    api, mirror = tmp_path / "api", tmp_path / "mirror"
    writer = InboxWriter(api)
    writer.append_many(events(4))
    writer.close()
    shipper = LogShipper(store, INBOX, api, idle_s=60)
    shipper.ship()
    segment = next(api.glob("*.jsonl"))
    assert shipper.drop_pruned() == []  # touched just now
    os.utime(segment, (0, 0))
    assert shipper.drop_pruned() == []  # idle, but the batch has not pruned it: still on the store
    pull_log(store, INBOX, mirror)
    mark_consumed(mirror, read_new(mirror).offsets)
    os.utime(mirror / segment.name, (0, 0))
    pruned = prune_consumed(mirror)
    assert pruned == [segment.name]
    push_consumed(store, INBOX, mirror, pruned)
    assert shipper.drop_pruned() == [segment.name] and not segment.exists()


def test_a_second_process_does_not_ship_while_one_is_shipping(s3_env: dict[str, str], tmp_path: Path) -> None:
    import fcntl

    store = open_store(Settings.load(s3_env).paths)
    writer = InboxWriter(tmp_path)
    writer.append_many(events(2))
    with (tmp_path / ".ship.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert LogShipper(store, INBOX, tmp_path).ship() == 0
    assert LogShipper(store, INBOX, tmp_path).ship() > 0


@pytest.fixture(autouse=True)
def _no_real_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("REC_"):
            monkeypatch.delenv(key)


def test_pulls_running_at_once_reassemble_the_same_bytes(s3_env: dict[str, str], tmp_path: Path) -> None:
    """Two ingests on one machine pull into the same mirror at once: each chunk lands at its own offset, so
    neither duplicates the other's bytes."""
    from concurrent.futures import ThreadPoolExecutor

    store = open_store(Settings.load(s3_env).paths)
    api, mirror = tmp_path / "api", tmp_path / "mirror"
    writer, shipper = InboxWriter(api), LogShipper(store, INBOX, api)
    for n in range(12):
        writer.append_many(events(3, first=3 * n))
        shipper.ship()
    writer.close()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: pull_log(store, INBOX, mirror), range(4)))
    segment = next(api.glob("*.jsonl"))
    assert (mirror / segment.name).read_bytes() == segment.read_bytes()
