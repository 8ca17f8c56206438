"""Pack a linear for the op: input-major weight, column scales, segment bounds, buffers.

One function does it for the plugin (``process_weights_after_loading``), the tests
and the benchmarks, so they all run the op on the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from wina_vllm import gate, ops


@dataclass
class PackedLinear:
    weight_t: torch.Tensor  # [K, ldw], ldw = N rounded up to 8, zero padded
    scale: torch.Tensor  # [S, K] float32: criterion scale per segment
    norms: torch.Tensor  # [S, K] float32: WINA column norms (the weight signature)
    seg_ends: list[int]  # cumulative output widths
    stats: torch.Tensor  # [S, 2] int64 (kept, seen) counters
    workspace: torch.Tensor  # int32 kernel counters, zero

    @property
    def n(self) -> int:
        return self.seg_ends[-1]


def transpose_padded(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [K, ldw] input-major copy, ldw = N rounded up to 8 (16-byte rows)."""
    n, k = weight.shape
    weight_t = torch.zeros(k, -(-n // 8) * 8, dtype=weight.dtype, device=weight.device)
    weight_t[:, :n] = weight.t()
    return weight_t


def pack_linear(weight: torch.Tensor, segment_sizes: Sequence[int], criterion: str,
                reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
                projections: Sequence[str] | None = None) -> PackedLinear:
    """Pack ``weight`` ([N, K], rows are outputs; it may be freed afterwards).

    ``projections`` names the segments (e.g. q, k, v); a criterion that uses column norms
    on some projections only ("wina-k-gate") needs them.
    """
    norms = gate.column_scales(weight, segment_sizes, "wina", reduce_sum)
    names = projections if projections is not None else [None] * len(norms)
    scale = torch.stack([gate.criterion_scale(n, criterion, p) for n, p in zip(norms, names)])
    seg_ends = torch.tensor(list(segment_sizes)).cumsum(0).tolist()
    device = weight.device
    return PackedLinear(
        weight_t=transpose_padded(weight),
        scale=scale.contiguous(),
        norms=norms,
        seg_ends=seg_ends,
        stats=torch.zeros(len(seg_ends), 2, dtype=torch.int64, device=device),
        workspace=torch.zeros(ops.workspace_size(seg_ends), dtype=torch.int32, device=device),
    )
