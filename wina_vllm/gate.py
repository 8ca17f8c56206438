"""The WINA gate, in plain torch: criterion, column scales, thresholds and masks.

This is the reference the CUDA kernel must match bit for bit on the mask:
the score of input channel ``i`` for segment ``s`` is ``float32(|x_i|) * c[s, i]``
with ``c`` the L2 norm of weight column ``i`` of that segment (WINA) or 1 (TEAL),
and a channel is kept when its score is ``>=`` the threshold raised to at least
``MIN_SCORE``: a zero score is never kept, whatever threshold a caller passes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from wina_vllm.settings import uses_norms


# The lowest threshold the gate applies (the comparison raises any lower one to it): a
# channel with x_i = 0 adds nothing to the product, so it is never read. vLLM pads
# CUDA-graph steps with such rows (on the H200, speculative decoding's verification steps
# fed the gate all-zero tokens); under ">= 0" one kept every channel, so the step read the
# whole weight for it.
MIN_SCORE = torch.finfo(torch.float32).tiny


def criterion_scale(norms: torch.Tensor, criterion: str, projection: str | None) -> torch.Tensor:
    """One projection's score scale under ``criterion``: its column norms, or ones where
    the criterion scores that projection by ``|x|`` alone (TEAL; wina-k-gate off k, gate)."""
    return norms if uses_norms(criterion, projection) else torch.ones_like(norms)


def column_scales(
    weight: torch.Tensor,
    segment_sizes: Sequence[int],
    criterion: str,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> torch.Tensor:
    """Per-segment column norms of ``weight`` ([N, K], rows are outputs) -> [S, K] float32.

    ``reduce_sum`` sums the squared norms over tensor-parallel shards of the output
    dimension (column-parallel layers), so each rank sees the norms of the full,
    unsharded matrix. Row-parallel layers hold whole columns and pass the identity.
    """
    k = weight.shape[1]
    if criterion == "teal":
        return torch.ones(len(segment_sizes), k, dtype=torch.float32, device=weight.device)
    if criterion != "wina":
        raise ValueError(f"criterion: got {criterion!r}; accepted: 'wina' or 'teal'")
    squares = torch.stack([
        part.to(torch.float64).square().sum(dim=0)
        for part in torch.split(weight, list(segment_sizes), dim=0)
    ])
    return reduce_sum(squares).sqrt().to(torch.float32)


def scores(x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[M, K] activations and [S, K] scales -> [M, S, K] float32 scores."""
    return x.abs().to(torch.float32).unsqueeze(1) * scales.unsqueeze(0)


def keep_counts(k: int, sparsities: Sequence[float]) -> list[int]:
    """Channels kept per segment for top-k gating at the given sparsities."""
    return [min(k, max(0, round((1.0 - s) * k))) for s in sparsities]


def topk_thresholds(score: torch.Tensor, keep: Sequence[int]) -> torch.Tensor:
    """[M, S, K] scores -> [M, S] k-th largest score per token and segment.

    ``gate_mask`` then keeps exactly ``keep[s]`` channels unless scores tie, or fewer
    than ``keep[s]`` are nonzero (it never keeps a zero score). ``keep == 0`` gives +inf
    (nothing kept), ``keep >= K`` 0 (every nonzero channel kept).
    """
    m, s, k = score.shape
    out = torch.empty(m, s, dtype=torch.float32, device=score.device)
    for j, n_keep in enumerate(keep):
        if n_keep <= 0:
            out[:, j] = float("inf")
        elif n_keep >= k:
            out[:, j] = 0.0
        else:
            out[:, j] = torch.topk(score[:, j], n_keep, dim=-1, sorted=True).values[:, -1]
    return out


def gate_mask(score: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """[M, S, K] scores and [M, S] (or [S]) thresholds -> [M, S, K] keep mask.

    Thresholds below ``MIN_SCORE`` count as ``MIN_SCORE`` (a NaN one keeps nothing, as in
    the kernel), so no threshold source can make the gate keep a zero score."""
    if thresholds.dim() == 1:
        thresholds = thresholds.unsqueeze(0)
    return score >= thresholds.clamp_min(MIN_SCORE).unsqueeze(-1)


def masked_linear(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor,
    seg_ends: Sequence[int],
) -> torch.Tensor:
    """y[:, seg s] = (x * mask[:, s]) @ weight_t[:, seg s] (+ bias), in x's dtype."""
    parts, start = [], 0
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    for j, end in enumerate(seg_ends):
        xm = torch.where(mask[:, j], x, zero)
        w = weight_t[:, start:end]
        parts.append(torch.mm(xm, w) if bias is None else torch.addmm(bias[start:end], xm, w))
        start = end
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
