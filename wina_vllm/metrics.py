"""Realized sparsity, read from the counters the op keeps in every gated linear.

``stats[s] = (kept, seen)`` counts input channels of projection ``s`` over all sparse
calls (dense steps are not counted). The counts restart once the worker has warmed up
(:func:`reset`), so its dummy runs are left out, as vLLM leaves them out of its own
expert-balancing metrics. They include the all-zero tokens vLLM pads a CUDA-graph step
with (a 3-token speculative verification step runs as 4): those keep nothing (gate.py),
so padded steps read above the setting. Every gated linear runs in every step, so any one of them also
tells how many tokens took the sparse path: its seen count over its input width. Beside
vLLM's generated-token counter that is the share of decode tokens the gate served (steps
of more than ``max_sparse_batch`` tokens run dense). Two readers: :func:`realized_sparsity` on demand
(``LLM.apply_model``), and, with the ``metrics_port`` setting, a Prometheus endpoint in
each worker (:func:`serve`), since the counters live in the worker, not in the API server
that serves vLLM's own ``/metrics``. Neither runs in the decode loop.
"""

from __future__ import annotations

import functools
import weakref

import torch

_tracked: dict[tuple[int, str], weakref.ref] = {}  # (layer index, linear name) -> module
_server = None


@functools.cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device=device)


def read_counts(stats: torch.Tensor) -> torch.Tensor:
    """A host float64 copy of ``stats`` [S, 2]. On CUDA the copy runs on a stream of its
    own, so a reader never queues behind, or holds up, the model's work (the counts may
    lag by the step in flight)."""
    if not stats.is_cuda:
        return stats.detach().to(torch.float64)
    stream = _side_stream(stats.device)
    with torch.cuda.stream(stream):
        host = stats.detach().to("cpu", non_blocking=True)
    stream.synchronize()
    return host.to(torch.float64)


def realized_sparsity(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """``{module name: {projection: 1 - kept / seen}}`` for every gated linear that ran sparse."""
    report: dict[str, dict[str, float]] = {}
    counted: set[int] = set()
    for name, module in model.named_modules():
        stats = getattr(module, "wina_stats", None)  # a LoRA wrapper forwards its base's
        if stats is None or id(stats) in counted:
            continue
        counted.add(id(stats))
        report[name] = {p: (1.0 - float(c[0] / c[1])) if c[1] > 0 else float("nan")
                        for p, c in zip(module.wina_projections, read_counts(stats))}
    return report


def reset() -> None:
    """Zero every gated linear's counters (between steps, never inside a graph capture)."""
    for ref in _tracked.values():
        module = ref()
        if module is not None:
            module.wina_stats.zero_()


def _tokens(seen: float, module: torch.nn.Module) -> int:
    """Tokens behind ``seen`` channels of ``module`` (its weight is input-major, [K, ldw])."""
    return int(seen) // module.weight.shape[0]


def sparse_tokens(model: torch.nn.Module) -> int:
    """Tokens that took the sparse path (0 when no linear is gated)."""
    for module in model.modules():
        if getattr(module, "wina_stats", None) is not None:
            return _tokens(read_counts(module.wina_stats)[0, 1], module)
    return 0


def track(layer_index: int, linear: str, module: torch.nn.Module) -> None:
    """Make a gated linear visible to the Prometheus collector."""
    _tracked[(layer_index, linear)] = weakref.ref(module)


class SparsityCollector:
    """Prometheus collector: kept and seen channel counters and realized sparsity, labelled
    by decoder layer, linear and projection, and the tokens that ran sparse."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["layer", "linear", "projection"]
        kept = CounterMetricFamily("wina_kept_channels", "Input channels the WINA gate kept, "
                                   "over sparse steps", labels=labels)
        seen = CounterMetricFamily("wina_seen_channels", "Input channels the WINA gate "
                                   "scored, over sparse steps", labels=labels)
        sparsity = GaugeMetricFamily("wina_realized_sparsity", "1 - kept / seen since the "
                                     "worker started", labels=labels)
        tokens = CounterMetricFamily("wina_sparse_tokens", "Tokens that ran the sparse "
                                     "path (steps of at most max_sparse_batch tokens)")
        for (index, linear), ref in sorted(_tracked.items()):
            module = ref()
            if module is None:
                continue
            counts = read_counts(module.wina_stats).tolist()
            if not tokens.samples:  # every gated linear sees the same steps: count one
                tokens.add_metric([], _tokens(counts[0][1], module))
            for projection, (k, s) in zip(module.wina_projections, counts):
                values = [str(index), linear, projection]
                kept.add_metric(values, k)
                seen.add_metric(values, s)
                if s > 0:
                    sparsity.add_metric(values, 1.0 - k / s)
        yield from (kept, seen, sparsity, tokens)


def serve(port: int) -> bool:
    """Serve the collector over HTTP on ``port`` (``/metrics``), once per process.
    Returns False when this process already serves it."""
    global _server
    if _server is not None:
        return False
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SparsityCollector())
    _server = start_http_server(port, registry=registry)
    return True
