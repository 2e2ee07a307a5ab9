"""The one error shape of the API: ``{"error": {"status", "code", "field", "reason", "hint"}}``.

Every failure a client can cause is an :class:`ApiError` with the field at fault
and why; anything else (a bug, a dependency down) is logged and answered with a
generic 500/503 body in the same shape, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec


@dataclass(slots=True)
class ApiError(Exception):
    status: int
    code: str
    field: str | None
    reason: str
    hint: str | None = None

    def body(self) -> bytes:
        error = {"status": self.status, "code": self.code, "field": self.field, "reason": self.reason}
        if self.hint:
            error["hint"] = self.hint
        return msgspec.json.encode({"error": error})
