"""``make bench``: run every ``benchmarks/bench_*.py`` and write one table.

Ratios inside a benchmark are measured side by side in the same run, because
these machines are shared and absolute times drift. ``--only NAME`` runs one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import pkgutil
from pathlib import Path

import benchmarks
from benchmarks.common import BenchRow
from rec_core.progress import setup_logging
from rec_core.settings import Settings

log = logging.getLogger("bench")


def discover() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))


def to_markdown(rows: list[BenchRow]) -> str:
    lines = ["| benchmark | metric | value | unit | note |", "| --- | --- | ---: | --- | --- |"]
    lines += [f"| {r.benchmark} | {r.metric} | {r.value:,.3g} | {r.unit} | {r.note} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", help="run only this benchmark module (e.g. bench_generate)")
    args = parser.parse_args(argv)
    settings = Settings.load()
    setup_logging(settings.log_level)
    names = args.only or discover()
    rows: list[BenchRow] = []
    for name in names:
        log.info("running %s", name)
        module = importlib.import_module(f"benchmarks.{name}")
        rows.extend(module.run())
    table = to_markdown(rows)
    out = settings.paths.data_dir / "bench" / f"bench-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    print(table)
    print(f"\nwritten to {Path(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
