"""Request and response bodies of the feed API, with the input rules in the types.

msgspec checks every rule while decoding and names the field that breaks one,
which :func:`decode` turns into a 400 ``{"error": {"field", "reason"}}``:

* ids: 1 to 128 characters, no control characters;
* lists of ids: at most 10,000;
* ``limit``: 1 to 100 (default 20);
* numbers: finite and in range (durations and sizes positive, rates in [0, 1]);
* unknown fields are refused, so a typo is an error and not a silent default.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from feed_api.errors import ApiError
from feed_api.pager import Item

MAX_ID_CHARS = 128
MAX_IDS = 10_000
MAX_LIMIT = 100

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00-\x1f\x7f]+$")]
IdList = Annotated[list[Id], msgspec.Meta(max_length=MAX_IDS)]
Count = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=86_400)]
Rate = Annotated[float, msgspec.Meta(ge=0, le=1)]
Pixels = Annotated[int, msgspec.Meta(ge=1, le=16_384)]
Text = Annotated[str, msgspec.Meta(max_length=4_000)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f\s]+$")]


class Body(msgspec.Struct, forbid_unknown_fields=True):
    pass


class RecommendationsIn(Body):
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


class VideoIn(Body):
    video_id: Id
    caption: Text
    hashtags: Annotated[list[Tag], msgspec.Meta(max_length=100)]
    duration: Annotated[float, msgspec.Meta(gt=0, le=86_400)]
    width: Pixels
    height: Pixels
    user_followers: Count
    user_likes: Count
    creator_id: Id | None = None  # the uploader; without it the video is its own creator (no creator cap across)


class VideoOut(msgspec.Struct):
    video_id: str
    snapshot_id: str
    embedding: list[float]


class UserIn(Body):
    user_id: Id
    watched_videos: IdList = []
    liked_videos: IdList = []
    followed_users: IdList = []
    average_watch_time: Seconds | None = None
    completion_rate: Rate | None = None


class UserOut(msgspec.Struct):
    user_id: str
    snapshot_id: str
    embedding: list[float]
    ignored_video_ids: list[str]  # not in the catalogue: ignored for the vector
    unknown_followed_users: list[str]  # no video in the catalogue: counted, but carry no vector


EventType = Literal["watch", "like", "share", "comment", "skip"]


class EventIn(Body):
    user_id: Id
    video_id: Id
    type: EventType
    watch_time_s: Seconds = 0.0
    completion: Rate = 0.0


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
    _check_finite(value)
    return value


def _check_finite(value: Any) -> None:
    for name in value.__struct_fields__:
        v = getattr(value, name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ApiError(400, "invalid_field", name, "must be a finite number")


_NAMED = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")


def locate(field: str, reason: str) -> tuple[str, str]:
    """The field at fault (a missing or unknown one is named in the message, not the path) and a plain reason."""
    field = "" if field in ("body", "data") else field
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
