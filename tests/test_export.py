"""`vitlab export`, end to end through the CLI: each format loaded by its own runtime or library gives the eager
model's logits; what a format cannot express, an existing --out and a bad checkpoint end in one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vitlab
from tests.conftest import randomise_weights
from vitlab.cli.main import main

TOL = 1e-4


def make_checkpoint(tmp_path: Path, name: str, **overrides) -> tuple[torch.nn.Module, Path]:
    """A randomised model (every weight matters, heads included) and its vitlab run directory."""
    model = randomise_weights(vitlab.create_model(name, **overrides))
    run = tmp_path / f"run-{name}"
    vitlab.save_checkpoint(model, run)
    return model, run


def export(run: Path, fmt: str, out: Path, *extra: str) -> int:
    return main(["export", "--checkpoint", str(run), "--format", fmt, "--out", str(out), *extra])


def images(model: torch.nn.Module, batch: int) -> torch.Tensor:
    cfg = model.cfg
    return torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size)


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and want.std() > 0.05  # non-trivial logits: the comparison means something
    assert (got - want).abs().max().item() < TOL


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.endswith(".tmp")]


# ----- onnx and torchscript --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,overrides", [("vit_micro_patch4_8", {}), ("convnext_micro_32", {})])
def test_onnx_matches_eager_at_two_batch_sizes(tmp_path, capsys, name, overrides):
    ort = pytest.importorskip("onnxruntime")
    model, run = make_checkpoint(tmp_path, name, **overrides)
    out = tmp_path / "model.onnx"
    assert export(run, "onnx", out) == 0
    assert str(out) in capsys.readouterr().out and leftovers(tmp_path) == []
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    for batch in (1, 5):
        x = images(model, batch)
        with torch.no_grad():
            want = model.eval()(x)
        assert_same(torch.from_numpy(session.run(None, {"images": x.numpy()})[0]), want)


@pytest.mark.parametrize(
    "name,overrides",
    [("vit_micro_patch4_8", {}), ("swin_micro_patch4_window4_32", dict(depths=(2, 2, 1)))],  # shifted windows
)
def test_torchscript_matches_eager(tmp_path, name, overrides):
    model, run = make_checkpoint(tmp_path, name, **overrides)
    out = tmp_path / "model.pt"
    assert export(run, "torchscript", out) == 0
    loaded = torch.jit.load(str(out))
    for batch in (1, 4):
        x = images(model, batch)
        with torch.no_grad():
            assert_same(loaded(x), model.eval()(x))


# ----- transformers ------------------------------------------------------------------------------------------------
HF_CASES = {  # vitlab name, overrides, the transformers class that loads the export
    "vit": ("vit_tiny_patch16_224", dict(depth=2, img_size=32, num_classes=5), "ViTForImageClassification"),
    "deit": ("deit_micro_distilled_patch4_8", dict(depth=2), "DeiTForImageClassificationWithTeacher"),
    "swin": ("swin_micro_patch4_window4_32", dict(depths=(2, 2, 1), img_size=64), "SwinForImageClassification"),
    "convnext": ("convnext_micro_32", {}, "ConvNextForImageClassification"),
    "cvt": ("cvt_micro_32", dict(depths=(1, 2, 3)), "CvtForImageClassification"),
    "resnet18": ("resnet18", dict(layers=(1, 1, 1, 1), widths=(8, 16, 24, 32), stem_width=8, img_size=32),
                 "ResNetForImageClassification"),
    "resnet50": ("resnet50", dict(layers=(1, 2, 1, 1), widths=(8, 16, 24, 32), stem_width=8, img_size=32),
                 "ResNetForImageClassification"),
}  # fmt: skip


@pytest.mark.parametrize("case", HF_CASES)
def test_hf_directory_loads_in_transformers_and_back(tmp_path, case):
    transformers = pytest.importorskip("transformers")
    name, overrides, cls = HF_CASES[case]
    model, run = make_checkpoint(tmp_path, name, **overrides)
    out = tmp_path / "hf"
    assert export(run, "hf", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    ref, info = getattr(transformers, cls).from_pretrained(out, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    x = images(model, 2)
    with torch.no_grad():
        want = model.eval()(x)
        assert_same(ref.eval()(pixel_values=x).logits, want)
    # and back: vitlab reads its own export as a transformers directory, the registered name and statistics kept
    back = vitlab.load_checkpoint(out).eval()
    assert back.model_name == name and back.cfg.mean == model.cfg.mean and back.cfg.std == model.cfg.std
    with torch.no_grad():
        assert_same(back(x), want)


def test_hf_class_names_and_statistics(tmp_path):
    transformers = pytest.importorskip("transformers")
    mean, std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    _, run = make_checkpoint(tmp_path, "vit_tiny_patch16_224", depth=1, img_size=32, num_classes=3, mean=mean, std=std,
                             labels=("ant", "bee", "wasp"))  # fmt: skip
    assert export(run, "hf", tmp_path / "hf") == 0
    config = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    assert config.id2label == {0: "ant", 1: "bee", 2: "wasp"} and config.layer_norm_eps == 1e-6
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    assert list(processor.image_mean) == list(mean) and list(processor.image_std) == list(std)
    assert (processor.size["height"], processor.size["width"]) == (32, 32)
    back = vitlab.load_checkpoint(tmp_path / "hf")
    assert back.cfg.labels == ("ant", "bee", "wasp") and (back.cfg.mean, back.cfg.std) == (mean, std)


# ----- timm --------------------------------------------------------------------------------------------------------
TIMM_CASES = {  # vitlab name, overrides; timm names and vitlab-only ones (resized from the family's base)
    "vit": ("vit_tiny_patch16_224", dict(depth=2, img_size=32, num_classes=5)),
    "vit_gap": ("vit_micro_patch4_8", dict(global_pool="avg", class_token=False)),
    "deit": ("deit_micro_distilled_patch4_8", dict(depth=2)),
    "swin": ("swin_micro_patch4_window4_32", dict(depths=(2, 2, 1))),
    "convnext": ("convnext_micro_32", dict(patch_size=4, img_size=64)),
    "resnet": ("resnet50", dict(layers=(1, 2, 1, 1), widths=(8, 16, 24, 32), img_size=32)),
    "mixer": ("mixer_b16_224", dict(img_size=32, tokens_mlp_dim=8, channels_mlp_dim=96, num_classes=3)),
    "hybrid": ("vit_base_r50_s16_224", dict(depth=1, img_size=32, embed_dim=64, num_heads=2, num_classes=4)),
}


@pytest.mark.parametrize("case", TIMM_CASES)
def test_timm_directory_loads_in_timm(tmp_path, case):
    timm = pytest.importorskip("timm")
    name, overrides = TIMM_CASES[case]
    model, run = make_checkpoint(tmp_path, name, **overrides)
    out = tmp_path / "timm"
    assert export(run, "timm", out) == 0
    config = json.loads((out / "config.json").read_text())
    assert timm.is_model(config["architecture"]) and config["num_classes"] == model.num_classes
    ref = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # loads model.safetensors strictly
    assert ref.pretrained_cfg["input_size"] == model.pretrained_cfg["input_size"]
    x = images(model, 2)
    with torch.no_grad():
        assert_same(ref(x), model.eval()(x))


def test_timm_state_dict_loads_by_name_with_overlay(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    kw = dict(depth=1, img_size=32, num_classes=4)
    model, run = make_checkpoint(tmp_path, "vit_small_patch16_224", **kw)
    assert export(run, "timm", tmp_path / "timm") == 0
    weights = tmp_path / "timm" / "model.safetensors"
    # num_classes in the overlay too: timm drops a pretrained head whose size differs from the tag's (1000)
    overlay = dict(file=str(weights), num_classes=4)
    ref = timm.create_model("vit_small_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay, **kw).eval()
    bare = timm.create_model("vit_small_patch16_224", **kw)
    bare.load_state_dict(load_file(weights), strict=True)
    x = images(model, 2)
    with torch.no_grad():
        want = model.eval()(x)
        assert_same(ref(x), want)
        assert_same(bare.eval()(x), want)


def test_variants_timm_lacks_are_listed():
    """NOT_IN_TIMM (exported as the family's base architecture) is exactly the exportable names timm lacks."""
    timm = pytest.importorskip("timm")
    from vitlab.export import model_kind
    from vitlab.registry import get_entry
    from vitlab.weights.timm import NOT_IN_TIMM, TIMM_FAMILIES

    # the families timm has (vitlab.weights.timm.TIMM_FAMILIES), CPVT aside: it registers as a ViT
    exportable = {"vit", "swin", "convnext", "resnet", "mixer"}
    lacking = {
        n
        for n in vitlab.list_models(kind="classifier")
        if get_entry(n).family in exportable and not n.startswith("cpvt_")
    }.difference(n for n in vitlab.list_models() if timm.is_model(n))
    assert lacking == NOT_IN_TIMM
    assert model_kind(vitlab.create_model("cpvt_micro_patch4_8")) not in TIMM_FAMILIES


# ----- what cannot be exported ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt,name,overrides,says",
    [
        ("hf", "cpvt_micro_patch4_8", {}, "CPVT"),
        ("hf", "mixer_micro_patch4_32", {}, "MLP-Mixer"),
        ("hf", "lenet5", {}, "LeNet-5/AlexNet"),
        ("hf", "vit_base_r50_s16_224", dict(depth=1, img_size=32, embed_dim=32, num_heads=2), "hybrid"),
        ("timm", "cvt_micro_32", {}, "CvT"),
    ],
)
def test_family_a_format_lacks_is_refused(tmp_path, capsys, fmt, name, overrides, says):
    _, run = make_checkpoint(tmp_path, name, **overrides)
    assert export(run, fmt, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and name in err
    assert ("ViT/DeiT, Swin, ConvNeXt, CvT, ResNet" if fmt == "hf" else "ViT/DeiT, hybrid ResNet+ViT, Swin") in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "fmt,name,overrides,says",
    [
        ("timm", "vit_micro_patch4_8", dict(norm_eps=1e-12), "norm_eps=1e-12"),  # a transformers-born ViT
        ("timm", "convnext_micro_32", {}, "patch_size=2"),
        ("timm", "resnet18", dict(stem_width=16, layers=(1, 1, 1, 1)), "stem_width=16"),
        ("timm", "mixer_micro_patch4_32", {}, "fix patch_size, depth and embed_dim"),
        ("hf", "vit_micro_patch4_8", dict(global_pool="avg", class_token=False), "global_pool='avg'"),
        ("hf", "swin_micro_patch4_window4_32", {}, "maps are [8, 4, 2]"),
        ("hf", "cvt_micro_32", {}, "depths=(1, 1, 2)"),
    ],
)
def test_setting_a_format_cannot_express_is_refused(tmp_path, capsys, fmt, name, overrides, says):
    _, run = make_checkpoint(tmp_path, name, **overrides)
    assert export(run, fmt, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_existing_out_is_never_touched(tmp_path, capsys):
    _, run = make_checkpoint(tmp_path, "vit_micro_patch4_8")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    (tmp_path / "file.onnx").write_text("keep")
    (tmp_path / "empty").mkdir()
    for fmt, out in [("hf", "taken"), ("onnx", "file.onnx"), ("timm", "empty"), ("torchscript", "taken")]:
        assert export(run, fmt, tmp_path / out) == 2
        assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep" and (tmp_path / "file.onnx").read_text() == "keep"
    assert list((tmp_path / "empty").iterdir()) == [] and leftovers(tmp_path) == []


def test_bad_checkpoint_and_format(tmp_path, capsys):
    assert export(tmp_path / "absent", "hf", tmp_path / "out") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    assert export(tmp_path / "bad.safetensors", "hf", tmp_path / "out", "--model", "vit_micro_patch4_8") == 2
    assert "bad.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        export(tmp_path / "bad.safetensors", "tflite", tmp_path / "out")
    assert e.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_crash_while_writing_leaves_no_out(tmp_path, monkeypatch):
    import vitlab.export

    def crash(path, *args):
        Path(path).write_bytes(b"half")
        raise RuntimeError("disk gone")

    _, run = make_checkpoint(tmp_path, "vit_micro_patch4_8")
    monkeypatch.setattr(vitlab.export, "write_tensors", crash)
    with pytest.raises(RuntimeError, match="disk gone"):
        export(run, "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
