"""timm's own model tests (tests/test_models.py of pytorch-image-models), ported to vitlab: the same checks and
tolerances over one registered model per family, with `vitlab.create_model` in place of `timm.create_model`.

What differs from timm's file, and why:
- The model list is one variant per vitlab family (timm's runs its whole registry); families timm does not have
  (CPVT, CvT, LeNet, AlexNet) are classed as timm classes its own: token models (output_fmt NLC) as "non-standard"
  (timm's NON_STD_FILTERS: they get `test_model_default_cfgs_non_std` and skip `test_model_forward_features`).
- The fx tests use torchvision's `create_feature_extractor` when torchvision is importable, as timm does; without it
  (vitlab does not depend on torchvision) `vitlab.fx.symbolic_trace`, the same torch.fx tracer settings with the
  final output returned in the same {name: tensor} form.
- timm's `set_scriptable(True)` has no vitlab counterpart: vitlab models are scriptable as built.
"""

from __future__ import annotations

import fnmatch
import math

import pytest
import torch

from vitlab import create_model
from vitlab.fx import create_fx_model
from vitlab.models.features import FeatureInfo

MODELS = {
    "vit": "vit_tiny_patch16_224",
    "deit_distilled": "deit_tiny_distilled_patch16_224",
    "cpvt": "cpvt_tiny_patch16_224",
    "cvt": "cvt_13_224",
    "swin": "swin_tiny_patch4_window7_224",
    "convnext": "convnext_tiny",
    "mixer": "mixer_b16_224",
    "resnet": "resnet50",
    "hybrid": "vit_base_r50_s16_224",
    "lenet": "lenet5",
    "alexnet": "alexnet",
}
# LeNet-5 has two pooling stages, so two feature levels: timm's feature tests require at least three.
TOO_FEW_LEVELS = {"lenet5"}
SLOW = {"vit_base_r50_s16_224", "mixer_b16_224"}  # the two largest: marked slow, run in CI
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS.values()]

# timm's NON_STD_FILTERS, the patterns that match vitlab's names
NON_STD_FILTERS = ["vit_*", "*mixer_*", "deit*"]

# timm's size limits
TARGET_FWD_SIZE = MAX_FWD_SIZE = 384
TARGET_BWD_SIZE = 128
MAX_BWD_SIZE = 320
MAX_FWD_OUT_SIZE = 448
TARGET_JIT_SIZE = 128
MAX_JIT_SIZE = 320
TARGET_FFEAT_SIZE = 96
MAX_FFEAT_SIZE = 256
TARGET_FWD_FX_SIZE = 128
MAX_FWD_FX_SIZE = 256
TARGET_BWD_FX_SIZE = 128
MAX_BWD_FX_SIZE = 224

torch_device = "cpu"


def is_non_std(name: str) -> bool:
    if any(fnmatch.fnmatch(name, f) for f in NON_STD_FILTERS):
        return True
    return create_model(name, num_classes=0).output_fmt == "NLC"  # a family timm does not have: by its layout


def _name(param) -> str:
    return getattr(param, "values", [param])[0]


STD = [p for p in NAMES if not is_non_std(_name(p))]
NON_STD = [p for p in NAMES if is_non_std(_name(p))]
FEATURES_STD = [p for p in STD if _name(p) not in TOO_FEW_LEVELS]
FEATURES = [p for p in NAMES if _name(p) not in TOO_FEW_LEVELS]


def get_spatial_dim(fmt: str) -> tuple[int, ...]:
    return {"NCHW": (2, 3), "NHWC": (1, 2), "NLC": (1,)}[fmt]


def get_channel_dim(fmt: str) -> int:
    return {"NCHW": 1, "NHWC": 3, "NLC": 2}[fmt]


def _get_input_size(model=None, model_name="", target=None):
    cfg = create_model(model_name).default_cfg if model is None else model.default_cfg
    input_size = cfg["input_size"]
    fixed_input_size = cfg.get("fixed_input_size", None)
    min_input_size = cfg.get("min_input_size", None)
    assert input_size is not None
    if fixed_input_size:
        return input_size
    if min_input_size:
        if target and max(input_size) > target:
            input_size = min_input_size
    elif target and max(input_size) > target:
        input_size = tuple([min(x, target) for x in input_size])
    return input_size


@pytest.mark.parametrize("model_name", NAMES)
@pytest.mark.parametrize("batch_size", [1])
def test_model_forward(model_name, batch_size):
    model = create_model(model_name, pretrained=False)
    model.eval()
    input_size = _get_input_size(model=model, target=TARGET_FWD_SIZE)
    if max(input_size) > MAX_FWD_SIZE:
        pytest.skip("Fixed input size model > limit.")
    inputs = torch.randn((batch_size, *input_size))
    outputs = model(inputs)
    assert outputs.shape[0] == batch_size
    assert not torch.isnan(outputs).any(), "Output included NaNs"
    model.set_grad_checkpointing()
    outputs2 = model(inputs)
    assert torch.allclose(outputs, outputs2, rtol=1e-4, atol=1e-5), "Output does not match"


@pytest.mark.parametrize("model_name", NAMES)
@pytest.mark.parametrize("batch_size", [2])
def test_model_backward(model_name, batch_size):
    input_size = _get_input_size(model_name=model_name, target=TARGET_BWD_SIZE)
    if max(input_size) > MAX_BWD_SIZE:
        pytest.skip("Fixed input size model > limit.")
    model = create_model(model_name, pretrained=False, num_classes=42)
    encoder_only = model.num_classes == 0
    num_params = sum([x.numel() for x in model.parameters()])
    model.train()
    outputs = model(torch.randn((batch_size, *input_size)))
    if isinstance(outputs, tuple):
        outputs = torch.cat(outputs)
    outputs.mean().backward()
    for n, x in model.named_parameters():
        assert x.grad is not None, f"No gradient for {n}"
    num_grad = sum([x.grad.numel() for x in model.parameters() if x.grad is not None])
    if encoder_only:
        feat_axis = get_channel_dim(getattr(model, "output_fmt", "NCHW"))
        assert outputs.shape[feat_axis] == model.num_features
    else:
        assert outputs.shape[-1] == 42
    assert num_params == num_grad, "Some parameters are missing gradients"
    assert not torch.isnan(outputs).any(), "Output included NaNs"


def _check_classifier_and_first_conv(cfg, state_dict):
    if cfg.get("num_classes", None):
        classifier = cfg["classifier"]
        if not isinstance(classifier, tuple | list):
            classifier = (classifier,)
        for c in classifier:
            assert c + ".weight" in state_dict, f"{c} not in model params"
    first_conv = cfg["first_conv"]
    if isinstance(first_conv, str):
        first_conv = (first_conv,)
    assert isinstance(first_conv, tuple | list)
    for fc in first_conv:
        assert fc + ".weight" in state_dict, f"{fc} not in model params"


@pytest.mark.parametrize("model_name", STD)
@pytest.mark.parametrize("batch_size", [1])
def test_model_default_cfgs(model_name, batch_size):
    model = create_model(model_name, pretrained=False)
    model.eval()
    assert model.num_classes >= 0
    assert model.num_features > 0
    assert model.head_hidden_size > 0
    state_dict = model.state_dict()
    cfg = model.default_cfg

    pool_size = cfg["pool_size"]
    input_size = model.default_cfg["input_size"]
    output_fmt = getattr(model, "output_fmt", "NCHW")
    spatial_axis = get_spatial_dim(output_fmt)
    assert len(spatial_axis) == 2
    feat_axis = get_channel_dim(output_fmt)

    if all([x <= MAX_FWD_OUT_SIZE for x in input_size]):
        input_size = tuple([min(x, MAX_FWD_OUT_SIZE) for x in input_size])
        input_tensor = torch.randn((batch_size, *input_size))

        outputs = model.forward_features(input_tensor)
        outputs_pre = model.forward_head(outputs, pre_logits=True)
        assert outputs.shape[spatial_axis[0]] == pool_size[0], f"unpooled feature shape {outputs.shape} != config"
        assert outputs.shape[spatial_axis[1]] == pool_size[1], f"unpooled feature shape {outputs.shape} != config"
        assert outputs.shape[feat_axis] == model.num_features
        assert outputs_pre.shape[1] == model.head_hidden_size

        model.reset_classifier(0)
        assert model.num_classes == 0
        outputs = model.forward(input_tensor)
        assert len(outputs.shape) == 2
        assert outputs.shape[1] == model.head_hidden_size
        assert outputs.shape == outputs_pre.shape

        # timm's EARLY_POOL_MODELS (layers between pool and classifier, as VGG) skip these: LeNet, AlexNet
        if model.unpooled_features:
            model.reset_classifier(0, "")  # reset classifier and disable global pooling
            outputs = model.forward(input_tensor)
            assert len(outputs.shape) == 4
            assert outputs.shape[spatial_axis[0]] == pool_size[0] and outputs.shape[spatial_axis[1]] == pool_size[1]

            model = create_model(model_name, pretrained=False, num_classes=0, global_pool="").eval()
            outputs = model.forward(input_tensor)
            assert len(outputs.shape) == 4
            assert outputs.shape[spatial_axis[0]] == pool_size[0] and outputs.shape[spatial_axis[1]] == pool_size[1]

    _check_classifier_and_first_conv(cfg, state_dict)


@pytest.mark.parametrize("model_name", NON_STD)
@pytest.mark.parametrize("batch_size", [1])
def test_model_default_cfgs_non_std(model_name, batch_size):
    model = create_model(model_name, pretrained=False)
    model.eval()
    assert model.num_classes >= 0
    assert model.num_features > 0
    assert model.head_hidden_size > 0
    state_dict = model.state_dict()
    cfg = model.default_cfg

    input_size = _get_input_size(model=model)
    if max(input_size) > 320:
        pytest.skip("Fixed input size model > limit.")
    input_tensor = torch.randn((batch_size, *input_size))
    feat_dim = getattr(model, "feature_dim", None)

    outputs = model.forward_features(input_tensor)
    outputs_pre = model.forward_head(outputs, pre_logits=True)
    if feat_dim is None:
        feat_dim = -1 if outputs.ndim == 3 else 1
    assert outputs.shape[feat_dim] == model.num_features
    assert outputs_pre.shape[1] == model.head_hidden_size

    model.reset_classifier(0)
    assert model.num_classes == 0
    outputs = model.forward(input_tensor)
    feat_dim = -1 if outputs.ndim == 3 else 1
    assert outputs.shape[feat_dim] == model.head_hidden_size, "pooled num_features != config"
    assert outputs.shape == outputs_pre.shape

    model = create_model(model_name, pretrained=False, num_classes=0).eval()
    outputs = model.forward(input_tensor)
    feat_dim = -1 if outputs.ndim == 3 else 1
    assert outputs.shape[feat_dim] == model.num_features

    _check_classifier_and_first_conv(cfg, state_dict)


@pytest.mark.parametrize("model_name", NAMES)
@pytest.mark.parametrize("batch_size", [1])
def test_model_forward_torchscript(model_name, batch_size):
    input_size = _get_input_size(model_name=model_name, target=TARGET_JIT_SIZE)
    if max(input_size) > MAX_JIT_SIZE:
        pytest.skip("Fixed input size model > limit.")
    model = create_model(model_name, pretrained=False)
    model.eval()
    model = torch.jit.script(model)
    outputs = model(torch.randn((batch_size, *input_size)))
    assert outputs.shape[0] == batch_size
    assert not torch.isnan(outputs).any(), "Output included NaNs"


@pytest.mark.parametrize("model_name", FEATURES_STD)
@pytest.mark.parametrize("batch_size", [1])
def test_model_forward_features(model_name, batch_size):
    model = create_model(model_name, pretrained=False, features_only=True)
    model.eval()
    expected_channels = model.feature_info.channels()
    expected_reduction = model.feature_info.reduction()
    assert len(expected_channels) >= 3  # all models here should have at least 3 default feat levels

    input_size = _get_input_size(model=model, target=TARGET_FFEAT_SIZE)
    if max(input_size) > MAX_FFEAT_SIZE:
        pytest.skip("Fixed input size model > limit.")
    output_fmt = getattr(model, "output_fmt", "NCHW")
    feat_axis = get_channel_dim(output_fmt)
    spatial_axis = get_spatial_dim(output_fmt)

    outputs = model(torch.randn((batch_size, *input_size)))
    assert len(expected_channels) == len(outputs)
    spatial_size = input_size[-2:]
    for e, r, o in zip(expected_channels, expected_reduction, outputs, strict=True):
        assert e == o.shape[feat_axis]
        assert o.shape[spatial_axis[0]] <= math.ceil(spatial_size[0] / r) + 1
        assert o.shape[spatial_axis[1]] <= math.ceil(spatial_size[1] / r) + 1
        assert o.shape[0] == batch_size
        assert not torch.isnan(o).any()


@pytest.mark.parametrize("model_name", NAMES)
@pytest.mark.parametrize("batch_size", [1])
def test_model_forward_intermediates_features(model_name, batch_size):
    model = create_model(model_name, pretrained=False, features_only=True, feature_cls="getter")
    model.eval()
    expected_channels = model.feature_info.channels()
    expected_reduction = model.feature_info.reduction()

    input_size = _get_input_size(model=model, target=TARGET_FFEAT_SIZE)
    if max(input_size) > MAX_FFEAT_SIZE:
        pytest.skip("Fixed input size model > limit.")
    output_fmt = getattr(model, "output_fmt", "NCHW")
    feat_axis = get_channel_dim(output_fmt)
    spatial_axis = get_spatial_dim(output_fmt)

    outputs = model(torch.randn((batch_size, *input_size)))
    assert len(expected_channels) == len(outputs)
    spatial_size = input_size[-2:]
    for e, r, o in zip(expected_channels, expected_reduction, outputs, strict=True):
        assert e == o.shape[feat_axis]
        assert o.shape[spatial_axis[0]] <= math.ceil(spatial_size[0] / r) + 1
        assert o.shape[spatial_axis[1]] <= math.ceil(spatial_size[1] / r) + 1
        assert o.shape[0] == batch_size
        assert not torch.isnan(o).any()


@pytest.mark.parametrize("model_name", FEATURES)
@pytest.mark.parametrize("batch_size", [1])
def test_model_forward_intermediates(model_name, batch_size):
    model = create_model(model_name, pretrained=False)
    model.eval()
    feature_info = FeatureInfo(model.feature_info, list(range(len(model.feature_info))))
    expected_channels = feature_info.channels()
    expected_reduction = feature_info.reduction()
    assert len(expected_channels) >= 3  # all models here should have at least 3 feature levels

    input_size = _get_input_size(model=model, target=TARGET_FFEAT_SIZE)
    if max(input_size) > MAX_FFEAT_SIZE:
        pytest.skip("Fixed input size model > limit.")
    output_fmt = "NCHW"  # determined by forward_intermediates() arg, not model attribute
    feat_axis = get_channel_dim(output_fmt)
    spatial_axis = get_spatial_dim(output_fmt)

    inpt = torch.randn((batch_size, *input_size))
    output, intermediates = model.forward_intermediates(inpt, output_fmt=output_fmt)
    assert len(expected_channels) == len(intermediates)
    spatial_size = input_size[-2:]
    for e, r, o in zip(expected_channels, expected_reduction, intermediates, strict=True):
        assert e == o.shape[feat_axis]
        assert o.shape[spatial_axis[0]] <= math.ceil(spatial_size[0] / r) + 1
        assert o.shape[spatial_axis[1]] <= math.ceil(spatial_size[1] / r) + 1
        assert o.shape[0] == batch_size
        assert not torch.isnan(o).any()

    output2 = model.forward_features(inpt)
    assert torch.allclose(output, output2)

    model.set_grad_checkpointing()
    output3, _ = model.forward_intermediates(inpt, output_fmt=output_fmt)
    assert torch.allclose(output, output3, rtol=1e-4, atol=1e-5), "Output does not match"


@pytest.mark.parametrize("model_name", NAMES)
@pytest.mark.parametrize("batch_size", [1])
def test_model_forward_fx(model_name, batch_size):
    model = create_model(model_name, pretrained=False)
    model.eval()
    input_size = _get_input_size(model=model, target=TARGET_FWD_FX_SIZE)
    if max(input_size) > MAX_FWD_FX_SIZE:
        pytest.skip("Fixed input size model > limit.")
    with torch.inference_mode():
        inputs = torch.randn((batch_size, *input_size))
        outputs = model(inputs)
        if isinstance(outputs, tuple):
            outputs = torch.cat(outputs)
        model = create_fx_model(model)
        fx_outputs = tuple(model(inputs).values())
        if isinstance(fx_outputs, tuple):
            fx_outputs = torch.cat(fx_outputs)
    assert torch.all(fx_outputs == outputs)
    assert outputs.shape[0] == batch_size
    assert not torch.isnan(outputs).any(), "Output included NaNs"


@pytest.mark.parametrize("model_name", NAMES)
@pytest.mark.parametrize("batch_size", [2])
def test_model_backward_fx(model_name, batch_size):
    input_size = _get_input_size(model_name=model_name, target=TARGET_BWD_FX_SIZE)
    if max(input_size) > MAX_BWD_FX_SIZE:
        pytest.skip("Fixed input size model > limit.")
    model = create_model(model_name, pretrained=False, num_classes=42)
    model.train()
    num_params = sum([x.numel() for x in model.parameters()])
    model = create_fx_model(model, train=True)
    outputs = tuple(model(torch.randn((batch_size, *input_size))).values())
    if isinstance(outputs, tuple):
        outputs = torch.cat(outputs)
    outputs.mean().backward()
    for n, x in model.named_parameters():
        assert x.grad is not None, f"No gradient for {n}"
    num_grad = sum([x.grad.numel() for x in model.parameters() if x.grad is not None])
    assert outputs.shape[-1] == 42
    assert num_params == num_grad, "Some parameters are missing gradients"
    assert not torch.isnan(outputs).any(), "Output included NaNs"


# timm's EXCLUDE_FX_JIT_FILTERS: a distilled DeiT's traced graph keeps a training-mode branch TorchScript rejects
EXCLUDE_FX_JIT_FILTERS = ["deit_*_distilled_patch16_224"]


@pytest.mark.parametrize(
    "model_name",
    [p for p in NAMES if not any(fnmatch.fnmatch(_name(p), f) for f in EXCLUDE_FX_JIT_FILTERS)],
)
@pytest.mark.parametrize("batch_size", [1])
def test_model_forward_fx_torchscript(model_name, batch_size):
    input_size = _get_input_size(model_name=model_name, target=TARGET_JIT_SIZE)
    if max(input_size) > MAX_JIT_SIZE:
        pytest.skip("Fixed input size model > limit.")
    model = create_model(model_name, pretrained=False)
    model.eval()
    model = torch.jit.script(create_fx_model(model))
    with torch.inference_mode():
        outputs = tuple(model(torch.randn((batch_size, *input_size))).values())
        if isinstance(outputs, tuple):
            outputs = torch.cat(outputs)
    assert outputs.shape[0] == batch_size
    assert not torch.isnan(outputs).any(), "Output included NaNs"
