"""`vitlab explain dino-attention`: the 60%-mass mask by hand, the [CLS] attention equal to transformers' own
attention probabilities of a DINOv2-with-registers directory, and the command on a scikit-image photograph."""

from __future__ import annotations

import json

import pytest
import torch

import vitlab
from vitlab.cli.main import main
from vitlab.explain.dino import cls_attention, mass_mask

transformers = pytest.importorskip("transformers")


def test_mass_mask_keeps_the_fewest_top_tokens_reaching_the_share():
    w = torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.25, 0.25, 0.25, 0.25]])
    assert mass_mask(w, 0.6).tolist() == [[False, True, False, True], [True, True, True, False]]
    assert mass_mask(w, 0.5).tolist()[0] == [False, True, False, False]  # 0.5 reached by the top token alone
    assert mass_mask(w * 7, 1.0).all()  # unnormalised weights: the share is of their sum
    with pytest.raises(ValueError, match="keep"):
        mass_mask(w, 0.0)


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.Dinov2WithRegistersConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=56, patch_size=14,
        num_register_tokens=4, attn_implementation="eager",
    )  # fmt: skip
    ref = transformers.Dinov2WithRegistersModel(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # attention far from uniform
    path = tmp_path_factory.mktemp("dinov2") / "hf"
    ref.save_pretrained(path)
    return path, ref


def test_cls_attention_equals_transformers_attention_probabilities(dinov2_dir):
    path, ref = dinov2_dir
    model = vitlab.load_checkpoint(path).eval()
    x = torch.randn(1, 3, 70, 42)
    att = cls_attention(model, x)
    with torch.no_grad():
        probs = ref(pixel_values=x, output_attentions=True).attentions[-1]  # (1, H, N, N), [cls, 4 registers, ...]
    expected = probs[0, :, 0, 5:]
    expected = expected / expected.sum(-1, keepdim=True)
    assert att.maps.shape == (3, 5, 3) and att.layer == 1 and att.stride == 14
    assert torch.allclose(att.maps.flatten(1), expected, atol=1e-5)
    assert ((att.kept >= 0.6) & (att.kept < 0.6 + expected.max())).all()


def test_command_on_a_dinov2_directory_and_a_scikit_image_photo(dinov2_dir, tmp_path, capsys):
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    image = tmp_path / "coffee.png"
    Image.fromarray(skimage_data.coffee()).save(image)
    out = tmp_path / "att"
    assert main(["explain", "dino-attention", "--checkpoint", str(dinov2_dir[0]), str(image), "--out", str(out),
                 "--img-size", "112"]) == 0  # fmt: skip
    assert (out / "dino_attention.png").is_file()
    result = json.loads((out / "dino_attention.json").read_text())
    assert result["grid"] == [8, 8] and len(result["heads"]) == 3 and result["layer"] == 1
    assert all(h["mass_kept"] >= 0.6 for h in result["heads"])
    assert "head 2: mask keeps" in capsys.readouterr().out
    assert main(["explain", "dino-attention", "--checkpoint", str(dinov2_dir[0]), str(image), "--out", str(out),
                 "--img-size", "100"]) == 2  # fmt: skip
    assert "multiple of" in capsys.readouterr().err
