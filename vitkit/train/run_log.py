"""What a run logs as it goes: metric lines (and TensorBoard), and the curves drawn from them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from ..plotting import pyplot, save


class MetricsLog:
    """Append-only JSON lines; on resume, lines past the resumed step are dropped first."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            prefix = record.get("kind", "step")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch", "time"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record.get("step", 0))

    def attach_tensorboard(self, logdir: Path) -> bool:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - tensorboard is optional
            return False
        self.tb = SummaryWriter(str(logdir))
        return True

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict[str, Any]], path: Path, metric: str = "acc") -> None:
    """Loss and the objective's accuracy (`metric`) against steps: train (per logged step) and val (per epoch)."""
    plt = pyplot()

    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    if steps:
        a.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train", lw=1)
        b.plot([r["step"] for r in steps], [r[metric] for r in steps], label="train", lw=1)
    if epochs:
        a.plot([r["step"] for r in epochs], [r["val_loss"] for r in epochs], "o-", label="val")
        b.plot([r["step"] for r in epochs], [r[f"val_{metric}"] for r in epochs], "o-", label="val")
    a.set(xlabel="step", ylabel="loss", title="loss")
    b.set(xlabel="step", ylabel=metric, title="patch-colour accuracy" if metric == "mpp_acc" else "accuracy",
          ylim=(0, 1.01))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, path)
