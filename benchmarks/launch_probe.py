"""What the grid shape alone costs: empty kernels of the sparse GEMV's geometries, timed.

The kernel ablation (RESULTS.md, section 1) left about 2.3 us per call at 100% sparsity
with neither the gate's loads nor the split-K finish, against 0.9 us for a graph of tiny
kernels. This times kernels that do nothing but (optionally) the in-block sum's shared
memory round, at the shipped grid (one wave of 256-thread blocks, 4 per SM) and at the
same warps in fewer, larger blocks, to see how much of that is the number of blocks.

Usage: PYTHONPATH=. python benchmarks/launch_probe.py [--json FILE]   (CUDA only)
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.cpp_extension import load_inline

from kernel_bench import graph_time_us  # this directory: the kernel benchmark's timing

SOURCE = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

template <bool kSum>
__global__ void probe_kernel(float* out) {
  extern __shared__ float s[];
  if (kSum) {
    s[threadIdx.x] = threadIdx.x;
    __syncthreads();
    float v = 0.f;
    for (int w = 0; w < 8; ++w) v += s[(threadIdx.x + 32 * w) % blockDim.x];
    if (v == -1.f) out[blockIdx.x] = v;  // never: keeps the sum
  }
}

void probe(torch::Tensor out, int64_t blocks, int64_t threads, int64_t smem, bool sum) {
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (sum)
    probe_kernel<true><<<blocks, threads, smem, stream>>>(out.data_ptr<float>());
  else
    probe_kernel<false><<<blocks, threads, smem, stream>>>(out.data_ptr<float>());
}
"""

CONFIGS = [  # (name, blocks, threads)
    ("1 block x 256", 1, 256),
    ("132 x 256 (1 per SM)", 132, 256),
    ("528 x 256 (shipped: 4 per SM)", 528, 256),
    ("132 x 1024 (same warps, 1 per SM)", 132, 1024),
    ("264 x 512 (same warps, 2 per SM)", 264, 512),
    ("1056 x 128 (same warps, 8 per SM)", 1056, 128),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json")
    args = ap.parse_args()
    mod = load_inline("wina_launch_probe", cpp_sources="void probe(torch::Tensor out, "
                      "int64_t blocks, int64_t threads, int64_t smem, bool sum);",
                      cuda_sources=SOURCE, functions=["probe"], verbose=False)
    out = torch.zeros(4096, device="cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for name, blocks, threads in CONFIGS:
        blocks = blocks * sms // 132  # the same per-SM shape on another GPU
        for sum_ in (False, True):
            us = graph_time_us([lambda: mod.probe(out, blocks, threads, 9216, sum_)] * 50)
            rows.append(dict(config=name, blocks=blocks, threads=threads, in_block_sum=sum_,
                             us=us))
            print(f"{name:36s} sum={int(sum_)}  {us:6.2f} us", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
