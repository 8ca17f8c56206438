"""The CUDA kernels: built on first use with torch.utils.cpp_extension (ninja), cached.

Targets come from ``TORCH_CUDA_ARCH_LIST`` when set (the Dockerfile builds
8.0, 8.9 and 9.0 ahead of time), else from the visible GPU. Nothing is built at
import: only a call on CUDA tensors builds, so a machine without CUDA or nvcc
never builds anything.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from wina_vllm import envs

CSRC = Path(__file__).parent / "csrc"
SOURCES = ("torch_bindings.cpp", "kernels_bf16.cu", "kernels_fp16.cu", "lt_matmul.cpp",
           "linear_op.cpp")
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
            extra_ldflags=["-lcublasLt"],
            build_directory=str(out),
            is_python_module=False,
            verbose=envs.build_verbose(),
        )
    except Exception as exc:
        raise RuntimeError(
            f"wina: building the CUDA kernels in {out} failed ({exc}). They need nvcc and "
            "ninja matching torch's CUDA; set WINA_BUILD_VERBOSE=1 to see the compiler."
        ) from exc
    torch.library.register_fake("wina_C::linear", _linear_fake)


def _linear_fake(x, weight_t, bias, scale, thresholds, seg_ends, keep, topk, max_sparse_batch,
                 pdl):
    return x.new_empty(x.shape[0], seg_ends[-1])


def linear(x, weight_t, bias, col_scale, thresholds, seg_ends, keep, topk, max_sparse_batch,
           pdl) -> torch.Tensor:
    """``torch.ops.wina_C.linear``: the gated linear in C++ (csrc/linear_op.cpp), sparse for
    1..``max_sparse_batch`` tokens, else the tuned dense product. No Python runs inside
    it, and its inputs are checked once per layer when it loads (``check_inputs``); its
    counters are the ones ``register_layer`` recorded for ``weight_t``, so the op mutates
    none of its arguments (which keeps torch.compile from wrapping it)."""
    return torch.ops.wina_C.linear(x, weight_t, bias, col_scale, thresholds, seg_ends, keep,
                                   topk, max_sparse_batch, pdl)


def register_layer(weight_t: torch.Tensor, stats: torch.Tensor,
                   workspace: torch.Tensor) -> None:
    """Give ``linear`` the counters of the layer whose weight is ``weight_t`` (at load)."""
    load()
    torch.ops.wina_C.register_layer(weight_t, stats, workspace)


def set_dense_form(weight_t, seg_ends, tokens: int, has_bias: bool, form: str) -> None:
    """Tell ``wina_C.linear`` the dense form chosen for this shape at ``tokens``."""
    if form not in ("mm", "lt", "segments") and not (
            form.startswith("algo") and form[4:].isdigit()):
        raise _fail("form", repr(form), "mm, lt, segments or algo<i>", "set_dense_form")
    load()
    torch.ops.wina_C.set_dense_form(weight_t, list(seg_ends), tokens, has_bias, form)


MAX_TOKENS, MAX_SEGMENTS = 8, 4
SELECT_STATIC_SMEM = 8336  # bytes of static shared memory in the select kernel (ptxas, sm_90)


def _fail(name: str, got, want: str, op: str = "sparse_gemv") -> ValueError:
    return ValueError(f"wina {op}: {name} {got}; expected {want}")


def check_activations(x, col_scale, require_cuda: bool = True,
                      op: str = "sparse_gemv") -> tuple[int, int, int]:
    """x [M, K] and col_scale [S, K], as both kernels take them; returns (M, K, S)."""
    m, k = x.shape if x.dim() == 2 else (None, None)
    if m is None or (require_cuda and not x.is_cuda) or x.dtype not in DTYPES:
        raise _fail("x", f"{tuple(x.shape)} {x.dtype} on {x.device}", "[M, K] bf16/fp16 on CUDA",
                    op)
    if not 1 <= m <= MAX_TOKENS:
        raise _fail("token count", m, f"1..{MAX_TOKENS}", op)
    s = col_scale.shape[0] if col_scale.dim() == 2 else 0
    if (col_scale.dtype != torch.float32 or col_scale.dim() != 2 or col_scale.shape[1] != k
            or not 1 <= s <= MAX_SEGMENTS or col_scale.device != x.device):
        raise _fail("col_scale", f"{tuple(col_scale.shape)} {col_scale.dtype}",
                    f"[S <= {MAX_SEGMENTS}, K={k}] float32 on x's device", op)
    return m, k, s


def check_keep(keep, s: int, k: int, device, require_cuda: bool = True) -> None:
    """Top-k mode's own preconditions: one kept count per segment, and room for K scores
    in the select kernel's shared memory."""
    if len(keep) != s or not all(isinstance(v, int) for v in keep):
        raise _fail("keep", list(keep), f"{s} ints (channels kept per segment)",
                    "topk_thresholds")
    props = torch.cuda.get_device_properties(device) if require_cuda else None
    optin = getattr(props, "shared_memory_per_block_optin", 0)
    if optin and 4 * k > optin - SELECT_STATIC_SMEM:
        raise _fail("K", k, f"at most {(optin - SELECT_STATIC_SMEM) // 4} on this GPU (the select "
                    "kernel holds K scores in shared memory)", "topk_thresholds")


def check_inputs(x, weight_t, bias, col_scale, thresholds, stats, workspace, seg_ends,
                 require_cuda: bool = True) -> None:
    """The kernel's preconditions, checked in Python so a bad call raises ValueError.

    (The extension's own TORCH_CHECKs were seen to crash the process instead of raising
    on the H200 box, 2026-11-29; see benchmarks/RESULTS.md.) Costs microseconds, and only
    in eager calls: CUDA graphs replay the kernel without running this.
    """
    _, k, s = check_activations(x, col_scale, require_cuda)
    if (weight_t.dtype != x.dtype or weight_t.dim() != 2 or weight_t.shape[0] != k
            or weight_t.shape[1] % 8 or not weight_t.is_contiguous() or weight_t.device != x.device):
        raise _fail("weight_t", f"{tuple(weight_t.shape)} {weight_t.dtype}",
                    f"contiguous [K={k}, ldw % 8 == 0] {x.dtype} on x's device")
    if len(seg_ends) != s or list(seg_ends) != sorted(set(seg_ends)) or seg_ends[0] <= 0 \
            or seg_ends[-1] > weight_t.shape[1]:
        raise _fail("seg_ends", list(seg_ends), f"{s} increasing ends <= {weight_t.shape[1]}")
    if bias is not None and (bias.dtype != x.dtype or bias.numel() != seg_ends[-1]):
        raise _fail("bias", f"{tuple(bias.shape)} {bias.dtype}", f"[{seg_ends[-1]}] {x.dtype}")
    if thresholds.dtype != torch.float32 or thresholds.numel() != s:
        raise _fail("thresholds", f"{tuple(thresholds.shape)} {thresholds.dtype}",
                    f"[{s}] float32")
    if stats.dtype != torch.int64 or stats.numel() != 2 * s:
        raise _fail("stats", f"{tuple(stats.shape)} {stats.dtype}", f"[{s}, 2] int64")
    from wina_vllm.ops import workspace_size

    if workspace.dtype != torch.int32 or workspace.numel() < workspace_size(seg_ends):
        raise _fail("workspace", f"{tuple(workspace.shape)} {workspace.dtype}",
                    f"at least {workspace_size(seg_ends)} int32 counters")


def topk_thresholds(x: torch.Tensor, col_scale: torch.Tensor, keep: list[int],
                    pdl: bool | None = None) -> torch.Tensor:
    """[M, S] per-token k-th largest score per segment, computed on the device.

    ``pdl``: programmatic dependent launch; None takes ``WINA_PDL`` (on by default).
    """
    _, k, segments = check_activations(x, col_scale, op="topk_thresholds")
    check_keep(keep, segments, k, x.device)
    return _select(x, col_scale, keep, pdl)


def _select(x, col_scale, keep, pdl: bool | None) -> torch.Tensor:
    """The select kernel, on checked inputs."""
    load()
    return torch.ops.wina_C.topk_thresholds(
        x.contiguous(), col_scale, keep, envs.programmatic_launch() if pdl is None else pdl)


def sparse_gemv(x, weight_t, bias, col_scale, thresholds, stats, workspace, seg_ends, keep,
                topk, pdl: bool | None = None) -> torch.Tensor:
    """Fused gate + sparse GEMV for 1..8 tokens (see csrc/sparse_gemv.cuh).

    ``pdl``: programmatic dependent launch; None takes ``WINA_PDL`` (on by default).
    """
    check_inputs(x, weight_t, bias, col_scale, thresholds, stats, workspace, seg_ends)
    if topk:
        check_keep(keep, col_scale.shape[0], x.shape[1], x.device)
    thr = _select(x, col_scale, keep, pdl) if topk else thresholds
    load()
    return torch.ops.wina_C.sparse_gemv(x.contiguous(), weight_t, bias, col_scale, thr, topk,
                                        stats, workspace, seg_ends,
                                        envs.programmatic_launch() if pdl is None else pdl)


def check_lt_inputs(x, weight_t, n: int, require_cuda: bool = True) -> None:
    """``lt_algos``/``lt_matmul``'s preconditions, raised as ValueError here (see
    ``check_inputs`` for why not in the extension)."""
    if (x.dim() != 2 or (require_cuda and not x.is_cuda) or x.dtype not in DTYPES
            or not x.is_contiguous()):
        raise _fail("x", f"{tuple(x.shape)} {x.dtype} on {x.device}",
                    "contiguous [T, K] bf16/fp16 on CUDA", "lt_matmul")
    if (weight_t.dim() != 2 or weight_t.dtype != x.dtype or weight_t.shape[0] != x.shape[1]
            or not weight_t.is_contiguous() or weight_t.device != x.device):
        raise _fail("weight_t", f"{tuple(weight_t.shape)} {weight_t.dtype}",
                    f"contiguous [K={x.shape[1]}, ldw] {x.dtype} on x's device", "lt_matmul")
    if not 0 < n <= weight_t.shape[1]:
        raise _fail("n", n, f"1..{weight_t.shape[1]} (weight_t's row length)", "lt_matmul")


def lt_algos(x: torch.Tensor, weight_t: torch.Tensor, n: int) -> int:
    """How many cuBLASLt algorithms the heuristic offers for ``x @ weight_t[:, :n]``."""
    check_lt_inputs(x, weight_t, n)
    load()
    return torch.ops.wina_C.lt_algos(x, weight_t, n)


def lt_matmul(x: torch.Tensor, weight_t: torch.Tensor, n: int, algo: int) -> torch.Tensor:
    """``x @ weight_t[:, :n]`` by the ``algo``-th of those algorithms (csrc/lt_matmul.cpp)."""
    count = lt_algos(x, weight_t, n)  # cached per problem in the extension
    if not 0 <= algo < count:
        raise _fail("algo", algo, f"0..{count - 1}, the algorithms listed for this problem",
                    "lt_matmul")
    return torch.ops.wina_C.lt_matmul(x, weight_t, n, algo)
