"""MovieLens (ml-latest-small layout) -> canonical tables for :mod:`rec_core.data.file_import`.

The adapter only renames and reshapes; every value then goes through the same
validation as a canonical import (``file_import.run_import``), so a bad MovieLens row
is skipped and reported exactly like a bad canonical row. The files are read
in place and never copied.

Mapping
-------
- ``movies.csv`` (movieId, title, genres) -> videos: ``video_id = "m<movieId>"``,
  ``caption = title``, hashtags = the genres (split on ``|``, ``(no genres
  listed)`` dropped) followed by the movie's kept user tags, all normalised by
  :func:`normalise_tag`. Every other video column takes the import default: so
  ``duration_s`` 30, ``creator_id`` the movie itself, counts from the ratings,
  and ``created_at`` the movie's first rating ts.
- All 9,742 movies are kept, including the 18 that nobody rated: they are the
  data set's cold items (``created_at`` = the earliest rating ts, 0 views),
  which is exactly the case the live vector search exists for.
- ``ratings.csv`` (userId, movieId, rating, timestamp) -> interactions: one watch
  per rating, ``user_id = "u<userId>"``, ``completion = rating / 5`` (0.1-1.0),
  ``liked = rating >= 4``, ``watch_time_s`` left to the import default
  (completion * duration_s), shared/commented false.
- Users are the raters (there is no users file; the importer adds them with
  ``created_at`` = their first rating). There are no follows.

Tags
----
``tags.csv`` (userId, movieId, tag, timestamp) is free text from 58 users, much
of it one user's private notes: 1,471 distinct tags after normalising, and one
user alone put 173 tags on Pulp Fiction. A tag becomes a hashtag of a movie only
if at least ``min_tag_users`` (2) distinct users used it somewhere in the data
set, which keeps the shared vocabulary (302 tags, on 728 movies) and drops the
idiosyncrasies; each movie then keeps at most ``max_tags_per_movie`` (10) of
them, the ones most users put on that movie first (ties: the more widely used
tag, then alphabetical, so the result is deterministic). Genres always come
first and are never capped.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import polars as pl

from rec_core.data.file_import import CanonicalInput, check_columns, read_table_file, run_import
from rec_core.data.import_report import ImportReport, InputError
from rec_core.data.lake import lake_for
from rec_core.settings import Settings

log = logging.getLogger(__name__)

# The shared data sets sit beside the repository; resolving from this file makes the default
# independent of the working directory.
DEFAULT_PATH = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "movielens-small"

MIN_TAG_USERS = 2
MAX_TAGS_PER_MOVIE = 10
NO_GENRES = "(no genres listed)"
LIKED_MIN_RATING = 4.0
MAX_RATING = 5.0
MOVIE_PREFIX = "m"
USER_PREFIX = "u"

_NON_WORD = re.compile(r"[^\w]")


def normalise_tag(tag: str) -> str:
    """``"Sci-Fi"`` -> ``"scifi"``, ``"dark comedy"`` -> ``"dark_comedy"``: lowercase, spaces to ``_``, rest dropped."""
    text = "_".join(tag.lower().split())
    return _NON_WORD.sub("", text).strip("_")


def _normalise_tag_expr(expr: pl.Expr) -> pl.Expr:
    # Vectorised twin of normalise_tag (both use Unicode-aware \w); a test holds them equal.
    return (
        expr.str.to_lowercase()
        .str.strip_chars()
        .str.replace_all(r"\s+", "_")
        .str.replace_all(r"[^\w]", "")
        .str.strip_chars("_")
    )


def _prefixed(column: str, prefix: str) -> pl.Expr:
    # An empty source id must stay empty (so the importer reports "empty id"), not become a bare prefix.
    text = pl.col(column).str.strip_chars()
    return pl.when(text.str.len_chars() > 0).then(pl.lit(prefix) + text)


def load(
    path: Path, *, min_tag_users: int = MIN_TAG_USERS, max_tags_per_movie: int = MAX_TAGS_PER_MOVIE
) -> CanonicalInput:
    """Read a MovieLens folder (movies.csv, ratings.csv, optional tags.csv) as canonical tables."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"MovieLens folder {path} does not exist")
    movies_path, ratings_path, tags_path = path / "movies.csv", path / "ratings.csv", path / "tags.csv"
    movies = read_table_file(movies_path, what="MovieLens movies")
    check_columns(movies, ("movieId", "title"), f"MovieLens movies file {movies_path}")
    ratings = read_table_file(ratings_path, what="MovieLens ratings")
    check_columns(ratings, ("userId", "movieId", "rating", "timestamp"), f"MovieLens ratings file {ratings_path}")
    log.info("read MovieLens: %d movies, %d ratings from %s", movies.height, ratings.height, path)

    movies = movies.with_columns(_prefixed("movieId", MOVIE_PREFIX).alias("video_id"))
    genres = (
        movies.select(
            "video_id",
            pl.col("genres").str.split("|") if "genres" in movies.columns else pl.lit([], pl.List(pl.String)),
        )
        .explode("genres")
        .filter(pl.col("genres").str.strip_chars() != NO_GENRES)
        .select("video_id", _normalise_tag_expr(pl.col("genres")).alias("tag"))
        .group_by("video_id", maintain_order=True)
        .agg(pl.col("tag"))
    )
    tags = _movie_tags(tags_path, min_tag_users, max_tags_per_movie)
    videos = (
        movies.select("video_id", pl.col("title").alias("caption"))
        .join(genres.rename({"tag": "genre_tags"}), on="video_id", how="left", maintain_order="left")
        .join(tags.rename({"tag": "user_tags"}), on="video_id", how="left", maintain_order="left")
        .select(
            "video_id",
            "caption",
            pl.concat_list(
                pl.col("genre_tags").fill_null(pl.lit([], pl.List(pl.String))),
                pl.col("user_tags").fill_null(pl.lit([], pl.List(pl.String))),
            ).alias("hashtags"),
        )
    )

    rating = pl.col("rating").str.strip_chars().cast(pl.Float64, strict=False)
    interactions = ratings.select(
        _prefixed("userId", USER_PREFIX).alias("user_id"),
        _prefixed("movieId", MOVIE_PREFIX).alias("video_id"),
        pl.col("timestamp").alias("ts"),
        # A rating that does not parse is passed on as its raw text, so the importer reports it as an
        # unparseable completion instead of it silently taking the completion default (1.0).
        pl.when(rating.is_not_null())
        .then((rating / MAX_RATING).cast(pl.String))
        .otherwise(pl.col("rating").fill_null("(missing rating)"))
        .alias("completion"),
        (rating >= LIKED_MIN_RATING).alias("liked"),
    )
    names = {"videos": str(movies_path), "interactions": str(ratings_path)}
    return CanonicalInput(videos=videos, interactions=interactions, names=names)


def _movie_tags(tags_path: Path, min_tag_users: int, max_tags_per_movie: int) -> pl.DataFrame:
    """video_id -> list of kept, normalised user tags (empty frame when there is no tags.csv)."""
    empty = pl.DataFrame(schema={"video_id": pl.String, "tag": pl.List(pl.String)})
    if not tags_path.is_file():
        return empty
    tags = read_table_file(tags_path, what="MovieLens tags")
    check_columns(tags, ("userId", "movieId", "tag"), f"MovieLens tags file {tags_path}")
    applied = (
        tags.select(
            pl.col("userId").str.strip_chars().alias("user"),
            _prefixed("movieId", MOVIE_PREFIX).alias("video_id"),
            _normalise_tag_expr(pl.col("tag")).alias("tag"),
        )
        .filter(pl.col("video_id").is_not_null() & (pl.col("tag").str.len_chars() > 0))
        .unique()
    )
    vocabulary = applied.group_by("tag").agg(pl.col("user").n_unique().alias("tag_users"))
    vocabulary = vocabulary.filter(pl.col("tag_users") >= min_tag_users)
    per_movie = (
        applied.join(vocabulary, on="tag", how="inner")
        .group_by("video_id", "tag")
        .agg(pl.col("user").n_unique().alias("movie_users"), pl.col("tag_users").first())
        .sort(["video_id", "movie_users", "tag_users", "tag"], descending=[False, True, True, False])
        .group_by("video_id", maintain_order=True)
        .agg(pl.col("tag").head(max_tags_per_movie))
    )
    log.info(
        "MovieLens tags: %d applications, %d distinct, %d used by >= %d users, on %d movies",
        tags.height,
        applied["tag"].n_unique(),
        vocabulary.height,
        min_tag_users,
        per_movie.height,
    )
    return per_movie if per_movie.height else empty


def import_movielens(
    path: Path = DEFAULT_PATH,
    *,
    strict: bool = False,
    dry_run: bool = False,
    settings: Settings | None = None,
) -> ImportReport:
    """Convert the MovieLens folder to canonical tables and import them; raises ``IngestError`` on failure."""
    settings = settings or Settings.load()
    raw = load(Path(path))
    lake = None if dry_run else lake_for(settings.paths, settings.batch)
    return run_import(raw, lake, strict=strict, source=f"import_movielens {path}")
