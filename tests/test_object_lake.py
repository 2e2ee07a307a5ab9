"""The lake on an S3-compatible object store, against a real server process (moto's, started by conftest).

The contract both lakes share is tested in test_lake.py over both backends; here is what only the store has:
several machines (each its own cache folder) sharing one lake, commits killed between the store's steps, two
writers racing for a version name or for the pointer, and a damaged object in the store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

from rec_core.data.lake import Lake, LakeConflict, LakeError, lake_for
from rec_core.data.object_lake import ObjectLake
from rec_core.data.warehouse import build_warehouse
from rec_core.settings import Settings
from rec_core.storage.object_store import S3Store, StoreError, open_store
from tests.test_lake import follows, users

ROOT = Path(__file__).resolve().parents[1]


def machine(env: dict[str, str], data_dir: Path) -> Settings:
    """The settings of one machine: the shared store, its own data root (its cache)."""
    return Settings.load({**env, "REC_DATA_DIR": str(data_dir)})


def lake_on(settings: Settings) -> Lake:
    return lake_for(settings.paths, settings.batch)


def store_keys(settings: Settings, prefix: str = "lake/") -> list[str]:
    return open_store(settings.paths).keys(prefix)


def test_generate_data_writes_the_lake_to_the_store_and_another_machine_reads_it(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REC_")}, **s3_env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.generate_data", "--scale", "tiny", "--users", "60", "--videos", "200"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"at {s3_env['REC_DATA_URI']}/lake," in proc.stdout
    a = machine(s3_env, Path(s3_env["REC_DATA_DIR"]))
    keys = store_keys(a)
    assert "lake/CURRENT" in keys and "lake/v000001/manifest.json" in keys
    assert {"lake/v000001/videos.parquet", "lake/v000001/interactions.parquet"} <= set(keys)
    # The store is the truth: no local pointer that could disagree with it.
    assert not (a.paths.lake_dir / "CURRENT").exists()

    b = machine(s3_env, tmp_path / "machine-b")
    on_b = lake_on(b).current()
    assert on_b.name == "v000001" and on_b.path == b.paths.lake_dir / "v000001"
    for table in ("videos", "users", "follows", "interactions"):
        assert lake_on(b).read(table).equals(lake_on(a).read(table)), table
    # Analysts' DuckDB views work on any machine, over its verified copy.
    import duckdb

    con = duckdb.connect(str(build_warehouse(b.paths, b.batch)), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM videos").fetchone()[0] == 200
        assert con.execute("SELECT lake_version FROM lake_info").fetchone()[0] == "v000001"
    finally:
        con.close()


KILL_SCRIPT = """
import os, signal, sys
import pyarrow as pa
from rec_core.settings import Settings
from rec_core.data.lake import lake_for
from rec_core.storage import object_store
from tests.test_lake import users

step = sys.argv[1]  # die right after this step of the commit: claim, upload, or before the pointer swap
put, upload = object_store.S3Store.put, object_store.S3Store.upload

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def put_then_die(self, key, data, **kw):
    if key.endswith("CURRENT") and step == "swap":
        die()
    etag = put(self, key, data, **kw)
    if key.endswith("manifest.json") and step == "claim":
        die()
    return etag

def upload_then_die(self, key, path):
    upload(self, key, path)
    if step == "upload":
        die()

object_store.S3Store.put, object_store.S3Store.upload = put_then_die, upload_then_die
s = Settings.load()
lake_for(s.paths, s.batch).commit({"users": users(["doomed"])}, source="doomed")
"""


@pytest.mark.parametrize("step", ["claim", "upload", "swap"])
def test_a_commit_killed_between_the_stores_steps_leaves_the_previous_version_live(
    s3_env: dict[str, str], tmp_path: Path, step: str
) -> None:
    a = machine(s3_env, tmp_path / "a")
    lake_on(a).commit({"users": users(["a"]), "follows": follows([("a", "b")])}, source="test")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REC_")}, **s3_env, "PYTHONPATH": str(ROOT)}
    env["REC_DATA_DIR"] = str(tmp_path / "killed")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, step], env=env, cwd=ROOT, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-3000:]
    assert "lake/v000002/manifest.json" in store_keys(a)  # it had claimed the name

    # Every machine still reads version 1, whole.
    fresh = machine(s3_env, tmp_path / "fresh")
    assert lake_on(fresh).current().name == "v000001"
    assert lake_on(fresh).read("users")["user_id"].to_pylist() == ["a"]
    # The next commit takes the name after the dead one's, and its prune removes what the dead one left.
    v = lake_on(a).commit({"users": users(["a", "b"])}, source="test")
    assert v.name == "v000003"
    assert not [k for k in store_keys(a) if k.startswith("lake/v000002/")]
    assert lake_on(fresh).read("users").num_rows == 2 and lake_on(fresh).read("follows").num_rows == 1


@pytest.mark.parametrize("race", ["name", "pointer"])
def test_a_writer_beaten_by_another_machine_makes_nothing_live(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, race: str
) -> None:
    """Machine B reads v1 and works; machine A commits first, just before B claims its name or swaps the pointer."""
    a, b = machine(s3_env, tmp_path / "a"), machine(s3_env, tmp_path / "b")
    lake_on(a).commit({"users": users(["a"])}, source="test")
    lake_b = lake_on(b)
    assert isinstance(lake_b, ObjectLake)
    real_put = S3Store.put
    done = []

    def a_commits_first(self: S3Store, key: str, data: bytes, **kw: object) -> str:
        at_step = key.endswith("manifest.json") if race == "name" else key.endswith("CURRENT")
        if self is lake_b.remote.store and at_step and not done:
            done.append(lake_on(a).commit({"users": users(["a", "from-a"])}, source="machine a"))
        return real_put(self, key, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(S3Store, "put", a_commits_first)
    with pytest.raises(LakeConflict, match="another writer"):
        lake_b.commit({"users": users(["a", "from-b"])}, source="machine b")
    monkeypatch.undo()

    assert done and lake_on(b).current().name == done[0].name
    assert lake_on(b).read("users")["user_id"].to_pylist() == ["a", "from-a"]
    assert not (b.paths.lake_dir / f".staging-{os.getpid()}").exists()
    # B re-reads and retries: it lands after A's commit, keeping it.
    retried = lake_on(b).commit({"users": users(["a", "from-a", "from-b"])}, source="machine b")
    assert lake_on(a).read("users").num_rows == 3 and retried.manifest["parent"] == done[0].name


def test_a_damaged_object_is_refused_and_never_cached(s3_env: dict[str, str], tmp_path: Path) -> None:
    a = machine(s3_env, tmp_path / "a")
    lake_on(a).commit({"users": users(["a", "b"])}, source="test")
    loc = open_store(a.paths).location
    other = tmp_path / "other.parquet"
    pq.write_table(users(["mallory"]), other)
    boto3.client(
        "s3",
        endpoint_url=s3_env["REC_S3_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).upload_file(str(other), loc.bucket, loc.key("lake/v000001/users.parquet"))

    b = machine(s3_env, tmp_path / "b")
    with pytest.raises(LakeError, match="does not match its manifest"):
        lake_on(b).read("users")
    assert not any(b.paths.lake_dir.iterdir())  # no version folder, no half-pulled leftovers
    # Machine A verified its copy when it committed and keeps reading it.
    assert lake_on(a).read("users")["user_id"].to_pylist() == ["a", "b"]


def test_an_unreachable_store_says_where(tmp_path: Path) -> None:
    s = Settings.load(
        {
            "REC_DATA_DIR": str(tmp_path / "data"),
            "REC_DATA_URI": "s3://nowhere/x",
            "REC_S3_ENDPOINT": "http://127.0.0.1:9",  # the discard port: nothing listens
            "REC_S3_ACCESS_KEY_ID": "k",
            "REC_S3_SECRET_ACCESS_KEY": "s",
        }
    )
    with pytest.raises(StoreError, match="s3://nowhere/x/lake/CURRENT: Could not connect"):
        lake_on(s).current()


def test_a_machine_that_only_reads_drops_its_copies_of_versions_pruned_from_the_store(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """Every version a worker reads is copied to its disk; another machine's commits prune the store, and the
    worker's next copy of a new version removes its copies of those (before, only a machine that committed did)."""
    from tests.test_lake import users

    store = {k: v for k, v in s3_env.items() if k != "REC_DATA_DIR"}
    writer, reader = machine(store, tmp_path / "writer"), machine(store, tmp_path / "reader")
    lake_on(writer).commit({"users": users(["a"])}, source="test")
    assert lake_on(reader).current().name == "v000001"  # copied to the reader's disk
    for added in ("b", "c", "d"):
        lake_on(writer).commit({"users": users(["a", added])}, source="test")
    assert "lake/v000001/manifest.json" not in store_keys(writer), "pruned past REC_LAKE_VERSIONS_KEEP=3"
    assert (reader.paths.lake_dir / "v000001").is_dir()
    assert lake_on(reader).current().name == "v000004"
    assert sorted(p.name for p in reader.paths.lake_dir.iterdir() if p.is_dir()) == ["v000004"]
