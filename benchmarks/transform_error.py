"""Why the transform does not pay: one projection's output error from gating, with and without it.

The transform makes the gated matrices' columns orthogonal, where WINA's criterion is the
one that minimizes a projection's output error for a given number of kept channels (the
paper's bound). This measures, on SmolLM2-135M (real weights) and the project's calibration
text (never the evaluation text), for every decoder layer and projection, on the dense
model's own inputs (no error carried between layers):

- ``err``: ||W (x - x_kept)|| / ||W x||, the relative output error of top-k gating at a
  sparsity, for TEAL's and WINA's criterion (every projection scored by its own);
- ``energy``: ||x_kept||^2 / ||x||^2 under TEAL's criterion, how much of the input's energy
  the largest half (etc.) of its channels carries.

Means over tokens, then over layers and projections. Run for the untransformed model and
each transform variant (wina_vllm.transform), whose checkpoints are made under artifacts/
when missing. Per sublayer (a decoder layer's attention input, gated for q, k and v, or its
MLP input, for gate and up: the inputs a transform rotates), it also counts where the
transformed model's WINA error is below the untransformed model's better criterion: the
sublayers a transform applied selectively could gain on.

Usage: python benchmarks/transform_error.py [--out benchmarks/results/transform_error]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from get_smollm2 import fetch  # noqa: E402
from transform_accuracy import load_variant  # noqa: E402

from wina_vllm.calibrate import HF_MODULES  # noqa: E402
from wina_vllm.reference import decoder_layers, gated  # noqa: E402
from wina_vllm.text import stdlib_prose  # noqa: E402
from wina_vllm.transform import VARIANTS  # noqa: E402

SPARSITIES = (0.25, 0.5, 0.65)
SUBLAYERS = {"attention": ("q", "k", "v"), "mlp": ("gate", "up")}  # projections of one input


def gating_error(x: torch.Tensor, w: torch.Tensor, sparsity: float, scale: torch.Tensor
                 ) -> tuple[float, float]:
    """Mean over tokens of the relative output error and the kept energy, top-k of |x|*scale."""
    keep = round((1.0 - sparsity) * x.shape[1])
    idx = (x.abs() * scale).topk(keep, dim=1).indices
    kept = torch.zeros_like(x).scatter_(1, idx, x.gather(1, idx))
    y = x @ w.T
    err = ((x - kept) @ w.T).norm(dim=1) / y.norm(dim=1).clamp_min(1e-30)
    energy = kept.pow(2).sum(1) / x.pow(2).sum(1).clamp_min(1e-30)
    return float(err.mean()), float(energy.mean())


def measure(model, ids: torch.Tensor) -> dict:
    """{"<criterion>-<sparsity>": {"err": .., "energy": .., "per_projection": {"<layer>.<p>":
    err}}}: gating_error on the dense model's inputs to each projection, and its means over
    layers and projections."""
    layers = decoder_layers(model)
    inputs: dict[tuple[int, str], torch.Tensor] = {}

    def recorder(key):
        def record(module, args):
            inputs[key] = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        return record

    with torch.no_grad(), gated(model, [{p: recorder((i, p)) for p in HF_MODULES}
                                        for i in range(len(layers))]):
        model(ids)
    rows = {f"{c}-{s}": {"err": 0.0, "energy": 0.0, "per_projection": {}}
            for c in ("teal", "wina") for s in SPARSITIES}
    for (i, p), x in inputs.items():
        w = layers[i].get_submodule(HF_MODULES[p]).weight.detach().double()
        norms = w.norm(dim=0)
        for c, scale in (("teal", torch.ones_like(norms)), ("wina", norms)):
            for s in SPARSITIES:
                err, energy = gating_error(x, w, s, scale)
                row = rows[f"{c}-{s}"]
                row["err"] += err / len(inputs)
                row["energy"] += energy / len(inputs)
                row["per_projection"][f"{i}.{p}"] = err
    return rows


def sublayers_gained(plain: dict, transformed: dict, sparsity: float) -> dict[str, int]:
    """Per sublayer kind, how many decoder layers' summed error over the sublayer's
    projections is lower with the transformed model's WINA than with the plain model's
    better criterion (both from :func:`measure`)."""
    def total(rows: dict, criterion: str, layer: int, projections) -> float:
        errs = rows[f"{criterion}-{sparsity}"]["per_projection"]
        return sum(errs[f"{layer}.{p}"] for p in projections)

    layers = {int(key.split(".")[0]) for key in plain[f"wina-{sparsity}"]["per_projection"]}
    return {kind: sum(total(transformed, "wina", i, ps) <
                      min(total(plain, c, i, ps) for c in ("teal", "wina")) for i in layers)
            for kind, ps in SUBLAYERS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/transform_error")
    ap.add_argument("--tokens", type=int, default=1024)
    args = ap.parse_args()
    if args.tokens < 1:
        raise ValueError(f"--tokens {args.tokens}: accepted: 1 or more")
    args.out.mkdir(parents=True, exist_ok=True)
    src = fetch(ROOT / "artifacts" / "smollm2-135m")
    text = stdlib_prose()
    rows = {}
    for variant in ("none",) + VARIANTS:
        model, tok = load_variant(src, variant)
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        rows[variant] = measure(model.eval(), ids[:, :args.tokens])
        print(variant, {k: round(v["err"], 4) for k, v in rows[variant].items()}, flush=True)
    (args.out / "transform_error.json").write_text(json.dumps(rows, indent=1))
    lines = ["| transform | " + " | ".join(f"err TEAL {s} | err WINA {s}" for s in SPARSITIES)
             + " | kept energy (TEAL) " + " | ".join(str(s) for s in SPARSITIES) + " |",
             "|---|" + "---|---|" * len(SPARSITIES) + "---|" * len(SPARSITIES)]
    for v, r in rows.items():
        lines.append(f"| {v} | " + " | ".join(
            f"{r[f'teal-{s}']['err']:.4f} | {r[f'wina-{s}']['err']:.4f}" for s in SPARSITIES)
            + " | " + " | ".join(f"{r[f'teal-{s}']['energy']:.4f}" for s in SPARSITIES) + " |")
    layers = len(rows["none"]["wina-0.5"]["per_projection"]) // len(HF_MODULES)
    lines += ["", f"Sublayers (of {layers} per kind) where the transformed model's WINA errs less "
              "than the plain model's better criterion:", "",
              "| transform | " + " | ".join(f"attention {s} | MLP {s}" for s in SPARSITIES) + " |",
              "|---|" + "---|---|" * len(SPARSITIES)]
    for v in VARIANTS:
        gained = [sublayers_gained(rows["none"], rows[v], s) for s in SPARSITIES]
        lines.append(f"| {v} | " + " | ".join(f"{g['attention']} | {g['mlp']}" for g in gained)
                     + " |")
    (args.out / "transform_error.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
