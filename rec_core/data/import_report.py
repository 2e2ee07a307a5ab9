"""The outcome of an import: the errors that stop one, and the report of what was read, skipped and written."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rec_core.data.import_spec import TABLE_NAMES


class IngestError(RuntimeError):
    """The import did not happen; the lake is unchanged. ``report`` says why when one exists."""

    def __init__(self, message: str, report: ImportReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class InputError(IngestError):
    """The input cannot be used at all: unreadable file, unsupported format, missing required column."""


class RejectedError(IngestError):
    """The input was read but rejected: bad rows under ``strict``, or no valid video left."""


@dataclass(slots=True)
class BadRows:
    table: str
    reason: str
    column: str | None
    count: int
    examples: list[dict[str, Any]]  # {"row": 1-based data row in the file, column: raw value, ...}


@dataclass(slots=True)
class TableCounts:
    read: int = 0  # data rows in the input (0 when the file is absent)
    skipped: int = 0  # bad rows left out
    added: int = 0  # rows created by the importer (users named only by interactions)
    written: int = 0  # rows in the lake table


@dataclass(slots=True)
class ImportReport:
    source: str
    strict: bool
    inputs: dict[str, str | None] = field(default_factory=dict)  # table -> where it came from
    counts: dict[str, TableCounts] = field(default_factory=dict)
    bad_rows: list[BadRows] = field(default_factory=list)
    defaults_used: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> column -> rows defaulted
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    status: str = "pending"  # committed | unchanged | validated (dry run) | rejected | error
    lake_version: str | None = None
    impressions_dropped: int = 0  # of the lake's, naming a video the import does not have
    error: str | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("committed", "unchanged", "validated")

    @property
    def skipped_total(self) -> int:
        return sum(b.count for b in self.bad_rows)

    def skipped(self, reason: str, table: str | None = None, column: str | None = None) -> int:
        """Rows skipped for ``reason`` (optionally only in ``table`` / for ``column``)."""
        return sum(
            b.count
            for b in self.bad_rows
            if b.reason == reason and table in (None, b.table) and column in (None, b.column)
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["skipped_total"] = self.skipped_total
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def format_text(self) -> str:
        lines = [f"import ({self.source}), strict: {'on' if self.strict else 'off'}"]
        for table in TABLE_NAMES:
            if table in self.inputs:
                none = "(none: from the interactions)" if table == "users" else "(none)"
                lines.append(f"  {table:<13} {self.inputs[table] or none}")
        if self.counts:
            lines.append("")
            lines.append(f"  {'table':<13} {'read':>10} {'skipped':>9} {'added':>8} {'written':>10}")
            for table in TABLE_NAMES:
                c = self.counts.get(table)
                if c is not None:
                    lines.append(f"  {table:<13} {c.read:>10,} {c.skipped:>9,} {c.added:>8,} {c.written:>10,}")
        used = {t: ", ".join(f"{c} {n:,}" for c, n in cols.items() if n) for t, cols in self.defaults_used.items()}
        if any(used.values()):
            lines += ["", "defaults used (column rows):"]
            for t, text in used.items():
                if text:
                    lines += textwrap.wrap(text, 110, initial_indent=f"  {t:<13} ", subsequent_indent=" " * 16)
        ignored = [(t, cols) for t, cols in self.ignored_columns.items() if cols]
        if ignored:
            lines += ["", "ignored columns:"]
            lines += [f"  {t}: {', '.join(cols)}" for t, cols in ignored]
        if self.bad_rows:
            lines += [
                "",
                f"skipped rows by reason ({self.skipped_total:,} in all; row = data row, CSV line = row + 1):",
            ]
            lines.append(f"  {'table':<13} {'reason':<26} {'column':<18} {'rows':>8}  examples")
            for b in self.bad_rows:
                first, *rest = [_format_example(e) for e in b.examples] or [""]
                lines.append(f"  {b.table:<13} {b.reason:<26} {b.column or '-':<18} {b.count:>8,}  {first}")
                lines += [f"  {'':<13} {'':<26} {'':<18} {'':>8}  {e}" for e in rest]
        if self.impressions_dropped:
            lines += ["", f"impressions: {self.impressions_dropped:,} dropped (their video is not imported)"]
        lines.append("")
        if self.status == "committed":
            lines.append(f"result: committed, lake {self.lake_version} is live ({self.elapsed_s:.1f}s)")
        elif self.status == "unchanged":
            lines.append(f"result: content identical, lake {self.lake_version} stays live ({self.elapsed_s:.1f}s)")
        elif self.status == "validated":
            lines.append(f"result: validated only (dry run), lake not touched ({self.elapsed_s:.1f}s)")
        else:
            lines.append(f"result: {self.status}, lake not touched: {self.error}")
        return "\n".join(lines)


def _format_example(example: Mapping[str, Any], width: int = 40) -> str:
    parts = []
    for key, value in example.items():
        if key == "row":
            continue
        text = repr(value)
        parts.append(f"{key}={text if len(text) <= width else text[: width - 3] + '...'}")
    return f"row {example.get('row')}: " + " ".join(parts)
