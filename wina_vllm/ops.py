"""The ``wina::sparse_linear`` custom op: one gated linear, dense or sparse by batch size.

Architecture: a torch custom op with a device-agnostic reference implementation
(used on the CPU), a CUDA implementation that calls the fused gate + sparse GEMV
kernel for up to ``max_sparse_batch`` tokens, and a fake implementation for
torch.compile. The sparse-or-dense choice is made inside the op from the token
count, so a CUDA graph captured for one batch size replays the right path. Layers the
CUDA kernels cover call ``torch.ops.wina_C.linear`` instead (csrc/linear_op.cpp: the same
computation without Python on the way; see linear.py); this op serves the rest.

Constraints: ``weight_t`` is stored input-major, ``[K, ldw]`` with ``ldw`` the
output width rounded up to 8 (zero padded), so a kept input channel is one
contiguous row. ``seg_ends`` are the cumulative output widths of the projections
fused in the layer (q/k/v or gate/up), each with its own gate.
"""

from __future__ import annotations

import torch

from wina_vllm import gate
from wina_vllm.dense import dense_linear


def reference_sparse_linear(x, weight_t, bias, col_scale, thresholds, stats, seg_ends, keep,
                            topk):
    """Gate with torch ops, then the masked product; counts kept channels into ``stats``."""
    score = gate.scores(x, col_scale)
    thr = gate.topk_thresholds(score, keep) if topk else thresholds
    mask = gate.gate_mask(score, thr)
    stats[:, 0] += mask.sum(dim=(0, 2))
    stats[:, 1] += mask.shape[0] * mask.shape[2]
    return gate.masked_linear(x, weight_t, bias, mask, seg_ends)


def workspace_size(seg_ends: list[int]) -> int:
    """Int32 counters the CUDA kernel may use for a layer (one per 8 output columns)."""
    total, start = 0, 0
    for end in seg_ends:
        total += -(-(end - (start // 8) * 8) // 8)
        start = end
    return total


SCHEMA = ("sparse_linear(Tensor x, Tensor weight_t, Tensor? bias, Tensor col_scale, "
          "Tensor thresholds, Tensor(a!) stats, Tensor(b!) workspace, int[] seg_ends, "
          "int[] keep, bool topk, int max_sparse_batch, bool sparse_large_batch) -> Tensor")


def _sparse_linear_torch(x, weight_t, bias, col_scale, thresholds, stats, workspace, seg_ends,
                       keep, topk, max_sparse_batch, sparse_large_batch):
    """WINA-gated ``x @ weight_t[:, :N] + bias`` in torch ops, on any device (see the schema).

    x: [M, K]; weight_t: [K, ldw]; bias: [N] or None; col_scale: [S, K] float32;
    thresholds: [S] float32 (threshold mode; below ``gate.MIN_SCORE`` counts as it); stats:
    [S, 2] int64, adds (kept, seen) channel counts of sparse calls; workspace: [workspace_size] int32
    zeros, counters the CUDA kernel leaves zero again; seg_ends: S cumulative widths,
    N = seg_ends[-1]; keep: channels kept per segment (top-k mode, ``topk``).
    Steps of more than ``max_sparse_batch`` tokens run dense unless
    ``sparse_large_batch`` (sparse prefill, for accuracy evaluation).
    """
    if x.shape[0] == 0 or (x.shape[0] > max_sparse_batch and not sparse_large_batch):
        return dense_linear(x, weight_t, bias, seg_ends)
    return reference_sparse_linear(x, weight_t, bias, col_scale, thresholds, stats, seg_ends,
                                   keep, topk)


def _sparse_linear_cuda(x, weight_t, bias, col_scale, thresholds, stats, workspace, seg_ends,
                        keep, topk, max_sparse_batch, sparse_large_batch):
    from wina_vllm import kernels

    if 0 < x.shape[0] <= max_sparse_batch and x.dtype in kernels.DTYPES:
        return kernels.sparse_gemv(x, weight_t, bias, col_scale, thresholds, stats, workspace,
                                   seg_ends, keep, topk)
    # Everything else (large steps, dtypes the kernel lacks such as float32) as on the CPU,
    # so a small float32 step is gated, not silently dense.
    return _sparse_linear_torch(x, weight_t, bias, col_scale, thresholds, stats, workspace,
                                seg_ends, keep, topk, max_sparse_batch, sparse_large_batch)


def _sparse_linear_fake(x, weight_t, bias, col_scale, thresholds, stats, workspace, seg_ends,
                        keep, topk, max_sparse_batch, sparse_large_batch):
    return x.new_empty(x.shape[0], seg_ends[-1])


# Registered with torch.library.Library rather than torch.library.custom_op: the latter's
# Python dispatch layer cost 82 us per call against 14 us here (2-core CPU, 2026-11-29),
# paid on every linear of every step that is not a CUDA graph replay (prefill, and every
# step of an eager or piecewise-compiled engine). vLLM registers its own ops the same way.
_LIBRARY = torch.library.Library("wina", "DEF")
_LIBRARY.define(SCHEMA)
_LIBRARY.impl("sparse_linear", _sparse_linear_torch, "CPU")
_LIBRARY.impl("sparse_linear", _sparse_linear_cuda, "CUDA")
torch.library.register_fake("wina::sparse_linear", _sparse_linear_fake, lib=_LIBRARY)
sparse_linear = torch.ops.wina.sparse_linear
