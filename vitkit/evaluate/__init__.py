"""Evaluation: accuracy metrics over a loader, and the confusion-matrix picture."""

from .accuracy import Evaluation, evaluate, plot_confusion
from .checkpoint_eval import evaluate_checkpoint

__all__ = ["Evaluation", "evaluate", "evaluate_checkpoint", "plot_confusion"]
