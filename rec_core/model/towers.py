"""The two towers: small torch modules that map videos and users into one space.

Both towers end in an L2-normalised vector of ``embedding_dim``, so a dot product
is a cosine similarity and Milvus can search with the inner product.

Ids enter through vocabularies fixed at training time (index 0 is "unknown"):
a video or creator that the model never saw gets index 0 and is represented
by its content alone. The video-id embedding is dropped at random during
training so that the content path carries a good vector on its own; that is
what makes cold videos recommendable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Dense video features, in this order (rec_core.model.features builds them: STATIC_VIDEO_COLUMNS and the counts).
VIDEO_DENSE = (
    "log_duration",
    "log_aspect",
    "log_creator_followers",
    "log_creator_likes",
    "log_views",
    "like_rate",
    "comment_rate",
    "share_rate",
    "age_days",
    # Views in the last 1, 7, 30 and 180 days (rec_core.model.video_engagement.RECENT_WINDOWS_DAYS); appended last so a
    # model saved with the first nine columns still reads its own.
    "log_views_1d",
    "log_views_7d",
    "log_views_30d",
    "log_views_180d",
)
LEGACY_VIDEO_DENSE = 9  # models saved before the windows were added
# Dense user features, in this order (see rec_core.model.features.user_dense_features).
USER_DENSE = ("log_watched", "log_liked", "log_followed", "avg_completion", "log_avg_watch_time")


@dataclass(frozen=True, slots=True)
class TowerConfig:
    embedding_dim: int = 64
    text_dim: int = 384
    n_items: int = 1  # size of the video-id vocabulary, index 0 = unknown
    n_creators: int = 1
    n_hashtags: int = 1
    id_dim: int = 32
    hashtag_dim: int = 32
    hidden: int = 256
    id_dropout: float = 0.5
    temperature: float = 0.05
    video_dense: int = len(VIDEO_DENSE)  # dense video inputs the model reads (the first N of VIDEO_DENSE)

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out))


@dataclass(slots=True)
class VideoBatch:
    """Inputs of the video tower for ``n`` videos."""

    text: torch.Tensor  # (n, text_dim) frozen encoder output
    item_idx: torch.Tensor  # (n,) long, 0 = unknown video
    creator_idx: torch.Tensor  # (n,) long, 0 = unknown creator
    hashtag_idx: torch.Tensor  # (total_tags,) long, flattened
    hashtag_offsets: torch.Tensor  # (n,) long, start of each video's tags
    dense: torch.Tensor  # (n, len(VIDEO_DENSE)) standardised


@dataclass(slots=True)
class UserBatch:
    """Inputs of the user tower for ``n`` users: pooled histories plus dense features."""

    watched_text: torch.Tensor  # (n, text_dim) mean text embedding of watched videos
    liked_text: torch.Tensor  # (n, text_dim) mean text embedding of liked videos
    watched_idx: torch.Tensor  # (total,) long, video vocab indices, flattened
    watched_offsets: torch.Tensor  # (n,)
    liked_idx: torch.Tensor
    liked_offsets: torch.Tensor
    followed_idx: torch.Tensor  # creator vocab indices
    followed_offsets: torch.Tensor
    dense: torch.Tensor  # (n, len(USER_DENSE)) standardised


def mean_bag(weight: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor, *, sparse: bool = False) -> torch.Tensor:
    """Each bag's mean row of ``weight`` (bags of ``idx`` starting at ``offsets``), index 0 (unknown) left out; a bag
    with no known index pools to zeros.

    ``F.embedding_bag(mode="mean", padding_idx=0)`` computes the same, but its CPU kernel adds the rows one axpy at a
    time; a sum weighted 0 / 1 and divided by the known count takes the vectorised kernel. Forward and backward of
    1,024 bags of up to 64 ids (the user tower's watched videos in a training step), 32 dims: 7 -> 2.6 ms with a
    dense gradient, 6 -> 0.5 ms with a sparse one; the outputs equal, the gradients within 2e-9."""
    if len(offsets) == 0:
        return weight.new_zeros((0, weight.shape[1]))
    known = idx != 0
    running = torch.cat([idx.new_zeros(1), known.cumsum(0)])
    ends = torch.cat([offsets[1:], offsets.new_tensor([len(idx)])])
    counts = (running[ends] - running[offsets]).clamp(min=1).unsqueeze(1).to(weight.dtype)
    summed = F.embedding_bag(idx, weight, offsets, mode="sum", per_sample_weights=known.to(weight.dtype), sparse=sparse)
    return summed / counts


class VideoTower(nn.Module):
    def __init__(self, cfg: TowerConfig, item_emb: nn.Embedding, creator_emb: nn.Embedding) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb, self.creator_emb = item_emb, creator_emb
        self.hashtag_emb = nn.EmbeddingBag(cfg.n_hashtags, cfg.hashtag_dim, mode="mean", padding_idx=0)
        width = cfg.text_dim + cfg.hashtag_dim + 2 * cfg.id_dim + cfg.video_dense
        self.mlp = _mlp(width, cfg.hidden, cfg.embedding_dim)

    def forward(self, b: VideoBatch) -> torch.Tensor:
        ids = self.item_emb(b.item_idx)
        if self.training and self.cfg.id_dropout > 0:
            keep = torch.rand(ids.shape[0], 1, device=ids.device) >= self.cfg.id_dropout
            ids = ids * keep
        # The module holds the table (its state-dict key, row 0 zeroed); mean_bag pools it, faster than its forward.
        tags = mean_bag(self.hashtag_emb.weight, b.hashtag_idx, b.hashtag_offsets)
        x = torch.cat([b.text, tags, ids, self.creator_emb(b.creator_idx), b.dense[:, : self.cfg.video_dense]], dim=1)
        return F.normalize(self.mlp(x), dim=1)


class UserTower(nn.Module):
    def __init__(self, cfg: TowerConfig, item_emb: nn.Embedding, creator_emb: nn.Embedding) -> None:
        super().__init__()
        self.item_emb, self.creator_emb = item_emb, creator_emb
        width = 2 * cfg.text_dim + 3 * cfg.id_dim + len(USER_DENSE)
        self.mlp = _mlp(width, cfg.hidden, cfg.embedding_dim)

    def _pool(self, table: nn.Embedding, idx: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        # Sparse gradients when the table asks for them.
        return mean_bag(table.weight, idx, offsets, sparse=table.sparse)

    def forward(self, b: UserBatch) -> torch.Tensor:
        x = torch.cat(
            [
                b.watched_text,
                b.liked_text,
                self._pool(self.item_emb, b.watched_idx, b.watched_offsets),
                self._pool(self.item_emb, b.liked_idx, b.liked_offsets),
                self._pool(self.creator_emb, b.followed_idx, b.followed_offsets),
                b.dense,
            ],
            dim=1,
        )
        return F.normalize(self.mlp(x), dim=1)


class EngagementHead(nn.Module):
    """Auxiliary head: predicts (completion, log watch time, like) of a user-video pair."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = _mlp(3 * dim, 64, 3)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([u, v, u * v], dim=1))


class TwoTower(nn.Module):
    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Shared id tables: a video's id vector means the same in a user's history and as a candidate.
        self.item_emb = nn.Embedding(cfg.n_items, cfg.id_dim, padding_idx=0)
        self.creator_emb = nn.Embedding(cfg.n_creators, cfg.id_dim, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.creator_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.creator_emb.weight[0].zero_()
        self.video = VideoTower(cfg, self.item_emb, self.creator_emb)
        self.user = UserTower(cfg, self.item_emb, self.creator_emb)
        self.engagement = EngagementHead(cfg.embedding_dim)


def quantize_int8(model: TwoTower) -> TwoTower:
    """An inference-only copy of ``model`` with int8 dynamic quantization of every ``nn.Linear``.

    Weights are stored int8 with per-channel scales and activations are quantized on the
    fly, so the tower MLPs run int8 matmuls on CPU; embeddings, LayerNorm and the
    normalisation stay fp32. The original model is left untouched. Measured in
    ``make bench`` (``bench_towers``): speed-up and agreement with the fp32 vectors.
    """
    import copy
    import warnings

    # torch.ao.quantization warns that it will move to torchao; eager dynamic quantization still works.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        out = copy.deepcopy(model).eval()
        spec = {name: per_channel_dynamic_qconfig for name, m in out.named_modules() if isinstance(m, nn.Linear)}
        return quantize_dynamic(out, spec, dtype=torch.qint8)


def sampled_softmax_loss(
    u: torch.Tensor,
    v: torch.Tensor,
    item_idx: torch.Tensor,
    log_q: torch.Tensor | None,
    temperature: float,
    extra_v: torch.Tensor | None = None,
    extra_idx: torch.Tensor | None = None,
    extra_log_q: torch.Tensor | None = None,
    user_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch sampled softmax with log-Q correction (Yi et al., RecSys 2019), optionally with extra negatives.

    Row i's positive is column i; the other videos of the batch are its negatives.
    Popular videos appear as in-batch negatives more often than uniform sampling
    would have them, so their logits are lowered by log q (their sampling
    probability), which keeps the model from simply learning to demote them.
    The same video appearing twice in a batch is not its own negative.

    ``extra_v`` (with their ids ``extra_idx`` and ``extra_log_q``) are more
    negatives shared by every row: mixed negative sampling (Yang et al., WWW
    2020) adds videos drawn uniformly from the catalogue, which in-batch
    negatives (drawn by popularity) almost never show: the long tail, and the
    videos nobody watched. ``log_q`` and ``extra_log_q`` must then both be the
    log probability under the mixture of the two samplers.
    """
    logits = u @ v.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    same = item_idx.unsqueeze(0) == item_idx.unsqueeze(1)
    if user_idx is not None:  # another positive of the same user is not a negative for it either
        same = same | (user_idx.unsqueeze(0) == user_idx.unsqueeze(1))
    eye = torch.eye(len(item_idx), dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    if extra_v is not None and len(extra_v):
        extra = u @ extra_v.T / temperature
        if extra_log_q is not None:
            extra = extra - extra_log_q.unsqueeze(0)
        assert extra_idx is not None
        extra = extra.masked_fill(item_idx.unsqueeze(1) == extra_idx.unsqueeze(0), float("-inf"))
        logits = torch.cat([logits, extra], dim=1)
    return F.cross_entropy(logits, torch.arange(len(item_idx), device=u.device))
