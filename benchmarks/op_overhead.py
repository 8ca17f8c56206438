"""Host cost of one call of the plugin's ops, against ``torch.mm`` and ``F.linear``.

Every linear of every step that is not a CUDA-graph replay (prefill; every step of an
eager or piecewise-compiled engine) pays its op's dispatch on the host. Tiny shapes, so
the time is the dispatch, not the arithmetic. Median of 20 rounds of 500 eager calls.

Timed: ``wina::sparse_linear`` (the Python op) on its dense path; on CUDA also
``wina_C::linear`` (the C++ op the plugin uses for bf16/fp16 on a GPU) on its dense path
(16 tokens) and on its sparse path (1 token: gate + GEMV kernel launch, in threshold and
top-k mode).

With ``--compile``, each call is a ``torch.compile``'d function (Inductor), as vLLM's
default compilation runs the linears of steps it does not replay from CUDA graphs: the
op is then called from Inductor's generated code, next to ``F.linear`` called the same way.

Usage: python benchmarks/op_overhead.py [--device cpu|cuda] [--compile] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wina_vllm import kernels, ops  # noqa: E402
from wina_vllm.packing import pack_linear  # noqa: E402


def per_call_us(fn, calls: int = 500, rounds: int = 20, sync=lambda: None) -> float:
    for _ in range(100):
        fn()
    times = []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def calls(dev: torch.device) -> dict[str, Callable[[], torch.Tensor]]:
    """The timed calls, by name; the first two are the baselines."""
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    weight = torch.randn(64, 64, device=dev, dtype=dtype)
    packed = pack_linear(weight, [64], "wina")
    wt, n = packed.weight_t, packed.n
    x16 = torch.randn(16, 64, device=dev, dtype=dtype)  # > max_sparse_batch: the dense path
    x1 = torch.randn(1, 64, device=dev, dtype=dtype)
    thr = torch.zeros(1, device=dev)
    fns = {
        "torch.mm": lambda: torch.mm(x16, wt[:, :n]),
        "F.linear": lambda: F.linear(x16, weight),
        "wina::sparse_linear (Python op), 16 tokens": lambda: ops.sparse_linear(
            x16, wt, None, packed.scale, thr, packed.stats, packed.workspace, packed.seg_ends,
            [32], True, 8, False),
    }
    if dev.type == "cuda":
        kernels.register_layer(wt, packed.stats, packed.workspace)
        for name, x, topk in (("16 tokens (dense)", x16, False), ("1 token, threshold", x1, False),
                              ("1 token, top-k", x1, True)):
            fns[f"wina_C::linear (C++ op), {name}"] = (
                lambda x=x, topk=topk: kernels.linear(x, wt, None, packed.scale, thr,
                                                      packed.seg_ends, [32], topk, 8, True))
    return fns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", action="store_true", help="time torch.compile'd calls")
    ap.add_argument("--json", type=Path, help="also write the times here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    fns = calls(dev)
    if args.compile:
        fns = {name: torch.compile(fn, fullgraph=True) for name, fn in fns.items()}
    times = {name: per_call_us(fn, sync=sync) for name, fn in fns.items()}
    for name, us in times.items():
        print(f"{args.device}: {name:45s} {us:7.1f} us/call  ({us - times['torch.mm']:+.1f} "
              "vs torch.mm)")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "compiled": args.compile,
                                         "us_per_call": times}, indent=1))


if __name__ == "__main__":
    main()
