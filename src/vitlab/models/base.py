"""What every image model shares: the config fields the engine reads, and classifier helpers."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass
class ImageModelConfig:
    img_size: int = 224  # square input side the model is built for
    in_chans: int = 3  # image channels the stem expects
    num_classes: int = 1000  # 0 gives a model without a head (features only)
    mean: tuple[float, ...] = IMAGENET_MEAN  # input normalisation the weights expect
    std: tuple[float, ...] = IMAGENET_STD
    labels: list[str] = field(default_factory=list)  # class names, if known (from a checkpoint or data set)

    def __post_init__(self) -> None:
        self.mean, self.std = tuple(self.mean), tuple(self.std)


class ClassifierMixin:
    """The classifier half of the model API for single-head models; `head_name` is the head's attribute path."""

    head_name: str = "head"

    def no_weight_decay(self) -> set[str]:
        return set()  # 1-D parameters (norms, biases, layer scales) are exempt anyway; models add their tokens

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward: every part of the model that supports it (stages, blocks) switches."""
        for m in self.modules():
            if hasattr(m, "grad_checkpointing"):
                m.grad_checkpointing = enable

    def get_classifier_names(self) -> list[str]:
        return [self.head_name]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = self.cfg.num_classes = num_classes
        owner, _, name = self.head_name.rpartition(".")
        setattr(self.get_submodule(owner), name, make_head(self.num_features, num_classes, like=self))


def make_head(in_features: int, num_classes: int, like: nn.Module | None = None) -> nn.Module:
    """A zero-initialised linear classifier (uniform first predictions), or Identity for num_classes=0."""
    if num_classes <= 0:
        return nn.Identity()
    kw = {}
    if like is not None:
        ref = next(like.parameters(), None)
        if ref is not None:
            kw = {"device": ref.device, "dtype": ref.dtype}
    head = nn.Linear(in_features, num_classes, **kw)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def init_trunc_normal(m: nn.Module, std: float = 0.02) -> None:
    """timm's default for transformers: truncated normal weights, zero biases, on Linear and Conv layers."""
    if isinstance(m, nn.Linear | nn.Conv2d):
        nn.init.trunc_normal_(m.weight, std=std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def check_images(x, in_chans: int) -> None:
    """One clear error for a batch of the wrong rank or channel count, before any layer sees it."""
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected images of shape (B, {in_chans}, H, W), got {tuple(x.shape)}")


def stage_indices(indices, count: int) -> set[int]:
    """Normalise `forward_intermediates` indices: None = all, int n = the last n, a list may count from the end."""
    if indices is None:
        return set(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices={indices}: ask for between 1 and {count} last outputs")
        return set(range(count - indices, count))
    out = set()
    for i in indices:
        if not -count <= i < count:
            raise ValueError(f"index {i} out of range for a model with {count} blocks/stages")
        out.add(i % count)
    return out
