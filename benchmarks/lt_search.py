"""Would a cuBLASLt algorithm search close the dense path's last gaps? Measure before building.

The op's dense path runs ``x @ Wt`` on the input-major layout ("NN" to cuBLAS). Its tuner
(``wina_vllm/dense.py``) chooses among the forms torch exposes, and at a few shapes none of
them matches ``F.linear`` on the original layout (qkv at 256 tokens 1.05x, gate_up at 512
1.08-1.10x; benchmarks/RESULTS.md section 1). cuBLASLt can list several algorithms for
one problem (``cublasLtMatmulAlgoGetHeuristic``); this times each of them for the NN
problem, with ``torch.mm`` and ``F.linear`` in the same process, to see whether any reaches
``F.linear``. It runs them through the op's own ``wina_C.lt_matmul`` (csrc/lt_matmul.cpp;
the first run, commit 78e8c47, used an inline copy of it that asked for up to 16 and got 8).

Method as in kernel_bench.py: CUDA graphs over weight copies together larger than L2,
fresh random inputs, median of replays.

Usage: python benchmarks/lt_search.py --out DIR
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

from wina_vllm import kernels  # noqa: E402
from wina_vllm.shapes import LAYER_SHAPES  # noqa: E402

TOKENS = (128, 256, 512, 1024, 2048)


def bench_shape(name: str, k: int, n: int) -> list[dict]:
    copies = max(2, -(-ROT_BYTES // (n * k * 2)))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
               for _ in range(copies)]
    wts = [w.t().contiguous() for w in weights]
    rows = []
    for m in TOKENS:
        xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        ref = F.linear(xs[0], weights[0]).float()
        tol = 0.05 * ref.abs().max().item()
        row = dict(layer=name, K=k, N=n, M=m)
        row["f_linear_us"] = graph_time_us(
            [lambda w=w, x=x: F.linear(x, w) for w, x in zip(weights, xs)], reps=15)
        row["mm_us"] = graph_time_us(
            [lambda wt=wt, x=x: torch.mm(x, wt) for wt, x in zip(wts, xs)], reps=15)
        lt = []
        for a in range(kernels.lt_algos(xs[0], wts[0], n)):
            if (kernels.lt_matmul(xs[0], wts[0], n, a).float() - ref).abs().max().item() > tol:
                lt.append(None)  # wrong result: never a candidate
                continue
            lt.append(graph_time_us(
                [lambda wt=wt, x=x, a=a: kernels.lt_matmul(x, wt, n, a) for wt, x in zip(wts, xs)],
                reps=15))
        row["lt_us"] = lt
        ok = [t for t in lt if t is not None]
        row["lt_best_us"] = min(ok) if ok else None
        row["lt_best_algo"] = lt.index(row["lt_best_us"]) if ok else None
        rows.append(row)
        best = (f"best lt #{row['lt_best_algo']} {row['lt_best_us'] / row['f_linear_us']:.3f}x"
                if ok else "no lt algo")
        print(f"{name:8s} M={m:5d} F.linear {row['f_linear_us']:7.1f} us | mm "
              f"{row['mm_us'] / row['f_linear_us']:.3f}x | lt #0 "
              f"{(lt[0] or float('nan')) / row['f_linear_us']:.3f}x | {best} | "
              f"{len(lt)} algos, {len(lt) - len(ok)} wrong", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rows = []
    for layer, (k, segments) in LAYER_SHAPES["llama3-8b"].items():
        rows += bench_shape(layer, k, sum(segments))
    result = dict(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"),
                  torch=torch.__version__, rows=rows)
    (args.out / "lt_search.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
