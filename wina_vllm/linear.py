"""WinaLinearMethod: the gated linear for one attention or MLP projection.

Architecture: ``create_weights`` makes the usual ``[N, K]`` weight so vLLM's
loaders (TP sharding, fused q/k/v and gate/up shards) work unchanged.
``process_weights_after_loading`` computes the column norms of the full,
unsharded matrix per fused projection, then replaces the weight by its
input-major transpose ``[K, ldw]`` (``ldw`` = N rounded up to 8). ``apply`` only
calls the op, which decides dense or sparse: ``torch.ops.wina_C.linear`` (all C++)
where the CUDA kernels cover the layer (bf16/fp16 on a GPU, dense prefill), else
``torch.ops.wina.sparse_linear`` (Python; the CPU, float32, sparse prefill).

Constraints: column norms are all-reduced over TP for column-parallel layers
(qkv, gate_up); row-parallel layers (o, down) hold whole columns, and their
signature (mean column norm) is summed over TP to match the whole matrix's.

Limitations: in top-k mode under TP > 1, row-parallel layers pick the top-k of
their own input shard (k/tp each); threshold mode is exactly shard-invariant.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from wina_vllm import dense, envs, gate, kernels, metrics
from wina_vllm.compat import (
    LinearMethodBase,
    ModelWeightParameter,
    RowParallelLinear,
    all_reduce_sum,
    cudagraph_token_counts,
    get_logger,
    max_batched_tokens,
    set_weight_attrs,
)
from wina_vllm.layers import TargetLinear
from wina_vllm.packing import pack_linear

if TYPE_CHECKING:
    from wina_vllm.config import WinaConfig

_log = get_logger(__name__)


MAX_TUNED_TOKENS = 16384  # gate_up of Llama-3-8B: a 0.9 GB output at this size


def mean_column_norms(norms: torch.Tensor, row_parallel: bool) -> torch.Tensor:
    """[S] mean column norm of each projection's whole matrix (a calibration file's weight
    signature) from this rank's [S, K] norms: under TP a row-parallel layer holds a slice of
    the columns, so its sums and counts are added over the group."""
    if not row_parallel:
        return norms.mean(dim=1)
    totals = all_reduce_sum(torch.stack([norms.sum(dim=1),
                                         torch.full_like(norms[:, 0], norms.shape[1])], dim=1))
    return totals[:, 0] / totals[:, 1]


class WinaLinearMethod(LinearMethodBase):
    """Gated linear for the projections of one fused vLLM linear."""

    def __init__(self, config: "WinaConfig", target: TargetLinear, sparsities: list[float]):
        self.config = config
        self.target = target
        self.sparsities = sparsities

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs) -> None:
        if len(output_partition_sizes) != len(self.target.projections):
            raise ValueError(
                f"wina: {self.target.name} of layer {self.target.layer_index} has "
                f"{len(output_partition_sizes)} output parts, expected one per projection "
                f"{self.target.projections}")
        weight_loader = extra_weight_attrs.pop("weight_loader")
        weight = ModelWeightParameter(
            data=torch.empty(sum(output_partition_sizes), input_size_per_partition,
                             dtype=params_dtype),
            input_dim=1, output_dim=0, weight_loader=weight_loader)
        layer.register_parameter("weight", weight)
        set_weight_attrs(weight, extra_weight_attrs)
        layer.wina_segment_sizes = list(output_partition_sizes)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        row_parallel = isinstance(layer, RowParallelLinear)
        packed = pack_linear(layer.weight.data, layer.wina_segment_sizes,
                             self.config.settings.criterion,
                             (lambda t: t) if row_parallel else all_reduce_sum,
                             self.target.projections)
        self.config.check_signature(self.target, mean_column_norms(packed.norms, row_parallel))
        k = packed.weight_t.shape[0]
        layer.weight = torch.nn.Parameter(packed.weight_t, requires_grad=False)
        layer.register_buffer("wina_scale", packed.scale, persistent=False)
        layer.register_buffer("wina_thresholds", torch.tensor(
            self.config.thresholds(self.target), dtype=torch.float32,
            device=packed.weight_t.device), persistent=False)
        layer.register_buffer("wina_stats", packed.stats, persistent=False)
        layer.register_buffer("wina_workspace", packed.workspace, persistent=False)
        layer.wina_seg_ends = packed.seg_ends
        layer.wina_keep = gate.keep_counts(k, self.sparsities)
        layer.wina_projections = self.target.projections
        metrics.track(self.target.layer_index, self.target.name, layer)
        layer.wina_native = self._use_native_op(layer)
        layer.wina_pdl = envs.programmatic_launch()
        self._tune_dense_path(layer, packed)
        self.config.report_ready(self.target, self.sparsities, layer.wina_native)

    @staticmethod
    def _applied_bias(layer: torch.nn.Module) -> torch.Tensor | None:
        """The bias apply() will receive: vLLM's row-parallel layers add it on rank 0 only."""
        passes_bias = not getattr(layer, "skip_bias_add", False) and (
            not isinstance(layer, RowParallelLinear) or getattr(layer, "tp_rank", 0) == 0)
        return getattr(layer, "bias", None) if passes_bias else None

    def _use_native_op(self, layer: torch.nn.Module) -> bool:
        """Whether ``wina_C.linear`` covers this layer: CUDA bf16/fp16 weights and dense
        prefill (sparse prefill of long steps and other dtypes take the torch reference
        gate). Its inputs are checked here, once, since it does not check them per call."""
        wt = layer.weight
        if (not wt.is_cuda or wt.dtype not in kernels.DTYPES or not envs.native_op()
                or self.config.settings.prefill == "sparse"):
            return False
        kernels.load()
        probe = torch.empty(1, wt.shape[0], dtype=wt.dtype, device=wt.device)
        kernels.check_inputs(probe, wt, self._applied_bias(layer), layer.wina_scale,
                             layer.wina_thresholds, layer.wina_stats, layer.wina_workspace,
                             layer.wina_seg_ends)
        if self.config.settings.mode == "topk":
            kernels.check_keep(layer.wina_keep, len(layer.wina_seg_ends), wt.shape[0], wt.device)
        kernels.register_layer(wt, layer.wina_stats, layer.wina_workspace)
        return True

    def _tune_dense_path(self, layer: torch.nn.Module, packed) -> None:
        """Time the dense product's forms at the decode steps' CUDA-graph sizes that run dense
        (once per layer shape; see dense.py) and log where one beats cuBLAS's default."""
        settings = self.config.settings
        if not packed.weight_t.is_cuda or settings.prefill == "sparse":
            return
        bias = self._applied_bias(layer)
        # Decode steps are padded to the CUDA-graph sizes; long prompts are prefilled in
        # steps of the scheduler's full token budget (tuned up to MAX_TUNED_TOKENS: the
        # tuner holds a few outputs of that size at once while the model loads).
        budget = max_batched_tokens() or 0
        counts = [m for m in cudagraph_token_counts() + [budget]
                  if settings.max_sparse_batch < m <= MAX_TUNED_TOKENS]
        start = time.perf_counter()
        chosen = dense.tune(packed.weight_t, bias, packed.seg_ends, counts)
        if chosen:
            _log.info("wina: dense product of %s (K=%d, N=%d) at %s tokens: %s "
                      "(tuned in %.1f s)", self.target.name, packed.weight_t.shape[0], packed.n,
                      sorted(chosen), [chosen[m] for m in sorted(chosen)],
                      time.perf_counter() - start)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        settings = self.config.settings
        x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        topk = settings.mode == "topk"
        if layer.wina_native:
            y = kernels.linear(x2, layer.weight, bias, layer.wina_scale, layer.wina_thresholds,
                               layer.wina_seg_ends, layer.wina_keep, topk,
                               settings.max_sparse_batch, layer.wina_pdl)
        else:
            y = torch.ops.wina.sparse_linear(
                x2, layer.weight, bias, layer.wina_scale, layer.wina_thresholds,
                layer.wina_stats, layer.wina_workspace, layer.wina_seg_ends, layer.wina_keep,
                topk, settings.max_sparse_batch, settings.prefill == "sparse")
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1])
