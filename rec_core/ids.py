"""THE rule for an id (video, user, creator): one place, used by the API, the importer, the batch and the indexer.

An id is refused, with a plain reason, when it is

* empty;
* over :data:`MAX_ID_BYTES` bytes of UTF-8: Milvus' VARCHAR ``max_length`` counts bytes, not characters, so
  64 x "é" fits and 128 x "é" does not;
* carrying a character that cannot be seen or that changes how text around it is shown: control characters
  (C0, DEL, C1), line and paragraph separators, every format character (category Cf: bidi controls such as
  U+202E, zero-width ones such as U+200B and U+FEFF, soft hyphen, ...), the other default-ignorable code points
  (variation selectors, Hangul fillers, tag characters, ...) and lone surrogates. Two ids that print alike
  must be the same id, and an id must not reorder the log line or the report it is printed in;
* carrying an apostrophe ('): Milvus Lite writes the ids of an upsert or a delete into SQL between single
  quotes without escaping them, so one such id made an upsert fail after the post was durable, and a crafted
  one (``x') OR ('1'='1``) deleted every other row of the collection from its file (tests/test_vector_store.py);
* starting or ending with whitespace: " u1" and "u1" print alike too. The importer strips such whitespace
  before checking (a CSV cell padded by hand means the same id); the API refuses it, because an API client
  that sends it has a bug worth hearing about. Whitespace inside an id is allowed.

The characters are a fixed list of code point ranges rather than ``unicodedata`` categories, because Python's
``re``/``unicodedata`` and polars' Rust regex carry different Unicode versions: one explicit list makes the
scalar check (:func:`id_problem`) and the vectorised one (:func:`id_problems`) agree on every string, and
tests/test_ids.py checks that the list covers every Cc, Cf, Cs, Zl and Zp character both of them know.
No regex here is anchored with ``$``, which also matches before a trailing newline ("abc\\n").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

MAX_ID_BYTES = 128  # UTF-8 bytes: Milvus' VARCHAR max_length for the primary key

EMPTY = "must not be empty"
TOO_LONG = f"must be at most {MAX_ID_BYTES} bytes in UTF-8"
INVISIBLE = "must not contain control, bidi, zero-width or other invisible characters"
SPACE_AT_ENDS = "must not start or end with whitespace"
APOSTROPHE = "must not contain an apostrophe (')"
NOT_TEXT = "must be a string"

# Refused anywhere in an id (inclusive ranges). A superset of Cc, Cf (Unicode 16), Cs, Zl and Zp, plus the
# Default_Ignorable_Code_Point characters of other categories.
REFUSED_RANGES: tuple[tuple[int, int], ...] = (
    (0x0000, 0x001F),  # C0 controls
    (0x007F, 0x009F),  # DEL, C1 controls
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x0600, 0x0605),  # Arabic number signs
    (0x061C, 0x061C),  # Arabic letter mark (bidi)
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x115F, 0x1160),  # Hangul fillers
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),  # Mongolian variation selectors and vowel separator
    (0x200B, 0x200F),  # zero-width space, non-joiner, joiner; LRM, RLM
    (0x2028, 0x202E),  # line and paragraph separators; bidi embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, bidi isolates, deprecated format characters
    (0x3164, 0x3164),  # Hangul filler
    (0xD800, 0xDFFF),  # surrogates: only a lone one can be in a Python str, never in UTF-8 text
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFEFF, 0xFEFF),  # zero-width no-break space (BOM)
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xFFF0, 0xFFFB),  # unassigned specials, interlinear annotation
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),  # Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0000, 0xE0FFF),  # tags, variation selectors supplement
)

# Unicode White_Space, the set polars' strip_chars() and Rust's \s use; refused at either end of an id.
WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"

_SURROGATES = (0xD800, 0xDFFF)


def _py_class(ranges: tuple[tuple[int, int], ...]) -> str:
    return "[" + "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges) + "]"


def _rust_class(ranges: tuple[tuple[int, int], ...]) -> str:
    # Rust regex patterns are UTF-8 and cannot name a surrogate; polars strings cannot hold one either.
    kept = [r for r in ranges if r != _SURROGATES]
    return "[" + "".join(f"\\x{{{a:X}}}" + (f"-\\x{{{b:X}}}" if b > a else "") for a, b in kept) + "]"


def _json_schema_pattern(ranges: tuple[tuple[int, int], ...]) -> str:
    # \uXXXX reads the same in Python's re, ECMA and Rust regex; astral code points have no common spelling, so
    # the documented pattern leaves them (and surrogates) to the check. "(?![\s\S])" is the end of the text in
    # every dialect, where Python's "$" also matches before a final newline. The apostrophe is refused too.
    bmp = [(a, b) for a, b in ranges if b <= 0xFFFF and (a, b) != _SURROGATES]
    cls = "".join(f"\\u{a:04X}" + (f"-\\u{b:04X}" if b > a else "") for a, b in bmp)
    return f"^[^{cls}\\u0027]+(?![\\s\\S])"


_REFUSED = re.compile(_py_class(REFUSED_RANGES))
# The rule's characters for the OpenAPI schema: documentation and fuzzing; the check itself is id_problem.
ID_PATTERN = _json_schema_pattern(REFUSED_RANGES)
_RUST_REFUSED = _rust_class(REFUSED_RANGES)
_RUST_WS = "[" + "".join(f"\\x{{{ord(c):X}}}" for c in WHITESPACE) + "]"
_RUST_SPACE_AT_ENDS = f"^{_RUST_WS}|{_RUST_WS}\\z"  # \z: the very end, not "before a final newline"


def id_problem(value: object) -> str | None:
    """Why ``value`` cannot be an id (a plain reason, as the field's error), or None if it can."""
    if not isinstance(value, str):
        return NOT_TEXT
    if not value:
        return EMPTY
    if _REFUSED.search(value):
        return INVISIBLE
    if "'" in value:
        return APOSTROPHE
    # At most 4 bytes a character: 32 characters always fit, so most ids skip the encode.
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode()) > MAX_ID_BYTES:
        return TOO_LONG
    if value[0] in WHITESPACE or value[-1] in WHITESPACE:
        return SPACE_AT_ENDS
    return None


def has_invisible(text: str) -> bool:
    """Whether ``text`` holds a character the rule refuses as invisible: for other text shown to users (hashtags)."""
    return _REFUSED.search(text) is not None


def is_valid_id(value: object) -> bool:
    return id_problem(value) is None


def id_problem_expr(column: pl.Expr) -> pl.Expr:
    """The reason a string column's id is refused (as :func:`id_problem` words it), or null: for one that is
    fine, and for a null, which is the caller's to allow (an optional id) or refuse (a missing one)."""
    return (
        pl.when(column.str.len_bytes() == 0)
        .then(pl.lit(EMPTY))
        .when(column.str.contains(_RUST_REFUSED))
        .then(pl.lit(INVISIBLE))
        .when(column.str.contains("'", literal=True))
        .then(pl.lit(APOSTROPHE))
        .when(column.str.len_bytes() > MAX_ID_BYTES)
        .then(pl.lit(TOO_LONG))
        .when(column.str.contains(_RUST_SPACE_AT_ENDS))
        .then(pl.lit(SPACE_AT_ENDS))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def id_problems(ids: pl.Series) -> pl.Series:
    """:func:`id_problem_expr` over a series of strings: a string series of reasons, null where fine or null."""
    frame = pl.DataFrame({"id": ids.cast(pl.String)})
    return frame.select(id_problem_expr(pl.col("id"))).to_series().alias(ids.name)


def sorted_positions(sorted_ids: np.ndarray, keys: Sequence[str] | np.ndarray) -> np.ndarray:
    """int64 position of each key in ``sorted_ids`` (ascending, unique), -1 where absent: one binary search for all.

    A fixed-width array (ids mapped from a snapshot) is searched in its own width. numpy would otherwise widen it to
    the keys' width, or turn it into Python strings for keys given as objects: a copy of the whole array on every
    call (28 ms at 500,000 ids). The keys are cut to that width for the search only; each match is then compared
    with the whole key, so an id that merely starts with a known one is not found.
    """
    wanted = np.asarray(keys, dtype=str)
    out = np.full(len(wanted), -1, dtype=np.int64)
    if not len(wanted) or not len(sorted_ids):
        return out
    probe = wanted.astype(sorted_ids.dtype) if sorted_ids.dtype.kind == "U" else wanted
    at = np.minimum(np.searchsorted(sorted_ids, probe), len(sorted_ids) - 1)
    found = sorted_ids[at] == wanted
    out[found] = at[found]
    return out


def per_distinct(values: pa.Array, of_distinct: Callable[[np.ndarray], np.ndarray], null: object) -> np.ndarray:
    """``of_distinct`` of the distinct values of ``values`` (an object array of them), spread back over the rows
    through Arrow's dictionary encoding; ``null`` where a row is null."""
    encoded = values.dictionary_encode()
    mapped = np.append(of_distinct(np.asarray(encoded.dictionary.to_pylist(), dtype=object)), null)
    return mapped[pc.fill_null(encoded.indices, len(encoded.dictionary)).to_numpy()]
