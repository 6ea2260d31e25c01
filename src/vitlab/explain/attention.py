"""Attention probabilities of chosen layers, and attention rollout.

Rollout: "Quantifying Attention Flow in Transformers" (Abnar & Zuidema, arXiv 2005.00928, sec. 3): the product over
layers of (mean-over-heads attention + identity), rows renormalised, traces how much each input token reaches each
output token through the residual stream. It needs one token set that every layer attends over (ViT, DeiT, CPVT,
hybrid ViT); Swin's windows and CvT's subsampled keys/values have no such set, and rollout refuses them.

`capture_attention` turns on the explicit softmax (`vitlab.layers.attend(..., capture=True)`) for the requested layers
only; every other layer stays on SDPA, and the model's modes and flags are restored even when a forward fails.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The model's attention layers in forward order across all stages; ValueError for a model without any."""
    if hasattr(model, "attention_layers"):
        layers = list(model.attention_layers())
    else:  # models that do not list them (a wrapper, a custom stack): every module with a capture flag
        layers = [m for m in model.modules() if hasattr(m, "capture_attn")]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no attention layers (no module with a capture_attn flag): attention maps "
            "need a transformer with self-attention (ViT, DeiT, CPVT, hybrid ViT, Swin, CvT)"
        )
    return layers


def _layer_indices(layers: Sequence[int] | None, count: int) -> list[int]:
    if layers is None:
        return list(range(count))
    if isinstance(layers, int):
        layers = [layers]
    for i in layers:
        if not -count <= i < count:
            raise ValueError(
                f"attention layer {i} out of range: the model has {count}, so indices lie in [{-count}, {count - 1}]"
            )
    return sorted({i % count for i in layers})


@contextmanager
def capture_attention(model: nn.Module, layers: Sequence[int] | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Record the attention probabilities of `layers` during the forward passes run inside the ``with`` block.

    ``with capture_attention(model, layers=[0, -1]) as maps: model(x)`` -> afterwards ``maps`` is
    {layer index: probabilities of the last forward}, filled when the block exits. A layer index is the position in
    the model's attention-layer order across all stages (default: all layers; negatives count back). Shapes:
    (B, H, N, N) for ViT-like layers; (B*nW, H, N, N) per window for Swin (see `swin_attention_maps`);
    (B, H, Nq, Nkv) for CvT, whose keys/values live on a subsampled grid. Probabilities are detached.

    Only the requested layers run the explicit softmax; the others stay on SDPA. On exit, even after an exception,
    every module's train/eval mode and every attention layer's capture flag and stored probabilities are as they
    were on entry (so ``model.eval()`` inside the block is undone too).
    """
    attn = attention_layers(model)
    idx = _layer_indices(layers, len(attn))
    modes = [(m, m.training) for m in model.modules()]
    saved = [(a, a.capture_attn, a.attn_probs) for a in attn]
    maps: dict[int, torch.Tensor] = {}
    try:
        for i in idx:
            attn[i].capture_attn = True
            attn[i].attn_probs = None
        yield maps
        for i in idx:
            if attn[i].attn_probs is not None:
                maps[i] = attn[i].attn_probs
    finally:
        for a, flag, probs in saved:
            a.capture_attn, a.attn_probs = flag, probs
        for m, training in modes:
            m.training = training


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor, layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    """{layer index: probabilities} of one eval-mode forward of `x` (shapes as in `capture_attention`).

    The model runs in eval mode (no dropout, BatchNorm on running statistics) and is left in the mode it was in.
    """
    with capture_attention(model, layers) as maps:
        model.eval()
        model(x)
    return maps


def attention_maps_and_inputs(
    model: nn.Module, x: torch.Tensor, layers: list[int], modules: dict[int, nn.Module]
) -> tuple[dict[int, torch.Tensor], dict[int, tuple]]:
    """`attention_maps(model, x, layers)` and, for each i in `modules`, the positional inputs that module received
    during the same forward (its geometry: token counts, grids)."""
    seen: dict[int, tuple] = {}

    def recorder(i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            seen[i] = args

        return hook

    hooks = [m.register_forward_pre_hook(recorder(i)) for i, m in modules.items()]
    try:
        maps = attention_maps(model, x, layers)
    finally:
        for h in hooks:
            h.remove()
    return maps, seen


def _rollout_refusal(i: int, a: torch.Tensor, batch: int, tokens: int | None) -> str | None:
    """Why rollout is undefined at layer i with probabilities `a`, as one sentence; None when it is defined."""
    if a.shape[0] != batch:
        return (
            f"attention layer {i} is windowed ({a.shape[0]} maps for {batch} images, as in Swin's shifted windows), "
            "so no single token set runs through all layers and rollout is undefined; use "
            "vitlab.explain.swin_attention_maps(model, x) for per-layer maps stitched onto each stage's token grid"
        )
    if a.shape[-2] != a.shape[-1]:
        return (
            f"attention layer {i} has queries and keys/values on different token grids ({a.shape[-2]} queries, "
            f"{a.shape[-1]} keys, as in CvT's strided k/v projection), so rollout, a product of token-to-token "
            "matrices, is undefined; use vitlab.explain.attention_maps for the per-layer maps"
        )
    if tokens is not None and a.shape[-1] != tokens:
        return (
            f"the token count changes from {tokens} to {a.shape[-1]} at attention layer {i} (a hierarchical model's "
            "stages), so rollout is undefined; use vitlab.explain.attention_maps for the per-layer maps"
        )
    return None


@torch.no_grad()
def attention_rollout(model: nn.Module, x: torch.Tensor, discard_ratio: float = 0.0) -> torch.Tensor:
    """(B, N, N) attention rollout over all layers (sec. 3), rows renormalised; ViT-like models only.

    `discard_ratio`: the fraction of the lowest mean-over-heads weights per image set to zero before the identity is
    added (noise filtering). ValueError for Swin (windowed attention) and CvT (queries and keys/values on different
    grids), where a product of token-to-token matrices over one token set is not defined.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must lie in [0, 1), got {discard_ratio}")
    maps = attention_maps(model, x)
    tokens = None
    for i in sorted(maps):
        why = _rollout_refusal(i, maps[i], x.shape[0], tokens)
        if why:
            raise ValueError(why)
        tokens = maps[i].shape[-1]
    result = None
    for i in sorted(maps):
        a = maps[i].mean(dim=1)  # (B, N, N)
        if discard_ratio > 0:
            flat = a.flatten(1)  # (B, N*N)
            k = int(flat.shape[1] * discard_ratio)
            if k:
                low = flat.topk(k, dim=1, largest=False).indices
                flat = flat.scatter(1, low, 0.0)
            a = flat.view_as(a)
        a = a + torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result  # (B, N, N)
    return result
