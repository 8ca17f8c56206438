"""How often does the programmatic-launch chain test fail, per build of the package?

The chain test (tests/test_kernel_cuda.py) runs six layers under programmatic dependent
launch in a CUDA graph and requires the plain launches' output. A build whose select
issued its x loads before waiting for the previous kernel failed it in every repeat, while
another with the same source flaw passed (RESULTS.md section 1, twentieth session): this
repeats the test in one process per tree, each tree's package built into its own
directory, and counts the failures, with the first distinct messages.

Usage (CUDA): python benchmarks/select_probe/pdl_race.py --repeats 30 . ab/exp
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import sys
sys.path[:0] = [{tree!r}, {tests!r}]
import torch
if not torch.cuda.is_available():  # torch's "not compiled with CUDA" is an AssertionError
    sys.exit("pdl_race.py needs a CUDA device")
import test_kernel_cuda as t
import wina_vllm
fails = []
for _ in range({n}):
    try:
        t.test_programmatic_launch_chain_in_graph_equals_plain_launches({topk})
    except AssertionError as e:
        fails.append((str(e).splitlines() or ["assertion without a message"])[0])
print(f"{{wina_vllm.__file__}}: {{len(fails)}} of {n} failed", *sorted(set(fails))[:5], sep="\\n  ")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", type=Path, help="directories holding a wina_vllm package")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threshold-mode", action="store_true", help="the test's topk=False case")
    args = ap.parse_args()
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: accepted: 1 or more")
    for i, tree in enumerate(args.trees):
        if not (tree / "wina_vllm").is_dir():
            raise ValueError(f"{tree}: no wina_vllm package in it")
        code = _CHILD.format(tree=str(tree.resolve()), tests=str(ROOT / "tests"), n=args.repeats,
                             topk=not args.threshold_mode)
        env = {**os.environ, "WINA_BUILD_DIR": f"/tmp/wina-race-build-{i}"}
        subprocess.run([sys.executable, "-c", code], env=env, check=True)


if __name__ == "__main__":
    main()
