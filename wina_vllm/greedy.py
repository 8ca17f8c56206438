"""Greedy sparsity allocation by decoder-layer output error (the TEAL/WINA procedure).

Per decoder layer, starting dense, the projection whose next sparsity step adds the least
error to the layer's output, per parameter made sparse, takes that step; repeat until the
parameter-weighted mean sparsity reaches the largest target. The error is measured by
re-running the real decoder layer (transformers) on its captured dense inputs with the
step's thresholds applied, so it sees what a projection's error does after attention,
the activation and the other projections: errors of each projection's own output, taken
alone, miss that. One path serves every target: a target's allocation is the first point
of the path that reaches it, scaled back onto it.
"""

from __future__ import annotations

from typing import Callable

import torch

from wina_vllm.gate import criterion_scale
from wina_vllm.layers import hf_decoder_layers
from wina_vllm.settings import PROJECTIONS

STEP = 0.1  # a layer's forward per projection per step: 0.05 doubles the calibration time
MAX_SPARSITY = 0.9


def capture_layer_inputs(model: torch.nn.Module, texts: list[torch.Tensor]) -> list[list]:
    """Each decoder layer's (args, kwargs) for every text, from one dense forward each."""
    captured: list[list] = [[] for _ in hf_decoder_layers(model)]
    handles = [layer.register_forward_pre_hook(
        lambda mod, args, kwargs, i=i: captured[i].append((args, kwargs)), with_kwargs=True)
        for i, layer in enumerate(hf_decoder_layers(model))]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for ids in texts:
                model(input_ids=ids.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return captured


def layer_output(layer: torch.nn.Module, inputs: list) -> torch.Tensor:
    """The layer's output on every captured input, as [tokens, hidden] float32."""
    outs = []
    for args, kwargs in inputs:
        out = layer(*args, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return torch.cat([o.reshape(-1, o.shape[-1]) for o in outs]).float()


def layer_path(layer: torch.nn.Module, inputs: list, modules: dict[str, torch.nn.Module],
               scale: dict[str, torch.Tensor], thresholds: dict[str, list[float]],
               params: dict[str, int], max_target: float) -> list[tuple[float, dict[str, int]]]:
    """The greedy path of one layer: (mean sparsity, step counts per projection) per step.

    ``thresholds[p][j]`` is projection p's threshold at sparsity ``j * STEP``; ``scale[p]``
    its per-channel score scale (column norms for WINA, ones for TEAL).
    """
    level = dict.fromkeys(PROJECTIONS, 0)

    def gate(p):
        def hook(mod, args):
            thr = thresholds[p][level[p]]
            x = args[0]
            return (torch.where(x.abs() * scale[p] >= thr, x, torch.zeros_like(x)),)
        return hook

    handles = [modules[p].register_forward_pre_hook(gate(p)) for p in PROJECTIONS]
    total = sum(params.values())
    path: list[tuple[float, dict[str, int]]] = []
    try:
        with torch.no_grad():
            dense = layer_output(layer, inputs)
            err, mean = 0.0, 0.0
            while mean < max_target - 1e-9:
                best, best_cost, best_err = None, float("inf"), 0.0
                for p in PROJECTIONS:
                    if level[p] + 1 >= len(thresholds[p]):
                        continue
                    level[p] += 1
                    trial = float((layer_output(layer, inputs) - dense).square().sum())
                    level[p] -= 1
                    cost = (trial - err) / (STEP * params[p])
                    if cost < best_cost:
                        best, best_cost, best_err = p, cost, trial
                if best is None:
                    break
                level[best] += 1
                err = best_err
                mean = sum(level[p] * STEP * params[p] for p in PROJECTIONS) / total
                path.append((mean, dict(level)))
    finally:
        for h in handles:
            h.remove()
    return path


def allocation_at(path: list[tuple[float, dict[str, int]]], target: float) -> dict[str, float]:
    """Per-projection sparsity for ``target``: the first path point that reaches it, with
    every projection scaled by target / (that point's mean) so the mean is exact."""
    if target <= 0:
        return dict.fromkeys(PROJECTIONS, 0.0)
    for mean, level in path:
        if mean >= target - 1e-9:
            return {p: min(MAX_SPARSITY, level[p] * STEP * target / mean) for p in PROJECTIONS}
    raise ValueError(f"greedy path ends at mean sparsity {path[-1][0] if path else 0:.3f}, "
                     f"below the target {target}")


def allocate(model: torch.nn.Module, texts: list[torch.Tensor], layers: list[dict],
             targets: list[float], criterion: str, modules_of: Callable,
             quantile: Callable, progress: Callable | None = None) -> list[dict[float, dict]]:
    """Per decoder layer, {target: {projection: sparsity}}.

    ``layers``: the calibration's per-layer ProjectionSamples (score samples, norms,
    weights); ``modules_of(layer_module)`` maps projection names to modules;
    ``quantile(sample, q)`` is the calibration's threshold rule.
    """
    inputs = capture_layer_inputs(model, texts)
    levels = [round(j * STEP, 6) for j in range(int(round(MAX_SPARSITY / STEP)) + 1)]
    out = []
    indices = range(len(layers))
    for i in (progress(indices) if progress else indices):
        samples = layers[i]
        scores = {p: samples[p].score_sample() for p in PROJECTIONS}  # one draw per projection
        thresholds = {p: [quantile(scores[p], q) for q in levels] for p in PROJECTIONS}
        scale = {p: criterion_scale(samples[p].norms, criterion, p) for p in PROJECTIONS}
        params = {p: samples[p].weight.numel() for p in PROJECTIONS}
        layer = hf_decoder_layers(model)[i]
        path = layer_path(layer, inputs[i], modules_of(layer), scale, thresholds, params,
                          max(targets))
        out.append({t: allocation_at(path, t) for t in targets})
    return out
