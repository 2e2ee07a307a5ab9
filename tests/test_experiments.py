"""Experiments: arms by a stable hash, the file the CLI and DAG change, a snapshot that serves each user their
arm's feed from the batch and the API alike, and the report over a simulated run."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from jobs.experiments import main as experiments_cli
from jobs.simulate_traffic import simulate
from rec_core.data.inbox_merge import ingest_inbox
from rec_core.data.lake import Lake
from rec_core.experiments import registry
from rec_core.experiments.assign import Assignment
from rec_core.experiments.spec import Arm, Experiment, ExperimentError, parse_arms
from rec_core.settings import Settings
from rec_core.stages import between, run_stages
from tests.conftest import ApiServer
from tests.test_feed_api import feeds, live_id, page
from tests.test_feed_api_lifecycle import world_copy  # noqa: F401  (a fixture)

USERS = [f"user-{i}" for i in range(40_000)]


def experiment(name: str, arms: str, started_at: str = "2026-01-01T00:00:00", stopped: bool = False) -> Experiment:
    return Experiment(name, parse_arms(arms), started_at, stopped_at="2026-02-01T00:00:00" if stopped else None)


# ---- assignment (pure) -----------------------------------------------------------------------------------------------


def test_arms_are_deterministic_and_take_their_shares() -> None:
    one = Assignment([experiment("e1", "a=model:0.7,b=most_pop:0.2")])
    again = Assignment([experiment("e1", "a=model:0.7,b=most_pop:0.2")])
    placed = [one.of(u) for u in USERS]
    assert placed == [again.of(u) for u in USERS]  # no state: a restart, another worker, the batch agree
    arms = [p.arm if p else None for p in placed]
    n = len(USERS)
    # Binomial standard deviation at 40,000 users is at most 0.25 %: 1 % is four of them.
    assert abs(arms.count("a") / n - 0.7) < 0.01 and abs(arms.count("b") / n - 0.2) < 0.01
    assert abs(arms.count(None) / n - 0.1) < 0.01  # the users left over are in no arm
    assert {p.variant for p in placed if p} == {"model", "most_pop"}
    # Another experiment name reshuffles: its positions do not follow this one's.
    other = Assignment([experiment("e2", "a=model:0.7,b=most_pop:0.2")])
    same = sum(
        (p.arm if p else None) == (q.arm if q else None) for p, q in zip(placed, map(other.of, USERS), strict=True)
    )
    assert abs(same / n - (0.7**2 + 0.2**2 + 0.1**2)) < 0.015
    assert not Assignment([experiment("e1", "a=model:0.5", stopped=True)])  # a stopped experiment places nobody


def test_two_experiments_at_once_are_independent_and_exclusive() -> None:
    first = experiment("first", "x=model:0.5,y=most_pop:0.5", "2026-01-01T00:00:00")
    second = experiment("second", "c=model:0.1,t=most_pop:0.1", "2026-01-02T00:00:00")
    both = Assignment([second, first])  # oldest first, whatever the order given
    alone = Assignment([second])
    placed = [both.of(u) for u in USERS]
    # first claims everyone it places (all of them: shares sum to 1): second gets nobody while it runs.
    assert {p.experiment for p in placed if p} == {"first"}
    smaller = experiment("first", "x=model:0.25,y=most_pop:0.25", "2026-01-01T00:00:00")
    placed = [Assignment([smaller, second]).of(u) for u in USERS]
    in_second = [u for u, p in zip(USERS, placed, strict=True) if p and p.experiment == "second"]
    # Of the half first leaves, second takes its 20 %, split evenly: its arms are a random sample still.
    assert abs(len(in_second) / len(USERS) - 0.5 * 0.2) < 0.01
    arms = [alone.of(u).arm for u in in_second]  # type: ignore[union-attr]
    assert abs(arms.count("c") / len(arms) - 0.5) < 0.05


def test_a_bad_experiment_is_refused_naming_the_field(tmp_path: Path) -> None:
    for arms, field in [
        ("a=model:0.7,b=most_pop:0.4", "arms"),  # shares over 1
        ("a=model:0.5,a=most_pop:0.5", "arms"),  # one name twice
        ("a=towers2:0.5", "arms[0].variant"),
        ("a=model:0", "arms[0].share"),
        ("a=model:nan", "arms[0].share"),
        ("a=model", "arms[0]"),
        ("a\u202e=model:0.5", "arms[0].name"),
    ]:
        with pytest.raises(ExperimentError) as caught:
            parse_arms(arms)
        assert caught.value.field == field, arms
    path = tmp_path / "experiments.json"
    registry.start(path, "e1", (Arm("a", "model", 0.5),))
    with pytest.raises(ExperimentError, match="never reused"):
        registry.start(path, "e1", (Arm("a", "model", 0.5),))
    # A change moves shares only: a new variant or arm under a kept name pooled two designs in one report.
    for arms, says in [
        ((Arm("a", "most_pop", 0.5),), "not variants"),
        ((Arm("b", "model", 0.5),), "keeps the arms ['a']"),
        ((Arm("a", "model", 0.3), Arm("b", "model", 0.3)), "keeps the arms ['a']"),
    ]:
        with pytest.raises(ExperimentError, match=re.escape(says)) as refused:
            registry.change(path, "e1", arms)
        assert refused.value.field == "arms"
    assert registry.read_experiments(path)[0].changed_at is None, "a refused change changed nothing"
    # A user is in the first-started experiment that places them: behind one whose shares sum to 1, a later one
    # was accepted, listed as running, and reached no one.
    registry.start(path, "full", (Arm("x", "model", 0.5), Arm("y", "most_pop", 0.5)))
    with pytest.raises(ExperimentError, match="'full' places every user"):
        registry.start(path, "shadowed", (Arm("a", "model", 0.5),))
    registry.stop(path, "full")
    registry.start(path, "later", (Arm("a", "model", 0.5),))
    with pytest.raises(ExperimentError, match="leaving no one to 'later'"):
        registry.change(path, "e1", (Arm("a", "model", 1.0),))
    registry.stop(path, "later")
    registry.change(path, "e1", (Arm("a", "model", 0.6),))
    registry.stop(path, "e1")
    with pytest.raises(ExperimentError, match="no running experiment"):
        registry.stop(path, "e1")
    e1 = registry.read_experiments(path)[0]
    assert e1.arms[0].share == 0.6 and e1.changed_at and e1.stopped_at and registry.running(path) == []


def test_the_cli_says_which_field_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("REC_DATA_DIR", str(tmp_path))
    assert experiments_cli(["start", "e1", "--arms", "a=model:0.6,b=most_pop:0.6"]) == 2
    assert "arms: shares sum to 1.2" in capsys.readouterr().err
    assert experiments_cli(["start", "e1", "--arms", "a=model:0.5,b=most_pop:0.5"]) == 0
    capsys.readouterr()
    assert experiments_cli(["list"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["experiments"]
    assert listed["name"] == "e1" and [a["share"] for a in listed["arms"]] == [0.5, 0.5]
    assert experiments_cli(["stop", "nope"]) == 2


# ---- end to end ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_snapshot_serves_each_arm_its_feed_and_the_report_compares_them(world_copy: Path) -> None:  # noqa: F811
    settings = Settings.load({"REC_DATA_DIR": str(world_copy), "REC_FEED_LENGTH": "200", "REC_SNAPSHOTS_KEEP": "2"})
    registry.start(settings.paths.experiments_file, "towers-vs-pop", parse_arms("towers=model:0.5,pop=most_pop:0.5"))
    before = live_id(world_copy)
    run_stages(settings, between("begin_snapshot", "publish"), {"video_shards": 1, "user_shards": 2})
    snapshot = live_id(world_copy)
    assert snapshot != before  # the change took effect at the next snapshot, not before
    build = json.loads((world_copy / "snapshots" / snapshot / "build.json").read_text())
    assert [e["name"] for e in build["experiments"]] == ["towers-vs-pop"]

    # The batch: a MostPop user's feed is the trending order without what they watched; a towers user's is not.
    assignment = Assignment(registry.running(settings.paths.experiments_file))
    rows = feeds(world_copy)
    trending = pl.read_parquet(world_copy / "snapshots" / snapshot / "trending.parquet")["video_id"].to_list()
    users = rows["user_id"].unique().sort().to_list()
    arm = {u: assignment.of(u).arm for u in users}  # type: ignore[union-attr]
    assert 0.3 < sum(a == "pop" for a in arm.values()) / len(users) < 0.7
    # The policy's fresh slots and creator cap reorder a little: compare what the feeds open with, not every position.
    top = set(trending[:40])

    def opens_with_trending(group: str) -> float:
        firsts = [rows.filter(pl.col("user_id") == u)["video_id"].to_list()[:20] for u in users if arm[u] == group]
        return float(np.mean([len(top.intersection(f)) / len(f) for f in firsts]))

    pop_overlap, towers_overlap = opens_with_trending("pop"), opens_with_trending("towers")
    assert pop_overlap > 0.8 and towers_overlap < pop_overlap - 0.3, (pop_overlap, towers_overlap)

    server = ApiServer(world_copy, api_impression_flush_ms="100").start()
    try:
        # The API: each arm's walk, bound to its arm page after page, logged under it.
        user = next(u for u in users if arm[u] == "pop")
        first = page(server, user, limit=5)
        second = page(server, user, limit=5, cursor=first["next_cursor"])
        assert [i["video_id"] for i in first["items"] + second["items"]] == rows.filter(pl.col("user_id") == user)[
            "video_id"
        ].to_list()[:10]
        newcomer = next(f"new-{i}" for i in range(10_000) if assignment.of(f"new-{i}").arm == "pop")  # type: ignore[union-attr]
        body = {"user_id": newcomer, "watched_videos": trending[-3:], "liked_videos": trending[-3:]}
        assert httpx.post(f"{server.url}/embeddings/user", json=body).status_code == 200
        assert page(server, newcomer, limit=5)["source"] == "trending"  # a vector, but its arm is MostPop
        summary = asyncio.run(
            simulate(settings, server.url, users=60, sessions_per_user=1, limit=10, concurrency=4, seed=5, api_key=None)
        )
    finally:
        server.stop()
    assert summary["request_errors"] == {}, summary
    ingest_inbox(settings)
    shown = pl.from_arrow(Lake(world_copy / "lake").read("impressions"))
    for row in shown.unique("user_id").iter_rows(named=True):
        placed = assignment.of(row["user_id"])
        assert (row["experiment"], row["arm"]) == ((placed.experiment, placed.arm) if placed else (None, None))

    assert experiments_cli(["report", "towers-vs-pop", "--data-dir", str(world_copy)]) == 0
    out = world_copy / "reports" / "experiments" / "towers-vs-pop"
    result = json.loads((out / "report.json").read_text())
    assert result["users"]["towers"] > 10 and result["users"]["pop"] > 10
    like = result["metrics"]["like_rate"]
    assert like["towers"]["low"] <= like["towers"]["value"] <= like["towers"]["high"]
    assert set(like["pop"]["difference"]) == {"value", "low", "high", "p", "interval_excludes_zero", "verdict"}
    assert "| like_rate |" in (out / "report.md").read_text() and (out / "report.png").stat().st_size > 5_000
    assert np.isfinite(result["metrics"]["videos_per_session"]["towers"]["value"])


def test_verdicts_hold_for_the_whole_report_not_each_metric_alone() -> None:
    from rec_core.experiments.report import _holm_verdicts, _two_sided_p

    rng = np.random.default_rng(0)
    assert _two_sided_p(rng.normal(5, 1, 1000)) == 0.0
    assert 0.5 < _two_sided_p(rng.normal(0, 1, 1000)) <= 1.0
    # p = 0.03 alone would pass a 5% test; beside five others it does not. p = 0.001 does either way.
    differences = [{"value": -1.0, "p": 0.03}] + [{"value": 1.0, "p": 0.6} for _ in range(5)]
    _holm_verdicts(differences)
    assert [d["verdict"] for d in differences] == ["within noise"] * 6
    differences = [{"value": -1.0, "p": 0.001}, {"value": 2.0, "p": 0.009}] + [{"value": 1.0, "p": 0.6}] * 4
    checked = [dict(d) for d in differences]
    _holm_verdicts(checked)
    assert [d["verdict"] for d in checked[:3]] == ["lower", "higher", "within noise"]


def test_a_report_with_no_data_is_strict_json_and_says_no_data(tmp_path: Path) -> None:
    """Before any impression: report.json held bare NaN tokens (JSON.parse refuses them), every difference read
    "within noise" with nothing measured, and a one-arm report's table had a header cell too many."""
    from rec_core.experiments.report import report
    from rec_core.settings import Settings
    from rec_core.synthetic.commit import generate_data

    settings = Settings.load({}).override(data_dir=tmp_path / "data")
    generate_data(settings, "tiny", seed=3)
    path = settings.paths.experiments_file
    registry.start(path, "two", (Arm("a", "model", 0.2), Arm("b", "most_pop", 0.2)))
    registry.start(path, "one", (Arm("solo", "model", 0.5),))
    for name in ("two", "one"):
        result = report(settings, name)
        folder = Path(result["path"]).parent

        def refuse(token: str) -> None:
            raise AssertionError(f"{token} in report.json")

        strict = json.loads((folder / "report.json").read_text(), parse_constant=refuse)
        table = [line for line in (folder / "report.md").read_text().splitlines() if line.startswith("|")]
        assert len({line.count("|") for line in table}) == 1, table
        if name == "two":
            assert {entry["b"]["difference"]["verdict"] for entry in strict["metrics"].values()} == {"no data"}
