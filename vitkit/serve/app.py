"""The ASGI app: the open inference protocol under /v2, /predict and /explain for people and scripts,
a web page at /, Prometheus metrics at /metrics. Every error is `{"error": "..."}` with a 4xx status
(5xx only for a fault of the server itself), and nothing in a response names a path on this disk."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from ..errors import VitkitError
from .backend import Backend, softmax, top_k
from .batcher import Batcher, ModelThread, QueueFull
from .metrics import Metrics
from .protocol import InferRequest, OutputTensor, ProtocolError, RequestedOutput, encode_response, parse_infer

log = logging.getLogger("vitkit.serve")
VERSION = "1"  # the one model version this server holds
OUTPUTS = ("logits", "probabilities", "classes")
DEFAULT_OUTPUTS = ("probabilities", "classes")
IMAGES, IMAGE_BYTES = "images", "image_bytes"


class BodyTooLarge(Exception):
    pass


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers)


class _Edge:
    """Pure ASGI middleware, the cheapest place for what every request needs: the body limit (413 before
    the body is read when Content-Length says so, else once the bytes read pass it), the latency and
    status metrics, and one structured log line."""

    def __init__(self, app: Any, state: "ServerState"):
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, limit, status = time.perf_counter(), self.state.max_body, [500]
        length = dict(scope.get("headers") or []).get(b"content-length")
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if length is not None and length.isdigit() and int(length) > limit:
                await error(413, f"request body of {int(length):,} bytes exceeds the limit of {limit:,} "
                                 "(--max-body-mb)")(scope, receive, sending)
            else:
                await self.app(scope, limited, sending)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            seconds = time.perf_counter() - t0
            self.state.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.state.metrics.latency.labels(endpoint).observe(seconds)
            log.info(json.dumps({"method": scope["method"], "path": scope["path"], "status": status[0],
                                 "latency_ms": round(seconds * 1000, 2), "batch": scope.get("vitkit.batch"),
                                 "worker": os.getpid()}))


class ServerState:
    def __init__(self, backend: Backend, thread: ModelThread, max_batch_size: int, max_wait_ms: float,
                 max_queue: int, max_body_mb: float, threads: int):
        self.backend, self.thread, self.max_body = backend, thread, int(max_body_mb * 1024 * 1024)
        self.threads = threads  # the model thread's intra-op threads
        self.metrics = Metrics(lambda: self.batcher.depth)
        self.batcher = Batcher(backend.run, backend.prepare, thread, max_batch_size, max_wait_ms, max_queue,
                               self.metrics.batch, backend.run_pieces if backend.streams else None)
        self.ready = threading.Event()  # this process has warmed up: it may run requests
        # `vitkit serve --workers N`: a folder where each warmed-up worker leaves a file, and N. The
        # workers share one socket, so a readiness probe reaches any one of them: it must not say ready
        # while another still answers 503 (a test caught that race).
        self.peers: tuple[Path, int] | None = None

    def warmed_up(self) -> None:
        self.ready.set()
        if self.peers:
            (self.peers[0] / str(os.getpid())).touch()

    def all_ready(self) -> bool:
        """Ready for traffic: warmed up, and so are the other workers of this server."""
        return self.ready.is_set() and (not self.peers or len(list(self.peers[0].iterdir())) >= self.peers[1])


def create_app(source: str | Path | Backend, name: str | None = None, *, device: str = "cpu",
               precision: str = "auto", runtime: str = "auto", max_batch_size: int = 32, max_wait_ms: float = 5.0,
               max_queue: int = 256, max_body_mb: float = 20.0, threads: int | None = None) -> FastAPI:
    """The ASGI app serving `source` (anything `vitkit.load` loads, or a `Backend` already loaded).
    The model loads here, on the thread that will run it; the warm-up runs when the app starts, and
    /v2/health/ready says when it is done. `threads`: the model's intra-op threads (default: torch's,
    one per core); `vitkit serve --workers N` gives each worker process its share of the cores."""
    for flag, value, low in (("--max-batch-size", max_batch_size, 1), ("--max-queue", max_queue, 1),
                             ("--max-wait-ms", max_wait_ms, 0), ("--max-body-mb", max_body_mb, 0.001),
                             ("threads", threads or 1, 1)):
        if value < low:
            raise VitkitError(f"{flag} {value}: must be at least {low}")
    thread = ModelThread()
    try:
        if threads:
            thread.run(torch.set_num_threads, threads)
        backend = source if isinstance(source, Backend) else thread.run(Backend, source, name, device, precision,
                                                                         runtime)
        state = ServerState(backend, thread, max_batch_size, max_wait_ms, max_queue, max_body_mb,
                            thread.run(torch.get_num_threads))
        if backend.streams:
            # its runtime's threads run beside the decoding (Batcher._run_streamed): a torch thread team
            # preprocessing there contends with them (ViT-S/16 int8 at 64 clients: 0.87x LitServe with
            # torch on 2 threads, 1.06x on 1; docs/serving.md)
            thread.run(torch.set_num_threads, 1)
    except BaseException:
        thread.shutdown()
        raise

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        warm = asyncio.get_running_loop().create_task(state.thread.call(backend.warm_up, max_batch_size))
        warm.add_done_callback(lambda t: state.warmed_up() if not t.exception() else
                               log.error(f"warm-up failed: {t.exception()}"))
        yield
        await state.batcher.stop()
        state.thread.shutdown()

    app = FastAPI(title="vitkit", version=VERSION, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.vitkit = state
    app.add_middleware(_Edge, state=state)
    _errors(app)
    _v2_routes(app, state)
    _convenience_routes(app, state)
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, e: BodyTooLarge):
        return error(413, f"request body exceeds the limit of {request.app.state.vitkit.max_body:,} bytes "
                          "(--max-body-mb)")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return error(400, "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))

    @app.exception_handler(ProtocolError)
    async def protocol(request: Request, e: ProtocolError):
        return error(e.status, str(e))

    @app.exception_handler(VitkitError)
    async def user_error(request: Request, e: VitkitError):
        return error(400, str(e))

    @app.exception_handler(QueueFull)
    async def full(request: Request, e: QueueFull):
        return error(503, f"{e}; retry shortly", {"Retry-After": "1"})


def _require(state: ServerState) -> None:
    """Inference only once the warm-up is done (the readiness endpoints say when)."""
    if not state.ready.is_set():
        raise HTTPException(503, "the model is still warming up", headers={"Retry-After": "1"})


async def _classify(request: Request, state: ServerState, x: torch.Tensor | list[torch.Tensor]) -> np.ndarray:
    """Logits of `x` (numpy: nothing but the model thread runs torch kernels)."""
    out, batches = await state.batcher.submit(x, len(x), request.client and tuple(request.client))
    request.scope["vitkit.batch"] = batches
    return out


# Requests up to INLINE_BYTES are parsed and checked on the event loop (JSON, base64, image headers: the
# images themselves are decoded on the model thread, Backend.prepare): for them a thread hop cost more
# than the work (MNIST int8 file at 1 client: p50 3.05 -> 2.62 ms; ViT-S/16 JPEGs of ~30 KB at 8 and 64
# clients in docs/serving.md; 2-core Xeon, 2026-12-03). Larger bodies are parsed in a thread.
INLINE_BYTES = 256 * 1024


async def _prepare(state: ServerState, fn: Callable[[], Any], size: int) -> Any:
    """`fn()` parses and checks a request (no torch kernels, no decoding: those run on the model thread):
    here for small requests, in a thread for the rest, announced to the batcher so that it waits for them."""
    if size <= INLINE_BYTES:
        return fn()
    state.batcher.arriving += 1
    try:
        return await asyncio.to_thread(fn)
    finally:
        state.batcher.arrived()


def _v2_routes(app: FastAPI, state: ServerState) -> None:
    b = state.backend

    def model_metadata() -> dict[str, Any]:
        c, h, w = b.input_shape
        k = len(b.classes)
        return {"name": b.name, "versions": [VERSION], "platform": f"vitkit_{b.runtime}",
                "inputs": [{"name": IMAGES, "datatype": "FP32", "shape": [-1, c, h, w]},
                           {"name": IMAGE_BYTES, "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, k]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
                            {"name": "classes", "datatype": "BYTES", "shape": [-1, -1]}],
                "parameters": {"classes": b.classes, "preprocess": b.pre.to_dict(), "precision": b.precision,
                               "threads": state.threads,
                               "default_outputs": list(DEFAULT_OUTPUTS), "top_k": 5}}

    @app.get("/v2")
    async def server_metadata():
        from .. import __version__
        return {"name": "vitkit", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if not state.all_ready():
            return error(503, "the model is still warming up", {"Retry-After": "1"})
        return {"ready": True}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str = VERSION):
        _require_model(name, version)
        return model_metadata()

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = VERSION):
        _require_model(name, version)
        if not state.all_ready():
            return error(503, "the model is still warming up", {"Retry-After": "1"})
        return {"name": name, "ready": True}

    def _require_model(name: str, version: str) -> None:
        if name != b.name:
            raise ProtocolError(404, f"unknown model '{name}' (this server holds '{b.name}')")
        if version != VERSION:
            raise ProtocolError(404, f"model '{name}' has no version '{version}' (it has '{VERSION}')")

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = VERSION):
        _require_model(name, version)
        _require(state)
        body = await request.body()
        length = request.headers.get("inference-header-content-length")
        req = await _prepare(state, lambda: _infer_inputs(b, body, length), len(body))
        x, parsed = req
        logits = await _classify(request, state, x)
        content, headers = encode_response(b.name, VERSION, parsed.id, _outputs(b, parsed, logits))
        return Response(content, headers=headers)


def _infer_inputs(b: Backend, body: bytes, header_length: str | None) -> tuple[Any, InferRequest]:
    req = parse_infer(body, header_length)
    if len(req.inputs) != 1:
        raise ProtocolError(400, f"{len(req.inputs)} inputs: send one, '{IMAGES}' (FP32 [N, C, H, W]) or "
                                 f"'{IMAGE_BYTES}' (BYTES [N] encoded image files)")
    t = req.inputs[0]
    if t.name not in (IMAGES, IMAGE_BYTES):
        raise ProtocolError(400, f"unknown input '{t.name}': '{IMAGES}' (FP32 [N, C, H, W]) or '{IMAGE_BYTES}' "
                                 "(BYTES [N] encoded image files)")
    want = "FP32" if t.name == IMAGES else "BYTES"
    if t.datatype != want:
        raise ProtocolError(400, f"input '{t.name}' has datatype {t.datatype}, expected {want}")
    if t.datatype == "FP32":
        x = b.check_tensor(t.data, t.name)
    else:
        if not (len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1)):
            raise ProtocolError(400, f"input '{t.name}': shape {t.shape}, expected [N] (one encoded file each)")
        x = [b.check_image(data, f"{t.name}[{i}]") for i, data in enumerate(t.data)]
    if len(x) == 0:
        raise ProtocolError(400, f"input '{t.name}' holds no images")
    for o in req.outputs or []:
        if o.name not in OUTPUTS:
            raise ProtocolError(400, f"unknown output '{o.name}' ({', '.join(OUTPUTS)})")
    _top_k(req.parameters.get("top_k", 5), len(b.classes))
    return x, req


def _top_k(value: Any, classes: int) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ProtocolError(400, f"top_k must be a positive integer, got {value!r}")
    return min(value, classes)


def _labels(probs: np.ndarray, k: int, classes: list[str]) -> list[list[bytes]]:
    """Triton's classification strings, "value:index:label", best first."""
    v, i = top_k(probs, k)
    return [[f"{p:.6f}:{c}:{classes[c]}".encode() for p, c in zip(pv, iv)] for pv, iv in zip(v.tolist(), i.tolist())]


def _outputs(b: Backend, req: InferRequest, logits: np.ndarray) -> list[OutputTensor]:
    binary_default = bool(req.parameters.get("binary_data_output", False))
    wanted = req.outputs or [RequestedOutput(n, binary_default) for n in DEFAULT_OUTPUTS]
    probs = softmax(logits)
    k = _top_k(req.parameters.get("top_k", 5), len(b.classes))
    out = []
    for o in wanted:
        values = {"logits": logits, "probabilities": probs, "classes": probs}[o.name]
        if o.name == "classes" or o.classification:
            out.append(OutputTensor(o.name, "BYTES", _labels(values, o.classification or k, b.classes), o.binary))
        else:
            out.append(OutputTensor(o.name, "FP32", values, o.binary))
    return out


async def _uploads(request: Request) -> list[tuple[str, bytes]]:
    """(name, bytes) of every uploaded file: multipart form fields, or the raw body as one image."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=256, max_fields=256)
        except BodyTooLarge:
            raise
        except Exception as e:  # noqa: BLE001 - the multipart parser's own error types
            raise ProtocolError(400, f"malformed multipart body ({e})") from None
        files = [(v.filename or k, await v.read()) for k, v in form.multi_items() if hasattr(v, "read")]
        await form.close()
        if not files:
            raise ProtocolError(400, "the form holds no files (send them as file fields, e.g. -F file=@cat.jpg)")
        return files
    body = await request.body()
    if not body:
        raise ProtocolError(400, "no image: send the file as the body, or as multipart form fields")
    return [("image", body)]


def _query_top_k(request: Request, classes: int) -> int:
    return _top_k(request.query_params.get("top_k", "5"), classes)


def _convenience_routes(app: FastAPI, state: ServerState) -> None:
    b = state.backend
    page = resources.files("vitkit.serve").joinpath("page.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page.replace("{{MODEL}}", b.name).replace("{{ATTENTION}}", "true" if b.has_attention else "false")

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/predict")
    async def predict(request: Request):
        _require(state)
        k = _query_top_k(request, len(b.classes))
        files = await _uploads(request)
        x = await _prepare(state, lambda: [b.check_image(data, name) for name, data in files],
                           sum(len(data) for _, data in files))
        p, idx = top_k(softmax(await _classify(request, state, x)), k)
        return {"model": b.name, "predictions": [
            {"name": name, "top": [{"class": b.classes[c], "prob": round(v, 6)} for c, v in zip(ii, pi)]}
            for (name, _), pi, ii in zip(files, p.tolist(), idx.tolist())]}

    @app.post("/explain")
    async def explain(request: Request):
        _require(state)
        if not b.has_attention:
            raise ProtocolError(400, f"model {b.name} has no self-attention to explain (a CNN or an exported "
                                     "file): /explain needs a ViT checkpoint")
        k = _query_top_k(request, len(b.classes))
        fmt = request.query_params.get("format", "json")
        if fmt not in ("json", "png"):
            raise ProtocolError(400, f"format {fmt!r}: json or png")
        files = await _uploads(request)
        if len(files) != 1:
            raise ProtocolError(400, f"{len(files)} files: /explain takes one image")
        name, data = files[0]
        e, png = await state.thread.call(b.explain, data, name)
        if fmt == "png":
            return Response(png, media_type="image/png")
        p, idx = top_k(softmax(e.logits.numpy()), k)
        return {"model": b.name, "name": name, "grid": list(e.rollout.shape),
                "top": [{"class": b.classes[c], "prob": round(v, 6)} for c, v in zip(idx.tolist(), p.tolist())],
                "rollout": np.round(e.rollout.numpy().astype(np.float64), 6).tolist(),
                "overlay_png": base64.b64encode(png).decode()}


WORKER_SETTINGS = "VITKIT_SERVE_WORKER"  # how `vitkit serve --workers N` hands its settings to the workers

# On onnxruntime, the model thread gives up the GIL for each session run and each decode and resize,
# and takes it back from the event loop, which holds it while it parses the next requests; each time
# it may wait up to the interpreter's switch interval (5 ms by default). With 0.5 ms, ViT-S/16 on the
# int8 file served 1.10x (8 clients) and 1.01x (64) as many images as with the default (median
# per-round ratios over 10 rounds of two side-by-side runs, benchmarks/serve.py --servers
# vitkit,vitkit:DIR,litserve; 2-core Xeon, 2026-12-03; docs/serving.md). The PyTorch path, which takes
# the GIL back after every operator, served 0.91-0.94x with it (4 rounds), and OpenVINO showed no
# difference within the noise: they keep the default. `vitkit serve` sets it; an application that
# mounts `create_app` keeps its own.
SWITCH_INTERVAL_S = {"onnxruntime": 0.0005}


def tune_interpreter(runtime: str) -> None:
    """Settle the interpreter of a server process on `runtime`, its model loaded: the GIL switch interval
    (above), and a garbage collector that no longer walks the loaded heap. A full collection walks every
    object the process holds (torch, the runtime, the model) while every request waits: 12-83 ms each,
    six in 11 s, which set the p99 latency of the int8 MNIST file at 8 clients (48-53 ms against a 6 ms
    p50). Frozen once loaded (`gc.freeze`: what exists now is skipped from then on), p99 8.5-8.9 ms and
    1.02-1.06x the throughput (two servers of each kind in turn, wrk 8 s; AMX Xeon, 2026-12-07, a
    one-off script logging the collector's pauses; docs/serving.md)."""
    if runtime in SWITCH_INTERVAL_S:
        sys.setswitchinterval(SWITCH_INTERVAL_S[runtime])
    gc.collect()
    gc.freeze()


def configure_logging(level: str) -> None:
    """One JSON line per request at info (the server's own logger; uvicorn keeps its own)."""
    logging.basicConfig(stream=sys.stderr, format="%(message)s")
    log.setLevel(level.upper())


def worker_app() -> FastAPI:
    """uvicorn's app factory in each worker process of `vitkit serve --workers N`: its own model, model
    thread and share of the cores, from the settings the parent process put in the environment."""
    if WORKER_SETTINGS not in os.environ:
        raise VitkitError(f"vitkit.serve.app:worker_app is for `vitkit serve --workers N` (it reads {WORKER_SETTINGS}); "
                          "elsewhere use vitkit.serve.create_app(...)")
    settings = json.loads(os.environ[WORKER_SETTINGS])
    configure_logging(settings.pop("log_level"))
    ready_dir, workers = settings.pop("ready_dir"), settings.pop("workers")
    app = create_app(**settings)
    app.state.vitkit.peers = (Path(ready_dir), workers)
    tune_interpreter(app.state.vitkit.backend.runtime)
    return app
