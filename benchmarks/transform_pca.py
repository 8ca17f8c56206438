"""Is the transform's failure specific to SVD bases? The same with activation-PCA bases.

transform_accuracy.py found every SVD-basis transform worse than no transform for
magnitude gating. Rotations taken instead from the activations (the eigenvectors of the
second moment of each sublayer's RMS-normalized input on calibration text, largest
first) are what later work on rotated activation sparsity uses. This runs them through
the same reference evaluation: ``global-pca`` (one basis from all sublayers' inputs,
no shortcut, so no runtime cost) and ``per-layer-pca`` (one basis per sublayer input,
shortcuts as in the ``per-layer`` variant). Calibration: the project's stdlib prose,
never the WikiText evaluation text.

Usage: python benchmarks/transform_pca.py [--out benchmarks/results/transform_pca]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from accuracy import add_window_args, eval_text, reference_ppl, windows  # noqa: E402
from get_smollm2 import fetch  # noqa: E402

from wina_vllm.calibrate import load_hf_model, token_windows  # noqa: E402
from wina_vllm.reference import make_gates  # noqa: E402
from wina_vllm.text import stdlib_prose  # noqa: E402
from wina_vllm.transform import attach_shortcuts, transform_model  # noqa: E402

SPARSITIES = [0.25, 0.5, 0.65]
VARIANTS = {"global-pca": "global", "per-layer-pca": "per-layer"}


@torch.no_grad()
def input_moments(model, texts: list[torch.Tensor]) -> tuple[list, list]:
    """Second moments of the RMS-normalized inputs of each layer's attention and MLP."""
    layers = model.model.layers
    attn = [0.0] * len(layers)
    mlp = [0.0] * len(layers)

    def hook(store, i):
        def add(norm, args):
            x = args[0].double().reshape(-1, args[0].shape[-1])
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
            store[i] = store[i] + x.T @ x
        return add

    handles = [h for i, layer in enumerate(layers) for h in (
        layer.input_layernorm.register_forward_pre_hook(hook(attn, i)),
        layer.post_attention_layernorm.register_forward_pre_hook(hook(mlp, i)))]
    for ids in texts:
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return attn, mlp


def principal_basis(moment: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(moment)
    return vectors[:, values.argsort(descending=True)].contiguous()


def pca_bases(model, texts, variant: str):
    attn, mlp = input_moments(model, texts)
    if variant == "global-pca":
        q = principal_basis(sum(attn) + sum(mlp))
        return [q] * len(attn), [q] * len(attn)
    return [principal_basis(m) for m in attn], [principal_basis(m) for m in mlp]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/transform_pca")
    ap.add_argument("--calibration-windows", type=int, default=8)
    add_window_args(ap)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    src = str(fetch(ROOT / "artifacts" / "smollm2-135m"))
    text = eval_text()
    rows = []
    for name, variant in VARIANTS.items():
        model, tok = load_hf_model(src, dtype=torch.float64)
        cal = token_windows(tok, stdlib_prose(), 512, args.calibration_windows)
        shortcuts = transform_model(model, variant, bases=pca_bases(model, cal, name))
        attach_shortcuts(model, shortcuts)
        model = model.float()
        wins = windows(tok, text, args.windows, args.window_tokens)
        t = time.time()
        rows.append({"variant": name, "criterion": "dense", "sparsity": 0.0,
                     "ppl": reference_ppl(model, wins, None)})
        for s in SPARSITIES:
            for criterion in ("teal", "wina"):
                rows.append({"variant": name, "criterion": criterion, "sparsity": s,
                             "ppl": reference_ppl(model, wins, make_gates(model, criterion, s,
                                                                          None))})
        print(json.dumps(rows[-7:]), f"({time.time() - t:.0f} s)", flush=True)
        (args.out / "transform_pca.json").write_text(json.dumps(rows, indent=1))
    lines = ["| transform | dense | " + " | ".join(f"TEAL {s} | WINA {s}" for s in SPARSITIES)
             + " |", "|---|---|" + "---|---|" * len(SPARSITIES)]
    for name in VARIANTS:
        ppl = {(r["criterion"], r["sparsity"]): r["ppl"] for r in rows if r["variant"] == name}
        lines.append(f"| {name} | {ppl['dense', 0.0]:.3f} | " + " | ".join(
            f"{ppl['teal', s]:.3f} | {ppl['wina', s]:.3f}" for s in SPARSITIES) + " |")
    (args.out / "transform_pca.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
