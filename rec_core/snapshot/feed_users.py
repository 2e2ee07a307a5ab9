"""Which users a snapshot gives a precomputed feed: every lake user, or with ``REC_FEED_ACTIVE_DAYS`` the active ones.

Feeds are most of a snapshot and of its materialization, and every user the lake has ever seen would get one in
every snapshot: a cost that grows with all users, not with those who come back. With a window, a user gets a feed
when they interacted in ``[feed_active_since, as_of)`` or joined since ``feed_active_since``
(``BuildInfo.feed_active_since``). The others keep their batch vector, and the API serves a returning one as the
batch would have (``feed_api.pager.first_cursor``): one with a history by live search from the first page, leaving
out what they watched before the snapshot (:mod:`rec_core.snapshot.watch_history`); one without a history, or in a
MostPop arm, by the trending list, less what they watched. The next snapshot gives them a feed again. The
materializer and validation both ask :func:`active_user_ids`, so they cannot disagree.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from rec_core.settings import PathSettings
from rec_core.snapshot.files import lake_table_path
from rec_core.snapshot.layout import BuildInfo


def active_user_ids(path_settings: PathSettings, build: BuildInfo) -> pl.Series | None:
    """The users with a feed in ``build``, sorted and unique; None when every lake user has one."""
    if build.feed_active_since is None:
        return None
    since, as_of = (dt.datetime.fromisoformat(t) for t in (build.feed_active_since, build.as_of))

    def since_then(table: str, column: str, until: dt.datetime | None) -> pl.LazyFrame:
        scan = pl.scan_parquet(lake_table_path(path_settings, build, table))
        kept = pl.col(column) >= since if until is None else (pl.col(column) >= since) & (pl.col(column) < until)
        return scan.filter(kept).select("user_id")

    # Interactions count before as-of, as everywhere in the build; a user row counts from its creation on, with no
    # end: one who signed up after the newest interaction is in the lake, and was always given a feed.
    active = pl.concat([since_then("interactions", "ts", as_of), since_then("users", "created_at", None)])
    return active.unique().collect()["user_id"].sort()
