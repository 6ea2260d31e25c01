"""What every image model shares: the config fields the engine reads, and `ModelBase`, timm's model API written once."""

# No `from __future__ import annotations` in this file: TorchScript and torch.fx read its annotations as objects.
# TorchScript types an attribute a model sets on itself from ModelBase's class annotations (ViT's fixed_input_size)
# and cannot resolve them as strings; torch.fx copies forward's argument annotation into the traced code, where a
# string becomes a name TorchScript cannot resolve either.
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitlab.errors import shape_text
from vitlab.fx import notrace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
OUTPUT_FMTS = ("NCHW", "NLC")  # feature maps (B, C, H, W); tokens (B, N, C)
# One output of `_forward_trunk` for `forward_intermediates`: tokens (B, N, C) and their grid (H, W), or a map (B, C,
# H, W) and None. Spelled out for TorchScript, which compiles `_forward_trunk` as part of forward.
Intermediate = tuple[torch.Tensor, tuple[int, int] | None]


@dataclass(frozen=True)
class ImageModelConfig:
    """Frozen: a model's config describes what was built; change it with `dataclasses.replace`."""

    img_size: int = 224  # square input side the model is built for
    in_chans: int = 3  # image channels the stem expects
    num_classes: int = 1000  # 0 gives a model without a head (features only)
    mean: tuple[float, ...] = IMAGENET_MEAN  # input normalisation the weights expect
    std: tuple[float, ...] = IMAGENET_STD
    labels: tuple[str, ...] = ()  # class names, if known (from a checkpoint or data set)
    # pooling before the classifier: one of the family's `global_pools`, or "" for the unpooled features (timm's
    # global_pool='': forward returns forward_features' output, with any head norm, and needs num_classes=0)
    global_pool: str = "avg"

    def __post_init__(self) -> None:
        # Lists (from JSON checkpoints, HF configs, callers) become tuples, so configs compare equal and hash.
        for f in dataclasses.fields(self):
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        if self.global_pool == "" and self.num_classes:
            raise ValueError(f"global_pool='' gives unpooled features: it needs num_classes=0, not {self.num_classes}")
        if not (isinstance(self.num_classes, int) and self.num_classes >= 0):
            raise ValueError(f"num_classes must be >= 0 (0: no head), got {self.num_classes!r}")
        # The shared size vocabulary, checked once for every family that has it: a zero or negative size would
        # otherwise surface as a cryptic error deep in a layer, or as a model with no blocks.
        sizes = {"img_size", "in_chans", "patch_size", "embed_dim", "depth", "num_heads", "depths"}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            values = v if isinstance(v, tuple) else (v,)
            if f.name in sizes and not all(isinstance(n, int) and n >= 1 for n in values):
                what = "positive integers" if isinstance(v, tuple) else "a positive integer"
                raise ValueError(f"{f.name} must be {what}, got {v!r}")
        if len(self.mean) != len(self.std) or not all(s > 0 for s in self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel and std > 0")

    def test_overrides(self) -> dict:
        """Settings for the contract tests: this architecture with its widths kept, depth and input shrunk so it runs
        on a CPU in a second, and randomness (dropout, stochastic depth) off so train-mode passes can be compared."""
        raise NotImplementedError(f"{type(self).__name__}.test_overrides: say how to shrink this family for tests")


def checkpointed(block: nn.Module, *args):
    """`block(*args)`, its activations recomputed in backward instead of stored (when autograd records them).

    Python only: call sites guard it with `not torch.jit.is_scripting()`, which TorchScript resolves at compile time,
    so scripted models run their blocks directly (timm's models do the same).
    """
    if torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class ModelBase(nn.Module):
    """timm's model API for every family: classifier access, grad checkpointing, `forward_intermediates`.

    A family builds its layers and implements `_forward_trunk` (the one pass both `forward_features` and
    `forward_intermediates` run), `_feature_info`, `forward_head`, and where it has them `_final_norm` and
    `no_weight_decay`; its blocks (or stages) run through `checkpointed` when `grad_checkpointing` is set.

    TorchScript: `torch.jit.script(model)` compiles forward, so the forward path reads plain attributes (`in_chans`,
    `global_pool`, copies of what it needs from the frozen config), never `cfg`, and keeps Python-only code (grad
    checkpointing, attention capture) behind `torch.jit.is_scripting()`. `forward_intermediates` stays Python.
    """

    head_name: str = "head"  # attribute path of the classifier (`head.fc` where the head has a norm before it)
    global_pools: tuple[str, ...] = ("avg",)  # the pooling choices `reset_classifier(..., global_pool)` accepts
    unpooled_features: bool = True  # global_pool='' allowed (False: layers between pool and classifier, timm's VGG)
    # timm's metadata: layout of forward_features' output, the stem conv, whether the input size is fixed by the
    # weights (a position table, Swin's windows), the eval crop fraction at the 224 default, features_only's levels
    output_fmt: str = "NCHW"
    first_conv: str = ""
    fixed_input_size: bool = False
    crop_pct: float = 0.875
    default_out_indices: int | tuple[int, ...] | None = None  # None: every level
    __jit_unused_properties__ = ["feature_info", "pretrained_cfg", "default_cfg"]  # Python only
    __jit_ignored_attributes__ = ["cfg"]  # a dataclass: TorchScript cannot hold it; forward reads the copies below

    def __init__(self, cfg: ImageModelConfig, num_features: int, head_hidden_size: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        # copies of the config that forward reads (kept in step with cfg by reset_classifier)
        self.in_chans = cfg.in_chans
        self.global_pool = cfg.global_pool
        self.num_classes = cfg.num_classes
        self.num_features = num_features  # channels of forward_features' output
        self.head_hidden_size = num_features if head_hidden_size is None else head_hidden_size  # the classifier's input
        self.grad_checkpointing = False
        self._check_pool(cfg.global_pool)

    def _check_pool(self, pool: str) -> None:
        choices = self.global_pools + (("",) if self.unpooled_features else ())
        if pool not in choices:
            raise ValueError(f"global_pool={pool!r}: {type(self).__name__} accepts {', '.join(map(repr, choices))}")

    # ----- what a family implements ------------------------------------------------------------------------------
    def _forward_trunk(
        self, x: torch.Tensor, take: list[int] | None = None, stop: int | None = None
    ) -> tuple[torch.Tensor, list[Intermediate]]:
        """(forward_features' output, [(output, grid) of each block/stage in `take`]); blocks after `stop` are skipped
        when it is given (the first value is then meaningless).

        An output is tokens (B, N, C) on a grid (H, W), prefix tokens first, or a feature map (B, C, H, W) (grid None).
        """
        raise NotImplementedError

    def _final_norm(self) -> nn.Module | None:
        """The norm forward_features applies to its tokens last; None where the features are not normalised."""
        return None

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def _feature_info(self) -> list[dict]:
        """One dict per `forward_intermediates` output (block or stage): num_chs, reduction (input pixels per output
        step), module."""
        raise NotImplementedError

    def _pool_size(self) -> tuple[int, int]:
        """(H, W) of forward_features' map at the built image size: the size over the last reduction, rounded up
        (padded convolutions and windows); a family with unpadded layers computes its own."""
        side = -(-self.cfg.img_size // self.feature_info[-1]["reduction"])
        return side, side

    # ----- timm's metadata ----------------------------------------------------------------------------------------
    @property
    def feature_info(self) -> list[dict]:
        return self._feature_info()

    @property
    def pretrained_cfg(self) -> dict:
        """timm's pretrained_cfg for this model as built: what `timm.data.resolve_data_config(model=...)` reads.

        crop_pct: timm's value for the variant at its default size; 1.0 at other sizes (384-pixel fine-tunes, the
        small vitlab configs whose images are already at the model's size). The factory adds per-variant values.
        """
        cfg = self.cfg
        heads = self.get_classifier_names()
        out = dict(
            architecture=getattr(self, "model_name", type(self).__name__),
            num_classes=self.num_classes,
            input_size=(cfg.in_chans, cfg.img_size, cfg.img_size),
            pool_size=None if self.output_fmt == "NLC" else self._pool_size(),
            crop_pct=self.crop_pct if cfg.img_size == 224 else 1.0,
            crop_mode="center",
            interpolation="bicubic",
            fixed_input_size=self.fixed_input_size,
            mean=tuple(cfg.mean),
            std=tuple(cfg.std),
            first_conv=self.first_conv,
            classifier=heads[0] if len(heads) == 1 else tuple(heads),
        )
        return {**out, **getattr(self, "pretrained_cfg_overlay", {})}

    @property
    def default_cfg(self) -> dict:
        """timm's older name of `pretrained_cfg`."""
        return self.pretrained_cfg

    # ----- forward ------------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.in_chans)
        return self._forward_trunk(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list | tuple[torch.Tensor, list]:
        """Outputs of the blocks/stages named by `indices` (None = all, n = the last n, negatives count back), with
        timm's semantics: `feature_info[i]` describes output i.

        output_fmt: "NCHW" feature maps (B, C, H, W); "NLC" grid tokens (B, H*W, C) (a CNN's map flattened, the
        sequence DETR feeds its encoder). Prefix tokens (class, distillation) are split off in both formats and
        returned only with `return_prefix_tokens`, each then a pair (grid output, prefix (B, P, C); None: a CNN).
        norm: pass each output through the final norm that forward_features ends with, where it fits (its width):
        every block of ViT and Mixer, the last stage of Swin and CvT; a no-op where features are unnormalised
        (CNNs, ViTs that normalise after pooling), as in timm.
        stop_early: run no block past the last one asked for (with `intermediates_only`; otherwise the final
        features need the whole trunk).
        Returns the outputs, or `(forward_features(x), outputs)` unless intermediates_only.
        """
        if output_fmt not in OUTPUT_FMTS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FMTS}, got {output_fmt!r}")
        final_norm = self._final_norm() if norm else None
        take, last = feature_take_indices(len(self.feature_info), indices)
        check_images(x, self.in_chans)
        final, outs = self._forward_trunk(x, take, last if stop_early and intermediates_only else None)
        feats = []
        for y, grid in outs:
            if y.ndim == 4:  # a CNN's map (B, C, H, W)
                y = y if output_fmt == "NCHW" else y.flatten(2).transpose(1, 2)  # (B, H*W, C)
                feats.append((y, None))
                continue
            if final_norm is not None and y.shape[-1] == self.num_features:
                y = final_norm(y)
            P = y.shape[1] - grid[0] * grid[1]  # prefix tokens before the grid's
            prefix, y = y[:, :P], y[:, P:]
            feats.append((y if output_fmt == "NLC" else tokens_to_map(y, grid), prefix))
        feats = feats if return_prefix_tokens else [y for y, _ in feats]
        return feats if intermediates_only else (final, feats)

    # ----- classifier ---------------------------------------------------------------------------------------------
    def get_classifier_names(self) -> list[str]:
        """Attribute paths of the classifier(s): the parameters transfer learning replaces."""
        return [self.head_name]

    def get_classifier(self) -> nn.Module | tuple[nn.Module, ...]:
        """The classifier (timm's API); a tuple for models with two heads (distilled DeiT: head, head_dist)."""
        heads = tuple(self.get_submodule(n) for n in self.get_classifier_names())
        return heads[0] if len(heads) == 1 else heads

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new zero-initialised classifier for `num_classes` (0: none, forward gives pooled features).

        global_pool: one of `global_pools` ('avg', 'token' for ViTs with a class token), '' for no pooling (forward
        then gives the unpooled features; num_classes must be 0), None to keep the pooling (timm's signature).
        """
        changes = {"num_classes": num_classes}
        if global_pool is not None:
            self._check_pool(global_pool)
            changes["global_pool"] = global_pool
        self.cfg = dataclasses.replace(self.cfg, **changes)  # validated again by __post_init__
        self.num_classes = num_classes
        self.global_pool = self.cfg.global_pool
        for name in self.get_classifier_names():
            owner, _, attr = name.rpartition(".")
            setattr(self.get_submodule(owner), attr, make_head(self.head_hidden_size, num_classes, like=self))

    def no_weight_decay(self) -> set[str]:
        return set()  # 1-D parameters (norms, biases, layer scales) are exempt anyway; models add their tokens

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block (or stage) activations in backward: less memory for ~30% more compute."""
        self.grad_checkpointing = enable


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


@notrace  # a check on sizes and types: one opaque call in a traced graph
def check_images(x: torch.Tensor, in_chans: int) -> None:
    """One clear error for input a model cannot take, before any layer sees it: not a tensor (numpy), not floating
    point (uint8 pixels), float64 beside float32 weights, or the wrong rank or channel count.

    The model's dtype is not known here: float16/bfloat16 pass (half models, autocast), float64 only when it is torch's
    default dtype (then models are built in float64). TorchScript checks the shape only (its types are static).
    """
    if not torch.jit.is_scripting():
        _check_image_type(x, in_chans)
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected images of shape (B, {in_chans}, H, W), got {shape_text(x)}")


def _check_image_type(x, in_chans: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"expected images as a torch.Tensor (B, {in_chans}, H, W), got {type(x).__name__}; "
            "convert with torch.from_numpy(x) or torch.as_tensor(x)"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"expected floating-point images (normalised float32), got {x.dtype}; pixels go through "
            "vitlab.data.ImageTransform.for_model(model), or x.float() / 255 and the model's mean/std"
        )
    if x.dtype == torch.float64 and torch.get_default_dtype() != torch.float64:
        raise TypeError("expected float32 images (the model's weights), got torch.float64; convert with x.float()")


def token_feature_info(depth: int, width: int, patch_size: int) -> list[dict]:
    """`feature_info` of an isotropic model (ViT, Mixer): each of `depth` blocks gives `width` channels at the patch
    stride."""
    return [dict(num_chs=width, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]


def tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens (B, N, C) on an (H, W) grid, N - H*W prefix tokens first -> map (B, C, H, W) of the grid tokens."""
    B, N, C = x.shape
    H, W = grid
    return x[:, N - H * W :].transpose(1, 2).reshape(B, C, H, W)


def feature_take_indices(count: int, indices=None) -> tuple[list[int], int]:
    """timm's index rule for `forward_intermediates`: None = all, int n = the last n, a list may count from the end.

    Returns (the absolute indices in the order asked, the largest of them).
    """
    if indices is None:
        indices = count
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices={indices}: ask for between 1 and {count} last outputs")
        take = list(range(count - indices, count))
    else:
        take = []
        for i in indices:
            if not -count <= i < count:
                raise ValueError(f"index {i} out of range for a model with {count} blocks/stages")
            take.append(i % count)
        if not take:
            raise ValueError("indices: ask for at least one block/stage")
    return take, max(take)
