"""Same-machine A/B of kernel builds: the quick kernel benchmark, alternating builds.

Machine-to-machine spread on the H200s (cuBLAS's own gate_up time moves 57-64 us between
calls) hides sub-microsecond changes, so a kernel change is judged against the build it
replaces in the same call: each tree's package is built into its own directory, then
``kernel_bench.py --quick`` (this checkout's benchmark, the tree's package) runs for every
tree in turn, ``--rounds`` times, and a table per mode (threshold: ``kernel_ab.md``, top-k:
``kernel_ab_topk.md``) gives each point's median per tree and its ratio to the first tree.

A tree is a directory holding a ``wina_vllm`` package, e.g. another branch's:
    mkdir -p ab/exp && git archive exp/branch wina_vllm | tar -x -C ab/exp
(untracked, so it travels with the checkout to the device).

Usage: python benchmarks/kernel_ab.py --out DIR main=. exp=ab/exp [--rounds 3]   (CUDA)
       python benchmarks/kernel_ab.py --compare DIR [--mode topk]         (redo a table)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "kernel_bench.py"


# mode -> (kernel_bench.json's time field, the table's file name)
MODES = {"threshold": ("wina_threshold_us", "kernel_ab.md"),
         "topk": ("wina_topk_us", "kernel_ab_topk.md")}


def compare(out: Path, mode: str = "threshold") -> str:
    """Markdown table of one mode's medians per tree, from OUT/<tree>-<round>/."""
    metric = MODES[mode][0]
    runs: dict[str, list[list[dict]]] = {}
    for d in sorted(p for p in out.iterdir() if (p / "kernel_bench.json").exists()):
        tree = d.name.rsplit("-", 1)[0]
        runs.setdefault(tree, []).append(json.loads((d / "kernel_bench.json").read_text())["points"])
    if not runs:
        raise ValueError(f"no <tree>-<round>/kernel_bench.json under {out}")
    order = json.loads((out / "trees.json").read_text()) if (out / "trees.json").exists() \
        else sorted(runs)
    base = order[0]
    lines = ["| layer | M | sparsity | cuBLAS | " + " | ".join(
                 f"{t} (median of {len(runs[t])})" for t in order) + " | " +
             " | ".join(f"{t} / {base}" for t in order[1:]) + " |",
             "|" + "---|" * (4 + 2 * len(order) - 1)]
    for i, p in enumerate(runs[base][0]):
        med = {t: statistics.median(r[i][metric] for r in runs[t]) for t in order}
        dense = statistics.median(r[i]["dense_us"] for t in order for r in runs[t])
        lines.append(f"| {p['layer'].split('/')[-1]} | {p['M']} | {p['sparsity']:.2f} | "
                     f"{dense:.2f} | " + " | ".join(f"{med[t]:.2f}" for t in order) + " | " +
                     " | ".join(f"{med[t] / med[base]:.3f}" for t in order[1:]) + " |")
    return "\n".join(lines) + "\n"


def run(out: Path, trees: dict[str, Path], rounds: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "trees.json").write_text(json.dumps(list(trees)))
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")}
    envs = {name: {**env, "PYTHONPATH": str(path.resolve()),
                   "WINA_BUILD_DIR": f"/tmp/wina-ab-build-{name}"} for name, path in trees.items()}
    for name in trees:  # build every tree first, so the timed runs only time
        subprocess.run([sys.executable, "-c", "from wina_vllm import kernels; kernels.load()"],
                       env=envs[name], check=True)
    for r in range(1, rounds + 1):
        for name in trees:
            subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out / f"{name}-{r}")],
                           env=envs[name], check=True, stdout=subprocess.DEVNULL)
            print(f"{name} round {r} done", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trees", nargs="*", help="NAME=DIR, the first is the baseline")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare", type=Path, help="only tabulate the results in this directory")
    ap.add_argument("--mode", choices=sorted(MODES), default="threshold",
                    help="with --compare: which mode's times to tabulate")
    args = ap.parse_args()
    if args.compare:
        print(compare(args.compare, args.mode), end="")
        return
    trees = {}
    for spec in args.trees:
        name, sep, path = spec.partition("=")
        if not sep or not name or "-" in name or not (Path(path) / "wina_vllm").is_dir():
            raise ValueError(f"tree {spec!r}: expected NAME=DIR (NAME without '-') with "
                             "DIR/wina_vllm a package")
        trees[name] = Path(path)
    if len(trees) < 2 or args.out is None:
        raise ValueError("give --out and at least two trees, e.g. main=. exp=ab/exp")
    if args.rounds < 1:
        raise ValueError(f"--rounds {args.rounds}: accepted: 1 or more")
    run(args.out, trees, args.rounds)
    for mode, (_, name) in MODES.items():
        table = compare(args.out, mode)
        (args.out / name).write_text(table)
        print(f"{mode}:\n{table}", end="")


if __name__ == "__main__":
    main()
