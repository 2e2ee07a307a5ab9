"""Several uvicorn workers forked from one process that has already imported the app, so they share its memory.

uvicorn's own ``workers=N`` starts each worker with ``spawn``: every worker imports torch, the tokenizer, polars,
pymilvus and the app again, about 580 MiB of private heap each before it loads a snapshot (``make bench``,
bench_serving_memory). Forked after those imports (and after ``gc.freeze()``, so the collector does not write to
every inherited object), the workers share those pages copy-on-write, as they share the snapshot's mapped serving
index. Nothing that holds a thread, a socket to a server or an open file of a snapshot is created before the fork:
the parent imports modules, loads the live snapshot's text encoder (weights only, no thread pool:
:func:`feed_api.posted_videos.preload_encoders`) and binds the listening socket, and each worker builds its own
app by calling the factory it is handed.

The parent supervises: SIGTERM or SIGINT stops every worker, and a worker that dies on its own is forked again, so
one crash does not halve the service until a restart.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 1.0  # between re-forks of a worker that keeps dying, so a crash loop does not spin a core


def serve_forked(factory: Callable[[], Any], host: str, port: int, workers: int, **uvicorn_options: Any) -> int:
    """Serve the app ``factory`` builds, in each of ``workers`` forked uvicorn workers on one listening socket.
    Whatever the factory's module imported, and whatever the factory holds, is shared by the workers."""
    from rec_core.feed import policy

    policy.warm_up()  # its compiled code too
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    gc.collect()
    gc.freeze()
    children: dict[int, int] = {}  # pid -> worker number
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            _signal(pid, signum)

    for worker in range(workers):
        children[_fork(factory, sock, worker, uvicorn_options)] = worker
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        worker = children.pop(pid, None)
        if worker is None or stopping:
            continue
        log.error("worker %d (pid %d) exited with status %d; forking it again", worker, pid, status)
        time.sleep(RESTART_PAUSE_S)
        children[_fork(factory, sock, worker, uvicorn_options)] = worker
    sock.close()
    return 0


def _fork(factory: Callable[[], Any], sock: socket.socket, worker: int, uvicorn_options: dict[str, Any]) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The worker: default signal handling (uvicorn installs its own), then one uvicorn server on the shared socket.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    code = 1
    try:
        import uvicorn

        uvicorn.Server(uvicorn.Config(factory, factory=True, workers=1, **uvicorn_options)).run(sockets=[sock])
        code = 0
    except BaseException:  # the worker must end here, never return into the parent's loop
        log.exception("worker %d failed", worker)
    finally:
        os._exit(code)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
