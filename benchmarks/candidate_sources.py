"""The ranker's candidate sources compared on one model version: the towers' top N alone, or with popular videos.

On the lake under ``--data`` and one stored version's towers (``--version``, default the newest), a binary ranker is
trained per variant on the validation window exactly as a release trains it (the towers' top N as of
``valid_start``, then ``--popular`` popular videos by each ``--sources`` count, those the user has not seen and
the towers' list does not hold), and every stack is evaluated as the batch serves it, as of ``test_start``, on the
gate's test users, beside MostPop of that instant (the gate's bar). Differences are paired bootstraps over users.

The question it answers (docs/scaling.md): on the large world the towers' top 200 hold 4.9% of the validation
window's watches and the stack loses to MostPop; does giving the ranker the popular videos too close that gap, and
what does it cost at the default scale, where the towers beat MostPop by far?

    python -m benchmarks.candidate_sources --data D [--popular 0,100 --sources all_time,decayed_30d]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from rec_core.eval.intervals import paired_difference
from rec_core.eval.ranking_metrics import UserMetrics
from rec_core.model.ranking import MOST_POP_AT_TEST, RETRIEVAL, AsOfTestStart, release_config
from rec_core.model.release import _towers, release_data
from rec_core.model.store import ModelStore
from rec_core.progress import setup_logging
from rec_core.rank.candidates import DEFAULT_CANDIDATES, POPULAR_SOURCES
from rec_core.rank.events import RankEvents
from rec_core.rank.examples import DEFAULT_MAX_USERS, as_of_split, build_examples
from rec_core.rank.ranker_training import choose_objective
from rec_core.settings import Settings

METRICS = ("recall@20", "recall@50", "ndcg@20")
log = logging.getLogger(__name__)


def compare(settings: Settings, version: str | None, popular: list[int], sources: list[str]) -> dict:
    store = ModelStore(settings.paths.models_dir)
    loaded = store.load(version)
    data = release_data(settings)
    towers = _towers(loaded, data, settings)
    split = data.split
    frames = (data.videos, data.interactions, data.follows)
    events = RankEvents.build(split.user_ids, *frames)
    view, state = as_of_split(towers, events, split, frames, "valid")
    until = split.cuts("test").t_ms
    config = replace(release_config(settings.seed), objective="binary")
    instant = AsOfTestStart.of(data)
    per_user: dict[str, UserMetrics] = {
        MOST_POP_AT_TEST: instant.most_pop(),
        RETRIEVAL: instant.stack_metrics(towers, None),
    }
    runs: dict[str, dict] = {}
    variants = [(0, sources[0])] + [(p, s) for p in popular if p for s in sources]
    for n_popular, source in variants:
        name = f"ranker, towers' top {DEFAULT_CANDIDATES}" + (f" + {n_popular} popular ({source})" if n_popular else "")
        started = time.perf_counter()
        examples = build_examples(
            view, state, until, DEFAULT_CANDIDATES, DEFAULT_MAX_USERS, config.seed, None, n_popular, source
        )
        ranker, _ = choose_objective(examples, config, ("binary",))
        trained = time.perf_counter()
        per_user[name] = instant.stack_metrics(towers, ranker)
        runs[name] = {
            "candidate_recall": round(examples.candidate_recall, 4),
            "ranker_seconds": round(trained - started, 1),
            "evaluate_seconds": round(time.perf_counter() - trained, 1),
        }
        log.info("%s: %s", name, runs[name])
    table = {name: {m: round(float(values.summary()[m]), 4) for m in METRICS} for name, values in per_user.items()}
    first = next(iter(runs))
    paired = {}
    for name in runs:
        for against in (MOST_POP_AT_TEST, first):
            if name == against:
                continue
            for metric in METRICS:
                d = paired_difference(per_user[name], per_user[against], metric)
                paired[f"{name} - {against}: {metric}"] = f"{d.interval.signed()} {d.verdict}"
    return {
        "version": loaded.version,
        "test_users": len(per_user[RETRIEVAL].users),
        "metrics": table,
        "runs": runs,
        "paired": paired,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a data root with a lake and a stored version")
    parser.add_argument("--version", help="the version whose towers to rank (default: the newest)")
    parser.add_argument("--popular", default="0,100", help="popular videos behind the towers' list, comma-separated")
    parser.add_argument("--sources", default="all_time", help=f"popularity counts, comma-separated: {POPULAR_SOURCES}")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args(argv)
    settings = Settings.load().override(data_dir=args.data.resolve())
    setup_logging(settings.log_level)
    store = ModelStore(settings.paths.models_dir)
    version = args.version or (store.versions() or [None])[-1]
    result = compare(settings, version, [int(p) for p in args.popular.split(",")], args.sources.split(","))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
