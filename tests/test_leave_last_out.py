"""Leave-last-out split: each user's own last interactions held out, nothing of theirs from later in training."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import polars as pl
import pytest

from benchmarks.quality import (
    RANKED,
    RECENT_AT_CUT,
    RETRIEVAL,
    RankerSetup,
    evaluate_dataset,
    history_segments,
    report_lines,
)
from rec_core.data.split import (
    NEVER_MS,
    InteractionArrays,
    Split,
    leave_last_out_split,
    temporal_split,
    training_view,
    view_before,
)
from rec_core.eval.baselines import MostPop, evaluate_baselines, popularity
from rec_core.eval.evaluation import LakeData, load_lake_data
from rec_core.eval.ranking_metrics import build_targets
from rec_core.model.training import TrainConfig
from rec_core.rank.ranker import RankerConfig
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data

DAY_MS = 86_400_000
N_VIDEOS = 40


def random_world(seed: int = 0, n_users: int = 60, tied: bool = True) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Users with 1..40 interactions; ``tied``: on a coarse clock (whole days), so that many timestamps tie."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 41, size=n_users)
    user = np.repeat([f"u{i:03d}" for i in range(n_users)], counts)
    days = rng.integers(0, 120, size=len(user)) if tied else rng.permutation(len(user))
    interactions = pl.DataFrame(
        {
            "user_id": user,
            "video_id": [f"v{i:02d}" for i in rng.integers(0, N_VIDEOS, size=len(user))],
            "ts": days * DAY_MS,
            "completion": rng.random(len(user)).astype(np.float32),
        }
    )
    videos = pl.DataFrame({"video_id": [f"v{i:02d}" for i in range(N_VIDEOS + 5)]})  # five nobody watched
    return interactions, videos


def rows(split: Split, part: str) -> list[tuple[int, int, int]]:
    arrays = split.part(part)  # type: ignore[arg-type]
    return list(zip(arrays.user_idx.tolist(), arrays.item_idx.tolist(), arrays.ts_ms.tolist(), strict=True))


def test_every_users_test_and_validation_come_after_all_of_their_training() -> None:
    split = leave_last_out_split(*random_world())
    for u in range(split.n_users):
        train = split.train.ts_ms[split.train.user_idx == u]
        valid = split.valid.ts_ms[split.valid.user_idx == u]
        test = split.test.ts_ms[split.test.user_idx == u]
        if len(train) and len(valid):
            assert valid.min() >= train.max()
        if len(train) and len(test):
            assert test.min() >= train.max()
        if len(valid) and len(test):
            assert test.min() >= valid.max()


def test_users_with_enough_interactions_are_all_held_out_and_the_others_stay_in_training() -> None:
    interactions, videos = random_world(tied=False)
    split = leave_last_out_split(interactions, videos, min_interactions=5)
    counts = interactions.group_by("user_id").len()
    enough = set(split.user_positions(counts.filter(pl.col("len") >= 5)["user_id"]).tolist())
    assert 40 < len(enough) < split.n_users  # the world has both kinds
    assert set(split.test.user_idx.tolist()) == enough == set(np.flatnonzero(split.held_out_users).tolist())
    assert set(split.valid.user_idx.tolist()) == enough  # without ties, every held-out user validates too
    # The others are wholly in training.
    few = np.setdiff1d(np.arange(split.n_users), list(enough))
    per_user = np.bincount(split.train.user_idx, minlength=split.n_users)
    assert per_user[few].tolist() == counts.sort("user_id").filter(pl.col("len") < 5)["len"].to_list()
    # With ties the cuts move to whole instants, but a held-out user still has test rows and kept training ones.
    tied = leave_last_out_split(*random_world(), min_interactions=5)
    held = np.flatnonzero(tied.held_out_users)
    assert set(tied.test.user_idx.tolist()) == set(held.tolist()) and tied.user_has_train[held].all()


def test_the_rule_by_hand_and_ties_join_the_later_part() -> None:
    # 20 interactions on days 0..19: the last ceil(2.0) = 2 are test, the 2 before them validation.
    plain = [("a", f"v{i:02d}", i * DAY_MS) for i in range(20)]
    # 10 interactions whose last three share a day: the test cut (day 9) takes all three.
    tied = [("b", f"v{i:02d}", min(i, 7) * DAY_MS) for i in range(10)]
    # 6 interactions all on one day: nothing could be left for training, so nothing is held out.
    one_day = [("c", f"v{i:02d}", 3 * DAY_MS) for i in range(6)]
    # 5 on day 0 and one on day 6: validation (tied with day 0) would leave no training, so d has none.
    crowded = [("d", f"v{i:02d}", (6 if i == 5 else 0) * DAY_MS) for i in range(6)]
    frame = pl.DataFrame(plain + tied + one_day + crowded, schema=["user_id", "video_id", "ts"], orient="row")
    split = leave_last_out_split(frame, pl.DataFrame({"video_id": [f"v{i:02d}" for i in range(20)]}))
    a, b, c, d = split.user_positions(["a", "b", "c", "d"])
    parts = {p: np.bincount(split.part(p).user_idx, minlength=4) for p in ("train", "valid", "test")}
    assert (parts["train"][a], parts["valid"][a], parts["test"][a]) == (16, 2, 2)
    assert split.user_test_start_ms[a] == 18 * DAY_MS and split.user_valid_start_ms[a] == 16 * DAY_MS
    # b: test = ceil(1.0) = 1 row, widened to the three rows of day 7; validation = the row before them (day 6).
    assert (parts["train"][b], parts["valid"][b], parts["test"][b]) == (6, 1, 3)
    assert (parts["train"][c], parts["valid"][c], parts["test"][c]) == (6, 0, 0)
    assert split.user_valid_start_ms[c] == NEVER_MS and not split.held_out_users[c]
    assert (parts["train"][d], parts["valid"][d], parts["test"][d]) == (5, 0, 1) and split.held_out_users[d]
    # The model's knowledge ends just after the latest training interaction (a's day 15, c's day 3: a's).
    assert split.valid_start_ms == split.test_start_ms == 15 * DAY_MS + 1


def test_no_interaction_is_in_two_parts_and_none_is_lost() -> None:
    interactions, videos = random_world(seed=1)
    split = leave_last_out_split(interactions, videos)
    everything = sorted(rows(split, "train") + rows(split, "valid") + rows(split, "test"))
    reference = temporal_split(interactions, videos)  # the same rows under the global clock
    assert everything == sorted(rows(reference, "train") + rows(reference, "valid") + rows(reference, "test"))
    assert len(everything) == interactions.height
    # The parts are told apart by each user's cuts, so a row's part follows from its user and instant alone.
    for part in ("train", "valid", "test"):
        arrays = split.part(part)  # type: ignore[arg-type]
        valid_cut, test_cut = split.user_valid_start_ms[arrays.user_idx], split.user_test_start_ms[arrays.user_idx]
        expected = {
            "train": arrays.ts_ms < valid_cut,
            "valid": arrays.ts_ms >= valid_cut,
            "test": arrays.ts_ms >= test_cut,
        }
        assert expected[part].all()


def test_cold_items_are_those_without_a_training_interaction() -> None:
    interactions, videos = random_world(seed=2)
    split = leave_last_out_split(interactions, videos)
    trained = set(split.train.item_idx.tolist())
    assert split.cold_item_mask.tolist() == [i not in trained for i in range(split.n_items)]
    assert split.cold_item_mask[-5:].all()  # the five videos nobody watched
    held_out_only = set(split.test.item_idx.tolist()) | set(split.valid.item_idx.tolist())
    assert set(split.cold_items.tolist()) == (held_out_only - trained) | set(range(N_VIDEOS, N_VIDEOS + 5))


def test_training_view_is_exactly_the_training_part_and_the_test_cuts_add_the_validation_part() -> None:
    interactions, videos = random_world(seed=3)
    frame = interactions.with_columns(pl.col("ts").alias("ts_ms"))

    def pairs(*parts: InteractionArrays) -> list[tuple[int, int]]:
        return sorted((u, t) for p in parts for u, t in zip(p.user_idx.tolist(), p.ts_ms.tolist(), strict=True))

    for split in (leave_last_out_split(interactions, videos), temporal_split(interactions, videos)):
        seen = training_view(split, frame)
        got = sorted(zip(split.user_positions(seen["user_id"]).tolist(), seen["ts_ms"].to_list(), strict=True))
        assert got == pairs(split.train)
        cuts = split.cuts("test")
        assert cuts.t_ms > max(split.train.ts_ms.max(), split.valid.ts_ms.max())
        assert cuts.t_ms <= split.test.ts_ms.max()  # some test rows are after it, under either protocol
        seen = view_before(split, frame, cuts)
        got = sorted(zip(split.user_positions(seen["user_id"]).tolist(), seen["ts_ms"].to_list(), strict=True))
        assert got == pairs(split.train, split.valid)


def test_baselines_evaluate_unchanged_on_it_with_ages_from_the_end_of_training() -> None:
    interactions, videos = random_world(seed=4)
    split = leave_last_out_split(interactions, videos)
    targets = build_targets(split, "test")
    results = evaluate_baselines(split, models=[MostPop(), MostPop(half_life_days=30.0)])
    assert results["most_pop"]["users"] == len(targets.users) > 40
    # The latest training pair is 1 ms old at valid_start: its weight is (almost exactly) 1.
    latest = int(np.argmax(split.train.ts_ms))
    weights = popularity(split, half_life_days=30.0)
    assert weights[split.train.item_idx[latest]] >= 0.999


def test_invalid_rules() -> None:
    interactions, videos = random_world()
    with pytest.raises(ValueError, match="fractions"):
        leave_last_out_split(interactions, videos, test_fraction=0.6, valid_fraction=0.5)
    with pytest.raises(ValueError, match="min_interactions"):
        leave_last_out_split(interactions, videos, min_interactions=2)


# ---- the evaluation on a real (tiny) lake -----------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings.load({}).override(data_dir=tmp_path_factory.mktemp("llo") / "data")
    generate_data(settings, "tiny", seed=11)
    return settings


def test_the_model_sees_no_held_out_interaction_of_a_user(tiny: Settings) -> None:
    data = load_lake_data(tiny.paths, tiny.batch, "leave-last-out")
    prepared = data.prepare(np.zeros((data.split.n_items, 8), dtype=np.float32))  # text is irrelevant here
    held_out = data.split.held_out_users
    assert held_out.sum() > 0.9 * data.split.n_users
    # Each user's history holds exactly their training items: their validation and test watches are not in it.
    watched = prepared.histories.watched.tocsr()
    for u in np.flatnonzero(held_out)[:50]:
        trained = set(data.split.train.item_idx[data.split.train.user_idx == u].tolist())
        assert set(watched.indices[watched.indptr[u] : watched.indptr[u + 1]].tolist()) <= trained


@pytest.mark.slow
def test_quality_report_runs_under_both_protocols_with_the_ranker(tiny: Settings) -> None:
    """The report's path end to end, ranker rows included; small towers, random caption vectors and a quick
    ranker keep it cheap (what is measured here is the plumbing, not the model)."""
    quick = TrainConfig(epochs=1, batch_size=1024, embedding_dim=32, eval_users=300, seed=3)
    ranker = RankerSetup(n=50, max_users=300, config=RankerConfig(max_rounds=40, min_data_in_leaf=20, folds=3))
    for protocol in ("temporal", "leave-last-out"):
        data: LakeData = load_lake_data(tiny.paths, tiny.batch, protocol)  # type: ignore[arg-type]
        captions = np.random.default_rng(0).normal(size=(data.split.n_items, 384)).astype(np.float32)
        result = evaluate_dataset(tiny, data, {"two_tower": {}}, None, base=quick, ranker=ranker, text=captions)
        assert result["split"]["protocol"] == protocol
        users = result["models"]["two_tower"]["users"]
        assert users == len(build_targets(data.split, "test").users)
        assert {RETRIEVAL, RANKED, RECENT_AT_CUT} <= set(result["models"])
        for name, metrics in result["intervals"].items():
            assert result["models"][name]["users"] == users  # every row ranks the same users: pairs line up
            recall = metrics["recall@20"]
            assert recall["estimate"] == pytest.approx(result["models"][name]["recall@20"])
            assert recall["low"] <= recall["estimate"] <= recall["high"]
        # The ranker reorders the top N (here 50) and nothing else: the same videos make the top 50.
        for key in ("recall@50", "hit_rate@50", "coverage@50"):
            assert result["models"][RANKED][key] == pytest.approx(result["models"][RETRIEVAL][key]), key
        assert result["models"][RANKED]["ndcg@20"] != result["models"][RETRIEVAL]["ndcg@20"]
        info = result["ranker"]
        assert info["chosen"] in info["objectives"] and info["cost"]["ranking_users_per_s"] > 0
        chosen_test = info["objectives"][info["chosen"]]["test"]["recall@20"]
        assert chosen_test == pytest.approx(result["models"][RANKED]["recall@20"])
        three = ["recall@20", "ndcg@20", "cold_recall@50"]
        assert [(row["model"], row["against"], row["metric"]) for row in result["paired"]] == [
            *(("two_tower", against, metric) for against in ("most_pop_recent_180d", "ease") for metric in three),
            (RANKED, RETRIEVAL, "recall@20"),
            (RANKED, RETRIEVAL, "ndcg@20"),
            *((RANKED, against, metric) for against in ("most_pop_recent_180d", "ease") for metric in three),
            (RANKED, RECENT_AT_CUT, "recall@20"),
            (RANKED, RECENT_AT_CUT, "ndcg@20"),
        ]
        text = "\n".join(report_lines("tiny", result, 0))
        assert ("Temporal split" if protocol == "temporal" else "Leave-last-out split") in text
        for row in ("two_tower", RETRIEVAL, RANKED, RECENT_AT_CUT):
            assert re.search(rf"\| {re.escape(row)} \| \d\.\d{{4}} \[\d\.\d{{3}}, \d\.\d{{3}}\] \|", text), row
        # The ranked stack as the batch serves it: the feed policy after the ranker, fresh slots for cold videos.
        assert {RETRIEVAL, RANKED} <= set(result["served"])
        assert result["served"][RANKED]["cold_recall@50"] > 0
        served_pairs = {(row["model"], row["against"], row["metric"]) for row in result["served_paired"]}
        assert (RANKED, "most_pop_recent_180d", "cold_recall@50") in served_pairs
        assert (RANKED, RETRIEVAL, "ndcg@20") in served_pairs
        verdicts = len(result["paired"]) + len(result["served_paired"])
        verdicts += sum(len(segment["paired"]) for segment in result["segments"].values())
        assert len(re.findall(r"\| (better|worse|within noise) \|", text)) == verdicts
        assert len(result["paired"]) == 16
        _check_segments(result, users, protocol, text)
        assert re.search(r"ms of LightGBM \([\d,]+ users/s\)", text)


def _check_segments(result: dict, users: int, protocol: str, text: str) -> None:
    """The comparisons by whether a user had any interaction before their test cut: the two segments hold every
    evaluated user once, and each whole difference is their users' weighted mean."""
    segments = result["segments"]
    if protocol == "leave-last-out" and not segments:  # everyone evaluated had a training part of their own
        return
    sizes = {name: segment["users"] for name, segment in segments.items()}
    assert set(sizes) == {"with history", "new at the test cut"} and sum(sizes.values()) == users
    assert min(sizes.values()) > 0
    for i, row in enumerate(result["paired"]):
        parts = [segment["paired"][i] for segment in segments.values()]
        assert {(p["model"], p["against"], p["metric"]) for p in parts} == {
            (row["model"], row["against"], row["metric"])
        }
        if row["metric"] != "cold_recall@50":  # NaN for a user without a cold target: not a mean over all users
            mean = sum(n * p["estimate"] for n, p in zip(sizes.values(), parts, strict=True)) / users
            assert mean == pytest.approx(row["estimate"], abs=1e-12)
    assert f"among the {sizes['new at the test cut']:,} evaluated users new at the test cut" in text


def test_segments_split_the_evaluated_users_by_their_history_before_the_test_cut() -> None:
    """Pure logic on a four-user split: u0 watched before the validation cut, u1 inside the validation window
    only, u2 and u3 first at test time."""
    interactions = pl.DataFrame(
        {
            "user_id": ["u0", "u0", "u1", "u2", "u3", "u0"],
            "video_id": ["v0", "v1", "v1", "v0", "v1", "v2"],
            "ts": [0, DAY_MS, 8 * DAY_MS, 9 * DAY_MS, 9 * DAY_MS, 9 * DAY_MS],
        }
    )
    videos = pl.DataFrame({"video_id": ["v0", "v1", "v2"]})
    at = dt.datetime.fromtimestamp
    split = temporal_split(interactions, videos, valid_start=at(5 * 86_400, dt.UTC), test_start=at(9 * 86_400, dt.UTC))
    index = {user: i for i, user in enumerate(split.user_ids)}
    evaluated = np.array(sorted(index.values()))
    segments = history_segments(split, evaluated)
    assert sorted(split.user_ids[segments["with history"]]) == ["u0", "u1"]
    assert sorted(split.user_ids[segments["new at the test cut"]]) == ["u2", "u3"]
