"""Training the two towers on a temporal split.

Objective: in-batch sampled softmax with log-Q correction (Yi et al., RecSys
2019) over the training interactions, plus an auxiliary MSE head that predicts
the engagement of the pair (completion, log watch time, like). Early stopping
on validation Recall@K; the best epoch's weights are kept. Deterministic for a
seed on one machine (torch's CPU kernels are deterministic at a fixed thread count).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from rec_core.features import (
    Catalogue,
    FeatureStats,
    Histories,
    Vocabs,
    build_catalogue,
    build_histories,
    build_vocabs,
)
from rec_core.metrics import EvalTargets, build_targets, evaluate_targets
from rec_core.progress import Progress
from rec_core.split import Split
from rec_core.towers import TowerConfig, TwoTower, sampled_softmax_loss

log = logging.getLogger(__name__)

MIN_STEPS_PER_EPOCH = 64
MIN_BATCH = 128


@dataclass(frozen=True, slots=True)
class TrainConfig:
    embedding_dim: int = 64
    epochs: int = 6
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 0.0
    temperature: float = 0.05
    logq: bool = True
    aux_weight: float = 0.5
    id_dropout: float = 0.25
    as_new_rate: float = 0.25  # share of positives shown as freshly posted videos (see Catalogue.batch)
    # Cold-start options (off by default: on MovieLens they lift cold recall@50 from 0 to ~0.003-0.005 but cost
    # recall@20 / NDCG@20 on validation and test, and they are not yet measured on the synthetic world):
    time_aware: bool = False  # show each positive as it was when watched (Catalogue.dense_at), not as of the cut
    uniform_negatives: int = 0  # extra negatives per batch drawn uniformly from the videos posted by then (512)
    new_user_rate: float = 0.1  # share of examples whose user is shown as a newcomer (see Histories.batch)
    patience: int = 2
    eval_k: int = 50
    eval_users: int = 3000  # validation users sampled for early stopping (all of them when fewer)
    seed: int = 42

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class TrainingData:
    """Everything training needs, computed as of the start of the validation period."""

    split: Split
    vocabs: Vocabs
    catalogue: Catalogue
    histories: Histories
    stats: FeatureStats


@dataclass(slots=True)
class TrainResult:
    model: TwoTower
    tower_config: TowerConfig
    curves: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    best_valid: float = 0.0
    seconds: float = 0.0


def prepare(
    split: Split,
    videos: pl.DataFrame,
    interactions: pl.DataFrame,
    follows: pl.DataFrame,
    text: np.ndarray,
    *,
    vocabs: Vocabs | None = None,
    stats: FeatureStats | None = None,
) -> TrainingData:
    """Tower inputs as of ``split.valid_start``: nothing after it is visible to training.

    A saved model passes its own ``vocabs`` and ``stats`` so that it sees ids and
    scales exactly as it was trained with.
    """
    as_of = split.valid_start_ms
    vocabs = vocabs or build_vocabs(videos, interactions, as_of)
    catalogue = build_catalogue(videos, interactions, text, vocabs, as_of)
    histories = build_histories(split.user_ids, interactions, follows, catalogue, vocabs, as_of)
    if stats is None:
        # Training shows videos as they were when watched, so the scales come from those too, not only the cut.
        rng = np.random.default_rng(0)
        sample = rng.choice(len(split.train), size=min(len(split.train), 200_000), replace=False)
        past = catalogue.dense_at(split.train.item_idx[sample], split.train.ts_ms[sample])
        stats = FeatureStats.fit(np.concatenate([catalogue.dense, past]), histories.dense[split.user_has_train])
    return TrainingData(split, vocabs, catalogue, histories, stats)


def video_vectors(model: TwoTower, catalogue: Catalogue, stats: FeatureStats, chunk: int = 8192) -> torch.Tensor:
    model.eval()
    out = []
    with torch.inference_mode():
        for lo in range(0, len(catalogue), chunk):
            rows = np.arange(lo, min(lo + chunk, len(catalogue)))
            out.append(model.video(catalogue.batch(rows, stats)))
    return torch.cat(out) if out else torch.zeros(0, model.cfg.embedding_dim)


def user_vectors(
    model: TwoTower, histories: Histories, catalogue: Catalogue, stats: FeatureStats, rows: np.ndarray
) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model.user(histories.batch(rows, catalogue, stats))


def scorer(model: TwoTower, data: TrainingData) -> tuple[torch.Tensor, Callable[[np.ndarray], torch.Tensor]]:
    """Score function over the full catalogue for rec_core.metrics."""
    items = video_vectors(model, data.catalogue, data.stats)

    def score(user_rows: np.ndarray) -> torch.Tensor:
        return user_vectors(model, data.histories, data.catalogue, data.stats, user_rows) @ items.T

    return items, score


def train(data: TrainingData, cfg: TrainConfig) -> TrainResult:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n_items, n_creators, n_tags = data.vocabs.sizes
    tower_cfg = TowerConfig(
        embedding_dim=cfg.embedding_dim,
        text_dim=data.catalogue.text.shape[1],
        n_items=n_items,
        n_creators=n_creators,
        n_hashtags=n_tags,
        id_dropout=cfg.id_dropout,
        temperature=cfg.temperature,
    )
    model = TwoTower(tower_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train = data.split.train
    # A small data set still gets enough optimizer steps per epoch to learn in a few epochs.
    batch_size = min(cfg.batch_size, max(MIN_BATCH, len(train) // MIN_STEPS_PER_EPOCH))
    if len(train) < batch_size:
        raise ValueError(f"only {len(train)} training interactions; need at least one batch of {batch_size}")
    if batch_size != cfg.batch_size:
        log.info("batch size %d instead of %d: %d training interactions", batch_size, cfg.batch_size, len(train))

    # q: how often each video is drawn as a negative: in the batch, by its share of training examples; among
    # the uniform negatives, by one over the number of videos posted by then. Mixture: B * p + M / n(t).
    freq = np.bincount(train.item_idx, minlength=len(data.catalogue)).astype(np.float64)
    share = np.maximum(freq, 1.0) / freq.sum()
    n_uniform = cfg.uniform_negatives
    created = data.catalogue.created_ms
    by_created = np.argsort(created, kind="stable")
    created_sorted = created[by_created]

    def log_q(items: np.ndarray, at_ms: np.ndarray) -> torch.Tensor:
        posted = np.maximum(np.searchsorted(created_sorted, at_ms, side="right"), 1)
        return torch.from_numpy(np.log(batch_size * share[items] + n_uniform / posted).astype(np.float32))

    def uniform_negatives(at_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Each negative borrows the instant of a random row of the batch and is drawn among the videos posted by
        # then: a video posted later cannot have been watched then, and would teach that new videos are bad.
        when = at_ms[rng.integers(0, len(at_ms), n_uniform)]
        posted = np.maximum(np.searchsorted(created_sorted, when, side="right"), 1)
        return by_created[(rng.random(n_uniform) * posted).astype(np.int64)], when

    duration = data.catalogue.duration_s[train.item_idx]
    targets = torch.from_numpy(
        np.stack([train.completion, np.log1p(train.completion * duration) / 5.0, train.liked.astype(np.float32)], 1)
    )
    valid_targets = _sample_targets(build_targets(data.split, "valid"), cfg.eval_users, rng)

    curves: dict[str, list[float]] = {
        "loss": [],
        "retrieval_loss": [],
        "aux_loss": [],
        f"valid_recall@{cfg.eval_k}": [],
    }
    best_state, best_valid, best_epoch, bad_epochs = None, -1.0, 0, 0
    steps_per_epoch = len(train) // batch_size
    started = time.monotonic()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = rng.permutation(len(train))
        sums = np.zeros(3)
        progress = Progress(f"epoch {epoch}/{cfg.epochs}", steps_per_epoch, logger=log)
        for step in range(steps_per_epoch):
            rows = order[step * batch_size : (step + 1) * batch_size]
            users, items = train.user_idx[rows], train.item_idx[rows]
            new_user = rng.random(len(users)) < cfg.new_user_rate
            u = model.user(data.histories.batch(users, data.catalogue, data.stats, exclude=items, as_new=new_user))
            as_new = rng.random(len(items)) < cfg.as_new_rate
            at_ms = train.ts_ms[rows] if cfg.time_aware else np.full(len(rows), data.catalogue.as_of_ms)
            # As of the cut, dense_at equals the precomputed ``dense``; recomputing it per step cost 2.5x the epoch.
            seen_at = at_ms if cfg.time_aware else None
            v = model.video(data.catalogue.batch(items, data.stats, as_new=as_new, at_ms=seen_at))
            item_t = torch.from_numpy(items.astype(np.int64))
            extra_v = extra_t = extra_q = None
            if n_uniform > 0:
                negatives, neg_ms = uniform_negatives(at_ms)
                extra_v = model.video(data.catalogue.batch(negatives, data.stats, at_ms=neg_ms))
                extra_t = torch.from_numpy(negatives)
                extra_q = log_q(negatives, neg_ms) if cfg.logq else None
            retrieval = sampled_softmax_loss(
                u,
                v,
                item_t,
                log_q(items, at_ms) if cfg.logq else None,
                cfg.temperature,
                extra_v,
                extra_t,
                extra_q,
            )
            aux = F.mse_loss(model.engagement(u, v), targets[rows]) if cfg.aux_weight > 0 else torch.zeros(())
            loss = retrieval + cfg.aux_weight * aux
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += [loss.item(), retrieval.item(), aux.item()]
            progress.advance()
        for key, value in zip(("loss", "retrieval_loss", "aux_loss"), sums / steps_per_epoch, strict=True):
            curves[key].append(float(value))
        _, score = scorer(model, data)
        valid = evaluate_targets(score, valid_targets, ks=(cfg.eval_k,))[f"recall@{cfg.eval_k}"]
        curves[f"valid_recall@{cfg.eval_k}"].append(float(valid))
        log.info("epoch %d: loss %.4f, valid recall@%d %.4f", epoch, curves["loss"][-1], cfg.eval_k, valid)
        if valid > best_valid:
            best_state, best_valid, best_epoch, bad_epochs = copy.deepcopy(model.state_dict()), valid, epoch, 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                log.info("early stop: no validation gain for %d epochs; best epoch %d", bad_epochs, best_epoch)
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, tower_cfg, curves, best_epoch, best_valid, time.monotonic() - started)


def _sample_targets(targets: EvalTargets, n: int, rng: np.random.Generator) -> EvalTargets:
    if len(targets.users) <= n:
        return targets
    users = np.sort(rng.choice(targets.users, size=n, replace=False))
    return EvalTargets(users, targets.history, targets.relevant, targets.cold_relevant, targets.n_items)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
