"""What the API has learned about each user since the batch: events and posted profiles.

This is the "real time" half of the feed: a watched (or skipped) video leaves
the feed at once, and likes and long watches move the user's live vector. The
state is rebuilt from the inbox on start-up and followed from the inbox while
running, so it survives restarts and is shared by workers; applying a record
twice changes nothing, which is what makes that replay safe.

Bounded: the least recently active users are forgotten past ``max_users``
(their events are in the inbox and reach the next snapshot anyway).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from rec_core.embedding import UserProfile

LONG_WATCH = 0.8  # completion at or above which a watch says "more like this"
POSITIVE_TYPES = frozenset({"like", "share", "comment"})
RECENT_CAP = 256  # recent watches kept per user for the online user tower


@dataclass(slots=True)
class UserActivity:
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


class UserStates:
    """Thread-safe map user id -> :class:`UserActivity`, least recently used first out."""

    def __init__(self, max_users: int = 500_000) -> None:
        self._users: OrderedDict[str, UserActivity] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_users
        self._applied: set[tuple[Any, ...]] = set()  # (user, video, type, at) of applied events: replay-safe

    def _touch(self, user_id: str) -> UserActivity:
        activity = self._users.get(user_id)
        if activity is None:
            activity = self._users[user_id] = UserActivity()
            if len(self._users) > self._max:
                self._users.popitem(last=False)
        else:
            self._users.move_to_end(user_id)
        return activity

    def apply_event(self, event: dict[str, Any], at: str) -> None:
        """Fold one event (the ``POST /events`` body) in; a second application of the same record is a no-op."""
        key = (event["user_id"], event["video_id"], event["type"], at)
        with self._lock:
            if key in self._applied:
                return
            self._applied.add(key)
            if len(self._applied) > 4 * self._max:  # old keys only guard replays of old records
                self._applied.clear()
            activity = self._touch(event["user_id"])
            video, kind = event["video_id"], event["type"]
            activity.seen.add(video)
            if kind != "skip":
                activity.recent.append(video)
                del activity.recent[:-RECENT_CAP]
                activity.watches += 1
                activity.watch_time_sum += float(event.get("watch_time_s") or 0.0)
                activity.completion_sum += float(event.get("completion") or 0.0)
            if kind == "like":
                activity.liked.append(video)
            if kind in POSITIVE_TYPES or float(event.get("completion") or 0.0) >= LONG_WATCH:
                activity.positive[video] = activity.positive.get(video, 0.0) + (2.0 if kind == "like" else 1.0)
            activity.version += 1

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
            activity.seen.update(profile.watched)  # a watch history the app sends is as watched as an event
            activity.version += 1

    def __len__(self) -> int:
        return len(self._users)
