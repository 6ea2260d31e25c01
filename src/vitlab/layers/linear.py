"""`nn.Linear` with pre-packed weights for CPU inference.

A matrix product on the CPU first copies the weight into the blocked layout its kernel reads (MKL "packs" it), on
every call. In inference the weight does not change, so `Linear` packs it once per weight version and input row
count and reuses that copy: 3-5% more throughput on ViT and ConvNeXt, the same numbers up to float32 rounding.
This is the packing `torch.compile` does when it freezes weights, here without compiling.

The packed path runs only where it applies: CPU, float32, no autograd, not while compiling, an MKL build of PyTorch,
plain (unsharded) weights, and malloc keeping freed memory (`vitlab.runtime.keep_freed_memory`, which the `vitlab`
command sets): with glibc's default settings it measured slower than the plain kernel in fresh processes (page
faults). Anything else is the ordinary `nn.Linear`. The packed copy costs the weight's memory
again while the model is used for inference; `set_packed_inference(False)` or ``VITLAB_PACKED_LINEAR=0`` turns the
path off.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import nn

from vitlab.runtime import allocator_tuned

log = logging.getLogger(__name__)

_enabled = {"on": os.environ.get("VITLAB_PACKED_LINEAR", "1") != "0"}


def set_packed_inference(enabled: bool) -> None:
    """Turn the packed-weight inference path on or off for every vitlab `Linear` in this process."""
    _enabled["on"] = enabled


@functools.cache
def mkl_packing_supported() -> bool:
    """Whether this PyTorch build has MKL's packed linear ops (fixed for the process: checked once)."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def packed_inference_available() -> bool:
    return _enabled["on"] and allocator_tuned() and mkl_packing_supported()


class Linear(nn.Linear):
    """Drop-in `nn.Linear` (same parameters and state-dict keys) with the packed inference path described above."""

    _packed: tuple[tuple, torch.Tensor] | None = None  # ((rows, weight version, weight address), packed weight)

    def _use_packed(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and type(self.weight.data) is torch.Tensor  # not a DTensor shard
            and self.weight.dtype == torch.float32
            and x.dim() >= 2
            and x.numel() > 0
            and packed_inference_available()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_packed(x):
            return super().forward(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        rows = x2.shape[0]
        key = (rows, self.weight._version, self.weight.data_ptr())
        if self._packed is None or self._packed[0] != key:
            try:
                packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight.detach(), rows)
            except RuntimeError as e:  # an unexpected build: fall back for good, once
                log.debug("packed linear unavailable (%s); using nn.Linear", e)
                set_packed_inference(False)
                return super().forward(x)
            self._packed = (key, packed)
        y = torch.ops.mkl._mkl_linear(x2, self._packed[1], self.weight, self.bias, rows)
        return y.view(*lead, self.out_features)
