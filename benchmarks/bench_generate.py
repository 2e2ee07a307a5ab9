"""Synthetic data generation at the default scale, into a throwaway data root.

Reports the end-to-end wall time of ``generate_data`` (world + lake commit +
truth), the interactions and total rows written per second, and the share of
the time each stage took, so a regression points at its stage.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import BenchRow, stopwatch
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data

NAME = "generate_data"
SCALE = "default"


def run() -> list[BenchRow]:
    settings = Settings.load()
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        settings = settings.override(data_dir=Path(tmp))
        with stopwatch() as t:
            summary = generate_data(settings, SCALE)
    seconds = t[0]
    rows = summary["rows"]
    total = sum(rows.values())
    note = f"{rows['users']:,} users, {rows['videos']:,} videos, {rows['interactions']:,} interactions"
    out = [
        BenchRow(NAME, f"wall time, {SCALE} scale", seconds, "s", note),
        BenchRow(NAME, "interactions per second", rows["interactions"] / seconds, "rows/s", "end to end"),
        BenchRow(NAME, "rows per second, all tables", total / seconds, "rows/s", f"{total:,} rows"),
    ]
    out += [
        BenchRow(NAME, f"stage: {stage}", value, "s", f"{100 * value / seconds:.0f}% of the run")
        for stage, value in summary["timings"].items()
    ]
    return out


if __name__ == "__main__":
    for row in run():
        print(row)
