"""`vitkit serve`: the open inference protocol (JSON and binary, with Triton's own client), /predict and
/explain equal to `vitkit predict` / `vitkit explain`, dynamic batching, back-pressure, bad input that
gets a 4xx and leaves the server serving, metrics, SIGTERM draining, and a bounded load test."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from PIL import Image  # noqa: E402

from helpers import train_small_digits_run  # noqa: E402
from vitkit.cli import main  # noqa: E402
from vitkit.models import create_model  # noqa: E402
from vitkit.serve import create_app  # noqa: E402
from vitkit.serve.backend import Backend  # noqa: E402

NAME = "vit_digits_patch4_8"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_small_digits_run(tmp_path_factory.mktemp("serve") / "run", epochs=2)


def digit_png(i: int, size: int = 8) -> bytes:
    """A distinct real-looking image per i (digits' own test images would do too; these are reproducible)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    img = (d.images[i % len(d.images)] * 255 / 16).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).resize((size, size)).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    """`vitkit serve` in its own process, on a free loopback port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vitkit", "serve", "--checkpoint", str(run), "--port", str(port),
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    yield url, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def in_process(app, requests):
    """Run `requests(client)` (a coroutine function) against the app in this process, lifespan included."""
    async def go():
        async with app.router.lifespan_context(app):
            for _ in range(200):
                if app.state.vitkit.ready.is_set():
                    break
                await asyncio.sleep(0.01)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await requests(client)
    return asyncio.run(go())


def predict_cli(run, paths, capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), *map(str, paths), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_same_top(served: list[dict], cli: list[dict], tol: float = 1e-5) -> None:
    assert [c["class"] for c in served] == [c["class"] for c in cli]
    assert max(abs(a["prob"] - b["prob"]) for a, b in zip(served, cli)) <= tol


# --- the protocol -------------------------------------------------------------------------------------
def test_protocol_metadata_health_and_readiness(server):
    url, _ = server
    assert httpx.get(f"{url}/v2").json()["extensions"] == ["binary_tensor_data", "classification"]
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{url}/v2/models/{NAME}").json()
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 8, 8]},
                              {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities", "classes"]
    assert meta["outputs"][0]["shape"] == [-1, 10] and meta["parameters"]["classes"] == [str(i) for i in range(10)]
    assert httpx.get(f"{url}/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": True}
    assert httpx.get(f"{url}/v2/models/{NAME}/versions/1").status_code == 200
    r = httpx.get(f"{url}/v2/models/other")
    assert r.status_code == 404 and "unknown model 'other'" in r.json()["error"]


def test_ready_only_after_the_warm_up(run):
    backend = Backend(run)
    release = threading.Event()
    warm = backend.warm_up
    backend.warm_up = lambda *sizes: (release.wait(10), warm(*sizes))
    app = create_app(backend)

    async def probe(client):
        before = (await client.get("/v2/health/ready")).status_code, (await client.get("/v2/health/live")).status_code
        infer = await client.post("/predict", content=digit_png(1), headers={"content-type": "image/png"})
        release.set()
        for _ in range(100):
            if app.state.vitkit.ready.is_set():
                break
            await asyncio.sleep(0.02)
        return before, infer, (await client.get("/v2/health/ready")).status_code

    async def go():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                return await probe(client)
    (ready, live), infer, after = asyncio.run(go())
    assert (ready, live, after) == (503, 200, 200)
    assert infer.status_code == 503 and infer.headers["retry-after"] == "1"


def test_infer_json_bytes_and_tensors_equal_vitkit_predict(server, run, tmp_path, capsys):
    url, _ = server
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"d{i}.png")
        paths[-1].write_bytes(digit_png(i + 10))
    cli = predict_cli(run, paths, capsys)
    body = {"id": "r1", "inputs": [{"name": "image_bytes", "shape": [3], "datatype": "BYTES",
                                    "data": [base64.b64encode(p.read_bytes()).decode() for p in paths]}],
            "outputs": [{"name": "probabilities"}, {"name": "classes"}, {"name": "logits"}]}
    r = httpx.post(f"{url}/v2/models/{NAME}/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "r1" and out["probabilities"]["shape"] == [3, 10] and out["classes"]["shape"] == [3, 5]
    probs = np.array(out["probabilities"]["data"]).reshape(3, 10)
    for row, expected in zip(probs, cli):
        top = np.argsort(-row)[:5]
        assert_same_top([{"class": str(c), "prob": float(row[c])} for c in top], expected["top"])
    value, index, label = out["classes"]["data"][0].split(":")
    assert label == cli[0]["top"][0]["class"] and abs(float(value) - cli[0]["top"][0]["prob"]) <= 1e-5
    logits = np.array(out["logits"]["data"]).reshape(3, 10)
    np.testing.assert_allclose(torch.tensor(logits).softmax(-1).numpy(), probs, atol=1e-6)
    # the same images, already preprocessed, as an FP32 tensor
    from vitkit.load import load
    pre = load(run).preprocess
    from vitkit.data.images import read_image
    x = torch.stack([pre.eval(read_image(p, 1)) for p in paths]).numpy()
    r = httpx.post(f"{url}/v2/models/{NAME}/infer", json={"inputs": [
        {"name": "images", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]})
    assert r.status_code == 200, r.text
    classified = r.json()["outputs"][0]
    assert classified["datatype"] == "BYTES" and classified["shape"] == [3, 2]
    assert [c.split(":")[2] for c in classified["data"][::2]] == [c["top"][0]["class"] for c in cli]


def test_tritons_own_client_works_with_its_default_binary_tensors(server, run, tmp_path, capsys):
    httpclient = pytest.importorskip("tritonclient.http")
    url, _ = server
    path = tmp_path / "d.png"
    path.write_bytes(digit_png(7))
    cli = predict_cli(run, [path], capsys)[0]["top"]
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready(NAME)
    assert client.get_model_metadata(NAME)["inputs"][1]["name"] == "image_bytes"
    data = np.array([path.read_bytes()], dtype=np.object_)
    inp = httpclient.InferInput("image_bytes", [1], "BYTES")
    inp.set_data_from_numpy(data)  # binary_data=True by default: the binary tensor extension
    result = client.infer(NAME, [inp])  # no outputs named: all default outputs, in binary
    probs = result.as_numpy("probabilities")[0]
    assert_same_top([{"class": str(c), "prob": float(probs[c])} for c in np.argsort(-probs)[:5]], cli)
    assert result.as_numpy("classes")[0][0].decode().split(":")[2] == cli[0]["class"]
    classified = client.infer(NAME, [inp], outputs=[httpclient.InferRequestedOutput("logits", class_count=3)])
    assert classified.as_numpy("logits").shape == (1, 3)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    tensor = httpclient.InferInput("images", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    logits = client.infer(NAME, [tensor], outputs=[httpclient.InferRequestedOutput("logits")]).as_numpy("logits")
    from vitkit.load import load
    with torch.inference_mode():
        np.testing.assert_allclose(logits, load(run).model(torch.from_numpy(x)).numpy(), atol=1e-5)


# --- convenience endpoints ------------------------------------------------------------------------------
def test_predict_takes_uploads_and_raw_bodies_like_vitkit_predict(server, run, tmp_path, capsys):
    url, _ = server
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"p{i}.png")
        paths[-1].write_bytes(digit_png(i + 20, size=24))  # resized by the checkpoint's preprocessing
    cli = predict_cli(run, paths, capsys)
    r = httpx.post(f"{url}/predict?top_k=3", files=[("file", (p.name, p.read_bytes())) for p in paths])
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [g["name"] for g in got] == [p.name for p in paths]
    for g, c in zip(got, cli):
        assert_same_top(g["top"], c["top"][:3])
    raw = httpx.post(f"{url}/predict", content=paths[0].read_bytes(), headers={"content-type": "image/png"})
    assert_same_top(raw.json()["predictions"][0]["top"], cli[0]["top"])


def test_explain_equals_vitkit_explain_and_a_cnn_gets_a_400(server, run, tmp_path, capsys):
    url, _ = server
    path = tmp_path / "e.png"
    path.write_bytes(digit_png(3, size=16))
    assert main(["explain", "--checkpoint", str(run), str(path), "--out", str(tmp_path / "x")]) == 0
    want = np.load(next((tmp_path / "x").glob("*_rollout.npy")))
    r = httpx.post(f"{url}/explain", files={"file": ("e.png", path.read_bytes())})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["rollout"]), want, atol=1e-5)
    overlay = Image.open(io.BytesIO(base64.b64decode(r.json()["overlay_png"])))
    assert overlay.size == (16, 16) and overlay.mode == "RGB"  # at the image's own size, like vitkit explain's
    png = httpx.post(f"{url}/explain?format=png", content=path.read_bytes(), headers={"content-type": "image/png"})
    assert png.headers["content-type"] == "image/png" and Image.open(io.BytesIO(png.content)).size == (16, 16)
    # a CNN: no attention to explain
    from vitkit.checkpoint import model_meta, save_weights
    from vitkit.data.transforms import Preprocess
    from vitkit.models import create_model
    cnn = create_model("resnet_bit_mnist")
    save_weights(tmp_path / "cnn.safetensors", cnn,
                 model_meta(cnn, preprocess=Preprocess((28, 28), 1, (0.5,), (0.5,)).to_dict()))
    app = create_app(tmp_path / "cnn.safetensors")
    r = in_process(app, lambda c: c.post("/explain", content=path.read_bytes(), headers={"content-type": "image/png"}))
    assert r.status_code == 400 and "no self-attention" in r.json()["error"]


def test_an_exported_onnx_file_is_served_with_the_same_answers(run, tmp_path):
    pytest.importorskip("onnxruntime")
    main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.onnx"), "--no-check"])
    images = [digit_png(i) for i in (1, 2)]

    async def ask(client):
        return [(await client.post("/predict", content=im, headers={"content-type": "image/png"})).json()
                for im in images]
    from_file = in_process(create_app(tmp_path / "m.onnx"), ask)
    from_checkpoint = in_process(create_app(run), ask)
    for a, b in zip(from_file, from_checkpoint):
        assert a["model"] == b["model"] == NAME  # the name the file records, not its path
        assert_same_top(a["predictions"][0]["top"], b["predictions"][0]["top"], tol=1e-4)

    # onnxruntime takes a batch image by image while the model thread decodes (batcher._run_streamed):
    # concurrent requests, one of them a truncated file, get what they get one at a time
    backend = Backend(tmp_path / "m.onnx")
    assert backend.streams
    many = [digit_png(i) for i in range(6)]
    png = {"content-type": "image/png"}

    async def alone_then_together(client):
        alone = [(await client.post("/predict", content=im, headers=png)).json() for im in many]
        together = await asyncio.gather(*(client.post("/predict", content=im, headers=png)
                                          for im in [*many[:3], many[3][:len(many[3]) // 2], *many[3:]]))
        return alone, together, (await client.get("/metrics")).text
    alone, together, metrics = in_process(create_app(backend, max_wait_ms=200), alone_then_together)
    *answered, = together[:3] + together[4:]
    assert together[3].status_code == 400 and "cannot decode image" in together[3].json()["error"]
    for a, r in zip(alone, answered):
        assert r.status_code == 200
        assert_same_top(r.json()["predictions"][0]["top"], a["predictions"][0]["top"], tol=1e-5)
    assert float(re.search(r"^vitkit_batch_size_sum (\S+)", metrics, re.M).group(1)) == 12  # the bad one never ran
    assert float(re.search(r"^vitkit_batch_size_count (\S+)", metrics, re.M).group(1)) < 12  # batched


# --- batching and back-pressure ---------------------------------------------------------------------------
def test_concurrent_requests_are_batched_and_get_their_own_answers(run):
    app = create_app(run, max_batch_size=16, max_wait_ms=200)
    images = [digit_png(i) for i in range(12)]

    async def sequential_then_concurrent(client):
        seq = [(await client.post("/predict", content=im, headers={"content-type": "image/png"})).json()
               for im in images]
        conc = await asyncio.gather(*(client.post("/predict", content=im, headers={"content-type": "image/png"})
                                      for im in images))
        return seq, [r.json() for r in conc], (await client.get("/metrics")).text
    seq, conc, metrics = in_process(app, sequential_then_concurrent)
    for s, c in zip(seq, conc):  # each caller gets its own image's answer (distinct images: a mix-up shows)
        assert_same_top(c["predictions"][0]["top"], s["predictions"][0]["top"])
    count = float(re.search(r"^vitkit_batch_size_count (\S+)", metrics, re.M).group(1))
    total = float(re.search(r"^vitkit_batch_size_sum (\S+)", metrics, re.M).group(1))
    assert total == 24  # 12 + 12 images (the warm-up is not counted)
    assert count < 12 + 12  # the concurrent 12 ran in fewer than 12 forward passes
    singles = float(re.search(r'^vitkit_batch_size_bucket\{le="1.0"\} (\S+)', metrics, re.M).group(1))
    assert count - singles >= 1  # at least one batch of several requests


def test_the_callers_of_the_last_batches_run_together_again_and_a_lone_caller_never_waits():
    """A request waits (up to max_wait_ms, and a quarter of the last batch's time) for the callers of the
    last two batches that have not sent again, so a group of clients keeps running as one batch, also
    out of a rhythm of two halves; a lone caller's next request runs at once."""
    from vitkit.serve.batcher import REGROUP_SHARE, Batcher, ModelThread
    sizes = []

    def run(x):
        sizes.append(len(x))
        time.sleep(0.2 / REGROUP_SHARE if len(sizes) <= 3 else 0.001)  # the first batches: long enough to wait 0.2 s
        return x * 2

    async def scenario():
        thread = ModelThread()
        batcher = Batcher(run, lambda x: x, thread, max_batch_size=8, max_wait_ms=2000)
        batcher.start()
        try:
            def one(caller, v=1.0):
                return batcher.submit(torch.full((1, 2), float(v)), 1, caller)

            async def late(caller, v=1.0):
                await asyncio.sleep(0.1)
                return await one(caller, v)
            await asyncio.gather(one("a"), one("b"))           # a batch of a and b ...
            await asyncio.gather(one("c"), one("d"))           # ... then one of c and d: two halves
            await asyncio.gather(one("c"), one("d"), late("a"), late("b"))  # a and b 0.1 s late: all four together
            first, *rest = await asyncio.gather(one("a", 4), late("b", 5), late("c", 6))
            t0 = time.perf_counter()
            batcher.recent.clear()
            await one("z")                                     # a lone caller
            await one("z")
            alone = time.perf_counter() - t0
            await asyncio.gather(one("a"), late("b"), late("c"))  # after a 1 ms batch: not worth a wait
            return first, rest, alone
        finally:
            await batcher.stop()
            thread.shutdown()
    first, rest, alone = asyncio.run(scenario())
    assert sizes[:3] == [2, 2, 4]  # the two halves ran as one batch once the late pair had come
    assert sizes[3] == 3 and first[0].tolist() == [[8.0, 8.0]]  # a waited 0.1 s for b and c
    assert [r[0].tolist() for r in rest] == [[[10.0, 10.0]], [[12.0, 12.0]]]
    assert sizes[4:6] == [1, 1] and alone < 1.0  # the lone caller never waited for the 2 s max_wait_ms
    assert sizes[6:] == [1, 2]


def _native_threads() -> int:
    """OS threads of this process that Python did not start (OpenMP's workers among them)."""
    return len(os.listdir("/proc/self/task")) - threading.active_count()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir() or torch.get_num_threads() < 2,
                    reason="counts threads in /proc; a team needs 2 threads")
def test_only_the_model_thread_runs_torch_kernels(tmp_path):
    """A torch kernel on any other thread of the server (decoding, the event loop) starts a second OpenMP
    team, which made the model 30% slower (batcher.py): serving every kind of request starts none."""
    from vitkit.checkpoint import model_meta, save_weights
    from vitkit.data.transforms import Preprocess
    model = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=3, num_classes=1000,
                         embed_dim=32, depth=1, num_heads=2, mlp_dim=64)
    save_weights(tmp_path / "rgb.safetensors", model,
                 model_meta(model, preprocess=Preprocess((32, 32), 3, (0.5,) * 3, (0.5,) * 3).to_dict()))
    buf = io.BytesIO()  # large enough that torch would copy it in parallel
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    tensor = np.zeros((4, 3, 32, 32), np.float32)
    infer_bytes = {"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES",
                               "data": [base64.b64encode(png).decode()] * 2}],
                   "outputs": [{"name": "logits"}, {"name": "probabilities"}, {"name": "classes"}]}
    infer_tensor = {"inputs": [{"name": "images", "shape": list(tensor.shape), "datatype": "FP32",
                                "data": tensor.ravel().tolist()}]}

    async def every_kind(client):
        before = _native_threads()
        for _ in range(2):
            for r in (await client.post("/v2/models/rgb/infer", json=infer_bytes),
                      await client.post("/v2/models/rgb/infer", json=infer_tensor),
                      await client.post("/predict", content=png, headers={"content-type": "image/png"}),
                      await client.post("/explain", content=png, headers={"content-type": "image/png"})):
                assert r.status_code == 200, r.text
        return before, _native_threads()
    before, after = in_process(create_app(tmp_path / "rgb.safetensors"), every_kind)
    assert after == before


def test_images_are_decoded_on_the_model_thread_and_a_bad_one_fails_only_its_request(run, monkeypatch):
    """Decoding runs just before the batch, on the model thread; an image that fails there (a truncated
    file passes the header check) gets its own 400 while the rest of its batch is answered. Small bodies
    are parsed on the event loop, large ones in a thread."""
    import vitkit.serve.app as served
    import vitkit.serve.backend as backend_module
    decoded_on, hops, sizes = [], [], []
    real_load, real_hop = backend_module.load_image, asyncio.to_thread

    def recorded_load(*args, **kwargs):
        decoded_on.append(threading.current_thread().name)
        return real_load(*args, **kwargs)

    async def counted(fn, *args):
        hops.append(fn)
        return await real_hop(fn, *args)
    monkeypatch.setattr(backend_module, "load_image", recorded_load)
    monkeypatch.setattr(served.asyncio, "to_thread", counted)
    backend = Backend(run)
    model_run = backend.run

    def slow_first(x):  # the first batch runs long enough for the others to queue behind it
        sizes.append(len(x))
        if len(sizes) == 1:
            time.sleep(0.3)
        return model_run(x)
    backend.run = slow_first
    good = [digit_png(i) for i in range(4)]
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(buf, "PNG")
    large = buf.getvalue()
    assert len(large) > served.INLINE_BYTES
    png = {"content-type": "image/png"}

    async def batch_with_a_bad_image(client):
        alone = [(await client.post("/predict", content=im, headers=png)).json() for im in good]
        inline_hops = len(hops)
        sizes.clear()
        first = asyncio.create_task(client.post("/predict", content=good[0], headers=png))
        await asyncio.sleep(0.1)
        rest = await asyncio.gather(*(client.post("/predict", content=im, headers=png)
                                      for im in [*good, good[1][: len(good[1]) // 2]]))
        big = await client.post("/predict", content=large, headers=png)
        return alone, inline_hops, await first, rest, big
    app = create_app(backend, max_batch_size=16, max_wait_ms=50)
    alone, inline_hops, first, rest, big = in_process(app, batch_with_a_bad_image)
    assert first.status_code == 200 and big.status_code == 200
    *answered, truncated = rest
    assert truncated.status_code == 400 and "image: cannot decode image" in truncated.json()["error"]
    assert [r.status_code for r in answered] == [200] * 4
    for a, r in zip(alone, answered):
        assert_same_top(r.json()["predictions"][0]["top"], a["predictions"][0]["top"])
    assert sizes[:2] == [1, 4]  # the four good images ran together, without the truncated one
    assert decoded_on and all(name.startswith("vitkit-model") for name in decoded_on)
    assert inline_hops == 0 and len(hops) == 1  # only the large body was parsed in a thread


def test_a_full_queue_answers_503_with_retry_after(run):
    backend = Backend(run)
    slow = backend.run
    backend.run = lambda x: (time.sleep(0.3), slow(x))[1]
    app = create_app(backend, max_batch_size=1, max_queue=2, max_wait_ms=0)

    async def flood(client):
        rs = await asyncio.gather(*(client.post("/predict", content=digit_png(i), headers={"content-type": "image/png"})
                                    for i in range(8)))
        after = await client.post("/predict", content=digit_png(0), headers={"content-type": "image/png"})
        return rs, after
    rs, after = in_process(app, flood)
    codes = sorted(r.status_code for r in rs)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    full = next(r for r in rs if r.status_code == 503)
    assert full.headers["retry-after"] == "1" and "queue is full" in full.json()["error"]
    assert after.status_code == 200  # and it goes on serving


# --- bad input ---------------------------------------------------------------------------------------------
def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, "PNG")  # 81 megapixels, about 80 kB compressed
    return buf.getvalue()


def test_bad_input_gets_a_4xx_naming_the_problem_and_the_server_keeps_serving(server, run):
    url, _ = server
    good = digit_png(5)
    infer = f"{url}/v2/models/{NAME}/infer"
    png = {"content-type": "image/png"}

    def b64(data: bytes) -> dict:
        return {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                            "data": [base64.b64encode(data).decode()]}]}
    cases = [
        (lambda: httpx.post(f"{url}/predict", content=b"x" * (21 * 1024 * 1024), headers=png), 413, "exceeds the limit"),
        (lambda: httpx.post(f"{url}/predict", content=iter([b"x" * (1 << 20)] * 21), headers=png), 413,
         "exceeds the limit"),  # chunked: no Content-Length to refuse it by
        (lambda: httpx.post(f"{url}/predict", content=b"not an image at all", headers=png), 400, "not a readable image"),
        (lambda: httpx.post(f"{url}/predict", content=good[: len(good) // 2], headers=png), 400, "image"),
        (lambda: httpx.post(f"{url}/predict", files={"file": ("empty.png", b"")}), 400, "empty.png: empty file"),
        (lambda: httpx.post(f"{url}/predict", content=_bomb(), headers=png), 400, "exceeds the limit of 64,000,000"),
        (lambda: httpx.post(f"{url}/predict?top_k=zero", content=good, headers=png), 400, "top_k"),
        (lambda: httpx.post(infer, content=b'{"inputs": [', headers={"content-type": "application/json"}), 400,
         "not valid JSON"),
        (lambda: httpx.post(infer, json={"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "INT32",
                                                     "data": [0] * 64}]}), 400, "datatype 'INT32' is not supported"),
        (lambda: httpx.post(infer, json={"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "BYTES",
                                                     "data": ["AA=="]}]}), 400, "elements for shape"),
        (lambda: httpx.post(infer, json={"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                                     "data": [0.0] * 10}]}), 400, "10 values for shape [1, 1, 8, 8]"),
        (lambda: httpx.post(infer, json={"inputs": [{"name": "images", "shape": [1, 3, 8, 8], "datatype": "FP32",
                                                     "data": [0.0] * 192}]}), 400, "expected [N, 1, 8, 8]"),
        (lambda: httpx.post(infer, json={"inputs": [{"name": "images", "shape": [1, 1, 16, 16], "datatype": "FP32",
                                                     "data": [0.0] * 256}]}), 400, "expected [N, 1, 8, 8]"),
        (lambda: httpx.post(infer, json={"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                                     "data": ["%%%"]}]}), 400, "not valid base64"),
        (lambda: httpx.post(infer, json=b64(b"GIF89a-broken")), 400, "image_bytes[0]"),
        (lambda: httpx.post(infer, json={**b64(good), "outputs": [{"name": "embedding"}]}), 400, "unknown output"),
        (lambda: httpx.post(infer, content=b'{"inputs": []}', headers={"Inference-Header-Content-Length": "99"}), 400,
         "Inference-Header-Content-Length 99"),
        (lambda: httpx.post(f"{url}/v2/models/nope/infer", json=b64(good)), 404, "unknown model 'nope'"),
        (lambda: httpx.get(f"{url}/no/such/page"), 404, "Not Found"),
    ]
    for send, status, words in cases:
        r = send()
        assert r.status_code == status, (words, r.status_code, r.text[:300])
        assert words in r.json()["error"], (words, r.json())
        assert str(run) not in r.text and "/tmp" not in r.text  # nothing names a path on the server's disk
        ok = httpx.post(f"{url}/predict", content=good, headers=png)
        assert ok.status_code == 200, (words, ok.text)


def test_metrics_count_requests_latency_batches_and_queue(server):
    url, _ = server
    httpx.post(f"{url}/predict", content=digit_png(1), headers={"content-type": "image/png"})
    text = httpx.get(f"{url}/metrics").text
    for name in ('vitkit_requests_total{endpoint="/predict",status="200"}', "vitkit_request_seconds_bucket",
                 "vitkit_batch_size_bucket", "vitkit_queue_depth", "vitkit_images_per_second", "vitkit_images_total",
                 "vitkit_inference_seconds_count"):
        assert name in text, name


def test_one_json_log_line_per_request(run, caplog):
    import logging
    app = create_app(run)
    with caplog.at_level(logging.INFO, logger="vitkit.serve"):
        in_process(app, lambda c: c.post("/predict", content=digit_png(2), headers={"content-type": "image/png"}))
    lines = [json.loads(r.message) for r in caplog.records if r.name == "vitkit.serve"]
    assert lines[-1]["method"] == "POST" and lines[-1]["path"] == "/predict" and lines[-1]["status"] == 200
    assert lines[-1]["batch"] == [1] and lines[-1]["latency_ms"] > 0


def test_a_server_process_freezes_its_loaded_heap_and_sets_its_runtimes_switch_interval():
    """A full garbage collection over the loaded heap stalled every request for up to 83 ms (app.py):
    `vitkit serve` freezes what is loaded; onnxruntime servers switch the GIL every 0.5 ms, others keep
    Python's 5 ms. In a fresh interpreter: the test process keeps its own settings."""
    probe = ("import gc, sys; from vitkit.serve.app import tune_interpreter; tune_interpreter(sys.argv[1]); "
             "print(gc.get_freeze_count() > 0, sys.getswitchinterval())")
    for runtime, interval in (("onnxruntime", 0.0005), ("pytorch", 0.005)):
        out = subprocess.run([sys.executable, "-c", probe, runtime], capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["True", str(interval)]


def test_serve_flags_are_checked_before_anything_starts(run, tmp_path, capsys):
    assert main(["serve", "--checkpoint", str(run), "--max-batch-size", "0"]) == 2
    assert "--max-batch-size 0: must be at least 1" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(tmp_path / "gone.onnx")]) == 2
    assert "gone.onnx does not exist" in capsys.readouterr().err


# --- shutdown and load ----------------------------------------------------------------------------------
SLOW_SERVER = """
import sys, time, uvicorn
from vitkit.serve import create_app
from vitkit.serve.backend import Backend
b = Backend(sys.argv[1]); run = b.run
b.run = lambda x: (time.sleep(0.4), run(x))[1]
uvicorn.run(create_app(b, max_batch_size=2, max_wait_ms=0), host="127.0.0.1", port=int(sys.argv[2]),
            log_level="warning", timeout_graceful_shutdown=30)
"""


@pytest.mark.slow
def test_sigterm_finishes_the_requests_in_flight(run):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(run), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    results: list[int] = []

    def one(i: int) -> None:
        r = httpx.post(f"{url}/predict", content=digit_png(i), headers={"content-type": "image/png"}, timeout=60)
        results.append(r.status_code)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]  # 3 batches of 2, 0.4 s each
    for t in threads:
        t.start()
    time.sleep(0.5)  # all six sent; the first batch runs, the others wait in the queue
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert results == [200] * 6
    assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained


@pytest.mark.slow
def test_workers_are_processes_with_their_own_model_and_share_of_the_cores(run):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vitkit", "serve", "--checkpoint", str(run), "--port", str(port),
                             "--workers", "2", "--log-level", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        assert "2 worker processes" in proc.stdout.readline()
        cores = len(os.sched_getaffinity(0))
        meta = httpx.get(f"{url}/v2/models/{NAME}").json()
        assert meta["parameters"]["threads"] == max(1, cores // 2)
        expected = httpx.post(f"{url}/predict", content=digit_png(3), headers={"content-type": "image/png"}).json()

        def ask(i: int) -> dict:  # a new connection each time, so that either worker may accept it
            with httpx.Client() as c:
                return c.post(f"{url}/predict", content=digit_png(3), headers={"content-type": "image/png"}).json()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(64)))
        assert all(a == expected for a in answers)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    workers = {json.loads(line)["worker"] for line in err.splitlines() if line.startswith('{"method"')}
    assert len(workers) == 2 and proc.pid not in workers  # both workers answered; the parent only supervises
    assert proc.returncode == 0


def test_the_kserve_manifest_and_the_image_run_a_valid_vitkit_serve(server):
    """The deployment files are not run here (no cluster): what they would run is checked instead."""
    import yaml
    from vitkit.cli import build_parser
    root = Path(__file__).resolve().parents[1] / "deploy"
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", (root / "Dockerfile").read_text(), re.M).group(1))
    service = yaml.safe_load((root / "kserve" / "inferenceservice.yaml").read_text())
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    container = service["spec"]["predictor"]["containers"][0]
    assert container["name"] == "kserve-container"
    assert entry[:2] == ["vitkit", "serve"]
    args = build_parser().parse_args(entry[1:] + container["args"])
    assert args.host == "0.0.0.0" and args.port == container["ports"][0]["containerPort"]
    assert str(args.checkpoint) == "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI
    url, _ = server
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == args.port
        assert httpx.get(url + container[probe]["httpGet"]["path"]).status_code == 200


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_load_64_clients_2000_requests_good_and_bad(server, run, tmp_path):
    from vitkit.predict import predict
    url, proc = server
    images = [digit_png(i) for i in range(16)]
    paths = [tmp_path / f"{i}.png" for i in range(16)]
    for p, im in zip(paths, images):
        p.write_bytes(im)
    expected = {i: r.top[0][0] for i, r in enumerate(predict(run, paths))}  # what `vitkit predict` says
    total, clients = 2048, 64
    rss: list[int] = []
    answers: dict[str, tuple[int, str]] = {}
    lock = threading.Lock()

    async def client(k: int, http: httpx.AsyncClient) -> None:
        for n in range(k, total, clients):
            kind = n % 8  # 6 of 8 good, one bad image, one bad JSON
            rid = f"req-{n}"
            if kind == 6:
                body = {"id": rid, "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                               "data": [base64.b64encode(b"garbage" * 10).decode()]}]}
                r = await http.post(f"/v2/models/{NAME}/infer", json=body)
            elif kind == 7:
                r = await http.post(f"/v2/models/{NAME}/infer", content=b'{"id": "' + rid.encode() + b'", ',
                                    headers={"content-type": "application/json"})
            else:
                body = {"id": rid, "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                               "data": [base64.b64encode(images[n % 16]).decode()]}],
                        "outputs": [{"name": "classes"}], "parameters": {"top_k": 1}}
                r = await http.post(f"/v2/models/{NAME}/infer", json=body)
            label = r.json()["outputs"][0]["data"][0].split(":")[2] if r.status_code == 200 else r.json()["error"]
            with lock:
                assert rid not in answers
                answers[rid] = (r.status_code, label if r.status_code != 200 or r.json()["id"] == rid else "WRONG ID")
                if len(answers) % (total // 4) == 0:
                    rss.append(_rss_kib(proc.pid))

    async def go():
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
            await asyncio.wait_for(asyncio.gather(*(client(k, http) for k in range(clients))), 600)
    asyncio.run(go())
    assert len(answers) == total  # none lost, none duplicated (asserted as they came)
    for n in range(total):
        status, label = answers[f"req-{n}"]
        if n % 8 < 6:
            assert (status, label) == (200, expected[n % 16]), n
        else:
            assert 400 <= status < 500, (n, status, label)
    assert len(rss) == 4 and rss[-1] <= rss[0] * 1.10, rss  # resident memory, first quarter -> last


# --- the web page, in a real browser ---------------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
def test_the_web_page_shows_the_top5_and_the_rollout_in_a_real_browser(server, run, tmp_path, capsys):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)")
    url, _ = server
    image = tmp_path / "seven.png"
    image.write_bytes(digit_png(7, size=96))
    want = [t["class"] for t in predict_cli(run, [image], capsys)[0]["top"]]
    shot = Path(os.environ.get("VITKIT_SCREENSHOT", tmp_path / "page.png"))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(  # a fresh profile of its own
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, viewport={"width": 900, "height": 450},
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            offline = []
            page.on("request", lambda r: offline.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None)
            page.goto(url + "/")
            page.set_input_files("#files", str(image))
            page.wait_for_selector(".result[data-done=predict]", timeout=30_000)
            page.wait_for_function("document.querySelector('img.overlay').naturalWidth > 0", timeout=30_000)
            shown = page.locator(".result .bar .label").all_inner_texts()
            size = page.evaluate("[document.querySelector('img.overlay').naturalWidth, "
                                 "document.querySelector('img.overlay').naturalHeight]")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shown == want  # the labels on the page are `vitkit predict`'s top 5, best first
    assert size == [96, 96]  # the overlay decoded, at the image's size
    assert offline == []  # no external assets
    assert shot.stat().st_size > 0
