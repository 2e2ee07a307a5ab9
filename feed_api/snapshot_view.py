"""One published snapshot, held in memory for serving.

Everything a page needs is here as flat numpy arrays, so a precomputed page is
a few slices and no database query (docs/architecture.md, invariant 4). The catalogue,
feeds, trending list and vectors are the snapshot's serving index, memory-mapped
(:mod:`rec_core.snapshot.serving_index`): pages of them are shared by every worker:

* the catalogue of the snapshot (video ids sorted, creator, creation time, and
  each video's position, its "code", which feeds and cursors refer to),
* every user's ranked feed as one concatenated array of codes with a
  user -> [start, end) index, scores, and reasons as a dictionary,
* the trending list, the users' batch vectors, and the snapshot's Milvus
  collection for live search,
* the model that built it and the snapshot's catalogue (the video tower's
  inputs, written by the video shards), for the user tower online and for
  encoding new videos into the same vector space (loaded once),
* what each user watched before the build's as-of
  (:mod:`rec_core.snapshot.watch_history`), which live answers leave out as the batch's feeds did,
* when its build applied the ranker, the ranker and the feature state as of
  the build (:mod:`rec_core.feed.rank_stage`), so live pages run the batch's
  own ranking stage.

A snapshot that carries other model versions for an experiment's arms (:mod:`rec_core.snapshot.layout`) loads a
view per version too (:attr:`SnapshotView.spaces`): the same catalogue, feeds and trending list, with that version's
model, vectors, collection and ranker. A user's walk reads the space of their arm (:meth:`SnapshotView.in_space`),
so a fresh user of that arm gets that version's user tower, and a walk past its list that version's live search.

Everything comes from the snapshot folder (the model store only for a snapshot
begun before it carried its model): serving never reads the lake, so a
snapshot keeps serving after its lake version is pruned.

A row whose id breaks the id rule (:mod:`rec_core.ids`: a snapshot built from a
lake an older API or batch let such an id into) is left out with a warning and
counted in ``skipped_ids``; the rest loads, so one bad id does not keep every
later snapshot from going live.

:mod:`feed_api.snapshot_load` reads a snapshot folder into one, off the request path
(:mod:`feed_api.snapshots`). The object is never mutated afterwards except for the
videos added through the API, which live in :class:`AddedVideos` under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rec_core.experiments.assign import Assignment, Placement
from rec_core.feed.rank_stage import RankCatalogue, RankInputs
from rec_core.model.features import Catalogue
from rec_core.model.inference import OnlineUserVector, UserProfile, user_vector_from_profile
from rec_core.model.store import LoadedModel
from rec_core.snapshot.layout import BuildInfo
from rec_core.snapshot.serving_index import FeedIndex, IdIndex, RankedList
from rec_core.snapshot.vector_store import VectorStore
from rec_core.snapshot.watch_history import WatchHistory, empty_history


@dataclass(slots=True)
class AddedVideos:
    """Videos posted to this API since the snapshot was built: searchable in its collection at once."""

    creators: dict[str, str] = field(default_factory=dict)
    created_ms: dict[str, int] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    payload_hash: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(slots=True)
class SnapshotView:
    snapshot_id: str
    build: BuildInfo
    published_at: float  # unix time this process saw it live (for the snapshot age metric)
    as_of_ms: int
    video_ids: np.ndarray  # str, sorted: code -> id
    video_code: IdIndex
    creator_ids: np.ndarray  # str, by code
    created_ms: np.ndarray  # int64, by code
    video_vectors: np.ndarray  # float32 (n, dim), by code
    feeds: FeedIndex
    trending: RankedList
    trending_vector: np.ndarray  # the mean of the top trending videos' vectors: a user with nothing
    user_row: Mapping[str, int]
    user_vectors: np.ndarray
    model: LoadedModel
    catalogue: Catalogue
    store: VectorStore
    known_creators: frozenset[str]
    added: AddedVideos = field(default_factory=AddedVideos)
    skipped_ids: dict[str, int] = field(default_factory=dict)  # "videos" / "users" -> rows left out for their id
    ranking: RankCatalogue | None = None  # the build's ranker over these codes; None: the towers' order
    assignment: Assignment = field(default_factory=lambda: Assignment([]))  # the build's experiments' arms
    spaces: dict[str, SnapshotView] = field(default_factory=dict)  # other model versions' views, by version
    watched: WatchHistory = field(default_factory=empty_history)  # what each user watched before as-of

    @property
    def dim(self) -> int:
        return self.video_vectors.shape[1]

    @property
    def model_version(self) -> str:
        return self.build.model_version

    def in_space(self, placement: Placement | None) -> SnapshotView:
        """The view a user of ``placement``'s arm is served from: their arm's model version's, else this one."""
        return self if placement is None else self.spaces.get(placement.variant, self)

    def all_spaces(self) -> list[SnapshotView]:
        return [self, *self.spaces.values()]

    def catalogue_size(self) -> int:
        return len(self.video_ids) + len(self.added.creators)

    def creator_of(self, video_id: str) -> str | None:
        code = self.video_code.get(video_id)
        if code is not None:
            return str(self.creator_ids[code])
        return self.added.creators.get(video_id)

    def catalogue_facts(self, video_ids: Sequence[str]) -> tuple[np.ndarray, list[str], list[int]]:
        """Codes (-1: posted since the snapshot), creators ("" when unknown) and creation times (as of the snapshot
        when unknown) of many videos at once: one binary search for all of them."""
        codes = self.video_code.codes(video_ids)
        known = codes >= 0
        creators = np.empty(len(codes), dtype=object)
        creators[known] = self.creator_ids[codes[known]]
        created = np.full(len(codes), self.as_of_ms, dtype=np.int64)
        created[known] = self.created_ms[codes[known]]
        for i in np.flatnonzero(~known).tolist():
            creators[i] = self.added.creators.get(video_ids[i], "")
            created[i] = self.added.created_ms.get(video_ids[i], self.as_of_ms)
        return codes, creators.tolist(), created.tolist()

    def known_video(self, video_id: str) -> bool:
        return video_id in self.video_code or video_id in self.added.creators

    def known_count(self, video_ids: Collection[str]) -> int:
        """How many of ``video_ids`` this snapshot can serve: one binary search for all (a walk's exclusions hold
        the user's whole history)."""
        ids = list(video_ids)
        in_catalogue = int(np.count_nonzero(self.video_code.codes(ids) >= 0))
        return in_catalogue + sum(1 for v in ids if v in self.added.creators)

    def watched_before(self, user_id: str) -> set[str]:
        """The videos ``user_id`` watched before the snapshot's as-of: the batch left them out of their feed, and
        the live continuation must too."""
        return set(self.video_ids[self.watched.codes_of(user_id)].tolist())

    def video_vector(self, video_id: str) -> np.ndarray | None:
        code = self.video_code.get(video_id)
        return self.video_vectors[code] if code is not None else self.added.vectors.get(video_id)

    def batch_vector(self, user_id: str) -> np.ndarray | None:
        row = self.user_row.get(user_id)
        return None if row is None else self.user_vectors[row]

    def knows_user(self, user_id: str) -> bool:
        """Whether the batch embedded the user: what they did before the snapshot is in its rows, and only what
        they did since is the API's to add."""
        return self.user_row.get(user_id) is not None

    def profile_vector(self, profile: UserProfile) -> OnlineUserVector:
        """The user tower online, in this snapshot's vector space."""
        return user_vector_from_profile(self.model, self.catalogue, self.model.stats, profile, self.known_creators)

    def ranking_for(self, user_id: str, vector: np.ndarray, profile: UserProfile | None = None) -> RankInputs | None:
        """The ranker stage's context for one user whose candidates were retrieved with ``vector``; ``profile``:
        what the API knows of them (their whole history when the snapshot lacks them, else their events since it:
        :meth:`knows_user` decides, for the pager that made it and for the ranker that reads it)."""
        if self.ranking is None:
            return None
        return self.ranking.live_inputs(user_id, vector, profile, in_snapshot=self.knows_user(user_id))

    def close(self) -> None:
        for view in self.all_spaces():
            view.store.close()
