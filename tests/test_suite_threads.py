"""`make test`'s workers share the machine's cores (tests/conftest.py): torch in each one runs on its share, which
holds only while no module imports torch or numba before the conftest sets the thread counts."""

from __future__ import annotations

import os

import numpy as np
import pytest


def test_an_xdist_worker_runs_torch_on_its_share_of_the_cores() -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("one process (TEST_WORKERS=0) keeps every core")
    import torch
    from numba import njit, prange

    @njit(parallel=True)
    def total(values: np.ndarray) -> float:
        out = 0.0
        for i in prange(len(values)):
            out += values[i]
        return out

    # Set by the conftest (cores / workers), or by the developer, whose own setting wins.
    share = int(os.environ["OMP_NUM_THREADS"])
    assert torch.get_num_threads() == share
    # numba's parallel kernels share OpenMP with torch: a launch sets torch's count to numba's, once torch has started.
    assert total(np.ones(1000)) == 1000.0
    assert torch.get_num_threads() == share
