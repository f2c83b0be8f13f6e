"""The review page's web server: FastAPI on uvicorn (both already installed: mlflow-skinny requires them).

Three routes: `GET /` the page, `GET /api/model` the model's facts, `POST /api/review?name=FILE` one file
as the raw request body (no multipart form, so no python-multipart, and the bytes stay in memory until the
reviewer reads them). The upload limit is enforced here, not in the page: a declared Content-Length over
`max_upload_mb` is refused before a byte is read, and a body that grows past it is refused as soon as it
does (HTTP 413, with the limit and the fix). FastAPI's /docs, /redoc and /openapi.json are off: Swagger UI
would load its scripts from a CDN.
"""
from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from pneumo.app.page import render_page
from pneumo.app.reviewed_model import ReviewedModel, load_reviewed_model
from pneumo.app.scoring import Reviewer

log = logging.getLogger(__name__)
MB = 1_000_000
# Nothing but this server may be contacted by the page, and nothing it shows is cached.
HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                      "script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def create_app(model: ReviewedModel, reviewer: Reviewer, max_upload_mb: float) -> FastAPI:
    """The ASGI app serving `model`'s page; uploads over `max_upload_mb` MB (10^6 bytes) are refused."""
    app = FastAPI(title="pneumo review page", docs_url=None, redoc_url=None, openapi_url=None)
    limit = int(max_upload_mb * MB)
    page = render_page(model, max_upload_mb)

    def too_large(name: str, size: int | None) -> JSONResponse:
        said = f"is {size / MB:.1f} MB" if size is not None else f"is larger than {max_upload_mb:g} MB"
        reason = (f"refused: the file {said}, over this page's limit of {max_upload_mb:g} MB a file "
                  f"(max_upload_mb={max_upload_mb:g}). Fix: restart the page with a larger max_upload_mb=..., "
                  f"or upload a smaller file")
        return JSONResponse({"file": name, "ok": False, "reason": reason}, status_code=413, headers=HEADERS)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=HEADERS)

    @app.get("/api/model")
    def facts() -> JSONResponse:
        return JSONResponse(model.facts(), headers=HEADERS)

    @app.post("/api/review")
    async def review(request: Request, name: str = "upload") -> JSONResponse:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return too_large(name, int(declared))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return too_large(name, None)
        try:
            answer: dict[str, Any] = await run_in_threadpool(reviewer.review, bytes(body), name)
        except Exception as error:  # a fault of ours, not of the file: say so on the page and keep serving
            log.exception("reviewing %s failed", name)
            answer = {"file": name, "ok": False, "reason": f"could not be reviewed: {type(error).__name__}: {error}"}
            return JSONResponse(answer, status_code=500, headers=HEADERS)
        return JSONResponse(answer, status_code=200 if answer["ok"] else 422, headers=HEADERS)

    return app


def serve(cfg: Any, work: Path) -> None:
    """Load the model `cfg.model` names and serve its page on cfg.host:cfg.port until interrupted
    (Ctrl+C or SIGTERM). Downloads and uploads go under `work` (`pneumo.app.workspace`'s folder).

    Raises:
        SystemExit(1): the port is taken, or the model cannot be loaded; the message says why and the fix.
    """
    import uvicorn

    from pneumo.deploy.onnx_runtime import OnnxModelError
    from pneumo.models.checkpoints import CheckpointError
    from pneumo.tracking.registry import ModelUriError

    host, port = str(cfg.host), int(cfg.port)
    problem = port_problem(host, port)
    if problem:
        raise SystemExit(f"Error: {problem}")
    try:
        model = load_reviewed_model(str(cfg.model), str(cfg.tracking_uri), work / "model")
    except (CheckpointError, OnnxModelError, ModelUriError, ConnectionError, ImportError) as error:
        raise SystemExit(f"Error: {error}") from None
    reviewer = Reviewer(model, int(cfg.display_size), work, cfg.gradcam.target_layer)
    app = create_app(model, reviewer, float(cfg.max_upload_mb))
    shown = f"[{host}]" if ":" in host else host
    print(f"Review page for {model.name}: http://{shown}:{port}/  (Ctrl+C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def port_problem(host: str, port: int) -> str | None:
    """Why `host`:`port` cannot be listened on (taken, or not an address of this machine), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            return (f"cannot listen on {host}:{port} ({error.strerror or error}). Fix: pass another port=... "
                    f"(or stop what listens there); host= must be an address of this machine (127.0.0.1 by default)")
    return None
