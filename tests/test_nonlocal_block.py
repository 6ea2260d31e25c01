"""The non-local block (vitlab.layers.nonlocal_block): identity at init, each f against explicit loops, attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.errors import ConfigError
from vitlab.layers.nonlocal_block import PAIRWISE, NonLocalBlock

SHAPES = {2: (2, 6, 4, 6), 3: (2, 6, 2, 4, 4)}  # (B, C, H, W) and (B, C, T, H, W)


def _perturbed(block: NonLocalBlock) -> NonLocalBlock:
    """Every weight random, BN's scale and running statistics included, so that every weight matters."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if isinstance(block.norm, torch.nn.modules.batchnorm._BatchNorm):
            block.norm.running_mean.copy_(torch.randn(block.in_chans, generator=g))
            block.norm.running_var.copy_(torch.rand(block.in_chans, generator=g) + 0.5)
    return block.eval()


def _conv(conv, x_pos: torch.Tensor) -> torch.Tensor:
    """A 1×1(×1) conv applied to one position's channel vector."""
    return conv.weight.flatten(1) @ x_pos + conv.bias


def loop_non_local(block: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """Sec. 3.2 position by position: y_i = (1/C(x)) Σ_j f(x_i, x_j) g(x_j), z_i = BN(W_z y_i) + x_i (eval mode)."""
    B, C = x.shape[:2]
    spatial = x.shape[2:]
    pooled = block.pool(x) if block.pairwise == "gaussian" else None
    out = torch.empty_like(x)
    for b in range(B):
        xs = x[b].flatten(1).T  # (N, C): the positions i
        theta = [xi if block.pairwise == "gaussian" else _conv(block.theta, xi) for xi in xs]
        # φ and g: the 1×1 conv first, then the max-pool (identity without sub_sample), as the block does
        g_map = block.pool(block.g(x[b : b + 1]))[0].flatten(1).T
        if block.pairwise == "gaussian":
            phi_map = pooled[b].flatten(1).T
        else:
            phi_map = block.pool(block.phi(x[b : b + 1]))[0].flatten(1).T
        M = phi_map.shape[0]
        ci = block.inner_chans
        for i, ti in enumerate(theta):
            fs = []
            for j in range(M):
                pj = phi_map[j]
                dot = float(ti @ pj) * (ti.numel() ** -0.5 if block.attn_scale else 1.0)
                if block.pairwise in ("gaussian", "embedded_gaussian"):
                    fs.append(math.exp(dot))
                elif block.pairwise == "dot_product":
                    fs.append(float(ti @ pj))
                else:
                    w = block.concat_project.weight[0]
                    fs.append(max(float(w[:ci] @ ti + w[ci:] @ pj), 0.0))
            norm = sum(fs) if block.pairwise in ("gaussian", "embedded_gaussian") else M
            y = sum(f * g_map[j] for j, f in enumerate(fs)) / norm
            zi = _conv(block.w_z, y)
            bn = block.norm
            zi = (zi - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
            out[b].view(C, -1)[:, i] = zi + xs[i]
    return out.reshape(B, C, *spatial)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("pairwise", PAIRWISE)
@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("bn", [True, False])
def test_starts_as_the_identity_exactly(dim, pairwise, sub_sample, bn):
    block = NonLocalBlock(6, pairwise=pairwise, dim=dim, sub_sample=sub_sample, bn=bn)
    x = torch.randn(SHAPES[dim])
    for mode in (block.train, block.eval):
        mode()
        assert torch.equal(block(x), x)
    # ... and learns: the loss reaches BN's scale (or W_z) through the zero, so training can move it.
    block.train()
    block(x).square().sum().backward()
    first = block.norm.weight if bn else block.w_z.weight
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("pairwise", PAIRWISE)
@pytest.mark.parametrize(("sub_sample", "attn_scale"), [(False, False), (True, False), (False, True)])
def test_each_pairwise_function_equals_the_loop(dim, pairwise, sub_sample, attn_scale):
    torch.manual_seed(0)
    block = _perturbed(NonLocalBlock(6, pairwise=pairwise, dim=dim, sub_sample=sub_sample, attn_scale=attn_scale))
    x = torch.randn(SHAPES[dim]) * 0.5
    with torch.no_grad():
        got, want = block(x), loop_non_local(block, x)
    assert not torch.allclose(got, x, atol=1e-3)  # the perturbed block does something
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_embedded_gaussian_is_softmax_attention():
    block = _perturbed(NonLocalBlock(8, pairwise="embedded_gaussian"))
    x = torch.randn(2, 8, 5, 3)
    with torch.no_grad():
        theta = block.theta(x).flatten(2).transpose(1, 2)  # (B, N, Ci)
        phi = block.phi(x).flatten(2).transpose(1, 2)
        g = block.g(x).flatten(2).transpose(1, 2)
        y = F.scaled_dot_product_attention(theta, phi, g, scale=1.0)  # softmax(θ φᵀ) g: the paper's f, no 1/sqrt(d)
        want = block.norm(block.w_z(y.transpose(1, 2).reshape(2, 4, 5, 3))) + x
        torch.testing.assert_close(block(x), want, rtol=1e-5, atol=1e-5)
        weights = block.pairwise_weights(x)
        torch.testing.assert_close(weights, (theta @ phi.transpose(1, 2)).softmax(-1))
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 15))
        scaled = NonLocalBlock(8, pairwise="embedded_gaussian", attn_scale=True).eval()
        scaled.load_state_dict(block.state_dict())
        y = F.scaled_dot_product_attention(theta, phi, g)  # the official code's default: SDPA's own 1/sqrt(Ci)
        want = block.norm(block.w_z(y.transpose(1, 2).reshape(2, 4, 5, 3))) + x
        torch.testing.assert_close(scaled(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("pairwise", PAIRWISE)
def test_torchscript_and_fx_equal_eager(dim, pairwise):
    from vitlab.fx import symbolic_trace

    block = _perturbed(NonLocalBlock(6, pairwise=pairwise, dim=dim, sub_sample=True, attn_scale=True))
    x = torch.randn(SHAPES[dim])
    with torch.no_grad():
        want = block(x)
        torch.testing.assert_close(torch.jit.script(block)(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(symbolic_trace(block)(x), want, rtol=1e-5, atol=1e-5)


def test_space_time_block_on_video():
    block = NonLocalBlock(8, pairwise="embedded_gaussian", dim=3, sub_sample=True)
    assert isinstance(block.g, torch.nn.Conv3d) and block.g.kernel_size == (1, 1, 1) and block.inner_chans == 4
    x = torch.randn(2, 8, 4, 6, 6)  # (B, C, T, H, W)
    assert block(x).shape == x.shape
    # Sub-sampling pools space, not time: 4 frames x 3 x 3 keys for 4 x 6 x 6 queries, every frame attends every frame.
    assert block.pairwise_weights(x).shape == (2, 4 * 6 * 6, 4 * 3 * 3)
    with pytest.raises(ConfigError, match=r"expects \(B, C, T, H, W\) with C = 8, got \(2, 8, 6, 6\)"):
        block(torch.randn(2, 8, 6, 6))


def test_dot_product_and_concatenation_divide_by_n():
    for pairwise in ("dot_product", "concatenation"):
        block = _perturbed(NonLocalBlock(4, pairwise=pairwise, sub_sample=True))
        x = torch.randn(1, 4, 4, 4)
        theta = block.theta(x).flatten(2).transpose(1, 2)
        phi = block.pool(block.phi(x)).flatten(2).transpose(1, 2)  # M = 4 keys
        w = block.pairwise_weights(x)
        if pairwise == "dot_product":
            torch.testing.assert_close(w, theta @ phi.transpose(1, 2) / 4)
        else:
            assert (w >= 0).all()  # ReLU


def test_bad_configs_name_the_argument():
    with pytest.raises(ConfigError, match="pairwise 'cosine': expected one of gaussian, embedded_gaussian"):
        NonLocalBlock(4, pairwise="cosine")
    with pytest.raises(ConfigError, match="dim must be 2"):
        NonLocalBlock(4, dim=1)
    assert NonLocalBlock(64).inner_chans == 32 and NonLocalBlock(64, inner_chans=16).inner_chans == 16


@pytest.mark.parametrize("chans", [1, 3])
def test_nl_means_is_a_non_local_operation(chans):
    """NL-means (Buades et al.) as the non-local operation y_i = Σ_j f(x_i, x_j) g(x_j) / Σ_j f(x_i, x_j) with
    x_i the patch around pixel i, f = exp(−‖x_i − x_j‖² / h²) and g the identity on the centre pixel, j over the
    search window. Since ‖x_i‖² is the same for every j, it cancels in the normalisation: f ∝ exp(θ_i·φ_j + b_j) with
    θ_i = 2x_i/h², φ_j = x_j and b_j = −‖x_j‖²/h², i.e. softmax attention (the embedded gaussian of the non-local
    block) with a key bias and the window as mask. Both computations give the same image."""
    from vitlab.classic import nl_means
    from vitlab.classic.nlmeans import reflect_pad
    from vitlab.layers import attend

    H, W, k, d, h = 7, 6, 3, 2, 0.3
    z = torch.rand(1, chans, H, W, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = k // 2
    zp = reflect_pad(z, r + d)  # candidates j: every pixel within d of the image, padding included
    Hj, Wj = H + 2 * d, W + 2 * d
    patches = F.unfold(zp, k).transpose(1, 2)  # (1, Hj·Wj, C·k²): x_j, row-major over the grown grid
    rows, cols = torch.meshgrid(torch.arange(Hj), torch.arange(Wj), indexing="ij")
    inside = ((rows >= d) & (rows < d + H) & (cols >= d) & (cols < d + W)).flatten()
    queries = patches[:, inside]  # (1, H·W, C·k²): x_i
    scale = 1.0 / (k * k * chans * h * h)  # nl_means' f is a mean over the patch's k²·C values
    qr, qc = rows.flatten()[inside], cols.flatten()[inside]
    window = ((qr[:, None] - rows.flatten()[None]).abs() <= d) & ((qc[:, None] - cols.flatten()[None]).abs() <= d)
    bias = -scale * patches.square().sum(-1)[:, None, :] + torch.where(window, 0.0, -math.inf)  # (1, H·W, Hj·Wj)
    values = zp[:, :, r : r + Hj, r : r + Wj].flatten(2).transpose(1, 2)  # g(x_j): the centre pixels (1, Hj·Wj, C)
    y, _ = attend(queries[:, None], patches[:, None], values[:, None], bias=bias[:, None], scale=2 * scale)
    got = y[0, 0].T.reshape(1, chans, H, W)
    torch.testing.assert_close(got, nl_means(z, h=h, patch_size=k, search_window=2 * d + 1).double(), atol=1e-5, rtol=0)


# resnet50_nonlocal (vitlab.models.nonlocal_net)


def test_resnet50_nonlocal_has_five_blocks_in_res3_and_res4():
    import vitlab

    with torch.device("meta"):
        m = vitlab.create_model("resnet50_nonlocal")
        plain = vitlab.create_model("resnet50")
    names = [n for n, mod in m.named_modules() if isinstance(mod, NonLocalBlock)]
    # Sec. 4.1: 2 in res3 (layer2, 4 blocks) and 3 in res4 (layer3, 6 blocks), after every other residual block.
    assert names == [f"layer{s}.{i}.nonlocal_block" for s, i in ((2, 1), (2, 3), (3, 1), (3, 3), (3, 5))]
    # Each block: θ, φ, g (C -> C/2, with bias), W_z (C/2 -> C, with bias) and BN (2C): C = 512 in res3, 1024 in res4.
    per_block = {c: 3 * (c * c // 2 + c // 2) + (c // 2 * c + c) + 2 * c for c in (512, 1024)}
    assert per_block == {512: 526_592, 1024: 2_101_760}
    count = sum(p.numel() for p in m.parameters())
    assert count == 25_557_032 + 2 * per_block[512] + 3 * per_block[1024] == 32_915_496
    assert count - sum(p.numel() for p in plain.parameters()) == 7_358_464


def test_resnet50_nonlocal_starts_as_its_resnet():
    """Every ResNet weight keeps its name, so a ResNet checkpoint fills them; the non-local blocks start as the
    identity, so the network then computes exactly what the ResNet computes (the paper's initialisation)."""
    import vitlab

    small = dict(layers=(1, 2, 2, 1), img_size=64, num_classes=5)
    plain = vitlab.create_model("resnet50", **small).eval()
    torch.nn.init.normal_(plain.layer3[1].bn3.weight)  # not the zero-init residual: the blocks do something
    m = vitlab.create_model("resnet50_nonlocal", **small).eval()
    result = m.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys and all(".nonlocal_block." in k for k in result.missing_keys)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), plain(x))
    with pytest.raises(ValueError, match="bottleneck"):
        vitlab.create_model("resnet50_nonlocal", block="basic")
