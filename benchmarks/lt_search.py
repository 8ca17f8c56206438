"""Would a cuBLASLt algorithm search close the dense path's last gaps? Measure before building.

The op's dense path runs ``x @ Wt`` on the input-major layout ("NN" to cuBLAS). Its tuner
(``wina_vllm/dense.py``) chooses among the forms torch exposes, and at a few shapes none of
them matches ``F.linear`` on the original layout (qkv at 256 tokens 1.05x, gate_up at 512
1.08-1.10x; benchmarks/RESULTS.md section 1). cuBLASLt can list several algorithms for
one problem (``cublasLtMatmulAlgoGetHeuristic``); this times each of them for the NN
problem, with ``torch.mm`` and ``F.linear`` in the same process, to see whether any reaches
``F.linear``. A small inline extension (built here, not part of the package) runs them.

Method as in kernel_bench.py: CUDA graphs over weight copies together larger than L2,
fresh random inputs, median of replays.

Usage: python benchmarks/lt_search.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_bench import ROT_BYTES, graph_time_us  # noqa: E402

from wina_vllm.shapes import LAYER_SHAPES  # noqa: E402

TOKENS = (128, 256, 512, 1024, 2048)
MAX_ALGOS = 16

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <cublasLt.h>
#include <map>
#include <tuple>
#include <vector>

#define LT_CHECK(expr)                                                             \
  do {                                                                             \
    cublasStatus_t st_ = (expr);                                                   \
    TORCH_CHECK(st_ == CUBLAS_STATUS_SUCCESS, #expr " failed: ", static_cast<int>(st_)); \
  } while (0)

namespace {
constexpr size_t kWorkspace = 32u << 20;

// out[T, N] = x[T, K] @ wt[K, N], row-major; to cuBLASLt (column-major):
// C[N, T] = A[N, K] (wt, ld N) * B[K, T] (x, ld K), no transposes.
struct Problem {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  std::vector<cublasLtMatmulHeuristicResult_t> algos;
};

Problem& problem(int64_t T, int64_t K, int64_t N) {
  static auto* problems = new std::map<std::tuple<int64_t, int64_t, int64_t>, Problem>();
  const auto key = std::make_tuple(T, K, N);
  auto it = problems->find(key);
  if (it != problems->end()) return it->second;
  Problem p;
  LT_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t no = CUBLAS_OP_N;
  LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &no, sizeof(no)));
  LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &no, sizeof(no)));
  LT_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, N, K, N));
  LT_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, K, T, K));
  LT_CHECK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_16BF, N, T, N));
  cublasLtMatmulPreference_t pref;
  LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = kWorkspace;
  LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  std::vector<cublasLtMatmulHeuristicResult_t> found(MAX_ALGOS);
  int n = 0;
  LT_CHECK(cublasLtMatmulAlgoGetHeuristic(at::cuda::getCurrentCUDABlasLtHandle(), p.op, p.a,
                                          p.b, p.c, p.c, pref, MAX_ALGOS, found.data(), &n));
  cublasLtMatmulPreferenceDestroy(pref);
  for (int i = 0; i < n; ++i)
    if (found[i].state == CUBLAS_STATUS_SUCCESS) p.algos.push_back(found[i]);
  return problems->emplace(key, std::move(p)).first->second;
}
}  // namespace

int64_t lt_algo_count(int64_t T, int64_t K, int64_t N) {
  return static_cast<int64_t>(problem(T, K, N).algos.size());
}

at::Tensor lt_matmul(const at::Tensor& x, const at::Tensor& wt, int64_t algo) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && wt.scalar_type() == at::kBFloat16 &&
              x.is_contiguous() && wt.is_contiguous(), "bf16 contiguous x [T, K], wt [K, N]");
  const int64_t T = x.size(0), K = x.size(1), N = wt.size(1);
  Problem& p = problem(T, K, N);
  TORCH_CHECK(algo >= 0 && algo < static_cast<int64_t>(p.algos.size()), "algo ", algo);
  static auto* workspace = new at::Tensor(
      at::empty({static_cast<int64_t>(kWorkspace)}, x.options().dtype(at::kByte)));
  at::Tensor out = at::empty({T, N}, x.options());
  const float alpha = 1.f, beta = 0.f;
  LT_CHECK(cublasLtMatmul(at::cuda::getCurrentCUDABlasLtHandle(), p.op, &alpha, wt.data_ptr(),
                          p.a, x.data_ptr(), p.b, &beta, out.data_ptr(), p.c, out.data_ptr(),
                          p.c, &p.algos[algo].algo, workspace->data_ptr(), kWorkspace,
                          at::cuda::getCurrentCUDAStream()));
  return out;
}
""".replace("MAX_ALGOS", str(MAX_ALGOS))


def build():
    from torch.utils.cpp_extension import load_inline

    return load_inline(name="wina_lt_search", cpp_sources=SOURCE,
                       functions=["lt_algo_count", "lt_matmul"], with_cuda=True,
                       extra_ldflags=["-lcublasLt"], extra_cflags=["-O2"])


def bench_shape(ext, name: str, k: int, n: int) -> list[dict]:
    copies = max(2, -(-ROT_BYTES // (n * k * 2)))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
               for _ in range(copies)]
    wts = [w.t().contiguous() for w in weights]
    rows = []
    for m in TOKENS:
        xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        ref = F.linear(xs[0], weights[0]).float()
        tol = 0.05 * ref.abs().max().item()
        row = dict(layer=name, K=k, N=n, M=m)
        row["f_linear_us"] = graph_time_us(
            [lambda w=w, x=x: F.linear(x, w) for w, x in zip(weights, xs)], reps=15)
        row["mm_us"] = graph_time_us(
            [lambda wt=wt, x=x: torch.mm(x, wt) for wt, x in zip(wts, xs)], reps=15)
        lt = []
        for a in range(ext.lt_algo_count(m, k, n)):
            if (ext.lt_matmul(xs[0], wts[0], a).float() - ref).abs().max().item() > tol:
                lt.append(None)  # wrong result: never a candidate
                continue
            lt.append(graph_time_us(
                [lambda wt=wt, x=x, a=a: ext.lt_matmul(x, wt, a) for wt, x in zip(wts, xs)],
                reps=15))
        row["lt_us"] = lt
        ok = [t for t in lt if t is not None]
        row["lt_best_us"] = min(ok) if ok else None
        row["lt_best_algo"] = lt.index(row["lt_best_us"]) if ok else None
        rows.append(row)
        best = (f"best lt #{row['lt_best_algo']} {row['lt_best_us'] / row['f_linear_us']:.3f}x"
                if ok else "no lt algo")
        print(f"{name:8s} M={m:5d} F.linear {row['f_linear_us']:7.1f} us | mm "
              f"{row['mm_us'] / row['f_linear_us']:.3f}x | lt #0 "
              f"{(lt[0] or float('nan')) / row['f_linear_us']:.3f}x | {best} | "
              f"{len(lt)} algos, {len(lt) - len(ok)} wrong", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ext = build()
    rows = []
    for layer, (k, segments) in LAYER_SHAPES["llama3-8b"].items():
        rows += bench_shape(ext, layer, k, sum(segments))
    result = dict(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"),
                  torch=torch.__version__, rows=rows)
    (args.out / "lt_search.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
