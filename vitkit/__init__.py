"""vitkit: the Vision Transformer of "An Image is Worth 16x16 Words", to train, load, inspect and deploy."""

from .errors import VitkitError
from .models import (ResNetConfig, ViTConfig, VisionTransformer, build_model, count_params, create_model,
                     list_models, model_config)

__version__ = "0.1.0"
__all__ = ["VitkitError", "ViTConfig", "ResNetConfig", "VisionTransformer", "create_model", "list_models",
           "model_config", "build_model", "count_params", "__version__"]
