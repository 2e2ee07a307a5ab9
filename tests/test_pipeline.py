"""The whole batch DAG end to end on embedded defaults, at tiny scale, with real Airflow and Milvus Lite."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from rec_core.data.warehouse import ANALYSIS_QUERIES
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _feeds_hash(snapshot: Path) -> str:
    digest = hashlib.sha256()
    for part in sorted((snapshot / "feeds").glob("*.parquet")):
        table = pq.read_table(part, columns=["user_id", "rank", "video_id", "score", "reason"])
        digest.update(json.dumps(table.to_pydict(), sort_keys=True, default=str).encode())
    return digest.hexdigest()


# ---- the README's DuckDB analysis queries, checked against numbers computed from the files themselves ----------

README_QUERY_COLUMNS: dict[str, list[str]] = {
    "Feed share per creator (top 10 by feed slots)": [
        "creator_id",
        "slots",
        "pct_of_slots",
        "first_page_slots",
        "users_reached",
    ],
    "Catalogue coverage of the feeds": [
        "catalogue",
        "videos_in_feeds",
        "pct_covered",
        "videos_on_first_pages",
        "pct_covered_first_page",
    ],
    "Cold-video exposure (posted within 3 days of as-of, or never watched before it)": [
        "slots",
        "pct_fresh",
        "pct_never_watched",
        "pct_fresh_first_page",
        "pct_never_watched_first_page",
    ],
    "Why videos are shown (reason mix)": ["reason_kind", "slots", "pct_of_slots", "avg_rank"],
    "Average feed rank of videos users watched or liked after as-of": [
        "liked",
        "later_interactions",
        "in_feed",
        "pct_in_feed",
        "avg_rank_in_feed",
        "pct_of_hits_on_first_page",
    ],
    "Model metrics over versions (test split)": [
        "model_version",
        "current",
        "model",
        "recall_at_50",
        "ndcg_at_50",
        "cold_recall_at_50",
        "coverage_at_50",
    ],
    "Published snapshots": [
        "snapshot_id",
        "model_version",
        "first_published_at",
        "published_at",
        "times_made_live",
        "live",
        "kept",
    ],
}
FIRST_PAGE = 20  # the queries' "rank < 20"
DAGS = ROOT / "dags"  # read as a bundle, the way the DAG processor does: its folder on sys.path (rec_dags)


def _readme_queries() -> dict[str, str]:
    """The SQL blocks of the README's "Analysing in DuckDB" section, keyed by the bold title above each."""
    section = (ROOT / "README.md").read_text().split("## Analysing in DuckDB", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"\*\*(.+?)\*\*\s*```sql\n(.*?)```", section, re.S))


def _near(got: float | None, want: float | None, digits: int) -> bool:
    """``got`` is SQL's round(want, digits): equal up to half a unit of the last digit (None when undefined)."""
    if want is None:
        return got is None
    return got is not None and abs(got - want) <= 0.5 * 10**-digits + 1e-9


def _pct(part: int | float, whole: int | float) -> float | None:
    return 100.0 * part / whole if whole else None


def _query(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The result's column names, and its rows as dicts by column name."""
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return names, [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _check_readme_queries(data_dir: Path, warehouse: Path) -> list[tuple]:
    """Run each query the README shows on the warehouse and compare it with the same figure computed here, with
    polars, from the live lake version, the live snapshot's files, models/*/metrics.json and the publish history.
    Returns the "Published snapshots" rows (snapshot_id, ..., live, kept)."""
    queries = _readme_queries()
    # The README and rec_core.data.warehouse (what `make summary` prints) show the same queries.
    assert list(queries) == list(ANALYSIS_QUERIES) == list(README_QUERY_COLUMNS)
    for title, sql in queries.items():
        assert " ".join(sql.split()) == " ".join(ANALYSIS_QUERIES[title].split()), title

    live = (data_dir / "snapshots" / "LIVE").read_text().strip()
    snapshot = data_dir / "snapshots" / live
    build = json.loads((snapshot / "build.json").read_text())
    manifest = json.loads((snapshot / "manifest.json").read_text())
    as_of = dt.datetime.fromisoformat(build["as_of"])
    lake = data_dir / "lake" / (data_dir / "lake" / "CURRENT").read_text().strip()
    videos = pl.read_parquet(lake / "videos.parquet", columns=["video_id", "creator_id", "created_at"])
    interactions = pl.read_parquet(lake / "interactions.parquet", columns=["user_id", "video_id", "ts", "liked"])
    feeds = pl.read_parquet(sorted((snapshot / "feeds").glob("part-*.parquet")))
    assert feeds.height == manifest["counts"]["feed_rows"] > 0
    slots = feeds.join(videos, on="video_id", how="inner")
    assert slots.height == feeds.height  # every feed video is in the lake, so the joins below lose nothing
    first_page = slots.filter(pl.col("rank") < FIRST_PAGE)
    n_videos = videos.height

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        # The views read the live lake version and the snapshot that snapshots/LIVE names.
        assert con.execute("SELECT snapshot_id, lake_version, as_of FROM snapshot_info").fetchall() == [
            (live, build["lake_version"], as_of)
        ]
        assert con.execute("SELECT lake_version FROM lake_info").fetchone()[0] == lake.name
        for view, rows in [("feeds", feeds.height), ("videos", n_videos), ("interactions", interactions.height)]:
            assert con.execute(f"SELECT count(*) FROM {view}").fetchone()[0] == rows, view
        results = {}
        for title, sql in queries.items():
            names, results[title] = _query(con, sql)
            assert names == README_QUERY_COLUMNS[title], title
    finally:
        con.close()

    # Feed share per creator: the ten creators with most slots, counted from the feed files.
    share = results["Feed share per creator (top 10 by feed slots)"]
    want = (
        slots.group_by("creator_id")
        .agg(
            pl.len().alias("slots"),
            (pl.col("rank") < FIRST_PAGE).sum().alias("first_page_slots"),
            pl.col("user_id").n_unique().alias("users_reached"),
        )
        .sort(["slots", "creator_id"], descending=[True, False])
        .head(10)
    )
    assert len(share) == 10
    assert [(r["creator_id"], r["slots"], r["first_page_slots"], r["users_reached"]) for r in share] == want.rows()
    assert all(_near(r["pct_of_slots"], _pct(r["slots"], feeds.height), 2) for r in share), share

    # Catalogue coverage: distinct videos in all feeds and on first pages, over the lake's catalogue.
    (coverage,) = results["Catalogue coverage of the feeds"]
    in_feeds, on_first = feeds["video_id"].n_unique(), first_page["video_id"].n_unique()
    assert (coverage["catalogue"], coverage["videos_in_feeds"], coverage["videos_on_first_pages"]) == (
        n_videos,
        in_feeds,
        on_first,
    )
    assert 0 < on_first <= in_feeds <= n_videos
    assert _near(coverage["pct_covered"], _pct(in_feeds, n_videos), 2)
    assert _near(coverage["pct_covered_first_page"], _pct(on_first, n_videos), 2)

    # Cold-video exposure: fresh = posted within 3 days of as-of; never watched = no interaction before as-of.
    (cold,) = results["Cold-video exposure (posted within 3 days of as-of, or never watched before it)"]
    watched = interactions.filter(pl.col("ts") < as_of)["video_id"].unique().implode()
    flags = slots.with_columns(
        (pl.col("created_at") >= as_of - dt.timedelta(days=3)).alias("fresh"),
        (~pl.col("video_id").is_in(watched)).alias("unwatched"),
    )
    top = flags.filter(pl.col("rank") < FIRST_PAGE)
    assert cold["slots"] == feeds.height
    assert _near(cold["pct_fresh"], 100.0 * flags["fresh"].mean(), 2)
    assert _near(cold["pct_never_watched"], 100.0 * flags["unwatched"].mean(), 2)
    assert _near(cold["pct_fresh_first_page"], 100.0 * top["fresh"].mean(), 2)
    assert _near(cold["pct_never_watched_first_page"], 100.0 * top["unwatched"].mean(), 2)
    assert flags["fresh"].any()  # the fresh slots hold fresh videos, so a broken as-of or interval shows

    # Reason mix: reasons with their quoted caption, creator and tag masked, as the query's regexps do.
    def kind(reason: str) -> str:
        return re.sub(r"#\S+", "#tag", re.sub(r"@\S+", "@creator", re.sub(r'"[^"]*"', '"…"', reason)))

    mix = results["Why videos are shown (reason mix)"]
    masked = {reason: kind(reason) for reason in feeds["reason"].unique()}
    kinds = (
        feeds.with_columns(pl.col("reason").replace_strict(masked, return_dtype=pl.String).alias("reason_kind"))
        .group_by("reason_kind")
        .agg(pl.len().alias("slots"), pl.col("rank").mean().alias("avg_rank"))
    )
    want_mix = {r["reason_kind"]: r for r in kinds.to_dicts()}
    assert {r["reason_kind"]: r["slots"] for r in mix} == {k: r["slots"] for k, r in want_mix.items()}
    assert [r["slots"] for r in mix] == sorted((r["slots"] for r in mix), reverse=True)
    for r in mix:
        assert _near(r["pct_of_slots"], _pct(r["slots"], feeds.height), 2), r
        assert _near(r["avg_rank"], want_mix[r["reason_kind"]]["avg_rank"], 1), r
    assert len(mix) >= 3 and "popular right now" in want_mix  # a real feed mixes several kinds of reason

    # Later interactions found in the feeds. The pipeline's as-of is just after the lake's newest event, so there are
    # none here and the query must say so (0 and NULL, not a made-up rate); tests/test_warehouse.py has a mid-history
    # as-of with hits.
    later = results["Average feed rank of videos users watched or liked after as-of"]
    assert [r["liked"] for r in later] == [False, True]
    for r in later:
        mine = interactions.filter((pl.col("ts") >= as_of) & (pl.col("liked") == r["liked"]))
        hits = mine.join(feeds, on=["user_id", "video_id"], how="inner")
        assert (r["later_interactions"], r["in_feed"]) == (mine.height, hits.height), r
        assert _near(r["pct_in_feed"], _pct(hits.height, mine.height), 2), r
        assert _near(r["avg_rank_in_feed"], hits["rank"].mean() if hits.height else None, 1), r
        assert _near(r["pct_of_hits_on_first_page"], _pct((hits["rank"] < FIRST_PAGE).sum(), hits.height), 2), r

    # Model metrics: one row per (version, model) of models/*/metrics.json, current = models/CURRENT.
    models_dir = data_dir / "models"
    current = (models_dir / "CURRENT").read_text().strip()
    want_models = {}
    for path in sorted(models_dir.glob("m*/metrics.json")):
        for model, values in json.loads(path.read_text())["models"].items():
            want_models[(path.parent.name, model)] = (path.parent.name == current, values)
    got_models = results["Model metrics over versions (test split)"]
    assert {(r["model_version"], r["model"]) for r in got_models} == set(want_models)
    assert {"two_tower", "most_pop"} <= {r["model"] for r in got_models if r["model_version"] == current}
    for r in got_models:
        is_current, values = want_models[(r["model_version"], r["model"])]
        assert r["current"] is is_current, r
        for column, metric in [
            ("recall_at_50", "recall@50"),
            ("ndcg_at_50", "ndcg@50"),
            ("cold_recall_at_50", "cold_recall@50"),
            ("coverage_at_50", "coverage@50"),
        ]:
            assert _near(r[column], values.get(metric), 4), (r, column)
            assert r[column] is None or 0.0 <= r[column] <= 1.0, (r, column)
    order = [(r["model_version"], -(r["recall_at_50"] if r["recall_at_50"] is not None else -1.0)) for r in got_models]
    assert order == sorted(order)  # by version, best recall first

    # Published snapshots: one row per snapshot of snapshots/history.json; the live one is snapshots/LIVE.
    history = json.loads((data_dir / "snapshots" / "history.json").read_text())
    published = results["Published snapshots"]
    ids = list(dict.fromkeys(e["snapshot_id"] for e in history))
    assert [r["snapshot_id"] for r in published] == ids
    for r in published:
        mine = [e for e in history if e["snapshot_id"] == r["snapshot_id"]]
        times = [dt.datetime.fromisoformat(e["published_at"]) for e in mine]
        assert r["model_version"] == mine[0]["model_version"]
        assert (r["first_published_at"], r["published_at"], r["times_made_live"]) == (min(times), max(times), len(mine))
        assert r["live"] is (r["snapshot_id"] == live)
        assert r["kept"] is (data_dir / "snapshots" / r["snapshot_id"]).is_dir()
    assert [r["snapshot_id"] for r in published if r["live"]] == [live]
    assert next(r for r in published if r["live"])["model_version"] == build["model_version"]
    return [tuple(r.values()) for r in published]


def test_recsys_pipeline_publishes_then_reruns_to_the_same_feeds(airflow_db: Path, data_env: Path) -> None:
    from airflow.dag_processing.dagbag import BundleDagBag

    from rec_core.settings import Settings
    from rec_core.snapshot.layout import live_snapshot_id
    from rec_core.synthetic.commit import generate_data

    settings = Settings.load()
    generate_data(settings, "tiny", seed=4)
    dag = BundleDagBag(dag_folder=DAGS, bundle_path=DAGS, bundle_name="dags-folder").get_dag("recsys_pipeline")
    conf = {"retrain": True, "epochs": 3, "video_shards": 2, "user_shards": 2}
    run = dag.test(run_conf=conf)
    assert run.state == "success"
    first = live_snapshot_id(settings.paths)
    assert first is not None
    snapshot = settings.paths.snapshots_dir / first
    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert manifest["snapshot_id"] == first and manifest["counts"]["feed_users"] == manifest["counts"]["lake_users"]
    # The warehouse answers the README's analysis queries on the live snapshot, with the right numbers.
    _check_readme_queries(settings.paths.data_dir, settings.paths.warehouse_path)

    # Same lake, same model: reusing the current model must give the same feeds.
    run = dag.test(run_conf={**conf, "retrain": False})
    assert run.state == "success"
    second = live_snapshot_id(settings.paths)
    assert second != first
    assert _feeds_hash(settings.paths.snapshots_dir / second) == _feeds_hash(snapshot)
    # The publish rebuilt the warehouse: it now answers over the second snapshot and lists both.
    published = _check_readme_queries(settings.paths.data_dir, settings.paths.warehouse_path)
    assert [(r[0], r[5]) for r in published] == [(first, False), (second, True)]


def test_killed_materialization_leaves_the_live_snapshot_alone(airflow_db: Path, data_env: Path) -> None:
    """SIGKILL in the middle of writing a feed shard: the live snapshot is untouched, the half-built one is
    refused by validation, and a rerun of the shard completes it."""
    from rec_core.feed.batch import build_trending, materialize_feeds
    from rec_core.model.inference import embed_users, embed_videos
    from rec_core.model.release import choose_model
    from rec_core.settings import Settings
    from rec_core.snapshot.begin import begin
    from rec_core.snapshot.layout import SnapshotError, begin_snapshot, live_snapshot_id
    from rec_core.snapshot.publish import publish
    from rec_core.snapshot.validate import validate_snapshot
    from rec_core.snapshot.vector_load import load_vectors
    from rec_core.synthetic.commit import generate_data

    settings = Settings.load()
    generate_data(settings, "tiny", seed=6)
    choose_model(settings, retrain=True, epochs=3)

    def build_upto_materialize() -> str:
        snapshot_id = begin(settings, video_shards=1, user_shards=2)["snapshot_id"]
        embed_videos(settings, snapshot_id, 0)
        for shard in range(2):
            embed_users(settings, snapshot_id, shard)
        load_vectors(settings, snapshot_id)
        build_trending(settings, snapshot_id)
        return snapshot_id

    live = build_upto_materialize()
    for shard in range(2):
        materialize_feeds(settings, live, shard)
    validate_snapshot(settings.paths, live)
    publish(settings.paths, live, keep=settings.batch.snapshots_keep)
    before = {p.name: p.read_bytes() for p in (settings.paths.snapshots_dir / live / "feeds").iterdir()}

    # A build an earlier run abandoned two days ago (never validated, nothing published since): the next build's
    # begin removes it, so runs that keep failing do not pile snapshots up.
    abandoned = begin_snapshot(
        settings.paths,
        model_version="m-abandoned",
        lake_version="v0",
        as_of=dt.datetime.now(dt.UTC),
        video_shards=1,
        user_shards=1,
        embedding_dim=8,
        feed_length=10,
        now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    ).root
    two_days_ago = time.time() - 2 * 86_400
    for path in [*abandoned.rglob("*"), abandoned]:
        os.utime(path, (two_days_ago, two_days_ago))

    time.sleep(1.1)  # snapshot ids have one-second resolution
    new = build_upto_materialize()
    assert not abandoned.exists() and (settings.paths.snapshots_dir / live).is_dir()
    script = f"""
import os, signal
from pathlib import Path
import rec_core.feed.batch as batch
from rec_core.settings import Settings
def dying(table, target):
    tmp = Path(target).with_name("." + Path(target).name + ".partial")
    tmp.write_bytes(b"PAR1 half a file")
    os.kill(os.getpid(), signal.SIGKILL)
batch._write_parquet = dying
batch.materialize_feeds(Settings.load(), {new!r}, 0)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env=dict(os.environ))
    assert proc.returncode == -9, proc.stderr.decode()[-500:]
    assert live_snapshot_id(settings.paths) == live
    assert {p.name: p.read_bytes() for p in (settings.paths.snapshots_dir / live / "feeds").iterdir()} == before
    with pytest.raises(SnapshotError, match="missing file"):
        validate_snapshot(settings.paths, new)
    for shard in range(2):
        materialize_feeds(settings, new, shard)
    validate_snapshot(settings.paths, new)
    publish(settings.paths, new, keep=settings.batch.snapshots_keep)
    assert live_snapshot_id(settings.paths) == new
