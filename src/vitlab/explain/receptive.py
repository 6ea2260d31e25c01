"""Receptive fields: the theoretical one of every conv and pool layer, computed from the modules of a traced graph;
the measured one (which input pixels can change a unit); the effective one by the gradient method (Luo et al. 2016).

Coordinates are input pixels: `size` is the side of the region one unit sees, `jump` the distance in input pixels
between neighbouring units of that layer, `start` the input coordinate of the centre of unit (0, 0) (pixel 0's
centre is 0; negative where the field reaches into the padding). For a layer of kernel k, stride s, padding p and
dilation d after a layer (size, jump, start):

    size' = size + (k - 1) * d * jump,   jump' = jump * s,   start' = start + ((k - 1) * d / 2 - p) * jump

Branches that meet (a residual sum, a concatenation) see the union of their fields: the largest. Ops that mix all
positions (attention, global pooling, flattening into a linear layer) make every later unit global (size = inf).
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from vitlab.errors import ConfigError

GLOBAL = math.inf


@dataclass(frozen=True)
class Field:
    size: float  # inf: the whole input
    jump: float
    start: float

    @property
    def is_global(self) -> bool:
        return math.isinf(self.size)

    def after(self, kernel: int, stride: int, padding: float, dilation: int = 1) -> Field:
        if self.is_global:
            return self
        return Field(
            self.size + (kernel - 1) * dilation * self.jump,
            self.jump * stride,
            self.start + ((kernel - 1) * dilation / 2 - padding) * self.jump,
        )


INPUT = Field(1.0, 1.0, 0.0)


@dataclass(frozen=True)
class LayerField:
    """One spatial layer: its module name, kind (conv / maxpool / avgpool), geometry and field after it."""

    name: str
    kind: str
    kernel: int
    stride: int
    padding: float
    dilation: int
    size: float
    jump: float
    start: float

    def as_dict(self) -> dict:
        d = asdict(self)
        d["size"] = None if math.isinf(self.size) else self.size  # JSON has no inf
        return d


def _pair_first(v, name: str, module: str) -> int:
    """The height component of an int or (h, w) geometry; refuses anisotropic geometry (fields here are square)."""
    if isinstance(v, int):
        return v
    if len(set(v)) != 1:
        raise ConfigError(f"{module}: {name}={tuple(v)} is not square; receptive fields here assume square geometry")
    return int(v[0])


def _geometry(m: nn.Module, name: str) -> tuple[str, int, int, float, int] | None:
    """(kind, kernel, stride, padding, dilation) of a spatial conv or pool module; None for anything else."""
    if isinstance(m, nn.Conv2d):
        k, s, d = (_pair_first(getattr(m, a), a, name) for a in ("kernel_size", "stride", "dilation"))
        if isinstance(m.padding, str):  # "same" or "valid"
            p = (k - 1) * d / 2 if m.padding == "same" else 0.0
        else:
            p = _pair_first(m.padding, "padding", name)
        return "conv", k, s, float(p), d
    if isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        k = _pair_first(m.kernel_size, "kernel_size", name)
        s = _pair_first(m.stride if m.stride is not None else m.kernel_size, "stride", name)
        d = _pair_first(getattr(m, "dilation", 1), "dilation", name)
        kind = "maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool"
        return kind, k, s, float(_pair_first(m.padding, "padding", name)), d
    return None


# Modules and functions that mix every position: what follows them is global.
_MIXING_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.MultiheadAttention, nn.Flatten, nn.Linear)
_MIXING_FUNCTIONS = {
    torch.matmul, torch.bmm, torch.einsum, F.scaled_dot_product_attention, F.softmax, torch.softmax,
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.flatten, operator.matmul, torch.mean,
}  # fmt: skip
_MIXING_METHODS = {"mean", "flatten", "softmax", "view", "reshape", "sum", "amax", "max"}


def receptive_fields(model: nn.Module) -> list[LayerField]:
    """The theoretical receptive field after every conv and pool layer of `model`, in forward order.

    Computed from the modules of the model's torch.fx graph (`vitlab.fx.symbolic_trace`), so branches and residual
    sums count as they run. Layers after an op that mixes all positions (a global pool, attention, a flatten) are
    reported as global; a linear layer on channels-last maps (ConvNeXt's MLP) is pointwise only when it follows a
    permute, which is how vitlab's models run it.
    """
    from vitlab.fx import symbolic_trace

    gm = symbolic_trace(model.eval())
    modules = dict(gm.named_modules())
    field: dict[fx.Node, Field] = {}
    channels_last: set[fx.Node] = set()  # nodes holding (B, H, W, C) maps: a Linear on them is pointwise
    out: list[LayerField] = []
    for node in gm.graph.nodes:
        inputs = [field[a] for a in node.all_input_nodes if a in field]
        if node.op == "placeholder":
            field[node] = INPUT
            continue
        if not inputs:
            continue  # constants, attributes
        merged = max(inputs, key=lambda f: f.size)
        if node.op == "call_module":
            m = modules[node.target]
            if hasattr(m, "receptive_steps"):  # a leaf layer that says its own geometry (local self-attention)
                f = merged
                for suffix, kind, k, s, p, d in m.receptive_steps():
                    f = f.after(k, s, p, d)
                    out.append(LayerField(node.target + suffix, kind, k, s, p, d, f.size, f.jump, f.start))
                field[node] = f
                continue
            geo = _geometry(m, node.target)
            if geo is not None:
                kind, k, s, p, d = geo
                f = merged.after(k, s, p, d)
                field[node] = f
                out.append(LayerField(node.target, kind, k, s, p, d, f.size, f.jump, f.start))
                continue
            on_channels_last = bool(node.args) and node.args[0] in channels_last
            pointwise_linear = isinstance(m, nn.Linear) and on_channels_last
            mixing = isinstance(m, _MIXING_MODULES) and not pointwise_linear
            field[node] = Field(GLOBAL, merged.jump, merged.start) if mixing else merged
            if on_channels_last:
                channels_last.add(node)
            continue
        if node.op == "call_function" and node.target in (F.conv2d, F.max_pool2d, F.avg_pool2d):
            raise ConfigError(f"{node.name}: a functional {node.target.__name__} has no module to read geometry from")
        if node.op == "call_method" and node.target == "permute":
            dims = tuple(node.args[1:]) if len(node.args) > 2 else tuple(node.args[1])
            if dims == (0, 2, 3, 1):  # to (B, H, W, C); any other order leaves channels-last
                channels_last.add(node)
            field[node] = merged
            continue
        mixing = (node.op == "call_function" and node.target in _MIXING_FUNCTIONS) or (
            node.op == "call_method" and node.target in _MIXING_METHODS
        )
        field[node] = Field(GLOBAL, merged.jump, merged.start) if mixing else merged
        if any(a in channels_last for a in node.all_input_nodes) and not mixing:
            channels_last.add(node)
    return out


# ----- measured: which input pixels can change a unit ----------------------------------------------------------------
def layer_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The output of the module named `layer` for input `x` (the rest of the forward is not needed: stopped there)."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ConfigError(f"no layer {layer!r} in {type(model).__name__}; layers: {', '.join(list(modules)[1:8])}, ...")
    captured: list[torch.Tensor] = []

    class _Stop(Exception):
        pass

    def hook(_m, _inp, output):
        captured.append(output if isinstance(output, torch.Tensor) else output[0])
        raise _Stop

    handle = modules[layer].register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ConfigError(f"layer {layer!r} did not run in the forward pass")
    return captured[0]


def _centre_unit(y: torch.Tensor) -> torch.Tensor:
    """Per sample, the centre unit of a (B, C, H, W) map summed over channels."""
    if y.ndim != 4:
        raise ConfigError(f"expected a (B, C, H, W) map at the layer, got shape {tuple(y.shape)}")
    return y[:, :, (y.shape[2] - 1) // 2, (y.shape[3] - 1) // 2].sum(1)


@torch.no_grad()
def measured_field(
    model: nn.Module, layer: str, img_size: int, in_chans: int | None = None, batch: int = 256
) -> torch.Tensor:
    """(H, W) bool map of the input pixels whose change changes the centre unit of `layer`'s output.

    Brute force on a copy with positive weights (`_monotone_probe`) from an all-zero input: every path through convs,
    ReLU/tanh, batch norms and max or average pools is then monotone, so a pixel can change the unit iff raising it
    does. One forward per pixel, each batch beside the unperturbed input.
    """
    in_chans = in_chans or getattr(model, "in_chans", 3)
    probe = _monotone_probe(model)
    n = img_size * img_size
    changed = torch.zeros(n, dtype=torch.bool)
    for lo in range(0, n, batch):
        idx = torch.arange(lo, min(lo + batch, n))
        x = torch.zeros(len(idx) + 1, in_chans, img_size * img_size, dtype=torch.float64)  # row 0: the reference
        x[torch.arange(1, len(idx) + 1), :, idx] = 1.0
        with _float64():
            y = _centre_unit(layer_output(probe, layer, x.view(-1, in_chans, img_size, img_size)))
        changed[idx] = y[1:] != y[0]
    return changed.view(img_size, img_size)


@torch.no_grad()
def measured_extent(model: nn.Module, layer: str, img_size: int, in_chans: int | None = None) -> tuple[int, int]:
    """(rows, cols) of the input that can change the centre unit of `layer`, by raising one whole row (then one whole
    column) of pixels at a time on the probe `measured_field` uses: 2 * img_size forwards instead of img_size**2."""
    in_chans = in_chans or getattr(model, "in_chans", 3)
    probe = _monotone_probe(model)
    spans = []
    for axis in (2, 3):
        x = torch.zeros(img_size + 1, in_chans, img_size, img_size, dtype=torch.float64)  # sample 0: the reference
        for i in range(img_size):
            x[(i + 1, slice(None), i) if axis == 2 else (i + 1, slice(None), slice(None), i)] = 1.0
        with _float64():
            y = _centre_unit(layer_output(probe, layer, x))
        hit = (y[1:] != y[0]).nonzero()
        spans.append(0 if len(hit) == 0 else int(hit[-1] - hit[0] + 1))
    return spans[0], spans[1]


@contextlib.contextmanager
def _float64():
    """float64 as torch's default dtype: vitlab models then take float64 input (the probe's)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _monotone_probe(model: nn.Module) -> nn.Module:
    """A float64 copy whose every weight is 1 / fan-in (each layer averages its inputs), with zero biases and
    neutral batch-norm statistics: from an all-zero input every unit is exactly 0, and raising any pixel of its field
    makes it positive however deep the path (no float32 rounding hides the far edges)."""
    import copy

    probe = copy.deepcopy(model).eval().double()
    for name, p in probe.named_parameters():
        fan_in = p[0].numel() if p.ndim > 1 else 1
        p.copy_(torch.zeros_like(p) if name.endswith("bias") else torch.full_like(p, 1.0 / fan_in))
    for m in probe.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
    return probe


def extent(mask: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) spanned by the True pixels of a 2-D mask (0 when none)."""
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    if len(rows) == 0:
        return 0, 0
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


# ----- effective: the gradient method --------------------------------------------------------------------------------
def effective_field(
    model: nn.Module | Sequence[nn.Module],
    layer: str,
    img_size: int,
    in_chans: int | None = None,
    samples: int = 8,
    seed: int = 0,
) -> torch.Tensor:
    """(H, W) map of |d unit / d input| for the centre unit of `layer`, summed over channels, averaged over `samples`
    random inputs and over the models given (one, or several initialisations of one architecture), normalised to sum
    1. As Luo et al. 2016: a unit gradient at the centre of the output map, propagated back to the input."""
    models = [model] if isinstance(model, nn.Module) else list(model)
    in_chans = in_chans or getattr(models[0], "in_chans", 3)
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(img_size, img_size)
    for m in models:
        m.eval()
        x = torch.randn(samples, in_chans, img_size, img_size, generator=g).requires_grad_(True)
        (grad,) = torch.autograd.grad(_unit_output(m, layer, x).sum(), x)
        total += grad.abs().sum((0, 1))
    return total / total.sum().clamp_min(1e-30)


def _unit_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Per sample, the centre unit of `layer`: a (B, C, H, W) map's centre, or the centre grid token of (B, N, C)
    tokens (after the model's prefix tokens)."""
    y = layer_output(model, layer, x)
    if y.ndim == 3:
        prefix = getattr(model, "num_prefix_tokens", 0)
        n = y.shape[1] - prefix
        side = math.isqrt(n)
        if side * side != n:
            raise ConfigError(f"layer {layer!r}: {n} tokens after {prefix} prefix tokens are not a square grid")
        return y[:, prefix + (side // 2) * side + side // 2].sum(-1)
    return _centre_unit(y)


def rms_radius(erf: torch.Tensor) -> float:
    """The root-mean-square distance of the map's mass from its centre of mass, in pixels: a continuous size."""
    h, w = erf.shape
    ys = torch.arange(h, dtype=erf.dtype)[:, None]
    xs = torch.arange(w, dtype=erf.dtype)[None, :]
    total = erf.sum()
    cy, cx = (erf * ys).sum() / total, (erf * xs).sum() / total
    return float(((erf * ((ys - cy) ** 2 + (xs - cx) ** 2)).sum() / total).sqrt())


def mass_side(erf: torch.Tensor, fraction: float = 0.95) -> int:
    """The side of the smallest square centred on the map's centre of mass that holds `fraction` of its mass."""
    h, w = erf.shape
    total = erf.sum()
    cy = int(round(float((erf.sum(1) * torch.arange(h, dtype=erf.dtype)).sum() / total)))
    cx = int(round(float((erf.sum(0) * torch.arange(w, dtype=erf.dtype)).sum() / total)))
    for r in range(max(h, w)):
        sq = erf[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1]
        if sq.sum() >= fraction * total:
            return 2 * r + 1
    return max(h, w)
