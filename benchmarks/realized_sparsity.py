"""Realized sparsity of calibration files on the accuracy benchmark's WikiText windows.

Per file: the parameter-weighted mean fraction of input channels dropped (the share of
weight bytes skipped, what the speed depends on) and the plain mean over projections.
Greedy files hold the parameter-weighted mean at the target and move sparsity into the
MLP, so their plain mean (what the plugin's realized-sparsity counter averages) is lower.

Usage: python benchmarks/realized_sparsity.py FILE.safetensors ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from accuracy import add_window_args, eval_text, windows  # noqa: E402
from get_smollm2 import fetch  # noqa: E402

from wina_vllm import calibration_file as cf  # noqa: E402
from wina_vllm.calibrate import HF_MODULES, load_hf_model  # noqa: E402
from wina_vllm.reference import decoder_layers, gated, make_gates  # noqa: E402


def realized(model, wins, cal) -> tuple[float, float]:
    """(parameter-weighted, plain) mean fraction of input channels dropped."""
    gates = make_gates(model, cal.criterion, 0.0, cal)
    kept: dict[tuple[int, str], list[float]] = {}
    for i, row in enumerate(gates):
        for p, gate in list(row.items()):
            def counting(mod, args, gate=gate, key=(i, p)):
                out = gate(mod, args)
                kept.setdefault(key, []).append(float((out[0] != 0).float().mean()))
                return out
            row[p] = counting
    with torch.no_grad(), gated(model, gates):
        for w in wins:
            model(input_ids=w.unsqueeze(0))
    params = {(i, p): layer.get_submodule(path).weight.numel()
              for i, layer in enumerate(decoder_layers(model)) for p, path in HF_MODULES.items()}
    drop = {k: 1 - sum(v) / len(v) for k, v in kept.items()}
    weighted = sum(drop[k] * params[k] for k in drop) / sum(params[k] for k in drop)
    return weighted, sum(drop.values()) / len(drop)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    add_window_args(ap)
    args = ap.parse_args()
    model, tok = load_hf_model(str(fetch(ROOT / "artifacts" / "smollm2-135m")))
    wins = windows(tok, eval_text(), args.windows, args.window_tokens)
    print("| file | target | parameter-weighted | plain mean |\n|---|---|---|---|")
    for f in args.files:
        cal = cf.load(f)
        weighted, plain = realized(model, wins, cal)
        print(f"| {f.name} | {cal.target_sparsity} | {weighted:.3f} | {plain:.3f} |", flush=True)


if __name__ == "__main__":
    main()
