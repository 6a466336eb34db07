"""Inspecting the Vision Transformer (paper section 4.5): attention rollout, mean attention distance,
position-embedding similarity and the principal components of the embedding filters."""

from .attention import (attentions, distance_from_attentions, mean_attention_distance, patch_distances, rollout,
                        rollout_from_attentions)
from .embeddings import embedding_filters_pca, neighbour_contrast, position_similarity
from .report import analyze, explain

__all__ = ["attentions", "rollout", "rollout_from_attentions", "mean_attention_distance", "distance_from_attentions",
           "patch_distances", "position_similarity", "neighbour_contrast", "embedding_filters_pca", "analyze",
           "explain"]
