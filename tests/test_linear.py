"""The packed-weight inference path of `vitlab.layers.Linear`: same numbers as nn.Linear, never stale."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from vitlab.layers import Linear, set_packed_inference
from vitlab.layers.linear import mkl_packing_supported
from vitlab.runtime import keep_freed_memory

pytestmark = pytest.mark.skipif(not mkl_packing_supported(), reason="PyTorch built without MKL")


@pytest.fixture(autouse=True)
def _kept_memory():
    # the packed path needs malloc to keep freed memory (what the vitlab command sets); process-wide, harmless here
    if not keep_freed_memory():
        pytest.skip("needs glibc malloc")


@pytest.mark.parametrize("shape,bias", [((5, 16), True), ((2, 7, 16), False), ((2, 3, 4, 16), True)])
def test_packed_equals_plain_linear(shape, bias):
    torch.manual_seed(0)
    lin = Linear(16, 24, bias=bias)
    x = torch.randn(shape)
    with torch.no_grad():
        y = lin(x)
    assert lin._packed is not None  # the packed path ran
    torch.testing.assert_close(y, F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-6)
    assert y.shape == (*shape[:-1], 24)


def test_packed_copy_follows_weight_changes_and_row_counts():
    torch.manual_seed(0)
    lin = Linear(8, 8)
    x = torch.randn(4, 8)
    with torch.no_grad():
        lin(x)
        lin.weight.mul_(-2)  # an optimiser step or load_state_dict changes the weight in place
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias))
        lin.load_state_dict({"weight": torch.eye(8), "bias": torch.zeros(8)})
        torch.testing.assert_close(lin(x), x)
        torch.testing.assert_close(lin(x[:3]), x[:3])  # another batch size: packed again for 3 rows
        assert lin._packed[0][0] == 3


def test_packed_path_only_without_autograd_and_when_enabled():
    lin = Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    lin(x).sum().backward()  # training: the ordinary nn.Linear, with gradients
    assert lin._packed is None and x.grad is not None
    set_packed_inference(False)
    try:
        with torch.no_grad():
            lin(x)
        assert lin._packed is None
    finally:
        set_packed_inference(True)
    with torch.no_grad():
        lin.bfloat16()(x.bfloat16())  # MKL packs float32 only
        assert lin._packed is None
        lin.float()(x)
    assert lin._packed is not None


def test_no_packing_while_malloc_returns_freed_memory():
    # with glibc's default settings the packed kernel is slower than nn.Linear, so it stays off
    code = (
        "import torch; from vitlab.layers import Linear; lin = Linear(8, 8)\n"
        "with torch.no_grad(): lin(torch.randn(4, 8))\n"
        "print(lin._packed is None)"
    )
    env = {**os.environ, "VITLAB_MALLOC": "default"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "True"
