"""Request and response bodies of the feed API (HTTP only: the lake's tables are in rec_core/data/tables.py),
with the input rules in the types.

msgspec checks every rule while decoding and names the field that breaks one,
which :func:`decode` turns into a 400 ``{"error": {"field", "reason"}}``:

* ids: the one rule of :mod:`rec_core.ids` (1 to 128 UTF-8 bytes, no control, bidi, zero-width or other
  invisible characters, no whitespace at either end), checked in each body's ``__post_init__`` so that every
  way of decoding a body (:func:`decode`, Litestar's own ``data:`` parameter) refuses a bad id before a
  handler can write anything, with the field named (``video_id``, ``watched_videos[3]``);
* lists of ids: at most 10,000;
* ``limit``: 1 to 100 (default 20);
* numbers: finite and in range (durations and sizes positive, rates in [0, 1]);
* unknown fields are refused, so a typo is an error and not a silent default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec

from feed_api.errors import ApiError
from feed_api.pager import Item
from rec_core.data.impressions import REQUEST_ID_PATTERN
from rec_core.ids import ID_PATTERN, INVISIBLE, MAX_ID_BYTES, has_invisible, id_problem
from rec_core.model.inference import UserProfile

# An id's bytes are checked by the rule; a character limit too (never stricter: a character is 1 to 4 bytes) keeps
# msgspec from copying a huge string and states a bound in the OpenAPI schema.
MAX_ID_CHARS = MAX_ID_BYTES
MAX_IDS = 10_000
MAX_LIMIT = 100
MAX_BODY_BYTES = 1 << 20

ID_RULE = (
    f"An id: 1 to {MAX_ID_BYTES} bytes of UTF-8 (64 x 'é' fits, 128 do not), no control, bidi, zero-width or "
    "other invisible characters, no apostrophe, no whitespace at either end."
)
Id = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS, description=ID_RULE, extra_json_schema={"pattern": ID_PATTERN}),
]
IdList = Annotated[list[Id], msgspec.Meta(max_length=MAX_IDS)]
Count = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=86_400)]
Rate = Annotated[float, msgspec.Meta(ge=0, le=1)]
Pixels = Annotated[int, msgspec.Meta(ge=1, le=16_384)]
Text = Annotated[str, msgspec.Meta(max_length=4_000)]
# "(?![\s\S])" is the end of the text in Python and in the JSON Schema (ECMA) dialect alike; Python's "$" also
# matches before a final newline ("cats\n"), and "\Z" means a literal Z to an ECMA validator.
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f\s]+(?![\s\S])")]
RequestId = Annotated[
    str,
    msgspec.Meta(
        pattern=REQUEST_ID_PATTERN,
        description="The `request_id` of the page the video was shown on: joins the event to that impression.",
    ),
]


class Body(msgspec.Struct, forbid_unknown_fields=True):
    # The fields holding an id or a list of ids, checked by rec_core.ids after msgspec has decoded the rest.
    _ids: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self._ids:
            value = getattr(self, name)
            if isinstance(value, list):
                for i, item in enumerate(value):
                    _check_id(f"{name}[{i}]", item)
            elif value is not None:
                _check_id(name, value)


# msgspec reports an exception raised in __post_init__ as a ValidationError with this message (and, for a
# nested body, its path after " - at "); locate() reads the field back out of it.
_BAD_ID = re.compile(r"^invalid value in `([^`]+)`: (.*)\Z", re.DOTALL)


def _check_id(field: str, value: str) -> None:
    if (problem := id_problem(value)) is not None:
        raise ValueError(f"invalid value in `{field}`: {problem}")


class RecommendationsIn(Body):
    _ids = ("user_id",)
    user_id: Id
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)] = 20
    cursor: Annotated[str, msgspec.Meta(max_length=64 * 1024)] | None = None


ItemOut = Item  # the pager's item is the API's item


class RecommendationsOut(msgspec.Struct):
    items: list[ItemOut]
    has_more: bool
    next_cursor: str | None
    snapshot_id: str
    source: str  # precomputed | live | mixed | trending
    request_id: str  # this page's id in the impression log; name it in the events it causes


class VideoIn(Body):
    _ids = ("video_id", "creator_id")
    video_id: Id
    caption: Text
    hashtags: Annotated[list[Tag], msgspec.Meta(max_length=100)]
    duration: Annotated[float, msgspec.Meta(gt=0, le=86_400)]
    width: Pixels
    height: Pixels
    user_followers: Count
    user_likes: Count
    creator_id: Id | None = None  # the uploader; without it the video is its own creator (no creator cap across)

    def __post_init__(self) -> None:
        super().__post_init__()
        # The pattern refuses ASCII controls and whitespace; the reasons quote a tag to users ("trending in #tag"),
        # so the invisible characters the id rule refuses (bidi overrides, zero-width ones) are refused too.
        for i, tag in enumerate(self.hashtags):
            if has_invisible(tag):
                raise ValueError(f"invalid value in `hashtags[{i}]`: {INVISIBLE}")


class VideoOut(msgspec.Struct):
    video_id: str
    snapshot_id: str
    embedding: list[float]


class UserIn(Body):
    _ids = ("user_id", "watched_videos", "liked_videos", "followed_users")
    user_id: Id
    watched_videos: IdList = []
    liked_videos: IdList = []
    followed_users: IdList = []
    average_watch_time: Seconds | None = None
    completion_rate: Rate | None = None


def user_profile(body: Mapping[str, Any]) -> UserProfile:
    """The user tower's input from a ``POST /embeddings/user`` body, as decoded or as the inbox kept it (a record
    an older API wrote may lack the optional fields)."""
    return UserProfile(
        watched=body["watched_videos"],
        liked=body["liked_videos"],
        followed=body["followed_users"],
        avg_watch_time_s=body.get("average_watch_time"),
        completion_rate=body.get("completion_rate"),
    )


class UserOut(msgspec.Struct):
    user_id: str
    snapshot_id: str
    embedding: list[float]
    ignored_video_ids: list[str]  # not in the catalogue: ignored for the vector
    unknown_followed_users: list[str]  # no video in the catalogue: counted, but carry no vector


EventType = Literal["watch", "like", "share", "comment", "skip"]


class EventIn(Body):
    _ids = ("user_id", "video_id")
    user_id: Id
    video_id: Id
    type: EventType
    watch_time_s: Seconds = 0.0
    completion: Rate = 0.0
    request_id: RequestId | None = None


class EventsIn(Body):
    events: Annotated[list[EventIn], msgspec.Meta(min_length=1, max_length=MAX_IDS)]


class EventsOut(msgspec.Struct):
    accepted: int


B = TypeVar("B", bound=Body)
_AT = re.compile(r" - at `\$\.?(.*)`$")


def decode(raw: bytes, kind: type[B]) -> B:
    """``raw`` JSON as ``kind``, or an :class:`ApiError` naming the field and the reason."""
    if not raw.strip():
        raise ApiError(400, "invalid_body", "body", "the request needs a JSON body")
    try:
        value = msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _AT.search(message)
        field, reason = locate(match.group(1) if match else "", _AT.sub("", message))
        raise ApiError(400, "invalid_field", field, reason) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", "body", f"not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise not_utf8() from None
    _check_finite(value)
    return value


def not_utf8() -> ApiError:
    """msgspec checks a string's UTF-8 only when it reads it, and says so with a UnicodeDecodeError."""
    return ApiError(400, "invalid_json", "body", "not valid JSON: the body is not UTF-8 text")


def decode_events(raw: bytes) -> list[EventIn]:
    """A ``POST /events`` body: one event, or ``{"events": [...]}``."""
    try:
        head = msgspec.json.decode(raw) if raw.strip() else None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", "body", f"not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise not_utf8() from None
    if isinstance(head, dict) and "events" in head:
        return decode(raw, EventsIn).events
    return [decode(raw, EventIn)]


def _check_finite(value: Any) -> None:
    for name in value.__struct_fields__:
        v = getattr(value, name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ApiError(400, "invalid_field", name, "must be a finite number")


_NAMED = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")


def locate(field: str, reason: str) -> tuple[str, str]:
    """The field at fault (a missing or unknown one is named in the message, not the path) and a plain reason."""
    field = "" if field in ("body", "data") else field
    if bad_id := _BAD_ID.search(reason):  # from Body.__post_init__: the field is in the message
        field = f"{field}.{bad_id.group(1)}" if field else bad_id.group(1)
        return field, bad_id.group(2)
    if named := _NAMED.search(reason):
        field = f"{field}.{named.group(1)}" if field else named.group(1)
    field = field or "body"
    return field, plain_reason(field, reason)


def plain_reason(field: str, reason: str) -> str:
    """msgspec's wording, with the rules it states obscurely made plain."""
    if field == "limit" and "int" in reason:
        return f"must be an integer from 1 to {MAX_LIMIT}"
    if "matching regex" in reason:
        return "must not contain control characters" + (" or spaces" if "\\s" in reason else "")
    return reason
