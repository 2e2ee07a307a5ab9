"""What an import takes and promises: the canonical columns, their defaults, and the bad-row reasons.

Outside data reaches the lake through one validation path, :mod:`rec_core.data.file_import`:
``jobs.import_dataset`` feeds it CSV/Parquet files, :mod:`rec_core.data.movielens` feeds it
MovieLens converted to the same canonical columns. This module is the contract both meet.

Canonical input
---------------
One file per table, CSV or Parquet, chosen by extension (``.csv``, ``.csv.gz``,
``.parquet``, ``.pq``); CSV must be UTF-8 with a header row. Required columns:

- videos: ``video_id``, ``caption``
- interactions: ``user_id``, ``video_id``, ``ts``
- users (optional file): ``user_id``
- follows (optional file): ``user_id``, ``creator_id``

Every other lake column is optional; when the column is absent, or a cell in it
is empty, the default below is used (``DEFAULTS`` holds the same table):

| table | column | default when absent or empty |
| --- | --- | --- |
| videos | `hashtags` | none (an empty list) |
| videos | `duration_s` | 30.0 |
| videos | `width` | 1080 |
| videos | `height` | 1920 |
| videos | `creator_id` | the video's own id (each video is its own creator) |
| videos | `creator_followers` | 0 |
| videos | `creator_likes` | 0 |
| videos | `created_at` | the video's first interaction ts, else the earliest interaction ts |
| videos | `views` | number of imported interactions with the video |
| videos | `likes` | number of imported interactions with `liked` true |
| videos | `comments` | number of imported interactions with `commented` true |
| videos | `shares` | number of imported interactions with `shared` true |
| interactions | `completion` | 1.0 (must be in [0, 1]) |
| interactions | `watch_time_s` | completion * the video's duration_s |
| interactions | `liked` | false (true/false/1/0/yes/no accepted, any case) |
| interactions | `shared` | false |
| interactions | `commented` | false |
| users | `created_at` | the user's first interaction ts, else the earliest interaction ts |
| users | `country` | null |
| users | `language` | null |
| users | `age_group` | null |
| follows | `ts` | the earliest interaction ts |

"Interaction ts" above means the imported (valid) interactions; with none at
all, the earliest interaction ts is 1970-01-01. Users named by interactions but
absent from the users file (or all of them, when there is no users file) are
added with the user defaults.

Values
------
- Ids are strings: numbers are cast to strings, surrounding whitespace is
  stripped; then an id must pass the one id rule of :mod:`rec_core.ids` (not
  empty, at most 128 bytes of UTF-8, no control, bidi, zero-width or other
  invisible characters), as the API's ids do.
- Timestamps are ISO 8601 (``2024-05-01``, ``2024-05-01T12:00:00``,
  ``2024-05-01 12:00:00.5+02:00``, ``...Z``; naive means UTC) or unix seconds
  (int or float; a bare number is always seconds). Parquet timestamp and date
  columns are used as they are (naive = UTC). They are stored at millisecond
  precision and must lie in [1970-01-01, 2100-01-01), which catches unix
  milliseconds passed as seconds.
- Hashtags are a string split on spaces, commas or ``|`` (``"#Cats, dogs|fun"``),
  or a list column; each tag is lowercased, loses leading ``#``, and empties and
  duplicates are dropped (first occurrence order kept).
- Booleans: true/false/1/0/yes/no in any case (or a boolean/0-1 Parquet column).
- Columns the lake does not know are ignored and listed in the report.

Bad rows
--------
A row with a bad value is skipped and counted under one reason, the first
check it fails (per table: ids, timestamps, numbers column by column, booleans,
references to other tables, duplicates), with up to three example rows per
reason and column (``REASONS`` lists and explains every reason). Duplicates keep their first valid
occurrence in file order. With ``strict=True`` any skipped row fails the
import. A missing required column or an unreadable file stops the import
(:class:`~rec_core.data.import_report.InputError`) before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from rec_core.ids import MAX_ID_BYTES

TABLE_NAMES = ("videos", "interactions", "users", "follows")

REQUIRED: dict[str, tuple[str, ...]] = {
    "videos": ("video_id", "caption"),
    "interactions": ("user_id", "video_id", "ts"),
    "users": ("user_id",),
    "follows": ("user_id", "creator_id"),
}

DEFAULT_DURATION_S = 30.0
DEFAULT_WIDTH = 1080
DEFAULT_HEIGHT = 1920
DEFAULT_COMPLETION = 1.0
MAX_ID_LEN = MAX_ID_BYTES  # UTF-8 bytes, as Milvus counts them
MAX_EXAMPLES = 3
TS_MIN_MS = 0  # 1970-01-01
TS_MAX_MS = 4_102_444_800_000  # 2100-01-01, exclusive


@dataclass(frozen=True, slots=True)
class ColumnDefault:
    table: str
    column: str
    default: str


DEFAULTS: tuple[ColumnDefault, ...] = (
    ColumnDefault("videos", "hashtags", "none (an empty list)"),
    ColumnDefault("videos", "duration_s", "30.0"),
    ColumnDefault("videos", "width", "1080"),
    ColumnDefault("videos", "height", "1920"),
    ColumnDefault("videos", "creator_id", "the video's own id (each video is its own creator)"),
    ColumnDefault("videos", "creator_followers", "0"),
    ColumnDefault("videos", "creator_likes", "0"),
    ColumnDefault("videos", "created_at", "the video's first interaction ts, else the earliest interaction ts"),
    ColumnDefault("videos", "views", "number of imported interactions with the video"),
    ColumnDefault("videos", "likes", "number of imported interactions with `liked` true"),
    ColumnDefault("videos", "comments", "number of imported interactions with `commented` true"),
    ColumnDefault("videos", "shares", "number of imported interactions with `shared` true"),
    ColumnDefault("interactions", "completion", "1.0 (must be in [0, 1])"),
    ColumnDefault("interactions", "watch_time_s", "completion * the video's duration_s"),
    ColumnDefault("interactions", "liked", "false (true/false/1/0/yes/no accepted, any case)"),
    ColumnDefault("interactions", "shared", "false"),
    ColumnDefault("interactions", "commented", "false"),
    ColumnDefault("users", "created_at", "the user's first interaction ts, else the earliest interaction ts"),
    ColumnDefault("users", "country", "null"),
    ColumnDefault("users", "language", "null"),
    ColumnDefault("users", "age_group", "null"),
    ColumnDefault("follows", "ts", "the earliest interaction ts"),
)

OPTIONAL: dict[str, tuple[str, ...]] = {t: tuple(d.column for d in DEFAULTS if d.table == t) for t in TABLE_NAMES}

# Bad-row reasons (a row is counted under the first check it fails; see the module docstring).
EMPTY_ID = "empty id"
ID_TOO_LONG = "id too long"
ID_CONTROL = "id has control characters"  # or bidi, zero-width or other invisible ones: see rec_core.ids
ID_APOSTROPHE = "id has an apostrophe"  # the vector index cannot hold one: see rec_core.ids
MISSING_TS = "missing ts"
BAD_TS = "unparseable ts"
TS_RANGE = "ts out of range"
BAD_NUMBER = "unparseable number"
NUMBER_RANGE = "number out of range"
COMPLETION_RANGE = "completion out of range"
BAD_BOOL = "unparseable boolean"
UNKNOWN_VIDEO = "unknown video"
UNKNOWN_USER = "unknown user"
UNKNOWN_CREATOR = "unknown creator"
DUPLICATE_VIDEO = "duplicate video_id"
DUPLICATE_USER = "duplicate user_id"
DUPLICATE_INTERACTION = "duplicate interaction"
DUPLICATE_FOLLOW = "duplicate follow"

REASONS: dict[str, str] = {
    EMPTY_ID: "an id is empty or missing",
    ID_TOO_LONG: f"an id is longer than {MAX_ID_LEN} bytes in UTF-8",
    ID_CONTROL: "an id contains control, bidi, zero-width or other invisible characters",
    ID_APOSTROPHE: "an id contains an apostrophe ('), which the vector index cannot store",
    MISSING_TS: "interactions.ts is empty",
    BAD_TS: "a timestamp is neither ISO 8601 nor unix seconds",
    TS_RANGE: "a timestamp is before 1970-01-01 or from 2100 on (unix milliseconds given as seconds?)",
    BAD_NUMBER: "a number (or integer, for integer columns) does not parse or is not finite",
    NUMBER_RANGE: "duration_s, width, height must be > 0; counts and watch_time_s must be >= 0; durations and "
    "watch times fit float32 (about 3.4e38, and a duration at least 1.2e-38), counts at most 2**53",
    COMPLETION_RANGE: "completion is outside [0, 1]",
    BAD_BOOL: "liked/shared/commented is not one of true/false/1/0/yes/no",
    UNKNOWN_VIDEO: "an interaction names a video_id that is not among the imported videos",
    UNKNOWN_USER: "a follow names a user_id that is neither in the users file nor in the interactions",
    UNKNOWN_CREATOR: "a follow names a creator_id that no imported video has",
    DUPLICATE_VIDEO: "a video_id seen before (the first one is kept)",
    DUPLICATE_USER: "a user_id seen before (the first one is kept)",
    DUPLICATE_INTERACTION: "same user_id, video_id and ts (to the millisecond) seen before (the first one is kept)",
    DUPLICATE_FOLLOW: "same user_id and creator_id seen before (the first one is kept)",
}


def defaults_markdown() -> str:
    """The defaults table as Markdown, for the README (the module docstring holds the same)."""
    rows = ["| table | column | default when absent or empty |", "| --- | --- | --- |"]
    rows += [f"| {d.table} | `{d.column}` | {d.default} |" for d in DEFAULTS]
    return "\n".join(rows)
