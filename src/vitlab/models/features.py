"""timm's `features_only=True`: a model wrapped to return its feature pyramid, with `feature_info` describing it.

`create_model(name, features_only=True, out_indices=..., feature_cls=...)` builds the model, then wraps it in
`FeatureNet`, which runs `forward_intermediates` up to the deepest level asked for. `feature_cls`:
"getter" (timm's FeatureGetterNet: NCHW maps) or "list"/"hook" (timm's default: maps in the model's own layout,
channels-last NHWC for Swin), "dict" (the same, keyed by module name). The classifier is dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.base import feature_take_indices

FEATURE_CLASSES = ("getter", "list", "hook", "dict")


class FeatureInfo:
    """timm's FeatureInfo accessors over the chosen levels: `channels()`, `reduction()`, `module_name()`."""

    def __init__(self, info: list[dict], out_indices: list[int]) -> None:
        self.info = [dict(d) for d in info]
        self.out_indices = list(out_indices)

    def get(self, key: str, idx: int | list[int] | None = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def get_dicts(self, keys: list[str] | None = None, idx=None) -> list[dict]:
        rows = [self.info[i] for i in (self.out_indices if idx is None else idx)]
        return [d if keys is None else {k: d[k] for k in keys} for d in rows]

    def channels(self, idx=None):
        return self.get("num_chs", idx)

    def reduction(self, idx=None):
        return self.get("reduction", idx)

    def module_name(self, idx=None):
        return self.get("module", idx)

    def __getitem__(self, item):
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)


class FeatureNet(nn.Module):
    """Shapes: images (B, C, H, W) -> list of maps, level i (B, channels()[i], H / reduction()[i], W / ...)."""

    def __init__(
        self,
        model: nn.Module,
        out_indices: int | tuple[int, ...] | list[int] | None = None,
        feature_cls: str = "list",
        norm: bool = False,
        output_fmt: str | None = None,
    ) -> None:
        super().__init__()
        name = getattr(model, "model_name", type(model).__name__)
        if not hasattr(model, "forward_intermediates"):
            raise ConfigError(f"{name}: features_only needs a model with forward_intermediates")
        feature_cls = str(feature_cls).lower()
        if feature_cls not in FEATURE_CLASSES:
            raise ConfigError(f"feature_cls={feature_cls!r}: choose one of {', '.join(FEATURE_CLASSES)}")
        info = model.feature_info
        if out_indices is None:
            out_indices = model.default_out_indices
        try:
            idx, _ = feature_take_indices(len(info), out_indices)
        except ValueError as e:
            raise ConfigError(f"{name}: out_indices: {e}") from None
        model.reset_classifier(0)  # features only: no classifier weights to carry
        self.model = model
        self.out_indices = idx
        self.feature_cls = feature_cls
        self.norm = norm
        native = "NHWC" if getattr(model, "output_fmt", "NCHW") == "NHWC" else "NCHW"
        self.output_fmt = output_fmt or ("NCHW" if feature_cls == "getter" else native)
        if self.output_fmt not in ("NCHW", "NHWC"):
            raise ConfigError(f"output_fmt={self.output_fmt!r}: features are 'NCHW' or 'NHWC' maps")
        self.feature_info = FeatureInfo(info, idx)
        self.pretrained_cfg = {**model.pretrained_cfg, "num_classes": 0}

    @property
    def default_cfg(self) -> dict:
        """timm's older name of `pretrained_cfg` (the same dict)."""
        return self.pretrained_cfg

    def forward(self, x: torch.Tensor):
        feats = self.model.forward_intermediates(
            x, indices=self.out_indices, norm=self.norm, stop_early=True, intermediates_only=True
        )
        if self.output_fmt == "NHWC":
            feats = [f.permute(0, 2, 3, 1) for f in feats]
        if self.feature_cls == "dict":
            return dict(zip(self.feature_info.module_name(), feats, strict=True))
        return feats
