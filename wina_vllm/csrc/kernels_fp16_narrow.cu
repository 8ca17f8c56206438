// Narrow-tile GEMV instances for __half (L = 8, 4, 2 lanes per row; M <= 4).
#include "sparse_gemv.cuh"

namespace wina {
WINA_GEMV_NARROW_INSTANCES(__half, 8)
WINA_GEMV_NARROW_INSTANCES(__half, 4)
WINA_GEMV_NARROW_INSTANCES(__half, 2)
}  // namespace wina
