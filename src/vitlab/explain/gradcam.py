"""Grad-CAM: which regions of the last feature map raise a class score, for CNNs and ViTs alike.

"Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization" (Selvaraju et al., arXiv
1610.02391, eq. 1-2): with A^k the channels of a feature map and y^c the class score (before the softmax),
alpha_k = mean over positions of dy^c/dA^k, and the map is ReLU(sum_k alpha_k A^k), at the feature map's resolution.

Which map (`cam_layer`): a CNN's (and Swin's) last stage output; a ViT's token grid, prefix tokens dropped and the
patch tokens reshaped to Hp x Wp. For a model whose head reads the class token (ViT, DeiT, CvT) the grid is taken at
the input of the last block's attention (its first norm's output): after the last block, patch tokens no longer reach
the class token, so their gradient there is zero. GAP models (CPVT, Mixer) use their last block's output.
"""

from __future__ import annotations

import torch
from torch import nn

from vitlab.explain.grid import _patch_grid


def cam_layer(model: nn.Module) -> str:
    """The name of the module whose output Grad-CAM reads (see the module docstring); ValueError where there is none."""
    fmt = getattr(model, "output_fmt", "NCHW")
    if fmt == "NLC" and getattr(model, "global_pool", None) == "token":
        last = model.attention_layers()[-1] if hasattr(model, "attention_layers") else None
        for name, m in model.named_modules():
            if (
                getattr(m, "attn", None) is last
                and last is not None
                and isinstance(getattr(m, "norm1", None), nn.Module)
            ):
                return f"{name}.norm1"
        raise ValueError(f"{type(model).__name__} reads a class token but has no block with attn and norm1")
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(
            f"{type(model).__name__} has no feature_info: name the feature map with grad_cam(..., layer=NAME)"
        )
    return info[-1]["module"]


def _to_map(model: nn.Module, act: torch.Tensor, image: tuple[int, int]) -> torch.Tensor:
    """A layer's output -> (B, C, h, w): NCHW as is, NHWC permuted, tokens (B, N, D) without prefix on their grid."""
    if act.ndim == 4:
        return act.permute(0, 3, 1, 2) if getattr(model, "output_fmt", "NCHW") == "NHWC" else act
    if act.ndim == 3:
        prefix, (h, w) = _patch_grid(model, act.shape[1], image)
        return act[:, prefix:].transpose(1, 2).reshape(act.shape[0], act.shape[2], h, w)  # (B, D, h, w)
    raise ValueError(f"Grad-CAM needs a feature map or tokens, the layer gives shape {tuple(act.shape)}")


def grad_cam(
    model: nn.Module, x: torch.Tensor, target: int | torch.Tensor | None = None, layer: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cam (B, h, w) >= 0 at the feature map's resolution, the target class of each image (B,)).

    `target`: one class for every image, one per image (B,), or None for each image's top class. `layer`: the module
    whose output is the feature map (default `cam_layer(model)`). One eval-mode forward and backward; the model's
    mode is restored and no parameter gradient is accumulated.
    """
    name = layer or cam_layer(model)
    module = dict(model.named_modules()).get(name)
    if module is None:
        raise ValueError(f"{type(model).__name__} has no module {name!r}")
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda mod, args, out: seen.append(out))
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(x)  # (B, num_classes)
            if target is None:
                target = logits.argmax(dim=-1)
            target = torch.as_tensor(target, device=logits.device).expand(logits.shape[0])
            if not ((target >= 0) & (target < logits.shape[-1])).all():
                raise ValueError(f"target class {target.tolist()} out of range: the model has {logits.shape[-1]}")
            score = logits.gather(1, target[:, None]).sum()  # images are independent: one backward for all
            (act,) = seen[-1:]
            (grad,) = torch.autograd.grad(score, act)
    finally:
        handle.remove()
        for m, training in modes:
            m.training = training
    A, G = _to_map(model, act.detach(), x.shape[-2:]), _to_map(model, grad, x.shape[-2:])  # (B, C, h, w)
    alpha = G.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1): eq. 1, global-average-pooled gradients
    return torch.relu((alpha * A).sum(dim=1)), target  # (B, h, w): eq. 2
