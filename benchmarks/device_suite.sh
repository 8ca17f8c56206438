#!/usr/bin/env bash
# The whole test suite on the GPU machine, in stages that each fit one device call
# (10 minutes), from the repo root after `source benchmarks/device_env.sh`:
#   OUT=dir bash benchmarks/device_suite.sh kernel   # no vLLM needed: every test but the
#                                                    # engine and server tests, then
#                                                    # kernel_bench.py --quick
#   OUT=dir bash benchmarks/device_suite.sh bf16     # vLLM: the GPU-only engine tests
#                                                    # (bf16 kernels in every architecture,
#                                                    # default compilation, graph sizes)
#   OUT=dir bash benchmarks/device_suite.sh engine   # vLLM: the other engine tests and the
#                                                    # server tests (float32: the op's torch path)
# Each stage writes its pytest log (and the benchmark's files) under $OUT.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu_suite}
mkdir -p "$OUT"
{ git log -1 --format='commit %H' 2>/dev/null; git status --short 2>/dev/null
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python -c 'import torch; print("torch", torch.__version__)'
  python -c 'import vllm; print("vllm", vllm.__version__)' 2>/dev/null; } > "$OUT/tree_$1.txt"
pytest() { timeout "$1" python -m pytest -q -p no:cacheprovider -rfE "${@:2}"; }
case "$1" in
  kernel)
    pytest 330 -m "not engine and not server" tests > "$OUT/tests_kernel.log" 2>&1
    tail -3 "$OUT/tests_kernel.log"
    timeout 120 python benchmarks/kernel_bench.py --quick --out "$OUT/quick" > "$OUT/quick.log" 2>&1
    grep -A14 "M = 1" "$OUT/quick/kernel_bench.md" | head -20 ;;
  bf16)
    pytest 560 -v tests/test_engine.py -k "bf16 or between_graph" 2>&1 \
      | grep -v 'Writing model' > "$OUT/tests_bf16.log"
    grep -E "PASSED|FAILED|ERROR|passed|failed" "$OUT/tests_bf16.log" | tail -12 ;;
  engine)
    # Most telling first (the server, the model classes, every architecture), one line per
    # test as it ends, so a run the time limit stops still shows what passed.
    pytest 570 -v tests/test_server.py tests/test_engine.py::test_sparsity_zero_equals_dense \
      tests/test_engine.py -k "not bf16 and not between_graph" 2>&1 \
      | grep -v 'Writing model' > "$OUT/tests_engine.log"
    grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed" "$OUT/tests_engine.log" | tail -50 ;;
  *) echo "stage: got '$1'; accepted: kernel, bf16, engine" >&2; exit 2 ;;
esac
