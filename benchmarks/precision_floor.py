"""How far perplexity moves with arithmetic alone: the reference in float32 vs float64.

The vLLM path and the transformers reference add up in different orders, so their
perplexities differ even when both are right. Gating amplifies this: a channel near the
k-th score flips in or out with the last bits of its score. Running the same reference in
float32 and in float64 (same model, windows and gates) measures that floor at each
sparsity, the scale against which section 4's "vLLM within 1% of the reference" is read.

Usage: python benchmarks/precision_floor.py [--out benchmarks/results/precision_floor]
       [--sparsity 0.5] [--criteria wina-k-gate] [--windows 32]
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
from accuracy import add_window_args, eval_text, reference_ppl, windows  # noqa: E402
from get_smollm2 import fetch  # noqa: E402

from wina_vllm.calibrate import load_hf_model  # noqa: E402
from wina_vllm.reference import make_gates  # noqa: E402
from wina_vllm.settings import CRITERIA  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/precision_floor")
    add_window_args(ap)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.25, 0.5, 0.65])
    ap.add_argument("--criteria", nargs="+", default=["teal", "wina"], choices=CRITERIA)
    args = ap.parse_args()
    model_dir = fetch(ROOT / "artifacts" / "smollm2-135m")
    text = eval_text()
    rows = []
    for dtype in (torch.float32, torch.float64):
        model, tok = load_hf_model(str(model_dir), dtype=dtype)
        wins = windows(tok, text, args.windows, args.window_tokens)
        rows.append({"name": "dense", "dtype": str(dtype), "ppl": reference_ppl(model, wins, None)})
        for s in args.sparsity:
            for c in args.criteria:
                ppl = reference_ppl(model, wins, make_gates(model, c, s))
                rows.append({"name": f"{c}-topk-{s}", "dtype": str(dtype), "ppl": ppl})
                print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision_floor.json").write_text(json.dumps(rows, indent=1))
    lines = ["| config | float32 ppl | float64 ppl | float32 / float64 |", "|---|---|---|---|"]
    for r32 in (r for r in rows if r["dtype"] == "torch.float32"):
        r64 = next(r for r in rows if r["name"] == r32["name"] and r["dtype"] == "torch.float64")
        lines.append(f"| {r32['name']} | {r32['ppl']:.3f} | {r64['ppl']:.3f} | "
                     f"{r32['ppl'] / r64['ppl']:.4f} |")
    (args.out / "precision_floor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
