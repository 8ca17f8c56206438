#!/usr/bin/env bash
# One device call: build the CUDA op, run its GPU tests, run the kernel benchmark.
# Usage (on the GPU machine, from the repo root): OUT=dir bash benchmarks/device_kernel.sh
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export WINA_BUILD_DIR=${WINA_BUILD_DIR:-/tmp/wina-build} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.limit --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  git log -1 --format='commit %H' 2>/dev/null || true; } | tee "$OUT/device_info.txt"
t0=$(date +%s)
WINA_BUILD_VERBOSE=1 python3 -c 'from wina_vllm import kernels; kernels.load()' > "$OUT/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - t0 ))s"; grep -E "error|registers|spill" "$OUT/build.log" | grep -v "0 bytes spill" | head -30
timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -x -p no:cacheprovider tests/test_kernel_cuda.py 2>&1 | tee "$OUT/kernel_tests.log" | tail -15
timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/kernel_bench.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/kernel_bench.log" | grep -E "M=1 |copy|dense path|Error|error" | head -60
