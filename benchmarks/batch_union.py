"""How many weight rows a decode step of M tokens reads on a real model.

The kernel reads a row of a segment when any token of the step keeps it, so at M > 1 its
gain is bounded by the union of the tokens' kept rows (RESULTS.md, section 1). The kernel
benchmark draws independent random tokens, whose union at sparsity s is 1 - s^M of the
rows (75% at M = 2 and s = 0.5, 94% at M = 4), and on the H200 the kernel loses to cuBLAS
from M = 4 there, which set the default ``max_sparse_batch`` of 2. Real activations share
their large channels across tokens, so their union may be smaller; this measures it.

SmolLM2-135M (real weights), WikiText-2 windows, exact per-token top-k masks under the
criterion given, two kinds of step: one token from each of M different windows (a decode
batch of M requests) and M consecutive tokens of one window (a speculative verification
step). Reported per projection (mean over layers) and as the share of the linears' weight
bytes a step reads.

Usage: python benchmarks/batch_union.py --out DIR [--sparsity 0.5 0.65] [--criterion C]
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
from accuracy import add_window_args, eval_text, windows  # noqa: E402
from get_smollm2 import fetch  # noqa: E402

from wina_vllm.calibrate import HF_MODULES, load_hf_model  # noqa: E402
from wina_vllm.reference import ReferenceGate, decoder_layers, gated  # noqa: E402
from wina_vllm.settings import DEFAULT_CRITERION  # noqa: E402

TOKENS = (1, 2, 4, 8)
KINDS = ("requests", "consecutive")


def record_inputs(model, wins: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Per decoder layer and projection, its input for every window: [W, L, K] float32."""
    seen = [{p: [] for p in HF_MODULES} for _ in decoder_layers(model)]
    recorders = [{p: lambda mod, args, out=row[p]: out.append(args[0][0].detach().float())
                  for p in row} for row in seen]
    with torch.no_grad(), gated(model, recorders):
        for w in wins:
            model(input_ids=w.unsqueeze(0))
    return [{p: torch.stack(x) for p, x in row.items()} for row in seen]


def kept_masks(x: torch.Tensor, weight: torch.Tensor, criterion: str, projection: str,
               sparsity: float) -> torch.Tensor:
    """[W, L, K] inputs -> [W, L, K] masks of the rows the reference's per-token top-k gate
    reads: the channels it keeps that are nonzero (the plugin never keeps a zero input)."""
    gate = ReferenceGate(weight, criterion, projection, sparsity, threshold=None)
    return gate(None, (x,))[0] != 0


def union_fraction(mask: torch.Tensor, m: int, kind: str, batches: int,
                   gen: torch.Generator) -> float:
    """Mean fraction of rows that at least one of a step's m tokens keeps."""
    w, length, _ = mask.shape
    total = 0.0
    for _ in range(batches):
        if kind == "requests":  # one token from each of m different windows
            wins = torch.randperm(w, generator=gen)[:m]
            pos = torch.randint(0, length, (m,), generator=gen)
            rows = mask[wins, pos]
        else:  # m consecutive tokens of one window
            win = int(torch.randint(0, w, (1,), generator=gen))
            start = int(torch.randint(0, length - m + 1, (1,), generator=gen))
            rows = mask[win, start:start + m]
        total += rows.any(dim=0).float().mean().item()
    return total / batches


def measure(model, inputs, criterion: str, sparsities: list[float], batches: int) -> list[dict]:
    rows = []
    for s in sparsities:
        per_proj: dict[str, dict[str, dict[int, list[float]]]] = {}
        params: dict[str, int] = {}
        for i, layer in enumerate(decoder_layers(model)):
            for p, path in HF_MODULES.items():
                weight = layer.get_submodule(path).weight.detach()
                params[p] = weight.numel()
                mask = kept_masks(inputs[i][p], weight, criterion, p, s)
                gen = torch.Generator().manual_seed(1000 * i + len(p))
                for kind in KINDS:
                    for m in TOKENS:
                        if kind == "requests" and m > mask.shape[0]:
                            continue
                        per_proj.setdefault(p, {}).setdefault(kind, {}).setdefault(m, []).append(
                            union_fraction(mask, m, kind, batches, gen))
        for kind in KINDS:
            for m in TOKENS:
                if m not in per_proj["q"][kind]:
                    continue
                means = {p: sum(v[kind][m]) / len(v[kind][m]) for p, v in per_proj.items()}
                read = sum(means[p] * params[p] for p in means) / sum(params.values())
                rows.append({"sparsity": s, "kind": kind, "tokens": m, "per_projection": means,
                             "weight_bytes_read": read, "independent_random": 1 - s ** m})
    return rows


def table(rows: list[dict]) -> str:
    projections = list(HF_MODULES)
    out = ["| sparsity | step | M | " + " | ".join(projections) +
           " | weight bytes read | independent random tokens |",
           "|---|---|---|" + "---|" * len(projections) + "---|---|"]
    for r in rows:
        out.append(f"| {r['sparsity']} | {r['kind']} | {r['tokens']} | " +
                   " | ".join(f"{r['per_projection'][p]:.3f}" for p in projections) +
                   f" | **{r['weight_bytes_read']:.3f}** | {r['independent_random']:.3f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.65])
    ap.add_argument("--criterion", default=DEFAULT_CRITERION)
    ap.add_argument("--batches", type=int, default=200, help="random steps per point")
    add_window_args(ap)
    args = ap.parse_args()
    model, tok = load_hf_model(str(fetch(ROOT / "artifacts" / "smollm2-135m")))
    wins = windows(tok, eval_text(), args.windows, args.window_tokens)
    inputs = record_inputs(model, wins)
    rows = measure(model, inputs, args.criterion, args.sparsity, args.batches)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"model": "SmolLM2-135M", "criterion": args.criterion, "windows": args.windows,
            "window_tokens": args.window_tokens, "batches": args.batches}
    (args.out / "batch_union.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    md = f"Union of kept rows per decode step, {json.dumps(meta)}\n\n{table(rows)}\n"
    (args.out / "batch_union.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
