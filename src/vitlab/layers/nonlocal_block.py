"""The non-local block, 2-D (B, C, H, W) and space-time (B, C, T, H, W).

Wang, Girshick, Gupta & He, "Non-local Neural Networks", CVPR 2018, arXiv 1711.07971 (seed 002 of the lectures),
Sec. 3.2-3.3:

    y_i = (1 / C(x)) Σ_j f(x_i, x_j) g(x_j),      z_i = W_z y_i + x_i,

with θ, φ, g 1×1 (space-time: 1×1×1) convolutions to C/2 channels and four choices of f:

    gaussian            f = exp(x_iᵀ x_j) on the input itself,  C(x) = Σ_j f   (a softmax over j)
    embedded_gaussian   f = exp(θ_iᵀ φ_j),                      C(x) = Σ_j f   (self-attention, Sec. 3.2)
    dot_product         f = θ_iᵀ φ_j,                           C(x) = N, the number of positions j
    concatenation       f = ReLU(w_fᵀ [θ_i, φ_j]),              C(x) = N

W_z is a 1×1 conv back to C channels followed by BatchNorm whose scale is initialised to 0, so that the block starts
as the identity and can be inserted into a pre-trained network (Sec. 4.1). `sub_sample` max-pools φ and g (and,
for gaussian, the x that stands for φ) 2×2 spatially, never in time, as the official code does: N shrinks 4x.

How this differs from the reference code (facebookresearch/video-nonlocal-net, Caffe2): it scales θᵀφ by
(C/2)^-1/2 by default (its NONLOCAL.USE_SCALE); here the paper's unscaled exp(θᵀφ) is the default and
`attn_scale=True` gives the official one. The softmax forms run through `vitlab.layers.attend`, so they use
`F.scaled_dot_product_attention` unless the weights are asked for (`pairwise_weights`). Lives in layers/ because the
ResNet (res3/res4 insertions of the paper) and the video families both insert it.
"""

from __future__ import annotations

import torch
from torch import nn

from vitlab.errors import ConfigError, shape_text
from vitlab.fx import notrace
from vitlab.layers.attention import attend

PAIRWISE = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")


class NonLocalBlock(nn.Module):
    """z = W_z y + x over all positions of a 2-D (dim=2) or space-time (dim=3) feature map.

    Shapes: x (B, C, H, W) or (B, C, T, H, W) -> z of the same shape. Inside, N = H·W (·T) query positions, M key
    positions (N, or N/4 with sub_sample), Ci = inner_chans.
    """

    def __init__(
        self,
        in_chans: int,
        *,
        pairwise: str = "embedded_gaussian",
        inner_chans: int | None = None,
        dim: int = 2,
        sub_sample: bool = False,
        attn_scale: bool = False,
        bn: bool = True,
    ) -> None:
        """pairwise: one of PAIRWISE (Sec. 3.2). inner_chans: width of θ, φ, g (default C/2, the paper's
        bottleneck). dim: 2 for images, 3 for video (T, H, W). sub_sample: 2×2 spatial max-pool on φ and g (Sec. 3.3).
        attn_scale: divide θᵀφ by sqrt(Ci) in the softmax forms (the official code's default; the paper's formula has
        none). bn: W_z followed by BatchNorm with zero scale (the paper); False zero-initialises W_z itself instead
        (both start as the identity)."""
        super().__init__()
        if pairwise not in PAIRWISE:
            raise ConfigError(f"pairwise {pairwise!r}: expected one of {', '.join(PAIRWISE)}")
        if dim not in (2, 3):
            raise ConfigError(f"dim must be 2 (images) or 3 (space-time), got {dim}")
        inner = inner_chans if inner_chans is not None else max(in_chans // 2, 1)
        if in_chans < 1 or inner < 1:
            raise ConfigError(f"in_chans and inner_chans must be >= 1, got {in_chans} and {inner}")
        self.pairwise, self.dim, self.in_chans, self.inner_chans = pairwise, dim, in_chans, inner
        self.attn_scale = attn_scale
        self.softmax = pairwise in ("gaussian", "embedded_gaussian")  # C(x) = Σ_j f; else C(x) = N
        query_chans = in_chans if pairwise == "gaussian" else inner
        self.scale = query_chans**-0.5 if attn_scale else 1.0
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        # The plain gaussian compares the input itself (Sec. 3.2): θ and φ are the identity there.
        self.theta = nn.Identity() if pairwise == "gaussian" else conv(in_chans, inner, 1)
        self.phi = nn.Identity() if pairwise == "gaussian" else conv(in_chans, inner, 1)
        self.g = conv(in_chans, inner, 1)
        # w_f of concatenation; None otherwise (TorchScript resolves the None statically)
        self.concat_project = nn.Linear(2 * inner, 1, bias=False) if pairwise == "concatenation" else None
        if sub_sample:
            self.pool = nn.MaxPool2d(2) if dim == 2 else nn.MaxPool3d((1, 2, 2))  # space only, as the official code
        else:
            self.pool = nn.Identity()
        self.w_z = conv(inner, in_chans, 1)
        if bn:
            self.norm = (nn.BatchNorm2d if dim == 2 else nn.BatchNorm3d)(in_chans)
            nn.init.zeros_(self.norm.weight)  # γ = 0: z = x at initialisation (Sec. 4.1)
        else:
            self.norm = nn.Identity()
            nn.init.zeros_(self.w_z.weight)
            nn.init.zeros_(self.w_z.bias)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """θ (B, N, Dq), φ (B, M, Dq), g (B, M, Ci); Dq = C for gaussian, Ci otherwise."""
        check_input(x, self.dim, self.in_chans)
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, Dq)
        phi = self.pool(self.phi(x)).flatten(2).transpose(1, 2)  # (B, M, Dq)
        g = self.pool(self.g(x)).flatten(2).transpose(1, 2)  # (B, M, Ci)
        return theta, phi, g

    def _f(self, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """f(x_i, x_j) (B, N, M) of dot_product and concatenation."""
        if self.concat_project is not None:
            w = self.concat_project.weight[0]  # (2 Ci,): w_fᵀ [θ_i, φ_j] = w_θᵀ θ_i + w_φᵀ φ_j, no (N, M, 2Ci) tensor
            ci = self.inner_chans
            return torch.relu((theta @ w[:ci]).unsqueeze(2) + (phi @ w[ci:]).unsqueeze(1))
        return theta @ phi.transpose(1, 2)

    @torch.jit.ignore
    def pairwise_weights(self, x: torch.Tensor) -> torch.Tensor:
        """f(x_i, x_j) / C(x) for every query i and key j: (B, N, M); rows sum to 1 for the softmax forms."""
        theta, phi, _ = self._embed(x)
        if self.softmax:
            return (theta @ phi.transpose(1, 2) * self.scale).softmax(dim=-1)
        return self._f(theta, phi) / phi.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta, phi, g = self._embed(x)  # (B, N, Dq), (B, M, Dq), (B, M, Ci)
        if self.softmax:
            y, _ = attend(theta.unsqueeze(1), phi.unsqueeze(1), g.unsqueeze(1), scale=self.scale)
            y = y.squeeze(1)  # (B, N, Ci)
        else:
            y = (self._f(theta, phi) / phi.shape[1]) @ g  # (B, N, M) @ (B, M, Ci)
        y = y.transpose(1, 2).unflatten(2, x.shape[2:])  # (B, Ci, [T,] H, W)
        return self.norm(self.w_z(y)) + x


@notrace  # a check on sizes: one opaque call in a traced graph
def check_input(x: torch.Tensor, dim: int, in_chans: int) -> None:
    if x.ndim != dim + 2 or x.shape[1] != in_chans:
        layout = "(B, C, H, W)" if dim == 2 else "(B, C, T, H, W)"
        raise ConfigError(f"NonLocalBlock(dim={dim}, in_chans={in_chans}) expects {layout} with C = {in_chans}, "
                          f"got {shape_text(x)}")  # fmt: skip
