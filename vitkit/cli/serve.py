"""`vitkit serve`: a model behind the open inference protocol, a web page and metrics (uvicorn)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

from ..errors import VitkitError
from .common import checkpoint_flag, device_flag, precision_flag, runtime_flag


def _serve(args: argparse.Namespace) -> int:
    from ..serve import app_module
    served = app_module()  # one-line error without the serve extra
    import uvicorn

    if args.workers < 1:
        raise VitkitError(f"--workers {args.workers}: must be at least 1")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    settings = dict(source=str(args.checkpoint), name=args.name, device=args.device, precision=args.precision,
                    runtime=args.runtime, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                    max_queue=args.max_queue, max_body_mb=args.max_body_mb,
                    threads=max(1, cores // args.workers) if args.workers > 1 else None)
    served.configure_logging(args.log_level)
    app = served.create_app(**settings)  # a bad checkpoint or flag fails here, in one line, before any worker starts
    backend, state = app.state.vitkit.backend, app.state.vitkit
    served.tune_interpreter(backend.runtime)
    host = f"[{args.host}]" if ":" in args.host else args.host
    processes = f"; {args.workers} worker processes, {state.threads} threads each" if args.workers > 1 else ""
    print(f"serving {backend.describe()}{processes}\n  web page  http://{host}:{args.port}/\n"
          f"  protocol  http://{host}:{args.port}/v2/models/{backend.name}/infer (open inference protocol)\n"
          f"  metrics   http://{host}:{args.port}/metrics", flush=True)
    common = dict(host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                  timeout_graceful_shutdown=args.drain_seconds)
    if args.workers == 1:
        uvicorn.run(app, **common)
        return 0
    state.thread.shutdown()  # the workers load their own copies; this one only checked that it loads
    del app, backend, state
    ready_dir = tempfile.mkdtemp(prefix="vitkit-serve-ready.")  # each worker marks its warm-up here
    os.environ[served.WORKER_SETTINGS] = json.dumps({**settings, "log_level": args.log_level, "ready_dir": ready_dir,
                                                     "workers": args.workers})
    os.environ["OMP_NUM_THREADS"] = str(settings["threads"])  # for every library in the workers
    try:
        uvicorn.run("vitkit.serve.app:worker_app", factory=True, workers=args.workers, **common)
    finally:
        shutil.rmtree(ready_dir, ignore_errors=True)
    return 0


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP: open inference protocol, web page, metrics",
                       description="Serve any model vitkit loads (run folder, vitkit/timm/HF/.npz file, Hub name, "
                                   "exported .onnx or OpenVINO .xml) over HTTP: the open inference protocol "
                                   "(KServe v2: /v2/...), /predict and /explain for files, a web page at /, "
                                   "Prometheus metrics at /metrics. Concurrent requests are batched. SIGTERM "
                                   "or Ctrl-C stops taking requests and finishes those in flight.")
    checkpoint_flag(p)
    p.add_argument("--name", help="the model's name in URLs (default: the registered model name it records)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for all networks)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    device_flag(p)
    precision_flag(p)
    runtime_flag(p)
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="most images in one forward pass (default 32); concurrent requests are grouped up to it")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for requests that are still being read, or for the callers of the "
                        "last batch to send again (default 5)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests that may wait for the model (default 256); beyond it: 503 with Retry-After")
    p.add_argument("--max-body-mb", type=float, default=20.0,
                   help="largest request body in MiB (default 20); larger ones get 413")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port (uvicorn's workers), each with its own copy of the "
                        "model and cores/N threads (default 1: one process using every core)")
    p.add_argument("--drain-seconds", type=int, default=30,
                   help="on SIGTERM, how long requests in flight may take to finish (default 30)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="info (default) logs one JSON line per request (method, path, status, latency, batch)")
    p.set_defaults(func=_serve)
