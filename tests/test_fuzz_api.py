"""An OpenAPI fuzz test: schemathesis drives the real API over HTTP from the API's own schema.

Every operation of ``/schema/openapi.json`` gets schema-valid and schema-violating requests
(schemathesis' positive and negative generation), and every response must be no 5xx and must
match what the schema documents: the status code, the content type and headers, the body's
schema; bad input must be rejected with a 4xx.

The server is a real ``python -m feed_api`` child process on a private copy of the pristine
tiny world, because the fuzzer posts videos, users and events that would disturb other tests.
Bounded for CI: a few examples per operation, derandomized, no deadline (2 shared cores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.schemas import BaseSchema

from tests.conftest import ROOT, ApiServer

pytestmark = pytest.mark.slow

# Examples per operation and generation mode: 7 operations x 2 modes x 60 keeps the fuzzing itself under
# a minute on 2 shared cores (the session's tiny world is built once, by conftest's api_world).
MAX_EXAMPLES = 60
# Everything a key can be allowed, so that a 401/403 here means an auth bug, not a missing scope; docs:read is
# what the schema itself needs once keys exist.
ALL_SCOPES = "feed:read,events:write,videos:write,videos:update,metrics:read,docs:read"
# A rejected bad input may also be a 413 (a generated list over its maxItems can be a body over 1 MiB): that is a
# rejection too, which schemathesis' default list for negative_data_rejection leaves out.
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
]
# Not positive_data_acceptance: JSON Schema cannot state every rule, so some schema-valid inputs are rightly
# refused: an id's limit is 128 UTF-8 *bytes* (maxLength counts characters), an id may not end in whitespace, and
# msgspec takes 18.0 as a float where JSON Schema calls it an integer. Each refusal is a documented 400.


def create_key(data_dir: Path) -> str | None:
    """A bearer token with every scope via the keys CLI, or None while the API has no keys module (open server)."""
    if not (ROOT / "feed_api" / "keys.py").exists():
        return None
    # The data root goes in through REC_DATA_DIR, which the CLI reads whatever its argument order.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REC_")}, "REC_DATA_DIR": str(data_dir)}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "feed_api.keys", "create", "--scopes", ALL_SCOPES, "--name", "fuzz"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"keys create failed ({done.returncode}): {done.stderr}"
    return done.stdout.strip().splitlines()[-1]  # the CLI prints the token on its last line


@pytest.fixture(scope="module")
def fuzz_api(api_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, dict[str, str]]]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    shutil.copytree(api_world.parent / "pristine", data)
    token = create_key(data)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    server = ApiServer(data, feed_length="200", snapshots_keep="2").start()
    try:
        yield server, headers
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_api: tuple[ApiServer, dict[str, str]]) -> BaseSchema:
    server, headers = fuzz_api
    config = SchemathesisConfig.from_dict(
        {
            "base-url": server.url,
            "headers": headers,
            "request-timeout": 60,
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTED}},
        }
    )
    return schemathesis.openapi.from_url(f"{server.url}/schema/openapi.json", config=config, headers=headers)


# schemathesis' own pytest integration (`schemathesis.pytest.from_fixture` + `@schema.parametrize`) reads
# `request.node._nodeid`, which pytest 9 no longer has; so each operation runs through the documented
# `APIOperation.as_strategy` with plain Hypothesis instead, which also lets one run report every operation.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_every_operation_survives_fuzzing(
    fuzz_schema: BaseSchema, fuzz_api: tuple[ApiServer, dict[str, str]], mode: GenerationMode
) -> None:
    server, headers = fuzz_api
    failures: list[str] = []
    nothing_to_generate: list[str] = []
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 7, [op.label for op in operations]
    for operation in operations:
        # No shrinking: it replays a failing request dozens of times; the first failing request, with its curl
        # line, is what a fix needs. derandomize: the same cases on every run.
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            # Raises one error naming every failed check, with a curl line that replays the request.
            case.call_and_validate(base_url=server.url, headers=headers, checks=CHECKS)

        try:
            run()
        except Unsatisfiable:
            # No input of this mode exists: an operation without parameters or body has no invalid form.
            nothing_to_generate.append(operation.label)
        # schemathesis' FailureGroup is a BaseExceptionGroup; a plain Exception is the request itself failing.
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{operation.label}: {type(exc).__name__}: {_short(str(exc))}")
    assert not failures, f"{len(failures)} of {len(operations)} operations failed:\n\n" + "\n\n".join(failures)
    assert len(nothing_to_generate) < len(operations), "no operation could be fuzzed in this mode"


def _short(text: str, limit: int = 2500) -> str:
    # A negative case can carry a megabyte of generated body; the failed checks and the status are at the top.
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"
