"""The CUDA kernels: built on first use with torch.utils.cpp_extension (ninja), cached.

Targets come from ``TORCH_CUDA_ARCH_LIST`` when set (the Dockerfile builds
8.0, 8.9 and 9.0 ahead of time), else from the visible GPU. Only the CUDA
implementation of ``wina::sparse_linear`` imports this module, so a machine
without CUDA or nvcc never builds anything.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from wina_vllm import envs

CSRC = Path(__file__).parent / "csrc"
SOURCES = ("torch_bindings.cpp", "kernels_bf16.cu", "kernels_fp16.cu")
DTYPES = (torch.bfloat16, torch.float16)  # others run the op's torch reference


@functools.cache
def load() -> None:
    """Build (or reuse) the extension and register ``torch.ops.wina_C``."""
    from torch.utils.cpp_extension import load as load_extension

    out = envs.build_dir()
    out.mkdir(parents=True, exist_ok=True)
    try:
        load_extension(
            name="wina_C",
            sources=[str(CSRC / s) for s in SOURCES],
            extra_cflags=["-O3", "-std=c++17"],
            extra_cuda_cflags=["-O3", "-std=c++17", "-lineinfo",
                               "-Xptxas=-v" if envs.build_verbose() else "-Xptxas=-O3"],
            build_directory=str(out),
            is_python_module=False,
            verbose=envs.build_verbose(),
        )
    except Exception as exc:
        raise RuntimeError(
            f"wina: building the CUDA kernels in {out} failed ({exc}). They need nvcc and "
            "ninja matching torch's CUDA; set WINA_BUILD_VERBOSE=1 to see the compiler."
        ) from exc


def topk_thresholds(x: torch.Tensor, col_scale: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """[M, S] per-token k-th largest score per segment, computed on the device."""
    load()
    return torch.ops.wina_C.topk_thresholds(x.contiguous(), col_scale, keep)


def sparse_gemv(x, weight_t, bias, col_scale, thresholds, stats, workspace, seg_ends, keep,
                topk) -> torch.Tensor:
    """Fused gate + sparse GEMV for 1..8 tokens (see csrc/sparse_gemv.cuh)."""
    thr = topk_thresholds(x, col_scale, keep) if topk else thresholds
    load()
    return torch.ops.wina_C.sparse_gemv(x.contiguous(), weight_t, bias, col_scale, thr, topk,
                                        stats, workspace, seg_ends)
