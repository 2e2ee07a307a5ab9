"""Trust at the edge of the feed API, over real HTTP: keys and scopes, JSON-only bodies, poison-shaped
requests, client addresses behind proxies, and what the server refuses to start with."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, ApiServer
from tests.test_feed_api import error, videos

pytestmark = pytest.mark.slow


def create_key(data: Path, scopes: str, name: str = "") -> str:
    """``python -m feed_api.keys create`` as an operator runs it; the token is the last line of stdout."""
    out = subprocess.run(
        [sys.executable, "-m", "feed_api.keys", "--data-dir", str(data), "create", "--scopes", scopes, "--name", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def keys_cli(data: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "feed_api.keys", "--data-dir", str(data), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def inbox_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in (data / "inbox").glob("*.jsonl"))


@pytest.fixture(scope="module")
def keyed(api_world: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server on a private copy of the world with four keys, one per kind of client."""
    data = tmp_path_factory.mktemp("keyed") / "data"
    shutil.copytree(api_world.parent / "pristine", data)
    tokens = {
        "reader": create_key(data, "feed:read", "app reads"),
        "writer": create_key(data, "events:write,videos:write", "app writes"),
        "updater": create_key(data, "videos:write,videos:update", "catalogue sync"),
        "ops": create_key(data, "metrics:read,docs:read", "monitoring"),
    }
    server = ApiServer(data).start()
    try:
        yield server, data, tokens
    finally:
        server.stop()


def test_every_endpoint_but_the_probes_needs_a_key_with_its_scope(keyed) -> None:
    server, _, tokens = keyed
    url = server.url
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/ready").status_code == 200
    for probe in ("/health", "/ready"):  # load balancers that probe with HEAD read a 405 as down
        r = httpx.head(f"{url}{probe}")
        assert r.status_code == 200 and r.content == b"", (probe, r.status_code)
    calls = {
        "feed:read": ("POST", "/recommendations", {"user_id": "u0000001"}),
        "events:write": ("POST", "/events", {"user_id": "u0000001", "video_id": "v0000001", "type": "skip"}),
        "metrics:read": ("GET", "/metrics", None),
        "docs:read": ("GET", "/schema/openapi.json", None),
    }
    holder = {"feed:read": "reader", "events:write": "writer", "metrics:read": "ops", "docs:read": "ops"}
    for scope, (method, path, body) in calls.items():
        r = httpx.request(method, url + path, json=body)
        error(r, 401, field="Authorization", code="unauthenticated")
        assert r.headers["www-authenticate"].startswith("Bearer")
        error(httpx.request(method, url + path, json=body, headers=bearer("rk_nothere_x")), 401, code="invalid_key")
        others = [name for name in tokens if name != holder[scope]]
        for name in others:
            r = httpx.request(method, url + path, json=body, headers=bearer(tokens[name]))
            error(r, 403, field="Authorization", code="forbidden")
        r = httpx.request(method, url + path, json=body, headers=bearer(tokens[holder[scope]]))
        assert r.status_code == 200, (scope, r.text)


def test_keys_are_stored_hashed_and_rotate_without_a_restart(keyed) -> None:
    server, data, tokens = keyed
    stored = (data / "api" / "keys.json").read_text()
    assert all(token.split("_", 2)[2] not in stored for token in tokens.values())
    assert (data / "api" / "keys.json").stat().st_mode & 0o077 == 0
    listing = keys_cli(data, "list")
    assert "app reads" in listing and all(token not in listing for token in tokens.values())

    fresh = create_key(data, "feed:read", "rotated in")
    body = {"user_id": "u0000002"}
    deadline = time.monotonic() + 5
    while httpx.post(f"{server.url}/recommendations", json=body, headers=bearer(fresh)).status_code != 200:
        assert time.monotonic() < deadline, "a new key was not accepted without a restart"
        time.sleep(0.2)
    key_id = fresh.split("_")[1]
    keys_cli(data, "revoke", key_id)
    deadline = time.monotonic() + 5
    while (r := httpx.post(f"{server.url}/recommendations", json=body, headers=bearer(fresh))).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still works"
        time.sleep(0.2)
    error(r, 401, code="invalid_key")
    assert "revoked" in keys_cli(data, "list")
    assert httpx.post(f"{server.url}/recommendations", json=body, headers=bearer(tokens["reader"])).status_code == 200


def test_a_catalogue_video_is_replaced_only_by_a_key_allowed_to(keyed) -> None:
    server, data, tokens = keyed
    known = videos(data)["video_id"][0]
    before = inbox_bytes(data)
    video = {
        "video_id": known,
        "caption": "not what it was",
        "hashtags": ["spam"],
        "duration": 10.0,
        "width": 1080,
        "height": 1920,
        "user_followers": 10**9,
        "user_likes": 10**9,
    }
    r = httpx.post(f"{server.url}/embeddings/video", json=video, headers=bearer(tokens["writer"]), timeout=60)
    error(r, 409, field="video_id", code="video_exists")
    assert inbox_bytes(data) == before, "a refused video was written to the inbox"
    r = httpx.post(f"{server.url}/embeddings/video", json=video, headers=bearer(tokens["updater"]), timeout=60)
    assert r.status_code == 200, r.text
    new = {**video, "video_id": "brand-new-video-1"}
    r = httpx.post(f"{server.url}/embeddings/video", json=new, headers=bearer(tokens["writer"]), timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "text/json"])
def test_bodies_must_be_declared_json(keyed, content_type: str | None) -> None:
    """A web page can post text/plain or a form across origins without a preflight: such bodies are refused."""
    server, data, tokens = keyed
    before = inbox_bytes(data)
    body = json.dumps({"user_id": "u0000003", "video_id": "v0000001", "type": "like"})
    headers = bearer(tokens["writer"])
    if content_type:
        headers["content-type"] = content_type
    r = httpx.post(f"{server.url}/events", content=body, headers=headers)
    error(r, 415, field="Content-Type", code="unsupported_media_type")
    assert inbox_bytes(data) == before
    headers["content-type"] = "application/json; charset=utf-8"
    assert httpx.post(f"{server.url}/events", content=body, headers=headers).status_code == 200


@pytest.mark.parametrize("path", ["/recommendations", "/events", "/embeddings/video", "/embeddings/user"])
def test_deeply_nested_json_is_a_400(keyed, path: str) -> None:
    server, _, tokens = keyed
    headers = {
        **bearer(tokens["reader" if path == "/recommendations" else "writer"]),
        "content-type": "application/json",
    }
    for body in (b"[" * 5000, b"[" * 5000 + b"]" * 5000, b'{"user_id": ' + b"[" * 5000 + b"]" * 5000 + b"}"):
        r = httpx.post(server.url + path, content=body, headers=headers)
        assert r.status_code == 400, (path, r.status_code, r.text[:300])
        assert r.json()["error"]["field"]


@pytest.mark.parametrize("path", ["/recommendations", "/events", "/embeddings/video", "/embeddings/user"])
def test_a_body_that_is_not_utf8_is_a_400_and_nothing_is_written(keyed, path: str) -> None:
    """Latin-1 text, or any stray 0xff byte, inside a JSON string: msgspec raises UnicodeDecodeError, which no
    handler mapped, so every endpoint answered 500."""
    server, data, tokens = keyed
    headers = {
        **bearer(tokens["reader" if path == "/recommendations" else "writer"]),
        "content-type": "application/json",
    }
    before = inbox_bytes(data)
    for body in (b'{"user_id": "caf\xe9"}', b'{"user_id": "u\xff1"}', b'{"user_id": "\xed\xa0\x80"}'):
        r = httpx.post(server.url + path, content=body, headers=headers)
        error(r, 400, field="body", code="invalid_json")
        assert "UTF-8" in r.json()["error"]["reason"], r.text
    assert inbox_bytes(data) == before


def test_metric_labels_stay_bounded_whatever_clients_send(keyed) -> None:
    server, _, tokens = keyed
    with httpx.Client(base_url=server.url) as client:
        for i in range(50):
            client.request(f"M{i}", "/health")
            client.get(f"/no-such-path-{i}")
            client.request(f"M{i}", "/recommendations")
        text = client.get("/metrics", headers=bearer(tokens["ops"])).text
    series = [line for line in text.splitlines() if line.startswith("feed_api_requests_total{")]
    assert len(series) < 30, series
    assert not any("M1" in line or "no-such-path" in line for line in text.splitlines())


def _burst(url: str, n: int, headers_for) -> list[int]:
    async def go() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            answers = await asyncio.gather(
                *(client.post("/recommendations", json={"user_id": "u1"}, headers=headers_for(i)) for i in range(n))
            )
        return [r.status_code for r in answers]

    return asyncio.run(go())


def test_the_rate_limiter_ignores_forwarded_for_unless_the_proxy_is_trusted(tmp_path: Path) -> None:
    def spoofed(i: int) -> dict[str, str]:
        return {"X-Forwarded-For": f"203.0.113.{i}"}

    server = ApiServer(tmp_path / "a", api_rate_limit="2").start(ready=False)
    try:
        statuses = _burst(server.url, 30, spoofed)
        assert statuses.count(429) >= 10, statuses  # one client, whatever it claims to be
    finally:
        server.stop()
    proxied = ApiServer(tmp_path / "b", api_rate_limit="2", api_trusted_proxies="127.0.0.1/32").start(ready=False)
    try:
        statuses = _burst(proxied.url, 30, spoofed)
        assert 429 not in statuses, statuses  # behind a trusted proxy, 30 different clients
        statuses = _burst(proxied.url, 30, lambda i: {"X-Forwarded-For": f"203.0.113.{i}, 198.51.100.7"})
        assert statuses.count(429) >= 10, statuses  # the proxy saw one client; what it forwarded is not evidence
    finally:
        proxied.stop()


def test_no_keys_means_loopback_only(tmp_path: Path) -> None:
    server = ApiServer(tmp_path / "open", api_host="0.0.0.0")
    with pytest.raises(RuntimeError, match="exited with 2"):
        server.start(ready=False, timeout=60)
    assert "refusing to serve without authentication" in server.log.read_text()
    loopback = ApiServer(tmp_path / "dev").start(ready=False)
    try:
        assert "WITHOUT authentication" in loopback.log.read_text()
    finally:
        loopback.stop()


def test_an_empty_cursor_secret_file_does_not_block_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "api").mkdir(parents=True)
    (data / "api" / "cursor_secret").write_bytes(b"")
    server = ApiServer(data).start(ready=False, timeout=60)
    try:
        assert len((data / "api" / "cursor_secret").read_bytes()) == 32
    finally:
        server.stop()
