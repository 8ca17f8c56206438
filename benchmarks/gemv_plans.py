"""Launch geometry sweep of the sparse GEMV: tile width (lanes per row) x chunks along K.

The wide tile (256 columns) needs many chunks per tile to fill the GPU, and each call then
pays the split-K finish (partials, arrival counter, the last block's sum: about 2 us on
qkv and o, RESULTS.md section 1). Narrow tiles (64, 32 or 16 columns) give enough blocks
with one chunk, or a few. This times every plan on the Llama-3-8B shapes by the kernel
benchmark's method (CUDA graphs over rotating weights, median of replays, cuBLAS in the
same run), so the automatic choice can be set from measurements.

Usage: python benchmarks/gemv_plans.py --out DIR [--tokens 1 2] [--sparsities 0 0.5 0.65]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_bench import ROT_BYTES, graph_time_us  # noqa: E402

from wina_vllm import gate, kernels  # noqa: E402
from wina_vllm.packing import pack_linear  # noqa: E402
from wina_vllm.shapes import LAYER_SHAPES  # noqa: E402

PLANS = [(0, 0)] + [(lanes, chunks) for lanes in (8, 4, 2) for chunks in (1, 2, 3, 4)]


def sweep_layer(name: str, k: int, segments: tuple[int, ...], tokens: list[int],
                sparsities: list[float]) -> list[dict]:
    n = sum(segments)
    copies = max(2, -(-ROT_BYTES // (n * k * 2)))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
               for _ in range(copies)]
    packs = [pack_linear(w, segments, "wina") for w in weights]
    rows = []
    for m in tokens:
        xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        dense_us = graph_time_us([lambda w=w, x=x: F.linear(x, w) for w, x in zip(weights, xs)])
        for sparsity in sparsities:
            keep = gate.keep_counts(k, [sparsity] * len(segments))
            sample = torch.randn(256, k, device="cuda", dtype=torch.bfloat16)
            thr = torch.stack([torch.quantile(
                gate.scores(sample, packs[0].scale)[:, s].flatten().float(), sparsity)
                for s in range(len(segments))]).float()
            calls = [lambda p=p, x=x: kernels.sparse_gemv(
                x, p.weight_t, None, p.scale, thr, p.stats, p.workspace, p.seg_ends, keep,
                False) for p, x in zip(packs, xs)]
            times = {}
            for lanes, chunks in PLANS:
                with kernels.gemv_plan(lanes, chunks):
                    times[f"L{lanes}c{chunks}"] = graph_time_us(calls)
            best = min(times, key=times.get)
            rows.append(dict(layer=name, K=k, N=n, M=m, sparsity=sparsity, dense_us=dense_us,
                             times_us=times, best=best))
            print(f"{name:8s} M={m} s={sparsity:.2f} dense {dense_us:5.1f} auto "
                  f"{times['L0c0']:5.1f} ({dense_us / times['L0c0']:.2f}x) best {best} "
                  f"{times[best]:5.1f} ({dense_us / times[best]:.2f}x) | "
                  + " ".join(f"{p}:{t:.1f}" for p, t in times.items()), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.65])
    ap.add_argument("--model", default="llama3-8b", choices=sorted(LAYER_SHAPES))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    kernels.load()
    rows = []
    for layer, (k, segments) in LAYER_SHAPES[args.model].items():
        rows += sweep_layer(layer, k, segments, args.tokens, args.sparsities)
    (args.out / "gemv_plans.json").write_text(json.dumps(dict(
        device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"),
        model=args.model, points=rows), indent=1))


if __name__ == "__main__":
    main()
