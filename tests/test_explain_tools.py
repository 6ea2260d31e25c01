"""`vitlab explain attention ...` and the functions behind it: attention placed on the image grid (ViT, DeiT, CPVT,
Swin, CvT), with hand-checked geometry and the CLI run end to end on micro models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from vitlab.cli.main import main
from vitlab.explain import GridAttention, attention_maps, grid_attention
from vitlab.explain.distance import attention_distances, mean_attention_distance
from vitlab.explain.embeddings import (
    patch_embedding_components,
    position_similarity,
    principal_components,
    similarity_by_distance,
)
from vitlab.explain.gradcam import cam_layer, grad_cam

# ----- attention on the token grid ----------------------------------------------------------------------------------


def test_query_map_by_hand():
    # 1 image, 1 head, [cls] + a 1x2 grid: rows are the queries cls, t0, t1
    probs = torch.tensor([[[[0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.4, 0.4, 0.2]]]])
    g = GridAttention(probs, q_prefix=1, k_prefix=1, q_grid=(1, 2), k_grid=(1, 2), q_stride=16.0, k_stride=16.0)
    torch.testing.assert_close(g.query_map(), torch.tensor([[[[0.5, 0.3]]]]))  # the class token's row
    torch.testing.assert_close(g.query_map("mean"), torch.tensor([[[[0.5, 0.25]]]]))  # mean of rows t0, t1
    torch.testing.assert_close(g.grid_probs(), torch.tensor([[[[6 / 9, 3 / 9], [4 / 6, 2 / 6]]]]))
    q, k = g.centres()
    assert q.tolist() == [[0, 0], [0, 16]] and k.tolist() == q.tolist()
    with pytest.raises(ValueError, match=r"1 prefix token\(s\), so a query is an index in \[0, 0\]"):
        g.query_map(1)


# name: [(query prefix, query grid, key grid, query stride, key stride)] of layers 0 and -1, by hand from the configs
GEOMETRY = {
    "vit_micro_patch2_8": [(1, (4, 4), (4, 4), 2, 2)] * 2,  # 8 px / patch 2
    "deit_micro_distilled_patch4_8": [(2, (2, 2), (2, 2), 4, 4)] * 2,  # [cls, dist] first
    "cpvt_micro_patch4_8": [(0, (2, 2), (2, 2), 4, 4)] * 2,
    # stage 0: 8x8 tokens of 4 px; stage 2: 2x2 tokens of 16 px (two patch mergings)
    "swin_micro_patch4_window4_32": [(0, (8, 8), (8, 8), 4, 4), (0, (2, 2), (2, 2), 16, 16)],
    # keys on the query map subsampled by 2; the class token in the last stage only
    "cvt_micro_32": [(0, (16, 16), (8, 8), 2, 4), (1, (4, 4), (2, 2), 8, 16)],
}


@pytest.mark.parametrize("name", sorted(GEOMETRY))
def test_grid_geometry_of_each_family(name):
    m = vitlab.create_model(name).eval()
    x = torch.randn(2, m.cfg.in_chans, m.cfg.img_size, m.cfg.img_size)
    found = grid_attention(m, x, [0, -1])
    assert len(found) == 2
    for g, (prefix, q_grid, k_grid, qs, ks) in zip(found.values(), GEOMETRY[name], strict=True):
        assert (g.q_prefix, g.q_grid, g.k_grid, g.q_stride, g.k_stride) == (prefix, q_grid, k_grid, qs, ks)
        amap = g.query_map()
        assert amap.shape == (2, g.num_heads, *k_grid) and (amap >= 0).all()
        torch.testing.assert_close(g.grid_probs().sum(-1), torch.ones(g.grid_probs().shape[:-1]))


def test_class_token_map_is_the_cls_row_over_patches():
    m = vitlab.create_model("deit_micro_distilled_patch4_8").eval()
    x = torch.randn(1, 1, 8, 8)
    raw = attention_maps(m, x, [2])[2]  # (1, H, 6, 6): [cls, dist] + 2x2
    g = grid_attention(m, x, [2])[2]
    torch.testing.assert_close(g.query_map(), raw[:, :, 0, 2:].reshape(1, -1, 2, 2))
    torch.testing.assert_close(g.query_map(1), raw[:, :, 1, 2:].reshape(1, -1, 2, 2))  # the distillation token


@pytest.mark.parametrize("name", ["vit_micro_patch2_8", "swin_micro_patch4_window4_32"])
def test_uncaptured_layers_stay_on_sdpa(name, monkeypatch):
    m = vitlab.create_model(name).eval()
    x = torch.randn(1, m.cfg.in_chans, m.cfg.img_size, m.cfg.img_size)
    calls = [0]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls[0] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    grid_attention(m, x, [1])
    assert calls[0] == len(m.attention_layers()) - 1


# ----- the CLI ------------------------------------------------------------------------------------------------------


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray((np.random.RandomState(0).rand(40, 48, 3) * 255).astype("uint8")).save(path)
    return str(path)


def test_cli_attention_with_heads_and_rollout(tmp_path, image, capsys):
    out = tmp_path / "a"
    args = ["explain", "attention", "--model", "vit_micro_patch2_8", image, "--out", str(out)]
    assert main(args + ["--layers", "0,-1", "--heads", "--rollout"]) == 0
    result = json.loads((out / "attention.json").read_text())
    assert sorted(result["layers"]) == ["0", "3"] and result["img_size"] == 8
    layer = result["layers"]["3"]
    assert layer["query"] == "class token" and layer["key_grid"] == [4, 4] and len(layer["heads"]) == 4
    heads = np.array(layer["heads"])  # (H, 4, 4): the class token's weights on the 16 patches, < 1 with its own
    np.testing.assert_allclose(heads.mean(0), layer["mean_over_heads"], atol=1e-4)
    assert ((heads > 0) & (heads.sum((1, 2)) < 1)[:, None, None]).all()
    assert np.array(result["rollout"]["map"]).shape == (4, 4)
    for f in ("attention.png", "rollout.png"):
        assert (out / f).stat().st_size > 0
    assert "layer   3: class token on a 4x4 grid" in capsys.readouterr().out
    assert main(args + ["--layers", "1", "--query", "mean"]) == 0  # again into the same directory: files replaced
    result = json.loads((out / "attention.json").read_text())
    assert list(result["layers"]) == ["1"] and result["layers"]["1"]["query"] == "mean over patch queries"
    assert "rollout" not in result and not (out / "rollout.png").exists()


@pytest.mark.parametrize("name", ["swin_micro_patch4_window4_32", "cvt_micro_32", "cpvt_micro_patch4_8"])
def test_cli_attention_on_each_family(tmp_path, image, name):
    assert main(["explain", "attention", "--model", name, image, "--out", str(tmp_path / "o"), "--layers", "-1"]) == 0
    layer = json.loads((tmp_path / "o" / "attention.json").read_text())["layers"]
    assert list(layer) == [str(len(vitlab.create_model(name).attention_layers()) - 1)]


@pytest.mark.parametrize(
    "name, extra, error",
    [
        ("resnet18", [], r"resnet18 has no attention layers.*try `vitlab explain gradcam --model resnet18"),
        ("swin_micro_patch4_window4_32", ["--rollout"], r"--rollout: .* rollout is undefined; drop --rollout"),
        ("cvt_micro_32", ["--rollout"], r"--rollout: .*different token grids"),
        ("vit_micro_patch2_8", ["--layers", "0,x"], r"--layers takes comma-separated integers"),
        ("vit_micro_patch2_8", ["--layers", "4"], r"--layers: .*out of range"),
        ("vit_micro_patch2_8", ["--query", "dist"], r"--query dist: .* has no distillation token"),
        ("cvt_micro_32", ["--query", "cls"], r"--query cls: .* no class token in attention layer\(s\) \[0, 1\]"),
    ],
)
def test_cli_attention_refusals_are_one_line(tmp_path, image, capsys, name, extra, error):
    import re

    assert main(["explain", "attention", "--model", name, image, "--out", str(tmp_path / "o")] + extra) == 2
    err = capsys.readouterr().err
    assert re.search(error, err) and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_cli_attention_refuses_a_missing_image(tmp_path, capsys):
    args = ["explain", "attention", "--model", "vit_micro_patch2_8", str(tmp_path / "nope.png")]
    assert main(args + ["--out", str(tmp_path / "o")]) == 2
    assert "nope.png" in capsys.readouterr().err


# ----- position embedding similarity and patch-embedding components (ViT Fig. 7) ------------------------------------


def test_position_similarity_by_hand_leaves_out_the_prefix_tokens():
    m = vitlab.create_model("deit_micro_distilled_patch4_8")  # [cls, dist] + 2x2 patches
    rows = torch.zeros(6, 64)
    rows[:2] = 100.0  # the prefix tokens' positions: must not enter
    rows[2, 0], rows[3, 1], rows[4, :2], rows[5, 0] = 1.0, 2.0, 3.0, -1.0  # e0, 2 e1, 3 (e0 + e1), -e0
    with torch.no_grad():
        m.pos_embed.copy_(rows[None])
    sim = position_similarity(m)
    h = 0.5**0.5
    expected = torch.tensor([[1, 0, h, -1], [0, 1, h, 0], [h, h, 1, -h], [-1, 0, -h, 1]])
    torch.testing.assert_close(sim, expected.view(2, 2, 2, 2))
    by_distance = similarity_by_distance(sim)  # grid distance 1: pairs (0,1), (0,2), (1,3), (2,3) both ways
    assert sorted(by_distance) == [0.0, 1.0, 1.414]
    assert by_distance[1.0] == pytest.approx((0 + h + 0 - h) / 4) and by_distance[1.414] == pytest.approx((-1 + h) / 2)


@pytest.mark.parametrize(
    "name, why",
    [
        ("cpvt_micro_patch4_8", "CPVT has no absolute position table"),
        ("swin_micro_patch4_window4_32", "relative position bias inside each window"),
        ("resnet18", "ResNet has no absolute position table"),
    ],
)
def test_position_similarity_refuses_models_without_a_learned_table(name, why):
    with pytest.raises(ValueError, match=why):
        position_similarity(vitlab.create_model(name))


def test_position_similarity_refuses_a_fixed_sincos_table():
    m = vitlab.create_model("vit_micro_patch4_8", pos_embed="sincos")
    with pytest.raises(ValueError, match="fixed sin-cos position table, not a learned one"):
        position_similarity(m)


def test_principal_components_by_hand():
    # 4 filters of 1x2x2 = 3 (e0) + coefficients (2, -2, 1, -1) on u and (1, 1, -1, -1) on v, u and v orthonormal
    u = torch.tensor([1.0, 1.0, 0.0, 0.0]) / 2**0.5
    v = torch.tensor([0.0, 0.0, 1.0, -2.0]) / 5**0.5
    a, b = torch.tensor([2.0, -2.0, 1.0, -1.0]), torch.tensor([1.0, 1.0, -1.0, -1.0])
    filters = (3 * torch.tensor([1.0, 0, 0, 0]) + a[:, None] * u + b[:, None] * v).view(4, 1, 2, 2)
    comps, ratio = principal_components(filters, 3)
    assert comps.shape == (3, 1, 2, 2)  # rank 2 after centring, but a third (zero-variance) direction still exists
    # variances along u and v: sum a^2 = 10, sum b^2 = 4 (the mean filter, 3 e0, is removed by the centring)
    torch.testing.assert_close(ratio, torch.tensor([10 / 14, 4 / 14, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(comps[0].flatten(), u)  # signs fixed: the largest-magnitude entry positive
    torch.testing.assert_close(comps[1].flatten(), -v)  # v's is -2/sqrt 5, so the component is -v
    assert principal_components(filters, 99)[0].shape[0] == 4  # capped at min(F, P)


def test_patch_embedding_components_of_a_vit():
    m = vitlab.create_model("vit_micro_patch4_8")  # 64 filters of 1x4x4: 16 components hold all the variance
    comps, ratio = patch_embedding_components(m, k=28)
    assert comps.shape == (16, 1, 4, 4) and ratio.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert (ratio[:-1] >= ratio[1:]).all()
    torch.testing.assert_close(comps.flatten(1) @ comps.flatten(1).T, torch.eye(16), atol=1e-5, rtol=0)


def test_cli_pos_embed_and_patch_embed(tmp_path, capsys):
    assert main(["explain", "pos-embed", "--model", "vit_micro_patch2_8", "--out", str(tmp_path / "p")]) == 0
    result = json.loads((tmp_path / "p" / "pos_embed.json").read_text())
    sim = np.array(result["similarity"])
    assert result["grid"] == [4, 4] and sim.shape == (16, 16)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-4)
    assert result["mean_similarity_by_grid_distance"]["0.0"] == pytest.approx(1.0, abs=1e-4)
    assert (tmp_path / "p" / "pos_embed.png").stat().st_size > 0
    out = tmp_path / "c"
    assert main(["explain", "patch-embed", "--model", "vit_tiny_patch16_224", "--out", str(out)]) == 0
    result = json.loads((out / "patch_embed.json").read_text())
    assert result["layer"] == "patch_embed.proj" and result["kernel"] == [16, 16] and result["filters"] == 192
    assert len(result["explained_variance_ratio"]) == 28 and 0 < sum(result["explained_variance_ratio"]) < 1
    assert (out / "patch_embed.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["explain", "pos-embed", "--model", "cpvt_micro_patch4_8", "--out", str(tmp_path / "q")]) == 2
    assert "cpvt_micro_patch4_8: CPVT has no absolute position table" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
    assert main(["explain", "patch-embed", "--model", "vit_micro_patch2_8", "--components", "0", "--out", "x"]) == 2
    assert "--components must be >= 1, got 0" in capsys.readouterr().err


# ----- mean attention distance (ViT Fig. 7 right) -------------------------------------------------------------------


def grid_centres(rows: int, cols: int, stride: float) -> torch.Tensor:
    return torch.tensor([[r * stride, c * stride] for r in range(rows) for c in range(cols)])


def test_mean_attention_distance_closed_forms():
    uniform = torch.full((1, 1, 4, 4), 0.25)
    c = grid_centres(2, 2, 16.0)
    # every query of a 2x2 grid sees itself at 0, two neighbours at 16 and the diagonal at 16 sqrt 2
    assert mean_attention_distance(uniform, c, c).item() == pytest.approx(8 + 4 * 2**0.5)
    row = grid_centres(1, 3, 10.0)  # 1x3: the ends see (0 + 10 + 20) / 3, the middle (10 + 0 + 10) / 3
    assert mean_attention_distance(torch.full((1, 1, 3, 3), 1 / 3), row, row).item() == pytest.approx(80 / 9)
    identity = torch.eye(9).expand(2, 3, 9, 9)
    torch.testing.assert_close(mean_attention_distance(identity, grid_centres(3, 3, 8.0), grid_centres(3, 3, 8.0)),
                               torch.zeros(3))  # fmt: skip
    # heads apart, averaged over the batch: head 0 looks at its right neighbour in image 0, at itself in image 1
    right = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    probs = torch.stack([torch.stack([right, torch.eye(2)]), torch.stack([torch.eye(2), torch.eye(2)])])  # (2,2,2,2)
    torch.testing.assert_close(mean_attention_distance(probs, row[:2], row[:2]), torch.tensor([5.0, 0.0]))
    with pytest.raises(ValueError, match="do not match 3 query and 3 key centres"):
        mean_attention_distance(uniform, row, row)


def uniform_attention(name: str) -> torch.nn.Module:
    """The model with q = k = 0 in every layer: each query spreads its attention evenly over all keys."""
    m = vitlab.create_model(name).eval()
    with torch.no_grad():
        for layer in m.attention_layers():
            layer.qkv.weight[: 2 * layer.qkv.out_features // 3] = 0
            layer.qkv.bias[: 2 * layer.qkv.out_features // 3] = 0
    return m


def test_attention_distances_of_uniform_attention_by_hand():
    m = uniform_attention("deit_micro_distilled_patch4_8")  # [cls, dist] + 2x2 patches of 4 px
    d = attention_distances(m, torch.randn(3, 1, 8, 8))
    assert sorted(d) == [0, 1, 2, 3]
    for heads in d.values():  # prefix keys dropped, the rest renormalised: (0 + 4 + 4 + 4 sqrt 2) / 4
        torch.testing.assert_close(heads, torch.full((4,), 2 + 2**0.5))


def test_cli_attention_distance(tmp_path, image, capsys):
    ckpt = vitlab.save_checkpoint(uniform_attention("vit_micro_patch2_8"), tmp_path / "uniform.safetensors")
    out = tmp_path / "d"
    assert main(["explain", "attention-distance", "--checkpoint", str(ckpt), image, image, "--out", str(out)]) == 0
    result = json.loads((out / "attention_distance.json").read_text())
    # a 4x4 grid of 2 px: the mean distance between two uniformly drawn cells, by brute force over the 256 pairs
    c = grid_centres(4, 4, 2.0)
    expected = torch.cdist(c, c).mean().item()
    assert sorted(result["layers"]) == ["0", "1", "2", "3"] and len(result["images"]) == 2
    for heads in result["layers"].values():
        assert heads == pytest.approx([expected] * 4, abs=1e-3)
    assert (out / "attention_distance.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["explain", "attention-distance", "--model", "convnext_micro_32", image, "--out", str(out)]) == 2
    assert "convnext_micro_32 has no attention layers" in capsys.readouterr().err


# ----- Grad-CAM -----------------------------------------------------------------------------------------------------


class TinyCNN(torch.nn.Module):
    """A 1x1 conv to two channels A_0 = x, A_1 = -x, global average pooling, a linear head without bias."""

    output_fmt = "NCHW"

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(1, 2, 1, bias=False)
        self.fc = torch.nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_grad_cam_by_hand():
    m = TinyCNN().train()
    x = torch.tensor([[1.0, 2.0], [3.0, -4.0]]).view(1, 1, 2, 2)
    # d y_c / d A_k = W[c, k] / 4 at every position: alpha = W[c] / 4
    cam, target = grad_cam(m, x, target=0, layer="features")  # relu(0.25 x - 0.5 x) = relu(-x / 4)
    torch.testing.assert_close(cam, torch.tensor([[[0.0, 0.0], [0.0, 1.0]]]))
    assert target.tolist() == [0]
    cam, _ = grad_cam(m, x, target=1, layer="features")  # relu(0.75 x + 0.25 x) = relu(x)
    torch.testing.assert_close(cam, torch.tensor([[[1.0, 2.0], [3.0, 0.0]]]))
    cam, target = grad_cam(m, torch.cat([x, -x]), layer="features")  # top classes: 1 (score 0.5), 0 (score 0.25)
    assert target.tolist() == [1, 0]
    torch.testing.assert_close(cam[1], torch.tensor([[0.25, 0.5], [0.75, 0.0]]))  # relu(-(-x) / 4)
    assert m.training and all(p.grad is None for p in m.parameters())
    with pytest.raises(ValueError, match=r"target class \[3\] out of range: the model has 3"):
        grad_cam(m, x, target=3, layer="features")
    with pytest.raises(ValueError, match="has no module 'nope'"):
        grad_cam(m, x, layer="nope")


def with_live_head(name: str, **kw) -> torch.nn.Module:
    """The model with its (zero-initialised) classifier re-drawn: a zero head gives every map a zero gradient."""
    m = vitlab.create_model(name, **kw)
    modules = dict(m.named_modules())
    for head in m.get_classifier_names():
        for p in modules[head].parameters():
            torch.nn.init.normal_(p, std=0.5)
    return m


# name: (the layer Grad-CAM reads, the map's shape) for a batch of 2 at the model's size
CAM = {
    "vit_micro_patch2_8": ("blocks.3.norm1", (2, 4, 4)),  # head on the class token: the last attention's input
    "deit_micro_distilled_patch4_8": ("blocks.3.norm1", (2, 2, 2)),
    "cvt_micro_32": ("stages.2.blocks.1.norm1", (2, 4, 4)),
    "cpvt_micro_patch4_8": ("blocks.3", (2, 2, 2)),  # GAP: the last block's tokens
    "mixer_micro_patch4_32": ("blocks.3", (2, 8, 8)),
    "swin_micro_patch4_window4_32": ("layers.2", (2, 2, 2)),  # channels-last map
    "convnext_micro_32": ("stages.3", (2, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(CAM))
def test_grad_cam_layer_shape_and_sign_per_family(name):
    m = with_live_head(name)
    x = torch.randn(2, m.cfg.in_chans, m.cfg.img_size, m.cfg.img_size)
    layer, shape = CAM[name]
    assert cam_layer(m) == layer
    cam, target = grad_cam(m, x, target=torch.tensor([0, 1]))
    assert cam.shape == shape and (cam >= 0).all() and cam.sum() > 0 and target.tolist() == [0, 1]


def test_grad_cam_after_the_last_block_of_a_class_token_vit_is_zero():
    m = with_live_head("vit_micro_patch2_8")
    x = torch.randn(1, 1, 8, 8)
    cam, _ = grad_cam(m, x, layer="blocks.3")  # patch tokens after the last block never reach the class token
    assert (cam == 0).all()
    assert grad_cam(m, x)[0].sum() > 0


def test_cli_gradcam_compares_a_resnet_and_a_vit_on_one_image(tmp_path, image, capsys):
    results = {}
    for name, kw, grid in (("resnet18", {"img_size": 64}, [2, 2]), ("vit_micro_patch4_16", {}, [4, 4])):
        ckpt = vitlab.save_checkpoint(with_live_head(name, **kw), tmp_path / f"{name}.safetensors")
        out = tmp_path / name
        assert main(["explain", "gradcam", "--checkpoint", str(ckpt), image, "--out", str(out), "--target", "3"]) == 0
        results[name] = r = json.loads((out / "gradcam.json").read_text())
        cam = np.array(r["cam"])
        assert list(cam.shape) == grid and (cam >= 0).all() and r["target"] == 3 and 0 < r["probability"] < 1
        assert (out / "gradcam.png").stat().st_size > 0
    assert results["resnet18"]["layer"] == "layer4" and results["vit_micro_patch4_16"]["layer"] == "blocks.3.norm1"
    capsys.readouterr()
    args = ["explain", "gradcam", "--model", "vit_micro_patch2_8", image, "--out", str(tmp_path / "z")]
    assert main(args) == 0  # a random-init ViT: zero head, zero map, and a note saying so
    assert "the map is zero everywhere" in capsys.readouterr().out
    assert main(args + ["--target", "10"]) == 2
    assert "--target 10: vit_micro_patch2_8 has 10 classes, so indices lie in [0, 9]" in capsys.readouterr().err
    assert main(args + ["--target", "cat"]) == 2
    assert "--target 'cat': give a class index in [0, 9]" in capsys.readouterr().err
