"""The model store's error, apart from the store: commands that only report it (``jobs.cli``) need not import
torch to catch it."""

from __future__ import annotations


class ModelStoreError(RuntimeError):
    """No such model version, or no current model."""
