"""Training: the loop, the paper's optimisers and schedules, and the run folder."""

from .loop import Trainer, train

__all__ = ["Trainer", "train"]
