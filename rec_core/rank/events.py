"""The lake's frames as integer arrays in one index space, sorted by time, for features "as of" any instant.

The ranker's features are all counts over the past (:mod:`rec_core.rank.state`), asked for at several instants (the
validation cut for training examples, the test cut or "now" when it scores), so the frames are turned into arrays
once: users and videos by their position in the split's (or the snapshot's) sorted id lists, creators and hashtags by
codes of their own, every event sorted by time so that "before t" is one ``searchsorted``.

Creator and hashtag codes come from the whole videos table: a video's creator and hashtags are its content, known
the moment it is posted, and a code says nothing about when; only the counts over events (cut at t) carry time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp


@dataclass(frozen=True, slots=True)
class RankEvents:
    """Users, videos and every interaction and follow, as arrays; events sorted by (ts, user, item)."""

    user_ids: np.ndarray  # object, sorted: position = user index
    item_ids: np.ndarray  # object, sorted: position = item index (the catalogue)
    item_created_ms: np.ndarray  # int64 per item
    item_creator: np.ndarray  # int64 per item: creator code
    creator_ids: np.ndarray  # object, sorted: position = creator code
    item_tags: sp.csr_matrix  # items x hashtags, binary: each video's hashtags
    tag_ids: np.ndarray  # object, sorted: position = hashtag code
    user: np.ndarray  # int64 per interaction
    item: np.ndarray  # int64 per interaction
    ts_ms: np.ndarray  # int64 per interaction, non-decreasing
    completion: np.ndarray  # float32 per interaction
    liked: np.ndarray  # bool per interaction
    follow_user: np.ndarray  # int64 per follow
    follow_creator: np.ndarray  # int64 per follow (creator code; follows of creators without a video are dropped)
    follow_ts_ms: np.ndarray  # int64 per follow, non-decreasing

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_creators(self) -> int:
        return len(self.creator_ids)

    @property
    def n_tags(self) -> int:
        return len(self.tag_ids)

    def interactions_before(self, t_ms: int) -> int:
        """How many interactions happened strictly before ``t_ms`` (a prefix of the arrays)."""
        return int(np.searchsorted(self.ts_ms, t_ms, side="left"))

    def follows_before(self, t_ms: int) -> int:
        return int(np.searchsorted(self.follow_ts_ms, t_ms, side="left"))

    @classmethod
    def build(
        cls,
        user_ids: np.ndarray,
        videos: pl.DataFrame,
        interactions: pl.DataFrame,
        follows: pl.DataFrame,
    ) -> RankEvents:
        """Arrays of the frames (``videos``: video_frame; ``interactions`` / ``follows``: with ``ts_ms``).

        ``user_ids`` fixes the user index space (the split's); interactions of other users or with videos outside
        ``videos`` are dropped, as the split drops them.
        """
        v = videos.sort("video_id")
        item_ids = v["video_id"].to_numpy().astype(object)
        creator_ids, item_creator = np.unique(v["creator_id"].to_numpy().astype(str), return_inverse=True)
        item_tags, tag_ids = _tag_matrix(v["hashtags"].to_list())
        users = pl.DataFrame({"user_id": pl.Series(np.asarray(user_ids, dtype=object), dtype=pl.String)})
        users = users.with_row_index("u")
        items = pl.DataFrame({"video_id": pl.Series(item_ids, dtype=pl.String)}).with_row_index("i")
        events = (
            interactions.select("user_id", "video_id", "ts_ms", "completion", "liked")
            .join(users, on="user_id")
            .join(items, on="video_id")
            .sort(["ts_ms", "u", "i", "completion", "liked"])
        )
        creators = pl.DataFrame({"creator_id": pl.Series(creator_ids.astype(object), dtype=pl.String)})
        f = (
            follows.select("user_id", "creator_id", "ts_ms")
            .join(users, on="user_id")
            .join(creators.with_row_index("c"), on="creator_id")
            .sort(["ts_ms", "u", "c"])
        )
        return cls(
            user_ids=np.asarray(user_ids, dtype=object),
            item_ids=item_ids,
            item_created_ms=v["created_ms"].to_numpy().astype(np.int64),
            item_creator=item_creator.astype(np.int64),
            creator_ids=creator_ids.astype(object),
            item_tags=item_tags,
            tag_ids=tag_ids,
            user=events["u"].to_numpy().astype(np.int64),
            item=events["i"].to_numpy().astype(np.int64),
            ts_ms=events["ts_ms"].to_numpy().astype(np.int64),
            completion=events["completion"].to_numpy().astype(np.float32),
            liked=events["liked"].to_numpy().astype(bool),
            follow_user=f["u"].to_numpy().astype(np.int64),
            follow_creator=f["c"].to_numpy().astype(np.int64),
            follow_ts_ms=f["ts_ms"].to_numpy().astype(np.int64),
        )


def _tag_matrix(tags: list[list[str] | None]) -> tuple[sp.csr_matrix, np.ndarray]:
    lengths = np.array([len(t or ()) for t in tags], dtype=np.int64)
    flat = np.array([tag for t in tags for tag in (t or ())], dtype=object)
    vocab, codes = np.unique(flat.astype(str), return_inverse=True) if len(flat) else (np.array([], str), flat)
    rows = np.repeat(np.arange(len(tags), dtype=np.int64), lengths)
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, np.asarray(codes, dtype=np.int64))),
        shape=(len(tags), len(vocab)),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # a tag repeated on one video counts once
    matrix.sort_indices()
    return matrix, vocab.astype(object)
