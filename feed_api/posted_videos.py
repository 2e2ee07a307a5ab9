"""Videos posted to this API worker that no snapshot has yet: checked, made durable, encoded, searchable.

A post is refused (409) when its id is already in the catalogue or was posted
with other content, unless the caller may update videos; the check runs per
micro-batch, before the inbox append, so a refused post writes nothing and two
racing posts of one new id cannot both pass. An accepted one is appended to the
inbox, encoded by the snapshot's own text encoder and video tower, and upserted
into the live snapshot's collection. Each newer snapshot indexes the ones its
batch did not include (:meth:`PostedVideos.adopt`) until a batch takes them in.

Bounded (docs/architecture.md, invariant 9): past ``api_posted_videos_max`` the
oldest leave live search; the inbox still has them for the next batch.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from feed_api.errors import ApiError
from feed_api.snapshot_view import SnapshotView
from feed_api.telemetry import Metrics
from feed_api.video_encoding import encode_in_spaces
from rec_core.data.inbox import InboxWriter
from rec_core.model.text_encoder import TextEncoder, split_runtime
from rec_core.settings import ApiSettings, ModelSettings, PathSettings
from rec_core.snapshot.layout import SnapshotError, live_snapshot_id, snapshot_paths

log = logging.getLogger(__name__)

ENCODE_CHUNK = 256  # videos per forward pass when a snapshot indexes a backlog


class PostedVideos:
    def __init__(
        self,
        model: ModelSettings,
        api: ApiSettings,
        inbox: InboxWriter,
        metrics: Metrics,
        encoders: Mapping[str, TextEncoder] | None = None,
        graph_cache: Path | None = None,
    ) -> None:
        """``encoders``: text encoders already loaded, by ``text_model`` (the forked workers share the parent's);
        ``graph_cache``: where ONNX Runtime encoders keep their exported graphs (TextEncoder)."""
        self._graph_cache = graph_cache
        self._default_text_model = model.text_model  # for models saved before their config named theirs
        self._videos_max = api.posted_videos_max
        self._inbox = inbox
        self._metrics = metrics
        self._encoders: dict[str, TextEncoder] = dict(encoders or {})
        self._encoders_lock = threading.Lock()
        # By id, oldest first: the ones live search drops first.
        self._videos: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._videos_lock = threading.Lock()

    def ids(self) -> list[str]:
        """Posted videos kept for live search, oldest first."""
        with self._videos_lock:
            return list(self._videos)

    def index(self, view: SnapshotView, items: list[tuple[dict[str, Any], bool]]) -> list[np.ndarray | ApiError]:
        """Refuse what may not be posted, make the rest durable in the inbox, then encode it and make it
        searchable in the live collection. The check runs here, one batch at a time, so two racing posts of
        one new id cannot both pass it; and before the append, so a refused post writes nothing."""
        answers: list[np.ndarray | ApiError | None] = [None] * len(items)
        fresh: dict[str, dict[str, Any]] = {}  # id -> payload to write and encode, in this batch
        with view.added.lock:
            for i, (payload, may_update) in enumerate(items):
                vid, digest = payload["video_id"], _hash(payload)
                if vid in fresh:
                    same = _hash(fresh[vid]) == digest
                elif view.added.payload_hash.get(vid) == digest:
                    answers[i] = view.added.vectors[vid]  # the same post again: nothing to write
                    continue
                else:
                    same = False
                exists = vid in fresh or vid in view.video_code or vid in view.added.vectors
                if exists and not same and not may_update:
                    answers[i] = ApiError(
                        409,
                        "video_exists",
                        "video_id",
                        f"video {vid!r} already exists",
                        "post it under a new video_id; changing an existing video needs a key with videos:update",
                    )
                elif not same:
                    fresh[vid] = payload  # a batch may post one id twice (may_update): the last wins
        if fresh:
            self._inbox.append_many([("video", p) for p in fresh.values()])
            vectors = self._encode_into(view, list(fresh.values()))
            self._remember(view, list(fresh.values()))
            self._metrics.count("videos_indexed", len(fresh))
            self._metrics.count("video_batches")
            for i, (payload, _) in enumerate(items):
                if answers[i] is None:
                    answers[i] = vectors[payload["video_id"]]
        assert all(a is not None for a in answers)
        return answers  # type: ignore[return-value]

    def _encode_into(self, view: SnapshotView, payloads: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Encode into every model space of the snapshot (the other versions its experiments' arms serve too);
        returns the vectors in the build model's space."""
        last = {p["video_id"]: p for p in payloads}  # a batch may post one id twice: the last wins
        payloads = list(last.values())
        now = dt.datetime.now(dt.UTC)
        spaces = view.all_spaces()
        encoded = encode_in_spaces(spaces, self._encoder(view), payloads, now)
        for space, vectors in zip(spaces, encoded, strict=True):
            space.store.upsert([p["video_id"] for p in payloads], vectors)
            with space.added.lock:
                for p, vector in zip(payloads, vectors, strict=True):
                    vid = p["video_id"]
                    space.added.vectors[vid] = vector
                    space.added.creators[vid] = p.get("creator_id") or vid
                    space.added.created_ms[vid] = int(now.timestamp() * 1000)
                    space.added.payload_hash[vid] = _hash(p)
        return {p["video_id"]: vector for p, vector in zip(payloads, encoded[0], strict=True)}

    def _remember(self, view: SnapshotView | None, payloads: list[dict[str, Any]]) -> None:
        """Keep posted videos for the next snapshots to index; past ``api_posted_videos_max`` the oldest leave
        live search (the inbox still has them: the next batch takes them into the catalogue)."""
        with self._videos_lock:
            for p in payloads:
                self._videos[p["video_id"]] = p
                self._videos.move_to_end(p["video_id"])
            evicted = []
            while len(self._videos) > self._videos_max:
                evicted.append(self._videos.popitem(last=False)[0])
        if evicted and view is not None:
            self._forget_added(view, evicted)
            log.info("%d posted videos left live search (over api_posted_videos_max)", len(evicted))

    @staticmethod
    def _forget_added(root: SnapshotView, ids: list[str]) -> None:
        for view in root.all_spaces():
            PostedVideos._forget_in_space(view, ids)

    @staticmethod
    def _forget_in_space(view: SnapshotView, ids: list[str]) -> None:
        with view.added.lock:
            ids = [v for v in ids if v in view.added.vectors]
            for vid in ids:
                for table in (view.added.vectors, view.added.creators, view.added.created_ms, view.added.payload_hash):
                    table.pop(vid, None)
        gone = [v for v in ids if v not in view.video_code]
        view.store.delete(gone)
        updated = [v for v in ids if v in view.video_code]  # a catalogue video a post changed: back to the snapshot's
        if updated:
            view.store.upsert(updated, view.video_vectors[[view.video_code[v] for v in updated]])

    def _encoder(self, view: SnapshotView) -> TextEncoder:
        model = view.model.config.get("text_model", self._default_text_model)
        with self._encoders_lock:  # seconds to load: once per process, not once per racing caller
            if model not in self._encoders:
                self._encoders[model] = TextEncoder(model, graph_cache=self._graph_cache)
            return self._encoders[model]

    def adopt(self, view: SnapshotView) -> None:
        """Before a snapshot goes live: load its text encoder, index the posted videos its batch did not include."""
        self._encoder(view)
        with self._videos_lock:
            for vid in [v for v in self._videos if v in view.video_code]:
                del self._videos[vid]  # the batch has it now
            missing = list(self._videos.values())
        for lo in range(0, len(missing), ENCODE_CHUNK):
            self._encode_into(view, missing[lo : lo + ENCODE_CHUNK])
        if missing:
            log.info("snapshot %s: %d videos posted since its batch indexed", view.snapshot_id, len(missing))

    def take(self, view: SnapshotView | None, videos: list[dict[str, Any]]) -> None:
        """Posted videos read from the inbox (other workers', or at start-up): searchable here too."""
        with self._videos_lock:
            new = list({v["video_id"]: v for v in videos if self._videos.get(v["video_id"]) != v}.values())
        self._remember(view, new)
        if view is not None and new:
            with self._videos_lock:
                new = [v for v in new if v["video_id"] in self._videos]  # not already pushed out by the cap
            with view.added.lock:
                stale = [v for v in new if view.added.payload_hash.get(v["video_id"]) != _hash(v)]
            for lo in range(0, len(stale), ENCODE_CHUNK):
                self._encode_into(view, stale[lo : lo + ENCODE_CHUNK])


def _hash(payload: dict[str, Any]) -> int:
    return hash(msgspec.json.encode(payload, order="sorted"))


def preload_encoders(paths: PathSettings, model: ModelSettings) -> dict[str, TextEncoder]:
    """The live snapshot's text encoder, loaded now: called before forking the API's workers, so they share its
    weights (about 90 MiB) instead of each loading a copy. Only the torch runtime, whose loading runs no parallel
    kernel that a fork could leave half-owned (ONNX Runtime starts its thread pools when a session is made);
    any other, or no live snapshot, preloads nothing and each worker loads its own as before."""
    try:
        text_model = _live_text_model(paths, model.text_model)
    except (OSError, ValueError, SnapshotError) as exc:
        log.info("no text encoder preloaded: the live snapshot's model is unreadable (%s)", exc)
        return {}
    if text_model is None or split_runtime(text_model)[1] != "torch":
        return {}
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # whatever loading computes runs on this thread: no pool for the fork to inherit
    try:
        return {text_model: TextEncoder(text_model)}
    except (OSError, ValueError) as exc:  # SettingsError included: each worker will report it as it loads
        log.warning("no text encoder preloaded: %s", exc)
        return {}
    finally:
        torch.set_num_threads(threads)


def _live_text_model(paths: PathSettings, default: str) -> str | None:
    """The ``text_model`` of the live snapshot's model (its copy in the snapshot, else the model store's)."""
    snapshot = live_snapshot_id(paths)
    if snapshot is None:
        return None
    found = snapshot_paths(paths, snapshot)
    build = found.read_build()
    for folder in (found.model_dir / build.model_version, paths.models_dir / build.model_version):
        if (folder / "config.json").is_file():
            return str(json.loads((folder / "config.json").read_text()).get("text_model", default))
    return default
