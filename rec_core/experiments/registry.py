"""The experiments file: what is running, changed by the CLI or the Airflow DAG, read when a snapshot begins.

``<data root>/experiments.json`` lists every experiment ever started, stopped ones with their stop time (the
report of a stopped experiment still finds its arms). Changes are written whole under a lock (temp file, fsync,
rename), so two operators cannot lose each other's change and a crash leaves the old file or the new one. A
change takes effect at the next snapshot: :func:`rec_core.snapshot.begin.begin` copies the running experiments
into the snapshot's build.json, which the batch materializes from and the API serves from, so a snapshot's feeds
and its API answers always agree on every user's arm.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from rec_core.atomic import exclusive_lock, write_bytes_atomic
from rec_core.experiments.spec import Arm, Experiment, ExperimentError, check_arms, check_name, check_versions


class _File(msgspec.Struct):
    experiments: list[Experiment] = msgspec.field(default_factory=list)


def read_experiments(path: Path) -> list[Experiment]:
    """Every experiment in the file, oldest first (none when there is no file)."""
    if not path.is_file():
        return []
    try:
        return msgspec.json.decode(path.read_bytes(), type=_File).experiments
    except msgspec.DecodeError as exc:
        raise ExperimentError("experiments file", f"{path} is not an experiments file: {exc}") from None


def running(path: Path) -> list[Experiment]:
    return [e for e in read_experiments(path) if e.active]


def start(
    path: Path, name: str, arms: tuple[Arm, ...], versions: Collection[str] = (), now: dt.datetime | None = None
) -> Experiment:
    """Start ``name``; an arm may name a model version of ``versions`` (the model store's)."""
    check_name(name)
    check_arms(arms)
    check_versions(arms, versions)
    with _editing(path) as (experiments, save):
        if any(e.name == name for e in experiments):
            raise ExperimentError("name", f"an experiment named {name!r} exists already; names are never reused")
        if full := [e.name for e in experiments if e.active and _places_everyone(e.arms)]:
            raise ExperimentError(
                "arms",
                f"experiment {full[0]!r} places every user (its shares sum to 1), and a user is in the first-started "
                f"experiment that places them: {name!r} would reach no one; lower {full[0]!r}'s shares or stop it",
            )
        experiment = Experiment(name, arms, started_at=_now(now))
        save([*experiments, experiment])
    return experiment


def change(
    path: Path, name: str, arms: tuple[Arm, ...], versions: Collection[str] = (), now: dt.datetime | None = None
) -> Experiment:
    check_arms(arms)
    check_versions(arms, versions)
    with _editing(path) as (experiments, save):
        i = _running_index(experiments, name)
        _same_arms(experiments[i], arms)
        later = [e.name for e in experiments[i + 1 :] if e.active]
        if later and _places_everyone(arms):
            raise ExperimentError(
                "arms",
                f"shares summing to 1 would place every user in {name!r}, leaving no one to {later[0]!r}, "
                "which started after it",
            )
        experiment = msgspec.structs.replace(experiments[i], arms=arms, changed_at=_now(now))
        save([*experiments[:i], experiment, *experiments[i + 1 :]])
    return experiment


def _places_everyone(arms: tuple[Arm, ...]) -> bool:
    return sum(arm.share for arm in arms) >= 1 - 1e-9


def _same_arms(experiment: Experiment, arms: tuple[Arm, ...]) -> None:
    """A change may move shares only. The report pools an arm's impressions under its name over the whole run:
    an arm whose variant changed put one variant's figures under the other's label, and renamed arms left every
    user "seen in two arms" and the report empty. A new design is a new experiment."""
    before = {arm.name: arm.variant for arm in experiment.arms}
    after = {arm.name: arm.variant for arm in arms}
    if set(after) != set(before):
        raise ExperimentError(
            "arms",
            f"a change keeps the arms {sorted(before)} (got {sorted(after)}) and moves their shares only; "
            "stop this experiment and start another for new arms",
        )
    for arm in arms:
        if arm.variant != before[arm.name]:
            raise ExperimentError(
                "arms",
                f"arm {arm.name!r} serves {before[arm.name]!r}: a change moves shares only, not variants; "
                "stop this experiment and start another",
            )


def stop(path: Path, name: str, now: dt.datetime | None = None) -> Experiment:
    with _editing(path) as (experiments, save):
        i = _running_index(experiments, name)
        experiment = msgspec.structs.replace(experiments[i], stopped_at=_now(now))
        save([*experiments[:i], experiment, *experiments[i + 1 :]])
    return experiment


def _running_index(experiments: list[Experiment], name: str) -> int:
    for i, e in enumerate(experiments):
        if e.name == name and e.active:
            return i
    names = ", ".join(e.name for e in experiments if e.active) or "none"
    raise ExperimentError("name", f"no running experiment named {name!r} (running: {names})")


@contextmanager
def _editing(path: Path) -> Iterator[tuple[list[Experiment], Callable[[list[Experiment]], None]]]:
    with exclusive_lock(path.parent / f".{path.name}.lock"):

        def save(experiments: list[Experiment]) -> None:
            write_bytes_atomic(path, msgspec.json.format(msgspec.json.encode(_File(experiments)), indent=2))

        yield read_experiments(path), save


def _now(now: dt.datetime | None) -> str:
    return (now or dt.datetime.now(dt.UTC)).isoformat(timespec="milliseconds")
