"""Cursor encoding and signing (pure logic)."""

from __future__ import annotations

import base64
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rec_core.feed.cursor import (
    MAX_TOKEN_CHARS,
    Cursor,
    CursorError,
    CursorSigner,
    cursor_secret,
    decode_codes,
    encode_codes,
)

SIGNER = CursorSigner(b"0123456789abcdef0123")


@given(st.lists(st.integers(0, 2**32 - 1), max_size=3000))
def test_codes_round_trip(codes: list[int]) -> None:
    assert decode_codes(encode_codes(codes)).tolist() == sorted(set(codes))


def test_a_walk_of_a_thousand_items_stays_small() -> None:
    codes = np.random.default_rng(0).choice(50_000, size=1000, replace=False)
    cursor = Cursor("s20260101T000000Z-abcd", "u1", "feed", 500, encode_codes(codes))
    assert len(SIGNER.encode(cursor)) < 2500


@given(
    st.text(min_size=1, max_size=128),
    st.sampled_from(["feed", "trending", "live"]),
    st.integers(0, 10**6),
    st.lists(st.text(min_size=1, max_size=20), max_size=5),
)
def test_signed_cursors_round_trip(user: str, source: str, position: int, extra: list[str]) -> None:
    cursor = Cursor("s20260101T000000Z-abcd", user, source, position, encode_codes([3, 1, 2]), tuple(extra), 4)
    decoded = SIGNER.decode(SIGNER.encode(cursor), user_id=user)
    assert msgspec.structs.replace(decoded, issued_at=0) == cursor and decoded.issued_at > 0


def test_any_change_to_a_token_is_refused() -> None:
    # Every position and every other base64url character, not a sample: the last character's unused low
    # bits let a random sample pass for a while and then fail CI (three of the ~5,000 edits decoded alike).
    token = SIGNER.encode(Cursor("s20260101T000000Z-abcd", "u1", "feed", 40))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    accepted = []
    for i, old in enumerate(token):
        for c in alphabet.replace(old, ""):
            try:
                SIGNER.decode(token[:i] + c + token[i + 1 :], user_id="u1")
                accepted.append((i, c))
            except CursorError:
                pass
    assert accepted == []


def test_foreign_user_and_foreign_secret() -> None:
    token = SIGNER.encode(Cursor("s20260101T000000Z-abcd", "u1", "feed", 40))
    with pytest.raises(CursorError) as exc:
        SIGNER.decode(token, user_id="u2")
    assert exc.value.kind == "wrong_user"
    with pytest.raises(CursorError) as exc:
        CursorSigner(b"another-secret-of-length").decode(token, user_id="u1")
    assert exc.value.kind == "tampered"


def test_secret_is_created_once_and_kept(tmp_path: Path) -> None:
    first = cursor_secret("", tmp_path)
    assert len(first) == 32 and cursor_secret("", tmp_path) == first
    assert cursor_secret("configured-secret-123", tmp_path) == b"configured-secret-123"


def test_a_cursor_expires_its_ttl_after_it_was_issued() -> None:
    signer = CursorSigner(b"0123456789abcdef0123", ttl_s=3600)
    token = signer.encode(Cursor("s20260101T000000Z-abcd", "u1", "feed", 40), now=1_000_000)
    assert signer.decode(token, user_id="u1", now=1_000_000 + 3600).position == 40
    with pytest.raises(CursorError) as exc:
        signer.decode(token, user_id="u1", now=1_000_000 + 3601)
    assert exc.value.kind == "expired"
    # A cursor signed before expiry existed carries no issue time: it is expired, not valid forever.
    legacy = SIGNER.encode(Cursor("s20260101T000000Z-abcd", "u1", "feed", 40), now=0)
    with pytest.raises(CursorError):
        signer.decode(legacy, user_id="u1")


@pytest.mark.parametrize("left_behind", [b"", b"short"])
def test_a_torn_secret_file_is_replaced_not_waited_on(tmp_path: Path, left_behind: bytes) -> None:
    """An older version killed between creating the file and writing it left it empty, which blocked every start."""
    path = tmp_path / "api" / "cursor_secret"
    path.parent.mkdir()
    path.write_bytes(left_behind)
    secret = cursor_secret("", tmp_path)
    assert len(secret) == 32 and path.read_bytes() == secret and cursor_secret("", tmp_path) == secret


def test_a_cursor_signed_before_recent_videos_existed_still_decodes() -> None:
    """Cursors are arrays: one signed by the API before the walk's recent videos were carried has one field
    fewer. It must read as a walk with no recent items (its next live page counts no prior creators), not be
    refused, or every walk in flight at an upgrade would break."""
    cursor = Cursor("s20260101T000000Z-abcd", "u1", "live", 0, encode_codes([5, 9]), ("x1",), 3, served=40)
    fields = list(msgspec.structs.astuple(msgspec.structs.replace(cursor, issued_at=1_000_000)))
    older = msgspec.msgpack.encode(fields[:-1])  # without recent_videos, as signed before 83dec70
    token = base64.urlsafe_b64encode(older + SIGNER._tag(older)).rstrip(b"=").decode("ascii")
    decoded = SIGNER.decode(token, user_id="u1", now=1_000_000)
    assert decoded.recent_videos == () and decoded.served == 40 and decoded.served_codes().tolist() == [5, 9]
    carried = msgspec.structs.replace(cursor, recent_videos=("v1", "v2"))
    assert SIGNER.decode(SIGNER.encode(carried), user_id="u1").recent_videos == ("v1", "v2")


def test_a_cursor_too_long_to_be_accepted_is_never_issued() -> None:
    """A walk through hundreds of posted videos with long ids (carried by id) got a cursor of 72,670 characters,
    which the next request refused: the walk died with a 400. Now the walk ends at the page before instead."""
    posted = tuple(f"posted-{i:05d}-" + "x" * 100 for i in range(600))
    long = Cursor("s20260101T000000Z-abcd", "u1", "live", 0, encode_codes(range(0, 40_000, 7)), posted, 30)
    assert len(SIGNER.encode(long)) > MAX_TOKEN_CHARS and SIGNER.encode_if_it_fits(long) is None
    short = msgspec.structs.replace(long, live_extra=posted[:100])
    token = SIGNER.encode_if_it_fits(short)
    assert token is not None and SIGNER.decode(token, user_id="u1").live_extra == posted[:100]
