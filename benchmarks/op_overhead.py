"""Host cost of one ``wina::sparse_linear`` call on its dense path, against ``torch.mm``.

Every linear of every step that is not a CUDA-graph replay (prefill; every step of an
eager or piecewise-compiled engine) pays the op's dispatch on the host. Tiny shapes, so
the time is the dispatch, not the arithmetic. Median of 20 rounds of 500 calls.

Usage: python benchmarks/op_overhead.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wina_vllm import ops  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    packed = pack_linear(torch.randn(64, 64, device=dev), [64], "wina")
    x = torch.randn(16, 64, device=dev)  # 16 tokens > max_sparse_batch: the dense path
    call = (x, packed.weight_t, None, packed.scale, torch.zeros(1, device=dev), packed.stats,
            packed.workspace, packed.seg_ends, [32], True, 2, False)
    op = per_call_us(lambda: ops.sparse_linear(*call), sync=sync)
    mm = per_call_us(lambda: torch.mm(x, packed.weight_t[:, :64]), sync=sync)
    print(f"{args.device}: wina::sparse_linear (dense path) {op:.1f} us/call, torch.mm "
          f"{mm:.1f} us/call, dispatch overhead {op - mm:.1f} us/call")


if __name__ == "__main__":
    main()
