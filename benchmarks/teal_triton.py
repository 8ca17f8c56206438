"""TEAL-style peer baseline: a split-K Triton sparse GEMV, written here.

Like TEAL's kernel: the weight is input-major, a program owns a (BLOCK_K, BLOCK_N)
tile, loads only the rows whose |x| passes the threshold, reduces over its K rows
and adds its partial into an fp32 output with one atomic per column. Unlike TEAL
it takes bf16 and any token count (the rows any token keeps are read once).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CONFIGS = [(64, 128), (128, 64), (32, 256), (128, 128), (256, 32)]  # (BLOCK_K, BLOCK_N)


@triton.jit
def _teal_splitk(x_ptr, w_ptr, out_ptr, thr, K, N, ldw, M: tl.constexpr,
                 BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    in_k = offs_k < K
    any_keep = tl.zeros([BLOCK_K], dtype=tl.int1)
    for m in tl.static_range(M):
        xm = tl.load(x_ptr + m * K + offs_k, mask=in_k, other=0.0).to(tl.float32)
        any_keep = any_keep | (tl.abs(xm) >= thr)
    w = tl.load(w_ptr + offs_k[:, None] * ldw + offs_n[None, :],
                mask=(any_keep & in_k)[:, None] & (offs_n[None, :] < N), other=0.0)
    for m in tl.static_range(M):
        xm = tl.load(x_ptr + m * K + offs_k, mask=in_k, other=0.0).to(tl.float32)
        xm = tl.where(tl.abs(xm) >= thr, xm, 0.0)
        acc = tl.sum(xm[:, None] * w.to(tl.float32), axis=0)
        tl.atomic_add(out_ptr + m * N + offs_n, acc, mask=offs_n < N)


def teal_sparse_gemv(x: torch.Tensor, weight_t: torch.Tensor, n: int, threshold: float,
                     config: tuple[int, int] = (64, 128)) -> torch.Tensor:
    """y = (x * (|x| >= threshold)) @ weight_t[:, :n], in x's dtype."""
    m, k = x.shape
    block_k, block_n = config
    out = torch.zeros(m, n, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    _teal_splitk[grid](x, weight_t, out, threshold, k, n, weight_t.shape[1], M=m,
                       BLOCK_K=block_k, BLOCK_N=block_n)
    return out.to(x.dtype)
