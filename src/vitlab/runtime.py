"""Opt-in CPU speed-ups: a malloc setting for the process, and a model copy whose linear layers use packed weights.

Both are explicit calls; no layer reads a setting of this module inside its forward.

**malloc.** Profiling ViT-Ti/16 inference on a CPU (batch 8) shows up to a quarter of the time in first-touch page
faults, in timm, HF transformers and vitlab alike: glibc malloc hands blocks of a few MB (one layer's activations)
back to the operating system when they are freed and maps fresh, zero-filled pages for the next layer. Telling
malloc to keep freed memory makes every later activation reuse warm pages. This is what PyTorch's own CPU launcher
does by preloading jemalloc or tcmalloc; here it is two `mallopt` calls, so nothing has to be installed.
The `vitlab` command's `main()` applies it at start-up (``VITLAB_MALLOC=default`` there opts out); the library never
does: library users call `keep_freed_memory()` themselves. It affects the whole process: memory freed by one model is
reused by the next and the resident size stays at its peak instead of shrinking.

**Packed weights.** A matrix product on the CPU first copies the weight into the blocked layout its kernel reads
(MKL "packs" it), on every call. In inference the weight does not change, so `optimize_for_cpu_inference(model)`
returns an eval-mode copy whose `nn.Linear` layers are `PackedLinear`s: they pack each weight once per input row
count and reuse it (the packing `torch.compile` does when it freezes weights, here without compiling). Outputs equal
`nn.Linear`'s up to float32 rounding; earlier measurements gave 3-5% more throughput on ViT and ConvNeXt with the
malloc setting above, and slower than plain in fresh processes without it (page faults), so call
`keep_freed_memory()` first; `vitlab bench` measures the copy beside the plain model. The packed weights cost memory
for as long as the copy is used, more than the weights themselves: ViT-B/16 (330 MiB of weights), batch 8, the plain
model let go after copying, resident after inference: 1,073 MiB against 629 MiB plain with glibc's defaults; 1,411
against 703 with `keep_freed_memory()`, which also keeps the let-go weights. The original model is not touched.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import functools
import logging
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_KEEP = 1 << 30  # blocks below 1 GiB come from the heap, and up to 1 GiB of free heap is kept

_state = {"tuned": False}


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse; True when the setting is in force (glibc only)."""
    if _state["tuned"]:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _state["tuned"] = bool(mallopt(_M_MMAP_THRESHOLD, _KEEP)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP))
    return _state["tuned"]


def allocator_tuned() -> bool:
    """Whether `keep_freed_memory()` is in force in this process (for reports such as `vitlab bench`'s header)."""
    return _state["tuned"]


@functools.cache
def mkl_packing_supported() -> bool:
    """Whether this PyTorch build has MKL's packed linear ops (a fact of the build: checked once)."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


class PackedLinear(nn.Linear):
    """`nn.Linear` (same parameters and state-dict keys) that runs no-grad CPU float32 inference on packed weights.

    Made by `optimize_for_cpu_inference`, not by models. The packed weights are a cache, never state: one per input
    row count (at most `max_row_counts`, the oldest dropped first), rebuilt when the weight changes (in place under
    `torch.no_grad()`, or `load_state_dict`), dropped by `.train()`, `.eval()` (call it after editing `weight.data`,
    which the version counter does not see), `.to()`, `.cuda()`, `.float()` and other dtype or device moves, and left
    out of `state_dict`, pickles (`torch.save`) and `copy.deepcopy` (MKL's packed tensor has no storage to copy). In
    training mode, with autograd on, while compiling, without MKL, or for input that is not CPU float32, it is the
    plain `nn.Linear` computation.
    """

    max_row_counts = 2  # an evaluation of fixed-size batches plus a smaller last one packs twice, not more

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._packed: dict[int, torch.Tensor | None] = {}  # rows -> packed weight (None: MKL refused these rows)
        self._packed_from: tuple[int, int] | None = None  # (weight version, address) the cache was built from

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_packed"], state["_packed_from"] = {}, None
        return state

    def train(self, mode: bool = True) -> PackedLinear:
        self._drop_packed()  # `.eval()` too: the one refresh after an edit the version counter misses (`w.data.mul_`)
        return super().train(mode)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> PackedLinear:
        self._drop_packed()  # a new device or dtype: the packed copy describes the old weight
        return super()._apply(fn, recurse)

    def _drop_packed(self) -> None:
        self._packed, self._packed_from = {}, None

    def _packable(self, x: torch.Tensor) -> bool:
        w = self.weight
        return (
            not self.training
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and x.dim() >= 2
            and x.numel() > 0
            and type(w.data) is torch.Tensor  # not a DTensor shard
            and w.device.type == "cpu"
            and w.dtype == torch.float32
            and mkl_packing_supported()
        )

    def _packed_weight(self, rows: int) -> torch.Tensor | None:
        source = (self.weight._version, self.weight.data_ptr())
        if self._packed_from != source:  # load_state_dict or an in-place update changed the weight
            self._packed, self._packed_from = {}, source
        if rows not in self._packed:
            if len(self._packed) >= self.max_row_counts:
                del self._packed[next(iter(self._packed))]
            try:
                self._packed[rows] = torch.ops.mkl._mkl_reorder_linear_weight(self.weight.detach(), rows)
            except RuntimeError as e:  # an unexpected build or shape: plain math for these rows
                log.debug("MKL packing failed for %d rows (%s); using nn.Linear", rows, e)
                self._packed[rows] = None
        return self._packed[rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._packable(x):
            return F.linear(x, self.weight, self.bias)
        x2 = x.reshape(-1, self.in_features)  # (rows, in_features)
        rows = x2.shape[0]
        packed = self._packed_weight(rows)
        if packed is None:
            return F.linear(x, self.weight, self.bias)
        y = torch.ops.mkl._mkl_linear(x2, packed, self.weight, self.bias, rows)
        return y.view(*x.shape[:-1], self.out_features)


def optimize_for_cpu_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` whose `nn.Linear` layers are `PackedLinear`s; `model` itself is not changed.

    The copy has the original's state-dict keys and values, pickles and deep-copies like it, and computes the same
    outputs up to float32 rounding; packing pays off for no-grad CPU float32 inference (see the module docstring, and
    call `keep_freed_memory()` first). `.train()` on the copy is allowed and makes it an ordinary model again (plain
    `nn.Linear` math, correct gradients); `.eval()` brings packing back, recomputed from the current weights.
    Only layers whose type is exactly `nn.Linear` change (subclasses, such as `nn.MultiheadAttention`'s out-projection,
    keep their own code paths); hooks registered on them stay.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize_for_cpu_inference(model): expected an nn.Module, got {type(model).__name__}")
    if not mkl_packing_supported():
        log.info("this PyTorch build has no MKL packed linear ops: the optimized copy runs plain nn.Linear")
    opt = copy.deepcopy(model)
    for m in opt.modules():
        if type(m) is nn.Linear:
            m.__class__ = PackedLinear  # the same module (parameters, hooks, tied weights); forward/train/_apply differ
            m._drop_packed()
    return opt.eval()


@contextlib.contextmanager
def quiet_stderr():
    """Silence the profiler's C++ start/stop lines (written to file descriptor 2, beyond sys.stderr's reach)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
