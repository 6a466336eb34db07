"""Dynamic batching: concurrent requests share one forward pass.

Requests wait in a bounded queue; one worker runs the model off the event loop, one batch at a time
(the model already uses every core), so while a batch runs the next one gathers. When the worker is
free it takes up to `max_batch_size` images at once. It waits up to `max_wait_ms` for more only while
other requests are already being read or parsed (`arriving`), or, for at most a quarter of the last
batch's run time, while a caller (connection) that one of the last two batches answered has not sent
again (it is probably sending its next request): a lone client never waits for company that is not
coming, and a steady group of clients keeps running as one batch instead of splitting into
alternating smaller ones (8 clients on ViT-S/16: batches of 1 and 7 or 4 and 4 took turns, whichever
the first requests happened to form; docs/serving.md). A request without a caller is always new.

Every torch computation of the server runs on that one thread (`ModelThread`), loading included:
PyTorch's OpenMP pool belongs to the thread that starts it, and a second thread running parallel
kernels costs both: the MNIST model at batch 1 took 3.1 ms with one torch thread and 13 ms once
another thread had run kernels too (2-core Xeon, 2026-12-03, one-off timing script). Even one small
parallel kernel elsewhere (a softmax on the event loop, a copy while decoding) starts a second OpenMP
thread team, and the model's team stays slower from then on: ViT-S/16 at batch 1 took 72-78 ms inside
the server against 54-60 ms offline, and 50-59 ms once the rest of the server ran numpy only (same
process pair, round-robin; GOMP_SPINCOUNT did not change it). So the batcher hands out numpy arrays,
and the app computes probabilities and top-k in numpy. Image decoding runs on the model thread too,
just before its batch (`prepare`): a decoding thread that only runs PIL, beside the model's threads on
the same cores, still made throughput under load erratic (docs/serving.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator

import numpy as np
import torch


# Waiting for the last batch's callers costs at most this share of a batch's time: a model that answers a
# batch in 2 ms (MNIST) should not idle 5 ms for stragglers (a first version did, and served 10% fewer
# MNIST images at 64 clients, together with a decoding change since reverted; docs/serving.md).
REGROUP_SHARE = 0.25


class QueueFull(Exception):
    """The queue holds `max_queue` requests: the caller answers 503 with Retry-After."""


class ModelThread:
    """The one thread that runs torch for a server."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vitkit-model")

    def run(self, fn: Callable, *args):
        """`fn(*args)` on the model thread, waiting for it (from outside an event loop)."""
        return self._executor.submit(fn, *args).result()

    async def call(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


@dataclass
class _Item:
    x: Any                 # what `prepare` turns into a batch of model inputs on the model thread
    n: int                 # images in it (what `prepare` must return)
    future: asyncio.Future
    caller: Hashable = None  # the connection it came on; None: unknown
    batches: list[int] = field(default_factory=list)


class Batcher:
    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], prepare: Callable[[Any], torch.Tensor],
                 thread: ModelThread, max_batch_size: int = 32, max_wait_ms: float = 5.0, max_queue: int = 256,
                 on_batch: Callable[[int, float], None] | None = None,
                 run_pieces: Callable[[Iterator[torch.Tensor], int], torch.Tensor] | None = None):
        """`run_pieces(prepared images, total)`: a model that takes its batch image by image (see
        `_run_streamed`); without it, a batch is prepared whole, then run."""
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self.run, self.prepare, self.thread = run, prepare, thread
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.max_queue, self.on_batch, self.run_pieces = max_queue, on_batch, run_pieces
        self.pending: deque[_Item] = deque()
        self.arriving = 0  # requests being read or decoded that will submit soon
        self.recent: deque[set] = deque(maxlen=2)  # the callers each of the last two batches answered
        self.last_run = 0.0  # seconds it took
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting the batch that runs)."""
        return len(self.pending)

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """After the server has drained its requests: end the worker."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def arrived(self) -> None:
        """A request counted in `arriving` has submitted or failed: stop waiting for it."""
        self.arriving -= 1
        if self._wake is not None:
            self._wake.set()

    async def submit(self, x: Any, n: int, caller: Hashable = None) -> tuple[np.ndarray, list[int]]:
        """(outputs for the `n` images of `x` as a numpy array, the sizes of the batches they ran in);
        `caller`: what identifies the client (its connection), for the wait described above."""
        if len(self.pending) >= self.max_queue:
            raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
        item = _Item(x, n, asyncio.get_running_loop().create_future(), caller)
        self.pending.append(item)
        self._wake.set()
        return await item.future, item.batches

    def _take(self) -> list[_Item]:
        """Whole requests up to max_batch_size images; a larger request alone (run in slices)."""
        taken, images = [], 0
        while self.pending:
            n = self.pending[0].n
            if taken and images + n > self.max_batch_size:
                break
            taken.append(self.pending.popleft())
            images += n
        return taken

    def _expected(self) -> bool:
        """Whether a caller of the last two batches has not sent again yet."""
        waiting = {i.caller for i in self.pending}
        return any(c not in waiting for callers in self.recent for c in callers)

    def _images(self) -> int:
        return sum(i.n for i in self.pending)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.pending:
                continue
            start = loop.time()
            deadline, regroup_until = start + self.max_wait, start + min(self.max_wait, REGROUP_SHARE * self.last_run)
            while self._images() < self.max_batch_size:
                now = loop.time()
                if self.arriving and now < deadline:
                    until = deadline
                elif now < regroup_until and self._expected():
                    until = regroup_until
                else:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), until - now)
                except asyncio.TimeoutError:
                    pass
            items = self._take()
            if not items:
                continue
            self.recent.append({i.caller for i in items if i.caller is not None})
            t0 = loop.time()
            try:
                outs = await self.thread.call(self._run_items, items)
            except Exception as e:  # noqa: BLE001 - a model failure goes to every caller of this batch
                outs = [e] * len(items)
            self.last_run = loop.time() - t0
            for i, out in zip(items, outs):
                if i.future.done():  # the caller has gone (client disconnected)
                    continue
                if isinstance(out, Exception):
                    i.future.set_exception(out)
                else:
                    i.future.set_result(out)
            if self.pending:
                self._wake.set()

    def _run_items(self, items: list[_Item]) -> list[np.ndarray | Exception]:
        """Each request's outputs, or the error that preparing its inputs raised (its alone)."""
        sizes: list[int | Exception] = []
        total = sum(i.n for i in items)
        if self.run_pieces is not None and total <= self.max_batch_size:
            return self._run_streamed(items, total, sizes)
        prepared = list(self._prepared(items, sizes))
        if not prepared:
            return sizes
        good = [i for i, n in zip(items, sizes) if not isinstance(n, Exception)]
        x = torch.cat(prepared)
        outs = []
        for start in range(0, len(x), self.max_batch_size):
            chunk = x[start:start + self.max_batch_size]
            t0 = time.perf_counter()
            outs.append(self.run(chunk))
            self._ran(good, len(chunk), time.perf_counter() - t0)
        return _split(torch.cat(outs), sizes)

    def _run_streamed(self, items: list[_Item], total: int,
                      sizes: list[int | Exception]) -> list[np.ndarray | Exception]:
        """One batch whose images the model starts on while this thread still decodes the rest: with
        onnxruntime, the second core runs the first images instead of idling through the decoding
        (ViT-S/16 int8 at 64 clients: docs/serving.md). The time recorded includes that decoding."""
        t0 = time.perf_counter()
        out = self.run_pieces(self._prepared(items, sizes), total)
        good = [i for i, n in zip(items, sizes) if not isinstance(n, Exception)]
        if good:
            self._ran(good, len(out), time.perf_counter() - t0)
        return _split(out, sizes)

    def _prepared(self, items: list[_Item], sizes: list[int | Exception]) -> Iterator[torch.Tensor]:
        """Each request's model inputs, in order, recording in `sizes` its image count, or the error
        that preparing it raised (e.g. a truncated image: that caller's 400, the others run)."""
        for i in items:
            try:
                x = self.prepare(i.x)
            except Exception as e:  # noqa: BLE001 - any failure is that request's alone
                sizes.append(e)
                continue
            sizes.append(len(x))
            yield x

    def _ran(self, items: list[_Item], size: int, seconds: float) -> None:
        if self.on_batch:
            self.on_batch(size, seconds)
        for i in items:
            i.batches.append(size)


def _split(out: torch.Tensor, sizes: list[int | Exception]) -> list[np.ndarray | Exception]:
    """The outputs of each request (numpy from here on), or its error, in the order of `sizes`."""
    parts = iter(part.numpy() for part in torch.split(out, [n for n in sizes if not isinstance(n, Exception)]))
    return [n if isinstance(n, Exception) else next(parts) for n in sizes]
