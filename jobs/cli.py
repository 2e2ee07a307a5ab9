"""What every ``python -m jobs.<stage>`` command shares: settings with ``--data-dir`` on top, logging."""

from __future__ import annotations

import argparse
import dataclasses
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
    return settings
