"""``python -m feed_api``: serve the feed API with the ASGI server the settings name.

uvicorn is the default because it measured better on this app (``make bench``,
benchmarks/bench_api.py: the same page throughput as granian and a much shorter
tail at half load); granian stays available with ``REC_API_SERVER=granian``.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

from feed_api.auth import check_bind
from feed_api.forked_workers import serve_forked
from feed_api.keys import KeyStore
from rec_core.settings import Settings, SettingsError

APP = "feed_api.app:create_app"


def main() -> int:
    try:
        settings = Settings.load()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        auth = check_bind(settings.api.host, KeyStore(settings.paths.keys_path))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"feed API on http://{settings.api.host}:{settings.api.port} ({settings.api.server}, "
        f"{settings.api.workers} worker(s)); docs at /schema, data root {settings.paths.data_dir}\n{auth}",
        flush=True,
    )
    if settings.api.server == "uvicorn":  # the default
        import uvicorn

        options: dict[str, Any] = {
            "log_level": settings.log_level.lower(),
            "access_log": False,
            # X-Forwarded-For is read by the app, and only from REC_API_TRUSTED_PROXIES (feed_api.request_rules);
            # uvicorn's own handling trusts it from 127.0.0.1 by default, which lets any local client pick its address.
            "proxy_headers": False,
        }
        if settings.api.workers > 1:  # forked after the imports, so the workers share them (feed_api.forked_workers)
            from feed_api.app import create_app
            from feed_api.posted_videos import preload_encoders

            encoders = preload_encoders(settings.paths, settings.model)
            factory = functools.partial(create_app, settings, encoders)
            return serve_forked(factory, settings.api.host, settings.api.port, settings.api.workers, **options)
        uvicorn.run(APP, factory=True, host=settings.api.host, port=settings.api.port, **options)
        return 0
    from granian import Granian
    from granian.constants import Interfaces

    Granian(
        APP,
        factory=True,
        address=settings.api.host,
        port=settings.api.port,
        interface=Interfaces.ASGI,
        workers=settings.api.workers,
        log_access=False,
    ).serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
