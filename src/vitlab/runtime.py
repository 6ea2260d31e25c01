"""Process-level settings that decide CPU speed before any kernel runs.

Profiling ViT-Ti/16 inference on a CPU (batch 8) shows up to a quarter of the time in first-touch page
faults, in timm, HF transformers and vitlab alike: glibc malloc hands blocks of a few MB (one layer's activations)
back to the operating system when they are freed and maps fresh, zero-filled pages for the next layer. Telling
malloc to keep freed memory makes every later activation reuse warm pages. This is what PyTorch's own CPU launcher
does by preloading jemalloc or tcmalloc; here it is two `mallopt` calls, so nothing has to be installed.

The `vitlab` command applies it at start-up (set ``VITLAB_MALLOC=default`` to opt out); library users can call
`keep_freed_memory()` themselves. It affects the whole process: memory freed by one model is reused by the next
and the resident size stays at its peak instead of shrinking.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_KEEP = 1 << 30  # blocks below 1 GiB come from the heap, and up to 1 GiB of free heap is kept

_state = {"tuned": False}


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse; True when the setting is in force (glibc only)."""
    if _state["tuned"]:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("VITLAB_MALLOC", "") == "default":
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
    return _state["tuned"]


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
