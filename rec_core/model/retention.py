"""Which model versions a release keeps, so that the model store does not grow by one version a day forever.

A version is still needed while anything may load it: the current pointer (serving's next snapshot, the gate's
comparison, a warm start), a snapshot under the data root (live, kept for rollback, or being built: an older
snapshot reads its model from the store, a new one carries a copy, and a build reads the store until its copy is
written), and a running experiment's arm (the next snapshot carries its space). Besides those, the newest
``REC_MODEL_VERSIONS_KEEP`` stay, promoted or refused, for a manual rollback (``jobs.models promote``) and for
comparing releases.
"""

from __future__ import annotations

import logging
import shutil

from rec_core.data.lake import snapshot_builds
from rec_core.experiments.registry import running
from rec_core.experiments.spec import model_versions
from rec_core.model.store import model_store
from rec_core.settings import PathSettings, Settings

log = logging.getLogger(__name__)


def versions_in_use(paths: PathSettings) -> set[str]:
    """Every model version a snapshot under the data root was built with or carries for an experiment arm, and every
    version a running experiment names. An unreadable build.json raises (:func:`snapshot_builds`): pruning must
    not guess what is in use."""
    pinned: set[str] = set()
    for build in snapshot_builds(paths):
        pinned.add(str(build["model_version"]))
        pinned.update(build.get("versions") or {})
    for experiment in running(paths.experiments_file):
        pinned.update(model_versions(experiment.arms))
    return pinned


def prune_versions(settings: Settings) -> list[str]:
    """Delete the model versions nothing needs any more (the module doc); their names, oldest first."""
    store = model_store(settings.paths)
    doomed = store.prune(settings.batch.model_versions_keep, versions_in_use(settings.paths))
    for version in doomed:  # `jobs.evaluate`'s report of a version goes with it
        shutil.rmtree(settings.paths.reports_dir / version, ignore_errors=True)
    if doomed:
        log.info(
            "pruned %d model version(s) (REC_MODEL_VERSIONS_KEEP=%d): %s",
            len(doomed),
            settings.batch.model_versions_keep,
            ", ".join(doomed),
        )
    return doomed
