"""Every WINA_* environment variable, typed and documented, in one place."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch


def build_dir() -> Path:
    """WINA_BUILD_DIR: where the CUDA extension is built and cached.

    Default: ``~/.cache/wina-vllm/torch-<version>``, one per torch build, because an
    extension only loads into the torch it was compiled against.
    """
    default = Path.home() / ".cache" / "wina-vllm" / f"torch-{torch.__version__}"
    return Path(os.environ.get("WINA_BUILD_DIR", str(default)))


def build_verbose() -> bool:
    """WINA_BUILD_VERBOSE=1: print the compiler's commands and output."""
    return os.environ.get("WINA_BUILD_VERBOSE", "0") == "1"


@functools.cache
def programmatic_launch() -> bool:
    """WINA_PDL=0: launch the kernels without programmatic dependent launch.

    On by default (sm_90 only): a kernel's launch overlaps the previous kernel's tail
    (the sparse GEMV's where its grid fills the GPU, the top-k select kernel's always).
    Read once per process; the switch exists for A/B measurements and as a way out if a
    driver mishandles it.
    """
    value = os.environ.get("WINA_PDL", "1")
    if value not in ("0", "1"):
        raise ValueError(f"WINA_PDL={value!r}; accepted: '0' (off) or '1' (on, the default)")
    return value == "1"


@functools.cache
def native_op() -> bool:
    """WINA_NATIVE_OP=0: run every layer through the Python-dispatched op.

    On by default: layers the CUDA kernels cover run ``wina_C.linear``, all in C++, which
    saves 5-50 us of host time per call on steps outside CUDA graphs. The switch exists
    for A/B measurements and as a way out. Read once per process.
    """
    value = os.environ.get("WINA_NATIVE_OP", "1")
    if value not in ("0", "1"):
        raise ValueError(f"WINA_NATIVE_OP={value!r}; accepted: '0' (off) or '1' (on, the "
                         "default)")
    return value == "1"
