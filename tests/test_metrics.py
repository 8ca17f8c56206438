"""Realized sparsity as Prometheus sees it, from the op's own counters (no engine)."""

from __future__ import annotations

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
    del layer, model  # a freed layer leaves the report
    assert not any(key[1] == "7" for key in _scrape())
