"""How a batch process starts: its settings from the environment, torch's threads capped for the machine it
shares (a CLI job, an Airflow task)."""

from __future__ import annotations

import os
import sys

from rec_core.settings import ModelSettings, Settings

# What torch (and through it ONNX Runtime's sessions), MKL and numba read for their pools' sizes when imported.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def apply_torch_threads(model: ModelSettings) -> None:
    """Cap the threads of torch's intra-op pool and of numba's parallel kernels at ``REC_TORCH_THREADS`` (0 leaves
    both at their default, one per core).

    Several Airflow workers on one machine each run a job process; uncapped, each would start a
    thread per core and they would oversubscribe the CPUs. numba is capped with torch because the two share
    OpenMP: each launch of a parallel numba kernel (top-k, the lazy Adam step) sets torch's pool to numba's
    size, so a cap on torch alone held only until the first one. Call it where a job starts, before the
    heavy work: torch and numba read their variables when imported, and already imported ones are set
    directly (numba's per calling thread, and at most its pool's size).
    """
    threads = model.torch_threads
    if threads <= 0:
        return
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    # numba first: its first set_num_threads starts its OpenMP pool at full size, which resized torch's too (torch
    # read 2 threads after a cap of 1 when numba was already imported, as in a test process).
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def thread_budget(model: ModelSettings) -> int:
    """The threads a job may keep busy, for work that is parallel by other means than torch's pool (the ranker's
    cross-validation folds): ``REC_TORCH_THREADS``; else ``OMP_NUM_THREADS`` where whoever started the process
    capped OpenMP (LightGBM's pool too) that way, as `make test` caps each worker; else one per core it may run on."""
    if model.torch_threads > 0:
        return model.torch_threads
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def job_settings() -> Settings:
    """The settings a batch process runs with: ``REC_*`` from its environment, torch threads capped."""
    settings = Settings.load()
    apply_torch_threads(settings.model)
    return settings
