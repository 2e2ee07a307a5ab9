"""The id rule (rec_core.ids): its cases, and the scalar and vectorised forms agreeing on any string."""

from __future__ import annotations

import json
import re
import sys
import unicodedata

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rec_core.ids import (
    APOSTROPHE,
    EMPTY,
    ID_PATTERN,
    INVISIBLE,
    MAX_ID_BYTES,
    NOT_TEXT,
    REFUSED_RANGES,
    SPACE_AT_ENDS,
    TOO_LONG,
    WHITESPACE,
    id_problem,
    id_problems,
    is_valid_id,
    sorted_positions,
)

CASES = [
    ("é" * 128, TOO_LONG),  # 128 characters, 256 bytes: what the old character limit let through
    ("é" * 64, None),  # 128 bytes exactly
    ("x" * MAX_ID_BYTES, None),
    ("x" * (MAX_ID_BYTES + 1), TOO_LONG),
    ("😀" * 32, None),
    ("😀" * 32 + "x", TOO_LONG),
    ("abc\n", INVISIBLE),  # the old pattern's "$" matched before the trailing newline
    ("abc\r", INVISIBLE),
    ("a\x00b", INVISIBLE),
    ("a\x7fb", INVISIBLE),
    ("a\x85b", INVISIBLE),  # C1
    ("\u202e", INVISIBLE),  # right-to-left override
    ("user\u202egnp.exe", INVISIBLE),
    ("\u200b", INVISIBLE),  # zero-width space
    ("a\u200db", INVISIBLE),
    ("a\u2066b", INVISIBLE),  # bidi isolate
    ("a\u061cb", INVISIBLE),
    ("\ufeffv1", INVISIBLE),
    ("a\u2028b", INVISIBLE),
    ("v1\ufe0f", INVISIBLE),
    ("a\U000e0041b", INVISIBLE),  # tag character
    ("a\ud800b", INVISIBLE),  # lone surrogate
    ("it's", APOSTROPHE),  # Milvus Lite's SQL takes it unescaped (tests/test_vector_store.py)
    ("x') OR ('1'='1", APOSTROPHE),
    ("a'\u202e", INVISIBLE),  # the first reason in the rule's order, as the vectorised form gives it
    ('say "hi" \\ back`slash;--', None),  # other quotes and SQL-ish characters are fine
    ("", EMPTY),
    (" u1", SPACE_AT_ENDS),
    ("u1 ", SPACE_AT_ENDS),
    ("u1\u3000", SPACE_AT_ENDS),
    ("\xa0u1", SPACE_AT_ENDS),
    ("u 1", None),  # inside is fine
    ("v0000001", None),
    ("ünïcødé-ид-视频", None),
    (None, NOT_TEXT),
    (12, NOT_TEXT),
]


@pytest.mark.parametrize(("value", "reason"), CASES)
def test_the_rule(value: object, reason: str | None) -> None:
    assert id_problem(value) == reason
    assert is_valid_id(value) is (reason is None)


def test_the_vectorised_form_words_the_same_cases_alike() -> None:
    texts = [v for v, _ in CASES if isinstance(v, str) and not _has_surrogate(v)]
    assert id_problems(pl.Series("video_id", texts)).to_list() == [id_problem(v) for v in texts]
    nulls = id_problems(pl.Series("video_id", [None, "ok"], dtype=pl.String))
    assert nulls.to_list() == [None, None] and nulls.name == "video_id"  # null is the caller's to judge


def _has_surrogate(s: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


# Text that goes near every edge: refused characters, whitespace, multi-byte characters around 128 bytes.
_EDGY = st.sampled_from(
    [
        "a",
        "é",
        "😀",
        "\n",
        "\x7f",
        "\x85",
        "\u200b",
        "\u202e",
        "\ufeff",
        " ",
        "\u3000",
        "\xa0",
        "\U000e0041",
        *WHITESPACE,
    ]
)
_IDS = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=140),
    st.text(_EDGY, max_size=8),
    st.builds(
        lambda a, b, c: a + b + c, st.text(_EDGY, max_size=2), st.text("aé😀", max_size=130), st.text(_EDGY, max_size=2)
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_IDS, min_size=1, max_size=30))
def test_scalar_and_vectorised_agree(ids: list[str]) -> None:
    assert id_problems(pl.Series(ids, dtype=pl.String)).to_list() == [id_problem(v) for v in ids]


def _refused(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in REFUSED_RANGES)


def test_the_list_covers_every_invisible_character_python_knows() -> None:
    missed = [
        f"U+{cp:04X}"
        for cp in range(sys.maxunicode + 1)
        if unicodedata.category(chr(cp)) in ("Cc", "Cf", "Cs", "Zl", "Zp") and not _refused(cp)
    ]
    assert not missed


def test_the_list_covers_every_invisible_character_polars_knows() -> None:
    """polars' regex may carry a newer Unicode than Python's unicodedata: its Cf must be refused too."""
    every = pl.Series([chr(cp) for cp in range(sys.maxunicode + 1) if not 0xD800 <= cp <= 0xDFFF], dtype=pl.String)
    flagged = every.filter(every.str.contains(r"\p{Cc}|\p{Cf}|\p{Zl}|\p{Zp}"))
    missed = [f"U+{ord(c):04X}" for c in flagged.to_list() if not _refused(ord(c))]
    assert not missed


def test_whitespace_is_what_polars_strips() -> None:
    """The importer strips ids with polars before checking: what it strips is exactly what is refused at the ends."""
    every = pl.Series([chr(cp) for cp in range(0x3001) if not 0xD800 <= cp <= 0xDFFF], dtype=pl.String)
    stripped = every.filter(every.str.strip_chars() == "").to_list()
    assert sorted(stripped) == sorted(WHITESPACE)


def test_the_importer_uses_the_same_rule() -> None:
    """Bytes, not characters: 128 x "é" passed the importer's old character limit and failed Milvus later."""
    from rec_core.data.file_import import CanonicalInput, run_import
    from rec_core.data.import_spec import ID_APOSTROPHE, ID_CONTROL, ID_TOO_LONG

    ids = ["v1", "é" * 128, "é" * 64, "v\u202e2", "v\u200b3", " v4 ", "abc\n5", "v'8"]
    raw = CanonicalInput(
        videos=pl.DataFrame({"video_id": ids, "caption": ["c"] * len(ids)}),
        interactions=pl.DataFrame({"user_id": ["u1"], "video_id": ["v1"], "ts": ["2024-05-01"]}),
    )
    report = run_import(raw, None)
    bad = {(b.reason, b.column): [e["row"] for e in b.examples] for b in report.bad_rows if b.table == "videos"}
    assert bad == {
        (ID_TOO_LONG, "video_id"): [2],
        (ID_APOSTROPHE, "video_id"): [8],
        (ID_CONTROL, "video_id"): [4, 5, 7],
    }, bad
    assert report.counts["videos"].skipped == 5


def test_a_hashtag_with_a_trailing_newline_is_refused() -> None:
    """The same "$" pitfall in the hashtag pattern: "cats\\n" matched ``^[^...\\s]+$``."""
    from feed_api.bodies import VideoIn, decode
    from feed_api.errors import ApiError

    body = {"video_id": "v1", "caption": "c", "duration": 1, "width": 1, "height": 1, "user_followers": 0}
    with pytest.raises(ApiError) as caught:
        decode(json.dumps({**body, "user_likes": 0, "hashtags": ["ok", "cats\n"]}).encode(), VideoIn)
    assert caught.value.body() and b"hashtags[1]" in caught.value.body()
    assert decode(json.dumps({**body, "user_likes": 0, "hashtags": ["cats"]}).encode(), VideoIn).hashtags == ["cats"]


@pytest.mark.parametrize("tag", ["cats\u200b", "\u202ecats", "ca\u2066ts", "cats\u00ad", "\U000e0041cats"])
def test_a_hashtag_with_an_invisible_character_is_refused(tag: str) -> None:
    """The reasons quote a tag to users ("trending in #tag"): a zero-width or bidi character in one passed the
    tag pattern, which refused only ASCII controls and whitespace."""
    from feed_api.bodies import VideoIn, decode
    from feed_api.errors import ApiError

    body = {"video_id": "v1", "caption": "c", "duration": 1, "width": 1, "height": 1, "user_followers": 0}
    with pytest.raises(ApiError) as caught:
        decode(json.dumps({**body, "user_likes": 0, "hashtags": ["ok", tag]}).encode(), VideoIn)
    assert (caught.value.field, caught.value.reason) == ("hashtags[1]", INVISIBLE)
    assert decode(json.dumps({**body, "user_likes": 0, "hashtags": ["ünïcødé", "猫"]}).encode(), VideoIn).hashtags


@given(st.text(max_size=40))
def test_what_the_documented_pattern_refuses_the_rule_refuses(value: str) -> None:
    """The OpenAPI schema's pattern may be looser than the rule (bytes, astral characters), never stricter: a fuzzer
    sending what the pattern refuses must always get a 400."""
    if re.search(ID_PATTERN, value) is None:
        assert id_problem(value) is not None
    elif value.isascii() and value.strip() == value:
        assert id_problem(value) is None


@settings(max_examples=50, deadline=None)
@given(
    known=st.sets(st.text(alphabet="abé日0", min_size=1, max_size=4), max_size=20),
    keys=st.lists(st.text(alphabet="abé日0", min_size=1, max_size=6), max_size=20),
)
def test_sorted_positions_is_the_index_rule_in_any_width(known: set[str], keys: list[str]) -> None:
    """Each key's place in the sorted ids, -1 where absent, for ids held as Python strings or as a fixed-width
    array (mapped), which is never widened: a key longer than the width is cut for the search only."""
    ordered = sorted(known)
    expected = [ordered.index(k) if k in known else -1 for k in keys]
    for held in (np.array(ordered, dtype=object), np.array(ordered, dtype=str)):
        assert sorted_positions(held, keys).tolist() == expected
    fixed = np.array(["a", "c"])
    assert sorted_positions(fixed, ["c", "cb", "ab", "b"]).tolist() == [1, -1, -1, -1]
