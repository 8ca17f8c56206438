"""Split-K finish, A/B: thread-block clusters (distributed shared memory) vs global memory.

Same method as kernel_bench.py (CUDA graphs over rotated weights > L2, median replay,
cuBLAS in the same run); the only difference between the two WINA columns is
WINA_SPLIT_K (default: clusters where the GPU has them; "global": partial sums in global
memory and an arrival counter).

Usage: python benchmarks/splitk_ab.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_bench import ROT_BYTES, graph_time_us  # noqa: E402

from wina_vllm import gate, kernels  # noqa: E402
from wina_vllm.packing import pack_linear  # noqa: E402
from wina_vllm.shapes import LAYER_SHAPES  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    kernels.load()
    dtype, rows = torch.bfloat16, []
    for name, (k, segments) in LAYER_SHAPES["llama3-8b"].items():
        n = sum(segments)
        copies = max(2, -(-ROT_BYTES // (n * k * 2)))
        weights = [torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5 for _ in range(copies)]
        packs = [pack_linear(w, segments, "wina") for w in weights]
        for m in (1, 2, 4):
            xs = [torch.randn(m, k, device="cuda", dtype=dtype) for _ in range(copies)]
            dense = graph_time_us([lambda w=w, x=x: F.linear(x, w) for w, x in zip(weights, xs)])
            for sparsity in (0.0, 0.5, 0.65):
                sample = torch.randn(256, k, device="cuda", dtype=dtype)
                thr = torch.stack([torch.quantile(
                    gate.scores(sample, packs[0].scale)[:, s].flatten().float(), sparsity)
                    for s in range(len(segments))]).float()
                keep = gate.keep_counts(k, [sparsity] * len(segments))
                row = dict(layer=name, M=m, sparsity=sparsity, dense_us=dense)
                for mode in ("cluster", "global"):
                    os.environ["WINA_SPLIT_K"] = mode
                    row[f"{mode}_us"] = graph_time_us([lambda p=p, x=x: kernels.sparse_gemv(
                        x, p.weight_t, None, p.scale, thr, p.stats, p.workspace, p.seg_ends,
                        keep, False) for p, x in zip(packs, xs)])
                os.environ.pop("WINA_SPLIT_K")
                rows.append(row)
                print(f"{name:8s} M={m} s={sparsity:.2f} dense {dense:6.1f} | cluster "
                      f"{row['cluster_us']:6.1f} ({dense / row['cluster_us']:.2f}x) | global "
                      f"{row['global_us']:6.1f} ({dense / row['global_us']:.2f}x)", flush=True)
        del packs, weights
        torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "splitk_ab.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
