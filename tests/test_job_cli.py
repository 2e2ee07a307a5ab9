"""The job CLIs' common parts: arguments refused before anything runs, and every command set up as a task is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize(
    "argv",
    [
        ["jobs.pipeline", "run", "--epochs", "0"],
        ["jobs.pipeline", "run", "--user-shards", "-2"],
        ["jobs.pipeline", "begin", "--video-shards", "0"],
        ["jobs.pipeline", "stage", "publish", "--shard", "-1"],
        ["jobs.publish", "--snapshot", "s20260101T000000Z-abcd1234", "--abandoned-after-hours", "0"],
        ["jobs.publish", "--list", "--abandoned-after-hours", "nan"],
    ],
)
def test_a_bad_argument_is_refused_before_anything_is_written(tmp_path: Path, argv: list[str]) -> None:
    """``run --epochs 0`` used to be refused by the training stage, after the inbox's ingest had committed a
    lake version and marked the inbox consumed; ``publish --abandoned-after-hours 0`` removed a snapshot begun a
    second before, under the build writing it."""
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "REC_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "must be" in done.stderr, done.stderr
    assert not data.exists()


def test_run_sets_up_logging_and_torch_threads_as_a_stage_does(tmp_path: Path) -> None:
    """``run`` loaded its settings bare: REC_TORCH_THREADS and REC_LOG_LEVEL were ignored, so a whole pipeline ran
    on every core and printed no progress. The stages are stubbed: what is checked is the process they run in."""
    stub = (
        "import logging, sys, torch, jobs.pipeline as p\n"
        "def run_all(settings, **params):\n"
        "    logging.getLogger('rec_core.stages').debug('stage progress, threads=%d', torch.get_num_threads())\n"
        "    return 's20260101T000000Z-abcd1234'\n"
        "p.run_all = run_all\n"
        "import numba\n"  # imported before the cap, as a test process or a warmed-up job has it
        "sys.exit(p.main(['run', '--epochs', '1']))\n"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "REC_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-c", stub],
        cwd=ROOT,
        env={**env, "REC_TORCH_THREADS": "1", "REC_LOG_LEVEL": "DEBUG"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "stage progress, threads=1" in done.stderr, done.stderr
    assert '"published"' in done.stdout


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["jobs.pipeline", "--data-dir", "{data}", "stage", "rebuild_warehouse"], "error: no lake at"),
        (["jobs.publish", "--data-dir", "{data}", "--rollback"], "error: nothing has been published under"),
    ],
)
def test_a_command_on_a_mistyped_root_says_so_and_creates_nothing(tmp_path: Path, argv: list[str], says: str) -> None:
    """The stage was a raw LakeError traceback, after creating the warehouse's lock under the mistyped root; the
    rollback made snapshots/.lock there before saying there was nothing to roll back."""
    data = tmp_path / "typo"
    data.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", *(a.format(data=data) for a in argv)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.startswith(says), done.stderr
    assert "Traceback" not in done.stderr and list(data.iterdir()) == []


@pytest.mark.parametrize("key_file", ["missing", "empty"])
def test_the_simulator_says_when_its_key_file_cannot_be_used(tmp_path: Path, key_file: str) -> None:
    """A missing key file was a traceback and exit 1, which the simulator documents as "a request failed"."""
    path = tmp_path / key_file
    if key_file == "empty":
        path.write_text("\n")
    done = subprocess.run(
        [sys.executable, "-m", "jobs.simulate_traffic", "--api-key-file", str(path)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "REC_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "--api-key-file" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_build_features_names_a_text_model_it_cannot_load(tmp_path: Path) -> None:
    """REC_TEXT_MODEL is checked when the encoder loads: build_features showed the SettingsError as a traceback."""
    from rec_core.settings import Settings
    from rec_core.synthetic.commit import generate_data

    data = tmp_path / "data"
    generate_data(Settings.load({}).override(data_dir=data), "tiny", seed=5)
    done = subprocess.run(
        [sys.executable, "-m", "jobs.build_features", "--data-dir", str(data)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "REC_TEXT_MODEL": "no-such-model"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "error: REC_TEXT_MODEL:" in done.stderr and "Traceback" not in done.stderr, (
        done.stderr
    )
