"""Realized sparsity, read from the counters the op keeps in every gated linear.

``stats[s] = (kept, seen)`` counts input channels of projection ``s`` over all
sparse calls (dense steps are not counted). Reading them syncs with the device,
so this runs on demand (``LLM.apply_model``, the ``/metrics`` collector), never
in the decode loop.
"""

from __future__ import annotations

import torch


def realized_sparsity(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """``{module name: {projection: 1 - kept / seen}}`` for every gated linear that ran sparse."""
    report: dict[str, dict[str, float]] = {}
    for name, module in model.named_modules():
        stats = getattr(module, "wina_stats", None)
        if stats is None:
            continue
        counts = stats.detach().to("cpu", torch.float64)
        report[name] = {p: (1.0 - float(c[0] / c[1])) if c[1] > 0 else float("nan")
                        for p, c in zip(module.wina_projections, counts)}
    return report
