"""The traffic simulator: the world's users answer what they are shown by their planted tastes, over real HTTP,
and every view they report joins the impression it came from."""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb
import numpy as np
import pytest

from jobs.simulate_traffic import simulate
from rec_core.data.inbox_merge import ingest_inbox
from rec_core.data.lake import Lake
from rec_core.data.warehouse import build_warehouse
from rec_core.settings import Settings
from rec_core.synthetic.audience import Audience
from rec_core.synthetic.truth import load_truth
from tests.conftest import ApiServer
from tests.test_feed_api_lifecycle import world_copy  # noqa: F401  (a fixture)


def test_reactions_follow_the_planted_affinity(api_world: Path) -> None:
    truth = load_truth(api_world / "truth")
    lake = Lake(api_world / "lake").read("videos", columns=["video_id", "duration_s"])
    audience = Audience(truth, dict(zip(lake["video_id"].to_pylist(), lake["duration_s"].to_pylist(), strict=True)))
    rng = np.random.default_rng(0)
    best, worst = [], []
    for user in truth.user_ids[:40]:
        order = np.argsort(-truth.affinity([user], truth.video_ids)[0])
        best += audience.react(user, truth.video_ids[order[:30]].tolist(), rng)
        worst += audience.react(user, truth.video_ids[order[-30:]].tolist(), rng)

    def mean(reactions: list, attribute: str) -> float:
        return float(np.mean([getattr(r, attribute) for r in reactions]))

    assert mean(best, "completion") > mean(worst, "completion") + 0.2
    assert mean(best, "liked") > 2 * mean(worst, "liked")
    assert mean(best, "skipped") < mean(worst, "skipped")
    # ... and leave the app later when the feed holds them: an engaging feed earns longer sessions.
    habits = audience.habits
    stays = {
        name: float(np.mean([not habits.leaves_after(r, rng) for r in reactions * 20]))
        for name, reactions in (("best", best), ("worst", worst))
    }
    assert stays["best"] > stays["worst"] + 0.01, stays
    # One seed, one answer: a session replays whatever order concurrent sessions run in.
    video_ids = truth.video_ids[:10].tolist()
    a = audience.react(truth.user_ids[0], video_ids, np.random.default_rng([7, 1]))
    assert a == audience.react(truth.user_ids[0], video_ids, np.random.default_rng([7, 1]))


@pytest.mark.slow
def test_a_simulated_run_is_served_logged_and_joined(world_copy: Path) -> None:  # noqa: F811
    settings = Settings.load({"REC_DATA_DIR": str(world_copy)})
    server = ApiServer(world_copy, api_impression_flush_ms="100").start()
    try:
        summary = asyncio.run(
            simulate(settings, server.url, users=15, sessions_per_user=2, limit=10, concurrency=4, seed=3, api_key=None)
        )
    finally:
        server.stop()
    assert summary["request_errors"] == {} and summary["sessions"] == 30, summary
    assert (
        summary["pages"] >= 30 and summary["videos_viewed"] > 0 and summary["events_posted"] >= summary["videos_viewed"]
    )

    taken = ingest_inbox(settings)
    assert taken["impression_pages"] == summary["pages"], taken
    con = duckdb.connect(str(build_warehouse(settings.paths, settings.batch)), read_only=True)
    try:
        viewed, liked, skipped, through = con.execute(
            "SELECT count(*) FILTER (WHERE viewed), count(*) FILTER (WHERE liked), count(*) FILTER (WHERE skipped), "
            "count(*) FILTER (WHERE viewed AND completion >= 0.8) FROM impression_outcomes"
        ).fetchone()
        sessions = con.execute("SELECT sum(sessions) FROM online_sessions").fetchone()[0]
        daily = con.execute("SELECT sum(viewed), max(like_rate) <= 1 FROM online_daily").fetchone()
    finally:
        con.close()
    # Every video the simulated app reported joins the impression it was shown in, and nothing else does.
    assert viewed == summary["videos_viewed"]
    assert liked == round(summary["like_rate"] * summary["videos_viewed"])
    assert skipped == round(summary["skip_rate"] * summary["videos_viewed"])
    assert through == round(summary["watch_through_80"] * summary["videos_viewed"])
    # A user's two sessions, seconds apart, are two walks from the top of the feed: two sessions.
    assert sessions == 30 and daily == (viewed, True)
    assert Lake(world_copy / "lake").read("impressions").num_rows >= viewed
