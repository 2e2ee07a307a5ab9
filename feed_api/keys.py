"""API keys: bearer tokens with scopes, stored hashed, managed with ``python -m feed_api.keys``.

A token is ``rk_<key id>_<secret>``. The key id names the record; the secret (32
random bytes) is shown once, at creation, and only its SHA-256 is stored. A
salted slow hash buys nothing here: the secret is random, not a password, so a
stolen file cannot be brute-forced either way, and a fast hash keeps the check
on the request path at a microsecond. The comparison is constant-time.

The file (``REC_API_KEYS_FILE``, default ``<data root>/api/keys.json``, mode
0600) is rewritten atomically under a lock, and the API re-reads it when it
changes, so ``create`` and ``revoke`` take effect without a restart. A revoked
key stays in the file: once any key has existed the API never falls back to
serving without authentication.

    python -m feed_api.keys create --scopes feed:read,events:write [--name app]
    python -m feed_api.keys list
    python -m feed_api.keys revoke <key id>
    python -m feed_api.keys ensure-dev     # make demo: one all-scopes key for this laptop, printed each time
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from rec_core.atomic import exclusive_lock, write_bytes_atomic

PREFIX = "rk_"
# What a key may do. Each route declares the one scope it needs (feed_api.auth).
SCOPES: dict[str, str] = {
    "feed:read": "read any user's feed (POST /recommendations)",
    "events:write": "post interactions and user profiles (POST /events, POST /embeddings/user)",
    "videos:write": "post new videos (POST /embeddings/video)",
    "videos:update": "also replace a video already in the catalogue (implies nothing else)",
    "metrics:read": "read Prometheus metrics (GET /metrics)",
    "docs:read": "read the OpenAPI schema and docs page (/schema)",
}
DEV_TOKEN_FILE = "dev-token"  # make demo's key: a laptop convenience, so a rerun prints the same token
RELOAD_S = 1.0  # how stale the API's view of the file may get: a revoke takes effect within this


class KeyCommandError(ValueError):
    """A key command that cannot be carried out (unknown scope, unknown key id)."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]
    sha256: str
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: the key that authenticated it (None on an open development server)."""

    key_id: str | None
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


DEVELOPMENT = Principal(None, frozenset(SCOPES))  # no key file: a loopback-only server where everything is allowed


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise KeyCommandError(f"unknown or no scopes {unknown or text!r}; known: {', '.join(SCOPES)}")
    return scopes


class KeyStore:
    """The key file, read when it changes (at most every ``RELOAD_S``); thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, ApiKey] = {}
        self._checked = -RELOAD_S
        self.ever_had_keys = False
        self._reload()

    # ---- reading (the API) ----------------------------------------------------------------------------------------

    def has_keys(self) -> bool:
        """True once the file holds any key, revoked ones included (then authentication is required)."""
        self._maybe_reload()
        return self.ever_had_keys

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a bearer token, or None if it is not an active key of this file."""
        self._maybe_reload()
        key_id, _, secret = token.removeprefix(PREFIX).partition("_")
        key = self._keys.get(key_id) if token.startswith(PREFIX) else None
        # Hash and compare even for an unknown id, so timing does not tell which ids exist.
        expected = key.sha256 if key is not None else "0" * 64
        if not hmac.compare_digest(_digest(secret), expected) or key is None or not key.active:
            return None
        return Principal(key.key_id, frozenset(key.scopes))

    def all_keys(self) -> list[ApiKey]:
        self._maybe_reload(force=True)
        return list(self._keys.values())

    def _maybe_reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_S:
            return
        with self._lock:
            self._checked = now
            self._reload()

    def _reload(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._keys, self._stamp = {}, None
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        keys = _decode(self.path.read_bytes(), self.path)
        self._keys, self._stamp = {k.key_id: k for k in keys}, stamp
        self.ever_had_keys = self.ever_had_keys or bool(keys)

    # ---- writing (the CLI) ----------------------------------------------------------------------------------------

    def create(self, scopes: tuple[str, ...], name: str = "") -> tuple[ApiKey, str]:
        """A new key and its bearer token (shown once; only its hash is kept)."""
        for scope in scopes:
            if scope not in SCOPES:
                raise KeyCommandError(f"unknown scope {scope!r}; known: {', '.join(SCOPES)}")
        secret = secrets.token_urlsafe(32)
        key = ApiKey(
            key_id=secrets.token_hex(6),
            name=name,
            scopes=tuple(scopes),
            sha256=_digest(secret),
            created_at=_now(),
        )
        with self._editing() as keys:
            keys.append(key)
        return key, f"{PREFIX}{key.key_id}_{secret}"

    def revoke(self, key_id: str) -> ApiKey:
        with self._editing() as keys:
            for i, key in enumerate(keys):
                if key.key_id == key_id:
                    if key.active:
                        keys[i] = ApiKey(**{**asdict(key), "revoked_at": _now()})
                    return keys[i]
        raise KeyCommandError(f"no key with id {key_id!r} in {self.path}")

    @contextmanager
    def _editing(self) -> Iterator[list[ApiKey]]:
        with exclusive_lock(self.path.parent / f".{self.path.name}.lock"):
            keys = _decode(self.path.read_bytes(), self.path) if self.path.is_file() else []
            yield keys
            body = json.dumps({"keys": [asdict(k) for k in keys]}, indent=1).encode()
            write_bytes_atomic(self.path, body)
            os.chmod(self.path, 0o600)
        self._maybe_reload(force=True)


def _decode(raw: bytes, path: Path) -> list[ApiKey]:
    try:
        rows = json.loads(raw)["keys"]
        return [ApiKey(**{**row, "scopes": tuple(row["scopes"])}) for row in rows]
    except (ValueError, KeyError, TypeError) as exc:
        # Refusing to start beats guessing: a key file that cannot be read must not mean "no keys, open".
        raise RuntimeError(f"API key file {path} is unreadable ({exc}); fix or remove it") from None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    from rec_core.settings import Settings, SettingsError

    # --data-dir before or after the command: SUPPRESS keeps a subcommand's absent flag from erasing the other.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="data root (default: REC_DATA_DIR); keys in <root>/api/",
    )
    parser = argparse.ArgumentParser(
        prog="python -m feed_api.keys", description="Manage the feed API's keys.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", parents=[common], help="create a key and print its token (shown once)")
    create.add_argument("--scopes", required=True, help=f"comma-separated, of: {', '.join(SCOPES)}")
    create.add_argument("--name", default="", help="what the key is for (shown by list)")
    commands.add_parser("list", parents=[common], help="list keys (never their tokens)")
    commands.add_parser(
        "ensure-dev",
        parents=[common],
        help=f"once: a key with every scope for local development, its token kept in <root>/api/{DEV_TOKEN_FILE}",
    )
    revoke = commands.add_parser("revoke", parents=[common], help="revoke a key by id; takes effect within a second")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)
    try:
        env = dict(os.environ)
        if getattr(args, "data_dir", None):
            env["REC_DATA_DIR"] = str(args.data_dir)
        store = KeyStore(Settings.load(env).paths.keys_path)
        if args.command == "create":
            key, token = store.create(parse_scopes(args.scopes), args.name)
            print(f"created key {key.key_id} ({', '.join(key.scopes)}) in {store.path}", file=sys.stderr)
            print("the token is shown only now; send it as `Authorization: Bearer <token>`:", file=sys.stderr)
            print(token)
        elif args.command == "ensure-dev":
            token_file = store.path.parent / DEV_TOKEN_FILE
            if not token_file.is_file():
                _, token = store.create(tuple(SCOPES), "development (make demo)")
                write_bytes_atomic(token_file, token.encode() + b"\n")
                os.chmod(token_file, 0o600)
            print(f"development API key (every scope), kept in {token_file}:", file=sys.stderr)
            print(token_file.read_text().strip())
        elif args.command == "list":
            for key in store.all_keys():
                state = f"revoked {key.revoked_at}" if key.revoked_at else "active"
                print(f"{key.key_id}\t{','.join(key.scopes)}\t{key.name or '-'}\tcreated {key.created_at}\t{state}")
        else:
            key = store.revoke(args.key_id)
            print(f"revoked key {key.key_id} at {key.revoked_at}")
    except (KeyCommandError, SettingsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
