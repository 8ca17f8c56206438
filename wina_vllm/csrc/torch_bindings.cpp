// Torch bindings of the WINA CUDA kernels: schemas, checks and launch geometry.
// Loaded with torch.ops.load_library; registers torch.ops.wina_C.{sparse_gemv, topk_thresholds}.
#include "ops.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "sparse_gemv.h"

namespace wina {
namespace {

#define WINA_CHECK(cond, ...) TORCH_CHECK(cond, "wina_C: ", __VA_ARGS__)

void check_activations(const at::Tensor& x, const at::Tensor& scale) {
  WINA_CHECK(x.is_cuda() && scale.is_cuda() && x.device() == scale.device(),
             "x and scale must be CUDA tensors on one device");
  WINA_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be contiguous [M, K], got sizes ",
             x.sizes(), " strides ", x.strides());
  WINA_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
             "x must be bfloat16 or float16, got ", x.scalar_type());
  WINA_CHECK(scale.scalar_type() == at::kFloat && scale.dim() == 2 && scale.is_contiguous() &&
                 scale.size(1) == x.size(1),
             "scale must be contiguous float32 [S, K], got ", scale.scalar_type(), " ",
             scale.sizes());
  WINA_CHECK(x.size(0) >= 1 && x.size(0) <= kMaxTokens, "x has ", x.size(0),
             " tokens; the sparse kernel takes 1 to ", kMaxTokens);
  WINA_CHECK(scale.size(0) >= 1 && scale.size(0) <= kMaxSegments, "scale has ", scale.size(0),
             " segments; accepted 1 to ", kMaxSegments);
}

}  // namespace

at::Tensor topk_thresholds(const at::Tensor& x, const at::Tensor& scale,
                           c10::IntArrayRef keep, bool pdl) {
  check_activations(x, scale);
  const int S = static_cast<int>(scale.size(0));
  WINA_CHECK(static_cast<int>(keep.size()) == S, "keep has ", keep.size(),
             " entries for ", S, " segments");
  const c10::cuda::CUDAGuard guard(x.device());
  SegmentKeep k{};
  for (int s = 0; s < S; ++s) k.k[s] = static_cast<int>(keep[s]);
  at::Tensor thr = at::empty({x.size(0), S}, x.options().dtype(at::kFloat));
  const int M = static_cast<int>(x.size(0)), K = static_cast<int>(x.size(1));
  auto stream = at::cuda::getCurrentCUDAStream();
  pdl = pdl && at::cuda::getCurrentDeviceProperties()->major >= 9;
  if (x.scalar_type() == at::kBFloat16)
    launch_topk_thresholds<__nv_bfloat16>(x.data_ptr(), scale.data_ptr<float>(), k,
                                          thr.data_ptr<float>(), M, K, S, pdl, stream);
  else
    launch_topk_thresholds<__half>(x.data_ptr(), scale.data_ptr<float>(), k,
                                   thr.data_ptr<float>(), M, K, S, pdl, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return thr;
}

namespace {

// The kernel instance for M tokens: launch it (p) or report its occupancy (p null).
template <typename T>
int dispatch_tokens(int M, const SparseGemvParams* p, bool pdl, cudaStream_t stream) {
#define WINA_CASE(m)                                                     \
  case m:                                                                \
    if (p == nullptr) return sparse_gemv_blocks_per_sm<T, m>();          \
    launch_sparse_gemv<T, m>(*p, pdl, stream);                           \
    return 0;
  switch (M) {
    WINA_CASE(1) WINA_CASE(2) WINA_CASE(3) WINA_CASE(4)
    WINA_CASE(5) WINA_CASE(6) WINA_CASE(7) WINA_CASE(8)
  }
#undef WINA_CASE
  return 0;
}

// Rows per block along K: as many blocks as fit on the GPU at once (one wave, no
// tail of a second), whole multiples of 64 rows (8 per warp), at most kMaxChunkRows.
void choose_chunks(SparseGemvParams& p, int tiles, int resident_blocks) {
  const int wanted = std::max(1, resident_blocks / tiles);
  int rows = (p.K + wanted - 1) / wanted;
  rows = std::min(kMaxChunkRows, std::max(64, (rows + 63) / 64 * 64));
  p.chunk_rows = rows;
  p.chunks = (p.K + rows - 1) / rows;
}

}  // namespace

at::Tensor sparse_gemv(const at::Tensor& x,              // [M, K]
                       const at::Tensor& weight_t,       // [K, ldw], input-major
                       const c10::optional<at::Tensor>& bias,  // [N]
                       const at::Tensor& scale,          // [S, K] float32
                       const at::Tensor& thresholds,     // [S] or [M, S] float32
                       bool per_token,                   // thresholds are [M, S]
                       at::Tensor& stats,                // [S, 2] int64, accumulated
                       at::Tensor& workspace,            // int32 counters, zero
                       c10::IntArrayRef seg_ends,        // S cumulative output widths
                       bool pdl) {                       // programmatic dependent launch
  check_activations(x, scale);
  WINA_CHECK(weight_t.device() == x.device() && weight_t.scalar_type() == x.scalar_type(),
             "weight_t must be on x's device with x's dtype, got ", weight_t.scalar_type());
  WINA_CHECK(weight_t.dim() == 2 && weight_t.is_contiguous() && weight_t.size(0) == x.size(1),
             "weight_t must be contiguous [K, ldw] with K = ", x.size(1), ", got ",
             weight_t.sizes());
  WINA_CHECK(weight_t.size(1) % 8 == 0, "weight_t's row length must be a multiple of 8, got ",
             weight_t.size(1));
  const int M = static_cast<int>(x.size(0)), K = static_cast<int>(x.size(1));
  const int S = static_cast<int>(scale.size(0));
  WINA_CHECK(static_cast<int>(seg_ends.size()) == S, "seg_ends has ", seg_ends.size(),
             " entries for ", S, " segments");
  const int N = static_cast<int>(seg_ends[S - 1]);
  WINA_CHECK(N <= weight_t.size(1), "N = ", N, " exceeds weight_t's row length ",
             weight_t.size(1));
  WINA_CHECK(thresholds.scalar_type() == at::kFloat && thresholds.is_contiguous() &&
                 thresholds.numel() == (per_token ? M * S : S),
             "thresholds must be contiguous float32 ", per_token ? "[M, S]" : "[S]", ", got ",
             thresholds.sizes());
  WINA_CHECK(stats.scalar_type() == at::kLong && stats.numel() == 2 * S && stats.is_contiguous(),
             "stats must be contiguous int64 [S, 2], got ", stats.sizes());
  WINA_CHECK(workspace.scalar_type() == at::kInt && workspace.is_contiguous(),
             "workspace must be contiguous int32");
  if (bias.has_value())
    WINA_CHECK(bias->scalar_type() == x.scalar_type() && bias->numel() == N &&
                   bias->is_contiguous(),
               "bias must be contiguous [N = ", N, "] of x's dtype");

  const c10::cuda::CUDAGuard guard(x.device());
  SparseGemvParams p{};
  p.K = K; p.N = N; p.ldw = static_cast<int>(weight_t.size(1)); p.M = M;
  p.num_segments = S;
  p.thr_m_stride = per_token ? S : 0;
  int start = 0, tiles = 0;
  for (int s = 0; s < S; ++s) {
    const int end = static_cast<int>(seg_ends[s]);
    WINA_CHECK(end > start, "seg_ends must be increasing, got ", seg_ends);
    p.seg_start[s] = start; p.seg_end[s] = end; p.tile_begin[s] = tiles;
    tiles += (end - (start & ~7) + kTileN - 1) / kTileN;
    start = end;
  }
  p.tile_begin[S] = tiles;
  WINA_CHECK(workspace.numel() >= tiles, "workspace has ", workspace.numel(),
             " counters, this layer needs ", tiles);
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const int per_sm = bf16 ? dispatch_tokens<__nv_bfloat16>(M, nullptr, false, nullptr)
                          : dispatch_tokens<__half>(M, nullptr, false, nullptr);
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  const int resident = per_sm * props->multiProcessorCount;
  choose_chunks(p, tiles, resident);
  // Programmatic launch needs sm_90, and pays only when this grid fills the GPU: the
  // next kernel's blocks take the slots a partial wave leaves free and wait there. Measured
  // on the H200 (benchmarks/RESULTS.md, section 1): qkv, o and down (97-100% of the slots)
  // gain 0.3-0.8 us a call; gate_up (85%) lost 1-3 us.
  pdl = pdl && props->major >= 9 && 10 * tiles * p.chunks >= 9 * resident;

  at::Tensor out = at::empty({M, N}, x.options());
  at::Tensor partial;
  if (p.chunks > 1)
    partial = at::empty({static_cast<int64_t>(p.chunks) * tiles * M * kTileN},
                        x.options().dtype(at::kFloat));
  p.x = x.data_ptr(); p.wt = weight_t.data_ptr(); p.out = out.data_ptr();
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.scale = scale.data_ptr<float>(); p.thr = thresholds.data_ptr<float>();
  p.partial = p.chunks > 1 ? partial.data_ptr<float>() : nullptr;
  p.counters = workspace.data_ptr<int>();
  p.stats = reinterpret_cast<long long*>(stats.data_ptr<int64_t>());

  auto stream = at::cuda::getCurrentCUDAStream();
  if (bf16) dispatch_tokens<__nv_bfloat16>(M, &p, pdl, stream);
  else dispatch_tokens<__half>(M, &p, pdl, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

TORCH_LIBRARY(wina_C, m) {
  m.def("sparse_gemv(Tensor x, Tensor weight_t, Tensor? bias, Tensor scale, Tensor thresholds, "
        "bool per_token, Tensor(a!) stats, Tensor(b!) workspace, int[] seg_ends, bool pdl) -> Tensor");
  m.def("topk_thresholds(Tensor x, Tensor scale, int[] keep, bool pdl) -> Tensor");
}

TORCH_LIBRARY_IMPL(wina_C, CUDA, m) {
  m.impl("sparse_gemv", &sparse_gemv);
  m.impl("topk_thresholds", &topk_thresholds);
}

}  // namespace wina
