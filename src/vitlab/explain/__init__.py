"""Looking inside models: attention capture and maps, rollout, Swin window maps, attention placed on the image grid,
position-embedding similarity, patch-embedding components, mean attention distance, Grad-CAM."""

from vitlab.explain.attention import attention_layers, attention_maps, attention_rollout, capture_attention
from vitlab.explain.distance import attention_distances, mean_attention_distance
from vitlab.explain.embeddings import (
    patch_embedding_components,
    position_similarity,
    principal_components,
    similarity_by_distance,
)
from vitlab.explain.gradcam import cam_layer, grad_cam
from vitlab.explain.grid import GridAttention, grid_attention, grid_rollout
from vitlab.explain.windows import stitch_window_attention, swin_attention_maps

__all__ = [
    "GridAttention",
    "attention_layers",
    "attention_distances",
    "attention_maps",
    "attention_rollout",
    "cam_layer",
    "capture_attention",
    "grad_cam",
    "grid_attention",
    "grid_rollout",
    "mean_attention_distance",
    "patch_embedding_components",
    "position_similarity",
    "principal_components",
    "similarity_by_distance",
    "stitch_window_attention",
    "swin_attention_maps",
]
