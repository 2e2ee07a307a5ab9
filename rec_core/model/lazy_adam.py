"""A lazy Adam for the towers' id tables: ``torch.optim.SparseAdam``'s update, in one compiled pass.

The id tables get sparse gradients (``TrainConfig.sparse_ids``): one row of values per id a batch looked up,
duplicates included (at the large scale ~111,000 rows for ~66,000 distinct videos a step). SparseAdam coalesces
them, then makes several sparse tensors for the two moments and the step; at the large scale that was a quarter of
a release's time (46 ms of a ~220 ms step, py-spy). Here the rows are grouped by id with a counting sort and each
distinct row is summed and updated in place, moments and weights together: the same arithmetic in float32 (the
moments as ``m += (1 - beta1) (g - m)``, the step as ``lr sqrt(1 - beta2^t) / (1 - beta1^t)``), so the weights
agree with SparseAdam's to float rounding; only the order in which duplicate rows are summed differs.

Only rows a batch names move (a lazy Adam); a row named with a zero gradient, such as the padding row, keeps its
weights: its moments stay zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from numba import njit, prange

# Distinct rows per parallel chunk: each chunk keeps one gradient accumulator for its rows.
CHUNK_ROWS = 2048


@njit(cache=True, nogil=True, parallel=True)
def _update(
    weight: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    ids: np.ndarray,
    values: np.ndarray,
    rate1: np.float32,
    rate2: np.float32,
    eps: np.float32,
    step_size: np.float32,
) -> None:
    """One Adam step of the rows ``ids`` names, their gradient the sum of ``values``' rows per id."""
    n_rows, dim = weight.shape
    starts = np.zeros(n_rows + 1, dtype=np.int64)
    for i in range(len(ids)):
        starts[ids[i] + 1] += 1
    for r in range(n_rows):
        starts[r + 1] += starts[r]
    order = np.empty(len(ids), dtype=np.int64)
    fill = starts[:-1].copy()
    for i in range(len(ids)):
        order[fill[ids[i]]] = i
        fill[ids[i]] += 1
    touched = np.flatnonzero(starts[1:] != starts[:-1])
    for chunk in prange((len(touched) + CHUNK_ROWS - 1) // CHUNK_ROWS):
        grad = np.empty(dim, dtype=np.float32)
        for t in range(chunk * CHUNK_ROWS, min((chunk + 1) * CHUNK_ROWS, len(touched))):
            r = touched[t]
            grad[:] = 0
            for q in range(starts[r], starts[r + 1]):
                grad += values[order[q]]
            for c in range(dim):
                g = grad[c]
                m = exp_avg[r, c] + rate1 * (g - exp_avg[r, c])
                v = exp_avg_sq[r, c] + rate2 * (g * g - exp_avg_sq[r, c])
                exp_avg[r, c] = m
                exp_avg_sq[r, c] = v
                weight[r, c] -= step_size * (m / (np.sqrt(v) + eps))


class LazyAdam(torch.optim.Optimizer):
    """Adam over float32 2-d parameters with sparse (COO) gradients, moving only the rows each gradient names; the
    same update as ``torch.optim.SparseAdam`` (see the module doc)."""

    def __init__(
        self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999)
    ) -> None:
        if lr <= 0 or not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"lr must be positive and betas in [0, 1), got lr={lr}, betas={betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": 1e-8})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("LazyAdam takes no closure")
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                if (
                    not grad.is_sparse
                    or grad.sparse_dim() != 1
                    or param.dtype != torch.float32
                    or param.dim() != 2
                    or grad._values().shape[1:] != param.shape[1:]
                ):
                    raise ValueError("LazyAdam steps float32 2-d parameters with row-sparse gradients (sparse=True)")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.contiguous_format)
                ids = grad._indices()[0].contiguous().numpy()
                if len(ids) and (ids.min() < 0 or ids.max() >= len(param)):  # the kernel writes where they point
                    raise ValueError(f"a gradient names rows outside 0..{len(param) - 1}")
                state["step"] += 1
                step = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                _update(
                    param.detach().numpy(),
                    state["exp_avg"].numpy(),
                    state["exp_avg_sq"].numpy(),
                    ids,
                    grad._values().contiguous().numpy(),
                    np.float32(1 - beta1),  # as torch rounds them: the rate, not 1 - the rounded beta
                    np.float32(1 - beta2),
                    np.float32(group["eps"]),
                    np.float32(step_size),
                )
