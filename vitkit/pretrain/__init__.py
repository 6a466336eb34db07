"""Self-supervised pre-training: masked patch prediction (paper appendix B.1.2)."""

from .mpp import MaskedPatchPrediction, colour_targets, sample_corruption

__all__ = ["MaskedPatchPrediction", "colour_targets", "sample_corruption"]
