"""The ViT family (plain and hybrid), the CNN baseline, and their registry."""

from .config import ResNetConfig, ViTConfig
from .pos_embed import resample_abs_pos_embed
from .registry import build_model, count_params, create_model, list_models, model_config, register
from .resnet import ResNet
from .vit import VisionTransformer

__all__ = ["ViTConfig", "ResNetConfig", "VisionTransformer", "ResNet", "create_model", "list_models",
           "model_config", "build_model", "count_params", "register", "resample_abs_pos_embed"]
