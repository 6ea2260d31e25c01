"""Looking inside models: attention maps and attention rollout."""

from vitlab.explain.attention import attention_maps, attention_rollout

__all__ = ["attention_maps", "attention_rollout"]
