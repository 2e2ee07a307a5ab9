"""The inbox: durable appends, torn lines, idempotent ingestion into the lake."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rec_core.data.inbox import InboxWriter, mark_consumed, prune_consumed, read_new
from rec_core.data.inbox_merge import ingest_inbox
from rec_core.data.lake import Lake
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data

AT = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


@pytest.fixture
def lake_settings(tmp_path: Path) -> Settings:
    settings = Settings.load({}).override(data_dir=tmp_path / "data")
    generate_data(settings, "tiny", seed=2)
    return settings


def test_torn_last_line_is_not_read(tmp_path: Path) -> None:
    writer = InboxWriter(tmp_path)
    writer.append("event", {"user_id": "u1", "video_id": "v1", "type": "watch"}, AT)
    (segment,) = tmp_path.glob("*.jsonl")
    with segment.open("ab") as fh:
        fh.write(b'{"kind": "event", "at": "2026-')  # a writer killed mid-line
    batch = read_new(tmp_path)
    assert len(batch.records) == 1 and batch.bad_lines == 0


def test_a_writer_resumed_after_its_wall_clock_moved_on_opens_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine suspended for days: the monotonic clock stood still, the wall clock did not. The segment's name
    says when it was opened and log shipping judges its age by that, so the next append must go to a new one."""
    writer = InboxWriter(tmp_path)
    writer.append("event", {"n": 0})
    later = time.time() + 3 * 24 * 3600
    monkeypatch.setattr(time, "time", lambda: later)
    writer.append("event", {"n": 1})
    writer.close()
    assert len(list(tmp_path.glob("*.jsonl"))) == 2


def test_acknowledged_append_survives_a_kill(tmp_path: Path) -> None:
    script = f"""
import os, signal
from rec_core.data.inbox import InboxWriter
w = InboxWriter({str(tmp_path)!r})
w.append("event", {{"user_id": "u1", "video_id": "v1", "type": "like"}})
print("acked", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ))
    assert "acked" in proc.stdout and proc.returncode == -9
    assert [r.data["type"] for r in read_new(tmp_path).records] == ["like"]


def test_ingest_folds_events_upserts_and_is_idempotent(lake_settings: Settings) -> None:
    lake = Lake(lake_settings.paths.lake_dir)
    before = lake.read("interactions").num_rows
    user = lake.read("users")["user_id"][0].as_py()
    writer = InboxWriter(lake_settings.paths.inbox_dir)
    writer.append(
        "video",
        {
            "video_id": "vnew1",
            "caption": "fresh sourdough",
            "hashtags": ["#Baking"],
            "duration": 12.0,
            "width": 720,
            "height": 1280,
            "user_followers": 10,
            "user_likes": 3,
            "creator_id": user,
        },
        AT,
    )
    writer.append(
        "event", {"user_id": "unew", "video_id": "vnew1", "type": "watch", "completion": 0.9, "watch_time_s": 10.8}, AT
    )
    writer.append("event", {"user_id": "unew", "video_id": "vnew1", "type": "like"}, AT + dt.timedelta(seconds=5))
    writer.append("event", {"user_id": "unew", "video_id": "nope", "type": "watch"}, AT)
    writer.append("user", {"user_id": "unew", "followed_users": [user]}, AT)

    summary = ingest_inbox(lake_settings)
    assert summary["events_unknown_video"] == 1
    interactions = lake.read("interactions").to_pylist()
    assert len(interactions) == before + 1
    (row,) = [r for r in interactions if r["user_id"] == "unew"]
    assert row["liked"] and row["completion"] == pytest.approx(0.9) and row["ts"] == AT
    video = next(v for v in lake.read("videos").to_pylist() if v["video_id"] == "vnew1")
    assert video["hashtags"] == ["baking"] and video["creator_id"] == user
    assert "unew" in lake.read("users")["user_id"].to_pylist()
    assert {"user_id": "unew", "creator_id": user} in [
        {"user_id": f["user_id"], "creator_id": f["creator_id"]} for f in lake.read("follows").to_pylist()
    ]
    version = lake.current().name
    assert ingest_inbox(lake_settings)["records"] == 0
    assert lake.current().name == version


def test_crash_after_commit_before_marking_duplicates_nothing(lake_settings: Settings) -> None:
    lake = Lake(lake_settings.paths.lake_dir)
    writer = InboxWriter(lake_settings.paths.inbox_dir)
    video = lake.read("videos")["video_id"][0].as_py()
    writer.append("event", {"user_id": "ux", "video_id": video, "type": "watch", "completion": 0.5}, AT)
    ingest_inbox(lake_settings)
    rows = lake.read("interactions").num_rows
    (lake_settings.paths.inbox_dir / "consumed.json").unlink()  # as if the run died before recording its offsets
    ingest_inbox(lake_settings)
    assert lake.read("interactions").num_rows == rows


def test_read_new_in_bounded_passes_reads_everything_once(tmp_path: Path) -> None:
    """A follower reads a big inbox in passes of at most ``max_bytes`` (whole lines), so its memory stays flat."""
    writers = [InboxWriter(tmp_path, writer_id=f"w{i}") for i in range(2)]
    for i in range(300):
        writers[i % 2].append("event", {"user_id": f"u{i}", "video_id": "v" * (i % 7), "type": "watch"}, AT)
    writers[0].append("event", {"user_id": "big", "video_id": "x" * 5000, "type": "watch"}, AT)  # over the budget
    whole = read_new(tmp_path, {})
    offsets: dict[str, int] = {}
    seen: list[str] = []
    passes = 0
    while True:
        batch = read_new(tmp_path, offsets, max_bytes=2048)
        consumed = sum(batch.offsets.values()) - sum(offsets.get(k, 0) for k in batch.offsets)
        assert consumed <= 2048 or len(batch.records) == 1, "a pass stays within its budget but one line"
        offsets.update(batch.offsets)
        seen += [r.data["user_id"] for r in batch.records]
        passes += 1
        if not batch.more:
            break
    assert passes > 5
    assert sorted(seen) == sorted(r.data["user_id"] for r in whole.records) and len(seen) == 301
    assert offsets == whole.offsets
    assert read_new(tmp_path, offsets, max_bytes=2048).records == []


def test_read_new_can_leave_out_segments(tmp_path: Path) -> None:
    mine, theirs = InboxWriter(tmp_path, writer_id="mine"), InboxWriter(tmp_path, writer_id="theirs")
    mine.append("event", {"user_id": "a", "video_id": "v", "type": "watch"}, AT)
    theirs.append("event", {"user_id": "b", "video_id": "v", "type": "watch"}, AT)
    batch = read_new(tmp_path, {}, skip=mine.owns)
    assert [r.data["user_id"] for r in batch.records] == ["b"]


def test_an_update_to_a_catalogue_video_keeps_its_engagement(lake_settings: Settings) -> None:
    """A key allowed to update videos changes what the uploader describes (caption, hashtags, creator stats);
    what users did with the video (views, likes, comments, shares) and when it appeared are the platform's record:
    an update must not reset them to zero."""
    lake = Lake(lake_settings.paths.lake_dir)
    before = {r["video_id"]: r for r in lake.read("videos").to_pylist()}
    vid = max(before, key=lambda v: before[v]["views"])
    assert before[vid]["views"] > 0
    update = {"video_id": vid, "caption": "a better caption", "hashtags": ["new"], "duration": 12.0}
    update |= {"width": 720, "height": 1280, "user_followers": 5, "user_likes": 6}
    InboxWriter(lake_settings.paths.inbox_dir).append("video", update, AT)
    ingest_inbox(lake_settings)
    after = {r["video_id"]: r for r in Lake(lake_settings.paths.lake_dir).read("videos").to_pylist()}[vid]
    assert after["caption"] == "a better caption" and after["hashtags"] == ["new"] and after["creator_followers"] == 5
    for counter in ("views", "likes", "comments", "shares", "created_at"):
        assert after[counter] == before[vid][counter], counter


def test_a_writer_starts_a_new_segment_once_its_segment_is_old(tmp_path: Path) -> None:
    writer = InboxWriter(tmp_path, max_segment_age_s=0.0)
    writer.append("event", {"user_id": "u1", "video_id": "v1", "type": "watch"}, AT)
    writer.append("event", {"user_id": "u1", "video_id": "v2", "type": "watch"}, AT)
    assert len(list(tmp_path.glob("*.jsonl"))) == 2 and len(read_new(tmp_path).records) == 2


def test_consumed_idle_segments_are_pruned_and_nothing_else(tmp_path: Path) -> None:
    old = InboxWriter(tmp_path, writer_id="old")
    old.append("impression", {"n": 1}, AT)
    old.close()
    live = InboxWriter(tmp_path, writer_id="live")
    live.append("impression", {"n": 2}, AT)
    unread = InboxWriter(tmp_path, writer_id="unread")
    unread.append("impression", {"n": 0}, AT)
    mark_consumed(tmp_path, read_new(tmp_path).offsets)  # the batch took all three in
    unread.append("impression", {"n": 3}, AT)  # ... and this came after
    day_ago = time.time() - 2 * 24 * 3600
    for segment in tmp_path.glob("*-old-*.jsonl"):
        os.utime(segment, (day_ago, day_ago))
    for segment in tmp_path.glob("*-unread-*.jsonl"):
        os.utime(segment, (day_ago, day_ago))

    (old_name,) = [p.name for p in tmp_path.glob("*-old-*.jsonl")]
    # A snapshot whose offsets stop short of its end may still be replayed from: the segment stays.
    assert prune_consumed(tmp_path, covered_by=[{old_name: 3}]) == []
    assert [n.split("-")[1] for n in prune_consumed(tmp_path, covered_by=[{old_name: 10_000}])] == ["old"]
    # The recent segment stays (its writer may append again), and the one with unread lines stays.
    assert sorted(p.name.split("-")[1] for p in tmp_path.glob("*.jsonl")) == ["live", "unread"]
    assert [r.data["n"] for r in read_new(tmp_path).records] == [3]
    with pytest.raises(ValueError, match="idle_s"):
        prune_consumed(tmp_path, idle_s=60)
