"""Self-attention inside CNNs: stand-alone local self-attention (SASA) and attention-augmented convolution (AA),
checked against loops written from the papers' equations on tiny inputs, the ResNet variants built on them, and
their attention maps through the capture every attention model uses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vitlab
from tests.conftest import randomise_weights
from vitlab.errors import ConfigError
from vitlab.explain import attention_layers, attention_maps, grid_attention
from vitlab.layers import AugmentedConv2d, LocalSelfAttention

# ----- SASA ---------------------------------------------------------------------------------------------------------


def _qkv(layer, x):
    """q, k, v (B, Hh, Dh, H, W) straight from the layer's 1x1 projection."""
    B, _, H, W = x.shape
    q, k, v = layer.to_qkv(x).chunk(3, dim=1)
    return [t.reshape(B, layer.num_heads, layer.head_dim, H, W) for t in (q, k, v)]


def sasa_by_loops(layer: LocalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3 of Ramachandran et al. one pixel at a time: softmax over the in-image neighbours (a, b) of
    q_ijᵀ k_ab + q_ij[:Dh/2]ᵀ r_row[a-i] + q_ij[Dh/2:]ᵀ r_col[b-j], the logits scaled by Dh^-1/2."""
    q, k, v = _qkv(layer, x)
    B, Hh, Dh, H, W = q.shape
    half, r = layer.row_dim, layer.kernel_size // 2
    out = torch.zeros(B, Hh, Dh, H, W)
    for i in range(H):
        for j in range(W):
            logits, values = [], []
            for a in range(i - r, i + r + 1):
                for b in range(j - r, j + r + 1):
                    if not (0 <= a < H and 0 <= b < W):
                        continue
                    qq = q[:, :, :, i, j] * layer.scale  # (B, Hh, Dh)
                    rel = (qq[..., :half] * layer.rel_row[a - i + r]).sum(-1)
                    rel = rel + (qq[..., half:] * layer.rel_col[b - j + r]).sum(-1)
                    logits.append((qq * k[:, :, :, a, b]).sum(-1) + rel)  # (B, Hh)
                    values.append(v[:, :, :, a, b])
            p = torch.stack(logits, -1).softmax(-1)  # (B, Hh, n)
            out[:, :, :, i, j] = (torch.stack(values, -1) * p[:, :, None]).sum(-1)
    return out.reshape(B, Hh * Dh, H, W)


# N <= 4K takes the masked (N, N) product, larger maps the unfolded windows: both must be eq. 3
SIZES = [pytest.param(4, 5, id="masked-dense"), pytest.param(7, 8, id="unfolded-windows")]


@torch.no_grad()
@pytest.mark.parametrize(("H", "W"), SIZES)
def test_sasa_equals_its_equation_by_loops(H, W):
    layer = LocalSelfAttention(3, 8, kernel_size=3, num_heads=2)
    x = torch.randn(2, 3, H, W)
    torch.testing.assert_close(layer(x), sasa_by_loops(layer, x), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_sasa_window_covering_the_image_without_positions_is_global_attention():
    layer = LocalSelfAttention(4, 8, kernel_size=9, num_heads=2)  # 9 = 2 * 5 - 1: every pixel sees all of 5x4
    layer.rel_row.zero_()
    layer.rel_col.zero_()
    x = torch.randn(2, 4, 5, 4)
    q, k, v = (t.flatten(3).transpose(2, 3) for t in _qkv(layer, x))  # (B, Hh, N, Dh)
    want = F.scaled_dot_product_attention(q, k, v)  # (B, Hh, N, Dh), softmax(q kᵀ / sqrt(Dh)) v
    torch.testing.assert_close(layer(x), want.transpose(2, 3).reshape(2, 8, 5, 4), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_sasa_is_translation_equivariant():
    layer = LocalSelfAttention(3, 8, kernel_size=3, num_heads=2)
    x = torch.randn(1, 3, 12, 12)
    dy, dx, r = 2, 3, 1
    shifted = torch.roll(x, (dy, dx), dims=(2, 3))
    y, ys = layer(x), layer(shifted)
    # positions whose windows hold the same pixels in both (none wrapped around, none outside the image)
    inner = y[:, :, r : 12 - dy - r, r : 12 - dx - r]
    torch.testing.assert_close(ys[:, :, r + dy : 12 - r, r + dx : 12 - r], inner, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ys, y)  # not trivially the same map


def test_sasa_shapes_stride_and_errors():
    layer = LocalSelfAttention(3, 16, kernel_size=5, num_heads=4, stride=2)
    assert layer(torch.randn(2, 3, 5, 7)).shape == (2, 16, 3, 4)  # 2x2 average pool after attention, ceil mode
    assert LocalSelfAttention(3, 16, 7, 4)(torch.randn(1, 3, 2, 9)).shape == (1, 16, 2, 9)  # window > map
    with pytest.raises(ConfigError, match="kernel_size must be odd"):
        LocalSelfAttention(3, 16, kernel_size=4)
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        LocalSelfAttention(3, 10, num_heads=4)


@torch.no_grad()
@pytest.mark.parametrize(("H", "W"), SIZES)
def test_sasa_captured_probabilities_sit_on_the_full_grid(H, W):
    layer = LocalSelfAttention(3, 8, kernel_size=3, num_heads=2).eval()
    x = torch.randn(2, 3, H, W)
    want = layer(x)
    layer.capture_attn = True
    y = layer(x)
    torch.testing.assert_close(y, want)  # capturing changes nothing
    N = H * W
    p = layer.attn_probs  # (B, Hh, N, N)
    assert p.shape == (2, 2, N, N)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, N))
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], 1)
    far = (pos[:, None] - pos[None]).abs().amax(-1) > 1  # (N, N): outside the 3x3 window
    assert (p[:, :, far] == 0).all() and (p[:, :, ~far] > 0).all()
    # the values weighted by the captured map give the output (the map is the one the layer used)
    v = _qkv(layer, x)[2].flatten(3)  # (B, Hh, Dh, N)
    torch.testing.assert_close(torch.einsum("bhnm,bhdm->bhdn", p, v).reshape(2, 8, H, W), y, atol=1e-5, rtol=1e-5)


# ----- AA-conv ------------------------------------------------------------------------------------------------------


def test_aa_relative_logits_by_loops():
    layer = AugmentedConv2d(3, 16, key_dim=8, value_dim=4, num_heads=2, map_size=3)
    q = torch.randn(1, 2, 2, 3, 4)  # (B, Nh, H, W, dkh)
    got = layer.relative_logits(q)  # (B, Nh, N, N)
    m = layer.map_size - 1
    for i in range(6):
        yi, xi = divmod(i, 3)
        for j in range(6):
            yj, xj = divmod(j, 3)
            r = layer.rel_width[xj - xi + m] + layer.rel_height[yj - yi + m]  # (dkh,)
            torch.testing.assert_close(got[0, :, i, j], q[0, :, yi, xi] @ r)


@torch.no_grad()
def test_aa_is_conv_channels_then_relative_attention_channels():
    layer = AugmentedConv2d(3, 16, key_dim=8, value_dim=4, num_heads=2, map_size=4).eval()
    x = torch.randn(2, 3, 4, 3)
    y = layer(x)
    assert y.shape == (2, 16, 4, 3)
    torch.testing.assert_close(y[:, :12], layer.conv(x))  # F_out - d_v conv channels first
    q, k, v = layer.to_qkv(x).split([8, 8, 4], dim=1)
    q, k, v = (t.reshape(2, 2, -1, 12).transpose(2, 3) for t in (q, k, v))  # (B, Nh, N, d)
    qs = q * 4**-0.5
    logits = qs @ k.transpose(2, 3) + layer.relative_logits(qs.reshape(2, 2, 4, 3, 4))  # eq. of Sec. 3.2
    heads = (logits.softmax(-1) @ v).transpose(2, 3).reshape(2, 4, 4, 3)  # (B, dv, H, W)
    torch.testing.assert_close(y[:, 12:], layer.proj(heads), atol=1e-5, rtol=1e-5)
    layer.capture_attn = True
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)  # explicit softmax = SDPA path
    torch.testing.assert_close(layer.attn_probs, logits.softmax(-1), atol=1e-5, rtol=1e-5)


def test_aa_stride_clipping_and_errors():
    layer = AugmentedConv2d(3, 16, stride=2, key_dim=8, value_dim=4, num_heads=2, map_size=2)
    assert layer(torch.randn(1, 3, 7, 5)).shape == (1, 16, 4, 3)  # attention on the 2x2-pooled map
    assert layer(torch.randn(1, 3, 12, 12)).shape == (1, 16, 6, 6)  # maps past map_size: offsets clipped
    with pytest.raises(ConfigError, match="key_dim=6 must be a positive multiple of num_heads=4"):
        AugmentedConv2d(3, 16, key_dim=6, num_heads=4)
    with pytest.raises(ConfigError, match="value_dim=16 leaves no conv channel"):
        AugmentedConv2d(3, 16, key_dim=8, value_dim=16, num_heads=4)


# ----- the ResNet variants ------------------------------------------------------------------------------------------


def test_parameter_counts():
    counts = {}
    for name in ("resnet50", "resnet50_sasa", "resnet50_aa", "resnet18_sasa", "resnet18_aa"):
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in vitlab.create_model(name).parameters())
    # Ramachandran et al., Table 1: the conv-stem + attention ResNet-50 has 18.0M parameters (ResNet-50: 25.6M)
    assert counts["resnet50"] == 25_557_032 and counts["resnet50_sasa"] == 18_015_504
    assert counts["resnet50_aa"] == 24_958_458
    assert (counts["resnet18_sasa"], counts["resnet18_aa"]) == (4_369_224, 11_126_392)


def test_variants_swap_only_the_spatial_convs():
    sasa = vitlab.create_model("resnet50_sasa", layers=(1, 1, 1, 1), img_size=64)
    aa = vitlab.create_model("resnet18_aa", img_size=64)
    assert isinstance(sasa.layer1[0].conv2, LocalSelfAttention) and isinstance(sasa.layer1[0].conv1, torch.nn.Conv2d)
    assert isinstance(aa.layer1[0].conv1, torch.nn.Conv2d)  # stage 1 stays convolutional
    assert isinstance(aa.layer2[0].conv1, AugmentedConv2d) and aa.layer2[0].conv1.stride == 2
    assert [aa.layer2[0].conv1.map_size, aa.layer4[1].conv2.map_size] == [8, 2]  # 64 px: stage maps 16, 8, 4, 2
    assert (aa.layer3[0].conv1.key_dim, aa.layer3[0].conv1.value_dim) == (56, 32)  # 0.2 and 0.1 of 256, to 8s
    assert aa.layer2[0].bn2.weight.abs().sum() == 0  # each residual branch still starts at zero


@pytest.mark.parametrize(("name", "layers"), [("resnet18_sasa", 16), ("resnet18_aa", 12)])
def test_attention_maps_through_the_shared_capture(name, layers):
    model = randomise_weights(vitlab.create_model(name, img_size=32, in_chans=1, num_classes=10))
    assert len(attention_layers(model)) == layers
    x = torch.randn(2, 1, 32, 32)
    maps = attention_maps(model, x, layers=[0, -1])
    first = maps[0]
    n = 64 if name.endswith("sasa") else 16  # SASA from layer1 (8x8 map), AA from layer2 (4x4)
    assert first.shape == (2, 8, n, n)
    torch.testing.assert_close(first.sum(-1), torch.ones(2, 8, n))
    grid = grid_attention(model, x, layers=[0])[0]  # placed on the image as for a ViT without class token
    assert grid.q_prefix == 0 and grid.q_grid == (int(n**0.5),) * 2 and grid.q_stride == 32 / n**0.5
    assert all(not a.capture_attn and a.attn_probs is None for a in attention_layers(model))  # restored


def test_cli_attention_and_models_table(tmp_path, capsys):
    from PIL import Image

    from vitlab.cli.main import main

    model = vitlab.create_model("resnet18_sasa", img_size=32, in_chans=1, num_classes=10)
    vitlab.save_checkpoint(model, tmp_path / "m.safetensors")
    Image.fromarray((torch.rand(32, 32) * 255).byte().numpy()).save(tmp_path / "x.png")
    out = tmp_path / "att"
    args = ["explain", "attention", "--checkpoint", str(tmp_path / "m.safetensors"), str(tmp_path / "x.png")]
    assert main([*args, "--layers", "0,-1", "--out", str(out)]) == 0
    assert (out / "attention.png").stat().st_size > 0 and "mean over patch queries" in capsys.readouterr().out
    assert main(["models", "resnet18_sasa", "--img-size", "32"]) == 0
    table = capsys.readouterr().out
    assert "resnet18_sasa" in table and "4,369,224" in table


def test_receptive_fields_count_the_attention_window():
    from vitlab.explain.receptive import measured_extent, receptive_fields

    sasa = vitlab.create_model("resnet18_sasa", layers=(1, 1, 1, 1), img_size=32)
    fields = {f.name: f for f in receptive_fields(sasa)}
    # maxpool leaves 11 px at jump 4; each 7x7 window adds 6 * 4; a strided layer pools 2x2 after its window
    assert [fields[n].size for n in ("maxpool", "layer1.0.conv1", "layer1.0.conv2")] == [11, 35, 59]
    assert (fields["layer2.0.conv1"].size, fields["layer2.0.conv1.pool"].size) == (83, 87)
    assert fields["layer2.0.conv1.pool"].jump == 8
    assert measured_extent(sasa, "layer1.0.conv1", 45) == (35, 35)
    aa = vitlab.create_model("resnet18_aa", layers=(1, 1, 1, 1), img_size=32)
    aa_fields = {f.name: f for f in receptive_fields(aa)}
    assert aa_fields["layer2.0.conv1.conv"].size == 11 + 3 * 8  # three 3x3 convs at jump 4: the conv half is local
    assert math.isinf(aa_fields["layer2.0.conv2.conv"].size)  # after the global attention beside it, all is global
