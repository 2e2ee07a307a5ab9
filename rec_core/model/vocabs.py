"""A model's vocabularies: the videos, creators and hashtags it has rows for, and the one lookup of ids into them.

Index 0 of each is "unknown". The training data builds them (:func:`build_vocabs`) from what was known before the
model's as-of; a model version saves them as Parquet. A snapshot's copy of the model also holds them as
fixed-width NumPy files (:meth:`Vocabs.mapped_files`), which every API worker maps, sharing the pages, instead of
holding ~500,000 Python strings each at the large scale (:meth:`Vocabs.load`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from rec_core.ids import per_distinct, sorted_positions

MIN_HASHTAG_VIDEOS = 2  # a hashtag on fewer videos than this gets no vector of its own
HASHED_LOOKUP = 4_096  # ids at once from which Vocabs.lookup hashes them instead of searching
NAMES = ("items", "creators", "hashtags")
MAPPED_FILES = tuple(f"vocab_{name}.npy" for name in NAMES)


@dataclass(frozen=True, slots=True)
class Vocabs:
    """Id -> index maps of a model; index 0 is "unknown" in each."""

    items: np.ndarray  # video ids, index i+1: objects, or fixed-width strings where mapped
    creators: np.ndarray
    hashtags: np.ndarray

    @property
    def sizes(self) -> tuple[int, int, int]:
        return len(self.items) + 1, len(self.creators) + 1, len(self.hashtags) + 1

    @staticmethod
    def lookup(vocab: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Index of each id in ``vocab`` (sorted, distinct), 0 where absent.

        Many string ids are hashed (polars): a binary search compares Python strings, about a second per 500,000
        ids, and every catalogue build looks a whole catalogue's videos, creators and hashtags up. A few ids (a live
        request's) are searched, which costs nothing to set up. A vocabulary of fixed-width strings (ids mapped from
        a snapshot) is searched in its own width (:func:`rec_core.ids.sorted_positions`): a search with Python strings
        would copy all of it into Python strings on every call, for each of a live user's watched and liked lists."""
        if len(vocab) == 0 or len(ids) == 0:
            return np.zeros(len(ids), dtype=np.int64)
        if vocab.dtype.kind == "U" and isinstance(ids, np.ndarray) and ids.dtype.kind == "U":
            return sorted_positions(vocab, ids) + 1  # a mapped catalogue's ids: no Python string at any size
        ids = np.asarray(ids, dtype=object)
        if vocab.dtype.kind == "U" and len(ids) < HASHED_LOOKUP and all(isinstance(i, str) for i in ids.tolist()):
            return sorted_positions(vocab, ids) + 1
        if len(ids) >= HASHED_LOOKUP:
            try:
                codes = pl.Series(ids, dtype=pl.String).cast(pl.Enum(pl.Series(vocab, dtype=pl.String)), strict=False)
            except (TypeError, ValueError, pl.exceptions.PolarsError):  # not all strings, or a repeated entry: searched
                pass
            else:
                return (codes.to_physical().cast(pl.Int64) + 1).fill_null(0).to_numpy()
        pos = np.clip(np.searchsorted(vocab, ids), 0, len(vocab) - 1)
        return np.where(vocab[pos] == ids, pos + 1, 0).astype(np.int64)

    @staticmethod
    def codes(vocab: np.ndarray, values: pa.Array) -> np.ndarray:
        """:meth:`lookup` of an Arrow array (0 for a null), each distinct value looked up once: a catalogue's
        hashtags are ~5 per video over a few thousand distinct tags (2.5 M Python strings at the large scale, for
        nothing), its creators ~25 videos each."""
        return per_distinct(values, lambda distinct: Vocabs.lookup(vocab, distinct), 0)

    def save(self, folder: Path) -> None:
        for name in NAMES:
            pq.write_table(
                pa.table({"id": pa.array(getattr(self, name), pa.string())}), folder / f"vocab_{name}.parquet"
            )

    def mapped_files(self) -> dict[str, bytes]:
        """The vocabularies as fixed-width NumPy files (``MAPPED_FILES``), which :meth:`load` maps."""
        out = {}
        for name, file in zip(NAMES, MAPPED_FILES, strict=True):
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(getattr(self, name), dtype=str), allow_pickle=False)
            out[file] = buffer.getvalue()
        return out

    @classmethod
    def load(cls, folder: Path) -> Vocabs:
        """The vocabularies in ``folder``: mapped read-only where its NumPy files are (a snapshot's copy of the
        model), else read from its Parquet files."""
        if all((folder / file).is_file() for file in MAPPED_FILES):
            return cls(*(np.load(folder / file, mmap_mode="r", allow_pickle=False) for file in MAPPED_FILES))

        def read(name: str) -> np.ndarray:
            return pq.read_table(folder / f"vocab_{name}.parquet")["id"].to_numpy(zero_copy_only=False).astype(object)

        return cls(*(read(name) for name in NAMES))


def build_vocabs(videos: pl.DataFrame, interactions: pl.DataFrame, as_of_ms: int) -> Vocabs:
    """Vocabularies from what was known before ``as_of``: videos with a watch, their creators, common hashtags."""
    before = interactions.filter(pl.col("ts_ms") < as_of_ms)
    seen = before.select("video_id").unique()
    known = videos.join(seen, on="video_id", how="semi")
    posted = videos.filter(pl.col("created_ms") < as_of_ms)
    tags = (
        posted.select(pl.col("hashtags").list.unique().explode().alias("tag"))
        .drop_nulls()
        .group_by("tag")
        .len()
        .filter(pl.col("len") >= MIN_HASHTAG_VIDEOS)
    )

    def sorted_ids(col: pl.Series) -> np.ndarray:
        return np.array(sorted(col.unique().to_list()), dtype=object)

    return Vocabs(sorted_ids(known["video_id"]), sorted_ids(known["creator_id"]), sorted_ids(tags["tag"]))
