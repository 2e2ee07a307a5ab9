"""The quality gate: may a model version's stack become the current model?

Every figure comes from the release's evaluation on one test sample (``REC_GATE_USERS`` users,
:mod:`rec_core.eval.user_sample`), the same users for the candidate, MostPop and the current model, so each
comparison is paired: the difference is taken per user and the users are redrawn together
(:mod:`rec_core.eval.intervals`). The candidate is promoted only if, on ``recall@50``:

1. it is at least 1.1x MostPop's (point estimates: a clear margin, not only a win);
2. it beats MostPop beyond noise: the 95% interval of the per-user difference lies above zero;
3. with a current model, it is not more than 5% below it (point estimates) and not worse beyond noise (the
   interval of the difference does not lie wholly below zero).

An evaluation written before the intervals existed has no :class:`Evidence`; its version is gated on the point
estimates alone, and the reasons say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from rec_core.eval.intervals import Difference, Interval, paired_difference
from rec_core.eval.ranking_metrics import UserMetrics

GATE_METRIC = "recall@50"
MIN_LIFT_OVER_MOST_POP = 1.1
MAX_DROP_VS_CURRENT = 0.05


@dataclass(frozen=True, slots=True)
class GateDecision:
    promote: bool
    reasons: list[str]


@dataclass(frozen=True, slots=True)
class Evidence:
    """The candidate's paired differences with MostPop and the current model, per user of the test sample."""

    metric: str
    users: int
    vs_most_pop: Difference
    vs_current: Difference | None

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "users": self.users,
            "vs_most_pop": _difference_dict(self.vs_most_pop),
            "vs_current": _difference_dict(self.vs_current) if self.vs_current is not None else None,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> Evidence:
        current = raw.get("vs_current")
        return cls(
            raw["metric"],
            int(raw["users"]),
            _difference(raw["vs_most_pop"]),
            _difference(current) if current is not None else None,
        )


def gate_evidence(
    candidate: UserMetrics, most_pop: UserMetrics, current: UserMetrics | None, metric: str = GATE_METRIC
) -> Evidence:
    """The intervals the gate reads, from three evaluations of the same test users."""
    return Evidence(
        metric,
        len(candidate.users),
        paired_difference(candidate, most_pop, metric),
        paired_difference(candidate, current, metric) if current is not None else None,
    )


def gate(
    candidate: dict[str, float],
    most_pop: dict[str, float],
    current: dict[str, float] | None,
    *,
    evidence: Evidence | None = None,
    metric: str = GATE_METRIC,
    min_lift_over_most_pop: float = MIN_LIFT_OVER_MOST_POP,
    max_drop_vs_current: float = MAX_DROP_VS_CURRENT,
) -> GateDecision:
    """May ``candidate`` become the current model? Its, MostPop's and the current model's figures on the same
    test users, and the paired intervals between them (see the module docstring)."""
    if evidence is not None and evidence.metric != metric:
        raise ValueError(f"the evidence is on {evidence.metric}, the gate compares {metric}")
    if evidence is not None and (current is None) != (evidence.vs_current is None):
        raise ValueError("the evidence and the figures disagree on whether there is a current model")
    failures: list[str] = []
    ours, pop = candidate[metric], most_pop[metric]
    if ours < pop * min_lift_over_most_pop:
        failures.append(f"{metric} {ours:.4f} is not {min_lift_over_most_pop:.2f}x MostPop's {pop:.4f}")
    if evidence is not None and evidence.vs_most_pop.interval.low <= 0:
        failures.append(f"not above MostPop beyond noise: {_said(evidence.vs_most_pop, evidence.users)}")
    if current is not None:
        if ours < current[metric] * (1 - max_drop_vs_current):
            failures.append(
                f"{metric} {ours:.4f} is more than {max_drop_vs_current:.0%} below the current model's "
                f"{current[metric]:.4f}"
            )
        if evidence is not None and evidence.vs_current is not None and evidence.vs_current.verdict == "worse":
            failures.append(f"worse than the current model beyond noise: {_said(evidence.vs_current, evidence.users)}")
    if failures:
        return GateDecision(promote=False, reasons=failures)
    vs = f"current model {current[metric]:.4f}" if current is not None else "no current model"
    reasons = [f"{metric} {ours:.4f} vs MostPop {pop:.4f}, {vs}"]
    if evidence is None:
        reasons.append("no per-user evidence in this evaluation: point estimates only")
    else:
        reasons.append(f"vs MostPop {_said(evidence.vs_most_pop, evidence.users)}")
        if evidence.vs_current is not None:
            reasons.append(f"vs the current model {_said(evidence.vs_current, evidence.users)}")
    return GateDecision(promote=True, reasons=reasons)


def _said(difference: Difference, users: int) -> str:
    i = difference.interval
    return f"difference {i.estimate:+.4f}, 95% interval [{i.low:+.4f}, {i.high:+.4f}] over {users} users"


def _difference_dict(difference: Difference) -> dict:
    i = difference.interval
    return {"estimate": i.estimate, "low": i.low, "high": i.high, "verdict": difference.verdict}


def _difference(raw: dict) -> Difference:
    return Difference(Interval(float(raw["estimate"]), float(raw["low"]), float(raw["high"])), raw["verdict"])
