"""The quality gate's rules (point estimates and paired intervals) and the fixed test-user sample it is judged on.

Pure logic: the release tests (test_training, test_ranker_release, test_dags) run the gate on real evaluations.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rec_core.data.split import temporal_split
from rec_core.eval.ranking_metrics import UserMetrics
from rec_core.eval.user_sample import sample_order, with_test_sample
from rec_core.model.gate import Evidence, gate, gate_evidence

POP = {"recall@50": 0.10}


def _users(values: np.ndarray) -> UserMetrics:
    values = np.asarray(values, dtype=np.float64)
    return UserMetrics(np.arange(len(values)), (50,), {"recall@50": values}, {"coverage@50": 0.0})


def _evidence(candidate: np.ndarray, most_pop: np.ndarray, current: np.ndarray | None = None) -> Evidence:
    return gate_evidence(_users(candidate), _users(most_pop), _users(current) if current is not None else None)


def test_point_rules() -> None:
    assert gate({"recall@50": 0.20}, POP, None).promote
    assert not gate({"recall@50": 0.105}, POP, None).promote  # not a clear margin over MostPop
    assert gate({"recall@50": 0.20}, POP, {"recall@50": 0.205}).promote  # within tolerance of current
    refused = gate({"recall@50": 0.20}, POP, {"recall@50": 0.30})
    assert not refused.promote and "current model" in refused.reasons[0]
    assert "point estimates only" in gate({"recall@50": 0.20}, POP, None).reasons[-1]


def test_a_margin_over_most_pop_that_is_only_noise_is_refused() -> None:
    rng = np.random.default_rng(0)
    # Ten users: the candidate's mean is 1.5x MostPop's, but it wins on two users and loses on most.
    pop = np.full(10, 0.10)
    ours = np.array([0.9, 0.6, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0]) + rng.uniform(0, 0.001, 10)
    evidence = _evidence(ours, pop)
    assert ours.mean() >= 1.1 * pop.mean() and evidence.vs_most_pop.interval.low <= 0
    decision = gate({"recall@50": float(ours.mean())}, {"recall@50": float(pop.mean())}, None, evidence=evidence)
    assert not decision.promote and "beyond noise" in decision.reasons[0]
    # The same margin on every one of many users is no noise.
    many = _evidence(np.full(500, 0.15), np.full(500, 0.10))
    assert many.vs_most_pop.verdict == "better"
    passed = gate({"recall@50": 0.15}, {"recall@50": 0.10}, None, evidence=many)
    assert passed.promote and "95% interval" in passed.reasons[1] and "500 users" in passed.reasons[1]


def test_a_candidate_worse_than_the_current_model_beyond_noise_is_refused_even_within_tolerance() -> None:
    n = 2000
    rng = np.random.default_rng(1)
    current = rng.uniform(0.2, 0.4, n)
    ours = current - 0.01  # 3% below on average: inside the 5% tolerance, but on every user
    evidence = _evidence(ours, np.full(n, 0.1), current)
    assert evidence.vs_current is not None and evidence.vs_current.verdict == "worse"
    figures = {"recall@50": float(ours.mean())}, {"recall@50": 0.1}, {"recall@50": float(current.mean())}
    assert gate(*figures).promote  # the point rule alone lets it through
    decision = gate(*figures, evidence=evidence)
    assert not decision.promote and decision.reasons == [decision.reasons[0]]
    assert decision.reasons[0].startswith("worse than the current model beyond noise")
    # A candidate that differs from the current model by noise only is promoted.
    noisy = current + rng.normal(0, 0.05, n)
    level = _evidence(noisy, np.full(n, 0.1), current)
    assert level.vs_current is not None and level.vs_current.verdict == "within noise"
    assert gate({"recall@50": float(noisy.mean())}, figures[1], figures[2], evidence=level).promote


def test_evidence_round_trips_and_must_match_the_figures() -> None:
    evidence = _evidence(np.linspace(0, 1, 50), np.linspace(0, 0.5, 50), np.linspace(0, 0.9, 50))
    assert Evidence.from_dict(evidence.to_dict()) == evidence
    with pytest.raises(ValueError, match="current model"):
        gate({"recall@50": 0.5}, {"recall@50": 0.25}, None, evidence=evidence)
    with pytest.raises(ValueError, match="same users"):
        gate_evidence(_users(np.ones(3)), UserMetrics(np.arange(1, 4), (50,), {"recall@50": np.ones(3)}, {}), None)


def _split(n_users: int) -> object:
    rng = np.random.default_rng(3)
    rows = 40 * n_users
    interactions = pl.DataFrame(
        {
            "user_id": [f"u{i:05d}" for i in rng.integers(0, n_users, rows)],
            "video_id": [f"v{i:03d}" for i in rng.integers(0, 200, rows)],
            "ts": np.sort(rng.integers(1_700_000_000_000, 1_700_100_000_000, rows)),
        }
    )
    videos = pl.DataFrame({"video_id": [f"v{i:03d}" for i in range(200)]})
    return temporal_split(interactions, videos)


def test_the_test_sample_is_fixed_by_id_and_keeps_train_and_validation() -> None:
    split = _split(400)
    tested = np.unique(split.test.user_idx)
    assert len(tested) > 100
    sampled = with_test_sample(split, 100)
    kept = np.unique(sampled.test.user_idx)
    assert len(kept) == 100
    # Every test row of a sampled user stays, none of anyone else's; training and validation are untouched.
    assert np.isin(split.test.user_idx, kept).sum() == len(sampled.test)
    assert sampled.train is split.train and sampled.valid is split.valid
    # The sample is the lowest id hashes: the same for another call, and a prefix of the sample order.
    assert np.array_equal(np.unique(with_test_sample(split, 100).test.user_idx), kept)
    order = tested[sample_order(split.user_ids[tested])]
    assert set(order[:100].tolist()) == set(kept.tolist())
    # A larger sample holds the smaller one (a user keeps their hash as the lake grows).
    assert set(kept.tolist()) <= set(np.unique(with_test_sample(split, 200).test.user_idx).tolist())
    assert with_test_sample(split, 0) is split and with_test_sample(split, len(tested)) is split
    with pytest.raises(ValueError):
        with_test_sample(split, -1)
