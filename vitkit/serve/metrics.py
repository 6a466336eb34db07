"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, queue_depth: Callable[[], float]):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("vitkit_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("vitkit_request_seconds", "request latency, from the first byte read to the "
                                 "response", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("vitkit_batch_size", "images per forward pass", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.inference = Histogram("vitkit_inference_seconds", "time of one forward pass (a model that takes its batch image by image: with the decoding it overlaps)", buckets=LATENCY_BUCKETS,
                                   registry=r)
        self.images = Counter("vitkit_images", "images classified", registry=r)
        Gauge("vitkit_queue_depth", "requests waiting for the model", registry=r).set_function(queue_depth)
        Gauge("vitkit_images_per_second", "images classified per second over the last 10 s",
              registry=r).set_function(self._rate)
        self._recent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def batch(self, size: int, seconds: float) -> None:
        """Called by the batcher's worker after each forward pass."""
        self.batch_size.observe(size)
        self.inference.observe(seconds)
        self.images.inc(size)
        with self._lock:
            self._recent.append((time.monotonic(), size))

    def _rate(self, window: float = 10.0) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - window:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / window

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
