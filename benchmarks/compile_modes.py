"""The vLLM compilation setups the GPU benchmarks can run under (``--compile``)."""

CAPTURE = [1, 2, 4, 8, 16, 32, 64]  # CUDA-graph batch sizes: every benchmarked batch

COMPILE_MODES = {
    # No Inductor, full CUDA graphs for decode steps: an engine starts in about a minute.
    "graphs": {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY", "cudagraph_capture_sizes": CAPTURE},
    # vLLM's default (torch.compile with Inductor, piecewise and full CUDA graphs), as
    # `vllm serve` runs without flags; only the captured sizes are capped.
    "default": {"cudagraph_capture_sizes": CAPTURE},
}
