"""Looking inside models: attention capture and maps, rollout, Swin window maps, attention placed on the image grid,
position-embedding similarity, patch-embedding components, mean attention distance, Grad-CAM; penultimate features
(t-SNE, faiss retrieval) and open-set scores."""

from vitlab.explain.attention import attention_layers, attention_maps, attention_rollout, capture_attention
from vitlab.explain.distance import attention_distances, mean_attention_distance
from vitlab.explain.embeddings import (
    patch_embedding_components,
    position_similarity,
    principal_components,
    similarity_by_distance,
)
from vitlab.explain.features import FeatureIndex, extract_features, penultimate_features, tsne_embedding
from vitlab.explain.gradcam import cam_layer, grad_cam
from vitlab.explain.grid import GridAttention, grid_attention, grid_rollout
from vitlab.explain.openset import auroc, fpr_at_tpr, open_set_scores
from vitlab.explain.windows import stitch_window_attention, swin_attention_maps

__all__ = [
    "FeatureIndex",
    "GridAttention",
    "attention_layers",
    "attention_distances",
    "attention_maps",
    "attention_rollout",
    "auroc",
    "cam_layer",
    "capture_attention",
    "extract_features",
    "fpr_at_tpr",
    "grad_cam",
    "grid_attention",
    "grid_rollout",
    "mean_attention_distance",
    "open_set_scores",
    "patch_embedding_components",
    "penultimate_features",
    "position_similarity",
    "principal_components",
    "similarity_by_distance",
    "stitch_window_attention",
    "swin_attention_maps",
    "tsne_embedding",
]
