// Wide-tile GEMV and top-k instances for __half (one file per dtype and tile family, so
// ninja compiles them in parallel).
#include "topk_thresholds.cuh"

namespace wina {
WINA_GEMV_WIDE_INSTANCES(__half)
template void launch_topk_thresholds<__half>(const void*, const float*, const SegmentKeep&, float*,
                                          int, int, int, bool, cudaStream_t);
}  // namespace wina
