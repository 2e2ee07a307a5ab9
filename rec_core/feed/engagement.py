"""The towers' engagement head over candidate lists, in numpy: one implementation for the batch and the live path.

The head (:class:`rec_core.model.towers.EngagementHead`) reads ``[u, v, u * v]`` through ``Linear -> LayerNorm ->
GELU -> Linear``. Its first layer splits by input, ``W_u u + W_v v + W_uv (u * v)``, so a user's list of candidates
costs two (width x dim) @ (dim x hidden) products and no per-pair concatenation. Run in numpy, not torch: under a
busy machine torch's intra-op threads made a one-user page's head cost tens of milliseconds (a thread waiting for a
descheduled peer), against a fraction of one here; and the batch and the API must compute the very same floats for
the ranker to order the same candidates the same way, so both run this one function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

LIST_ROWS = 16  # users' lists through the head at a time: a [16 x width, hidden] block stays in cache
_SQRT_HALF = np.float32(np.sqrt(0.5))
_TANH_SCALE = np.float32(np.sqrt(2.0 / np.pi))
# Abramowitz & Stegun 7.1.26: erf to 1.5e-7, float32 throughout (scipy's erf goes through float64 and cost half
# of the head).
_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(np.float32(a) for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))


@dataclass(frozen=True, slots=True)
class EngagementHead:
    """The head's weights, first layer split by input; float32 throughout."""

    w_u: np.ndarray  # (hidden, dim)
    w_v: np.ndarray
    w_uv: np.ndarray
    b1: np.ndarray  # (hidden,)
    gamma: np.ndarray  # LayerNorm
    beta: np.ndarray
    eps: float
    tanh_gelu: bool  # GELU(approximate="tanh") rather than the exact erf form
    w2: np.ndarray  # (outputs, hidden)
    b2: np.ndarray

    @classmethod
    def of(cls, head: torch.nn.Module) -> EngagementHead:
        """The weights of a towers' engagement head; refuses a head of another shape rather than guess at it."""
        layers = list(getattr(head, "mlp", ()))
        kinds = (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.GELU, torch.nn.Linear)
        if len(layers) != len(kinds) or not all(isinstance(m, k) for m, k in zip(layers, kinds, strict=True)):
            raise ValueError(f"engagement head is not Linear -> LayerNorm -> GELU -> Linear: {head}")
        first, norm, act, last = layers
        if first.in_features % 3:
            raise ValueError(f"engagement head reads {first.in_features} inputs, not [u, v, u * v]")
        dim = first.in_features // 3

        def arr(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)

        w = arr(first.weight)
        return cls(
            w_u=w[:, :dim],
            w_v=np.ascontiguousarray(w[:, dim : 2 * dim].T),
            w_uv=np.ascontiguousarray(w[:, 2 * dim :].T),
            b1=arr(first.bias),
            gamma=arr(norm.weight),
            beta=arr(norm.bias),
            eps=float(norm.eps),
            tanh_gelu=act.approximate == "tanh",
            w2=np.ascontiguousarray(arr(last.weight).T),
            b2=arr(last.bias),
        )

    @property
    def dim(self) -> int:
        return self.w_u.shape[1]

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """float32 (rows, width, outputs): the head on each user of ``u`` (rows, dim) and their list ``v`` (rows,
        width, dim)."""
        rows, width, dim = v.shape
        flat = v.reshape(-1, dim)
        h = flat @ self.w_v
        h += (v * u[:, None, :]).reshape(-1, dim) @ self.w_uv
        h = h.reshape(rows, width, -1)
        # Not u @ w_u.T: numpy sends one row (a live page) to gemv and 16 (a batch block) to gemm, which may sum in
        # another order, and the ranker must see the very same floats in both paths.
        h += ((u[:, None, :] * self.w_u[None, :, :]).sum(axis=-1) + self.b1)[:, None, :]
        h -= h.mean(axis=-1, keepdims=True)
        h /= np.sqrt(np.square(h).mean(axis=-1, keepdims=True) + np.float32(self.eps))
        h *= self.gamma
        h += self.beta
        h *= np.float32(0.5) * (np.float32(1.0) + (self._tanh_gate(h) if self.tanh_gelu else _erf(h * _SQRT_HALF)))
        return (h @ self.w2 + self.b2).astype(np.float32, copy=False)

    def over_lists(
        self,
        user_vecs: np.ndarray,
        items: np.ndarray,
        valid: np.ndarray,
        vectors: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """float32 (rows, width, outputs): the head on each ``valid`` (row's user, ``items[r, c]``), NaN elsewhere;
        ``vectors`` gives the video vectors of an array of ``items``' codes (rows, width) as (rows, width, dim).
        :data:`LIST_ROWS` rows at a time, in every path (the batch's blocks, a live page, the offline evaluation
        the ranker is trained and judged on), so each sees the same floats for the same pair."""
        codes = np.where(valid, items, 0)
        out = np.empty((*items.shape, len(self.b2)), dtype=np.float32)
        for lo in range(0, len(items), LIST_ROWS):
            rows = slice(lo, lo + LIST_ROWS)
            out[rows] = self(user_vecs[rows], vectors(codes[rows]))
        out[~valid] = np.nan
        return out

    @staticmethod
    def _tanh_gate(h: np.ndarray) -> np.ndarray:
        return np.tanh(_TANH_SCALE * (h + np.float32(0.044715) * h**3))


def _erf(x: np.ndarray) -> np.ndarray:
    """erf of float32 ``x`` (absolute error under 2e-7)."""
    a = np.abs(x)
    t = np.float32(1.0) / (np.float32(1.0) + _ERF_P * a)
    poly = np.full_like(t, _ERF_A[0])
    for coefficient in _ERF_A[1:]:
        poly *= t
        poly += coefficient
    poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a
    np.subtract(np.float32(1.0), poly, out=poly)
    return np.copysign(poly, x, out=poly)
