"""How a batch process starts: its settings from the environment, torch's threads capped for the machine it
shares (a CLI job, an Airflow task)."""

from __future__ import annotations

import os
import sys

from rec_core.settings import ModelSettings, Settings


def apply_torch_threads(model: ModelSettings) -> None:
    """Cap torch's intra-op threads at ``REC_TORCH_THREADS`` (0 leaves torch's default, one per core).

    Several Airflow workers on one machine each run a job process; uncapped, each would start a
    thread per core and they would oversubscribe the CPUs. Call it where a job starts, before the
    heavy work: torch reads ``OMP_NUM_THREADS`` when it is imported, and an already imported torch
    is set directly.
    """
    threads = model.torch_threads
    if threads <= 0:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def job_settings() -> Settings:
    """The settings a batch process runs with: ``REC_*`` from its environment, torch threads capped."""
    settings = Settings.load()
    apply_torch_threads(settings.model)
    return settings
