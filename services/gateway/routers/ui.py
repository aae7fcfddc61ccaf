"""The web app: static ES modules under ``/ui/`` (``services/gateway/ui``), ``/`` redirects.

No build step: the files are served as they are in the tree. Every response carries a
Content-Security-Policy that allows scripts, styles and connections from this origin only
(no inline script, no eval), so an injected name can never run. Images are drawn from
``blob:`` URLs: the API key travels in a header, which ``<img src>`` cannot send.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from services.gateway.errors import error_json

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
UI_PATH = "/ui"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidate on every load (ETag / Last-Modified): an upgrade is seen at once.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse(f"{UI_PATH}/", status_code=307)


class UiFiles(StaticFiles):
    """StaticFiles with the security headers on every response (404s included)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as e:  # answered here, so that it carries the headers too
            response = error_json(e.status_code, f"no such file in the web app: /{path}")
        response.headers.update(SECURITY_HEADERS)
        return response


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(UI_PATH, UiFiles(directory=UI_DIR, html=True), name="ui")
