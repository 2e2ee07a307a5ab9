"""Feed cursors: where one walk through a user's feed stands, signed so a client cannot forge one.

A walk is the sequence of pages a client reads by handing back each page's
``next_cursor``. The cursor carries everything the next page needs to continue
without a duplicate or a gap, so the server keeps no per-walk state:

* the snapshot the walk started on (every page of a walk comes from it, even
  after a newer snapshot is published),
* the user (a cursor is refused for anyone else), and the experiment arm the walk
  is served under (every page of a walk is in the arm its first page was),
* the position in the precomputed list (the user's feed, or trending),
* the videos already served from live search, as catalogue positions of that
  snapshot (sorted, delta-encoded and compressed: a few bytes per item), plus
  the ids of videos the snapshot's catalogue does not have (added through the API),
* the last few videos served, so the creator cap holds across the boundary to
  the next page when that page comes from live search.

The token is ``base64url(payload || HMAC-SHA256(secret, payload)[:16])`` with
the payload in MessagePack. It is opaque to clients, not secret: it is signed,
not encrypted, so put nothing in it a user may not see.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import msgspec
import numpy as np

from rec_core.atomic import exclusive_lock, write_bytes_atomic

log = logging.getLogger(__name__)

VERSION = 1
TAG_BYTES = 16
SECRET_FILE = "api/cursor_secret"
SECRET_BYTES = 32
MAX_TOKEN_CHARS = 64 * 1024  # a walk of ~10,000 live items; anything longer is not one of ours


class CursorError(ValueError):
    """A cursor that cannot be used: ``kind`` is ``malformed``, ``tampered``, ``wrong_user`` or ``expired``."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


class Cursor(msgspec.Struct, frozen=True, array_like=True):
    snapshot_id: str
    user_id: str
    source: str  # "feed" (the user's precomputed feed), "trending", or "live" (no precomputed list)
    position: int  # next index of the precomputed list to look at
    live_codes: bytes = b""  # catalogue positions served from live search, see encode_codes
    live_extra: tuple[str, ...] = ()  # served ids outside the snapshot's catalogue
    page: int = 1  # pages served so far in this walk
    version: int = VERSION
    issued_at: int = 0  # unix seconds, set when signed; cursors from before expiry existed read as 0 (expired)
    served: int = 0  # items served so far in this walk: the walk position of the next page's first item
    placement: tuple[str, ...] = ()  # (experiment, arm, variant) the walk is served under; () for none
    # The walk's last window - 1 videos, oldest first: the creator cap of the next live page counts their creators.
    recent_videos: tuple[str, ...] = ()

    def served_codes(self) -> np.ndarray:
        return decode_codes(self.live_codes)


def encode_codes(codes: Iterable[int] | np.ndarray) -> bytes:
    """Sorted unique non-negative ints as zlib(delta uint32): about 1-2 bytes each for a walk's codes."""
    arr = np.unique(np.asarray(list(codes) if not isinstance(codes, np.ndarray) else codes, dtype=np.int64))
    if len(arr) == 0:
        return b""
    if arr[0] < 0 or arr[-1] >= 2**32:
        raise ValueError("codes must be in [0, 2**32)")
    deltas = np.diff(arr, prepend=0).astype("<u4")
    return zlib.compress(deltas.tobytes(), 6)


def decode_codes(blob: bytes) -> np.ndarray:
    if not blob:
        return np.zeros(0, dtype=np.int64)
    try:
        raw = zlib.decompress(blob, bufsize=4096)
    except zlib.error as exc:
        raise CursorError("malformed", "cursor has a corrupt served-items list") from exc
    if len(raw) % 4:
        raise CursorError("malformed", "cursor has a corrupt served-items list")
    return np.cumsum(np.frombuffer(raw, dtype="<u4").astype(np.int64))


class CursorSigner:
    """Signs and checks cursors with one secret (shared by every API worker).

    With ``ttl_s``, a cursor is refused as ``expired`` that long after it was signed: a leaked cursor
    stops working, and a walk left open for hours restarts on the newest snapshot instead of an old one.
    """

    def __init__(self, secret: bytes, ttl_s: int | None = None) -> None:
        if len(secret) < 16:
            raise ValueError("cursor secret must be at least 16 bytes")
        self._secret = secret
        self._ttl_s = ttl_s
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Cursor)

    def _tag(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:TAG_BYTES]

    def encode(self, cursor: Cursor, *, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        payload = self._encoder.encode(msgspec.structs.replace(cursor, issued_at=issued))
        return base64.urlsafe_b64encode(payload + self._tag(payload)).rstrip(b"=").decode("ascii")

    def encode_if_it_fits(self, cursor: Cursor) -> str | None:
        """:meth:`encode`, or None where the token would be longer than :meth:`decode` accepts: a walk past
        thousands of live items, most of all of videos posted through the API, which it carries by id. The
        caller ends such a walk rather than hand out a cursor that the next request would be refused."""
        token = self.encode(cursor)
        if len(token) <= MAX_TOKEN_CHARS:
            return token
        log.warning(
            "walk of %s ends at %d items: its cursor would be %d characters (at most %d)",
            ascii(cursor.user_id)[:80],
            cursor.served,
            len(token),
            MAX_TOKEN_CHARS,
        )
        return None

    def decode(self, token: str, *, user_id: str, now: float | None = None) -> Cursor:
        """The cursor in ``token``, checked: signed by us, in a version we read, for ``user_id``, not expired."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise CursorError("malformed", "cursor is empty or too long")
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CursorError("malformed", "cursor is not one this API issued") from exc
        # Base64's last character carries unused low bits that decoding ignores, so several spellings give
        # the same bytes; only the one we would have written is accepted, or an altered token could pass.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            raise CursorError("malformed", "cursor is not one this API issued")
        payload, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
        if len(raw) <= TAG_BYTES or not hmac.compare_digest(tag, self._tag(payload)):
            raise CursorError("tampered", "cursor signature does not match: it was altered or not issued here")
        try:
            cursor = self._decoder.decode(payload)
        except msgspec.DecodeError as exc:  # signed by us but unreadable: an older format
            raise CursorError("malformed", "cursor format is not supported by this API version") from exc
        if cursor.version != VERSION:
            raise CursorError("malformed", f"cursor version {cursor.version} is not supported")
        if cursor.user_id != user_id:
            raise CursorError("wrong_user", "cursor belongs to another user")
        if cursor.position < 0 or cursor.source not in ("feed", "trending", "live"):
            raise CursorError("malformed", "cursor has an impossible position")
        age = (time.time() if now is None else now) - cursor.issued_at
        if self._ttl_s is not None and age > self._ttl_s:
            raise CursorError("expired", f"cursor expired: cursors are valid for {self._ttl_s} s after they are issued")
        return cursor


def cursor_secret(configured: str, data_dir: Path) -> bytes:
    """The configured secret, or one created once under the data root and shared by every worker.

    Created under a lock and written whole before its name appears (temp file, fsync, rename), so
    concurrent workers agree on one and a crash never leaves an empty file behind. A file too short to be
    one of ours (left by an older version's crash) is replaced, not waited on: an empty file used to block
    every start. A restart keeps the secret, so cursors survive restarts.
    """
    if configured:
        return configured.encode()
    path = data_dir / SECRET_FILE
    with exclusive_lock(path.parent / ".cursor_secret.lock"):
        if path.is_file():
            secret = path.read_bytes()
            if len(secret) >= SECRET_BYTES:
                return secret
            log.warning("%s is %d bytes, too short to be a secret: replacing it", path, len(secret))
        secret = secrets.token_bytes(SECRET_BYTES)
        write_bytes_atomic(path, secret)
        os.chmod(path, 0o600)
        return secret
