"""Authentication and authorization: every route declares the scope it needs, every request proves it has it.

Routes say what they need in their ``opt``: ``{"scope": "feed:read"}``, or
``{"public": True}`` for the probes (/health, /ready). A route that declares
nothing (the OpenAPI pages Litestar adds) needs ``docs:read``, so a new route
is closed until someone decides otherwise.

A request carries ``Authorization: Bearer rk_...`` (:mod:`feed_api.keys`): no or
an unknown key is a 401, a key without the route's scope a 403. With no key
file the server is a development server: everything is allowed, and
:func:`check_bind` has made sure it listens on loopback only. The principal is
left in ``scope["state"]["principal"]`` for handlers whose behaviour depends on
a scope (replacing a catalogue video needs ``videos:update``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from litestar.types import ASGIApp, Receive, Scope, Send

from feed_api.errors import ApiError, send_error
from feed_api.keys import DEVELOPMENT, KeyStore, Principal
from feed_api.request_rules import header

DEFAULT_SCOPE = "docs:read"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="feed-api"'}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, store: KeyStore) -> str:
    """What the server says at start about authentication; raises if it must not start at all."""
    if store.has_keys():
        return f"API keys required (from {store.path})"
    if not is_loopback(host):
        raise RuntimeError(
            f"no API keys in {store.path}, and REC_API_HOST={host} is not a loopback address: refusing to serve "
            "without authentication. Create a key first: python -m feed_api.keys create --scopes feed:read,events:write"
        )
    return (
        f"no API keys in {store.path}: serving WITHOUT authentication, on loopback only ({host}). "
        "Create one with: python -m feed_api.keys create --scopes feed:read,events:write"
    )


def principal_of(scope: Scope) -> Principal:
    """The principal the auth middleware put on this request."""
    return scope.get("state", {}).get("principal", DEVELOPMENT)


def auth_middleware(store: KeyStore, *, host: str) -> Callable[[ASGIApp], ASGIApp]:
    # Off loopback, authentication is required even if the key file vanishes later: never fail open.
    always = not is_loopback(host)

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            opt: dict[str, Any] = getattr(scope.get("route_handler"), "opt", None) or {}
            if opt.get("public"):
                await app(scope, receive, send)
                return
            try:
                principal = _authorize(scope, store, always, opt.get("scope", DEFAULT_SCOPE))
            except ApiError as error:
                await send_error(send, error)
                return
            scope.setdefault("state", {})["principal"] = principal
            await app(scope, receive, send)

        return middleware

    return factory


def _authorize(scope: Scope, store: KeyStore, always: bool, needed: str) -> Principal:
    if not (always or store.has_keys()):
        return DEVELOPMENT
    token = _bearer(scope)
    if token is None:
        raise ApiError(
            401,
            "unauthenticated",
            "Authorization",
            "this endpoint needs an API key: send `Authorization: Bearer <token>`",
            "create a key with `python -m feed_api.keys create --scopes ...`",
            dict(_CHALLENGE),
        )
    principal = store.authenticate(token)
    if principal is None:
        raise ApiError(401, "invalid_key", "Authorization", "the API key is unknown or revoked", None, dict(_CHALLENGE))
    if not principal.allows(needed):
        raise ApiError(403, "forbidden", "Authorization", f"this API key lacks the scope {needed!r}")
    return principal


def _bearer(scope: Scope) -> str | None:
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
