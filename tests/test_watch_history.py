"""The snapshot's watch history (rec_core.snapshot.watch_history): the batch's ``seen`` pairs, per user, in codes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rec_core.snapshot.layout import BuildInfo, SnapshotPaths
from rec_core.snapshot.watch_history import build_watch_history, open_watch_history, write_watch_history

AS_OF = "2025-03-01T00:00:00+00:00"
CATALOGUE = np.asarray(["v1", "v2", "v3", "v4"], dtype=str)  # code -> id, sorted


def interactions(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    pq.write_table(
        pa.table(
            {
                "user_id": [u for u, _, _ in rows],
                "video_id": [v for _, v, _ in rows],
                "ts": pa.array([dt.datetime.fromisoformat(t) for _, _, t in rows], pa.timestamp("ms", tz="UTC")),
            }
        ),
        path,
    )
    return path


def test_each_users_videos_before_as_of_in_the_catalogue_once_each_in_code_order(tmp_path: Path) -> None:
    path = interactions(
        tmp_path / "interactions.parquet",
        [
            ("u2", "v3", "2025-02-01T00:00:00+00:00"),
            ("u2", "v1", "2025-02-02T00:00:00+00:00"),
            ("u2", "v3", "2025-02-03T00:00:00+00:00"),  # watched twice: once in the history
            ("u1", "v4", "2025-02-28T23:59:59.999+00:00"),
            ("u1", "v2", "2025-03-01T00:00:00+00:00"),  # at as-of: after the batch's cut
            ("u1", "gone", "2025-02-01T00:00:00+00:00"),  # not in the catalogue: nothing to leave out
            ("u3", "v2", "2025-03-02T00:00:00+00:00"),  # only after as-of: no history
            ("u10", "v2", "2025-01-01T00:00:00+00:00"),  # sorts between u1 and u2 as strings
        ],
    )
    history = build_watch_history(path, AS_OF, CATALOGUE)
    assert history.user_row.ids.tolist() == ["u1", "u10", "u2"]
    assert {u: CATALOGUE[history.codes_of(u)].tolist() for u in ("u1", "u10", "u2", "u3", "nobody")} == {
        "u1": ["v4"],
        "u10": ["v2"],
        "u2": ["v1", "v3"],
        "u3": [],
        "nobody": [],
    }
    assert history.codes.dtype == np.int32 and len(history) == 4


def test_written_and_mapped_back_and_empty_for_a_snapshot_begun_before_it(tmp_path: Path) -> None:
    path = interactions(tmp_path / "interactions.parquet", [("u1", "v2", "2025-02-01T00:00:00+00:00")])
    paths = SnapshotPaths(tmp_path / "snap")
    build = BuildInfo("snap", "m1", "v000001", AS_OF, 1, 1, 8, 10, AS_OF, watch_history=True)
    write_watch_history(paths, build, path, CATALOGUE)
    mapped = open_watch_history(paths, build)
    assert CATALOGUE[mapped.codes_of("u1")].tolist() == ["v2"]
    assert isinstance(mapped.codes, np.memmap)
    older = open_watch_history(paths, dataclasses.replace(build, watch_history=False))
    assert len(older) == 0 and older.codes_of("u1").tolist() == []


def test_no_interactions_before_as_of_is_an_empty_history(tmp_path: Path) -> None:
    path = interactions(tmp_path / "interactions.parquet", [("u1", "v2", "2025-04-01T00:00:00+00:00")])
    history = build_watch_history(path, AS_OF, CATALOGUE)
    assert len(history.user_row) == 0 and history.offsets.tolist() == [0]
