"""An experiment's report: per arm, the online rates, each arm's difference from the first arm with a 95%
interval, and how many users stand behind each figure; Markdown and a picture.

It reads the warehouse's ``impression_outcomes`` (:mod:`rec_core.data.warehouse`, rebuilt first), so the rates
mean what the online views mean: over the items a user viewed (an event of theirs named the page), a session
being a walk from the top of the feed (cut too at a 30-minute gap). Each rate is a ratio of sums over the arm's
users (likes over views, ...), and its interval comes from redrawing users with replacement in each arm
independently (1,000 redraws, seeded, over users in a fixed order, so a rerun gives the same figures): users
are the unit that was randomized, and one user's views are not independent of each other. A user seen in two
arms (the experiment's shares changed under them) is left out, and counted.

A verdict (higher, lower, within noise) is for the whole report at once: each difference has a two-sided
bootstrap p, and Holm's step-down over all of them keeps the chance of any false verdict at 5%. Six metrics
each read off its own 95% interval would call one of them different in about a quarter of A/A experiments
(``interval_excludes_zero`` still says what each interval alone shows).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from rec_core.atomic import write_bytes_atomic
from rec_core.data.warehouse import build_warehouse
from rec_core.eval.intervals import LEVEL, RESAMPLES
from rec_core.eval.plots import figure_png, plt
from rec_core.experiments.registry import read_experiments
from rec_core.experiments.spec import ExperimentError
from rec_core.settings import Settings

# name -> (numerator column, denominator column) of the per-user sums below
METRICS: dict[str, tuple[str, str]] = {
    "watch_through_80": ("through", "viewed"),
    "like_rate": ("liked", "viewed"),
    "share_rate": ("shared", "viewed"),
    "skip_rate": ("skipped", "viewed"),
    "mean_completion": ("completion", "viewed"),
    "videos_per_session": ("viewed", "sessions"),
}
PER_USER = """
    SELECT arm, user_id,
           count(*) FILTER (WHERE viewed) AS viewed,
           count(*) FILTER (WHERE viewed AND completion >= 0.8) AS through,
           count(*) FILTER (WHERE liked) AS liked,
           count(*) FILTER (WHERE shared) AS shared,
           count(*) FILTER (WHERE skipped) AS skipped,
           coalesce(sum(completion) FILTER (WHERE viewed), 0) AS completion,
           count(DISTINCT session) AS sessions
    FROM impression_outcomes WHERE experiment = ? GROUP BY arm, user_id
    ORDER BY arm, user_id"""


@dataclass(frozen=True, slots=True)
class ArmFigure:
    value: float
    low: float
    high: float


def report(settings: Settings, name: str, out_dir: Path | None = None, seed: int = 0) -> dict:
    """Write ``report.md``, ``report.png`` and ``report.json`` for experiment ``name``; return the JSON."""
    experiment = next((e for e in read_experiments(settings.paths.experiments_file) if e.name == name), None)
    if experiment is None:
        raise ExperimentError("name", f"no experiment named {name!r}")
    con = duckdb.connect(str(build_warehouse(settings.paths, settings.batch)), read_only=True)
    try:
        rows = con.execute(PER_USER, [name]).fetchnumpy()
    finally:
        con.close()
    arms_of_user: dict[str, set[str]] = {}
    for arm, user in zip(rows["arm"].tolist(), rows["user_id"].tolist(), strict=True):
        arms_of_user.setdefault(user, set()).add(arm)
    switched = {u for u, arms in arms_of_user.items() if len(arms) > 1}
    keep = np.array([u not in switched for u in rows["user_id"].tolist()], dtype=bool)
    arm_names = [a.name for a in experiment.arms]
    sums = {k: np.asarray(v, dtype=np.float64) for k, v in rows.items() if k not in ("arm", "user_id")}
    arm_of_row = np.asarray(rows["arm"], dtype=object)
    per_arm = {a: {k: v[keep & (arm_of_row == a)] for k, v in sums.items()} for a in arm_names}
    rng = np.random.default_rng(seed)
    redrawn = {a: _redraw(per_arm[a], rng) for a in arm_names}
    result: dict = {
        "experiment": name,
        "arms": [{"name": a.name, "variant": a.variant, "share": a.share} for a in experiment.arms],
        "started_at": experiment.started_at,
        "stopped_at": experiment.stopped_at,
        "users": {a: len(per_arm[a]["viewed"]) for a in arm_names},
        "users_in_two_arms": len(switched),
        "views": {a: int(per_arm[a]["viewed"].sum()) for a in arm_names},
        "metrics": {},
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    control = arm_names[0]
    tail = (1 - LEVEL) / 2 * 100
    for metric, (num, den) in METRICS.items():
        entry: dict = {}
        for a in arm_names:
            value = _ratio(per_arm[a][num].sum(), per_arm[a][den].sum())
            low, high = _percentiles(redrawn[a][metric], tail)
            entry[a] = {"value": value, "low": low, "high": high}
            if a != control:
                diff = redrawn[a][metric] - redrawn[control][metric]
                d_low, d_high = _percentiles(diff, tail)
                point = value - entry[control]["value"]
                entry[a]["difference"] = {
                    "value": point,
                    "low": d_low,
                    "high": d_high,
                    "p": _two_sided_p(diff),
                    "interval_excludes_zero": bool(d_low > 0 or d_high < 0),
                }
        result["metrics"][metric] = entry
    _holm_verdicts([entry[a]["difference"] for entry in result["metrics"].values() for a in arm_names[1:]])
    out = out_dir or settings.paths.reports_dir / "experiments" / name
    out.mkdir(parents=True, exist_ok=True)
    # JSON has no NaN (Python writes a bare NaN token that strict parsers refuse): a figure with no data is null.
    write_bytes_atomic(out / "report.json", json.dumps(_nulls_for_nan(result), indent=2, allow_nan=False).encode())
    write_bytes_atomic(out / "report.md", markdown(result).encode())
    write_bytes_atomic(out / "report.png", _picture(result))
    return {**result, "path": str(out / "report.md")}


def _redraw(sums: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each metric's ratio of sums over ``RESAMPLES`` redraws of the arm's users."""
    n = len(sums["viewed"])
    if n == 0:
        return {m: np.full(RESAMPLES, np.nan) for m in METRICS}
    columns = sorted({name for pair in METRICS.values() for name in pair})
    per_user = np.column_stack([sums[c] for c in columns])
    totals = np.empty((RESAMPLES, len(columns)))
    # One redraw at a time: memory grows with the users, not users x redraws (800 MB at 100,000 users).
    for i in range(RESAMPLES):
        totals[i] = np.bincount(rng.integers(0, n, n), minlength=n) @ per_user
    total = dict(zip(columns, totals.T, strict=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {m: total[num] / total[den] for m, (num, den) in METRICS.items()}


def _two_sided_p(diff: np.ndarray) -> float:
    """The bootstrap's two-sided p-value of "no difference": twice the share of redraws on the far side of 0."""
    finite = diff[np.isfinite(diff)]
    if not len(finite):
        return float("nan")
    return float(min(1.0, 2 * min((finite <= 0).mean(), (finite >= 0).mean())))


def _holm_verdicts(differences: list[dict]) -> None:
    """Set each difference's verdict so that the whole report, every metric of every arm, is wrong with at most
    5% probability (Holm's step-down over the bootstrap p-values): six metrics each tested at 5% would call one
    of them different in about a quarter of A/A experiments."""
    alpha, m = 1 - LEVEL, len(differences)
    order = sorted(range(m), key=lambda i: (np.nan_to_num(differences[i]["p"], nan=1.0), i))
    still = True
    for rank, i in enumerate(order):
        d = differences[i]
        still = still and bool(np.isfinite(d["p"])) and d["p"] <= alpha / (m - rank)
        if not np.isfinite(d["value"]):  # an arm with no view: nothing was measured, not "no difference"
            d["verdict"] = "no data"
            continue
        d["verdict"] = ("higher" if d["value"] > 0 else "lower") if still else "within noise"


def _nulls_for_nan(value: object) -> object:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nulls_for_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nulls_for_nan(v) for v in value]
    return value


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def _percentiles(values: np.ndarray, tail: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def markdown(result: dict) -> str:
    arms = [a["name"] for a in result["arms"]]
    control = arms[0]
    lines = [
        f"# Experiment `{result['experiment']}`",
        "",
        "Arms: "
        + ", ".join(f"`{a['name']}` ({a['variant']}, {a['share']:.0%} of users)" for a in result["arms"])
        + f"; started {result['started_at']}"
        + (f", stopped {result['stopped_at']}" if result["stopped_at"] else ""),
        "",
        "Users (views): "
        + ", ".join(f"`{a}` {result['users'][a]:,} ({result['views'][a]:,})" for a in arms)
        + f"; {result['users_in_two_arms']} user(s) seen in two arms left out.",
        "",
        f"Rates over the items viewed; 95% intervals by redrawing users (1,000 redraws); differences against "
        f"`{control}`, with the redraws' two-sided p. A verdict other than *within noise* holds for the whole "
        f"table at once (Holm over its {len(METRICS) * (len(arms) - 1)} differences, 5% in all), so a 95% interval "
        "that only just leaves zero may still read *within noise*.",
        "",
        "| " + " | ".join(["metric", *(f"`{a}`" for a in arms), *(f"`{a}` - `{control}`" for a in arms[1:])]) + " |",
        "| --- " * (1 + len(arms) + len(arms) - 1) + "|",
    ]
    for metric, entry in result["metrics"].items():
        cells = [f"{entry[a]['value']:.4f} [{entry[a]['low']:.4f}, {entry[a]['high']:.4f}]" for a in arms]
        diffs = [
            f"{d['value']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] {_p_text(d['p'])} {d['verdict']}"
            for a in arms[1:]
            for d in [entry[a]["difference"]]
        ]
        lines.append(f"| {metric} | " + " | ".join(cells + diffs) + " |")
    lines += ["", "![differences](report.png)", ""]
    return "\n".join(lines)


def _p_text(p: float) -> str:
    # No redraw on the far side of zero: the p is below what the redraws can resolve, not zero.
    return f"p<{1 / RESAMPLES:g}" if p == 0 else f"p={p:.3f}"


def _picture(result: dict) -> bytes:
    arms = [a["name"] for a in result["arms"]]
    metrics = list(result["metrics"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6))
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        entry = result["metrics"][metric]
        values = [entry[a]["value"] for a in arms]
        errors = [
            [v - entry[a]["low"] for a, v in zip(arms, values, strict=True)],
            [entry[a]["high"] - v for a, v in zip(arms, values, strict=True)],
        ]
        ax.bar(arms, values, yerr=np.nan_to_num(errors), capsize=4, color=[f"C{i}" for i in range(len(arms))])
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"experiment {result['experiment']}: per arm, 95% intervals over users")
    return figure_png(fig)
