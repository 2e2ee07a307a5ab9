"""``make chaos``: a scripted fault suite against real processes on loopback; prints one Markdown table.

A tiny world is built by the real stages as processes (cached under ``<data root>/chaos/world``), copied
to ``<data root>/chaos/run``, and served by ``python -m feed_api`` on a free loopback port. Each row runs
a steady load in threads (walkers that page through users' feeds following ``next_cursor``, posters
that post events and remember which were acknowledged) while one fault happens:

1. a new snapshot is published (``python -m jobs.pipeline run --reuse-model``) under load;
2. the API process alone gets SIGKILL (not its group: Milvus Lite's child stays behind, as in a real
   crash) and is restarted;
3. the inbox's disk (a tmpfs mounted on ``<run>/inbox``) is filled until ENOSPC, then freed;
4. ``python -m jobs.ingest_inbox`` is SIGKILLed mid-run a few times, then run to completion;
5. ``python -m jobs.materialize_feeds`` is SIGKILLed mid-write a few times, rerun, and the snapshot published.

What must hold in every row: no 5xx outside the moments the API process is down (503s on ``/events``
while the inbox's disk is full are expected and counted apart), every acknowledged event in the lake's
interactions after a final ingest, no duplicate and no gap in any walk (a walk runs to ``has_more``
false or ``WALK_PAGES`` pages, all on one snapshot, its precomputed part equal to that snapshot's feed, nothing
in it the user watched before that snapshot, the creator cap held across its pages),
and during a publish the previous snapshot served until the pointer swap. Exit status 1 if any row fails.

    python -m benchmarks.chaos [--rebuild-world] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import itertools
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from rec_core.settings import Settings

log = logging.getLogger("chaos")
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

SEED = 7
FEED_LENGTH = 100  # short, so that a walk of WALK_PAGES pages crosses from the precomputed feed into live search
SNAPSHOTS_KEEP = 5  # more than this run publishes: no walk may lose its snapshot to a prune
VIDEO_SHARDS, USER_SHARDS = 1, 2
INBOX_TMPFS = "16m"  # room for every event of a run; the fill row takes what is left
ALL_SCOPES = "feed:read,events:write,videos:write,videos:update,metrics:read,docs:read"

WALKERS, POSTERS = 2, 1
WALK_LIMIT, WALK_PAGES = 20, 8
PAGE_PAUSE_S, POST_PAUSE_S = 0.02, 0.05  # a steady load that leaves the 2 shared cores to the batch stages
RETRY_FOR_S = 120.0  # how long a walker keeps retrying one page through an outage before calling it a gap
STOP_GRACE_S = 90.0  # walkers finish the walk they are in when a row ends
STAGE_TIMEOUT_S = 600.0
# One SIGKILL per window, each a fraction of the stage's measured run time: random moments, spread from the
# reading part to the writing at its end (a delay past the end lets the run finish, which the row notes).
KILL_WINDOWS = ((0.3, 0.45), (0.45, 0.6), (0.6, 0.75), (0.75, 0.9), (0.9, 1.0))


# ---- processes ------------------------------------------------------------------------------------------------------


def stage_env(data: Path, **extra: str) -> dict[str, str]:
    """The environment of every process of a run: no REC_* of the caller's, this run's data root and sizes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REC_")}
    env.update(
        PYTHONPATH=str(ROOT),
        REC_DATA_DIR=str(data),
        REC_FEED_LENGTH=str(FEED_LENGTH),
        REC_SNAPSHOTS_KEEP=str(SNAPSHOTS_KEEP),
        **extra,
    )
    return env


def run_stage(args: list[str], data: Path, logs: Path, timeout: float = STAGE_TIMEOUT_S) -> str:
    """``python -m <args>`` to completion; returns its stdout; raises with the log tail if it fails."""
    name = args[0].removeprefix("jobs.").replace(".", "_")
    logfile = logs / f"{name}-{time.monotonic_ns()}.log"
    with logfile.open("wb") as err:
        done = subprocess.run(
            [PY, "-m", *args], env=stage_env(data), cwd=ROOT, stdout=subprocess.PIPE, stderr=err, timeout=timeout
        )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {logfile.read_text()[-2000:]}")
    return done.stdout.decode()


def kill_stage_midway(args: list[str], data: Path, logs: Path, delay: float) -> str:
    """Start ``python -m <args>`` and SIGKILL its process group after ``delay`` s; says how it ended.

    The group, because a stage's helpers (Milvus Lite's server) die with a crashed worker machine too.
    """
    logfile = logs / f"killed-{args[0].removeprefix('jobs.')}-{time.monotonic_ns()}.log"
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            [PY, "-m", *args],
            env=stage_env(data),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(delay)
            return f"finished before the kill (rc {proc.returncode}, {delay:.1f}s)"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return f"killed at {delay:.1f}s"


class Api:
    """``python -m feed_api`` on a fixed loopback port; restartable; every process group it started is remembered."""

    def __init__(self, data: Path, logs: Path, headers: dict[str, str]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.data, self.logs, self.headers = data, logs, headers
        self.proc: subprocess.Popen[bytes] | None = None
        self.groups: list[int] = []
        self.starts = 0

    def start(self, timeout: float = 180.0) -> float:
        """Start and wait for /ready; returns the seconds it took."""
        self.starts += 1
        log_path = self.logs / f"api-{self.starts}.log"
        env = stage_env(self.data, REC_API_PORT=str(self.port), REC_API_RELOAD_MS="200")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [PY, "-m", "feed_api"],
            env=env,
            cwd=ROOT,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.groups.append(self.proc.pid)
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"feed API exited {self.proc.returncode}: {log_path.read_text()[-3000:]}")
            if self.ready_id() is not None:
                return time.monotonic() - started
            time.sleep(0.1)
        raise TimeoutError(f"feed API not ready in {timeout:.0f}s: {log_path.read_text()[-3000:]}")

    def ready_id(self) -> str | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            r = httpx.get(self.url + "/ready", headers=self.headers, timeout=2)
            if r.status_code == 200:
                return r.json()["snapshot_id"]
        return None

    def kill9(self) -> None:
        """SIGKILL the API's own pid, not its group (uvicorn with one worker: the server is the app process)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop_all(self) -> None:
        """End every process group this run started (a killed API's orphaned Milvus Lite child included)."""
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGTERM)
        time.sleep(1.0)
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


def create_key(data: Path) -> dict[str, str]:
    """Headers with a bearer token of every scope, once the API has keys (feed_api/keys.py); none before that."""
    if not (ROOT / "feed_api" / "keys.py").exists():
        return {}
    # REC_DATA_DIR names the root: the CLI reads it whatever the order of its arguments.
    done = subprocess.run(
        [PY, "-m", "feed_api.keys", "create", "--scopes", ALL_SCOPES, "--name", "chaos"],
        env=stage_env(data),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"feed_api.keys create failed ({done.returncode}): {done.stderr}")
    return {"Authorization": f"Bearer {done.stdout.strip().splitlines()[-1]}"}


# ---- the world ------------------------------------------------------------------------------------------------------


def ensure_world(base: Path, rebuild: bool) -> Path:
    """A tiny world with one published snapshot, built once by the real stages as processes."""
    world = base / "world"
    if (world / "snapshots" / "LIVE").is_file() and not rebuild:
        return world
    shutil.rmtree(world, ignore_errors=True)
    building = base / "world.building"
    shutil.rmtree(building, ignore_errors=True)
    logs = base / "logs-world"
    logs.mkdir(parents=True, exist_ok=True)
    log.info("building the chaos world in %s (once; about a minute)", world)
    run_stage(["jobs.generate_data", "--scale", "tiny", "--seed", str(SEED)], building, logs)
    run_stage(
        [
            "jobs.pipeline",
            "run",
            "--epochs",
            "2",
            "--video-shards",
            str(VIDEO_SHARDS),
            "--user-shards",
            str(USER_SHARDS),
        ],
        building,
        logs,
    )
    building.rename(world)  # only a finished world is ever reused
    return world


def mount_inbox(inbox: Path) -> str | None:
    """A small tmpfs on the inbox, so that the fill row fills the inbox's own disk; returns why not, if not."""
    inbox.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={INBOX_TMPFS}", "tmpfs", str(inbox)], capture_output=True, text=True
    )
    return None if done.returncode == 0 else f"mount failed: {done.stderr.strip() or done.returncode}"


def unmount(inbox: Path) -> None:
    if subprocess.run(["umount", str(inbox)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(inbox)], capture_output=True)


def snapshot_feeds(data: Path, snapshot_id: str, users: list[str]) -> dict[str, list[str]]:
    frame = pl.read_parquet(
        data / "snapshots" / snapshot_id / "feeds" / "*.parquet", columns=["user_id", "rank", "video_id"]
    )
    frame = frame.filter(pl.col("user_id").is_in(users)).sort("user_id", "rank")
    return {u: g["video_id"].to_list() for (u,), g in frame.group_by("user_id", maintain_order=True)}


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotFacts:
    """What a walk on one snapshot is checked against, read from the snapshot and its lake version: the walk users'
    feeds, what they watched before its as-of, and every video's creator (None: the lake version was pruned)."""

    feeds: dict[str, list[str]]
    watched: dict[str, set[str]] | None
    creators: dict[str, str] | None


def snapshot_facts(data: Path, snapshot_id: str, users: list[str]) -> SnapshotFacts:
    feeds = snapshot_feeds(data, snapshot_id, users)
    build = json.loads((data / "snapshots" / snapshot_id / "build.json").read_text())
    lake = data / "lake" / build["lake_version"]
    try:
        as_of = pl.lit(build["as_of"]).str.to_datetime(time_zone="UTC")
        interactions = pl.read_parquet(lake / "interactions.parquet", columns=["user_id", "video_id", "ts"])
        before = interactions.filter(pl.col("user_id").is_in(users) & (pl.col("ts") < as_of))
        watched = {u: set(g["video_id"].to_list()) for (u,), g in before.group_by("user_id")}
        creators = dict(pl.read_parquet(lake / "videos.parquet", columns=["video_id", "creator_id"]).iter_rows())
    except (OSError, pl.exceptions.PolarsError):
        return SnapshotFacts(feeds, None, None)
    return SnapshotFacts(feeds, watched, creators)


def live_pointer(data: Path) -> str | None:
    with contextlib.suppress(FileNotFoundError):
        return (data / "snapshots" / "LIVE").read_text().strip()
    return None


def lake_pairs(data: Path) -> pl.DataFrame:
    """The lake's interactions as (user_id, video_id) rows, read through the lake's own reader."""
    from rec_core.data.lake import lake_for

    settings = Settings.load({"REC_DATA_DIR": str(data)})
    return pl.from_arrow(lake_for(settings.paths, settings.batch).read("interactions", columns=["user_id", "video_id"]))


# ---- the load -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP exchange of the load: a status, or None for a connection error."""

    t: float
    op: str  # "page" | "event"
    status: int | None
    detail: str  # the request and the start of the reply, for the report


@dataclasses.dataclass(slots=True)
class Walk:
    user: str
    items: list[str]
    snapshots: list[str]
    complete: bool
    why: str = ""


class Load:
    """Walkers and posters in threads against one URL until :meth:`stop`; everything they saw is kept."""

    def __init__(
        self, url: str, headers: dict[str, str], walk_users: list[str], pairs: Iterator[tuple[str, str]]
    ) -> None:
        self.url, self.headers = url, headers
        self.walk_users, self.pairs = walk_users, pairs
        self.answers: list[Answer] = []
        self.walks: list[Walk] = []
        self.acked: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()  # finish the current walk, then stop
        self._abort = threading.Event()  # stop now
        self._threads = [threading.Thread(target=self._walker, args=(i,), daemon=True) for i in range(WALKERS)]
        self._threads += [threading.Thread(target=self._poster, daemon=True) for _ in range(POSTERS)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + STOP_GRACE_S
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._abort.set()
        for t in self._threads:
            t.join(10)

    def abort(self) -> None:
        """Stop without finishing walks (the API is gone for good)."""
        self._abort.set()

    def post_event(self, client: httpx.Client, kind: str = "watch") -> httpx.Response | None:
        """Post one event on a fresh (user, video) pair; kept as acknowledged on a 200. None: connection error."""
        with self._lock:
            user, video = next(self.pairs)
        event = {"user_id": user, "video_id": video, "type": kind, "watch_time_s": 7.5, "completion": 0.6}
        try:
            r = client.post("/events", json=event)
        except httpx.TransportError as exc:
            self._record(Answer(time.monotonic(), "event", None, type(exc).__name__))
            return None
        now = time.monotonic()
        self._record(Answer(now, "event", r.status_code, _describe("/events", event, r)))
        if r.status_code == 200:
            with self._lock:
                self.acked.append((now, user, video))
        return r

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def _walker(self, index: int) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=15) as client:
            k = index
            while not self._stop.is_set():
                user = self.walk_users[k % len(self.walk_users)]
                k += WALKERS
                walk = self._walk(client, user)
                with self._lock:
                    self.walks.append(walk)

    def _walk(self, client: httpx.Client, user: str) -> Walk:
        walk = Walk(user, [], [], complete=False)
        cursor: str | None = None
        for _ in range(WALK_PAGES):
            body = {"user_id": user, "limit": WALK_LIMIT, "cursor": cursor}
            page, why = self._page(client, body)
            if page is None:
                walk.why = why
                return walk
            walk.items += [item["video_id"] for item in page["items"]]
            walk.snapshots.append(page["snapshot_id"])
            if not page["has_more"]:
                break
            cursor = page["next_cursor"]
            time.sleep(PAGE_PAUSE_S)
        walk.complete = True
        return walk

    def _page(self, client: httpx.Client, body: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """One page, retried through outages (connection errors, 5xx) for up to RETRY_FOR_S."""
        deadline = time.monotonic() + RETRY_FOR_S
        while not self._abort.is_set() and time.monotonic() < deadline:
            try:
                r = client.post("/recommendations", json=body)
            except httpx.TransportError as exc:
                self._record(Answer(time.monotonic(), "page", None, f"{type(exc).__name__}"))
                time.sleep(0.2)
                continue
            self._record(Answer(time.monotonic(), "page", r.status_code, _describe("/recommendations", body, r)))
            if r.status_code == 200:
                return r.json(), ""
            if r.status_code < 500:
                return None, f"{r.status_code} {r.text[:200]}"
            time.sleep(0.2)
        return None, "aborted" if self._abort.is_set() else f"no page in {RETRY_FOR_S:.0f}s"

    def _poster(self) -> None:
        rng = random.Random(SEED)
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=15) as client:
            while not self._stop.is_set():
                self.post_event(client, rng.choice(["watch", "like", "share", "skip"]))
                time.sleep(POST_PAUSE_S)


def _describe(path: str, body: dict[str, Any], r: httpx.Response) -> str:
    shown = {k: (v[:24] + "…" if isinstance(v, str) and len(v) > 24 else v) for k, v in body.items()}
    return f"POST {path} {json.dumps(shown)} -> {r.status_code} {r.text[:300]}"


# ---- judging a row --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Row:
    name: str
    not_run: str = ""
    five_xx: int = 0
    conn_down: int = 0
    five_xx_down: int = 0  # allowed: between the kill and /ready answering again
    expected_503: int = 0
    lost: int | None = None
    duplicates: int = 0
    gaps: int = 0
    snapshot: str = "n/a"
    failures: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    acked: list[tuple[float, str, str]] = dataclasses.field(default_factory=list)

    @property
    def held(self) -> bool:
        return not self.not_run and not self.failures and not self.five_xx and self.lost == 0


def within(t: float, windows: list[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in windows)


class Feeds:
    """The walk users' feeds per snapshot, and what else a walk is checked against (:class:`SnapshotFacts`), read
    the first time a walk names the snapshot."""

    def __init__(self, data: Path, users: list[str]) -> None:
        self.data, self.users = data, users
        self._by_snapshot: dict[str, SnapshotFacts] = {}

    def facts(self, snapshot_id: str) -> SnapshotFacts:
        if snapshot_id not in self._by_snapshot:
            try:
                self._by_snapshot[snapshot_id] = snapshot_facts(self.data, snapshot_id, self.users)
            except (OSError, pl.exceptions.PolarsError):  # pruned (or never there): nothing to compare with
                self._by_snapshot[snapshot_id] = SnapshotFacts({}, None, None)
        return self._by_snapshot[snapshot_id]

    def of(self, snapshot_id: str, user: str) -> list[str] | None:
        return self.facts(snapshot_id).feeds.get(user)


def judge_load(
    row: Row,
    load: Load,
    feeds: Feeds,
    *,
    down: list[tuple[float, float]] | None = None,
    inbox_full: list[tuple[float, float]] | None = None,
) -> None:
    """Count the row's load against the goals: 5xx, connection errors, walk duplicates and gaps."""
    down, inbox_full = down or [], inbox_full or []
    for a in load.answers:
        if a.status is None:
            if within(a.t, down):
                row.conn_down += 1
            else:
                row.failures.append(f"connection error while the API was up: {a.op} {a.detail}")
        elif a.status >= 500:
            if within(a.t, down):
                row.five_xx_down += 1
                if row.five_xx_down == 1:
                    row.notes.append(f"first 5xx while down or starting: {a.detail}")
            elif a.op == "event" and a.status == 503 and within(a.t, inbox_full):
                row.expected_503 += 1
            else:
                row.five_xx += 1
                if row.five_xx <= 3:
                    row.failures.append(f"5xx: {a.detail}")
        elif a.status >= 400 and a.op == "event":
            row.failures.append(f"valid event refused: {a.detail}")
    row.acked = list(load.acked)
    walked, compared, checked = 0, 0, 0
    per_snapshot: Counter[str] = Counter()
    for w in load.walks:
        if w.why == "aborted":  # cut short by the harness's own time limit, not by the API
            continue
        walked += 1
        per_snapshot.update(set(w.snapshots))
        compared += bool(w.snapshots) and feeds.of(w.snapshots[0], w.user) is not None
        checked += bool(w.snapshots) and feeds.facts(w.snapshots[0]).watched is not None
        row.duplicates += len(w.items) - len(set(w.items))
        problem = _walk_problem(w, feeds)
        if problem:
            row.gaps += 1
            if row.gaps <= 3:
                row.failures.append(f"walk of {w.user}: {problem}")
    if row.duplicates:
        row.failures.append(f"{row.duplicates} duplicate items in walks")
    on = ", ".join(f"{n} on {_short(s)}" for s, n in sorted(per_snapshot.items()))
    row.notes.append(
        f"{walked} walks ({on}; {compared} compared with their snapshot's feed, {checked} with its lake's history "
        "and creators), "
        f"{len(load.acked)} events acknowledged, {len(load.answers)} requests"
    )
    if walked == 0 or compared == 0 or checked == 0:
        row.failures.append(
            f"{walked} walks, {compared} compared with a snapshot feed, {checked} with its lake: the check did not run"
        )


def _walk_problem(w: Walk, feeds: Feeds) -> str:
    if not w.complete:
        return f"stopped after {len(w.snapshots)} pages: {w.why}"
    if len(set(w.snapshots)) > 1:
        return f"pages from {len(set(w.snapshots))} snapshots: {sorted(set(w.snapshots))}"
    feed = feeds.of(w.snapshots[0], w.user) if w.snapshots else None
    if feed is not None:
        n = min(len(feed), len(w.items))
        if w.items[:n] != feed[:n]:
            at = next(i for i in range(n) if w.items[i] != feed[i])
            return f"precomputed part differs from snapshot {w.snapshots[0]}'s feed from position {at}"
    facts = feeds.facts(w.snapshots[0]) if w.snapshots else None
    if facts is not None and facts.watched is not None and facts.creators is not None:
        from rec_core.feed.policy import FeedPolicy, check_feed

        if again := set(w.items) & facts.watched.get(w.user, set()):
            return f"served {len(again)} video(s) watched before the snapshot, e.g. {sorted(again)[:3]}"
        # A video the API took since the snapshot is its own creator, as the API has it without a creator_id.
        if broken := check_feed([facts.creators.get(v, v) for v in w.items], FeedPolicy()):
            return f"the creator cap broken at walk position(s) {broken[:5]}"
    return ""


class PointerWatch:
    """Polls /ready and the LIVE pointer (in that order) in a thread, to see which snapshot is served when."""

    def __init__(self, api: Api, data: Path) -> None:
        self.api, self.data = api, data
        self.samples: list[tuple[float, str | None, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PointerWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            served = self.api.ready_id()
            self.samples.append((time.monotonic(), served, live_pointer(self.data)))
            time.sleep(0.05)

    def verdict(self, old: str, new: str) -> tuple[str, list[str]]:
        """The table's text for this publish, and what went wrong."""
        problems = []
        served = [s for _, s, _ in self.samples if s is not None]
        switches = [(a, b) for a, b in itertools.pairwise(served) if a != b]
        if switches != [(old, new)]:
            problems.append(f"served snapshots went {[f'{a}->{b}' for a, b in switches]} (expected {old}->{new})")
        early = [t for t, s, p in self.samples if s == new and p != new]
        if early:
            problems.append(f"{len(early)} /ready answers named {new} before the LIVE pointer did")
        first_pointer = next((t for t, _, p in self.samples if p == new), None)
        first_served = next((t for t, s, _ in self.samples if s == new), None)
        if first_served is None:
            problems.append(f"{new} was never served")
            return f"{_short(old)} throughout; new never served", problems
        lag = f"+{first_served - first_pointer:.1f}s after the swap" if first_pointer is not None else "?"
        return f"{_short(old)} until the swap, then {_short(new)} ({lag})", problems


def _short(snapshot_id: str) -> str:
    return snapshot_id.split("-")[0]


# ---- the rows -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Run:
    data: Path
    logs: Path
    api: Api
    feeds: Feeds
    walk_users: list[str]
    pairs: Iterator[tuple[str, str]]
    rng: random.Random
    inbox_problem: str | None
    acked_before: list[tuple[float, str, str]] = dataclasses.field(default_factory=list)  # by the rows before

    def load(self) -> Load:
        return Load(self.api.url, self.api.headers, self.walk_users, self.pairs)


def row_publish(run: Run) -> Row:
    row = Row("publish a new snapshot under load")
    old = run.api.ready_id() or "?"
    with PointerWatch(run.api, run.data) as watch, run.load() as load:
        time.sleep(2)
        out = run_stage(
            [
                "jobs.pipeline",
                "run",
                "--reuse-model",
                "--video-shards",
                str(VIDEO_SHARDS),
                "--user-shards",
                str(USER_SHARDS),
            ],
            run.data,
            run.logs,
        )
        new = json.loads(out.strip().splitlines()[-1])["published"]
        _serve_until_live(run, new)
    return _judge_publish(row, load, run, watch, old, new)


def row_kill_api(run: Run) -> Row:
    row = Row("kill -9 the API process, restart")
    down: list[tuple[float, float]] = []
    with run.load() as load:
        time.sleep(3)
        before = run.api.ready_id()
        t0 = time.monotonic()
        run.api.kill9()
        try:
            took = run.api.start()
        except (RuntimeError, TimeoutError) as exc:
            down.append((t0, time.monotonic()))
            row.failures.append(f"restart after kill -9 failed: {str(exc)[-1500:]}")
            load.abort()  # nothing to walk against; the next row starts a fresh API
        else:
            down.append((t0, time.monotonic()))
            row.notes.append(f"down {took:.1f}s")
            after = run.api.ready_id()
            if after != before or after != live_pointer(run.data):
                row.failures.append(
                    f"after the restart it serves {after}, before {before}, LIVE {live_pointer(run.data)}"
                )
            time.sleep(4)
    judge_load(row, load, run.feeds, down=down)
    row.snapshot = "n/a (no publish)"
    return row


def row_fill_inbox(run: Run) -> Row:
    row = Row("fill the inbox's disk, free it")
    if run.inbox_problem:
        row.not_run = run.inbox_problem
        return row
    filler = run.data / "inbox" / "chaos-filler.bin"
    full: list[tuple[float, float]] = []
    with run.load() as load, httpx.Client(base_url=run.api.url, headers=run.api.headers, timeout=15) as client:
        time.sleep(2)
        t0 = time.monotonic()
        try:
            filled = _fill(filler)
            time.sleep(3)
            r = load.post_event(client)  # a probe of our own, besides the posters'
            row.notes.append(f"filled {filled >> 10} KiB; an event while full -> {_status(r)}")
            if r is None or r.status_code != 503:
                row.failures.append(f"POST /events while the disk is full -> {_status(r)} (expected 503)")
        finally:
            filler.unlink(missing_ok=True)  # whatever happened, the rows after this one get their disk back
            full.append((t0, time.monotonic()))
        time.sleep(1)
        r = load.post_event(client)
        if r is None or r.status_code != 200:
            row.failures.append(f"POST /events after freeing the disk -> {_status(r)}")
        time.sleep(3)
    judge_load(row, load, run.feeds, inbox_full=full)
    after = [a for a in load.answers if a.op == "event" and a.t > full[0][1] + 1]
    if not any(a.status == 200 for a in after):
        row.failures.append("no event acknowledged after the disk was freed")
    row.notes.append(f"{row.expected_503} x 503 on /events while full (expected)")
    if row.expected_503 == 0:
        row.failures.append("no 503 on /events while the inbox's disk was full")
    row.snapshot = "n/a (no publish)"
    return row


def _status(r: httpx.Response | None) -> str:
    return "connection error" if r is None else f"{r.status_code} {r.text[:200]}"


def _fill(path: Path) -> int:
    """Write until ENOSPC, then top up with small writes so no page is left partly free; returns bytes written."""
    written = 0
    with path.open("wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 10, 1):
            block = b"\0" * chunk
            while True:
                try:
                    written += f.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


def row_kill_ingest(run: Run) -> Row:
    row = Row("kill ingest_inbox mid-write, rerun")
    with run.load() as load:
        time.sleep(3)
        took = timed(lambda: run_stage(["jobs.ingest_inbox"], run.data, run.logs))
        row.notes.append(f"a whole ingest took {took:.1f}s")
        for lo, hi in KILL_WINDOWS:
            time.sleep(2)  # new events for the killed run to take in
            before = _ingest_marks(run.data)
            how = kill_stage_midway(["jobs.ingest_inbox"], run.data, run.logs, took * run.rng.uniform(lo, hi))
            row.notes.append(f"{how}, {_ingest_phase(before, _ingest_marks(run.data))}")
            problem = _lake_unreadable(run.data)
            if problem:
                row.failures.append(f"after a killed ingest the lake is unreadable: {problem}")
        started = time.monotonic()
        run_stage(["jobs.ingest_inbox"], run.data, run.logs)
        time.sleep(2)
    judge_load(row, load, run.feeds)
    # What was acknowledged before the completed run started must be in the lake now, and once only: each pair
    # is posted once, so a second row means a killed run's records were taken in twice.
    taken = {(u, v) for t, u, v in [*run.acked_before, *load.acked] if t < started}
    rows = Counter(zip(*lake_pairs(run.data).to_dict(as_series=False).values(), strict=True))
    missing = sorted(p for p in taken if p not in rows)
    if missing:
        row.failures.append(f"{len(missing)} acknowledged events not in the lake after the ingest, e.g. {missing[:3]}")
    doubled = sorted(p for p in taken if rows[p] > 1)
    if doubled:
        row.failures.append(f"{len(doubled)} acknowledged events in the lake twice, e.g. {doubled[:3]}")
    row.snapshot = "n/a (no publish)"
    return row


def _ingest_marks(data: Path) -> tuple[str, str]:
    """The lake's CURRENT pointer and the inbox's consumed offsets: what an ingest changes, in that order."""
    marks = []
    for path in (data / "lake" / "CURRENT", data / "inbox" / "consumed.json"):
        try:
            marks.append(path.read_text())
        except FileNotFoundError:
            marks.append("")
    return marks[0], marks[1]


def _ingest_phase(before: tuple[str, str], after: tuple[str, str]) -> str:
    committed, consumed = before[0] != after[0], before[1] != after[1]
    if committed and not consumed:
        return "after its lake commit, before marking the inbox consumed"
    if committed:
        return "after its commit and its mark"
    return "before its lake commit" if not consumed else "after marking only (nothing new to commit)"


def timed(step: Callable[[], object]) -> float:
    started = time.monotonic()
    step()
    return time.monotonic() - started


def _lake_unreadable(data: Path) -> str:
    try:
        lake_pairs(data)
    except Exception as exc:  # any failure to read is the finding
        return f"{type(exc).__name__}: {exc}"
    return ""


def row_kill_materialize(run: Run) -> Row:
    row = Row("kill materialize mid-write, rerun, publish")
    old = run.api.ready_id() or "?"
    with PointerWatch(run.api, run.data) as watch, run.load() as load:
        time.sleep(2)
        run_stage(["jobs.ingest_inbox"], run.data, run.logs)
        run_stage(["jobs.build_features"], run.data, run.logs)
        begun = json.loads(
            run_stage(
                ["jobs.pipeline", "begin", "--video-shards", str(VIDEO_SHARDS), "--user-shards", str(USER_SHARDS)],
                run.data,
                run.logs,
            )
        )
        snap = begun["snapshot_id"]
        for shard in range(VIDEO_SHARDS):
            run_stage(["jobs.embed_videos", "--snapshot", snap, "--shard", str(shard)], run.data, run.logs)
        for shard in range(USER_SHARDS):
            run_stage(["jobs.embed_users", "--snapshot", snap, "--shard", str(shard)], run.data, run.logs)
        run_stage(["jobs.load_vectors", "--snapshot", snap], run.data, run.logs)
        run_stage(["jobs.materialize_feeds", "--snapshot", snap, "--trending"], run.data, run.logs)
        feeds_dir = run.data / "snapshots" / snap / "feeds"
        # Shard 1 whole, for the run time; shard 0 killed at moments within it, before it ever finished.
        materialize = ["jobs.materialize_feeds", "--snapshot", snap, "--shard"]
        took = timed(lambda: run_stage([*materialize, "1"], run.data, run.logs))
        row.notes.append(f"a whole shard took {took:.1f}s")
        for lo, hi in KILL_WINDOWS:
            row.notes.append(kill_stage_midway([*materialize, "0"], run.data, run.logs, took * run.rng.uniform(lo, hi)))
            # Whatever is at a final name must be whole: a reader (validate) may look at it now.
            for part in feeds_dir.glob("*.parquet") if feeds_dir.is_dir() else []:
                try:
                    pl.read_parquet(part)
                except (OSError, pl.exceptions.PolarsError) as exc:
                    row.failures.append(f"a killed materialize left a torn {part.name}: {exc}")
        run_stage([*materialize, "0"], run.data, run.logs)
        run_stage(["jobs.publish", "--snapshot", snap], run.data, run.logs)
        _serve_until_live(run, snap)
    return _judge_publish(row, load, run, watch, old, snap)


def _serve_until_live(run: Run, snapshot_id: str) -> None:
    """Keep the load going until the API serves the new snapshot, and a few seconds past the swap."""
    _wait_for(lambda: run.api.ready_id() == snapshot_id, 30)
    time.sleep(3)


def _judge_publish(row: Row, load: Load, run: Run, watch: PointerWatch, old: str, new: str) -> Row:
    judge_load(row, load, run.feeds)
    row.snapshot, problems = watch.verdict(old, new)
    row.failures += problems
    return row


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


# ---- the run --------------------------------------------------------------------------------------------------------


def choose_users_and_pairs(data: Path, rng: random.Random) -> tuple[list[str], Iterator[tuple[str, str]]]:
    """Walk users (never posted for, so their feeds stay exactly the snapshot's) and fresh (user, video) pairs to post.

    The pairs are new to the lake and name known videos (the batch drops events on unknown ones by design), so
    "acknowledged, therefore in the lake afterwards" is checkable pair by pair; each pair is posted once.
    """
    live = live_pointer(data)
    assert live is not None
    users = sorted(
        pl.read_parquet(data / "snapshots" / live / "feeds" / "*.parquet", columns=["user_id"])["user_id"].unique()
    )
    walk_users, post_users = users[:40], users[-120:]
    lake = lake_pairs(data)
    seen = set(zip(lake["user_id"].to_list(), lake["video_id"].to_list(), strict=True))
    from rec_core.data.lake import lake_for

    settings = Settings.load({"REC_DATA_DIR": str(data)})
    videos = sorted(
        pl.from_arrow(lake_for(settings.paths, settings.batch).read("videos", columns=["video_id"]))[
            "video_id"
        ].to_list()
    )

    def pairs() -> Iterator[tuple[str, str]]:
        while True:
            user, video = rng.choice(post_users), rng.choice(videos)
            if (user, video) not in seen:
                seen.add((user, video))
                yield user, video

    return walk_users, pairs()


def to_markdown(rows: list[Row]) -> str:
    head = (
        "| row | 5xx | connection errors while down | acknowledged events lost | walk duplicates | walk gaps "
        "| snapshot served during publish | held? |"
    )
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for i, r in enumerate(rows, 1):
        if r.not_run:
            lines.append(f"| {i}. {r.name} | | | | | | | not run: {r.not_run} |")
            continue
        lost = "?" if r.lost is None else str(r.lost)
        lines.append(
            f"| {i}. {r.name} | {r.five_xx} | {r.conn_down} | {lost} | {r.duplicates} | {r.gaps} | {r.snapshot} "
            f"| {'yes' if r.held else 'NO'} |"
        )
    return "\n".join(lines)


def details(rows: list[Row]) -> str:
    out = []
    for i, r in enumerate(rows, 1):
        extra = []
        if r.five_xx_down:
            extra.append(f"{r.five_xx_down} x 5xx while the process was down or starting")
        out.append(f"- row {i} ({r.name}): " + "; ".join(r.notes + extra))
        out += [f"    - FAIL: {f}" for f in r.failures]
    return "\n".join(out)


def count_lost(rows: list[Row], data: Path, logs: Path) -> None:
    """Every acknowledged event, whichever row acknowledged it, must be in the lake after a complete ingest."""
    try:
        run_stage(["jobs.ingest_inbox"], data, logs)
        pairs = lake_pairs(data)
    except Exception as exc:  # then nothing can be said about losses: every row fails (lost stays unknown)
        for row in rows:
            row.failures.append(f"the final ingest failed: {type(exc).__name__}: {str(exc)[-800:]}")
        return
    present = set(zip(pairs["user_id"].to_list(), pairs["video_id"].to_list(), strict=True))
    for row in rows:
        if not row.not_run:
            missing = [(u, v) for _, u, v in row.acked if (u, v) not in present]
            row.lost = len(missing)
            if missing:
                row.failures.append(f"{len(missing)} acknowledged events not in the lake, e.g. {missing[:3]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild-world", action="store_true", help="build the cached tiny world again")
    parser.add_argument("--keep", action="store_true", help="keep the run's data root (logs are always kept)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    # A TERM (make interrupted, a CI timeout) must still run the cleanup below: processes, the tmpfs mount.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = Settings.load().paths.data_dir.resolve() / "chaos"
    world = ensure_world(base, args.rebuild_world)
    data, logs = base / "run", base / "logs"
    if os.path.ismount(data / "inbox"):  # left by a run that was killed before its cleanup
        unmount(data / "inbox")
    for path in (data, logs):
        shutil.rmtree(path, ignore_errors=True)
    logs.mkdir(parents=True)
    shutil.copytree(world, data)
    inbox_problem = mount_inbox(data / "inbox")
    rng = random.Random(SEED)
    walk_users, pairs = choose_users_and_pairs(data, rng)
    api = Api(data, logs, create_key(data))
    rows: list[Row] = []
    started = time.monotonic()
    try:
        log.info("API on %s, ready in %.1fs", api.url, api.start())
        run = Run(data, logs, api, Feeds(data, walk_users), walk_users, pairs, rng, inbox_problem)
        for step in (row_publish, row_kill_api, row_fill_inbox, row_kill_ingest, row_kill_materialize):
            log.info("row %d: %s", len(rows) + 1, step.__name__)
            if api.ready_id() is None:  # a row before this one left it down: every row starts on a serving API
                api.stop_all()
                api.start()
            try:
                row = step(run)
            except Exception as exc:  # a stage or the harness failed: the row failed, the others still run
                row = Row(step.__name__, failures=[f"{type(exc).__name__}: {str(exc)[-1500:]}"])
            rows.append(row)
            run.acked_before.extend(row.acked)
            log.info("row %d: %s", len(rows), f"FAILED: {row.failures[:2]}" if row.failures else "no failure yet")
        count_lost(rows, data, logs)
    finally:
        api.stop_all()
        if inbox_problem is None:
            if args.keep:  # the tmpfs goes with the unmount
                shutil.copytree(data / "inbox", data / "inbox.kept", dirs_exist_ok=True)
            unmount(data / "inbox")
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    table = to_markdown(rows)
    report = f"{table}\n\n{details(rows)}\n\nwhole run {time.monotonic() - started:.0f}s; logs in {logs}\n"
    (base / "report.md").write_text(report)
    print(report)
    return 0 if rows and all(r.held or r.not_run for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
