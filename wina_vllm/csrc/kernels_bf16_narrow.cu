// Narrow-tile GEMV instances for __nv_bfloat16 (L = 8, 4, 2 lanes per row; M <= 4).
#include "sparse_gemv.cuh"

namespace wina {
WINA_GEMV_NARROW_INSTANCES(__nv_bfloat16, 8)
WINA_GEMV_NARROW_INSTANCES(__nv_bfloat16, 4)
WINA_GEMV_NARROW_INSTANCES(__nv_bfloat16, 2)
}  // namespace wina
