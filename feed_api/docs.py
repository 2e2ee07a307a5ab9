"""The browsable API docs at ``/schema``, with every asset served by the API itself.

Litestar's render plugins default to scripts, stylesheets and a favicon on public CDNs (Scalar even at
``@latest``): the page is blank where the API has no internet, and it runs whatever those URLs serve on the
day. Here the page is Swagger UI from the ``swagger-ui-bundle-v2`` wheel, pinned in constraints.txt like any
other dependency; its files are byte-identical to npm's ``swagger-ui-dist`` of the same version. They are
served under a path that carries that version, so browsers may cache them for good.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

# The package's folder is named after the Swagger UI release it ships (e.g. ``swagger-ui-5.31.0``).
ASSETS_DIR = Path(str(swagger_ui_path))
ASSETS_PATH = f"/schema/assets/{ASSETS_DIR.name}"

# The only files the page loads; the folder's demo index.html and source maps are served too but never linked.
_JS = "swagger-ui-bundle.js"
_PRESET_JS = "swagger-ui-standalone-preset.js"
_CSS = "swagger-ui.css"
_FAVICON = "favicon-32x32.png"


def docs_plugins_and_routes() -> tuple[SwaggerRenderPlugin, list[Router]]:
    """The render plugin for ``OpenAPIConfig(render_plugins=[...])`` and the router serving its assets.

    The plugin is served at the schema root (``/schema``) when it is the first render plugin, and at
    ``/schema/swagger``.
    """
    for name in (_JS, _PRESET_JS, _CSS, _FAVICON):
        if not (ASSETS_DIR / name).is_file():  # a broken install: fail at startup, not with a blank page
            raise FileNotFoundError(f"swagger-ui-bundle-v2 lacks {name} in {ASSETS_DIR}; reinstall it")
    plugin = SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/{_JS}",
        css_url=f"{ASSETS_PATH}/{_CSS}",
        standalone_preset_js_url=f"{ASSETS_PATH}/{_PRESET_JS}",
        # The default favicon is Litestar's logo on jsDelivr.
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/{_FAVICON}'>",
    )
    assets = create_static_files_router(
        path=ASSETS_PATH,
        directories=[ASSETS_DIR],
        name="docs_assets",
        include_in_schema=False,
        # Public (feed_api.auth's convention): these are Swagger UI's published files, nothing about this API,
        # and a browser sends no bearer key with the <script>/<link> requests the page makes.
        opt={"public": True},
        # Versioned URLs: a new release of the package is a new path, so the old files may be cached forever.
        cache_control=CacheControlHeader(public=True, max_age=31_536_000),
    )
    return plugin, [assets]
