"""Training the two towers on a temporal split.

Objective: in-batch sampled softmax with log-Q correction (Yi et al., RecSys
2019) over the training interactions, plus an auxiliary MSE head that predicts
the engagement of the pair (completion, log watch time, like).

Time windows (``time_windows``, on by default): each batch is drawn from one
window of time-adjacent interactions, and every video of the batch is shown as
it looked at the start of that window (its views, views in the last days, age).
The positive of a row and its in-batch negatives are then compared at the same
instant, so the model learns what a video that is rising *now* looks like:
recency is what most of a feed's future watches follow (on MovieLens, MostPop
weighted by recency beats plain MostPop by 60% on Recall@20 over the test period). With
randomly mixed batches every video would be shown as of the cut, where a
training watch from years ago sees its video's later fame, and the recent-views
features mean nothing. Log-Q then uses each video's share of its window (that is
how often it is drawn as a negative there), and another positive of the same
user in the batch is not taken as a negative. Early stopping
on validation Recall@K, checked after every epoch and at least every ``eval_every`` steps; the best round's
weights are kept. Deterministic for a
seed on one machine (torch's CPU kernels are deterministic at a fixed thread count).
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from rec_core.data.split import InteractionArrays, Split
from rec_core.eval.intervals import paired_difference
from rec_core.eval.ranking_metrics import (
    EvalTargets,
    FreshScores,
    ProductScores,
    ScoresBuffer,
    UserMetrics,
    build_targets,
    user_metrics,
)
from rec_core.model.features import Catalogue, FeatureStats, Histories, build_catalogue, build_histories
from rec_core.model.lazy_adam import LazyAdam
from rec_core.model.towers import TowerConfig, TwoTower, sampled_softmax_loss
from rec_core.model.vocabs import Vocabs, build_vocabs
from rec_core.progress import Progress

log = logging.getLogger(__name__)

MIN_STEPS_PER_EPOCH = 64
MIN_BATCH = 128
VALID_AT = "valid_at_epoch"  # curves key: where each validation round ran, in epochs
# Id-table rows (videos + creators) from which the tables train sparse (TrainConfig.sparse_ids=None). A dense step
# measured 40 ms at 40,263 video ids and 125 ms at 402,630, a sparse one 49-53 ms at both (docs/performance.md):
# linear in the rows, the dense step costs as much as the sparse one at about 82,000. On the large world (421,694
# rows) sparse measured better than dense on test beyond noise (docs/performance.md, December 4, late evening).
SPARSE_IDS_FROM = 100_000


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
    new_user_rate: float = 0.2  # share of examples whose user is shown as a newcomer (see Histories.batch)
    # Each batch from one window of this many batches of time-adjacent interactions, videos as of the window's
    # start (see the module docstring); 0: random batches, videos as of the cut (or as watched, with time_aware).
    time_windows: int = 8
    # Older cold-start options for random batches (time_windows=0): on MovieLens they lift cold recall@50 from 0 to
    # ~0.003-0.005 but cost recall@20 / NDCG@20; time windows do better on both.
    time_aware: bool = False  # show each positive as it was when watched (Catalogue.dense_at), not as of the cut
    uniform_negatives: int = 0  # extra negatives per batch drawn uniformly from the videos posted by then (512)
    # Validation rounds (epochs, at the default scale) without a gain before training stops, unless a round is worse
    # than the best beyond noise (the paired bootstrap interval of the per-user difference lies below zero), which
    # stops it at once: on the default and large worlds validation peaks and then falls clearly (0.151 -> 0.121;
    # 0.060 -> 0.042), so the second epoch of patience only cost time (45 s at the default scale, ~10 min at the
    # large), while on MovieLens's few validation users a dip within noise still gets its second chance.
    patience: int = 2
    # Sparse gradients and a lazy Adam (only the rows a batch touched move) for the video and creator id tables; the
    # dense layers keep AdamW. A dense Adam step reads and writes every row of those tables at every step: with 10x
    # the default world's video ids (402,630) its steps were 2.3x slower, while at the default's 40,263 the sparse
    # step is the slower (0.83x); quality at default was within noise (bench_sparse_ids), at the large scale better
    # by little (docs/performance.md). None (auto): sparse from SPARSE_IDS_FROM id-table rows.
    sparse_ids: bool | None = None
    # A warm start (rec_core.model.warm_start) adapts a model that already fits all but the newest data: a couple of
    # epochs, each kept only if it beats the carried weights on validation.
    warm_epochs: int = 2
    eval_k: int = 50
    eval_users: int = 3000  # validation users sampled for early stopping (all of them when fewer)
    # Validate at least every this many steps of ``batch_size`` rows (epochs are cut into equal rounds; 0: once an
    # epoch). Early stopping and patience count rounds. At the default scale an epoch (776 steps) is one round. At the
    # large one (8,239 steps) one dense epoch validated in 9 rounds measured 0.0636, 0.0658, 0.0625, 0.0646, 0.0704,
    # 0.0668, 0.0607, 0.0624 and 0.0581 at its end (the windows come in random order, so where an epoch ends says
    # little): the first rounds were already better than the epoch's end, all that epoch-wise validation saw. Rounds
    # differ by which windows came last as much as by the users sampled, so a stop on one round's drop can come
    # early: there the release stopped at the third round, keeping the second (docs/scaling.md). At the default scale
    # two rounds an epoch (500) stopped at epoch 1 keeping 0.5, in 41 s against 125 s: the towers tested better, but
    # the served stack worse beyond noise (the gate refused it: recall@50 -0.0036 [-0.0064, -0.0008]; the towers'
    # coverage@50 0.49 -> 0.26), so one round an epoch there.
    eval_every: int = 1000
    # A warm start's epoch (only the rows since its source's cut: 830 steps at the large scale) is validated in at
    # least this many rounds, so a start that the new rows make worse beyond noise stops within a quarter epoch.
    warm_rounds: int = 4
    seed: int = 42

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.warm_epochs < 1:
            raise ValueError(f"epochs and warm_epochs must be at least 1, got {self.epochs} and {self.warm_epochs}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be 0 (once an epoch) or a number of steps, got {self.eval_every}")
        if self.time_windows < 0:
            raise ValueError(f"time_windows must be 0 (off) or a number of batches, got {self.time_windows}")
        if self.time_windows and (self.time_aware or self.uniform_negatives):
            raise ValueError("time_aware and uniform_negatives are options of random batches; set time_windows=0")

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
    best_epoch: float = 0.0  # where the kept weights were validated, in epochs (1.5: half-way through the second)
    best_valid: float = 0.0
    seconds: float = 0.0
    start_valid: float | None = None  # validation recall of the carried weights, on a warm start


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
    catalogue = build_catalogue(videos, interactions, text, vocabs, as_of, timeline=True)  # time windows, dense_at
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


def scorer(model: TwoTower, data: TrainingData) -> tuple[torch.Tensor, FreshScores]:
    """Score function over the full catalogue for rec_core.eval.ranking_metrics (each call a new product)."""
    items = video_vectors(model, data.catalogue, data.stats)
    return items, FreshScores(lambda user_rows: _user_vectors_of(model, data, user_rows) @ items.T)


def evaluation_scorer(model: TwoTower, data: TrainingData, exclude: sp.csr_matrix) -> ProductScores:
    """:func:`scorer` for an evaluation whose training items are ``exclude`` (its targets' history): its top k is
    made without the full scores (:class:`~rec_core.eval.ranking_metrics.ProductScores`)."""
    items = video_vectors(model, data.catalogue, data.stats)
    return ProductScores(functools.partial(_user_vectors_of, model, data), items.T, exclude, ScoresBuffer(len(items)))


def _user_vectors_of(model: TwoTower, data: TrainingData, user_rows: np.ndarray) -> torch.Tensor:
    return user_vectors(model, data.histories, data.catalogue, data.stats, user_rows)


def tower_config(data: TrainingData, cfg: TrainConfig) -> TowerConfig:
    """The towers :func:`train` builds for ``data``: their vocabularies' sizes, the text's width, ``cfg``'s sizes."""
    n_items, n_creators, n_tags = data.vocabs.sizes
    return TowerConfig(
        embedding_dim=cfg.embedding_dim,
        text_dim=data.catalogue.text.shape[1],
        n_items=n_items,
        n_creators=n_creators,
        n_hashtags=n_tags,
        id_dropout=cfg.id_dropout,
        temperature=cfg.temperature,
    )


@dataclass(frozen=True, slots=True)
class StartFrom:
    """A warm start (rec_core.model.warm_start): the weights the freshly built towers begin with, and the instant the
    source model's training data ended: its epochs run over the training rows since then, which it never saw."""

    weights: Callable[[TwoTower], dict[str, torch.Tensor]]
    since_ms: int


class _Optimizers:
    """AdamW for the dense layers and (``sparse_ids``) a lazy Adam for the id tables, stepped as one."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


def _optimizer(model: TwoTower, cfg: TrainConfig) -> _Optimizers:
    rows = model.item_emb.num_embeddings + model.creator_emb.num_embeddings
    sparse = rows >= SPARSE_IDS_FROM if cfg.sparse_ids is None else cfg.sparse_ids
    log.info("optimizer: %s (%d id-table rows)", "sparse ids + AdamW" if sparse else "AdamW", rows)
    if not sparse:
        return _Optimizers(_adamw(model.parameters(), cfg))
    tables = (model.item_emb, model.creator_emb)
    for table in tables:
        table.sparse = True
    sparse_weights = {id(table.weight) for table in tables}
    dense = [p for p in model.parameters() if id(p) not in sparse_weights]
    return _Optimizers(
        _adamw(dense, cfg),
        # No weight decay here: a lazy Adam has none, and a decay of the untouched rows is what made the step dense.
        LazyAdam([table.weight for table in tables], lr=cfg.lr),
    )


def _adamw(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    # The fused kernel updates every parameter in one pass instead of a handful of tensor ops each: the same update
    # to float rounding, 5-10% faster epochs at the default scale (one epoch alternated with the plain one, 2026-12-04).
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def train(data: TrainingData, cfg: TrainConfig, start: StartFrom | None = None) -> TrainResult:
    """Train the towers with early stopping on validation recall. With ``start``, they begin from its weights, at
    most ``cfg.warm_epochs`` epochs run, each over the rows since ``start.since_ms`` only (the cost of a release
    then follows what is new, not the whole history), and each is kept only if it beats the start on validation."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tower_cfg = tower_config(data, cfg)
    model = TwoTower(tower_cfg)
    if start is not None:
        model.load_state_dict(start.weights(model))
    optimizer = _optimizer(model, cfg)
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

    assert data.catalogue.duration_s is not None  # a training catalogue holds the video tower's inputs
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
        VALID_AT: [],
    }
    stopping = EarlyStopping(f"recall@{cfg.eval_k}", cfg.patience)
    best_state, start_valid, epochs = None, None, cfg.epochs
    if start is not None:
        stopping.update(0, _valid_users(model, data, valid_targets, cfg.eval_k))
        best_state, start_valid = copy.deepcopy(model.state_dict()), stopping.best_value
        epochs = min(cfg.epochs, cfg.warm_epochs)
        log.info("warm start: valid recall@%d %.4f before training; at most %d epochs", cfg.eval_k, start_valid, epochs)
    window = batch_size * cfg.time_windows
    first = 0  # the first training row an epoch draws from (rows are in time order)
    if start is not None:
        first = int(np.searchsorted(train.ts_ms, start.since_ms))
        first = first // window * window if window else first  # whole windows, so a batch stays in one
        log.info("warm start: epochs over the %d training rows since its source's cut", len(train) - first)
    # Over the rows an epoch draws from only: a warm start's tenth of the rows, a tenth of the lookups (12 s of
    # its 36 s at the large scale when every row's window was built).
    windows = TimeWindows.build(train, data.catalogue, window, first) if window else None
    steps_per_epoch = (len(train) - first) // batch_size
    if steps_per_epoch == 0:
        log.info("fewer than %d new training rows: the start is kept as it is", batch_size)
        epochs = 0
    rounds = max(1, -(-steps_per_epoch // cfg.eval_every)) if cfg.eval_every else 1
    if start is not None and cfg.eval_every:
        rounds = max(rounds, min(cfg.warm_rounds, steps_per_epoch))
    round_ends = set(np.linspace(0, steps_per_epoch, rounds + 1).round().astype(int)[1:].tolist())
    if rounds > 1:
        log.info("validation every ~%d steps: %d rounds an epoch", steps_per_epoch // rounds, rounds)
    started = time.monotonic()
    stop = ""
    for epoch in range(1, epochs + 1):
        model.train()
        n_rows = len(train) - first
        order = first + (
            _windowed_order(n_rows, batch_size, cfg.time_windows, rng) if window else rng.permutation(n_rows)
        )
        sums, done = np.zeros(3), 0
        progress = Progress(f"epoch {epoch}/{epochs}", steps_per_epoch, logger=log)
        for step in range(steps_per_epoch):
            rows = order[step * batch_size : (step + 1) * batch_size]
            users, items = train.user_idx[rows], train.item_idx[rows]
            new_user = rng.random(len(users)) < cfg.new_user_rate
            u = model.user(data.histories.batch(users, data.catalogue, data.stats, exclude=items, as_new=new_user))
            as_new = rng.random(len(items)) < cfg.as_new_rate
            if windows is not None:
                dense, batch_q = windows.view(rows, items, batch_size)
                v = model.video(data.catalogue.batch(items, data.stats, as_new=as_new, dense=dense))
            else:
                at_ms = train.ts_ms[rows] if cfg.time_aware else np.full(len(rows), data.catalogue.as_of_ms)
                # As of the cut, dense_at equals the precomputed ``dense``; recomputing it per step cost 2.5x the epoch.
                seen_at = at_ms if cfg.time_aware else None
                batch_q = log_q(items, at_ms)
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
                batch_q if cfg.logq else None,
                cfg.temperature,
                extra_v,
                extra_t,
                extra_q,
                user_idx=torch.from_numpy(users.astype(np.int64)) if windows is not None else None,
            )
            aux = F.mse_loss(model.engagement(u, v), targets[rows]) if cfg.aux_weight > 0 else torch.zeros(())
            loss = retrieval + cfg.aux_weight * aux
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += [loss.item(), retrieval.item(), aux.item()]
            done += 1
            progress.advance()
            if done not in round_ends:
                continue
            at = round(epoch - 1 + done / steps_per_epoch, 3)
            valid_users = _valid_users(model, data, valid_targets, cfg.eval_k)
            model.train()
            valid = valid_users.mean(stopping.key)
            curves[f"valid_{stopping.key}"].append(float(valid))
            curves[VALID_AT].append(at)
            log.info("epoch %g: loss %.4f, valid %s %.4f", at, sums[0] / done, stopping.key, valid)
            improved, stop = stopping.update(at, valid_users)
            if improved:
                best_state = copy.deepcopy(model.state_dict())
            if stop:
                break
        for key, value in zip(("loss", "retrieval_loss", "aux_loss"), sums / max(done, 1), strict=True):
            curves[key].append(float(value))
        if stop:
            log.info("early stop: %s; best epoch %g", stop, stopping.best_epoch)
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    best = stopping.best_value
    return TrainResult(model, tower_cfg, curves, stopping.best_epoch, best, time.monotonic() - started, start_valid)


@dataclass(slots=True)
class EarlyStopping:
    """Which validation round is the best, and when to stop: after ``patience`` rounds without a gain, or at once
    after a round worse than the best beyond noise (the paired bootstrap interval of the per-user difference below
    zero; see TrainConfig.patience)."""

    key: str
    patience: int
    best: UserMetrics | None = None
    best_value: float = -1.0
    best_epoch: float = 0.0
    bad_rounds: int = 0

    def update(self, epoch: float, users: UserMetrics) -> tuple[bool, str]:
        """Take a validation round's per-user values, ``epoch`` being where it ran (1.5: half-way through the second
        epoch): (whether it is the best so far, why to stop, or "")."""
        value = users.mean(self.key)
        if value > self.best_value:
            self.best, self.best_value, self.best_epoch, self.bad_rounds = users, value, epoch, 0
            return True, ""
        self.bad_rounds += 1
        if self.best is not None and (drop := paired_difference(users, self.best, self.key)).verdict == "worse":
            return False, f"{self.key} worse than at epoch {self.best_epoch:g} beyond noise, {drop.interval}"
        if self.bad_rounds >= self.patience:
            return False, f"no gain in {self.bad_rounds} validation rounds"
        return False, ""


def _valid_users(model: TwoTower, data: TrainingData, targets: EvalTargets, k: int) -> UserMetrics:
    return user_metrics(evaluation_scorer(model, data, targets.history), targets, ks=(k,))


@dataclass(frozen=True, slots=True)
class TimeWindows:
    """The training rows (in time order) cut into windows; each window's videos as they looked at its start.

    Built once per training run, so a step only looks its batch up: computing the
    features at an instant per step cost more than the step itself.
    """

    size: int  # rows per window
    first: int  # the training row the first window starts at (a multiple of ``size``)
    start_ms: np.ndarray  # int64 per window: the instant its videos are shown at
    bounds: np.ndarray  # int64 (n_windows + 1,): each window's slice of ``items`` / ``counts`` / ``dense``
    items: np.ndarray  # int64: the distinct videos of each window, sorted within it
    counts: np.ndarray  # int64: how many of the window's rows each of them is
    dense: np.ndarray  # (len(items), len(VIDEO_DENSE)) float32, unstandardised, as of the window's start

    @classmethod
    def build(cls, train: InteractionArrays, catalogue: Catalogue, size: int, first: int = 0) -> TimeWindows:
        """The windows of the training rows from ``first`` on (a multiple of ``size``: the windows stay those of
        the whole table)."""
        if first % size:
            raise ValueError(f"windows start on a multiple of their size {size}, not at row {first}")
        window = np.arange(len(train) - first, dtype=np.int64) // size
        keys, counts = np.unique(window * len(catalogue) + train.item_idx[first:], return_counts=True)
        owner, items = keys // len(catalogue), keys % len(catalogue)
        start_ms = train.ts_ms[first::size].astype(np.int64)
        n_windows = len(start_ms)
        bounds = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=n_windows))]).astype(np.int64)
        return cls(size, first, start_ms, bounds, items, counts, catalogue.dense_at(items, start_ms[owner]))

    def view(self, rows: np.ndarray, items: np.ndarray, batch_size: int) -> tuple[np.ndarray, torch.Tensor]:
        """A batch from one window: its videos' dense features then, and log q (their share of the window)."""
        w = (int(rows[0]) - self.first) // self.size
        lo, hi = self.bounds[w], self.bounds[w + 1]
        at = lo + np.searchsorted(self.items[lo:hi], items)
        log_q = np.log(batch_size * self.counts[at] / self.counts[lo:hi].sum()).astype(np.float32)
        return self.dense[at], torch.from_numpy(log_q)


def _windowed_order(n: int, batch_size: int, per_window: int, rng: np.random.Generator) -> np.ndarray:
    """An epoch's row order: rows (in time order) shuffled within windows of ``per_window`` batches, then whole
    batches shuffled, so that every batch lies inside one window and the windows come in random order."""
    window = batch_size * per_window
    order = np.arange(n)
    for lo in range(0, n, window):
        rng.shuffle(order[lo : lo + window])
    steps = n // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size)[rng.permutation(steps)].reshape(-1)


def _sample_targets(targets: EvalTargets, n: int, rng: np.random.Generator) -> EvalTargets:
    if len(targets.users) <= n:
        return targets
    users = np.sort(rng.choice(targets.users, size=n, replace=False))
    return EvalTargets(users, targets.history, targets.relevant, targets.cold_relevant, targets.n_items)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
