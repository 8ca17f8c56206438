"""A transformers reference of WINA/TEAL gating, independent of the op and of gate.py.

Forward pre-hooks on each q/k/v/o/gate/up/down projection zero the input channels the gate
drops (per-token top-k of the score, or a calibrated threshold). Accuracy numbers and the
test that the vLLM path agrees with it use this, so a bug in the op cannot hide in both.
"""

from __future__ import annotations

import torch

from wina_vllm.calibrate import HF_MODULES
from wina_vllm.gate import criterion_scale
from wina_vllm.layers import hf_decoder_layers
from wina_vllm.settings import PROJECTIONS


class ReferenceGate:
    """Zero the dropped input channels of one projection (top-k per token, or threshold)."""

    def __init__(self, weight: torch.Tensor, criterion: str, projection: str, sparsity: float,
                 threshold: float | None):
        k = weight.shape[1]
        self.scale = criterion_scale(weight.detach().double().norm(dim=0).float(), criterion,
                                     projection)
        self.keep = min(k, max(0, round((1.0 - sparsity) * k)))
        self.threshold = threshold

    def __call__(self, module, args):
        x = args[0]
        score = x.abs().float() * self.scale
        if self.threshold is not None:
            mask = score >= self.threshold
        else:
            idx = score.topk(self.keep, dim=-1).indices
            mask = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, idx, True)
        return (x * mask,)


def decoder_layers(model):
    """The decoder layers, unwrapped where the transform wrapped them."""
    return [getattr(layer, "layer", layer) for layer in hf_decoder_layers(model)]


def make_gates(model, criterion: str, sparsity: float, calibration=None,
               topk: bool = False) -> list[dict]:
    """One gate per projection per layer. With a calibration file: its thresholds, or with
    ``topk`` a per-token top-k at the file's sparsity for each layer and projection."""
    gates = []
    for i, layer in enumerate(decoder_layers(model)):
        row = {}
        for j, (p, path) in enumerate((p, HF_MODULES[p]) for p in PROJECTIONS):
            row[p] = ReferenceGate(
                layer.get_submodule(path).weight, criterion, p,
                float(calibration.sparsity[i, j]) if calibration else sparsity,
                float(calibration.thresholds[i, j]) if calibration and not topk else None)
        gates.append(row)
    return gates


def gated(model, gates: list[dict] | None):
    """Context manager: the model runs with ``gates`` installed (none if ``gates`` is None)."""
    from contextlib import contextmanager

    @contextmanager
    def _ctx():
        handles = []
        if gates:
            for layer, row in zip(decoder_layers(model), gates):
                for p, path in HF_MODULES.items():
                    handles.append(layer.get_submodule(path).register_forward_pre_hook(row[p]))
        try:
            yield model
        finally:
            for h in handles:
                h.remove()

    return _ctx()
