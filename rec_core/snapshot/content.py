"""The content rules of a built snapshot, checked in DuckDB against the lake version it was built from.

Row counts, and per concern one pass: feeds (no duplicate (user, rank) or (user,
video), ranks contiguous from 0, every video known, scores finite, every user
covered and no stranger), the vectors (one per lake video and user, no
duplicates) and trending. Part of :func:`rec_core.snapshot.validate.validate_snapshot`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import polars as pl

from rec_core.snapshot.layout import BuildInfo

if TYPE_CHECKING:
    from rec_core.snapshot.feed_repeats import Repeats

EXAMPLES = 3  # offending values quoted per refusal reason


def _parquet(files: list[Path]) -> str:
    return "read_parquet([" + ", ".join(_sql_str(f) for f in files) + "], filename=true)"


def check_content(
    con: duckdb.DuckDBPyConnection,
    build: BuildInfo,
    lake: dict[str, Path],
    feeds: list[Path],
    video_vecs: list[Path],
    user_vecs: list[Path],
    trending: list[Path],
    problems: list[str],
    *,
    ordered: bool = False,
    repeats: Repeats | None = None,
    active: pl.Series | None = None,
) -> tuple[dict[str, int], str | None]:
    """Row counts and every content rule, one DuckDB pass per concern; appends to ``problems``.

    ``ordered``: the caller has checked that each feed part is in strictly increasing (user_id, rank) order and
    each part starts after the last user of the one before (``validate._check_sorted``). No (user, rank) can then
    repeat and no user spans two parts, so those two counts are not taken: counted distinct per user over every
    feed row, they were half of this check's time at the large scale (6 of 13 s for 50 M rows).

    ``repeats``: the caller has counted the rows that repeat a video of their user from the serving index's codes
    (:mod:`rec_core.snapshot.feed_repeats`), so the distinct count of videos per user is not taken here (9.5 s of
    13 at that scale).

    ``active``: the users the build gives a feed (:func:`rec_core.snapshot.feed_users.active_user_ids`); None: every
    lake user. Every one of them must have a feed, and no one else.

    Returns the counts and the lake's watermark (the newest interaction, ISO time; None without interactions).
    """

    def one(sql: str) -> Any:
        return con.execute(sql).fetchone()

    def examples(sql: str) -> str:
        rows = con.execute(f"{sql} LIMIT {EXAMPLES}").fetchall()
        return ", ".join(str(r[0] if len(r) == 1 else tuple(r)) for r in rows)

    as_of = _sql_str(build.as_of)
    con.execute(
        f"CREATE TEMP TABLE lake_videos AS SELECT DISTINCT video_id FROM read_parquet({_sql_str(lake['videos'])})"
    )
    # The users a build must cover: the users table plus anyone seen in interactions before as-of
    # (rec_core.model.inference.all_user_ids cuts user shards over exactly this set).
    con.execute(
        f"CREATE TEMP TABLE lake_users AS SELECT user_id FROM read_parquet({_sql_str(lake['users'])}) UNION "
        f"SELECT user_id FROM read_parquet({_sql_str(lake['interactions'])}) WHERE ts < {as_of}::TIMESTAMPTZ"
    )
    if active is None:
        con.execute("CREATE TEMP TABLE feed_users AS SELECT user_id FROM lake_users")
    else:
        con.register("active_users", pl.DataFrame({"user_id": active}).to_arrow())
        con.execute("CREATE TEMP TABLE feed_users AS SELECT user_id FROM active_users")
        con.unregister("active_users")
    watermark_ms = one(f"SELECT epoch_ms(max(ts)) FROM read_parquet({_sql_str(lake['interactions'])})")[0]
    counts = {
        "videos": one("SELECT count(*) FROM lake_videos")[0],
        "lake_users": one("SELECT count(*) FROM lake_users")[0],
        "active_users": one("SELECT count(*) FROM feed_users")[0],
    }

    if feeds:
        src = _parquet(feeds)
        rows, nulls, nonfinite, no_reason, unknown, distinct_videos = one(
            f"SELECT count(*), count(*) FILTER (WHERE f.user_id IS NULL OR f.rank IS NULL OR f.video_id IS NULL "
            f"OR f.score IS NULL), count(*) FILTER (WHERE NOT isfinite(f.score)), "
            f"count(*) FILTER (WHERE f.reason IS NULL OR f.reason = ''), "
            f"count(*) FILTER (WHERE v.video_id IS NULL AND f.video_id IS NOT NULL), count(DISTINCT f.video_id) "
            f"FROM {src} f LEFT JOIN lake_videos v USING (video_id)"
        )
        # The order check skips rows with a null user or rank (reported above), so it vouches only without them.
        exact = not ordered or nulls
        ranks = "count(DISTINCT rank)" if exact else "count(*)"
        parts = "count(DISTINCT filename)" if exact else "1"
        vids = "count(DISTINCT video_id)" if repeats is None else "count(*)"
        con.execute(
            f"CREATE TEMP TABLE per_user AS SELECT user_id, count(*) AS n, min(rank) AS lo, max(rank) AS hi, "
            f"{ranks} AS ranks, {vids} AS vids, {parts} AS parts FROM {src} GROUP BY user_id"
        )
        per_user = one(
            "SELECT count(*), coalesce(sum(n - ranks), 0), coalesce(sum(n - vids), 0), "
            "count(*) FILTER (WHERE lo <> 0 OR hi <> n - 1 OR ranks <> n), count(*) FILTER (WHERE parts > 1), "
            f"count(*) FILTER (WHERE n > {build.feed_length}), min(n), max(n) FROM per_user WHERE user_id IS NOT NULL"
        )
        users, dup_ranks, dup_videos, gaps, split, too_long, shortest, longest = per_user
        counts |= {
            "feed_rows": rows,
            "feed_users": users,
            "feed_videos": distinct_videos,
            "feed_min_length": shortest or 0,
            "feed_max_length": longest or 0,
        }
        if dup_ranks:
            problems.append(
                f"duplicate (user_id, rank): {dup_ranks} extra row(s), e.g. user "
                + examples("SELECT user_id FROM per_user WHERE ranks < n ORDER BY user_id")
            )
        if repeats is not None:  # counted by the caller; the query above took count(*) for vids
            dup_videos = repeats.extra_rows
        if dup_videos:
            problems.append(
                f"duplicate (user_id, video_id): {dup_videos} extra row(s), e.g. user "
                + (
                    ", ".join(repeats.example_users)
                    if repeats is not None
                    else examples("SELECT user_id FROM per_user WHERE vids < n ORDER BY user_id")
                )
            )
        if gaps:
            problems.append(
                f"ranks not contiguous from 0 for {gaps} user(s), e.g. "
                + examples("SELECT user_id FROM per_user WHERE lo <> 0 OR hi <> n - 1 OR ranks <> n ORDER BY user_id")
            )
        if split:
            problems.append(f"{split} user(s) appear in more than one feed part")
        if too_long:
            problems.append(f"{too_long} feed(s) longer than the build's feed_length {build.feed_length}")
        if nulls:
            problems.append(f"{nulls} feed row(s) with a null user_id, rank, video_id or score")
        if nonfinite:
            problems.append(f"non-finite scores (NaN or infinite): {nonfinite} feed row(s)")
        if no_reason:
            problems.append(f"{no_reason} feed row(s) without a reason")
        if unknown:
            problems.append(
                f"unknown video ids in feeds (not in lake {build.lake_version}): {unknown} row(s), e.g. "
                + examples(f"SELECT DISTINCT video_id FROM {src} ANTI JOIN lake_videos USING (video_id) ORDER BY 1")
            )
        missing_users = one("SELECT count(*) FROM feed_users ANTI JOIN per_user USING (user_id)")[0]
        if missing_users:
            problems.append(
                f"users without a feed: {missing_users} of {counts['active_users']}, e.g. "
                + examples("SELECT user_id FROM feed_users ANTI JOIN per_user USING (user_id) ORDER BY 1")
            )
        strangers = one("SELECT count(*) FROM per_user ANTI JOIN feed_users USING (user_id)")[0]
        if strangers:
            whom = "unknown to the lake" if active is None else f"not active since {build.feed_active_since}"
            problems.append(
                f"feeds for {strangers} user(s) {whom}, e.g. "
                + examples("SELECT user_id FROM per_user ANTI JOIN feed_users USING (user_id) ORDER BY 1")
            )
    else:
        counts |= {"feed_rows": 0, "feed_users": 0, "feed_videos": 0}
        problems.append(f"users without a feed: all {counts['active_users']} (no readable feed part)")

    for kind, files, id_column, table in (
        ("video", video_vecs, "video_id", "lake_videos"),
        ("user", user_vecs, "user_id", "lake_users"),
    ):
        if not files:
            counts[f"{kind}_vectors"] = 0
            problems.append(f"no readable {kind} vectors")
            continue
        src = f"(SELECT {id_column} FROM {_parquet(files)})"
        n, distinct = one(f"SELECT count(*), count(DISTINCT {id_column}) FROM {src}")
        counts[f"{kind}_vectors"] = n
        expected = counts["videos" if kind == "video" else "lake_users"]
        if n != expected:
            problems.append(f"{n} {kind} vectors for {expected} {kind}s in lake {build.lake_version}")
        if distinct != n:
            problems.append(f"{n - distinct} duplicate {kind} id(s) in the {kind} vectors")
        if unknown := one(f"SELECT count(*) FROM {src} ANTI JOIN {table} USING ({id_column})")[0]:
            problems.append(
                f"{unknown} {kind} vector(s) for ids unknown to the lake, e.g. "
                + examples(f"SELECT {id_column} FROM {src} ANTI JOIN {table} USING ({id_column}) ORDER BY 1")
            )
        if lacking := one(f"SELECT count(*) FROM {table} ANTI JOIN {src} USING ({id_column})")[0]:
            problems.append(f"{lacking} {kind}(s) of the lake have no vector")

    if trending:
        rows, lo, hi, ranks, vids, bad_score, unknown, misordered = one(
            "SELECT count(*), min(rank), max(rank), count(DISTINCT rank), count(DISTINCT t.video_id), "
            "count(*) FILTER (WHERE score IS NULL OR NOT isfinite(score)), "
            "count(*) FILTER (WHERE v.video_id IS NULL), "
            "count(*) FILTER (WHERE rank <> file_row_number) "
            f"FROM read_parquet({_sql_str(trending[0])}, file_row_number=true) t "
            "LEFT JOIN lake_videos v USING (video_id)"
        )
        counts["trending"] = rows
        if rows == 0:
            problems.append("trending.parquet is empty")
        elif lo != 0 or hi != rows - 1 or ranks != rows:
            problems.append("trending ranks are not contiguous from 0")
        elif misordered:
            problems.append("trending.parquet is not sorted by rank")
        if vids != rows:
            problems.append(f"trending has {rows - vids} duplicate video id(s)")
        if bad_score:
            problems.append(f"trending has {bad_score} null or non-finite score(s)")
        if unknown:
            problems.append(f"trending has {unknown} video id(s) unknown to the lake")
    else:
        counts["trending"] = 0
        problems.append("trending list missing or unreadable")
    if watermark_ms is None:
        return counts, None
    return counts, dt.datetime.fromtimestamp(watermark_ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _sql_str(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"
