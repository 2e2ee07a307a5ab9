"""The API's inbox shipped to the object store and reassembled by the batch, against moto's S3 server: byte for
byte (so offsets mean the same on both sides), through a shipper killed between its upload and its record, a
torn last line, another process holding the ship lock, and pruning on both sides."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest

from rec_core.data.inbox import InboxWriter, mark_consumed, prune_consumed, read_new
from rec_core.data.log_shipping import (
    IDLE_S,
    INBOX,
    MIRROR_SEALED,
    SHIPPED,
    LogShipper,
    batch_consumed,
    pull_log,
    push_consumed,
    stored_consumed,
)
from rec_core.settings import Settings
from rec_core.storage.object_store import open_store


def age(path: Path, seconds: float = 2 * IDLE_S) -> None:
    """Make ``path`` look untouched for ``seconds``: past a segment's life, past the idle time before pruning."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def sealed_of(mirror: Path) -> dict[str, int]:
    return json.loads((mirror / MIRROR_SEALED).read_text())


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

    # Quiet for long enough, the segment is sealed without its torn tail (no writer will finish that line);
    # the batch prunes it on the store, then the API's disk lets it go.
    writer.close()
    age(segment)
    shipper.ship()
    lines_end = whole.rfind(b"\n") + 1
    assert store.keys(f"{INBOX}/{segment.name}/sealed-") == [f"{INBOX}/{segment.name}/sealed-{lines_end:012d}"]
    pull_log(store, INBOX, mirror)
    mark_consumed(mirror, read.offsets)
    age(mirror / segment.name)
    pruned = prune_consumed(mirror, sealed=sealed_of(mirror))
    assert pruned == [segment.name]
    push_consumed(store, INBOX, mirror, pruned)
    assert stored_consumed(store, INBOX) == json.loads((mirror / "consumed.json").read_text())
    assert store.keys(f"{INBOX}/{segment.name}/") == []
    assert LogShipper(store, INBOX, api, idle_s=0).drop_pruned() == [segment.name] and not segment.exists()


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
    age(segment)
    shipper.ship()  # sealed
    assert shipper.drop_pruned() == []  # idle and sealed, but the batch has not pruned it: still on the store
    pull_log(store, INBOX, mirror)
    mark_consumed(mirror, read_new(mirror).offsets)
    age(mirror / segment.name)
    pruned = prune_consumed(mirror, sealed=sealed_of(mirror))
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


def test_a_segment_the_api_could_not_ship_for_a_day_is_not_pruned_under_its_unshipped_lines(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """The batch's copy of a segment is consumed whole and a day old, but the API still holds lines it could not
    ship (the store was unreachable): unsealed, the segment stays, and those lines arrive when the store is back."""
    store = open_store(Settings.load(s3_env).paths)
    api, mirror = tmp_path / "api", tmp_path / "mirror"
    writer, shipper = InboxWriter(api), LogShipper(store, INBOX, api)
    writer.append_many(events(3))
    shipper.ship()
    pull_log(store, INBOX, mirror)
    mark_consumed(mirror, read_new(mirror).offsets)
    push_consumed(store, INBOX, mirror)
    writer.append_many(events(2, first=3))  # acknowledged; the store is down from here on
    writer.close()
    segment = next(api.glob("*.jsonl"))
    age(mirror / segment.name)
    assert prune_consumed(mirror, sealed=sealed_of(mirror)) == []  # without the seal it would go now
    assert prune_consumed(mirror) == [segment.name]  # what a copy judged by its file times alone would do
    pull_log(store, INBOX, mirror)  # the store still has it: the copy comes back

    age(segment)
    shipper.ship()  # the store is back: the tail ships, then (nothing left, long quiet) the seal
    shipper.ship()
    pull_log(store, INBOX, mirror)
    assert [r.data["user_id"] for r in read_new(mirror).records] == ["u3", "u4"]
    assert sealed_of(mirror) == {segment.name: segment.stat().st_size}


def test_a_segment_cut_back_after_shipping_is_sealed_at_its_true_length(s3_env: dict[str, str], tmp_path: Path) -> None:
    """An append the writer refused (and truncated) after the shipper had copied part of it: the segment is sealed
    at its length on disk and every copy is cut back to it, so nothing later sits past a line the reader skipped."""
    store = open_store(Settings.load(s3_env).paths)
    api, mirror, late = tmp_path / "api", tmp_path / "mirror", tmp_path / "late"
    writer, shipper = InboxWriter(api), LogShipper(store, INBOX, api)
    writer.append_many(events(2))
    segment = next(api.glob("*.jsonl"))
    kept = segment.stat().st_size
    writer.append_many(events(3, first=2))  # stands for the refused append's lines, caught before the truncation
    shipper.ship()
    pull_log(store, INBOX, mirror)
    os.truncate(segment, kept)  # the writer's roll-back; it then moves to a new segment
    writer.close()
    InboxWriter(api).append_many(events(1, first=9))
    shipper.ship()
    assert store.keys(f"{INBOX}/{segment.name}/sealed-") == [f"{INBOX}/{segment.name}/sealed-{kept:012d}"]
    for copy in (mirror, late):  # one that had pulled the refused lines, one that had not
        pull_log(store, INBOX, copy)
        assert (copy / segment.name).read_bytes() == segment.read_bytes()
        assert sorted(r.data["user_id"] for r in read_new(copy).records) == ["u0", "u1", "u9"]
        assert sealed_of(copy) == {segment.name: kept}


def test_a_process_shutting_down_seals_its_own_segments_at_once(s3_env: dict[str, str], tmp_path: Path) -> None:
    """A host that never comes back must not leave unsealed segments (unprunable) behind: at shutdown the API seals
    the segments of the writer it closed; another writer's segment on the same disk waits for its idle time."""
    store = open_store(Settings.load(s3_env).paths)
    mine, theirs = InboxWriter(tmp_path), InboxWriter(tmp_path)
    mine.append_many(events(2))
    theirs.append_many(events(2, first=2))
    mine.close()
    LogShipper(store, INBOX, tmp_path).ship(wait=True, closed=mine.owns)
    sealed = [key.split("/")[1] for key in store.keys(f"{INBOX}/") if "/sealed-" in key]
    assert len(sealed) == 1 and mine.owns(sealed[0])


def test_a_seal_left_without_its_chunks_is_finished_off_not_read(s3_env: dict[str, str], tmp_path: Path) -> None:
    """A prune killed between its deletes (chunks go in key order, the seal last), or a seal an old disk put back
    after its segment was pruned: the reader deletes what is left instead of making a file it can never consume."""
    store = open_store(Settings.load(s3_env).paths)
    api, mirror = tmp_path / "api", tmp_path / "mirror"
    writer, shipper = InboxWriter(api), LogShipper(store, INBOX, api)
    for n in range(3):
        writer.append_many(events(2, first=2 * n))
        shipper.ship()
    writer.close()
    segment = next(api.glob("*.jsonl"))
    shipper.ship(closed=writer.owns)
    chunks = sorted(k for k in store.keys(f"{INBOX}/{segment.name}/") if "sealed" not in k)
    store.delete(chunks[:1])  # the prune got this far
    pull_log(store, INBOX, mirror)
    assert not (mirror / segment.name).exists() and sealed_of(mirror) == {}
    assert store.keys(f"{INBOX}/{segment.name}/") == []
    assert LogShipper(store, INBOX, api, idle_s=0).drop_pruned() == [segment.name]


DAY = 24 * 3600


def old_segment(root: Path, n: int, shipped: int | None = None, days: float = 8) -> tuple[Path, list[bytes]]:
    """A segment under ``root`` its writer opened ``days`` ago holding ``n`` events, as an API host that was away
    left it; with ``shipped``, its first ``shipped`` lines were shipped back then (recorded as the shipper does)."""
    writer = InboxWriter(root)
    writer.append_many(events(n))
    writer.close()
    fresh = next(root.glob("*.jsonl"))
    then = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    path = fresh.rename(root / f"{then:%Y%m%dT%H%M%S}{fresh.name[15:]}")
    lines = path.read_bytes().splitlines(keepends=True)
    if shipped is not None:
        end = len(b"".join(lines[:shipped]))
        (root / SHIPPED).write_text(json.dumps({path.name: end}))
    return path, lines


def test_a_segment_whose_host_never_came_back_is_sealed_by_the_batch_and_pruned(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """A host that crashed for good never seals its last segment; a week after it was opened the batch seals it
    itself, so it is consumed and pruned like any other instead of staying on the store forever."""
    store = open_store(Settings.load(s3_env).paths)
    mirror = tmp_path / "mirror"
    lengths = {}
    for days in (8, 4):  # opened past the batch's week by the pull's clock below, and not
        path, lines = old_segment(tmp_path / f"api-{days}", 3, days=days)
        lengths[path.name] = len(data := b"".join(lines))
        store.put(f"{INBOX}/{path.name}/{0:012d}-{len(data):012d}", data)  # what it shipped before it died
    abandoned, recent = (next((tmp_path / f"api-{d}").glob("*.jsonl")).name for d in (8, 4))
    pull_log(store, INBOX, mirror)  # its last chunk is not a day old: a host with a slow clock may still ship
    assert sealed_of(mirror) == {}
    pull_log(store, INBOX, mirror, now=time.time() + 2 * DAY)
    assert sealed_of(mirror) == {abandoned: lengths[abandoned]}
    assert store.keys(f"{INBOX}/{recent}/sealed-") == []
    mark_consumed(mirror, read_new(mirror).offsets)
    for name in (abandoned, recent):
        age(mirror / name)
    pruned = prune_consumed(mirror, sealed=sealed_of(mirror))
    assert pruned == [abandoned]
    push_consumed(store, INBOX, mirror, pruned)
    assert store.keys(f"{INBOX}/{abandoned}/") == []


@pytest.mark.parametrize("pruned_meanwhile", [False, True])
def test_a_host_back_after_days_ships_its_last_lines_as_a_segment_of_their_own(
    s3_env: dict[str, str], tmp_path: Path, pruned_meanwhile: bool
) -> None:
    """The host was away (the store out of reach) for over a week with acknowledged lines it never shipped: they
    reach the batch as a segment of their own, whether the batch had meanwhile sealed and pruned the original or
    not, the original keeps one seal, and the snapshot's offsets point the API's replay past them in its own file."""
    store = open_store(Settings.load(s3_env).paths)
    api, mirror = tmp_path / "api", tmp_path / "mirror"
    path, lines = old_segment(api, 4, shipped=2)
    first = len(b"".join(lines[:2]))
    store.put(f"{INBOX}/{path.name}/{0:012d}-{first:012d}", b"".join(lines[:2]))  # shipped before it went away
    if pruned_meanwhile:
        pull_log(store, INBOX, mirror, now=time.time() + 2 * DAY)
        mark_consumed(mirror, read_new(mirror).offsets)
        age(mirror / path.name)
        pruned = prune_consumed(mirror, sealed=sealed_of(mirror))
        push_consumed(store, INBOX, mirror, pruned)
        assert pruned == [path.name] and store.keys(f"{INBOX}/{path.name}/") == []

    LogShipper(store, INBOX, api).ship()
    LogShipper(store, INBOX, api).ship()  # again: nothing more
    pull_log(store, INBOX, mirror)
    read = read_new(mirror)
    assert [r.data["user_id"] for r in read.records] == (["u2", "u3"] if pruned_meanwhile else ["u0", "u1", "u2", "u3"])
    seals = [key for key in store.keys(f"{INBOX}/") if "/sealed-" in key]
    assert sorted(seals) == sorted(
        [f"{INBOX}/{path.stem}_after-{first:012d}.jsonl/sealed-{path.stat().st_size - first:012d}"]
        + ([] if pruned_meanwhile else [f"{INBOX}/{path.name}/sealed-{first:012d}"])
    )
    mark_consumed(mirror, read.offsets)
    push_consumed(store, INBOX, mirror)
    assert batch_consumed(Settings.load(s3_env).paths)[path.name] == path.stat().st_size  # what a snapshot records
