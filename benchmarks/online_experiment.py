"""``make online-eval``: two online experiments through the traffic simulator, end to end, with their reports.

On a data root with a synthetic world and a trained model (``make pipeline``), this:

1. starts two experiments if they are not running: ``towers-vs-pop`` (the model against MostPop, a quarter of
   users each) and ``a-a`` (the model in both arms, half of the users the first one leaves each);
2. publishes a snapshot built for them (``begin_snapshot`` .. ``publish``, the current model) unless the live one
   already is;
3. serves the API on it and lets ``--users`` users of the world walk their feeds (``jobs.simulate_traffic``);
4. takes the impressions and events into the lake (``ingest_inbox``) and writes both experiments' reports
   (``<data root>/reports/experiments/<name>/report.md``), then prints their tables.

The verdict a report gives for each metric (``higher``, ``lower``, ``within noise``) holds for the whole
report at once (Holm's correction over its differences, 5% in all); an A/A experiment should read ``within
noise`` throughout.
Running it again adds another round of sessions on the same snapshot (the report covers every round).

``--experiment NAME ARMS`` (repeatable) runs those experiments instead, for example two model versions side by
side (``python -m jobs.models list`` names them)::

    make online-eval ONLINE_ARGS='--experiment new-vs-old "new=model:0.5,old=m20261203T101500Z-0a1b2c3d:0.5"'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from benchmarks.bench_api import serve
from feed_api.keys import DEV_TOKEN_FILE
from rec_core.data.inbox_merge import ingest_inbox
from rec_core.experiments import registry
from rec_core.experiments.report import report
from rec_core.experiments.spec import parse_arms
from rec_core.model.store import ModelStore
from rec_core.runtime import job_settings
from rec_core.settings import Settings
from rec_core.snapshot.publish import live_snapshot
from rec_core.stages import between, run_stages

log = logging.getLogger("benchmarks.online_experiment")

EXPERIMENTS = {"towers-vs-pop": "towers=model:0.25,pop=most_pop:0.25", "a-a": "a1=model:0.5,a2=model:0.5"}


def ensure_experiments(settings: Settings, experiments: dict[str, str]) -> None:
    running = {e.name: e for e in registry.running(settings.paths.experiments_file)}
    versions = ModelStore(settings.paths.models_dir).versions()
    for name, arms in experiments.items():
        if name not in running:
            registry.start(settings.paths.experiments_file, name, parse_arms(arms), versions)
        elif running[name].arms != parse_arms(arms):
            raise SystemExit(f"experiment {name!r} runs with other arms; stop it or use another data root")


def ensure_snapshot(settings: Settings, experiments: dict[str, str]) -> str:
    """The live snapshot, rebuilt with the current model unless its build already carries the experiments."""
    live = live_snapshot(settings.paths)
    if live is not None:
        built_for = {e["name"] for e in json.loads(live.build_file.read_text()).get("experiments") or []}
        if set(experiments) <= built_for:
            return live.snapshot_id
    log.info("publishing a snapshot built for the experiments")
    values = run_stages(settings, between("begin_snapshot", "publish"), {"video_shards": 2, "user_shards": 2})
    return str(values["snapshot_id"])


def main(argv: list[str] | None = None) -> int:
    from jobs.simulate_traffic import simulate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=4000, help="users of the world who open the app (default 4000)")
    parser.add_argument("--sessions", type=int, default=2, help="sessions per user (default 2)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--experiment",
        nargs=2,
        action="append",
        metavar=("NAME", "ARMS"),
        help="run this experiment instead of the two default ones (repeatable)",
    )
    args = parser.parse_args(argv)
    experiments = dict(args.experiment) if args.experiment else EXPERIMENTS
    settings = job_settings()
    data = settings.paths.data_dir
    ensure_experiments(settings, experiments)
    snapshot = ensure_snapshot(settings, experiments)
    log.info("serving snapshot %s", snapshot)
    # With API keys configured (make demo makes one), the simulator uses the development key.
    dev_token = settings.paths.keys_path.parent / DEV_TOKEN_FILE
    api_key = dev_token.read_text().strip() if dev_token.is_file() else None
    with serve(data, "uvicorn") as (url, _, _):
        summary = asyncio.run(
            simulate(
                settings,
                url,
                users=args.users,
                sessions_per_user=args.sessions,
                limit=10,
                concurrency=args.concurrency,
                seed=args.seed,
                api_key=api_key,
            )
        )
    print(json.dumps({"simulated": summary}, indent=2))
    if summary["request_errors"]:
        return 1
    print(json.dumps({"ingested": ingest_inbox(settings)}, default=str)[:2000])
    for name in experiments:
        report(settings, name)
        print(f"\n{(data / 'reports' / 'experiments' / name / 'report.md').read_text()}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
