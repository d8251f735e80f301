"""`install_docs(app)`: `/docs` with its assets, `/` sending a person there, and the site icon."""

from __future__ import annotations

import html
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

# Swagger UI's distribution files, as fastapi-offline ships them (the version is pinned
# by uv.lock; tests/web/test_docs.py fails if the package stops shipping one of them).
SWAGGER_UI_DIST = Path(str(files("fastapi_offline"))) / "static"
OWN_STATIC = Path(__file__).parent / "static"
ASSETS = {
    "swagger-ui-bundle.js": SWAGGER_UI_DIST / "swagger-ui-bundle.js",
    "swagger-ui.css": SWAGGER_UI_DIST / "swagger-ui.css",
    "favicon.png": SWAGGER_UI_DIST / "favicon.png",
    "start-swagger-ui.js": OWN_STATIC / "start-swagger-ui.js",
}
# The page loads only its own files; Swagger UI's stylesheet embeds its icons as data:
# URLs. Nothing inline runs, and no other site may frame the page.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# Assets change only with the installed package; an hour of caching spares reloads.
ASSET_HEADERS = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}


def docs_page(*, title: str, root_path: str, openapi_url: str) -> str:
    assets = f"{root_path}/docs/assets"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} - API docs</title>
<link rel="icon" type="image/png" href="{assets}/favicon.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head><body>
<div id="swagger-ui" data-openapi-url="{html.escape(root_path + openapi_url)}"></div>
<noscript>The API docs need JavaScript; the OpenAPI document itself is at
<a href="{html.escape(root_path + openapi_url)}">{html.escape(openapi_url)}</a>.</noscript>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/start-swagger-ui.js"></script>
</body></html>
"""


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at `/docs` (app built with `docs_url=None, redoc_url=None`)."""
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> RedirectResponse:
        return RedirectResponse(request.scope.get("root_path", "") + "/docs", status_code=307)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        # Browsers ask for it on every page of the origin (consent, callback, docs).
        return FileResponse(ASSETS["favicon.png"], headers=ASSET_HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        page = docs_page(
            title=app.title, root_path=request.scope.get("root_path", ""), openapi_url=openapi_url
        )
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        path = ASSETS.get(name)
        if path is None:
            raise HTTPException(404)
        return FileResponse(path, headers=ASSET_HEADERS)
