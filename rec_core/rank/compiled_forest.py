"""The ranker's trees compiled: LightGBM's text model flattened into arrays and walked by a numba kernel.

Scoring the candidates is most of what the ranker costs in a batch (3 M pairs x 120 trees a shard; ``py-spy`` put
LightGBM's ``predict`` at 57% of the scoring threads). LightGBM walks one row through one tree at a time, so every
step waits on the last one's loads. Here eight rows walk each tree together: their steps are independent, so the
CPU overlaps them, and a step has no branch to mispredict (the comparison's result indexes the child). The result
is LightGBM's own: the same trees summed in the same order in float64 (raw scores bitwise equal, tested), and
then the objective's output transform.

Only what this walk reproduces exactly is compiled: numerical splits whose missing-value rule is "none" (LightGBM's
choice for every feature that had no missing value in training, as none of the ranker's features have), one tree
per iteration, no linear trees, and the two objectives the ranker trains (``binary``: the sigmoid of the sum;
``lambdarank``: the sum). :meth:`CompiledForest.from_model` says why it declines anything else, and the caller then
uses LightGBM.

Layout: every internal node of every tree, then every leaf, as int32 records ``(feature, threshold bits, left,
right)``; a leaf is its own two children, so a row that reached its leaf stays there while the other seven finish.
Thresholds are stored as the largest float32 not above LightGBM's float64 threshold, which makes ``x <= t32``
exactly ``double(x) <= t`` for float32 features, LightGBM's comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

LANES = 8  # rows walking a tree together; 8 measured faster than 4 (benchmarks/bench_materialize.py's ranker)
_OBJECTIVES = ("binary", "lambdarank")


@njit(cache=True, nogil=True)
def _raw_scores(x: np.ndarray, nodes: np.ndarray, value: np.ndarray, roots: np.ndarray, internal: int) -> np.ndarray:
    threshold = nodes.view(np.float32)
    n = x.shape[0]
    out = np.zeros(n)
    i = 0
    # The eight walks are written out: a loop over a lane array kept them in memory and ran 2x slower.
    while i + 8 <= n:
        for t in range(roots.shape[0]):
            a0 = roots[t]
            a1, a2, a3, a4, a5, a6, a7 = a0, a0, a0, a0, a0, a0, a0
            while min(a0, a1, a2, a3, a4, a5, a6, a7) < internal:
                b = 4 * a0
                a0 = nodes[b + 2 + (x[i, nodes[b]] > threshold[b + 1])]
                b = 4 * a1
                a1 = nodes[b + 2 + (x[i + 1, nodes[b]] > threshold[b + 1])]
                b = 4 * a2
                a2 = nodes[b + 2 + (x[i + 2, nodes[b]] > threshold[b + 1])]
                b = 4 * a3
                a3 = nodes[b + 2 + (x[i + 3, nodes[b]] > threshold[b + 1])]
                b = 4 * a4
                a4 = nodes[b + 2 + (x[i + 4, nodes[b]] > threshold[b + 1])]
                b = 4 * a5
                a5 = nodes[b + 2 + (x[i + 5, nodes[b]] > threshold[b + 1])]
                b = 4 * a6
                a6 = nodes[b + 2 + (x[i + 6, nodes[b]] > threshold[b + 1])]
                b = 4 * a7
                a7 = nodes[b + 2 + (x[i + 7, nodes[b]] > threshold[b + 1])]
            out[i] += value[a0]
            out[i + 1] += value[a1]
            out[i + 2] += value[a2]
            out[i + 3] += value[a3]
            out[i + 4] += value[a4]
            out[i + 5] += value[a5]
            out[i + 6] += value[a6]
            out[i + 7] += value[a7]
        i += 8
    while i < n:
        for t in range(roots.shape[0]):
            a = roots[t]
            while a < internal:
                b = 4 * a
                a = nodes[b + 2 + (x[i, nodes[b]] > threshold[b + 1])]
            out[i] += value[a]
        i += 1
    return out


@njit(cache=True, nogil=True)
def _sigmoid(raw: np.ndarray, scale: float) -> np.ndarray:
    # Element by element through the C library's exp, as LightGBM's std::exp: numpy's vectorised exp can differ
    # from it in the last bit.
    out = np.empty_like(raw)
    for i in range(raw.shape[0]):
        out[i] = 1.0 / (1.0 + np.exp(-scale * raw[i]))
    return out


@dataclass(frozen=True, slots=True)
class CompiledForest:
    nodes: np.ndarray  # int32 (nodes * 4,): feature, float32 threshold bits, left, right
    value: np.ndarray  # float64 (nodes,): a leaf's value, 0 for internal nodes
    roots: np.ndarray  # int32 (trees,)
    internal: int  # nodes below this index are splits, the rest leaves
    n_features: int
    sigmoid: float | None  # binary objective: output 1 / (1 + exp(-sigmoid * sum)); None: the sum

    @classmethod
    def from_model(cls, text: str) -> CompiledForest | str:
        """The forest of LightGBM's text model ``text``, or why it cannot be compiled exactly (LightGBM's to score).

        Raises ValueError for a text that is not a whole model: the kernel does not check its indices, and LightGBM
        itself aborts the process on some damaged texts, so nothing damaged goes on to either."""
        header, trees = _parse(text)
        sizes = header.get("tree_sizes", "").split()
        if "version" not in header or len(sizes) != len(trees):
            raise ValueError(
                f"not a whole LightGBM text model: its header lists {len(sizes)} trees, it holds {len(trees)}"
            )
        try:
            return cls._compiled(header, trees)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"a damaged LightGBM text model: {exc!r}") from exc

    @classmethod
    def _compiled(cls, header: dict[str, str], trees: list[dict[str, str]]) -> CompiledForest | str:
        objective = header.get("objective", "").split()
        if not objective or objective[0] not in _OBJECTIVES:
            return f"objective {header.get('objective')!r} is not one of {_OBJECTIVES}"
        if header.get("num_tree_per_iteration", "1") != "1" or "average_output" in header:
            return "more than one tree per iteration, or averaged trees"
        sigmoid = None
        if objective[0] == "binary":
            sigmoid = next((float(p.split(":")[1]) for p in objective[1:] if p.startswith("sigmoid:")), 1.0)
        splits: list[tuple[int, float, int, int]] = []  # feature, threshold, left, right; children as refs below
        leaves: list[float] = []
        roots: list[int] = []  # >= 0: a split; < 0: ~leaf
        for tree in trees:
            if tree.get("is_linear", "0") != "0" or tree.get("num_cat", "0") != "0":
                return "linear or categorical trees"
            leaf_value = [float(v) for v in tree["leaf_value"].split()]
            first_split, first_leaf = len(splits), len(leaves)
            leaves += leaf_value
            if len(leaf_value) == 1:
                roots.append(~first_leaf)
                continue
            columns = [tree[k].split() for k in ("split_feature", "threshold", "decision_type")]
            children = [[int(c) for c in tree[k].split()] for k in ("left_child", "right_child")]
            for (feature, threshold, decision), left, right in zip(zip(*columns, strict=True), *children, strict=True):
                if int(decision) & 0b1101:  # bit 0: categorical; bits 2-3: missing values other than "none"
                    return f"decision type {decision}: only numerical splits without missing values compile"
                splits.append(
                    (int(feature), float(threshold), *(_ref(c, first_split, first_leaf) for c in (left, right)))
                )
            roots.append(first_split)
        return cls._packed(splits, leaves, roots, int(header["max_feature_idx"]) + 1, sigmoid)

    @classmethod
    def _packed(
        cls,
        splits: list[tuple[int, float, int, int]],
        leaves: list[float],
        roots: list[int],
        n_features: int,
        sigmoid: float | None,
    ) -> CompiledForest:
        internal = len(splits)
        n = internal + len(leaves)
        columns = list(zip(*splits, strict=True)) if splits else [(), (), (), ()]
        feature, left, right = (np.array(columns[k], dtype=np.int64) for k in (0, 2, 3))
        split_threshold = np.array(columns[1], dtype=np.float64)
        links = np.concatenate([_node(left, internal), _node(right, internal)])
        root_nodes = _node(np.array(roots, dtype=np.int64), internal)
        # Checked, because the kernel reads where these point without checking.
        if not (_within(links, n) and _within(root_nodes, n) and _within(feature, n_features)):
            raise ValueError("a tree links outside the forest or splits on a feature the model does not have")
        nodes = np.zeros((n, 4), dtype=np.int32)
        nodes[:internal, 0] = feature
        nodes[:internal, 2], nodes[:internal, 3] = np.split(links, 2)
        nodes[internal:, 2] = nodes[internal:, 3] = np.arange(internal, n)
        threshold = np.full(n, np.inf)
        threshold[:internal] = split_threshold
        nodes[:, 1] = _float32_at_most(threshold).view(np.int32)
        value = np.zeros(n)
        value[internal:] = leaves
        return cls(nodes.reshape(-1), value, root_nodes.astype(np.int32), internal, n_features, sigmoid)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """float64 (rows,): what LightGBM's ``predict`` gives for float32 ``features`` (rows, n_features)."""
        if features.dtype != np.float32 or features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(f"compiled trees read float32 rows of {self.n_features} features")
        x = np.ascontiguousarray(features)
        missing = np.isnan(x)
        if missing.any():  # LightGBM reads a missing value as 0 where no missing values were seen in training
            x = np.where(missing, np.float32(0.0), x)
        raw = _raw_scores(x, self.nodes, self.value, self.roots, self.internal)
        return raw if self.sigmoid is None else _sigmoid(raw, self.sigmoid)


def _parse(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    header: dict[str, str] = {}
    trees: list[dict[str, str]] = []
    for line in text.splitlines():
        if line.startswith("end of trees"):
            break
        key, _, value = line.partition("=")
        if key == "Tree":
            trees.append({})
        elif trees:
            trees[-1][key] = value
        elif line == "average_output":
            header[line] = ""
        elif value:
            header[key] = value
    return header, trees


def _ref(child: int, first_split: int, first_leaf: int) -> int:
    """A child of LightGBM's tree (>= 0: a split of the tree, < 0: ~leaf) as a forest-wide one (the same sign rule)."""
    return first_split + child if child >= 0 else ~(first_leaf + ~child)


def _node(ref: np.ndarray, internal: int) -> np.ndarray:
    """Forest-wide refs as node indices (int64): splits first, then leaves."""
    return np.where(ref >= 0, ref, internal + ~ref)


def _within(index: np.ndarray, size: int) -> bool:
    return not len(index) or bool(index.min() >= 0 and index.max() < size)


def _float32_at_most(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 threshold."""
    out = threshold.astype(np.float32)
    above = out.astype(np.float64) > threshold
    out[above] = np.nextafter(out[above], np.float32(-np.inf))
    return out
