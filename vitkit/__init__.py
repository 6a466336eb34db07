"""vitkit: the Vision Transformer of "An Image is Worth 16x16 Words", to train, load, inspect and deploy."""

from .errors import VitkitError
from .models import (ResNetConfig, ViTConfig, VisionTransformer, build_model, count_params, create_model,
                     list_models, model_config)
from .runtime import tune_allocator

__version__ = "0.1.0"
__all__ = ["VitkitError", "ViTConfig", "ResNetConfig", "VisionTransformer", "create_model", "list_models",
           "model_config", "build_model", "count_params", "tune_allocator", "__version__"]


def load_model(source, **overrides):
    """Build and load a model from any weights file or Hub name (see vitkit.interop.load_model)."""
    from .interop import load_model as _load

    return _load(source, **overrides)
