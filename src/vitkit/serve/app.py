"""The HTTP API and the page: a FastAPI app built around one opened model.

create_app takes the model object, not a path, so tests and notebooks can serve a model
built in memory. Requests are decoded on a small thread pool, batched by the Batcher and
run on its single model thread; the event loop only moves bytes, so /health stays fast
under load. Every error is a one-line {"error": ...} JSON body with a 4xx status.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from ..visualize.figures import overlay_png
from .batching import Batcher, BatcherClosed
from .images import UploadError, decode_image, set_pixel_limit
from .inference import Engine, Prepared
from .limits import BodyLimit
from .uploads import image_bytes

API_KEY_ENV = "VITKIT_API_KEY"
# The page may talk to its own origin only, and load nothing from anywhere else.
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}


@dataclass
class ServeOptions:
    """Limits and batching of one server (the `vitkit serve` options)."""

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    api_key: str | None = None
    decode_threads: int | None = None  # default: the cores available
    precision: str = "auto"
    engine: str = "auto"  # vitkit.export.route: auto, torch, onnx or openvino (fp32 on a CPU)

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError("max_bytes and max_pixels must be positive")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _wants_png(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "png"
    accept = request.headers.get("accept", "").lower()
    return "image/png" in accept and "application/json" not in accept


@dataclass
class Served:
    """What the routes of one app share: the model's engine, the batcher, the options, and the
    thread pool that decodes uploads (while the app runs)."""

    engine: Engine
    batcher: Batcher
    options: ServeOptions
    api_key: str | None
    page: str
    started: float
    pool: ThreadPoolExecutor | None = None

    def authorize(self, request: Request) -> None:
        """401 unless the request carries the API key (when one is set)."""
        if not self.api_key:
            return
        sent = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            sent = auth[7:].strip()
        if sent is None or not secrets.compare_digest(sent.encode(), self.api_key.encode()):
            raise UploadError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' "
                                   "or 'X-API-Key: KEY'")

    async def decoded(self, request: Request, explain: bool) -> Prepared:
        """The upload read, decoded and prepared on the decode pool."""
        data = await image_bytes(request, self.options.max_bytes)

        def work() -> Prepared:
            return self.engine.prepare(decode_image(data, self.options.max_pixels), explain)

        return await asyncio.get_running_loop().run_in_executor(self.pool, work)

    def summary(self, item: Prepared, probs, topk: int, t0: float) -> dict:
        """The JSON answer for one image: the model, the image, its classes and the time taken."""
        engine = self.engine
        out = {"model": engine.name,
               "image": {"width": item.size[0], "height": item.size[1], "mode": item.mode,
                         "format": item.format}}
        if engine.threshold is not None:  # multi-label: every tag over the threshold, then the top k
            out.update(labels=engine.labels(probs), threshold=engine.threshold)
        return {**out, "top": engine.top(probs, topk), "time_ms": round((time.perf_counter() - t0) * 1000, 2)}


def served(request: Request) -> Served:
    return request.app.state.served


# ---- errors: every one a one-line {"error": ...} body -----------------------------------------

async def upload_error(request: Request, e: UploadError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return _error(e.status, e.message, headers)


async def http_error(request: Request, e: HTTPException) -> JSONResponse:
    what = {404: "not found", 405: "method not allowed"}.get(e.status_code, str(e.detail))
    message = f"{what}: {request.method} {request.url.path}"
    if e.status_code == 405 and e.headers and "allow" in {k.lower() for k in e.headers}:
        message += f" (allowed: {next(v for k, v in e.headers.items() if k.lower() == 'allow')})"
    return _error(e.status_code, message, e.headers)


async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    parts = []
    for err in e.errors():
        where = " ".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return _error(422, "; ".join(parts) or "invalid request")


async def closing(request: Request, e: BatcherClosed) -> JSONResponse:
    return _error(503, str(e), {"Retry-After": "1"})


async def internal(request: Request, e: Exception) -> JSONResponse:
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return _error(500, f"internal error: {type(e).__name__}: {first}")


# ---- routes ---------------------------------------------------------------------------------

def authorize(request: Request) -> None:
    served(request).authorize(request)


async def predict(request: Request, topk: int = Query(5, ge=1, le=10_000)) -> JSONResponse:
    """Top-k classes of one image."""
    s, t0 = served(request), time.perf_counter()
    item = await s.decoded(request, explain=False)
    probs = await s.batcher.submit("predict", item)
    return JSONResponse(s.summary(item, probs, topk, t0))


async def explain(request: Request, topk: int = Query(5, ge=1, le=10_000),
                  format: str | None = Query(None, pattern="^(json|png)$")) -> Response:
    """Top-k classes and the attention-rollout overlay (PNG, base64 in JSON or the body)."""
    s, t0 = served(request), time.perf_counter()
    engine = s.engine
    if not engine.can_explain:
        raise UploadError(400, f"this model ({engine.describe()['kind']}) has no attention capture, "
                               "so it cannot be explained; use /v1/predict, or serve the vitkit model "
                               "(run or model directory) instead of an ONNX export")
    item = await s.decoded(request, explain=True)
    probs, rollout = await s.batcher.submit("explain", item)
    png, w, h = await asyncio.get_running_loop().run_in_executor(s.pool, overlay_png, item.display, rollout)
    if _wants_png(request, format):
        top = engine.top(probs, 1)[0]
        return Response(png, media_type="image/png",
                        headers={"X-Top-Class": top["class"].encode("ascii", "replace").decode(),
                                 "X-Top-Probability": str(top["probability"])})
    body = s.summary(item, probs, topk, t0)
    body["overlay"] = {"png_base64": base64.b64encode(png).decode("ascii"), "width": w, "height": h}
    return JSONResponse(body)


async def model_info(request: Request) -> dict:
    """Architecture, classes, input spec, parameter count, and the server's limits."""
    s = served(request)
    return {**s.engine.describe(), "server": {k: v for k, v in asdict(s.options).items() if k != "api_key"}}


async def stats(request: Request) -> dict:
    """Forward passes and batch sizes since start."""
    s = served(request)
    return {"uptime_s": round(time.time() - s.started, 3), "pending": s.batcher.pending,
            **s.batcher.stats.to_dict()}


async def health(request: Request) -> dict:
    """Liveness: answered by the event loop, never queued behind the model."""
    return {"status": "ok", "started": served(request).started}


async def index(request: Request) -> HTMLResponse:
    return HTMLResponse(served(request).page, headers={"Content-Security-Policy": PAGE_CSP,
                                                       "X-Content-Type-Options": "nosniff",
                                                       "Referrer-Policy": "no-referrer"})


@asynccontextmanager
async def lifespan(app: FastAPI):
    """The decode pool and the batcher's model thread live while the app runs."""
    s: Served = app.state.served
    threads = s.options.decode_threads or len(os.sched_getaffinity(0))
    s.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vitkit-decode")
    await s.batcher.start()
    try:
        yield
    finally:
        await s.batcher.close()  # requests already queued still get their answers
        s.pool.shutdown(wait=True)
        s.pool = None


def create_app(opened: Any, options: ServeOptions | None = None) -> FastAPI:
    """The app serving `opened`: a vitkit.loading.OpenedModel (or anything with .model,
    .classes, .spec), e.g. from open_model(path), or built around a model in memory."""
    options = options or ServeOptions()
    api_key = options.api_key if options.api_key is not None else os.environ.get(API_KEY_ENV) or None
    engine = Engine(opened, options.precision, engine=options.engine)
    set_pixel_limit(options.max_pixels)
    batcher = Batcher(engine.run_batch, options.max_batch, options.max_wait_ms / 1000.0)
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    app = FastAPI(title="vitkit", summary="Vision Transformer predictions and attention rollout",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.served = Served(engine, batcher, options, api_key, page, time.time())
    app.state.engine, app.state.batcher, app.state.options = engine, batcher, options
    app.add_middleware(BodyLimit, max_bytes=options.max_bytes)
    for error, handler in ((UploadError, upload_error), (HTTPException, http_error),
                           (RequestValidationError, validation_error), (BatcherClosed, closing),
                           (Exception, internal)):
        app.add_exception_handler(error, handler)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])
    v1.add_api_route("/predict", predict, methods=["POST"], openapi_extra=UPLOAD_BODY)
    v1.add_api_route("/explain", explain, methods=["POST"], openapi_extra=UPLOAD_BODY,
                     responses={200: {"content": {"image/png": {}}}})
    v1.add_api_route("/model", model_info, methods=["GET"])
    v1.add_api_route("/stats", stats, methods=["GET"])
    app.include_router(v1)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/", index, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)
    return app
