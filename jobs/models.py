"""``python -m jobs.models list`` / ``show [VERSION]`` / ``promote VERSION`` / ``prune``: the model versions.

``promote`` is the manual override of the quality gate (for a rollback, say);
it only moves the ``CURRENT`` pointer. ``prune`` deletes what nothing needs any
more (:mod:`rec_core.model.retention`), as every release does at its end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs.cli import settings_for
from rec_core.eval.evaluation import markdown_table
from rec_core.model.ranking import RANKED, has_ranker
from rec_core.model.retention import prune_versions
from rec_core.model.store import ModelStore, ModelStoreError, model_store


def list_versions(store: ModelStore) -> str:
    current = store.current()
    lines = [
        "| version | current | dataset | best epoch | has_ranker | two-tower recall@50 | + ranker recall@50 "
        "| MostPop recall@50 |",
        "| --- |" * 1 + " --- |" * 7,
    ]
    for version in store.versions():
        config = store.read_json(version, "config.json")
        models = store.read_json(version, "metrics.json").get("models", {})
        ours = models.get("two_tower", {}).get("recall@50")
        ranked = models.get(RANKED, {}).get("recall@50")
        pop = models.get("most_pop", {}).get("recall@50")
        lines.append(
            f"| {version} | {'*' if version == current else ''} | {config.get('dataset')} "
            f"| {_epoch(config.get('best_epoch'))} | {'yes' if has_ranker(store.folder(version)) else 'no'} "
            f"| {_fmt(ours)} | {_fmt(ranked)} | {_fmt(pop)} |"
        )
    return "\n".join(lines)


def show(store: ModelStore, version: str | None) -> str:
    version = version or store.current()
    if version is None:
        raise ModelStoreError("no current model; name a version")
    config = store.read_json(version, "config.json")
    metrics = store.read_json(version, "metrics.json")
    folder = store.folder(version)
    return "\n".join(
        [
            f"# {version}{' (current)' if version == store.current() else ''}",
            f"folder: {folder}",
            "config: " + json.dumps({k: v for k, v in config.items() if k not in ("tower", "ranker")}, indent=2),
            "tower: " + json.dumps(config.get("tower"), indent=2),
            "",
            *ranker_lines(config.get("ranker"), has_ranker(folder)),
            "",
            markdown_table(metrics.get("models", {})),
            "",
            *gate_lines(metrics),
            f"curves: {folder / 'curves.png'}",
            f"report: {folder / 'report' / 'report.md'}",
        ]
    )


def ranker_lines(meta: dict | None, present: bool) -> list[str]:
    """The version's ranker: what it was trained on and its cross-validation on the validation window."""
    if not present:
        return ["ranker: none (serves retrieval alone: trained with REC_RANKER=off, or before the ranking stage)"]
    if not meta:
        return ["ranker: yes (files present, no training record in config.json)"]
    examples, k = meta.get("examples", {}), meta.get("eval_at", 20)
    lines = [
        f"ranker: {meta['objective']}, reorders the towers' top {meta['n_candidates']}, {meta.get('rounds')} rounds, "
        f"trained in {meta.get('train_seconds')}s on {examples.get('users')} validation users "
        f"({examples.get('rows')} rows, {_pct(examples.get('positive_share'))} positive, candidate recall "
        f"{_fmt(examples.get('candidate_recall'))})",
        "",
        f"| objective (validation window, out of fold) | ndcg@{k} | recall@{k} | towers' order ndcg@{k} |",
        "| --- | ---: | ---: | ---: |",
    ]
    for objective, cv in meta.get("cv", {}).items():
        chosen = " (chosen)" if objective == meta["objective"] else ""
        cells = [f"{objective}{chosen}", *(_fmt(cv.get(key)) for key in ("ndcg", "recall", "tower_ndcg"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def gate_lines(metrics: dict) -> list[str]:
    gate = metrics.get("gate")
    if not gate:
        return ["gate: not gated yet", ""]
    compared = ", ".join(f"{role} = {key}" for role, key in gate["compared"].items() if key)
    verdict = "passed" if gate["passed"] else "refused"
    return [
        f"gate: {verdict} on {gate['stack']} (as of {gate['as_of']}; {compared}): " + "; ".join(gate["reasons"]),
        "",
    ]


def _epoch(value: float | None) -> str:
    """Where the kept weights were validated, in epochs: 2, or 0.333 for a round inside the first."""
    return "" if value is None else f"{value:g}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every version, the current one starred")
    show_p = sub.add_parser("show", help="config, ranker, metrics, gate and files of a version")
    show_p.add_argument("version", nargs="?")
    promote_p = sub.add_parser("promote", help="make VERSION current (bypasses the gate)")
    promote_p.add_argument("version")
    sub.add_parser(
        "prune", help="delete versions nothing needs any more (keeps REC_MODEL_VERSIONS_KEEP and those in use)"
    )
    args = parser.parse_args(argv)
    settings = settings_for(args, logging=False)
    store = model_store(settings.paths)
    try:
        if args.command == "list":
            print(list_versions(store))
        elif args.command == "show":
            print(show(store, args.version))
        elif args.command == "prune":
            doomed = prune_versions(settings)
            print(f"pruned {len(doomed)} model version(s){': ' if doomed else ''}{', '.join(doomed)}")
        else:
            store.promote(args.version)
            print(f"{args.version} is now current")
    except ModelStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
