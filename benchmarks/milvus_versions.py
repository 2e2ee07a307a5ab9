"""Compare milvus-lite releases side by side: ``make bench-milvus``.

Each candidate gets its own small venv under ``.bench-venvs/`` (pymilvus,
milvus-lite, numpy only) and runs ``benchmarks/milvus_search.py``; the project
venv's own pins run too, so the table shows what the lock buys. This is how the
``milvus-lite`` pin in pyproject.toml was chosen.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "milvus_search.py"
CANDIDATES = {
    "milvus-lite 3.2.2": ["pymilvus==3.0.2", "milvus-lite==3.2.2", "numpy"],
}


def side_venv(name: str, requirements: list[str]) -> Path:
    venv = ROOT / ".bench-venvs" / name.replace(" ", "-")
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements], check=True)
    return python


def run(python: Path, sizes: list[str]) -> dict:
    proc = subprocess.run([str(python), str(SCRIPT), *sizes], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    sizes = sys.argv[1:] or ["20000", "100000"]
    pythons = {"project lock": Path(sys.executable)}
    pythons.update({name: side_venv(name, reqs) for name, reqs in CANDIDATES.items()})
    print("| setup | milvus-lite | vectors | index | insert s | search p50 ms | search p99 ms |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: |")
    for name, python in pythons.items():
        result = run(python, sizes)
        for r in result["results"]:
            if "error" in r:
                print(f"| {name} | {result['milvus_lite']} | {r['n']:,} | {r['index']} | n/a | {r['error'][:60]} | |")
            else:
                print(
                    f"| {name} | {result['milvus_lite']} | {r['n']:,} | {r['index']} | {r['insert_s']} "
                    f"| {r['p50_ms']} | {r['p99_ms']} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
