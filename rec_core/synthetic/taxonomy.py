"""The taxonomy: topics and their sub-topics with words and hashtags, in the index order the truth stores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rec_core.synthetic.vocabulary import VOCAB, split_words


@dataclass(frozen=True, slots=True)
class Subtopic:
    name: str  # "topic/sub", e.g. "cooking/baking"
    topic: str
    words: tuple[str, ...]
    hashtags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    words: tuple[str, ...]
    hashtags: tuple[str, ...]
    subtopics: tuple[Subtopic, ...]


@dataclass(frozen=True, slots=True)
class Taxonomy:
    topics: tuple[Topic, ...]

    @property
    def subtopics(self) -> tuple[Subtopic, ...]:
        """All sub-topics in index order: the index is what the truth arrays store."""
        return tuple(s for t in self.topics for s in t.subtopics)

    @property
    def subtopic_names(self) -> list[str]:
        return [s.name for s in self.subtopics]

    @property
    def topic_of(self) -> np.ndarray:
        """Topic index of every sub-topic."""
        return np.repeat(np.arange(len(self.topics)), [len(t.subtopics) for t in self.topics])

    def to_json(self) -> dict[str, Any]:
        return {
            "topics": [
                {
                    "name": t.name,
                    "words": list(t.words),
                    "hashtags": list(t.hashtags),
                    "subtopics": [
                        {"name": s.name, "words": list(s.words), "hashtags": list(s.hashtags)} for s in t.subtopics
                    ],
                }
                for t in self.topics
            ],
            "subtopics": self.subtopic_names,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Taxonomy:
        topics = tuple(
            Topic(
                t["name"],
                tuple(t["words"]),
                tuple(t["hashtags"]),
                tuple(Subtopic(s["name"], t["name"], tuple(s["words"]), tuple(s["hashtags"])) for s in t["subtopics"]),
            )
            for t in data["topics"]
        )
        return cls(topics)


def default_taxonomy() -> Taxonomy:
    topics = []
    for name, (words, tags, subs) in VOCAB.items():
        subtopics = tuple(Subtopic(f"{name}/{s}", name, split_words(w), split_words(h)) for s, (w, h) in subs.items())
        topics.append(Topic(name, split_words(words), split_words(tags), subtopics))
    return Taxonomy(tuple(topics))


def sibling_subtopic(rng: np.random.Generator, tax: Taxonomy, sub: np.ndarray) -> np.ndarray:
    """A random other sub-topic of the same topic (itself when the topic has only one)."""
    sizes = np.array([len(t.subtopics) for t in tax.topics])
    first = np.cumsum(sizes) - sizes
    topic = tax.topic_of[sub]
    size = sizes[topic]
    offset = sub - first[topic]
    step = 1 + (rng.random(len(sub)) * np.maximum(size - 1, 1)).astype(np.int64)
    return np.where(size > 1, first[topic] + (offset + step) % size, sub)
