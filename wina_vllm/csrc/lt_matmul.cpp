// The dense product on the input-major layout by a chosen cuBLASLt algorithm.
//
// out[T, N] = x[T, K] @ weight_t[K, :N] (row-major; weight_t's rows are ldw >= N long). To
// cuBLASLt, column-major, that is C[N, T] = A[N, K] (ld ldw) * B[K, T] (ld K), no transposes.
// cuBLAS's default choice for this layout is slow at a few shapes (benchmarks/RESULTS.md,
// section 1); cuBLASLt lists several algorithms per problem, and wina_vllm/dense.py times
// them at load and keeps the fastest. The list is cached per problem, so an index names
// the same algorithm for the life of the process.
//
// Registers torch.ops.wina_C.{lt_algos, lt_matmul} (CUDA); kernels.py checks their inputs
// first. Pointers must be 16-byte aligned (the heuristic is asked for algorithms valid at
// that alignment); dense.py checks.
#include "ops.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublasLt.h>
#include <torch/library.h>

#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace wina {
namespace {

constexpr int kMaxAlgos = 8;
constexpr size_t kWorkspaceBytes = 32u << 20;
constexpr uint32_t kAlignment = 16;

#define WINA_LT_CHECK(expr)                                                               \
  do {                                                                                    \
    const cublasStatus_t status_ = (expr);                                                \
    TORCH_CHECK(status_ == CUBLAS_STATUS_SUCCESS, "wina_C: " #expr " failed with status ", \
                static_cast<int>(status_));                                               \
  } while (0)

struct Problem {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  std::vector<cublasLtMatmulAlgo_t> algos;
};

using ProblemKey = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int>;  // dev, T, K, N, ldw, dtype

const Problem& problem(const at::Tensor& x, const at::Tensor& weight_t, int64_t n) {
  static std::mutex mutex;
  static auto* problems = new std::map<ProblemKey, Problem>();  // never freed: outlives CUDA
  const int64_t T = x.size(0), K = x.size(1), ldw = weight_t.size(1);
  const ProblemKey key{x.get_device(), T, K, n, ldw, static_cast<int>(x.scalar_type())};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = problems->find(key);
  if (it != problems->end()) return it->second;
  const cudaDataType_t type = x.scalar_type() == at::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F;
  Problem p;
  WINA_LT_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t no = CUBLAS_OP_N;
  WINA_LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &no, sizeof(no)));
  WINA_LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &no, sizeof(no)));
  WINA_LT_CHECK(cublasLtMatrixLayoutCreate(&p.a, type, n, K, ldw));
  WINA_LT_CHECK(cublasLtMatrixLayoutCreate(&p.b, type, K, T, K));
  WINA_LT_CHECK(cublasLtMatrixLayoutCreate(&p.c, type, n, T, n));
  cublasLtMatmulPreference_t pref;
  WINA_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t workspace = kWorkspaceBytes;
  WINA_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    WINA_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &kAlignment, sizeof(kAlignment)));
  cublasLtMatmulHeuristicResult_t found[kMaxAlgos];
  int count = 0;
  WINA_LT_CHECK(cublasLtMatmulAlgoGetHeuristic(at::cuda::getCurrentCUDABlasLtHandle(), p.op, p.a,
                                               p.b, p.c, p.c, pref, kMaxAlgos, found, &count));
  cublasLtMatmulPreferenceDestroy(pref);
  for (int i = 0; i < count; ++i)
    if (found[i].state == CUBLAS_STATUS_SUCCESS) p.algos.push_back(found[i].algo);
  return problems->emplace(key, std::move(p)).first->second;
}

void check(const at::Tensor& x, const at::Tensor& weight_t, int64_t n) {
  TORCH_CHECK(x.is_cuda() && weight_t.device() == x.device(), "wina_C: x and weight_t on one GPU");
  TORCH_CHECK(x.scalar_type() == weight_t.scalar_type() &&
                  (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf),
              "wina_C: lt_matmul takes bf16 or fp16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 2 && weight_t.dim() == 2 && x.is_contiguous() && weight_t.is_contiguous() &&
                  weight_t.size(0) == x.size(1) && 0 < n && n <= weight_t.size(1),
              "wina_C: lt_matmul needs contiguous x [T, K], weight_t [K, >= n]; got x ",
              x.sizes(), ", weight_t ", weight_t.sizes(), ", n ", n);
}

}  // namespace

int64_t lt_algos(const at::Tensor& x, const at::Tensor& weight_t, int64_t n) {
  check(x, weight_t, n);
  const c10::cuda::CUDAGuard guard(x.device());
  return static_cast<int64_t>(problem(x, weight_t, n).algos.size());
}

at::Tensor lt_matmul(const at::Tensor& x, const at::Tensor& weight_t, int64_t n, int64_t algo) {
  check(x, weight_t, n);
  const c10::cuda::CUDAGuard guard(x.device());
  const Problem& p = problem(x, weight_t, n);
  TORCH_CHECK(0 <= algo && algo < static_cast<int64_t>(p.algos.size()), "wina_C: algorithm ",
              algo, " of ", p.algos.size());
  // One workspace per device, made on the first call (at load, by the tuner: never first
  // inside a CUDA-graph capture) and kept for the process.
  static std::mutex mutex;
  static auto* workspaces = new std::map<int, at::Tensor>();
  at::Tensor workspace;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto& w = (*workspaces)[x.get_device()];
    if (!w.defined()) w = at::empty({static_cast<int64_t>(kWorkspaceBytes)}, x.options().dtype(at::kByte));
    workspace = w;
  }
  at::Tensor out = at::empty({x.size(0), n}, x.options());
  const float alpha = 1.f, beta = 0.f;
  WINA_LT_CHECK(cublasLtMatmul(at::cuda::getCurrentCUDABlasLtHandle(), p.op, &alpha,
                               weight_t.data_ptr(), p.a, x.data_ptr(), p.b, &beta, out.data_ptr(),
                               p.c, out.data_ptr(), p.c, &p.algos[algo], workspace.data_ptr(),
                               kWorkspaceBytes, at::cuda::getCurrentCUDAStream()));
  return out;
}

TORCH_LIBRARY_FRAGMENT(wina_C, m) {
  m.def("lt_algos(Tensor x, Tensor weight_t, int n) -> int");
  m.def("lt_matmul(Tensor x, Tensor weight_t, int n, int algo) -> Tensor");
}

TORCH_LIBRARY_IMPL(wina_C, CUDA, m) {
  m.impl("lt_algos", &lt_algos);
  m.impl("lt_matmul", &lt_matmul);
}

}  // namespace wina
