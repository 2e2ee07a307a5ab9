"""Prometheus text metrics of the API, kept in process (no client library needed).

Per route: request counts by status and a latency histogram. Per page: where it
came from (precomputed, live, mixed, trending), so the fallback rate is
``live + mixed`` over all pages. Plus the live snapshot and its age (:func:`gauges`).
(The ranking metrics of evaluation are another thing: rec_core/eval/ranking_metrics.py.)
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from litestar.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from feed_api.snapshots import SnapshotRegistry
    from feed_api.user_state import UserStates

Gauges = dict[str, tuple[float, dict[str, str]]]

# Every label takes values from a fixed set: a client sending made-up methods or paths must not grow the
# series (routes come from path templates, unrouted paths share one label, statuses are HTTP's own).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: defaultdict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * (len(BUCKETS) + 2))
        self.pages: defaultdict[str, int] = defaultdict(int)
        self.counters: defaultdict[str, int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            h = self.latency[(method, route)]
            for i, edge in enumerate(BUCKETS):
                if seconds <= edge:
                    h[i] += 1
                    break
            else:
                h[len(BUCKETS)] += 1
            h[-1] += seconds

    def page(self, source: str) -> None:
        with self._lock:
            self.pages[source] += 1

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def render(self, gauges: Gauges) -> str:
        lines = [
            "# HELP feed_api_requests_total Requests by method, route and status.",
            "# TYPE feed_api_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f'feed_api_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
            lines += [
                "# HELP feed_api_request_seconds Request latency by method and route.",
                "# TYPE feed_api_request_seconds histogram",
            ]
            for (method, route), h in sorted(self.latency.items()):
                labels = f'method="{method}",route="{route}"'
                cumulative = 0
                for edge, n in zip(BUCKETS, h, strict=False):
                    cumulative += int(n)
                    lines.append(f'feed_api_request_seconds_bucket{{{labels},le="{edge}"}} {cumulative}')
                total = cumulative + int(h[len(BUCKETS)])
                lines.append(f'feed_api_request_seconds_bucket{{{labels},le="+Inf"}} {total}')
                lines.append(f"feed_api_request_seconds_sum{{{labels}}} {h[-1]:.6f}")
                lines.append(f"feed_api_request_seconds_count{{{labels}}} {total}")
            lines += [
                "# HELP feed_api_pages_total Feed pages by where their items came from.",
                "# TYPE feed_api_pages_total counter",
            ]
            for source, n in sorted(self.pages.items()):
                lines.append(f'feed_api_pages_total{{source="{source}"}} {n}')
            total_pages = sum(self.pages.values())
            fallback = self.pages.get("live", 0) + self.pages.get("mixed", 0)
            lines += [
                "# HELP feed_api_fallback_ratio Share of pages that needed live Milvus search.",
                "# TYPE feed_api_fallback_ratio gauge",
                f"feed_api_fallback_ratio {fallback / total_pages if total_pages else 0.0:.6f}",
            ]
            for name, n in sorted(self.counters.items()):
                lines += [f"# TYPE feed_api_{name}_total counter", f"feed_api_{name}_total {n}"]
        for name, (value, labels) in sorted(gauges.items()):
            label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines += [f"# TYPE feed_api_{name} gauge", f"feed_api_{name}{{{label_text}}} {value}"]
        return "\n".join(lines) + "\n"


def gauges(registry: SnapshotRegistry, users: UserStates) -> Gauges:
    """The served state now: the live snapshot, its age, the snapshots in memory, the users followed."""
    view = registry.live
    out: Gauges = {
        "ready": (1.0 if view else 0.0, {}),
        "users_tracked": (float(len(users)), {}),
        "snapshots_loaded": (float(len(registry.views())), {}),
    }
    if view is not None:
        created = dt.datetime.fromisoformat(view.build.created_at).timestamp()
        out["snapshot_info"] = (1.0, {"snapshot_id": view.snapshot_id, "model_version": view.build.model_version})
        out["snapshot_age_seconds"] = (round(time.time() - created, 3), {})
        out["videos_added_live"] = (float(len(view.added.vectors)), {})
    return out


def metrics_middleware(metrics: Metrics) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware timing every routed request (``path_template`` keeps the label set small)."""

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                route = scope.get("path_template") or "unrouted"
                method = scope["method"] if scope["method"] in METHODS else "other"
                metrics.observe(method, route, status, time.perf_counter() - started)

        return middleware

    return factory
