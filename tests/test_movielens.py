"""The MovieLens adapter: the real ml-latest-small import, and small hand-made folders for the edge cases."""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

import polars as pl
import pytest

from jobs.import_movielens import main
from rec_core.data import movielens
from rec_core.data.import_report import ImportReport, InputError, RejectedError
from rec_core.data.lake import Lake
from rec_core.data.movielens import DEFAULT_PATH, import_movielens
from rec_core.data.tables import TABLES
from rec_core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
ML_SMALL = REPO_ROOT.parent / "shared" / "datasets" / "movielens-small"

needs_movielens = pytest.mark.skipif(
    not (ML_SMALL / "ratings.csv").is_file(),
    reason=f"MovieLens small data set not found at {ML_SMALL} (expected ../shared/datasets/movielens-small "
    "relative to the repository root); these tests need it",
)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def lake_of(settings: Settings) -> Lake:
    return Lake(settings.paths.lake_dir, settings.batch.lake_versions_keep)


# ---- the real data set ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ml_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, ImportReport]:
    if not (ML_SMALL / "ratings.csv").is_file():
        pytest.skip(f"MovieLens small data set not found at {ML_SMALL}")
    settings = Settings.of(data_dir=tmp_path_factory.mktemp("ml") / "data")
    report = import_movielens(ML_SMALL, settings=settings)
    return settings, report


@needs_movielens
def test_default_path_is_the_shared_data_set() -> None:
    assert DEFAULT_PATH.resolve() == ML_SMALL.resolve()


@needs_movielens
def test_movielens_counts(ml_lake: tuple[Settings, ImportReport]) -> None:
    settings, report = ml_lake
    assert report.status == "committed" and report.skipped_total == 0
    lake = lake_of(settings)
    rows = {t: lake.current().manifest["tables"][t]["rows"] for t in TABLES}
    # All movies are kept, the 18 unrated ones included (cold items).
    assert rows == {"users": 610, "videos": 9_742, "interactions": 100_836, "follows": 0}
    assert lake.read("follows").schema == TABLES["follows"].schema
    videos = lake.read("videos").to_pylist()
    unrated = [v for v in videos if v["views"] == 0]
    assert len(unrated) == 9_742 - 9_724
    earliest = min(lake.read("interactions")["ts"].to_pylist())
    assert {v["created_at"] for v in unrated} == {earliest}


@needs_movielens
def test_movielens_values_follow_the_mapping(ml_lake: tuple[Settings, ImportReport]) -> None:
    settings, _ = ml_lake
    lake = lake_of(settings)
    ratings = pl.read_csv(ML_SMALL / "ratings.csv").select(
        ("u" + pl.col("userId").cast(pl.String)).alias("user_id"),
        ("m" + pl.col("movieId").cast(pl.String)).alias("video_id"),
        "rating",
        "timestamp",
    )
    inter = pl.from_arrow(lake.read("interactions"))
    joined = ratings.join(inter, on=["user_id", "video_id"], how="inner")
    assert joined.height == 100_836
    assert (joined["liked"] == (joined["rating"] >= 4.0)).all()
    assert joined["liked"].sum() == int((ratings["rating"] >= 4.0).sum()) == 48_580
    assert ((joined["completion"] - joined["rating"] / 5.0).abs() < 1e-6).all()
    assert ((joined["watch_time_s"] - joined["completion"] * 30.0).abs() < 1e-4).all()
    assert (joined["ts"].dt.epoch("s") == joined["timestamp"]).all()
    assert not (joined["shared"].any() or joined["commented"].any())

    videos = pl.from_arrow(lake.read("videos"))
    first = ratings.group_by("video_id").agg(pl.col("timestamp").min().alias("first"), pl.len().alias("n"))
    checked = videos.join(first, on="video_id", how="inner")
    assert checked.height == 9_724
    assert (checked["created_at"].dt.epoch("s") == checked["first"]).all()
    assert (checked["views"] == checked["n"]).all()
    toy_story = videos.filter(pl.col("video_id") == "m1").row(0, named=True)
    assert toy_story["caption"] == "Toy Story (1995)"
    assert toy_story["hashtags"][:5] == ["adventure", "animation", "children", "comedy", "fantasy"]
    assert "pixar" in toy_story["hashtags"]  # a user tag shared by several users
    all_tags = videos["hashtags"].explode().drop_nulls()
    assert all_tags.str.contains(r"^\w+$").all()
    assert "no_genres_listed" not in set(all_tags.to_list())
    no_genre = pl.read_csv(ML_SMALL / "movies.csv").filter(pl.col("genres") == "(no genres listed)")
    assert no_genre.height == 34


@needs_movielens
def test_movielens_rerun_is_a_no_op(ml_lake: tuple[Settings, ImportReport]) -> None:
    settings, first = ml_lake
    again = import_movielens(ML_SMALL, settings=settings)
    assert again.status == "unchanged" and again.lake_version == first.lake_version
    assert lake_of(settings).versions() == [first.lake_version]


# ---- small folders, no shared data needed -----------------------------------------------


def small_movielens(folder: Path, ratings: list[list[object]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(
        folder / "movies.csv",
        ["movieId", "title", "genres"],
        [
            [1, "One, The (1999)", "Sci-Fi|Film-Noir"],
            [2, "Two (2000)", "(no genres listed)"],
            [3, "Three (2001)", "Drama"],
        ],
    )
    write_csv(
        folder / "ratings.csv",
        ["userId", "movieId", "rating", "timestamp"],
        ratings or [[1, 1, 4.0, 964982703], [1, 2, 3.5, 964982800], [2, 1, 5.0, 964982900]],
    )
    tags = [
        [1, 1, "Dark Comedy", 1],
        [2, 1, "dark  comedy!", 1],  # the same tag after normalising: 2 users
        [2, 2, "dark comedy", 1],
        [1, 1, "my own note", 1],  # one user only: noise
        [1, 3, "Sci-Fi", 1],
        [3, 3, "scifi", 1],
        [1, 999, "dark comedy", 1],  # a movie not in movies.csv: ignored
    ]
    write_csv(folder / "tags.csv", ["userId", "movieId", "tag", "timestamp"], tags)
    return folder


def test_small_folder_mapping_and_tag_filter(tmp_path: Path) -> None:
    settings = Settings.of(data_dir=tmp_path / "data")
    report = import_movielens(small_movielens(tmp_path / "ml"), settings=settings)
    assert report.status == "committed" and report.skipped_total == 0
    lake = lake_of(settings)
    videos = {v["video_id"]: v for v in lake.read("videos").to_pylist()}
    assert videos["m1"]["caption"] == "One, The (1999)"
    assert videos["m1"]["hashtags"] == ["scifi", "filmnoir", "dark_comedy"]
    assert videos["m2"]["hashtags"] == ["dark_comedy"]
    assert videos["m3"]["hashtags"] == ["drama", "scifi"]
    assert videos["m3"]["views"] == 0  # unrated but kept
    assert sorted(lake.read("users")["user_id"].to_pylist()) == ["u1", "u2"]
    inter = {(r["user_id"], r["video_id"]): r for r in lake.read("interactions").to_pylist()}
    assert inter["u1", "m2"]["completion"] == pytest.approx(0.7) and inter["u1", "m2"]["liked"] is False
    assert inter["u2", "m1"]["completion"] == 1.0 and inter["u2", "m1"]["liked"] is True
    assert inter["u1", "m1"]["ts"] == dt.datetime.fromtimestamp(964982703, dt.UTC)


def test_tag_cap_per_movie(tmp_path: Path) -> None:
    folder = small_movielens(tmp_path / "ml")
    raw = movielens.load(folder, max_tags_per_movie=0)
    assert raw.videos.filter(pl.col("video_id") == "m2")["hashtags"].to_list() == [[]]
    raw = movielens.load(folder, min_tag_users=1)
    assert "my_own_note" in raw.videos.filter(pl.col("video_id") == "m1")["hashtags"].to_list()[0]


def test_bad_movielens_rows_go_through_the_canonical_validation(tmp_path: Path) -> None:
    folder = small_movielens(
        tmp_path / "ml",
        ratings=[
            [1, 1, 4.0, 964982703],
            [2, 1, "four", 964982703],  # unparseable rating
            [3, 1, 6.0, 964982703],  # completion 1.2
            ["", 1, 3.0, 964982703],  # empty user id, not "u"
            [4, 1, "", 964982703],  # missing rating
            [5, 77, 3.0, 964982703],  # unknown movie
            [6, 1, 3.0, "soon"],  # unparseable ts
        ],
    )
    settings = Settings.of(data_dir=tmp_path / "data")
    report = import_movielens(folder, settings=settings)
    got = {(b.table, b.reason, b.column): b.count for b in report.bad_rows}
    assert got == {
        ("interactions", "empty id", "user_id"): 1,
        ("interactions", "unparseable ts", "ts"): 1,
        ("interactions", "unparseable number", "completion"): 2,
        ("interactions", "completion out of range", "completion"): 1,
        ("interactions", "unknown video", "video_id"): 1,
    }
    assert lake_of(settings).read("interactions").num_rows == 1
    with pytest.raises(RejectedError):
        import_movielens(folder, strict=True, settings=Settings.of(data_dir=tmp_path / "strict"))
    assert not (tmp_path / "strict").exists()


def test_missing_movielens_column_or_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = small_movielens(tmp_path / "ml")
    write_csv(folder / "ratings.csv", ["userId", "movieId", "timestamp"], [[1, 1, 1]])
    with pytest.raises(InputError, match=re.escape("ratings.csv: missing required column 'rating'")):
        movielens.load(folder)
    assert main(["--path", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path / "data")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("tag", "expected"),
    [("Sci-Fi", "scifi"), ("dark  comedy", "dark_comedy"), (" Quentin Tarantino ", "quentin_tarantino"), ("!!", "")],
)
def test_normalise_tag(tag: str, expected: str) -> None:
    assert movielens.normalise_tag(tag) == expected
    vectorised = pl.select(movielens._normalise_tag_expr(pl.lit(tag))).item()
    assert vectorised == expected
