"""`vitlab.runtime.optimize_for_cpu_inference`: a packed-weight copy with the plain model's numbers and behaviour.

What a user of the old in-model packed `Linear` hit, one test each: deepcopy / torch.save / EMA failing on MKL's
storage-less tensors after inference, `quantize_dynamic` skipping vitlab's linears, and a kernel choice that depended
on what earlier code in the process had done.
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitlab
from vitlab.engine.ema import ModelEma
from vitlab.runtime import PackedLinear, keep_freed_memory, mkl_packing_supported, optimize_for_cpu_inference

needs_mkl = pytest.mark.skipif(not mkl_packing_supported(), reason="PyTorch built without MKL's packed linear ops")
MODELS = ["vit_micro_patch2_8", "convnext_micro_32", "swin_micro_patch4_window4_32"]


@pytest.fixture(autouse=True)
def _kept_memory():
    keep_freed_memory()  # what the vitlab command runs under; process-wide, and harmless to the other tests


def _model(name: str) -> nn.Module:
    model = vitlab.create_model(name).eval()
    with torch.no_grad():  # heads start at zero: perturb every weight so each one shows in the logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _images(model: nn.Module, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, model.cfg.in_chans, model.cfg.img_size, model.cfg.img_size)


def _linears(model: nn.Module) -> int:
    return sum(type(m) is nn.Linear for m in model.modules())


def _packed_count(model: nn.Module) -> int:
    return sum(len(m._packed) for m in model.modules() if isinstance(m, PackedLinear))


@pytest.mark.parametrize("name", MODELS)
def test_optimized_copy_gives_the_plain_logits(name):
    model = _model(name)
    opt = optimize_for_cpu_inference(model)
    x = _images(model)
    with torch.inference_mode():
        expected, got = model(x), opt(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert expected.abs().max() > 1e-3  # the comparison is not between zeros
    n = _linears(model)
    assert n > 0 and sum(type(m) is PackedLinear for m in opt.modules()) == n and _linears(opt) == 0
    if mkl_packing_supported():
        assert _packed_count(opt) == n  # every linear ran on packed weights (one row count each)


@pytest.mark.parametrize("name", ["vit_micro_patch2_8", "convnext_micro_32"])
def test_original_and_copy_copy_save_and_average_after_inference(name):
    model = _model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = optimize_for_cpu_inference(model)
    x = _images(model)
    with torch.no_grad():
        expected = model(x)
        opt(x)
    for m in (model, opt):
        twin = copy.deepcopy(m)
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        ema = ModelEma(m, 0.99)
        ema.update(m)
        for other in (twin, loaded, ema.module):
            with torch.no_grad():
                torch.testing.assert_close(other(x), expected, rtol=1e-5, atol=1e-6)
    # the copy's state dict is the original's: same keys, plain tensors with storage, same values
    sd = opt.state_dict()
    assert list(sd) == list(model.state_dict())
    for k, v in sd.items():
        assert type(v) is torch.Tensor and v.untyped_storage().nbytes() > 0
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # and the original is untouched: its own layers, no packed caches, the same weights
    assert not any(isinstance(m, PackedLinear) or hasattr(m, "_packed") for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated", "ignore:torch.quantize_per_tensor")
@pytest.mark.parametrize("name", ["vit_micro_patch2_8", "convnext_micro_32"])
def test_quantize_dynamic_converts_every_linear(name):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    model = _model(name)
    with torch.no_grad():  # an optimized copy used beside it changes nothing for the original
        optimize_for_cpu_inference(model)(_images(model))
    n = _linears(model)
    q = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    assert n > 0 and sum(isinstance(m, DynamicQuantizedLinear) for m in q.modules()) == n
    with torch.no_grad():
        assert q(_images(model)).shape == (2, model.num_classes)


_KERNEL = """
import sys, torch, vitlab
from torch.profiler import ProfilerActivity, profile
from vitlab.runtime import optimize_for_cpu_inference, quiet_stderr
if sys.argv[1] == "cli":
    import contextlib, io
    from vitlab.cli.main import main
    with contextlib.redirect_stdout(io.StringIO()):
        main(["models"])
elif sys.argv[1] == "malloc":
    from vitlab.runtime import keep_freed_memory
    keep_freed_memory()
model = vitlab.create_model("vit_micro_patch2_8").eval()
opt = optimize_for_cpu_inference(model)
x = torch.randn(2, model.cfg.in_chans, 8, 8)
for m in (model, opt):
    with torch.no_grad(), quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        m(x)
    print("mkl::_mkl_linear" in {e.key for e in prof.key_averages()})
"""


@needs_mkl
@pytest.mark.parametrize("before", ["nothing", "cli", "malloc"])
def test_the_kernel_does_not_depend_on_what_ran_before(before):
    out = subprocess.run([sys.executable, "-c", _KERNEL, before], capture_output=True, text=True, check=True).stdout
    plain, optimized = out.split()[-2:]
    assert (plain, optimized) == ("False", "True")


@needs_mkl
@pytest.mark.parametrize("shape,bias", [((5, 16), True), ((2, 7, 16), False), ((2, 3, 4, 16), True)])
def test_packed_layer_equals_plain_linear(shape, bias):
    lin = optimize_for_cpu_inference(nn.Linear(16, 24, bias=bias))
    assert type(lin) is PackedLinear
    x = torch.randn(shape)
    with torch.no_grad():
        y = lin(x)
    assert _packed_count(lin) == 1
    torch.testing.assert_close(y, F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-6)
    assert y.shape == (*shape[:-1], 24)


@needs_mkl
def test_packed_weights_follow_the_weight_and_row_counts():
    lin = optimize_for_cpu_inference(nn.Linear(8, 8))
    x = torch.randn(4, 8)
    with torch.no_grad():
        lin(x)
        lin.weight.mul_(-2)  # an in-place update: packed again from the new weight
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias))
        lin.load_state_dict({"weight": torch.eye(8), "bias": torch.zeros(8)})
        torch.testing.assert_close(lin(x), x)
        torch.testing.assert_close(lin(x[:3]), x[:3])  # another batch size: its own packed weight
        assert sorted(lin._packed) == [3, 4]
        lin(x[:2])  # a third row count: the oldest is dropped, memory stays bounded
        assert sorted(lin._packed) == [2, 3]
        lin.weight.data.mul_(0.5)  # `.data` bypasses the version counter: the documented refresh is .eval()
        lin.eval()
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias))


@needs_mkl
def test_packed_weights_only_for_no_grad_cpu_float32_and_dropped_on_moves():
    lin = optimize_for_cpu_inference(nn.Linear(8, 8))
    x = torch.randn(4, 8)
    lin(x)  # autograd on: plain math
    assert _packed_count(lin) == 0
    with torch.no_grad():
        lin(x)
        assert _packed_count(lin) == 1
        lin.double()  # a dtype change drops them
        assert _packed_count(lin) == 0
        lin(x.double())  # MKL packs float32 only
        assert _packed_count(lin) == 0
        lin.float().to("cpu")(x)
        assert _packed_count(lin) == 1


@needs_mkl
def test_train_on_the_copy_is_plain_linear_and_eval_packs_the_new_weights():
    model = _model("convnext_micro_32")  # no dropout or drop path: train and eval outputs compare
    opt = optimize_for_cpu_inference(model)
    x = _images(model)
    with torch.no_grad():
        opt(x)
    opt.train()
    assert _packed_count(opt) == 0 and opt.training
    model.train()
    loss_opt, loss_plain = opt(x).square().sum(), model(x).square().sum()
    loss_opt.backward()
    loss_plain.backward()
    for (k, a), b in zip(opt.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=k)
    torch.optim.SGD(opt.parameters(), lr=0.1).step()
    opt.eval()
    reference = vitlab.create_model("convnext_micro_32").eval()
    reference.load_state_dict(opt.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(opt(x), reference(x), rtol=1e-5, atol=1e-6)
    assert _packed_count(opt) == _linears(model)


def test_without_mkl_the_copy_is_plain_linear(monkeypatch):
    monkeypatch.setattr("vitlab.runtime.mkl_packing_supported", lambda: False)
    model = _model("vit_micro_patch2_8")
    opt = optimize_for_cpu_inference(model)
    x = _images(model)
    with torch.no_grad():
        torch.testing.assert_close(opt(x), model(x), rtol=1e-5, atol=1e-6)
    assert _packed_count(opt) == 0


def test_optimize_names_its_argument():
    with pytest.raises(TypeError, match="optimize_for_cpu_inference\\(model\\).*dict"):
        optimize_for_cpu_inference({})


_MALLOC = """
import sys, contextlib, io
from vitlab.cli.main import main
from vitlab.runtime import allocator_tuned
assert not allocator_tuned()  # importing vitlab changes nothing
with contextlib.redirect_stdout(io.StringIO()):
    main(["models"])
print(allocator_tuned())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc setting")
@pytest.mark.parametrize("env,expected", [({}, "True"), ({"VITLAB_MALLOC": "default"}, "False")])
def test_the_command_sets_malloc_unless_told_not_to(env, expected):
    import os

    env = {k: v for k, v in os.environ.items() if k != "VITLAB_MALLOC"} | env
    out = subprocess.run([sys.executable, "-c", _MALLOC], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == expected
