"""The web page: ``/`` sends browsers to ``/ui/``, which serves the page's files from the package. The page holds no
secrets and calls the public API like any client, so it needs no API key itself.

Each file is a route of its own rather than a ``StaticFiles`` mount: Serve's proxy routes by the app's route
patterns, and a mount's sub-paths are not among them (with another app at ``/``, ``/prefix/ui/app.js`` went there).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from serve_app.web import STATIC_DIR

router = APIRouter(include_in_schema=False)
FILES = {"": "index.html", "app.js": "app.js", "style.css": "style.css"}
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


@router.get("/")
@router.get("/ui")
async def to_page() -> RedirectResponse:
    return RedirectResponse("ui/", status_code=307)  # relative: the app may sit under a route prefix


def _file_route(url: str, name: str) -> None:
    path = STATIC_DIR / name
    media_type = MEDIA_TYPES[path.suffix] + "; charset=utf-8"

    async def serve_file() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})

    router.add_api_route(f"/ui/{url}", serve_file, methods=["GET"], name=f"ui:{name}")


for _url, _name in FILES.items():
    _file_route(_url, _name)


def is_web_path(path: str) -> bool:
    return path == "/" or path == "/ui" or path.startswith("/ui/")
