"""What the API's ranker pays per live request for a user's own state row (``rec_core/rank/profile_state.py``).

``python -m benchmarks.profile_state --data ROOT`` on a data root with a published snapshot whose model carries a
ranker (``make pipeline``): for users the snapshot knows, ``SnapshotView.ranking_for`` with a profile of N random
watches, as a fresh user (the profile is their whole history) and as themselves (the profile is added to their
snapshot row), alternated, best of ``--repeats``. Prints ms a request and requests/s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from feed_api.snapshot_load import load_view
from feed_api.snapshot_view import SnapshotView
from rec_core.model.inference import UserProfile
from rec_core.settings import Settings
from rec_core.snapshot.publish import live_snapshot


def per_request_s(view: SnapshotView, users: list[str], profiles: list[UserProfile], *, fresh: bool) -> float:
    started = time.perf_counter()
    for user, profile in zip(users, profiles, strict=True):
        vector = view.batch_vector(user)
        assert vector is not None
        view.ranking_for(f"fresh-{user}" if fresh else user, vector, profile)
    return (time.perf_counter() - started) / len(users)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="data root with a live snapshot")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--watches", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    settings = Settings.load({"REC_DATA_DIR": str(args.data)})
    live = live_snapshot(settings.paths)
    if live is None:
        parser.error(f"no live snapshot under {args.data}: run `make pipeline` first")
    view = load_view(settings.paths, live)
    try:
        if view.ranking is None:
            parser.error(f"snapshot {view.snapshot_id} applies no ranker")
        state = view.ranking.model.state
        users = [u for u in sorted(view.feeds.user_row) if state.user_rows([u])[0] < state.neutral_user][: args.users]
        rng = np.random.default_rng(0)
        print(f"snapshot {view.snapshot_id}, {len(users)} users the snapshot knows")
        for n in args.watches:
            profiles = [
                UserProfile(
                    watched=view.video_ids[rng.choice(len(view.video_ids), n, replace=False)].tolist(),
                    liked=view.video_ids[rng.choice(len(view.video_ids), n // 8, replace=False)].tolist(),
                    completion_rate=0.5,
                )
                for _ in users
            ]
            best = {True: float("inf"), False: float("inf")}
            for _ in range(args.repeats):
                for fresh in (True, False):
                    best[fresh] = min(best[fresh], per_request_s(view, users, profiles, fresh=fresh))
            for fresh, label in ((True, "fresh user (profile = whole history)"), (False, "known user (row + profile)")):
                s = best[fresh]
                print(f"{n:>4} watches, {label}: {s * 1e3:.3f} ms a request, {1 / s:,.0f} requests/s")
    finally:
        view.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
