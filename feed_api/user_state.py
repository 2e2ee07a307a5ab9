"""What the API has learned about each user since the batch: events and posted profiles.

This is the "real time" half of the feed: a watched (or skipped) video leaves
the feed at once, and likes and long watches move the user's live vector. The
state is rebuilt from the inbox on start-up and followed from the inbox while
running, so it survives restarts and is shared by workers; applying a recent
record twice changes nothing, which is what makes that replay safe.

Bounded (docs/architecture.md, invariant 9), so a flood of events keeps memory flat:

* users: the least recently active are forgotten past ``max_users``;
* per user: the newest ``max_videos`` seen, positive and liked videos are kept
  (the oldest leave first), and the last :data:`RECENT_CAP` (at most ``max_videos``) watches;
* replay de-duplication: the keys of the last ``max_replay_keys`` applied events;
* posted profiles (up to 30,000 ids each): ``max_profile_ids`` ids over all users, the least recently posted
  profile forgotten first (the user's events since the batch stay).

What is forgotten is in the inbox and reaches the next snapshot, whose feeds
leave those videos out; meanwhile a forgotten video may be served again.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from rec_core.model.inference import UserProfile

LONG_WATCH = 0.8  # completion at or above which a watch says "more like this"
POSITIVE_TYPES = frozenset({"like", "share", "comment"})
RECENT_CAP = 256  # recent watches kept per user for the online user tower
# Replays only repeat records read moments ago (see InboxFollower.follow), so a window of the last
# 64k keys is plenty, and at about 200 bytes a key it stays near 13 MB.
REPLAY_KEYS = 1 << 16
# Versions from one counter for the process: a user forgotten (or a state rebuilt) and seen again never
# reuses a version, which keys the cache of live vectors.
_VERSIONS = itertools.count(1)


@dataclass(slots=True)
class UserActivity:
    """A private copy of one user's activity, what a page reads."""

    seen: set[str] = field(default_factory=set)  # every video with an event: never served again
    positive: dict[str, float] = field(default_factory=dict)  # video -> weight of "more like this"
    recent: list[str] = field(default_factory=list)  # watched video ids, newest last
    liked: list[str] = field(default_factory=list)
    watch_time_sum: float = 0.0
    completion_sum: float = 0.0
    watches: int = 0
    profile: UserProfile | None = None  # the last POST /embeddings/user body
    version: int = 0  # bumps on every change: the key of cached live vectors

    def merged_profile(self) -> UserProfile:
        """The posted profile with the events since folded in: what the user tower reads online."""
        base = self.profile or UserProfile()
        recent = list(reversed(self.recent))  # newest first, as UserProfile wants
        watched = recent + [v for v in base.watched if v not in self.seen]
        n_base = len(base.watched)
        total = n_base + self.watches

        def mean(base_value: float | None, event_sum: float) -> float | None:
            if total == 0:
                return None
            return ((base_value or 0.0) * n_base + event_sum) / total

        return UserProfile(
            watched=watched,
            liked=list(dict.fromkeys(self.liked + base.liked)),
            followed=base.followed,
            avg_watch_time_s=mean(base.avg_watch_time_s, self.watch_time_sum),
            completion_rate=mean(base.completion_rate, self.completion_sum),
        )

    def since_snapshot(self) -> UserProfile:
        """The events since the snapshot alone, the posted profile left out: what a user the snapshot knows did
        that their snapshot row does not count (the state is replayed from the snapshot's inbox offsets)."""
        return dataclasses.replace(self, profile=None).merged_profile()


class _Activity:
    """One user's live state, bounded: ordered dicts drop their oldest entry in O(1)."""

    __slots__ = (
        "completion_sum",
        "liked",
        "positive",
        "profile",
        "recent",
        "seen",
        "version",
        "watch_time_sum",
        "watches",
    )

    def __init__(self, max_videos: int) -> None:
        self.seen: OrderedDict[str, None] = OrderedDict()  # an insertion-ordered set
        self.positive: OrderedDict[str, float] = OrderedDict()  # last touched last
        self.recent: deque[str] = deque(maxlen=min(RECENT_CAP, max_videos))
        self.liked: OrderedDict[str, None] = OrderedDict()
        self.watch_time_sum = 0.0
        self.completion_sum = 0.0
        self.watches = 0
        self.profile: UserProfile | None = None
        self.version = next(_VERSIONS)


def _add(ordered: OrderedDict[str, Any], key: str, value: Any, cap: int, *, renew: bool) -> None:
    """Set ``key``; ``renew`` moves an existing key to the newest end. Past ``cap`` the oldest key leaves."""
    if key in ordered:
        ordered[key] = value
        if renew:
            ordered.move_to_end(key)
        return
    ordered[key] = value
    while len(ordered) > cap:
        ordered.popitem(last=False)


def _ids(profile: UserProfile) -> int:
    return len(profile.watched) + len(profile.liked) + len(profile.followed)


class UserStates:
    """Thread-safe map user id -> activity, least recently used first out; every part bounded."""

    def __init__(
        self,
        max_users: int = 200_000,
        max_videos: int = 2_000,
        max_replay_keys: int = REPLAY_KEYS,
        max_profile_ids: int = 2_000_000,
    ) -> None:
        self._users: OrderedDict[str, _Activity] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_users
        self.max_videos = max_videos
        self.max_replay_keys = max_replay_keys
        self.max_profile_ids = max_profile_ids
        self._applied: OrderedDict[tuple[Any, ...], None] = OrderedDict()  # (user, video, type, at), newest last
        self._profiles: OrderedDict[str, int] = OrderedDict()  # user -> ids in their posted profile, newest last
        self.profile_ids = 0

    def _touch(self, user_id: str) -> _Activity:
        activity = self._users.get(user_id)
        if activity is None:
            activity = self._users[user_id] = _Activity(self.max_videos)
            if len(self._users) > self._max:
                forgotten, _ = self._users.popitem(last=False)
                self.profile_ids -= self._profiles.pop(forgotten, 0)
        else:
            self._users.move_to_end(user_id)
        return activity

    def apply_event(self, event: dict[str, Any], at: str) -> None:
        """Fold one event (the ``POST /events`` body) in; applying a recent record again is a no-op."""
        key = (event["user_id"], event["video_id"], event["type"], at)
        cap = self.max_videos
        with self._lock:
            if key in self._applied:
                return
            _add(self._applied, key, None, self.max_replay_keys, renew=False)
            activity = self._touch(event["user_id"])
            video, kind = event["video_id"], event["type"]
            _add(activity.seen, video, None, cap, renew=False)
            if kind != "skip":
                activity.recent.append(video)
                activity.watches += 1
                activity.watch_time_sum += float(event.get("watch_time_s") or 0.0)
                activity.completion_sum += float(event.get("completion") or 0.0)
            if kind == "like":
                _add(activity.liked, video, None, cap, renew=True)
            if kind in POSITIVE_TYPES or float(event.get("completion") or 0.0) >= LONG_WATCH:
                weight = activity.positive.get(video, 0.0) + (2.0 if kind == "like" else 1.0)
                _add(activity.positive, video, weight, cap, renew=True)
            activity.version = next(_VERSIONS)

    def copy_of(self, user_id: str) -> UserActivity | None:
        """A private copy of a user's activity: a page reads it while events keep arriving."""
        with self._lock:
            a = self._users.get(user_id)
            if a is None:
                return None
            self._users.move_to_end(user_id)
            return UserActivity(
                set(a.seen),
                dict(a.positive),
                list(a.recent),
                list(a.liked),
                a.watch_time_sum,
                a.completion_sum,
                a.watches,
                a.profile,
                a.version,
            )

    def set_profile(self, user_id: str, profile: UserProfile) -> None:
        with self._lock:
            activity = self._touch(user_id)
            activity.profile = profile
            for video in profile.watched:  # a watch history the app sends is as watched as an event
                _add(activity.seen, video, None, self.max_videos, renew=False)
            activity.version = next(_VERSIONS)
            self.profile_ids += _ids(profile) - self._profiles.pop(user_id, 0)
            self._profiles[user_id] = _ids(profile)
            while self.profile_ids > self.max_profile_ids and len(self._profiles) > 1:
                oldest, size = self._profiles.popitem(last=False)
                self.profile_ids -= size
                forgotten = self._users[oldest]
                forgotten.profile = None
                forgotten.version = next(_VERSIONS)

    def profiles(self) -> int:
        return len(self._profiles)

    def replay_keys(self) -> int:
        return len(self._applied)

    def __len__(self) -> int:
        return len(self._users)
