// Instantiations for __nv_bfloat16 (one file per dtype so ninja compiles them in parallel).
#include "topk_thresholds.cuh"

namespace wina {
template void launch_sparse_gemv<__nv_bfloat16, 1>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__nv_bfloat16, 2>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__nv_bfloat16, 3>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__nv_bfloat16, 4>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__nv_bfloat16, 5>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__nv_bfloat16, 6>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__nv_bfloat16, 7>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__nv_bfloat16, 8>(const SparseGemvParams&, bool, cudaStream_t);
template int sparse_gemv_blocks_per_sm<__nv_bfloat16, 1>();
template int sparse_gemv_blocks_per_sm<__nv_bfloat16, 2>();
template int sparse_gemv_blocks_per_sm<__nv_bfloat16, 3>();
template int sparse_gemv_blocks_per_sm<__nv_bfloat16, 4>();
template int sparse_gemv_blocks_per_sm<__nv_bfloat16, 5>();
template int sparse_gemv_blocks_per_sm<__nv_bfloat16, 6>();
template int sparse_gemv_blocks_per_sm<__nv_bfloat16, 7>();
template int sparse_gemv_blocks_per_sm<__nv_bfloat16, 8>();
template void launch_topk_thresholds<__nv_bfloat16>(const void*, const float*, const SegmentKeep&, float*,
                                          int, int, int, bool, cudaStream_t);
}  // namespace wina
