"""Image data: sources (digits, IDX, folders, CIFAR, synthetic), tensor transforms, loaders."""

from .datasets import DataBundle, ImageDataset, build_data, load_source, make_loader
from .transforms import Preprocess

__all__ = ["DataBundle", "ImageDataset", "Preprocess", "build_data", "load_source", "make_loader"]
