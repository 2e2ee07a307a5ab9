"""Paths from a DAG param, confined to the import folder, so whoever can trigger a run reads only files there.

Run by hand, ``jobs.import_dataset`` reads any path it is given: whoever has a shell on the worker can
read those files anyway. The ``import_dataset`` DAG is different: its params come from anyone allowed to
trigger a run, so it passes every path through :func:`resolve_import_path`, which confines it to
``PathSettings.import_root`` (``REC_IMPORT_DIR``, default ``<data root>/import``).
"""

from __future__ import annotations

import os
from pathlib import Path

from rec_core.data.import_report import InputError
from rec_core.settings import PathSettings


class ImportPathError(InputError):
    """A DAG param names a path that is missing, not a file, or leads outside the import folder."""


def resolve_import_path(paths: PathSettings, raw: str | os.PathLike[str], param: str) -> Path:
    """The real file a DAG param names, refused unless it lies inside ``paths.import_root``.

    Relative paths are taken from the import folder. Symlinks are followed (``resolve(strict=True)``) and the
    target is what is checked, so a link inside the folder cannot lead out of it. Returns the resolved path,
    which the import then opens, so the file checked is the file read (short of a swap of a folder inside the
    import folder between the check and the read, which needs write access to that folder).
    """
    configured = paths.import_root.absolute()
    try:
        root = configured.resolve(strict=True)
    except OSError:
        raise ImportPathError(
            f"param {param!r}: the import folder {configured} does not exist; create it and put the files "
            "there (or set REC_IMPORT_DIR)"
        ) from None
    candidate = Path(raw)
    candidate = candidate if candidate.is_absolute() else root / candidate
    outside = (
        f"param {param!r}: {str(raw)!r} is outside the import folder {root}; the import DAG reads only files "
        "inside it (REC_IMPORT_DIR): copy the file there, or run `python -m jobs.import_dataset` by hand"
    )
    # A lexical check first, so that a path plainly outside is refused without probing the filesystem there
    # (the error would otherwise tell a DAG user which files exist outside the folder).
    lexical = Path(os.path.normpath(candidate))
    if not (lexical.is_relative_to(root) or lexical.is_relative_to(configured)):
        raise ImportPathError(outside)
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, dangling link, permission denied, or a symlink loop
        raise ImportPathError(
            f"param {param!r}: {str(raw)!r} does not exist in the import folder {root} (or cannot be read)"
        ) from None
    if not resolved.is_relative_to(root):
        raise ImportPathError(outside)
    if not resolved.is_file():
        raise ImportPathError(f"param {param!r}: {str(raw)!r} in the import folder {root} is not a file")
    return resolved
