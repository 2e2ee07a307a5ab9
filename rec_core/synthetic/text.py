"""Captions and hashtags drawn from a video's sub-topic vocabulary, vectorised over all videos."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from rec_core.synthetic.taxonomy import Taxonomy, sibling_subtopic
from rec_core.synthetic.vocabulary import GENERIC_TAGS, OPENERS, TAILS, TEMPLATES


def _pool(groups: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Flatten word groups: (all words, first index of each group, size of each group)."""
    flat = [w for g in groups for w in g]
    sizes = np.array([len(g) for g in groups])
    return flat, np.cumsum(sizes) - sizes, sizes


def draw_captions(rng: np.random.Generator, tax: Taxonomy, subtopic: np.ndarray) -> list[str]:
    n = len(subtopic)
    words, w_first, w_size = _pool([s.words for s in tax.subtopics])
    t_words, t_first, t_size = _pool([t.words for t in tax.topics])
    topic = tax.topic_of[subtopic]
    size = w_size[subtopic]
    a = (rng.random(n) * size).astype(np.int64)
    b = (a + 1 + (rng.random(n) * (size - 1)).astype(np.int64)) % size  # a different word than a
    a_word = w_first[subtopic] + a
    # Now and then the second word comes from a sibling sub-topic, as real captions blend themes.
    sibling = sibling_subtopic(rng, tax, subtopic)
    b_sib = w_first[sibling] + (rng.random(n) * w_size[sibling]).astype(np.int64)
    b_word = np.where(rng.random(n) < 0.15, b_sib, w_first[subtopic] + b)
    t_word = t_first[topic] + (rng.random(n) * t_size[topic]).astype(np.int64)
    tpl = rng.integers(0, len(TEMPLATES), n)
    opener = rng.integers(0, len(OPENERS), n)
    tail = rng.integers(0, len(TAILS), n)
    return [
        TEMPLATES[k].format(a=words[i], b=words[j], t=t_words[t], o=OPENERS[o], g=TAILS[g]).strip()
        for k, i, j, t, o, g in zip(
            tpl.tolist(), a_word.tolist(), b_word.tolist(), t_word.tolist(), opener.tolist(), tail.tolist(), strict=True
        )
    ]


def _padded(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows as a -1 padded matrix plus row lengths."""
    sizes = np.array([len(r) for r in rows])
    width = max(int(sizes.max()), 1)
    return np.array([r + [-1] * (width - len(r)) for r in rows]), sizes


def draw_hashtags(rng: np.random.Generator, tax: Taxonomy, subtopic: np.ndarray) -> pa.ListArray:
    """1-3 sub-topic tags, maybe a topic tag, maybe generic ones; distinct within a video, built without a row loop."""
    n = len(subtopic)
    sub_tags = [s.hashtags for s in tax.subtopics]
    topic_tags = [t.hashtags for t in tax.topics]
    vocab = sorted({t for g in [*sub_tags, *topic_tags, GENERIC_TAGS] for t in g})
    index = {t: i for i, t in enumerate(vocab)}
    sub_table, _ = _padded([[index[t] for t in g] for g in sub_tags])
    topic_table, topic_size = _padded([[index[t] for t in g] for g in topic_tags])
    generic = np.array([index[t] for t in GENERIC_TAGS])

    # A random order of each video's sub-topic tags (padding sorts last), of which it uses the first 1-3.
    keys = rng.random((n, sub_table.shape[1])) + (sub_table[subtopic] < 0)
    shuffled = np.take_along_axis(sub_table[subtopic], np.argsort(keys, axis=1), axis=1)[:, :3]
    k_sub = rng.integers(1, 4, n)
    topic = tax.topic_of[subtopic]
    topic_tag = topic_table[topic, (rng.random(n) * topic_size[topic]).astype(np.int64)]
    g1 = generic[rng.integers(0, len(generic), n)]
    g2 = generic[rng.integers(0, len(generic), n)]
    cols = np.concatenate([shuffled, topic_tag[:, None], g1[:, None], g2[:, None]], axis=1)
    use = np.concatenate(
        [
            np.arange(shuffled.shape[1])[None, :] < k_sub[:, None],
            (rng.random(n) < 0.5)[:, None],
            (rng.random(n) < 0.6)[:, None],
            (rng.random(n) < 0.3)[:, None],
        ],
        axis=1,
    )
    use &= cols >= 0
    # A topic tag can coincide with a sub-topic tag (e.g. "cooking"); keep the first occurrence only.
    dup = np.zeros_like(use)
    for j in range(1, cols.shape[1]):
        dup[:, j] = ((cols[:, :j] == cols[:, j : j + 1]) & use[:, :j]).any(axis=1)
    use &= ~dup
    counts = use.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    values = pa.array(vocab, pa.string()).take(pa.array(cols[use]))
    return pa.ListArray.from_arrays(pa.array(offsets), values)
