"""The ranking stage's files in a snapshot: the ranker, and the feature state as of the build's as-of.

The ranker's features (:mod:`rec_core.rank.features`) read an :class:`~rec_core.rank.state.AsOfState`: counts per
video, creator, hashtag and user, and the user-creator / user-hashtag / follow tables, over the events before t.
:func:`write_ranking` computes that state once per build, at the snapshot's as-of from its lake version, and writes
it under ``rank/`` beside the ranker's own files (``Ranker.files()``): compact Parquet tables (zstd), one per entity,
and ``state.json`` with the scalars. :func:`read_ranking` reads them back into the same state, so the batch
materializer and the API compute the same features from the same bytes, and the API needs neither the lake nor
the models folder (docs/architecture.md, invariant 8).

The state read back has one row more per user, video and creator than the build knew: a neutral one, with nothing
counted, for a user the batch never saw (a fresh user: neutral user-side features) and for a video posted since the
snapshot (no views, age zero, no hashtags, a creator with nothing counted).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from rec_core.atomic import write_bytes_atomic, write_with
from rec_core.ids import sorted_positions
from rec_core.model.features import follows_frame, interaction_frame, video_frame
from rec_core.model.inference import UserProfile, as_of_ms
from rec_core.rank.events import RankEvents
from rec_core.rank.profile_state import profile_state
from rec_core.rank.ranker import META_FILE, MODEL_FILE, Ranker
from rec_core.rank.state import HALF_LIVES_DAYS, NEVER_ACTIVE_IDLE_DAYS, WINDOWS_DAYS, AsOfState, PairCounts, state_at
from rec_core.settings import PathSettings
from rec_core.snapshot.files import map_array, read_lake_table, save_array
from rec_core.snapshot.layout import (
    RANK_FILES,
    RANK_PAIRS,
    RANK_SERVE_ARRAYS,
    RANK_STATE_ARRAYS,
    RANK_TABLES,
    SERVE_DIR,
    BuildInfo,
    SnapshotError,
)

log = logging.getLogger(__name__)

FORMAT = 1
STATE_FILE = "state.json"
# Pair tables: (state field, row entity, column entity).
PAIRS = (
    ("user_creator", "users", "creators"),
    ("user_tag", "users", "tags"),
    ("user_tag_recent", "users", "tags"),
    ("follows", "users", "creators"),
)
STATE_KEYS = (
    "format",
    "t_ms",
    "windows_days",
    "half_lives_days",
    "window_totals",
    "decayed_totals",
    "rows",
    "prior_completion",
    "prior_like",
)
_DAYS = [f"{d}d" for d in WINDOWS_DAYS]
_HALVES = [f"{h:g}d" for h in HALF_LIVES_DAYS]
# The columns each table must have for the state to be read back (what write_ranking writes).
COLUMNS: dict[str, tuple[str, ...]] = {
    "videos": (
        "video_id",
        "creator",
        "created_ms",
        "tags",
        "views",
        "completion_rate",
        "like_rate",
        *(f"views_{d}" for d in _DAYS),
        *(f"decayed_{h}" for h in _HALVES),
    ),
    "creators": ("creator_id", "videos", *(f"views_{d}" for d in _DAYS)),
    "tags": ("tag", "share_30d", "share_all"),
    "users": (
        "user_id",
        "events",
        "days_idle",
        "completion",
        "like_rate",
        "recent_weight",
        *(f"events_{d}" for d in _DAYS),
    ),
    **{name: ("row", "col", "value") for name, _, _ in PAIRS},
}
assert {MODEL_FILE, META_FILE, STATE_FILE} | {f"{t}.parquet" for t in RANK_TABLES} == set(RANK_FILES)


def choose_ranker(version_dir: Path, ranker_on: bool) -> tuple[Ranker | None, dict]:
    """The ranker a build applies (None: the feeds keep the towers' order) and what build.json records of it."""
    if not ranker_on:
        return None, {"applied": False, "objective": None, "n_candidates": None, "why": "REC_RANKER=off"}
    ranker = Ranker.load_if_present(version_dir)
    if ranker is None:
        return None, {"applied": False, "objective": None, "n_candidates": None, "why": "the model has no ranker"}
    record = {
        "applied": True,
        "objective": ranker.config.objective,
        "n_candidates": ranker.n_candidates,
        "n_popular": ranker.n_popular,  # popular videos it ranks behind them (rec_core.rank.candidates)
        "popular_source": ranker.popular_source,
        "why": f"REC_RANKER=on and model {version_dir.name} carries a ranker",
    }
    return ranker, record


# ---- the state at build time ----------------------------------------------------------------------------------------


def build_events(path_settings: PathSettings, build: BuildInfo) -> RankEvents:
    """The build's lake version as the ranker's event arrays: every video, and every user of the users table or with
    an interaction before as-of (the users the build's shards cover)."""
    videos = video_frame(
        read_lake_table(path_settings, build, "videos", ["video_id", "creator_id", "hashtags", "created_at"])
    )
    interactions = interaction_frame(
        read_lake_table(path_settings, build, "interactions", ["user_id", "video_id", "ts", "completion", "liked"])
    )
    follows = follows_frame(read_lake_table(path_settings, build, "follows", ["user_id", "creator_id", "ts"]))
    table_users = read_lake_table(path_settings, build, "users", ["user_id"]).column(0).to_pylist()
    users = pl.concat(
        [
            pl.Series(table_users, dtype=pl.String),
            interactions.filter(pl.col("ts_ms") < as_of_ms(build))["user_id"].cast(pl.String),
        ]
    )
    return RankEvents.build(np.asarray(users.unique().sort().to_list(), dtype=object), videos, interactions, follows)


def build_state(path_settings: PathSettings, build: BuildInfo) -> AsOfState:
    """The feature state as of the build's as-of, from every event of its lake version before it."""
    return state_at(build_events(path_settings, build), as_of_ms(build))


def write_ranking(folder: Path, ranker: Ranker, state: AsOfState) -> dict[str, int]:
    """The ranker and ``state`` as ``folder``'s files (each written atomically); returns the table sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in ranker.files().items():
        write_bytes_atomic(folder / name, data)
    ev = state.events
    cut = ev.interactions_before(state.t_ms)
    tables = {
        "videos": pa.table(
            {
                "video_id": pa.array(ev.item_ids.astype(str), pa.string()),
                "creator": pa.array(ev.item_creator.astype(np.int32)),
                "created_ms": pa.array(ev.item_created_ms.astype(np.int64)),
                "tags": pa.ListArray.from_arrays(
                    pa.array(ev.item_tags.indptr.astype(np.int32)), pa.array(ev.item_tags.indices.astype(np.int32))
                ),
                "views": state.item_views,
                **_windows("views", state.item_window_views),
                **_decays("decayed", state.item_decayed),
                "completion_rate": state.item_completion_rate,
                "like_rate": state.item_like_rate,
            }
        ),
        "creators": pa.table(
            {
                "creator_id": pa.array(ev.creator_ids.astype(str), pa.string()),
                **_windows("views", state.creator_window_views),
                "videos": state.creator_videos,
            }
        ),
        "tags": pa.table(
            {
                "tag": pa.array(ev.tag_ids.astype(str), pa.string()),
                "share_30d": state.tag_share_30d,
                "share_all": state.tag_share_all,
            }
        ),
        "users": pa.table(
            {
                "user_id": pa.array(ev.user_ids.astype(str), pa.string()),
                "events": state.user_events,
                **_windows("events", state.user_window_events),
                "days_idle": state.user_days_idle,
                "completion": state.user_completion,
                "like_rate": state.user_like_rate,
                "recent_weight": state.user_recent_weight,
            }
        ),
        **{name: _pair_table(getattr(state, name)) for name, _, _ in PAIRS},
    }
    for name, table in tables.items():
        write_with(folder / f"{name}.parquet", lambda tmp, t=table: pq.write_table(t, tmp, compression="zstd"))
    meta = {
        "format": FORMAT,
        "t_ms": state.t_ms,
        "windows_days": list(WINDOWS_DAYS),
        "half_lives_days": list(HALF_LIVES_DAYS),
        "window_totals": state.window_totals.tolist(),
        "decayed_totals": state.decayed_totals.tolist(),
        # What a video with no view scores (the smoothing's prior): the neutral video's rates.
        "prior_completion": float(ev.completion[:cut].mean()) if cut else 0.0,
        "prior_like": float(ev.liked[:cut].mean()) if cut else 0.0,
        "rows": {name: table.num_rows for name, table in tables.items()},
    }
    write_bytes_atomic(folder / STATE_FILE, json.dumps(meta, indent=2).encode())
    return meta["rows"]


def _windows(prefix: str, matrix: np.ndarray) -> dict[str, np.ndarray]:
    return {f"{prefix}_{d}d": matrix[k] for k, d in enumerate(WINDOWS_DAYS)}


def _decays(prefix: str, matrix: np.ndarray) -> dict[str, np.ndarray]:
    return {f"{prefix}_{h:g}d": matrix[k] for k, h in enumerate(HALF_LIVES_DAYS)}


def _pair_table(pairs: PairCounts) -> pa.Table:
    return pa.table(
        {
            "row": pa.array((pairs.keys // pairs.n_cols).astype(np.int32)),
            "col": pa.array((pairs.keys % pairs.n_cols).astype(np.int32)),
            "value": pa.array(pairs.values.astype(np.float32)),
        }
    )


# ---- reading it back ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RankState:
    """A snapshot's feature state with the neutral rows appended, and the ids that find a row in it."""

    state: AsOfState
    user_ids: np.ndarray  # str, sorted: row = position; the neutral user is row len(user_ids)
    video_ids: np.ndarray  # str, sorted; the neutral video is row len(video_ids)

    @property
    def neutral_user(self) -> int:
        return len(self.user_ids)

    @property
    def neutral_video(self) -> int:
        return len(self.video_ids)

    def user_rows(self, ids: np.ndarray | list[str]) -> np.ndarray:
        """int64 state row of each user id; the neutral row for an id the build did not know."""
        return _rows(self.user_ids, ids)

    def video_rows(self, ids: np.ndarray | list[str]) -> np.ndarray:
        return _rows(self.video_ids, ids)

    def profile_state(self, profile: UserProfile, base_row: int | None = None) -> AsOfState:
        """The state with one user, row 0, whose history is ``profile``, after ``base_row``'s when the snapshot
        knows the user (:mod:`rec_core.rank.profile_state`)."""
        rows = self.video_rows(profile.watched)
        rows[rows == self.neutral_video] = -1
        creators = self.state.events.creator_ids[:-1]  # the neutral creator "" is last, past the sorted ids
        at = sorted_positions(creators, list(profile.followed))
        return profile_state(self.state, rows, profile, at[at >= 0], base_row)


def _rows(sorted_ids: np.ndarray, ids: np.ndarray | list[str]) -> np.ndarray:
    at = sorted_positions(sorted_ids, ids)
    return np.where(at >= 0, at, len(sorted_ids))


def read_ranking(folder: Path) -> tuple[Ranker, RankState]:
    """The ranker and the feature state a snapshot carries in ``folder``; raises SnapshotError when unreadable.

    The state is mapped from ``serve/`` when :func:`write_rank_arrays` wrote it there (every process that reads
    the snapshot then shares its pages), else read from the Parquet tables onto the heap."""
    try:
        ranker = Ranker.load(folder)
        meta = json.loads((folder / STATE_FILE).read_text())
    except Exception as exc:  # LightGBM, JSON, a missing file: whatever does not read refuses the same way
        raise SnapshotError(f"the ranking files in {folder} are unreadable: {exc}") from exc
    if (folder / SERVE_DIR).is_dir():
        problems = meta_problems(meta)
        if problems:
            raise SnapshotError(f"the ranking files in {folder}: " + "; ".join(problems))
        try:
            return ranker, _mapped_state(folder, meta)
        except SnapshotError:
            raise
        except Exception as exc:  # arrays that map but do not fit together: refused like the tables
            raise SnapshotError(f"the ranking files in {folder} do not hold a feature state: {exc!r}") from exc
    return ranker, _read_state(folder, meta)


def _read_state(folder: Path, meta: dict) -> RankState:
    try:
        tables = {name: pq.read_table(folder / f"{name}.parquet") for name in RANK_TABLES}
    except Exception as exc:  # Arrow, a missing file: refused like the rest
        raise SnapshotError(f"the ranking files in {folder} are unreadable: {exc}") from exc
    try:
        problems = check_state(meta, tables)
        if problems:
            raise SnapshotError(f"the ranking files in {folder}: " + "; ".join(problems))
        return _state(meta, tables)
    except SnapshotError:
        raise
    except Exception as exc:  # a file that reads but is not a state (a key or column missing): refused, not a crash
        raise SnapshotError(f"the ranking files in {folder} do not hold a feature state: {exc!r}") from exc


def meta_problems(meta: dict) -> list[str]:
    """What is wrong with a state's state.json (empty when nothing): its keys, format and windows."""
    return _meta_shape_problems(meta) or _meta_version_problems(meta)


def _meta_shape_problems(meta: dict) -> list[str]:
    if not isinstance(meta, dict):
        return [f"state.json holds a {type(meta).__name__}, not an object"]
    problems = [f"state.json lacks {key!r}" for key in STATE_KEYS if key not in meta]
    for key, n in (("window_totals", len(WINDOWS_DAYS)), ("decayed_totals", len(HALF_LIVES_DAYS))):
        if key in meta and (not isinstance(meta[key], list) or len(meta[key]) != n):
            problems.append(f"state.json {key} must list {n} numbers")
    return problems


def _meta_version_problems(meta: dict) -> list[str]:
    problems = []
    if meta.get("format") != FORMAT:
        problems.append(f"state format {meta.get('format')!r}, this code reads {FORMAT}")
    if meta.get("windows_days") != list(WINDOWS_DAYS) or meta.get("half_lives_days") != list(HALF_LIVES_DAYS):
        problems.append("state counted over other windows than this code's features read")
    return problems


def check_state(meta: dict, tables: dict[str, pa.Table]) -> list[str]:
    """What is wrong with a state's files (empty when nothing): format, windows, row counts, pair indices."""
    problems = _meta_shape_problems(meta)
    if not isinstance(meta, dict):
        return problems
    for name, columns in COLUMNS.items():
        missing = sorted(set(columns) - set(tables[name].column_names))
        if missing:
            problems.append(f"{name}.parquet lacks column(s) {', '.join(missing)}")
    if problems:
        return problems
    problems = _meta_version_problems(meta)
    rows = meta.get("rows", {})
    for name, table in tables.items():
        if rows.get(name) != table.num_rows:
            problems.append(f"{name} has {table.num_rows} rows, state.json says {rows.get(name)}")
    sizes = {name: tables[name].num_rows for name in ("users", "videos", "creators", "tags")}
    for name, row_kind, col_kind in PAIRS:
        table = tables[name]
        for column, kind in (("row", row_kind), ("col", col_kind)):
            values = table.column(column).to_numpy()
            if len(values) and (values.min() < 0 or values.max() >= sizes[kind]):
                problems.append(f"{name}.{column} outside the {sizes[kind]} {kind}")
    videos = tables["videos"]
    codes = videos.column("creator").to_numpy()
    if len(codes) and (codes.min() < 0 or codes.max() >= sizes["creators"]):
        problems.append("videos.creator outside the creators")
    tags = videos.column("tags").combine_chunks().flatten().to_numpy()
    if len(tags) and (tags.min() < 0 or tags.max() >= sizes["tags"]):
        problems.append("videos.tags outside the tags")
    return problems


def _state(meta: dict, tables: dict[str, pa.Table]) -> RankState:
    v, c, g, u = (tables[k] for k in ("videos", "creators", "tags", "users"))
    n_items, n_creators, n_tags, n_users = v.num_rows, c.num_rows, g.num_rows, u.num_rows
    t_ms = int(meta["t_ms"])

    def col(table: pa.Table, name: str, neutral: float = 0.0) -> np.ndarray:
        return np.append(table.column(name).to_numpy().astype(np.float64), neutral)

    def stack(table: pa.Table, names: list[str]) -> np.ndarray:
        return np.stack([col(table, name) for name in names])

    tag_lists = v.column("tags").combine_chunks()
    indptr = np.append(tag_lists.offsets.to_numpy(), tag_lists.offsets.to_numpy()[-1]).astype(np.int64)
    item_tags = sp.csr_matrix(
        (np.ones(len(tag_lists.values), np.float32), tag_lists.values.to_numpy().astype(np.int64), indptr),
        shape=(n_items + 1, n_tags),
    )
    user_ids = np.asarray(u.column("user_id").to_pylist(), dtype=str)
    video_ids = np.asarray(v.column("video_id").to_pylist(), dtype=str)
    events = _content_events(
        user_ids=np.append(user_ids, "").astype(object),
        item_ids=np.append(video_ids, "").astype(object),
        item_created_ms=np.append(v.column("created_ms").to_numpy(), t_ms).astype(np.int64),
        item_creator=np.append(v.column("creator").to_numpy(), n_creators).astype(np.int64),
        creator_ids=np.append(np.asarray(c.column("creator_id").to_pylist(), dtype=object), ""),
        item_tags=item_tags,
        tag_ids=np.asarray(g.column("tag").to_pylist(), dtype=object),
    )
    created = events.item_created_ms
    state = AsOfState(
        t_ms=t_ms,
        events=events,
        item_views=col(v, "views"),
        item_window_views=stack(v, [f"views_{d}" for d in _DAYS]),
        window_totals=np.asarray(meta["window_totals"], dtype=np.float64),
        item_decayed=stack(v, [f"decayed_{h}" for h in _HALVES]),
        decayed_totals=np.asarray(meta["decayed_totals"], dtype=np.float64),
        item_completion_rate=col(v, "completion_rate", meta["prior_completion"]),
        item_like_rate=col(v, "like_rate", meta["prior_like"]),
        creator_window_views=stack(c, [f"views_{d}" for d in _DAYS]),
        creator_videos=col(c, "videos"),
        item_posted=created < t_ms,
        tag_share_30d=g.column("share_30d").to_numpy().astype(np.float64),
        tag_share_all=g.column("share_all").to_numpy().astype(np.float64),
        user_events=col(u, "events"),
        user_window_events=stack(u, [f"events_{d}" for d in _DAYS]),
        user_days_idle=col(u, "days_idle", NEVER_ACTIVE_IDLE_DAYS),
        user_completion=col(u, "completion"),
        user_like_rate=col(u, "like_rate"),
        user_creator=_pairs(tables["user_creator"], n_creators + 1),
        user_tag=_pairs(tables["user_tag"], n_tags),
        user_tag_recent=_pairs(tables["user_tag_recent"], n_tags),
        user_recent_weight=col(u, "recent_weight"),
        follows=_pairs(tables["follows"], n_creators + 1),
        seen=sp.csr_matrix((n_users + 1, n_items + 1), dtype=np.float32),  # never read by a feature
        user_t_ms=np.full(n_users + 1, t_ms, dtype=np.int64),  # one instant for everyone: the build's as-of
    )
    return RankState(state, user_ids, video_ids)


def _pairs(table: pa.Table, n_cols: int) -> PairCounts:
    """A pair table as PairCounts over ``n_cols`` columns (the neutral creator's column included where needed)."""
    rows = table.column("row").to_numpy().astype(np.int64)
    cols = table.column("col").to_numpy().astype(np.int64)
    keys = rows * n_cols + cols
    order = np.argsort(keys, kind="stable")
    return PairCounts(keys[order], table.column("value").to_numpy().astype(np.float32)[order], n_cols)


# ---- the state as mapped arrays ------------------------------------------------------------------------------------


def write_rank_arrays(folder: Path) -> None:
    """The state in ``folder``'s Parquet tables, read back and checked as :func:`read_ranking` reads it, written as
    the NumPy files of ``serve/`` that later reads map. Run after :func:`write_ranking`, once the tables are whole."""
    rank = _read_state(folder, json.loads((folder / STATE_FILE).read_text()))
    state, events = rank.state, rank.state.events
    arrays: dict[str, np.ndarray] = {
        # The events' ids, the neutral row's "" last: RankState's sorted ids are these less the last.
        "user_ids": events.user_ids.astype(str),
        "video_ids": events.item_ids.astype(str),
        "creator_ids": events.creator_ids.astype(str),
        "tag_ids": events.tag_ids.astype(str),
        "item_created_ms": events.item_created_ms,
        "item_creator": events.item_creator,
        "item_tags_indptr": events.item_tags.indptr,
        "item_tags_indices": events.item_tags.indices,
        "item_tags_data": events.item_tags.data,
        **{name: getattr(state, name) for name in RANK_STATE_ARRAYS},
    }
    for pair in RANK_PAIRS:
        counts: PairCounts = getattr(state, pair)
        arrays[f"{pair}_keys"], arrays[f"{pair}_values"] = counts.keys, counts.values
    assert set(arrays) == set(RANK_SERVE_ARRAYS)
    for name, array in arrays.items():
        save_array(folder / SERVE_DIR / f"{name}.npy", array)


def rank_arrays_problems(folder: Path) -> list[str]:
    """Where the mapped state in ``folder/serve/`` differs from the state its Parquet tables hold (empty: none);
    validation calls it, so that a snapshot serves the very state its tables were checked to be."""
    meta = json.loads((folder / STATE_FILE).read_text())
    tables, mapped = _read_state(folder, meta), _mapped_state(folder, meta)
    pairs = [(name, getattr(tables.state, name), getattr(mapped.state, name)) for name in RANK_STATE_ARRAYS] + [
        ("user_ids", tables.user_ids, mapped.user_ids),
        ("video_ids", tables.video_ids, mapped.video_ids),
        ("item_creator", tables.state.events.item_creator, mapped.state.events.item_creator),
        ("item_created_ms", tables.state.events.item_created_ms, mapped.state.events.item_created_ms),
        ("item_tags", tables.state.events.item_tags.toarray(), mapped.state.events.item_tags.toarray()),
    ]
    for pair in RANK_PAIRS:
        a, b = getattr(tables.state, pair), getattr(mapped.state, pair)
        pairs += [(f"{pair}.keys", a.keys, b.keys), (f"{pair}.values", a.values, b.values)]
        if a.n_cols != b.n_cols:
            pairs.append((f"{pair}.n_cols", np.array([a.n_cols]), np.array([b.n_cols])))
    return [f"serve/{name} differs from the Parquet state" for name, a, b in pairs if not np.array_equal(a, b)]


def _mapped_state(folder: Path, meta: dict) -> RankState:
    """The state :func:`write_rank_arrays` wrote, mapped: the same arrays :func:`_state` builds, none copied."""
    what = f"the ranking state in {folder}"
    a = {name: map_array(folder / SERVE_DIR / f"{name}.npy", what) for name in RANK_SERVE_ARRAYS}
    t_ms = int(meta["t_ms"])
    n_items, n_creators, n_tags = len(a["video_ids"]), len(a["creator_ids"]), len(a["tag_ids"])
    events = _content_events(
        user_ids=a["user_ids"],
        item_ids=a["video_ids"],
        item_created_ms=a["item_created_ms"],
        item_creator=a["item_creator"],
        creator_ids=a["creator_ids"],
        item_tags=sp.csr_matrix(
            (a["item_tags_data"], a["item_tags_indices"], a["item_tags_indptr"]), shape=(n_items, n_tags), copy=False
        ),
        tag_ids=a["tag_ids"],
    )
    columns = {"user_creator": n_creators, "user_tag": n_tags, "user_tag_recent": n_tags, "follows": n_creators}
    pairs = {pair: PairCounts(a[f"{pair}_keys"], a[f"{pair}_values"], n) for pair, n in columns.items()}
    state = AsOfState(
        t_ms=t_ms,
        events=events,
        **{name: a[name] for name in RANK_STATE_ARRAYS},
        **pairs,
        seen=sp.csr_matrix((len(a["user_ids"]), n_items), dtype=np.float32),  # never read by a feature
    )
    # The neutral rows are last: the sorted ids a lookup searches are the rest (views of the mapped arrays).
    return RankState(state, a["user_ids"][:-1], a["video_ids"][:-1])


def _content_events(**content: np.ndarray | sp.csr_matrix) -> RankEvents:
    """Events with only the static content a state read back needs (ids, creators, hashtags, creation times): the
    features read the counts from the state, never the interactions and follows themselves."""
    empty = np.zeros(0, dtype=np.int64)
    return RankEvents(
        **content,
        user=empty,
        item=empty,
        ts_ms=empty,
        completion=np.zeros(0, np.float32),
        liked=np.zeros(0, bool),
        follow_user=empty,
        follow_creator=empty,
        follow_ts_ms=empty,
    )
