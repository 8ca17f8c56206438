// Instantiations for __half (one file per dtype so ninja compiles them in parallel).
#include "topk_thresholds.cuh"

namespace wina {
template void launch_sparse_gemv<__half, 1>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__half, 2>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__half, 3>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__half, 4>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__half, 5>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__half, 6>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__half, 7>(const SparseGemvParams&, bool, cudaStream_t);
template void launch_sparse_gemv<__half, 8>(const SparseGemvParams&, bool, cudaStream_t);
template int sparse_gemv_blocks_per_sm<__half, 1>();
template int sparse_gemv_blocks_per_sm<__half, 2>();
template int sparse_gemv_blocks_per_sm<__half, 3>();
template int sparse_gemv_blocks_per_sm<__half, 4>();
template int sparse_gemv_blocks_per_sm<__half, 5>();
template int sparse_gemv_blocks_per_sm<__half, 6>();
template int sparse_gemv_blocks_per_sm<__half, 7>();
template int sparse_gemv_blocks_per_sm<__half, 8>();
template void launch_topk_thresholds<__half>(const void*, const float*, const SegmentKeep&, float*,
                                          int, int, int, bool, cudaStream_t);
}  // namespace wina
