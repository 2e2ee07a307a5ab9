"""A ranker for an already built snapshot, trained on its own vectors: what benchmarks and tests rank with.

The release trains the real ranker on the towers as of the validation window (:mod:`rec_core.model.ranking`). A
benchmark or a test that builds a snapshot from random vectors has no such towers, so :func:`snapshot_ranker` reads
the snapshot's user and video vectors and the engagement head of its model copy, builds examples as of ``days``
before the snapshot's as-of with the same :func:`~rec_core.rank.examples.build_examples`, and fits LightGBM on them
(``rounds`` fixed, or cross-validated by :func:`~rec_core.rank.ranker_training.train_ranker`). Its answer is not
meant to be good; its shape and cost are the real ranker's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import torch

from rec_core.feed.engagement import EngagementHead
from rec_core.model.features import FeatureStats
from rec_core.model.store import ModelStore
from rec_core.model.towers import USER_DENSE, VIDEO_DENSE, TowerConfig, TwoTower
from rec_core.model.vocabs import Vocabs
from rec_core.rank.candidates import DEFAULT_CANDIDATES
from rec_core.rank.examples import build_examples
from rec_core.rank.features import ENGAGEMENT, FEATURES
from rec_core.rank.ranker import Ranker, RankerConfig
from rec_core.rank.ranker_training import train_ranker
from rec_core.rank.state import state_at
from rec_core.settings import PathSettings
from rec_core.snapshot.files import read_vector_shards, vectors_array
from rec_core.snapshot.layout import SnapshotPaths
from rec_core.snapshot.model_copy import load_snapshot_model
from rec_core.snapshot.rank_state import build_events

DAY_MS = 86_400_000
SEED = 42
BENCH_ROUNDS = 120  # the binary rankers benchmarks/quality.py chooses: 60-170 rounds
BENCH_CANDIDATES = DEFAULT_CANDIDATES


@dataclass(frozen=True, slots=True)
class VectorTowers:
    """What :func:`rec_core.rank.examples.build_examples` asks of the towers (a ``TowerView``'s duck), read off a
    snapshot's vectors: users and videos indexed like the events, and the towers' engagement head."""

    t_ms: int
    users: np.ndarray  # float32 (n_users, dim)
    video_vectors: torch.Tensor  # float32 (n_items, dim)
    head: EngagementHead | None

    def user_vectors(self, users: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.users[np.asarray(users, dtype=np.int64)]))

    def engagement(self, user_vecs: torch.Tensor, items: np.ndarray) -> np.ndarray:
        if self.head is None:
            return np.full((*items.shape, len(ENGAGEMENT)), np.nan, dtype=np.float32)
        videos = self.video_vectors.numpy()
        return self.head.over_lists(user_vecs.numpy(), items, items >= 0, lambda codes: videos[codes])


def snapshot_ranker(
    path_settings: PathSettings,
    paths: SnapshotPaths,
    *,
    days: float = 3.0,
    n: int = BENCH_CANDIDATES,
    max_users: int = 2000,
    config: RankerConfig | None = None,
    rounds: int | None = None,
    n_popular: int = 0,
) -> Ranker:
    """A ranker trained on a built snapshot's vectors: features as of ``days`` before its as-of, labels what users
    did from then to as-of, over the towers' top ``n`` and ``n_popular`` popular videos. ``rounds`` fixes the trees
    (binary objective) instead of cross-validating them."""
    build = paths.read_build()
    events = build_events(path_settings, build)
    as_of = int(dt.datetime.fromisoformat(build.as_of).timestamp() * 1000)
    state = state_at(events, as_of - int(days * DAY_MS))
    users = _aligned(read_vector_shards(paths, "users", build.user_shards), "user_id", events.user_ids)
    videos = _aligned(read_vector_shards(paths, "videos", build.video_shards), "video_id", events.item_ids)
    head = EngagementHead.of(load_snapshot_model(path_settings, paths, build).model.engagement)
    view = VectorTowers(state.t_ms, users, torch.from_numpy(videos), head)
    examples = build_examples(view, state, as_of, n, max_users, n_popular=n_popular)  # type: ignore[arg-type]
    config = config or RankerConfig(objective="binary")
    if rounds is None:
        return train_ranker(examples, config)
    labels = (examples.labels > 0).astype(np.int32)
    data = lgb.Dataset(examples.features, labels, group=examples.groups, feature_name=list(FEATURES))
    booster = lgb.train({**config.params(), "objective": "binary"}, data, num_boost_round=rounds)
    return Ranker.from_booster(
        booster, RankerConfig(objective="binary", seed=config.seed), rounds, n, n_popular=n_popular
    )


def _aligned(table: pa.Table, id_column: str, ids: np.ndarray) -> np.ndarray:
    """The table's vectors in the order of ``ids`` (zeros for an id without one)."""
    row = {v: i for i, v in enumerate(table.column(id_column).to_pylist())}
    vectors = vectors_array(table)
    out = np.zeros((len(ids), vectors.shape[1]), dtype=np.float32)
    at = np.array([row.get(str(v), -1) for v in ids])
    out[at >= 0] = vectors[at[at >= 0]]
    return out


def save_random_model(models_dir: Path, version: str, dim: int) -> Path:
    """An untrained two-tower model version (its engagement head is what the ranker's features run)."""
    torch.manual_seed(SEED)
    empty = np.array([], dtype=object)
    stats = FeatureStats(
        [0.0] * len(VIDEO_DENSE), [1.0] * len(VIDEO_DENSE), [0.0] * len(USER_DENSE), [1.0] * len(USER_DENSE)
    )
    model = TwoTower(TowerConfig(embedding_dim=dim))
    return ModelStore(models_dir).save(version, model, Vocabs(empty, empty, empty), stats, {}, {})
