"""Receptive fields: hand-worked examples, the registry's CNNs against a brute-force measurement, and the effective
receptive field's properties (inside the theoretical one, relatively smaller with depth, global after a ViT block)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import vitlab
from vitlab.errors import ConfigError
from vitlab.explain.receptive import (
    effective_field,
    extent,
    layer_output,
    mass_side,
    measured_extent,
    measured_field,
    receptive_fields,
    rms_radius,
)


def _fields(model: nn.Module) -> list[tuple[float, float, float]]:
    return [(f.size, f.jump, f.start) for f in receptive_fields(model)]


def test_six_3x3_convs():
    net = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(6)])
    assert _fields(net) == [(3 + 2 * i, 1, 0) for i in range(6)]  # 3, 5, ..., 13


def test_conv_and_2x2_max_pool_stacks():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # fmt: skip
    # size: 3 | 3+1 = 4 | 4+2*2 = 8 | 8+1*2 = 10; jump 1, 2, 2, 4; start 0 | 0.5 | 0.5 | 0.5+0.5*2 = 1.5
    assert _fields(net) == [(3, 1, 0), (4, 2, 0.5), (8, 2, 0.5), (10, 4, 1.5)]


def test_strided_stem_and_dilation():
    stem = nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, padding=3), nn.MaxPool2d(3, stride=2, padding=1))
    assert _fields(stem) == [(7, 2, 0), (11, 4, 0)]  # ResNet's stem: 7, then 7 + 2*2
    dilated = nn.Sequential(nn.Conv2d(1, 1, 3, padding=2, dilation=2), nn.Conv2d(1, 1, 3, stride=2))
    assert _fields(dilated) == [(5, 1, 0), (7, 2, 1)]


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 1, 5, padding=2), nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_branches_meet_as_the_larger_field():
    net = nn.Sequential(_Residual(), nn.Conv2d(1, 1, 3, padding=1))
    assert _fields(net) == [(5, 1, 0), (1, 1, 0), (7, 1, 0)]


def test_registry_resnets_match_the_known_figures():
    """ResNet-18 and ResNet-50 (stride in the 3x3 conv, as timm and torchvision): 435 and 427 pixels, jump 32."""
    for name, size in (("resnet18", 435), ("resnet50", 427)):
        last = receptive_fields(vitlab.create_model(name))[-1]
        assert (last.size, last.jump) == (size, 32), name


def test_layers_after_global_mixing_are_global():
    vit = receptive_fields(vitlab.create_model("vit_micro_patch4_8"))
    assert [(f.name, f.size, f.jump) for f in vit] == [("patch_embed.proj", 4, 4)]  # then attention: no more maps
    convnext = receptive_fields(vitlab.create_model("convnext_micro_32"))
    assert not any(math.isinf(f.size) for f in convnext)  # its MLP is a Linear on channels-last maps: pointwise


@pytest.mark.parametrize(
    "name,layers,img",
    [("lenet5", None, 32), ("resnet18", ["conv1", "maxpool", "layer1.0.conv1"], 28)],
)
def test_brute_force_measurement_equals_the_computed_field(name, layers, img):
    model = vitlab.create_model(name)
    fields = {f.name: f for f in receptive_fields(model)}
    for layer in layers or list(fields):
        f = fields[layer]
        mask = measured_field(model, layer, img, in_chans=model.in_chans)
        assert extent(mask) == (f.size, f.size), layer
        n = layer_output(model, layer, torch.zeros(1, model.in_chans, img, img)).shape[-1]
        centre = f.start + ((n - 1) // 2) * f.jump  # the input coordinate of the probed (middle) unit's centre
        rows = mask.any(1).nonzero()
        assert rows[0].item() == centre - (f.size - 1) / 2, layer


def test_erf_lies_inside_the_theoretical_field_and_shrinks_relatively_with_depth():
    torch.manual_seed(0)
    img, ratios = 49, []
    for depth in (2, 4, 8):
        net = nn.Sequential(*[m for _ in range(depth) for m in (nn.Conv2d(2, 2, 3, padding=1), nn.ReLU())])
        erf = effective_field(net, str(2 * depth - 2), img, in_chans=2, samples=16)
        size = receptive_fields(net)[-1].size
        assert extent(erf > 0) <= (size, size)
        assert mass_side(erf, 0.9) <= size
        ratios.append(rms_radius(erf) / size)
    assert ratios[0] > ratios[1] > ratios[2], ratios  # the ERF grows like sqrt(depth), the field like depth


def test_a_vit_block_is_already_global():
    vit = vitlab.create_model("vit_micro_patch4_8")
    erf = effective_field(vit, "blocks.0", 8, samples=4)
    assert (erf > 0).all()  # every pixel moves the centre token after one block


def test_bad_layer_is_named():
    with pytest.raises(ConfigError, match="no layer 'nope'"):
        measured_field(vitlab.create_model("lenet5"), "nope", 32, in_chans=1)


def test_row_and_column_sweeps_measure_deep_fields_exactly():
    """ResNet-18 down to layer2: the far edges of a deep field move the unit by ~1e-10 of its value, which float32
    rounding hides; the float64 averaging probe sees them."""
    model = vitlab.create_model("resnet18")
    for f in receptive_fields(model)[:7]:
        side = int(f.size + 2 * f.jump + 2)
        assert measured_extent(model, f.name, side) == (f.size, f.size), f.name


def test_rms_radius_of_hand_maps():
    point = torch.zeros(5, 5)
    point[2, 2] = 1
    assert rms_radius(point) == 0
    ring = torch.zeros(5, 5)
    ring[2, 0] = ring[2, 4] = 1  # two units at distance 2 from their centre of mass
    assert rms_radius(ring) == pytest.approx(2.0)
    assert mass_side(point) == 1 and mass_side(ring, 1.0) == 5


def test_explain_cli(tmp_path, capsys):
    from vitlab.cli.main import main

    assert (
        main(["explain", "receptive-field", "--model", "lenet5", "--measure", "--json", str(tmp_path / "rf.json")]) == 0
    )
    text = capsys.readouterr().out
    assert "features.5" in text and "16x16" in text and "DIFFERS" not in text
    import json

    layers = json.loads((tmp_path / "rf.json").read_text())["layers"]
    assert [(d["name"], d["size"], d["measured"]) for d in layers][-1] == ("features.5", 16, [16, 16])
    assert (
        main(["explain", "erf", "--model", "lenet5", "--inits", "2", "--samples", "2", "--out", str(tmp_path / "e")])
        == 0
    )
    result = json.loads((tmp_path / "e" / "erf.json").read_text())
    assert set(result["layers"]) == {"features.0", "features.3"} and (tmp_path / "e" / "erf.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["explain", "erf", "--model", "lenet5", "--layers", "nope", "--out", str(tmp_path / "f")]) == 2
    assert "no module 'nope'" in capsys.readouterr().err and not (tmp_path / "f").exists()
