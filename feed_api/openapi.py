"""The OpenAPI document, finished where the API's behaviour is not what Litestar infers from the handlers.

Litestar documents request bodies from the handler signatures and a generic
400 shape of its own. This API answers every error in one shape
(:class:`feed_api.errors.ErrorOut`), refuses unknown fields, takes ``POST
/events`` as one event or a batch (read raw, so Litestar cannot see its body),
and answers 401/403/415/413/429/503 from guards in front of the handlers. Here
the document is made to say so, with msgspec's own schemas for the bodies (the
same types that decode them, so ``additionalProperties: false`` and every bound
come from the rules themselves). The fuzz test (tests/test_fuzz_api.py) holds
every response to this document.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPI

from feed_api.bodies import EventIn, EventsIn, RecommendationsIn, UserIn, VideoIn
from feed_api.errors import ErrorOut

REF = "#/components/schemas/{name}"
# Each request body, by route; a list is a choice of shapes.
BODIES: dict[str, list[type[msgspec.Struct]]] = {
    "/recommendations": [RecommendationsIn],
    "/events": [EventIn, EventsIn],
    "/embeddings/video": [VideoIn],
    "/embeddings/user": [UserIn],
}
ERRORS = {
    "400": "Invalid input: the error names the field and why",
    "401": "No API key, or an unknown or revoked one",
    "403": "The API key lacks this route's scope",
    "409": "The video id exists and the key may not update videos",
    "410": "The cursor expired, or its snapshot is no longer kept: restart with cursor null",
    "413": "The body is over 1 MiB",
    "415": "The body is not declared as JSON",
    "429": "Rate limited (REC_API_RATE_LIMIT)",
    "503": "No snapshot loaded yet, the inbox cannot be written, or too many writes are waiting: retry",
}
# What each route can answer besides 2xx; every non-public route also answers 401 and 403.
ROUTE_ERRORS: dict[tuple[str, str], tuple[str, ...]] = {
    ("post", "/recommendations"): ("400", "410", "413", "415", "429", "503"),
    ("post", "/events"): ("400", "413", "415", "429", "503"),
    ("post", "/embeddings/video"): ("400", "409", "413", "415", "429", "503"),
    ("post", "/embeddings/user"): ("400", "413", "415", "429", "503"),
    ("get", "/metrics"): (),
    ("get", "/ready"): ("503",),
}
PUBLIC = {("get", "/health"), ("get", "/ready")}


def finish_openapi(openapi: OpenAPI) -> None:
    """Correct the document in place (Litestar serialises plain dicts inside it as they are)."""
    types: list[Any] = [ErrorOut, *(t for kinds in BODIES.values() for t in kinds)]
    _, components = msgspec.json.schema_components(types, ref_template=REF)
    components["Error"] = components.pop("ErrorOut")
    assert openapi.components is not None and openapi.paths is not None
    schemas: dict[str, Any] = dict(openapi.components.schemas or {})
    schemas.update(components)
    openapi.components.schemas = schemas
    error = {"application/json": {"schema": {"$ref": REF.format(name="Error")}}}
    for path, item in openapi.paths.items():
        for method in ("get", "post"):
            operation = getattr(item, method, None)
            if operation is None or (method, path) not in ROUTE_ERRORS:
                continue
            if path in BODIES:
                refs = [{"$ref": REF.format(name=t.__name__)} for t in BODIES[path]]
                schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
                operation.request_body = {"required": True, "content": {"application/json": {"schema": schema}}}
            statuses = ROUTE_ERRORS[(method, path)] + (() if (method, path) in PUBLIC else ("401", "403"))
            responses = {k: v for k, v in (operation.responses or {}).items() if not k.startswith(("4", "5"))}
            responses.update({s: {"description": ERRORS[s], "content": error} for s in sorted(statuses)})
            operation.responses = responses
