"""Registers and spills of each kernel instantiation, from ptxas, with no GPU.

The sparse GEMV's speed at small M hangs on its occupancy: 256-thread blocks at 64
registers or fewer run four per SM, at 65-80 three. A counting change that took M = 2
from 64 to 74 registers ran o_proj 12% slower on the H200 (RESULTS.md, section 2), so a
kernel change can be checked here, on any machine with nvcc, before device time is spent.

Usage: python benchmarks/ptxas_registers.py [--arch sm_90] [--source kernels_bf16.cu]
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

CSRC = Path(__file__).resolve().parent.parent / "wina_vllm" / "csrc"


def registers(source: str, arch: str) -> dict[str, tuple[int, int]]:
    """{kernel instantiation: (registers, spill store bytes)} as ptxas reports them."""
    proc = subprocess.run(["nvcc", f"-arch={arch}", "-O3", "-std=c++17", "-lineinfo",
                           "-Xptxas=-v", "-c", str(CSRC / source), "-o", "/dev/null"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source}:\n{proc.stderr[-3000:]}")
    found, name = {}, None
    for line in proc.stderr.splitlines():
        entry = re.search(r"Compiling entry function '(\S+)'", line)
        if entry:
            tokens = re.search(r"sparse_gemv_kernel\w*?Li(\d+)E", entry.group(1))
            name = f"sparse_gemv M={tokens.group(1)}" if tokens else (
                "topk_thresholds" if "topk_thresholds" in entry.group(1) else entry.group(1))
        spill = re.search(r"(\d+) bytes spill stores", line)
        if spill and name:
            found[name] = (found.get(name, (0, 0))[0], int(spill.group(1)))
        used = re.search(r"Used (\d+) registers", line)
        if used and name:
            found[name] = (int(used.group(1)), found.get(name, (0, 0))[1])
    return dict(sorted(found.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--source", default="kernels_bf16.cu")
    args = ap.parse_args()
    print("| kernel | registers | spill stores (bytes) |\n|---|---|---|")
    for name, (regs, spills) in registers(args.source, args.arch).items():
        print(f"| {name} | {regs} | {spills} |")


if __name__ == "__main__":
    main()
