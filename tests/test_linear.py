"""The packed-weight inference path of `vitlab.layers.Linear`: same numbers as nn.Linear, never stale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitlab.layers import Linear, set_packed_inference
from vitlab.layers.linear import packed_inference_available

pytestmark = pytest.mark.skipif(not packed_inference_available(), reason="PyTorch built without MKL")


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
