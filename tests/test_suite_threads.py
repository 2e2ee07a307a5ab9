"""`make test`'s workers share the machine's cores (tests/conftest.py): torch in each one runs on its share, which
holds only while no module imports torch before the conftest sets the thread count."""

from __future__ import annotations

import os

import pytest


def test_an_xdist_worker_runs_torch_on_its_share_of_the_cores() -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("one process (TEST_WORKERS=0) keeps every core")
    import torch

    # Set by the conftest (cores / workers), or by the developer, whose own setting wins.
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])
