"""The build's model version inside its snapshot, so serving reads neither the models folder nor the lake.

The API runs the towers online (a fresh user's vector, a posted video's vector) and the ranking stage runs the
towers' engagement head; both come from the model version the build names. :func:`copy_model` copies the files
:meth:`rec_core.model.store.ModelStore.load` reads into ``model/<version>/`` when the snapshot begins (the ranker's
files go to ``rank/``, with the state its features read); :func:`load_snapshot_model` loads that copy, or the
models folder for a snapshot begun before copies existed.
"""

from __future__ import annotations

from pathlib import Path

from rec_core.atomic import write_bytes_atomic
from rec_core.model.inference import load_build_model
from rec_core.model.store import LoadedModel
from rec_core.model.vocabs import MAPPED_FILES, Vocabs
from rec_core.settings import PathSettings
from rec_core.snapshot.layout import BuildInfo, SnapshotError, SnapshotPaths

# What ModelStore.load reads: the towers and engagement head, config, feature scales, vocabularies, metrics.
MODEL_SUFFIXES = (".safetensors", ".parquet")
MODEL_JSON = ("config.json", "feature_stats.json", "metrics.json")


def model_file_names(version_dir: Path) -> list[str]:
    """The files of a model version that serving loads, sorted (not its plots, nor the ranker's files), and the
    mapped vocabularies :func:`copy_model` writes beside them."""
    names = sorted(
        p.name for p in version_dir.iterdir() if p.is_file() and (p.suffix in MODEL_SUFFIXES or p.name in MODEL_JSON)
    )
    if "weights.safetensors" not in names or "config.json" not in names:
        raise SnapshotError(f"model version {version_dir.name} under {version_dir.parent} is incomplete: {names}")
    return sorted(names + list(MAPPED_FILES))


def copy_model(version_dir: Path, paths: SnapshotPaths, names: list[str]) -> None:
    """Copy ``names`` from the model version; its vocabularies' mapped files are written from its Parquet ones."""
    target = paths.model_dir / version_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name not in MAPPED_FILES:
            write_bytes_atomic(target / name, (version_dir / name).read_bytes())
    if any(name in MAPPED_FILES for name in names):
        for name, data in Vocabs.load(version_dir).mapped_files().items():
            write_bytes_atomic(target / name, data)


def load_snapshot_model(path_settings: PathSettings, paths: SnapshotPaths, build: BuildInfo) -> LoadedModel:
    """The build's model from the snapshot's copy (the models folder for an older snapshot), checked against the
    build's embedding size."""
    return load_build_model(path_settings, build, paths.model_dir if build.model_files else None)
