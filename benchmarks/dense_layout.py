"""Dense products on the input-major layout against F.linear on the original one.

The op stores weights input-major ([K, N]) and runs prefill and large batches as a
dense product on that layout. cuBLAS chooses its kernel by layout and shape, and for
some shapes the non-transposed layout gets a slower one (gate_up at 1024 tokens:
1.16x, benchmarks/RESULTS.md section 1). This times the ways to run ``x @ Wt`` that
torch offers, against ``F.linear(x, W)``, so the op can take the fastest:

- ``mm``: ``torch.mm(x, Wt)`` (cuBLAS, "NN").
- ``addmm_lt``: ``torch.addmm(zero_bias, x, Wt)``: torch routes a product with a 1-D
  bias to cuBLASLt, whose heuristic chooses among other kernels.
- ``split2`` / ``split4``: the product in 2 or 4 column blocks, each cuBLAS call
  writing its block of one output in place (``out=`` a strided view): cuBLAS chooses
  per shape, and a narrower N may get the better kernel.
- ``op (tuned)``: the op's own dense path (``wina_vllm.dense``) after ``dense.tune`` at
  these token counts: the form it chose for each, as the plugin runs it after loading.

Method as in kernel_bench.py: CUDA graphs over weight copies together larger than L2,
fresh random inputs, median of replays.

Usage: python benchmarks/dense_layout.py --out DIR [--tp 2] [--tokens 200 300 ...]
(``--tp``: each GPU's share of the layers under tensor parallelism: q/k/v and gate/up
split by columns, o and down by rows.)
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

from wina_vllm import dense  # noqa: E402
from wina_vllm.shapes import LAYER_SHAPES  # noqa: E402

TOKENS = (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def column_blocks(n: int, parts: int) -> list[int]:
    """Ends of ``parts`` column blocks of about equal width (multiples of 64) over n."""
    step = -(-n // parts // 64) * 64
    return [min(a + step, n) for a in range(0, n, step)]


def variants(n: int):
    """The forms timed, as ``fn(x, wt)`` on a whole-width layer: the op's own (dense.FORMS)
    plus 2 and 4 equal column blocks, run by the op's per-projection form."""
    whole = [n]
    return {
        "mm": lambda x, wt: dense.FORMS["mm"](x, wt, None, whole),
        "addmm_lt": lambda x, wt: dense.FORMS["lt"](x, wt, None, whole),
        "split2": lambda x, wt: dense.FORMS["segments"](x, wt, None, column_blocks(n, 2)),
        "split4": lambda x, wt: dense.FORMS["segments"](x, wt, None, column_blocks(n, 4)),
    }


def tp_shard(layer: str, k: int, segments: tuple[int, ...], tp: int) -> tuple[int, tuple[int, ...]]:
    """One GPU's (K, segment widths) of a layer at tensor-parallel size ``tp``, as vLLM
    splits it: column-parallel layers (qkv, gate_up) by output, row-parallel (o, down) by
    input."""
    if layer in ("o", "down"):
        return k // tp, segments
    return k, tuple(w // tp for w in segments)


def bench_shape(name: str, k: int, segments: tuple[int, ...], dtype,
                tokens: tuple[int, ...] = TOKENS) -> list[dict]:
    n = sum(segments)
    copies = max(2, -(-ROT_BYTES // (n * k * 2)))
    weights = [torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5 for _ in range(copies)]
    wts = [w.t().contiguous() for w in weights]
    fns = variants(n)
    seg_ends = torch.tensor(segments).cumsum(0).tolist()
    choice = dense.tune(wts[0], None, seg_ends, tokens)
    fns["tuned"] = lambda x, wt: dense.dense_linear(x, wt, None, seg_ends)
    rows = []
    for m in tokens:
        xs = [torch.randn(m, k, device="cuda", dtype=dtype) for _ in range(copies)]
        ref = F.linear(xs[0], weights[0])
        row = dict(layer=name, K=k, N=n, M=m, f_linear_us=graph_time_us(
            [lambda w=w, x=x: F.linear(x, w) for w, x in zip(weights, xs)], reps=20))
        for key, fn in fns.items():
            err = (fn(xs[0], wts[0]).float() - ref.float()).abs().max().item()
            if err > 0.05 * ref.float().abs().max().item():
                raise RuntimeError(f"{key} disagrees with F.linear on {name} M={m}: {err}")
            row[f"{key}_us"] = graph_time_us(
                [lambda wt=wt, x=x, fn=fn: fn(x, wt) for wt, x in zip(wts, xs)], reps=20)
            row[f"{key}_ratio"] = row[f"{key}_us"] / row["f_linear_us"]
        row["tuned_form"] = choice.get(m, "mm")
        rows.append(row)
        print(f"{name:8s} M={m:5d} F.linear {row['f_linear_us']:8.1f} | " + " | ".join(
            f"{key} {row[key + '_ratio']:.3f}x" for key in fns) + f" ({row['tuned_form']})",
            flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="llama3-8b")
    ap.add_argument("--tp", type=int, default=1, help="time one GPU's share at this TP size")
    ap.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rows = []
    for layer, (k, segments) in LAYER_SHAPES[args.model].items():
        k, segments = tp_shard(layer, k, segments, args.tp)
        rows += bench_shape(layer, k, segments, torch.bfloat16, tuple(args.tokens))
        result = dict(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"),
                      torch=torch.__version__, tp=args.tp, rows=rows)
        (args.out / "dense_layout.json").write_text(json.dumps(result, indent=1))  # per shape


if __name__ == "__main__":
    main()
