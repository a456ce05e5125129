"""The studio web page: plain static files shipped in the package, served at `/` (page) and `/studio/` (assets).

No build step and no network at run time: the page is vanilla ES modules, and everything it shows comes from this
server (the OpenAPI schema, the preview endpoints, /v2 jobs).
"""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def studio_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    """Serve the studio page at `/` and its assets under `/studio/` (kept out of the OpenAPI schema)."""
    app.include_router(router)
    app.mount("/studio", StaticFiles(directory=STATIC_DIR), name="studio")
