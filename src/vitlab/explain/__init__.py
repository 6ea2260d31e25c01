"""Looking inside models: attention capture and maps, rollout, Swin window maps on the token grid."""

from vitlab.explain.attention import attention_layers, attention_maps, attention_rollout, capture_attention
from vitlab.explain.windows import stitch_window_attention, swin_attention_maps

__all__ = [
    "attention_layers",
    "attention_maps",
    "attention_rollout",
    "capture_attention",
    "stitch_window_attention",
    "swin_attention_maps",
]
