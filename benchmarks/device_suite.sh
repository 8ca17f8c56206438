#!/usr/bin/env bash
# The whole test suite on the GPU machine, in stages that each fit one device call
# (10 minutes), from the repo root after `source benchmarks/device_env.sh`:
#   OUT=dir bash benchmarks/device_suite.sh kernel         # no vLLM needed: every test but
#                       # the engine and server tests (~75 s), then kernel_bench.py --quick
#   OUT=dir bash benchmarks/device_suite.sh bf16-arch      # vLLM: bf16 kernels in the
#                       # Llama, Mistral, Gemma and Qwen2 engines (~390 s)
#   OUT=dir bash benchmarks/device_suite.sh bf16-arch2     # vLLM: the same in Qwen3, Gemma2,
#                       # Gemma3 and Gemma 3 vision-language, and the latter calibrated (~450 s)
#   OUT=dir bash benchmarks/device_suite.sh bf16-compiled  # vLLM: default compilation, CUDA
#                       # graphs, padded speculative steps, graph sizes (~360 s)
#   OUT=dir bash benchmarks/device_suite.sh parallel       # vLLM, 2 GPUs: pipeline and tensor
#                       # parallelism against one process, the Prometheus endpoints (~260 s)
#   OUT=dir bash benchmarks/device_suite.sh server         # vLLM: the OpenAI server tests (~130 s)
#   OUT=dir bash benchmarks/device_suite.sh engine         # vLLM: the float32 engine tests
#                       # and the server tests, as far as the time limit lets them go
# An eager vLLM 0.26 engine took about 50 s to start there (fourteenth session), so a stage
# holds at most about ten. pytest writes straight to the log, one line per test as it
# ends, so a stage stopped by its time limit still shows what passed.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu_suite}
stage=${1:-}
mkdir -p "$OUT"
{ git log -1 --format='commit %H' 2>/dev/null; git status --short 2>/dev/null
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python -c 'import torch; print("torch", torch.__version__)'
  python -c 'import vllm; print("vllm", vllm.__version__)' 2>/dev/null; } > "$OUT/tree_$stage.txt"
run_tests() {  # seconds, log name, pytest arguments...
  timeout "$1" python -m pytest -v -p no:cacheprovider -rfE "${@:3}" > "$OUT/$2" 2>&1
  grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed" "$OUT/$2" | tail -40
}
case "$stage" in
  kernel)
    timeout 330 python -m pytest -q -p no:cacheprovider -rfE -m "not engine and not server" \
      tests > "$OUT/tests_kernel.log" 2>&1
    tail -1 "$OUT/tests_kernel.log"
    timeout 120 python benchmarks/kernel_bench.py --quick --out "$OUT/quick" > "$OUT/quick.log" 2>&1
    grep "| 1 |" "$OUT/quick/kernel_bench.md" ;;
  bf16-arch) run_tests 540 tests_bf16_arch.log tests/test_engine.py \
      -k "bf16_kernels and (llama or mistral or gemma] or qwen2)" ;;
  bf16-arch2) run_tests 570 tests_bf16_arch2.log tests/test_engine.py \
      -k "(bf16_kernels and (qwen3 or gemma2 or gemma3)) or vision_language" ;;
  bf16-compiled)
    run_tests 540 tests_bf16_compiled.log tests/test_engine.py -k "bf16_tiny or between_graph" ;;
  parallel) run_tests 570 tests_parallel.log tests/test_engine.py \
      -k "pipeline_parallel or tensor_parallel or prometheus" ;;
  server) run_tests 570 tests_server.log tests/test_server.py ;;
  engine)
    run_tests 570 tests_engine.log tests/test_server.py tests/test_engine.py \
      -k "not bf16 and not between_graph" ;;
  *) echo "stage: got '$stage'; accepted: kernel, bf16-arch, bf16-arch2, bf16-compiled, parallel, server, engine" >&2
     exit 2 ;;
esac
