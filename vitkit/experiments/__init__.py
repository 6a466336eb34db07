"""The paper's experiments as commands: the data-size study (ViT vs ResNet as data grows)."""

from .data_scaling import data_scaling

__all__ = ["data_scaling"]
