"""A warm start: the next model version begins from the current one's weights when the lake has only grown.

At the large scale the towers' optimizer steps are most of a release (20 of its 43 minutes for one epoch). When
the lake has only gained interactions and videos since the current model was trained, that model already knows
almost every video, creator and hashtag, and a short run on the new split adapts it; training from random weights
again throws that away.

A warm start is taken only when every condition holds, else the release starts cold and says why
(:attr:`WarmStart.reason`, recorded in the version's config.json):

* there is a current model, trained on another version of the lake (a retrain on the same data starts cold: it is
  asked for another reason, a setting or a seed), with the same text encoder and tower shape;
* both splits are temporal and its training cut is not after this split's (``valid_start``): its weights were
  fitted on nothing this split holds out for validation or test, so the evaluation stays honest;
* the lake kept what the model knew: at least :data:`MIN_KEPT` of its video ids are in the new vocabulary. This,
  not the lake's source, tells a grown lake from another one: every commit names its own source (an inbox ingest
  says ``ingest_inbox ...``), while a lake replaced by another world, or regenerated with another seed, shares few
  or none of the model's videos.

The carried weights: every tensor whose shape is unchanged is copied; the id tables (videos, creators, hashtags)
are copied row by row by id, and rows for ids the old model never had keep their fresh initialisation, as in a
cold start. The warm epochs then run over the training rows since the source's cut only (``StartFrom.since_ms``):
what the source never saw, so a release costs what is new, not the whole history again.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import torch

from rec_core.model.store import LoadedModel, ModelStore, ModelStoreError
from rec_core.model.towers import TowerConfig, TwoTower
from rec_core.model.vocabs import Vocabs

log = logging.getLogger(__name__)

MIN_KEPT = 0.9
# Tower fields that must match for the old weights to mean the same thing; the vocabulary sizes may grow.
SHAPE_FIELDS = ("embedding_dim", "text_dim", "id_dim", "hashtag_dim", "hidden", "video_dense")
# The id tables, by the last part of their state name, and the vocabulary each is indexed by. The video and
# creator tables are shared by both towers, so the state lists them under several names.
ID_TABLES = {"item_emb.weight": "items", "creator_emb.weight": "creators", "hashtag_emb.weight": "hashtags"}


@dataclass(frozen=True, slots=True)
class WarmStart:
    """Where a training run starts: ``source`` (the model version whose weights it carries) or cold (None)."""

    source: str | None
    reason: str
    kept_items: float = 0.0  # share of the source's video ids still in the vocabulary

    @property
    def warm(self) -> bool:
        return self.source is not None

    def to_dict(self) -> dict:
        return {"from": self.source, "reason": self.reason, "kept_items": round(self.kept_items, 4)}


COLD_BY_REQUEST = WarmStart(None, "cold start requested")


def choose_start(
    store: ModelStore,
    *,
    lake_version: str,
    text_model: str,
    valid_start: dt.datetime,
    protocol: str,
    vocabs: Vocabs,
    tower: TowerConfig,
) -> tuple[WarmStart, LoadedModel | None]:
    """The current model, when the next version may start from it (see the module docstring), with the reason."""
    current = store.current()
    if current is None:
        return WarmStart(None, "no current model"), None
    try:
        loaded = store.load(current)
    except (ModelStoreError, OSError, ValueError, KeyError) as exc:
        return WarmStart(None, f"current model {current} does not load: {exc}"), None
    if loaded.config.get("lake_version") == lake_version:
        # Nothing new to adapt to: a retrain on the same data is asked for another reason (a setting, a seed).
        return WarmStart(None, f"the lake is still {lake_version}, which current model {current} was trained on"), None
    refused = _mismatch(loaded, text_model, valid_start, protocol, tower)
    if refused is not None:
        return WarmStart(None, f"current model {current} {refused}"), None
    old_items = loaded.vocabs.items
    kept = float((Vocabs.lookup(vocabs.items, old_items) > 0).mean()) if len(old_items) else 0.0
    if kept < MIN_KEPT:
        return WarmStart(None, f"only {kept:.0%} of current model {current}'s videos are in this lake", kept), None
    return WarmStart(current, f"the lake has grown since {current} was trained", kept), loaded


def _mismatch(
    loaded: LoadedModel, text_model: str, valid_start: dt.datetime, protocol: str, tower: TowerConfig
) -> str | None:
    """Why ``loaded`` cannot be the starting point, or None when it can (the lake's growth aside)."""
    config = loaded.config
    if config.get("text_model") != text_model:
        return f"reads {config.get('text_model')!r} captions, not {text_model!r}"
    for name in SHAPE_FIELDS:
        if getattr(loaded.model.cfg, name) != getattr(tower, name):
            return f"has {name} {getattr(loaded.model.cfg, name)}, not {getattr(tower, name)}"
    split = config.get("split") or {}
    if protocol != "temporal" or split.get("protocol", "temporal") != "temporal":
        # Under leave-last-out a user's held-out interactions lie before the cut: no instant bounds what a model saw.
        return "or this split is not temporal, and a warm start needs the temporal protocol for both"
    try:
        trained_until = dt.datetime.fromisoformat(split["valid_start"])
    except (KeyError, TypeError, ValueError):
        return "does not say where its training ended"
    if trained_until > valid_start:
        return f"trained until {trained_until.isoformat()}, after this split's cut {valid_start.isoformat()}"
    return None


def carried_state(source: TwoTower, source_vocabs: Vocabs, target: TwoTower, vocabs: Vocabs) -> dict[str, torch.Tensor]:
    """``target``'s state with ``source``'s weights carried over: unchanged shapes copied, id tables by id."""
    state = {name: tensor.clone() for name, tensor in target.state_dict().items()}
    old = source.state_dict()
    for name, tensor in state.items():
        vocab = ID_TABLES.get(name.split(".", name.count(".") - 1)[-1])
        if vocab is not None:
            rows = id_rows(getattr(source_vocabs, vocab), getattr(vocabs, vocab))
            known = rows > 0
            tensor[1:][known] = old[name][rows[known]]
        elif name in old and old[name].shape == tensor.shape:
            tensor.copy_(old[name])
        else:
            log.warning("warm start: %s changed shape (%s), starts fresh", name, tuple(tensor.shape))
    return state


def id_rows(old: np.ndarray, new: np.ndarray) -> torch.Tensor:
    """For each id of the new vocabulary (row i + 1), its row in the old one's table, 0 when it had none."""
    return torch.from_numpy(Vocabs.lookup(old, new))
