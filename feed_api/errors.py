"""The one error shape of the API: ``{"error": {"status", "code", "field", "reason", "hint"}}``.

Every failure a client can cause is an :class:`ApiError` with the field at fault
and why; anything else (a bug, a dependency down) is logged and answered with a
generic 500/503 body in the same shape, never a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from litestar.types import Send


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    status: int
    code: str
    field: str | None
    reason: str
    hint: str | None = None


class ErrorOut(msgspec.Struct):
    """Every error body of the API (documented once in the OpenAPI schema as ``Error``)."""

    error: ErrorDetail


@dataclass(slots=True)
class ApiError(Exception):
    status: int
    code: str
    field: str | None
    reason: str
    hint: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return msgspec.json.encode(ErrorOut(ErrorDetail(self.status, self.code, self.field, self.reason, self.hint)))


def too_deep() -> ApiError:
    return ApiError(400, "invalid_json", "body", "JSON nested too deeply")


async def send_json(send: Send, status: int, payload: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer straight from ASGI (the fast path and the guards, which run before Litestar's handlers)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def send_error(send: Send, error: ApiError) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send_json(send, error.status, error.body(), headers)
