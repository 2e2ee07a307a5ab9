"""The docs page at /schema loads only pinned assets the API serves itself: no CDN, no `@latest`.

Real apps under Litestar's TestClient; the assets compared byte for byte with the installed package's files.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from litestar import Litestar, get
from litestar.openapi.config import OpenAPIConfig
from litestar.testing import TestClient

from rec_core.settings import Settings


class _Refs(HTMLParser):
    """Every URL a page makes the browser fetch: script src, link href, img/iframe/source src."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name == "src" or (tag == "link" and name == "href")):
                self.refs.append((tag, value))


def _page_refs(html: str) -> list[tuple[str, str]]:
    parser = _Refs()
    parser.feed(html)
    return parser.refs


def _assert_self_contained(client: TestClient, html: str) -> None:
    refs = _page_refs(html)
    tags = [tag for tag, _ in refs]
    assert tags.count("script") >= 1 and "link" in tags, refs  # the UI's JS and its stylesheet
    for tag, url in refs:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"<{tag}> loads {url} from another host"
        assert "latest" not in url, url
    for needle in ("cdn.", "jsdelivr", "unpkg", "googleapis", "@latest"):
        assert needle not in html, f"the docs page still names {needle!r}"
    from feed_api.docs import ASSETS_DIR

    for _tag, url in refs:
        reply = client.get(url)
        assert reply.status_code == 200, (url, reply.status_code)
        assert reply.content, url
        # What is served is exactly the installed package's file: pinned by the lock, never fetched.
        assert reply.content == (ASSETS_DIR / Path(urlsplit(url).path).name).read_bytes(), url
        kind = reply.headers["content-type"]
        if url.endswith(".js"):
            assert "javascript" in kind, (url, kind)
        elif url.endswith(".css"):
            assert kind.startswith("text/css"), (url, kind)
            assert "@import" not in reply.text  # no font or sheet pulled from elsewhere


def test_docs_module_serves_the_swagger_ui_from_the_installed_package() -> None:
    from feed_api.docs import ASSETS_DIR, ASSETS_PATH, docs_plugins_and_routes

    assert ASSETS_DIR.is_dir() and (ASSETS_DIR / "swagger-ui-bundle.js").is_file()
    # The version is in the URL, so a browser's cached copy never outlives an upgrade of the package.
    assert ASSETS_DIR.name.split("-")[-1] in ASSETS_PATH

    @get("/ping")
    async def ping() -> str:
        return "pong"

    plugin, routes = docs_plugins_and_routes()
    app = Litestar(
        route_handlers=[ping, *routes],
        openapi_config=OpenAPIConfig(title="t", version="1", path="/schema", render_plugins=[plugin]),
    )
    with TestClient(app) as client:
        page = client.get("/schema")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "SwaggerUIBundle" in page.text
        _assert_self_contained(client, page.text)
        # Only the UI's files are served; a path out of the assets folder is not.
        assert client.get(f"{ASSETS_PATH}/../../../../etc/passwd").status_code == 404
        assert client.get("/schema/openapi.json").status_code == 200
    # Served without a key even where keys are required: public Swagger UI files, loaded by <script> tags.
    served = [h for r in app.routes if r.path.startswith(ASSETS_PATH) for h in r.route_handlers]  # type: ignore[attr-defined]
    assert served and all(h.opt.get("public") for h in served)


@pytest.fixture
def app_settings(tmp_path: Path) -> Settings:
    return Settings.of(data_dir=tmp_path / "data")


def test_feed_api_docs_page_loads_no_script_or_style_from_a_cdn(app_settings: Settings) -> None:
    """The real app: /schema works without a snapshot (/ready is 503) and needs nothing from the internet."""
    from feed_api.app import create_app

    with TestClient(create_app(app_settings)) as client:
        assert client.get("/ready").status_code == 503
        page = client.get("/schema")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        _assert_self_contained(client, page.text)


def test_feed_api_docs_assets_need_no_key_where_keys_are_required(app_settings: Settings) -> None:
    from feed_api.app import create_app
    from feed_api.docs import ASSETS_PATH
    from feed_api.keys import KeyStore

    _, token = KeyStore(app_settings.paths.keys_path).create(("feed:read",))
    with TestClient(create_app(app_settings)) as client:
        assert client.get("/schema").status_code == 401  # the page itself is the app's to guard
        reply = client.get(f"{ASSETS_PATH}/swagger-ui-bundle.js")
        assert reply.status_code == 200 and reply.content
        assert client.get("/recommendations").status_code in (401, 405)
        assert token
