#!/usr/bin/env bash
# The GPU checks the thirteenth session's device time did not reach (RESULTS.md, section 2,
# "Thirteenth session"), in one call on a machine with vLLM staged:
#   source benchmarks/device_env.sh && OUT=dir bash benchmarks/device_padding_check.sh
# 1. the GPU kernel and op tests at this tree (zero scores never kept, padding rows);
# 2. the GPU-only engine tests: the tiny bf16 model under default compilation with padded
#    speculative steps, and the refusal of a max_sparse_batch between graph sizes;
# 3. main's kernel against count_real_tokens_early.patch (counting before the weight
#    stream, so padding rows leave the counts), alternating, kernel_bench.py --quick.
set -uo pipefail
OUT=${OUT:-benchmarks/results/padding_gpu/check}
mkdir -p "$OUT"
git log -1 --format='commit %H' > "$OUT/tree.txt" 2>/dev/null
git status --short >> "$OUT/tree.txt" 2>/dev/null
timeout 200 python -m pytest -q -p no:cacheprovider tests/test_kernel_cuda.py \
  tests/test_native_op_cuda.py tests/test_gate.py tests/test_ops.py > "$OUT/kernel_tests.log" 2>&1
tail -1 "$OUT/kernel_tests.log"
timeout 400 python -m pytest -q -p no:cacheprovider -rA tests/test_engine.py \
  -k "bf16_tiny or between_graph" 2>&1 | grep -v 'Writing model' > "$OUT/engine_tests.log"
grep -E '^(PASSED|FAILED|ERROR)' "$OUT/engine_tests.log"
rm -rf /tmp/early && mkdir -p /tmp/early && cp -r wina_vllm /tmp/early/ \
  && patch -s -d /tmp/early -p1 < benchmarks/results/padding_gpu/count_real_tokens_early.patch \
  && timeout 150 python benchmarks/kernel_ab.py --out "$OUT/ab" main=. early=/tmp/early \
     --rounds 3 > "$OUT/ab.log" 2>&1
tail -30 "$OUT/ab.log"
