"""`vitkit serve` under load over loopback, against its own offline limit and against LitServe.

    python benchmarks/serve.py --checkpoint RUN_DIR --models mnist,s16 --backends pytorch,int8 --clients 1,8,64

For each model (`mnist`: a trained MNIST run; `s16`: ViT-S/16 with random weights) and backend
(`pytorch`: the checkpoint on PyTorch, `--runtime pytorch`; `checkpoint`: the checkpoint on the runtime
`vitkit serve` picks with no flags, OpenVINO on x86 CPUs where it is installed; `int8`: the file
`vitkit export --format int8` writes, on onnxruntime; `int8_ir`: the IR `vitkit export --format openvino
--precision int8` writes, on OpenVINO):

- offline: the backend's own throughput at the server's batch size (the limit a server can reach)
  and its batch-1 latency, timed in this process;
- `vitkit serve` and a LitServe app holding the same vitkit backend (same model object, same
  preprocessing, same precision) with the same batch settings (--max-batch-size, --max-wait-ms as
  LitServe's batch_timeout), each in its own process, both started at once and frozen (SIGSTOP)
  while the other one or the offline timing runs;
- --rounds rounds, round-robin: the offline limit, then each server in turn (order alternating), and
  for each client count wrk (Debian's `wrk`: a C load generator, cheap on the shared CPU) keeps that
  many connections busy for --seconds, each request one encoded image as base64 JSON (the open
  inference protocol's BYTES tensor for vitkit, `{"image": ...}` for LitServe), after a warm-up.

Reported per row: requests (= images) per second (and for vitkit, per round, how many batches of each
size range ran: the rhythm that run fell into), p50 / p99 latency, the share of the machine's CPU
the load generator used (it shares the cores with the server), the fraction of the offline limit, the
ratio to LitServe at the same client count (medians over rounds; ratios as the median and range of
the per-round ratios), and at 1 client the per-request overhead (p50 minus the
offline batch-1 latency). Results go to benchmarks/results/serve.json (and .md).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import checkpoint_for, cpu_description, rate
from vitkit.machine import describe


def images_for(key: str, size: tuple[int, int], in_chans: int, count: int = 16) -> list[bytes]:
    """Encoded real images at the model's size: MNIST-like digits (PNG) or scikit-image's photos (JPEG)."""
    from PIL import Image
    out = []
    if in_chans == 1:
        from sklearn.datasets import load_digits
        for img in load_digits().images[:count]:
            buf = io.BytesIO()
            Image.fromarray((img * 255 / 16).astype(np.uint8)).resize(size[::-1]).save(buf, "PNG")
            out.append(buf.getvalue())
        return out
    try:
        from skimage import data  # real photos shipped in its wheel: works offline
    except ImportError:
        raise SystemExit("benchmarks/serve.py sends scikit-image's sample photos: pip install scikit-image") from None
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(photos[i % len(photos)]).resize(size[::-1]).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class Offline:
    """The backend the servers hold, in this process: its throughput at the server's batch size (the limit a
    server can reach) and its median batch-1 latency, timed once per round while the servers are frozen."""

    def __init__(self, source: Path, runtime: str, batch: int):
        from vitkit.serve.backend import Backend
        self.b = Backend(source, runtime=runtime)
        self.b.warm_up(batch)
        self.x, self.one = torch.randn(batch, *self.b.input_shape), torch.randn(1, *self.b.input_shape)
        self.b.run(self.x)

    def measure(self, seconds: float) -> tuple[float, float]:
        limit = rate(lambda: self.b.run(self.x), len(self.x), seconds, min_runs=3)
        lat = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(lat) < 20:
            t0 = time.perf_counter()
            self.b.run(self.one)
            lat.append((time.perf_counter() - t0) * 1000)
        return limit, statistics.median(lat)


LITSERVE_APP = """
import base64, sys, torch, litserve as ls
from vitkit.serve.backend import Backend
source, runtime, port, batch, wait_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])

class VitkitAPI(ls.LitAPI):
    def setup(self, device):
        self.b = Backend(source, runtime=runtime)
        self.b.warm_up(batch)
    def decode_request(self, request):  # decoding and preprocessing, as vitkit's server does them
        return self.b.prepare([self.b.check_image(base64.b64decode(request["image"]), "image")])[0]
    def batch(self, inputs):
        return torch.stack(inputs)
    def predict(self, x):
        return self.b.run(x)
    def unbatch(self, output):
        return list(output)
    def encode_response(self, logits):
        p, i = logits.softmax(-1).topk(min(5, len(self.b.classes)))
        return {"top": [{"class": self.b.classes[c], "prob": round(v, 6)} for c, v in zip(i.tolist(), p.tolist())]}

if __name__ == "__main__":
    api = VitkitAPI(max_batch_size=batch, batch_timeout=wait_ms / 1000)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(host="127.0.0.1", port=port, log_level="warning",
                                                                    generate_client_file=False)
"""


BACKENDS = {"pytorch": "pytorch", "checkpoint": "auto", "int8": "auto", "int8_ir": "auto"}  # -> serve's --runtime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(server: str, source: Path, runtime: str, batch: int, wait_ms: float,
          workdir: Path) -> tuple[subprocess.Popen, str, str]:
    """(process, base URL, the request path) of one server, once it answers."""
    import httpx
    port = free_port()
    cwd = None
    if server.startswith("vitkit:"):  # another checkout's server, for side-by-side variants: its cwd comes
        cwd = server.split(":", 1)[1]  # first on `python -m vitkit`'s path
    if server.startswith("vitkit"):
        cmd = [sys.executable, "-m", "vitkit", "serve", "--checkpoint", str(Path(source).resolve()), "--runtime", runtime,
               "--port", str(port), "--max-batch-size", str(batch), "--max-wait-ms", str(wait_ms), "--log-level", "warning", "--name", "m"]
        health, path = "/v2/health/ready", "/v2/models/m/infer"
    else:
        app = workdir / "litserve_app.py"
        app.write_text(LITSERVE_APP)
        cmd = [sys.executable, str(app), str(Path(source).resolve()), runtime, str(port), str(batch), str(wait_ms)]
        health, path = "/health", "/predict"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < 180:
        if proc.poll() is not None:
            raise RuntimeError(f"{server} exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(url + health, timeout=2).status_code == 200:
                return proc, url, path
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{server} did not become ready")


def pause(proc: subprocess.Popen, frozen: bool) -> None:
    """Freeze or resume a server (with its worker processes): an idle LitServe polls its queues (about 10%
    of a core here), which would slow whatever is measured beside it."""
    os.killpg(proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGCONT)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


WRK_SCRIPT = """
local bodies = {%s}
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, bodies[(n %% #bodies) + 1])
end
"""


def lua_string(s: str) -> str:
    return "[==[" + s + "]==]"


def bodies(server: str, images: list[bytes]) -> list[str]:
    if server.startswith("vitkit"):
        return [json.dumps({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                        "data": [base64.b64encode(im).decode()]}],
                            "outputs": [{"name": "classes"}]}) for im in images]
    return [json.dumps({"image": base64.b64encode(im).decode()}) for im in images]


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk(url: str, path: str, script: Path, clients: int, seconds: float) -> dict:
    """One wrk run: requests/s, p50/p99 in ms, non-2xx count, and the CPU share wrk itself used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "--latency",
                          "--timeout", "30s", "-s", str(script), url + path], capture_output=True, text=True,
                         check=True).stdout
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / wall / os.cpu_count()

    def percentile(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(m.group(1)) * UNITS[m.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    return {"req_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50_ms": percentile("50"),
            "p99_ms": percentile("99"), "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(0) if errors else "", "loadgen_cpu_share": cpu}


def batch_sizes(url: str) -> dict[str, float]:
    """vitkit's batch-size histogram (cumulative bucket counts by upper bound) from its /metrics."""
    import httpx
    text = httpx.get(url + "/metrics", timeout=10).text
    return {le: float(n) for le, n in re.findall(r'^vitkit_batch_size_bucket\{le="([^"]+)"\} (\S+)', text, re.M)}


def batches_between(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """How many batches of each size range ran between two histograms ("<=8": sizes 5-8 after a bound of 4)."""
    out, below = {}, 0.0
    for le in after:
        cumulative = after[le] - before.get(le, 0.0)
        if cumulative - below:
            out[f"<={le}"] = int(cumulative - below)
        below = cumulative
    return out


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(key: str, backend: str, source: Path, runtime: str, images: list[bytes], servers: list[str],
            clients: list[int], args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Every server for one model and backend, started together and measured round-robin: in each round the
    offline limit, then each server in turn (the others frozen), every client count; the order of the
    servers alternates between rounds. Medians over rounds, and the per-round ratios to LitServe."""
    off = Offline(source, runtime, args.max_batch_size)
    running = {}
    try:
        for server in servers:
            running[server] = start(server, source, runtime, args.max_batch_size, args.max_wait_ms, tmp)
            pause(running[server][0], True)
        runs = {(server, c): [] for server in servers for c in clients}
        off.measure(1.0)  # discarded: the first timing after the servers started once ran 70x slow (MNIST)
        limits = []
        for r in range(args.rounds):
            limits.append(off.measure(3.0))
            print(f"{key} {backend} round {r + 1}: offline {limits[-1][0]:.1f} img/s at batch "
                  f"{args.max_batch_size}, batch-1 {limits[-1][1]:.2f} ms", file=sys.stderr, flush=True)
            for server in servers[r % len(servers):] + servers[:r % len(servers)]:
                proc, url, path = running[server]
                script = tmp / f"{re.sub(r'[^A-Za-z0-9]', '_', server)}.lua"
                script.write_text(WRK_SCRIPT % (", ".join(lua_string(b) for b in bodies(server, images)), path))
                pause(proc, False)
                try:
                    wrk(url, path, script, 8, 2)  # warm-up
                    for c in clients:
                        before = batch_sizes(url) if server.startswith("vitkit") else None
                        res = wrk(url, path, script, c, args.seconds)
                        if before is not None:  # the rhythm of batches this run fell into
                            res["batches"] = batches_between(before, batch_sizes(url))
                        runs[server, c].append(res)
                        print(f"  {server} {c} clients: {res['req_s']:.1f} req/s, p50 {res['p50_ms']:.1f} ms"
                              + (f", batches {res['batches']}" if "batches" in res else ""), file=sys.stderr, flush=True)
                        if res["non_2xx"] or res["socket_errors"]:
                            print(f"WARNING: {server} answered {res['non_2xx']} requests with errors "
                                  f"({res['socket_errors']}): its figures do not count", file=sys.stderr)
                finally:
                    pause(proc, True)
    finally:
        for proc, _, _ in running.values():
            stop(proc)
    rows = []
    for (server, c), rs in runs.items():
        row = {"model": key, "backend": backend, "server": server, "clients": c, "rounds": len(rs),
               **{m: statistics.median(x[m] for x in rs) for m in ("req_s", "p50_ms", "p99_ms", "loadgen_cpu_share")},
               "non_2xx": sum(x["non_2xx"] for x in rs),
               "socket_errors": [x["socket_errors"] for x in rs if x["socket_errors"]],
               "req_s_per_round": [x["req_s"] for x in rs],
               "batches_per_round": [x.get("batches") for x in rs],
               "offline_img_s": statistics.median(lim for lim, _ in limits),
               "offline_b1_ms": statistics.median(b1 for _, b1 in limits),
               "of_limit": spread([x["req_s"] / lim for x, (lim, _) in zip(rs, limits)])}
        row["overhead_ms"] = row["p50_ms"] - row["offline_b1_ms"]
        if server != "litserve" and ("litserve", c) in runs:
            row["x_litserve"] = spread([a["req_s"] / b["req_s"] for a, b in zip(rs, runs["litserve", c])])
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    def ratio(d: dict | None) -> str:
        return f"{d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f})" if d else ""
    lines = ["| model | backend | server | clients | img/s | p50 ms | p99 ms | of offline limit | x LitServe | "
             "overhead at 1 client (ms) | load generator CPU | non-2xx |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lim = r["of_limit"]
        cells = [r["model"], r["backend"], r["server"], r["clients"], f"{r['req_s']:.1f}", f"{r['p50_ms']:.2f}",
                 f"{r['p99_ms']:.2f}", f"{100 * lim['median']:.0f}% ({100 * lim['min']:.0f}-{100 * lim['max']:.0f})",
                 ratio(r.get("x_litserve")), f"{r['overhead_ms']:.2f}" if r["clients"] == 1 else "",
                 f"{100 * r['loadgen_cpu_share']:.0f}%", r["non_2xx"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="trained MNIST run (for the mnist row)")
    ap.add_argument("--models", default="mnist,s16", help="comma-separated: mnist, ti16, s16, b16")
    ap.add_argument("--backends", default="pytorch,int8",
                    help="pytorch (the checkpoint on PyTorch), checkpoint (on the runtime serve picks with no flags), "
                         "int8 (its int8 .onnx file, onnxruntime) and/or int8_ir (its OpenVINO int8 IR, calibrated "
                         "on synthetic images: for speed only)")
    ap.add_argument("--servers", default="vitkit,litserve",
                    help="vitkit and/or litserve; vitkit:DIR also runs the server of the checkout in DIR (A/B variants)")
    ap.add_argument("--clients", default="1,8,64", help="concurrent connections per run")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run (after a 2 s warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="round-robin rounds (medians and ratio ranges over them)")
    ap.add_argument("--max-batch-size", type=int, default=32, help="both servers' batch limit (default 32)")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="vitkit's --max-wait-ms, LitServe's batch_timeout")
    ap.add_argument("--out", default="benchmarks/results/serve.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    servers, clients = args.servers.split(","), [int(c) for c in args.clients.split(",")]
    rows = []
    for key in args.models.split(","):
        checkpoint = checkpoint_for(key, args.checkpoint, tmp)
        from vitkit.load import load
        pre = load(checkpoint).preprocess
        images = images_for(key, tuple(pre.img_size), pre.in_chans)
        for backend in args.backends.split(","):
            if backend not in BACKENDS:
                ap.error(f"--backends: unknown backend {backend!r} ({', '.join(BACKENDS)})")
            source, runtime = checkpoint, BACKENDS[backend]
            if backend == "int8":
                from vitkit.export import export_int8
                source = tmp / f"{key}.int8.onnx"
                export_int8(checkpoint, source, check=False)
            elif backend == "int8_ir":  # calibrated on the built-in synthetic images: for speed only
                from vitkit.export import export_openvino
                source = tmp / f"{key}.int8.xml"
                export_openvino(checkpoint, source, "int8", check=False, data="synthetic", calibration_count=64)
            rows += measure(key, backend, source, runtime, images, servers, clients, args, tmp)
            print(table(rows), file=sys.stderr, flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_description(), "machine": describe(),
              "command": " ".join(sys.argv), "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
              "seconds": args.seconds, "rounds": args.rounds, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
