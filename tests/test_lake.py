import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from rec_core.data.lake import Lake, LakeError
from rec_core.data.tables import SchemaError, conform

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


LakeMaker = Callable[..., Lake]


@pytest.fixture(params=["local", "s3"])
def new_lake(request: pytest.FixtureRequest, tmp_path: Path) -> LakeMaker:
    """``new_lake(name, keep_versions=, pinned=)``: a lake under the data root, or on an S3 server (same contract).

    On S3, ``name`` is the store prefix and ``cache`` picks the machine (its local cache folder)."""
    if request.param == "local":
        return lambda name="lake", cache=None, **kw: Lake(tmp_path / name, **kw)
    from rec_core.data.object_lake import ObjectLake
    from rec_core.settings import Settings
    from rec_core.storage.object_store import StoreLocation, open_store

    env = request.getfixturevalue("s3_env")
    paths = Settings.load(env).paths

    def make(name: str = "lake", cache: str = "machine-a", **kw: object) -> Lake:
        store = open_store(paths)
        store.location = StoreLocation(store.location.bucket, f"{store.location.prefix}/{name}")
        return ObjectLake(store, tmp_path / cache / name, **kw)  # type: ignore[arg-type]

    return make


def users(ids: list[str]) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "user_id": ids,
            "created_at": pa.array([T0] * n),
            "country": pa.array([None] * n, pa.string()),
            "language": pa.array([None] * n, pa.string()),
            "age_group": pa.array([None] * n, pa.string()),
        }
    )


def follows(pairs: list[tuple[str, str]]) -> pa.Table:
    return pa.table(
        {
            "user_id": [p[0] for p in pairs],
            "creator_id": [p[1] for p in pairs],
            "ts": pa.array([T0] * len(pairs)),
        }
    )


def test_empty_lake_says_how_to_fill_it(new_lake: LakeMaker) -> None:
    with pytest.raises(LakeError, match="generate_data"):
        new_lake().read("users")


def test_commit_then_read_and_idempotent(new_lake: LakeMaker) -> None:
    lake = new_lake()
    v1 = lake.commit({"users": users(["b", "a"])}, source="test")
    assert lake.read("users")["user_id"].to_pylist() == ["a", "b"]  # stored in key order
    assert lake.commit({"users": users(["a", "b"])}, source="test").name == v1.name
    v2 = lake.commit({"users": users(["a", "b", "c"])}, source="test")
    assert v2.name != v1.name
    assert v2.manifest["tables"]["users"]["rows"] == 3


def test_unchanged_tables_carry_over(new_lake: LakeMaker) -> None:
    lake = new_lake()
    lake.commit({"users": users(["a"]), "follows": follows([("a", "b")])}, source="test")
    v2 = lake.commit({"users": users(["a", "b"])}, source="test")
    assert set(v2.manifest["tables"]) == {"users", "follows"}
    assert lake.read("follows").num_rows == 1


def test_bad_table_writes_nothing(new_lake: LakeMaker) -> None:
    lake = new_lake()
    v1 = lake.commit({"users": users(["a"])}, source="test")
    with pytest.raises(SchemaError, match="duplicate"):
        lake.commit({"users": users(["x"]), "follows": follows([("a", "b"), ("a", "b")])}, source="test")
    assert lake.current().name == v1.name
    assert lake.read("users")["user_id"].to_pylist() == ["a"]


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (pa.table({"user_id": ["a"]}), "missing column"),
        (users(["a"]).append_column("extra", pa.array([1])), "unexpected column"),
        (users(["a"]).set_column(1, "created_at", pa.array(["not a time"])), "cannot be read"),
        (users(["a"]).set_column(0, "user_id", pa.array([None], pa.string())), "null"),
    ],
)
def test_schema_errors_name_the_column(table: pa.Table, match: str) -> None:
    with pytest.raises(SchemaError, match=match):
        conform("users", table)


def test_old_versions_pruned_live_kept(new_lake: LakeMaker) -> None:
    lake = new_lake(keep_versions=2)
    for i in range(5):
        lake.commit({"users": users([f"u{j}" for j in range(i + 1)])}, source="test")
    assert lake.versions() == ["v000004", "v000005"]
    assert lake.current().name == "v000005"


def test_killed_commit_leaves_previous_version_live(tmp_path: Path) -> None:
    """A writer killed mid-commit (here: before the pointer swap) must not change what readers see."""
    lake = Lake(tmp_path / "lake")
    lake.commit({"users": users(["a"])}, source="test")
    script = f"""
import os, signal, datetime as dt
import pyarrow as pa
import rec_core.atomic as atomic
from rec_core.data.lake import Lake
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
atomic.write_bytes_atomic = die
import rec_core.data.lake as lake_mod
lake_mod.write_bytes_atomic = die
t = pa.table({{"user_id": ["zzz"], "created_at": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]),
              "country": pa.array([None], pa.string()), "language": pa.array([None], pa.string()),
              "age_group": pa.array([None], pa.string())}})
Lake({str(tmp_path / "lake")!r}).commit({{"users": t}}, source="doomed")
"""
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ}, capture_output=True)
    assert proc.returncode == -9
    assert lake.current().name == "v000001"
    assert lake.read("users")["user_id"].to_pylist() == ["a"]
    # The next writer cleans up and moves on.
    v = lake.commit({"users": users(["a", "b"])}, source="test")
    assert lake.read("users").num_rows == 2
    assert v.name in lake.versions()


def test_a_commit_killed_while_staging_leaves_a_folder_the_next_commit_removes(tmp_path: Path) -> None:
    """The staging folder of a writer killed mid-write (as big as a version) is not left for good."""
    lake = Lake(tmp_path / "lake")
    lake.commit({"users": users(["a"])}, source="test")
    script = f"""
import os, signal, datetime as dt
import pyarrow as pa
import rec_core.data.lake as lake_mod
def dying(table, target, **kwargs):
    open(target, "wb").write(b"PAR1 half a table")
    os.kill(os.getpid(), signal.SIGKILL)
lake_mod.pq.write_table = dying
t = pa.table({{"user_id": ["zzz"], "created_at": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]),
              "country": pa.array([None], pa.string()), "language": pa.array([None], pa.string()),
              "age_group": pa.array([None], pa.string())}})
lake_mod.Lake({str(tmp_path / "lake")!r}).commit({{"users": t}}, source="doomed")
"""
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ}, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-500:]
    assert len(list(lake.root.glob(".staging-*"))) == 1 and lake.current().name == "v000001"
    lake.commit({"users": users(["a", "b"])}, source="test")
    assert not list(lake.root.glob(".staging-*"))


def test_commit_refuses_when_current_moved_since_the_read(new_lake: LakeMaker) -> None:
    from rec_core.data.lake import LakeConflict

    lake = new_lake()
    read = lake.commit({"users": users(["a"])}, source="test").name
    lake.commit({"users": users(["a", "imported"])}, source="import")
    with pytest.raises(LakeConflict, match=f"read {read}"):
        lake.commit({"users": users(["a", "inbox"])}, source="ingest", expect=read)
    assert lake.read("users")["user_id"].to_pylist() == ["a", "imported"]
    assert lake.commit({"users": users(["a", "imported", "inbox"])}, source="ingest", expect="v000002").name == (
        "v000003"
    )


def test_commit_expecting_an_empty_lake_refuses_a_filled_one(new_lake: LakeMaker) -> None:
    from rec_core.data.lake import LakeConflict

    lake = new_lake()
    lake.commit({"users": users(["a"])}, source="import")
    with pytest.raises(LakeConflict, match="empty"):
        lake.commit({"users": users(["b"])}, source="ingest", expect=None)
    assert new_lake("other").commit({"users": users(["b"])}, source="ingest", expect=None).name == "v000001"


def test_view_at_a_version_reads_that_version_only(new_lake: LakeMaker) -> None:
    lake = new_lake()
    v1 = lake.commit({"users": users(["a"])}, source="test").name
    lake.commit({"users": users(["a", "b"]), "follows": follows([("a", "b")])}, source="test")
    old = lake.at(v1)
    assert old.read("users").num_rows == 1 and not old.has("follows") and old.current().name == v1
    assert not lake.at(None).exists() and not lake.at(None).has("users")
    with pytest.raises(LakeError, match="read-only"):
        old.commit({"users": users(["c"])}, source="test")


def test_pinned_versions_survive_pruning(new_lake: LakeMaker) -> None:
    pins: set[str] = {"v000002"}
    lake = new_lake(keep_versions=1, pinned=lambda: pins)
    for i in range(4):
        lake.commit({"users": users([f"u{j}" for j in range(i + 1)])}, source="test")
    assert lake.versions() == ["v000002", "v000004"]
    assert lake.at("v000002").read("users").num_rows == 2
    pins.clear()
    lake.commit({"users": users(["z"])}, source="test")
    assert lake.versions() == ["v000005"]


def test_unreadable_pins_prune_nothing(new_lake: LakeMaker) -> None:
    def broken() -> set[str]:
        raise ValueError("build.json unreadable")

    lake = new_lake(keep_versions=1, pinned=broken)
    for i in range(3):
        lake.commit({"users": users([f"u{j}" for j in range(i + 1)])}, source="test")
    assert lake.versions() == ["v000001", "v000002", "v000003"]
