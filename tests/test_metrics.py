"""Realized sparsity as Prometheus sees it, from the op's own counters (no engine)."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import CollectorRegistry

from wina_vllm import metrics, ops
from wina_vllm.packing import pack_linear


def _scrape() -> dict[tuple[str, ...], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.SparsityCollector())
    samples = {}
    for family in registry.collect():
        for s in family.samples:
            key = tuple(s.labels.get(k) for k in ("layer", "linear", "projection"))
            samples[(s.name, *key)] = s.value
    return samples


def test_collector_reports_the_ops_counts():
    torch.manual_seed(0)
    segments = [48, 16, 16]
    packed = pack_linear(torch.randn(sum(segments), 64), segments, "wina")
    layer = torch.nn.Module()
    layer.wina_stats, layer.wina_projections = packed.stats, ("q", "k", "v")
    layer.weight = torch.nn.Parameter(packed.weight_t, requires_grad=False)
    metrics.track(7, "qkv_proj", layer)
    keep = [16, 32, 48]  # of 64 channels: sparsity 0.75, 0.5, 0.25
    for m in (2, 3, 1):
        ops.reference_sparse_linear(torch.randn(m, 64), packed.weight_t, None, packed.scale,
                                    torch.zeros(3), packed.stats, packed.seg_ends, keep, True)
    ops.sparse_linear(torch.randn(5, 64), packed.weight_t, None, packed.scale, torch.zeros(3),
                      packed.stats, packed.workspace, packed.seg_ends, keep, True, 4, False)
    got = _scrape()
    assert got[("wina_sparse_tokens_total", None, None, None)] == 6  # the dense 5 not counted
    for proj, k in zip("qkv", keep):
        assert got[("wina_kept_channels_total", "7", "qkv_proj", proj)] == 6 * k
        assert got[("wina_seen_channels_total", "7", "qkv_proj", proj)] == 6 * 64
        assert abs(got[("wina_realized_sparsity", "7", "qkv_proj", proj)] - (1 - k / 64)) < 1e-12
    model = torch.nn.ModuleDict({"l": layer})
    assert metrics.realized_sparsity(model)["l"]["k"] == 0.5
    assert metrics.sparse_tokens(model) == 6
    metrics.reset()  # what the worker does once warmed up: counting starts again
    assert metrics.sparse_tokens(model) == 0 and packed.stats.abs().sum() == 0
    assert got[("wina_sparse_tokens_total", None, None, None)] == 6  # the scrape was a copy
    assert _scrape()[("wina_kept_channels_total", "7", "qkv_proj", "q")] == 0
    del layer, model  # a freed layer leaves the report
    assert not any(key[1] == "7" for key in _scrape())


def test_callbacks_run_after_every_workers_warm_up():
    """compat.after_warm_up wraps each worker class's own compile_or_warm_up_model, once,
    and runs the callbacks after it (vLLM's GPU and CPU workers, and any subclass)."""
    pytest.importorskip("vllm")
    from vllm.v1.worker.worker_base import WorkerBase

    from wina_vllm import compat

    calls = []

    class Worker(WorkerBase):
        def __init__(self):  # no vLLM config: only the warm-up method is exercised
            pass

        def compile_or_warm_up_model(self):
            calls.append("warm-up")
            return "times"

    class SubWorker(Worker):
        def compile_or_warm_up_model(self):
            result = super().compile_or_warm_up_model()
            calls.append("more warm-up")
            return result

    def callback():
        calls.append("callback")

    compat.after_warm_up(callback)
    compat.after_warm_up(callback)  # again, as every model load does: no second wrap or call
    try:
        assert Worker().compile_or_warm_up_model() == "times"
        assert calls == ["warm-up", "callback"]
        calls.clear()
        assert SubWorker().compile_or_warm_up_model() == "times"
        # the subclass's own warm-up follows its parent's: the last callback comes after both
        assert calls == ["warm-up", "callback", "more warm-up", "callback"]
    finally:
        compat._warm_up_callbacks.remove(callback)
