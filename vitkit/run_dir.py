"""The one place that knows the layout of a run folder; every other module asks it for a path.

    RUN/config.yaml              the resolved configuration (resume reads it)
    RUN/metrics.jsonl            one JSON line per logged step and per epoch
    RUN/summary.json             the run's outcome, written at the end
    RUN/curves.png               loss and accuracy against steps
    RUN/tensorboard/             the same metrics for TensorBoard, when it is installed
    RUN/checkpoints/best.safetensors, last.safetensors   weights with vitkit metadata
    RUN/checkpoints/last.state.pt                        optimizer, RNG and loop state, for --resume
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    @classmethod
    def new(cls, model_name: str, root: str | Path = "runs") -> "RunDir":
        """`runs/<timestamp>-<model>`: the default when no --out is given."""
        return cls(Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{model_name}")

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_weights(self) -> Path:
        return self.checkpoints / "best.safetensors"

    @property
    def last_weights(self) -> Path:
        return self.checkpoints / "last.safetensors"

    @property
    def last_state(self) -> Path:
        return self.checkpoints / "last.state.pt"

    @classmethod
    def contents(cls) -> str:
        """What a run folder holds, for help texts."""
        r = cls(".")
        return ", ".join(p.name for p in (r.config, r.metrics, r.summary, r.curves)) + f", {r.checkpoints.name}/"

    def is_resumable(self) -> bool:
        return self.last_state.is_file()

    def weights(self) -> Path | None:
        """The weights a run publishes: its best checkpoint, else its last; None if it has neither."""
        for p in (self.best_weights, self.last_weights):
            if p.is_file():
                return p
        return None
