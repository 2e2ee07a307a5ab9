"""Feed snapshots on the object store, against moto's S3 server: built by stages on three machines, published,
served by an API on a fourth that has never seen them, rolled back and pruned; two publishers racing.

Each "machine" is its own data root (its cache) with the same ``REC_DATA_URI``. Real lake, encoder, training,
Milvus Lite (its file travels inside the snapshot), publish protocol and feed API over HTTP.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import httpx
import pyarrow.compute as pc
import pytest

from rec_core.data.lake import lake_for, snapshot_builds
from rec_core.settings import Settings
from rec_core.snapshot.layout import SnapshotError
from rec_core.snapshot.publish import list_snapshots, prune, publish, read_history, rollback
from rec_core.snapshot.remote import remote_snapshots, run_synced
from rec_core.stages import between, run_stages
from rec_core.storage.object_store import open_store
from rec_core.synthetic.commit import generate_data
from tests.conftest import ApiServer
from tests.test_feed_api import page

pytestmark = pytest.mark.slow

PARAMS = {"retrain": True, "epochs": 1, "video_shards": 1, "user_shards": 2, "caption_shards": 1}


def machine(env: dict[str, str], root: Path) -> Settings:
    return Settings.load({**env, "REC_DATA_DIR": str(root), "REC_RANKER": "off", "REC_SNAPSHOTS_KEEP": "2"})


def served(api: ApiServer) -> str | None:
    return httpx.get(f"{api.url}/ready", timeout=10).json().get("snapshot_id")


def wait_until_served(api: ApiServer, snapshot_id: str, timeout: float = 60.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if served(api) == snapshot_id:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"the API still serves {served(api)}, not {snapshot_id}:\n{api.log.read_text()[-3000:]}")


def test_snapshots_built_across_machines_are_served_rolled_back_and_pruned_from_the_store(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    a, b, c = (machine(s3_env, tmp_path / name) for name in ("a", "b", "c"))
    generate_data(a, "tiny", videos=600, seed=5)

    # The model and the snapshot's beginning on a, its vectors on b, its feeds, validation and publish on c.
    values = run_stages(a, between("ingest_inbox", "begin_snapshot"), PARAMS)
    first = values["snapshot_id"]
    run_stages(b, between("embed_videos", "trending"), values)
    assert not (c.paths.snapshots_dir / first).exists()
    run_stages(c, between("materialize", "publish"), values)
    keys = open_store(a.paths).keys("snapshots/")
    assert "snapshots/LIVE" in keys and f"snapshots/{first}/manifest.json" in keys
    assert remote_snapshots(a.paths).live().name == first

    # An API on a machine that holds nothing serves the store's live snapshot (its Milvus Lite file included).
    api = ApiServer(tmp_path / "d" / "data", **_store_settings(s3_env)).start()
    try:
        assert served(api) == first
        one = page(api, "u0000003", limit=10)
        assert one["snapshot_id"] == first and len(one["items"]) == 10

        # What the API takes in reaches the batch on another machine through the store.
        shown = [item["video_id"] for item in one["items"][:3]]
        for video in shown:
            r = httpx.post(f"{api.url}/events", json={"user_id": "u0000003", "video_id": video, "type": "like"})
            assert r.status_code == 200, r.text
        wait_for_keys(a, "inbox/")

        # A second snapshot, its inbox taken in, begun and published on b: the API follows without a restart.
        values = run_stages(b, between("ingest_inbox", "publish"), {**PARAMS, "retrain": False})
        second = values["snapshot_id"]
        assert second != first
        liked = lake_for(b.paths, b.batch).read("interactions")
        liked = liked.filter((pc.field("user_id") == "u0000003") & pc.field("liked"))
        assert set(shown) <= set(liked.column("video_id").to_pylist())
        build = json.loads((b.paths.snapshots_dir / second / "build.json").read_text())
        assert sum(build["inbox_offsets"].values()) > 0, "the snapshot records how far its batch read the inbox"
        assert remote_snapshots(a.paths).store.get("inbox/consumed.json") is not None
        took = wait_until_served(api, second)
        assert took < 5.0, f"live {took:.1f}s after publish"
        assert page(api, "u0000003", limit=10)["snapshot_id"] == second

        # Rolled back from a, whose own copy of LIVE is two publishes old: the store's pointer is what counts.
        assert rollback(a.paths) == first
        wait_until_served(api, first)
        history = [(e["snapshot_id"], e["action"]) for e in read_history(c.paths)]  # c's copy is stale: the store's
        assert history == [(first, "publish"), (second, "publish"), (first, "rollback")]
    finally:
        api.stop()
    # Its clean stop sealed every segment it wrote, in both logs: a host that never returns leaves nothing the
    # batch could not prune.
    for log_name in ("inbox", "impressions"):
        parts = [key.split("/") for key in open_store(a.paths).keys(f"{log_name}/")]
        segments = {part[1] for part in parts if len(part) == 3}
        assert segments and segments == {part[1] for part in parts if len(part) == 3 and part[2].startswith("sealed-")}

    # Publishing the second again makes it live; with keep=1 pruning deletes the first from the store, and each
    # machine drops its copy once it sees that.
    result = publish(c.paths, second, keep=1)
    assert result.changed and result.pruned == [first]
    assert not [k for k in open_store(a.paths).keys(f"snapshots/{first}/")]
    states = {info.snapshot_id: info.state for info in list_snapshots(a.paths)}
    assert states == {second: "live"}
    assert not (a.paths.snapshots_dir / first).exists()
    # What pins lake versions and inbox segments is every snapshot on the store, seen from any machine.
    fresh = machine(s3_env, tmp_path / "e")
    assert [build["snapshot_id"] for build in snapshot_builds(fresh.paths)] == [second]


def test_two_publishers_racing_for_live_one_wins_and_the_other_changes_nothing(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    a, b = (machine(s3_env, tmp_path / name) for name in ("a", "b"))
    one, two = remote_snapshots(a.paths), remote_snapshots(b.paths)
    for remote in (one, two):
        remote.mirror()  # both read "nothing is live"
    one.swap("s20260101T000000Z-aaaa")
    with pytest.raises(SnapshotError, match="another publish or rollback won"):
        two.swap("s20260101T000001Z-bbbb")
    assert one.live().name == "s20260101T000000Z-aaaa"
    assert not (b.paths.snapshots_dir / "LIVE").exists(), "the loser's local mirror is untouched"


def test_a_publish_killed_after_its_swap_is_recorded_by_the_next(s3_env: dict[str, str], tmp_path: Path) -> None:
    a = machine(s3_env, tmp_path / "a")
    remote = remote_snapshots(a.paths)
    folder = remote.folder("s20260101T000000Z-aaaa")
    folder.local.mkdir(parents=True)
    (folder.local / "build.json").write_text(json.dumps({"model_version": "m1"}))
    folder.push()
    remote.mirror()
    remote.swap(folder.local.name)  # and killed before the history: the store's LIVE is the truth
    assert remote.history() == []
    with pytest.raises(SnapshotError, match="no snapshot"):
        publish(machine(s3_env, tmp_path / "b").paths, "s20260102T000000Z-bbbb", keep=2)
    assert [e["snapshot_id"] for e in remote.history()] == [folder.local.name]
    assert remote.history()[0]["action"] == "recovered"


def wait_for_keys(settings: Settings, prefix: str, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if keys := open_store(settings.paths).keys(prefix):
            return keys
        time.sleep(0.2)
    raise AssertionError(f"nothing under {prefix} on the store after {timeout}s")


def _store_settings(env: dict[str, str]) -> dict[str, str]:
    return {key.removeprefix("REC_").lower(): value for key, value in env.items() if key != "REC_DATA_DIR"}


def _stored_build(remote, snapshot_id: str) -> Path:
    folder = remote.folder(snapshot_id)
    folder.local.mkdir(parents=True)
    (folder.local / "build.json").write_text(json.dumps({"model_version": "m1"}))
    folder.push()
    return folder.local


def test_a_stage_pushes_its_own_files_never_temp_files_and_a_failed_one_pushes_its_removals(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    a = machine(s3_env, tmp_path / "a")
    remote = remote_snapshots(a.paths)
    snapshot = "s20260101T000000Z-aaaa"
    local = _stored_build(remote, snapshot)
    (local / "manifest.json").write_text("{}")
    remote.folder(snapshot).push(["manifest.json"])

    def writes() -> dict:
        (local / "feeds").mkdir()
        (local / "feeds" / "part-0.parquet").write_bytes(b"rows")
        (local / "feeds" / ".part-1.parquet.abc.tmp").write_bytes(b"half")  # another process's write in progress
        return {}

    run_synced(a.paths, snapshot, writes)
    assert set(remote.folder(snapshot).files()) == {"build.json", "manifest.json", "feeds/part-0.parquet"}

    def fails_validation() -> dict:
        (local / "manifest.json").unlink()  # validation drops a stale manifest, then refuses
        raise SnapshotError("refused")

    with pytest.raises(SnapshotError, match="refused"):
        run_synced(a.paths, snapshot, fails_validation)
    assert not remote.validated(snapshot), "the store must not keep a manifest the machine withdrew"


def test_pruning_keeps_a_build_another_machine_pushed_to_recently(s3_env: dict[str, str], tmp_path: Path) -> None:
    a, b = (machine(s3_env, tmp_path / name) for name in ("a", "b"))
    # Begun long ago (its id), written to just now by a: on b, which holds no copy, it is a build in progress.
    old = "s20200101T000000Z-aaaa"
    _stored_build(remote_snapshots(a.paths), old)
    assert prune(b.paths, keep=1) == []
    assert remote_snapshots(b.paths).folder(old).exists()
    assert prune(b.paths, keep=1, abandoned_after=dt.timedelta(seconds=0)) == [old]  # past the limit: abandoned
    assert not remote_snapshots(b.paths).folder(old).exists()
