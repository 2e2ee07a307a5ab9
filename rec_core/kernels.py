"""numba's kernels compiled before their first call: ``python -m rec_core.kernels`` (``make setup``, the image).

Every kernel is ``@njit(cache=True)``: compiled on its first call in a process that finds nothing in numba's cache
(each module's ``__pycache__``, or ``NUMBA_CACHE_DIR``), then loaded from there in milliseconds. Compiling them all
takes about 50 s of one core, and until now the first pipeline of a new checkout paid it inside its tasks (on the
tiny world: ``train_or_reuse`` 58 s against 32 s in the next run, the first materialization shard 12.6 s against
under a second), as did every new container of the image in its first tasks, and each ``make test`` worker that met a
kernel before the cache held it. Here they compile once, in one process.

The signatures are the ones the pipeline and the API call the kernels with, read off numba's cache index after a
pipeline and an API run (2026-12-07): C-contiguous arrays, read-only where the caller passes a mapped array. A call
with other types compiles on first use, as every call did before; a signature here that no longer type-checks
against its kernel fails ``tests/test_kernels.py``, and a new kernel missing from :data:`SIGNATURES` fails it too.
"""

from __future__ import annotations

import importlib
import logging
import time

from numba import types
from numba.core.registry import CPUDispatcher

log = logging.getLogger(__name__)


def _array(dtype: types.Type, ndim: int, *, readonly: bool = False) -> types.Array:
    return types.Array(dtype, ndim, "C", readonly=readonly)


_I8, _I4, _F4, _F8, _B = types.int64, types.int32, types.float32, types.float64, types.boolean
I1, I2, I4_1, I4_2 = _array(_I8, 1), _array(_I8, 2), _array(_I4, 1), _array(_I4, 2)
F4_1, F4_2, F8_1 = _array(_F4, 1), _array(_F4, 2), _array(_F8, 1)
B1, B2 = _array(_B, 1), _array(_B, 2)
I1_RO, I2_RO, I4_1_RO, F4_1_RO, F4_2_RO = (
    _array(t, n, readonly=True) for t, n in ((_I8, 1), (_I8, 2), (_I4, 1), (_F4, 1), (_F4, 2))
)
B1_RO, B2_RO = _array(_B, 1, readonly=True), _array(_B, 2, readonly=True)

# "module.function" -> the argument types of each compiled version.
SIGNATURES: dict[str, tuple[tuple[types.Type, ...], ...]] = {
    "rec_core.model.lazy_adam._update": ((F4_2, F4_2, F4_2, I1, F4_2, _F4, _F4, _F4, _F4),),
    # The caption text a worker maps from the serving index is read-only; the batch's is not.
    "rec_core.model.history_text_kernel.mean_text": (
        (F4_2, I1, F4_2, I1, I1, I1, B1, F4_2),
        (F4_2, I1, F4_2_RO, I1, I1, I1, B1, F4_2),
    ),
    "rec_core.snapshot.feed_repeats._extra_rows": ((I1, I4_1_RO, _I8),),
    "rec_core.rank.compiled_forest._raw_scores": ((F4_2, I4_1, F8_1, I4_1, _I8),),
    "rec_core.rank.compiled_forest._sigmoid": ((F8_1, _F8),),
    "rec_core.rank.state._lookup": ((I1, F4_1, _I8, I1, I1), (I1_RO, F4_1_RO, _I8, I1, I1)),
    "rec_core.feed.top_k_kernel._top_k_rows": ((F4_2, I4_2, _I8, _I8, _I8, _I8, I2, F4_2),),
    "rec_core.feed.membership_kernel._membership": ((I2, I1, I1, I1, _I8, _B),),
    "rec_core.feed.reasons_kernel.explain_rows": (
        (I1, I1, B1, I1, _I8, B1, I2, B2, F4_2, _F4, I1, I1, I1, I1, I2, B1),
    ),
    "rec_core.feed.policy_kernel._best_waiting": ((_I8, I2, I2, I2, I2, I1, I1, _I8, B1),),
    "rec_core.feed.policy_kernel.greedy_block": (
        (I2_RO, B2, B2_RO, I2, B1_RO, _I8, _I8, _I8, I2, I1),
        (I2, B2, B2, I2, B1_RO, _I8, _I8, _I8, I2, I1),
    ),
    "rec_core.feed.tiled_top_k._thresholds": ((F4_2, I1, I1, I1, _I8),),
    "rec_core.feed.tiled_top_k._scan_tile": ((F4_2, _I8, F4_1, I1, I1, I1, I2, F4_2, I1),),
    "rec_core.feed.tiled_top_k._select_kept": ((I2, F4_2, I1, _I8, I2, F4_2),),
}


def kernel(name: str) -> CPUDispatcher:
    """The kernel ``module.function`` names."""
    module, function = name.rsplit(".", 1)
    return getattr(importlib.import_module(module), function)


def compile_all() -> dict[str, float]:
    """Compile (or load from numba's cache) every version in :data:`SIGNATURES`; the seconds each kernel took."""
    seconds = {}
    for name, signatures in SIGNATURES.items():
        started = time.perf_counter()
        dispatcher = kernel(name)
        for signature in signatures:
            dispatcher.compile(signature)
        seconds[name] = time.perf_counter() - started
        log.info("%s: %d version(s) ready in %.1fs", name, len(signatures), seconds[name])
    return seconds


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    took = compile_all()
    log.info("numba kernels ready: %d in %.1fs", len(took), sum(took.values()))
