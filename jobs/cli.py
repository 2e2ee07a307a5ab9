"""What every ``python -m jobs.<stage>`` command shares: settings with ``--data-dir`` on top, logging."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from rec_core.progress import setup_logging
from rec_core.settings import Settings, SettingsError


def settings_for(args: argparse.Namespace, *, logging: bool = True) -> Settings:
    """Settings from ``REC_*`` (and ``--data-dir`` when given); a bad setting exits with status 2 and names it."""
    try:
        settings = Settings.load()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if getattr(args, "data_dir", None) is not None:
        settings = dataclasses.replace(settings, data_dir=args.data_dir)
    if logging:
        setup_logging(settings.log_level)
    apply_torch_threads(settings)
    return settings


def apply_torch_threads(settings: Settings) -> None:
    """Cap torch's intra-op threads at ``REC_TORCH_THREADS`` (0 leaves torch's default, one per core).

    Several Airflow workers on one machine each run a job process; uncapped, each would start a
    thread per core and they would oversubscribe the CPUs. Call it where a job starts, before the
    heavy work: torch reads ``OMP_NUM_THREADS`` when it is imported, and an already imported torch
    is set directly.
    """
    threads = settings.torch_threads
    if threads <= 0:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
