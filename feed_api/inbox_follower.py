"""Following the inbox: what users did since the live snapshot's batch, kept in memory for their pages.

The user state is the inbox replayed from the offsets the live snapshot's batch
had taken in, and kept up to date from there: at start-up (a restart loses
nothing acknowledged), when a new snapshot goes live (what its batch took in is
dropped), and every tick for other workers' records. Records whose ids break the
id rule are skipped; posted videos found in the inbox go to :class:`PostedVideos`.
"""

from __future__ import annotations

import logging
from typing import Any

from feed_api.bodies import user_profile
from feed_api.posted_videos import PostedVideos
from feed_api.snapshot_view import SnapshotView
from feed_api.user_state import UserStates
from rec_core.data.inbox import InboxRecord, InboxWriter, consumed_offsets, read_new
from rec_core.ids import id_problem
from rec_core.settings import ApiSettings, PathSettings
from rec_core.snapshot.layout import SnapshotError, live_snapshot_id, snapshot_paths

log = logging.getLogger(__name__)


class InboxFollower:
    def __init__(self, paths: PathSettings, api: ApiSettings, inbox: InboxWriter, posted: PostedVideos) -> None:
        self._paths = paths
        self._api = api
        self._inbox = inbox
        self._posted = posted
        self.users = UserStates(api.users_max, api.user_videos_max, max_profile_ids=api.profile_ids_max)
        self._users_of: str | None = None  # the snapshot whose inbox offsets self.users was replayed from
        self._inbox_offsets: dict[str, int] | None = None

    def follow(self, live: SnapshotView | None) -> None:
        """Keep :attr:`users` equal to the inbox replayed from where the live snapshot's batch stopped reading it.

        That one rule covers the start-up replay and what a new snapshot makes stale. The new snapshot's
        ``build.json`` records the inbox offsets its batch had taken into the lake; its feeds already leave out
        every video those records name, so the activity they carry is dropped, and the activity after them is
        kept. Exactly that is what a replay from those offsets into an empty state gives, so on a new live
        snapshot the state is rebuilt that way, off to the side, and swapped in. (A rule by record time would
        be simpler but wrong: the snapshot does not record when its batch read the inbox, and writers stamp
        records a moment before they append them.) Between rebuilds, only other workers' segments are read:
        this process applied its own records when it accepted them.
        """
        if self._inbox_offsets is None or (live is not None and live.snapshot_id != self._users_of):
            self._rebuild(live)
        else:
            self._inbox_offsets = self._read(self.users, self._inbox_offsets, live, skip_own=True)

    def _rebuild(self, live: SnapshotView | None) -> None:
        snapshot_id, since = self._replay_from(live)
        users = UserStates(self._api.users_max, self._api.user_videos_max, max_profile_ids=self._api.profile_ids_max)
        offsets = self._read(users, since if since is not None else consumed_offsets(self._paths.inbox_dir), live)
        self.users, self._users_of = users, snapshot_id
        # Records this process accepted while the replay ran were applied to the old state only; being durable
        # before they are applied, they are all in the inbox now: read them once more into the new state (one
        # accepted since the swap may be read and applied twice, which the replay keys make a no-op).
        self._inbox_offsets = self._read(users, offsets, live)
        if live is not None:
            log.info(
                "user state replayed from the inbox offsets of snapshot %s: %d users", live.snapshot_id, len(users)
            )

    def _read(
        self, users: UserStates, since: dict[str, int], live: SnapshotView | None, *, skip_own: bool = False
    ) -> dict[str, int]:
        """Apply every inbox record after ``since`` to ``users``, reading at most ``api_inbox_read_bytes`` at a
        time (a big inbox replays in flat memory); returns the offsets read up to."""
        offsets = dict(since)
        while True:
            batch = read_new(
                self._paths.inbox_dir,
                offsets,
                max_bytes=self._api.inbox_read_bytes,
                skip=self._inbox.owns if skip_own else None,
            )
            offsets.update(batch.offsets)
            videos: list[dict[str, Any]] = []
            for record in batch.records:
                self._apply(users, record, videos)
            if videos:
                self._posted.take(live, videos)
            if not batch.more:
                return offsets

    def _replay_from(self, live: SnapshotView | None) -> tuple[str | None, dict[str, int] | None]:
        """The snapshot the user state follows and where it replays the inbox from: the offsets that snapshot's
        batch had taken in (the live one, or at start-up the one the LIVE pointer names).

        Not what the batch has consumed by now: a batch that ingested the inbox but has not published yet
        would leave those events in the lake and out of every feed served. None (the consumed offsets) when
        there is no snapshot yet, or it was begun before snapshots recorded their offsets.
        """
        if live is not None:
            offsets = live.build.inbox_offsets
            return live.snapshot_id, dict(offsets) if offsets is not None else None
        snapshot_id = live_snapshot_id(self._paths)
        if snapshot_id is None:
            return None, None
        try:
            offsets = snapshot_paths(self._paths, snapshot_id).read_build().inbox_offsets
        except (OSError, ValueError, TypeError, SnapshotError) as exc:
            log.warning(
                "cannot read the inbox offsets of snapshot %s (%s): replaying what is unconsumed", snapshot_id, exc
            )
            return snapshot_id, None
        return snapshot_id, dict(offsets) if offsets is not None else None

    def _apply(self, users: UserStates, record: InboxRecord, videos: list[dict[str, Any]]) -> None:
        data = record.data
        try:
            # The inbox may hold records an older API accepted, or another writer wrote: one id that breaks the
            # id rule must not reach the user state, live search or a page.
            for key in ("user_id", "video_id", "creator_id"):
                if data.get(key) is not None and (problem := id_problem(data[key])) is not None:
                    log.warning("skipping an inbox %s record: %s %s: %s", record.kind, key, problem, ascii(data)[:200])
                    return
            if record.kind == "event":
                users.apply_event(data, record.at.isoformat())
            elif record.kind == "user" and "watched_videos" in data:
                users.set_profile(data["user_id"], user_profile(data))
            elif record.kind == "video" and "caption" in data:
                videos.append(data)
        except (KeyError, TypeError, ValueError) as exc:  # a record written by something else: skip, say so
            log.warning("skipping an inbox record the API cannot read (%s): %s", exc, str(data)[:200])
