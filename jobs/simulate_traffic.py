"""``python -m jobs.simulate_traffic``: the synthetic world's users open the app against a running feed API.

Each session is one user opening the app: it reads pages of its feed with the
cursors the API hands back, and answers every video it scrolls past the way the
world says that user would (:mod:`rec_core.synthetic.audience`: the planted
affinity, the video's quality and length), posting the events an app posts, each
naming the page's ``request_id``: a watch or a skip with its completion, then a
like, share or comment. It closes the app by chance after each video, the more
likely the less of it was watched, and surely after three skips in a row, ten
pages, or the end of the feed. The API logs every page it served (the impressions) and
takes every event; the next batch joins them (``impression_outcomes`` in the
warehouse).

Needs a data root with a synthetic world (its ``truth/`` folder) and the API
serving a snapshot of it. With API keys configured, pass one that has
``feed:read`` and ``events:write`` in a file (``--api-key-file``). Prints a JSON
summary: sessions, pages, videos viewed, the rates the app saw, request errors,
and pages per second; exit code 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from jobs.cli import settings_for
from rec_core.data.lake import LakeError, lake_for
from rec_core.progress import Progress
from rec_core.settings import Settings
from rec_core.synthetic.audience import Audience, Reaction
from rec_core.synthetic.truth import load_truth

log = logging.getLogger("jobs.simulate_traffic")


@dataclass(slots=True)
class Tally:
    sessions: int = 0
    pages: int = 0
    viewed: int = 0
    watched_through: int = 0  # completion >= 0.8
    liked: int = 0
    shared: int = 0
    skipped: int = 0
    completion_sum: float = 0.0
    events: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, reactions: list[Reaction]) -> None:
        self.viewed += len(reactions)
        self.watched_through += sum(r.completion >= 0.8 for r in reactions)
        self.liked += sum(r.liked for r in reactions)
        self.shared += sum(r.shared for r in reactions)
        self.skipped += sum(r.skipped for r in reactions)
        self.completion_sum += sum(r.completion for r in reactions)

    def error(self, what: str, response: httpx.Response | None) -> None:
        key = f"{what} {response.status_code if response is not None else 'unreachable'}"
        self.errors[key] = self.errors.get(key, 0) + 1

    def summary(self, seconds: float) -> dict[str, object]:
        viewed = max(self.viewed, 1)
        return {
            "sessions": self.sessions,
            "pages": self.pages,
            "videos_viewed": self.viewed,
            "events_posted": self.events,
            "watch_through_80": round(self.watched_through / viewed, 4),
            "like_rate": round(self.liked / viewed, 4),
            "share_rate": round(self.shared / viewed, 4),
            "skip_rate": round(self.skipped / viewed, 4),
            "mean_completion": round(self.completion_sum / viewed, 4),
            "videos_per_session": round(self.viewed / max(self.sessions, 1), 2),
            "request_errors": self.errors,
            "seconds": round(seconds, 1),
            "pages_per_s": round(self.pages / max(seconds, 1e-9), 1),
        }


async def one_session(
    client: httpx.AsyncClient, audience: Audience, user_id: str, limit: int, rng: np.random.Generator, tally: Tally
) -> None:
    habits = audience.habits
    cursor: str | None = None
    skips_in_a_row = 0
    for _ in range(habits.max_pages):
        try:
            r = await client.post("/recommendations", json={"user_id": user_id, "limit": limit, "cursor": cursor})
        except httpx.HTTPError:
            tally.error("page", None)
            return
        if r.status_code != 200:
            tally.error("page", r)
            return
        page = r.json()
        tally.pages += 1
        seen: list[Reaction] = []
        leaving = False
        for reaction in audience.react(user_id, [i["video_id"] for i in page["items"]], rng):
            seen.append(reaction)
            skips_in_a_row = skips_in_a_row + 1 if reaction.skipped else 0
            leaving = skips_in_a_row >= habits.leave_after_skips or habits.leaves_after(reaction, rng)
            if leaving:
                break
        tally.add(seen)
        events = [e for reaction in seen for e in reaction.events(user_id, page["request_id"])]
        if events:
            try:
                posted = await client.post("/events", json={"events": events})
            except httpx.HTTPError:
                posted = None
            if posted is None or posted.status_code != 200:
                tally.error("events", posted)
            else:
                tally.events += len(events)
        if leaving or not page["has_more"]:
            return
        cursor = page["next_cursor"]


async def simulate(
    settings: Settings,
    url: str,
    *,
    users: int,
    sessions_per_user: int,
    limit: int,
    concurrency: int,
    seed: int,
    api_key: str | None,
) -> dict[str, object]:
    truth = load_truth(settings.paths.truth_dir)
    videos = lake_for(settings.paths, settings.batch).read("videos", columns=["video_id", "duration_s"])
    durations = dict(zip(videos["video_id"].to_pylist(), videos["duration_s"].to_pylist(), strict=True))
    audience = Audience(truth, durations)
    rng = np.random.default_rng(seed)
    everyone = audience.users()
    chosen = rng.choice(everyone, size=min(users, len(everyone)), replace=False).tolist()
    plan = [(u, i) for i in range(sessions_per_user) for u in chosen]
    tally = Tally()
    progress = Progress("simulated sessions", len(plan), logger=log)
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for n, (user_id, _) in enumerate(plan):
        queue.put_nowait((n, user_id))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            n, user_id = queue.get_nowait()
            await one_session(client, audience, user_id, limit, np.random.default_rng([seed, n]), tally)
            tally.sessions += 1
            progress.advance()

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return tally.summary(time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="data root with the synthetic world (default: REC_DATA_DIR)")
    parser.add_argument("--url", help="the feed API (default: http://REC_API_HOST:REC_API_PORT)")
    parser.add_argument("--users", type=int, default=200, help="users drawn from the world (default 200)")
    parser.add_argument("--sessions", type=int, default=1, help="sessions per user (default 1)")
    parser.add_argument("--limit", type=int, default=10, help="items per page (default 10)")
    parser.add_argument("--concurrency", type=int, default=8, help="sessions at once (default 8)")
    parser.add_argument("--seed", type=int, help="seed of users and reactions (default: REC_SEED)")
    parser.add_argument("--api-key-file", type=Path, help="a file holding an API key with feed:read, events:write")
    args = parser.parse_args(argv)
    for name in ("users", "sessions", "limit", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    api_key = None
    if args.api_key_file is not None:  # a traceback here read as exit 1, "a request failed"
        try:
            api_key = args.api_key_file.read_text().strip()
        except OSError as exc:
            parser.error(f"--api-key-file: cannot read {args.api_key_file}: {exc.strerror}")
        if not api_key:
            parser.error(f"--api-key-file: {args.api_key_file} is empty")
    settings = settings_for(args)
    url = args.url or f"http://{settings.api.host}:{settings.api.port}"
    try:
        summary = asyncio.run(
            simulate(
                settings,
                url,
                users=args.users,
                sessions_per_user=args.sessions,
                limit=args.limit,
                concurrency=args.concurrency,
                seed=settings.seed if args.seed is None else args.seed,
                api_key=api_key,
            )
        )
    except (FileNotFoundError, LakeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 1 if summary["request_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
