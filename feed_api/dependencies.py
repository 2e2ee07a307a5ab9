"""What the controllers are given: the app's services, kept on its state by the app factory.

The read path (:class:`FeedReader`), the live-update side (:class:`LiveUpdates`)
and the Prometheus counters (:class:`Metrics`) are built once per app; each
controller declares the ones it needs (``Provide``) and a handler names them
as parameters (``NamedDependency``). The page fast path, which runs before
Litestar resolves dependencies, reads the same state.
"""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import Provide

from feed_api.live_updates import LiveUpdates
from feed_api.reader import FeedReader
from feed_api.telemetry import Metrics


def app_state(reader: FeedReader, updates: LiveUpdates, telemetry: Metrics) -> State:
    return State({"reader": reader, "updates": updates, "telemetry": telemetry})


def provide_reader(state: State) -> FeedReader:
    reader: FeedReader = state.reader
    return reader


def provide_updates(state: State) -> LiveUpdates:
    updates: LiveUpdates = state.updates
    return updates


def provide_telemetry(state: State) -> Metrics:
    telemetry: Metrics = state.telemetry
    return telemetry


# Each provider is an attribute read: no thread needed.
READER = Provide(provide_reader, sync_to_thread=False)
UPDATES = Provide(provide_updates, sync_to_thread=False)
TELEMETRY = Provide(provide_telemetry, sync_to_thread=False)
