// WINA fused gate + sparse GEMV for decode (M = 1..8 tokens).
//
// Architecture: y[m, n] = sum_{i kept by token m} x[m, i] * wt[i, n] (+ bias[n]) with
// the weight stored input-major, so a kept input channel i is one contiguous row.
// Grid: (tiles, chunks). A tile is kTileN = 256 output columns of one segment (a fused
// projection with its own gate); a chunk is chunk_rows input rows. Each of the 8 warps
// of a block owns chunk_rows / 8 rows: it scores them (|x| * scale >= thr for every token,
// thr raised to at least kMinScore, so a zero score is never kept), compacts the rows any
// token keeps into shared memory with ballots (in row order, so results are
// deterministic), then streams those rows, 16 bytes per lane and
// 8 rows in flight, accumulating in fp32. Rows no token keeps are never read. Warps are
// summed in shared memory; chunks are summed by the last block to arrive at a tile
// (arrival counter, one acq_rel atomic per block, reset by the last), in a fixed order,
// with its loads in one round trip; it adds the bias.
//
// Programmatic dependent launch (sm_90, when the launch asks for it): a block lets the
// next kernel on the stream begin launching at once, and waits for the previous kernel's
// results (x, top-k thresholds, the counters) before its first read, so launch and block
// start-up overlap the previous kernel's tail. (Triggering after the rows are streamed
// instead measured the same.)
//
// Constraints: ldw % 8 == 0 (16-byte rows), M <= 8, S <= 4, bf16 or fp16.
// Limitations: split-K partials cost chunks * M * 256 * 4 bytes per tile of extra
// L2 traffic; it is small next to the weight rows.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda/atomic>

#include "sparse_gemv.h"

namespace wina {

template <typename T> struct Vec;
template <> struct Vec<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static __device__ __forceinline__ float2 to_float2(uint32_t u) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u));
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16(v); }
};
template <> struct Vec<__half> {
  using T2 = __half2;
  static __device__ __forceinline__ float2 to_float2(uint32_t u) {
    return __half22float2(*reinterpret_cast<const __half2*>(&u));
  }
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half(v); }
};

// Weight rows are read once: skip L1, ask L2 to fetch 256-byte blocks.
__device__ __forceinline__ uint4 load_stream(const void* ptr) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(ptr));
  return r;
}

// griddepcontrol: no-ops when the kernel was not launched with programmatic serialization.
__device__ __forceinline__ void allow_next_kernel_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Launch `kernel` on `stream`, with programmatic stream serialization when `pdl`.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, int threads, size_t smem, bool pdl,
                   cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = pdl ? 1 : 0;
  cudaLaunchKernelEx(&cfg, kernel, static_cast<Args&&>(args)...);
}

template <typename T, int M>
__global__ void __launch_bounds__(kThreads) sparse_gemv_kernel(const SparseGemvParams p) {
  allow_next_kernel_launch();
  wait_for_previous_kernel();
  constexpr int kUnroll = M <= 4 ? 8 : 4;  // rows in flight per warp
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int tile = blockIdx.x, chunk = blockIdx.y;

  int seg = 0;
#pragma unroll
  for (int s = 1; s < kMaxSegments; ++s)
    if (s < p.num_segments && tile >= p.tile_begin[s]) seg = s;
  const int seg_start = p.seg_start[seg], seg_end = p.seg_end[seg];
  const int col0 = (seg_start & ~7) + (tile - p.tile_begin[seg]) * kTileN;
  const int my_col = col0 + lane * 8;  // this lane's 8 columns
  const bool lane_active = my_col < seg_end && my_col < p.ldw;

  // Per-warp row list in shared memory: row index + masked x for each token.
  const int warp_rows = p.chunk_rows / kWarps;
  int* s_idx = reinterpret_cast<int*>(smem_raw) + warp * warp_rows;
  float* s_x = reinterpret_cast<float*>(smem_raw + sizeof(int) * p.chunk_rows) +
               warp * warp_rows * M;

  const T* x = static_cast<const T*>(p.x);
  const float* scale = p.scale + static_cast<size_t>(seg) * p.K;
  float thr[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {  // raised to kMinScore; a NaN stays NaN and keeps nothing
    const float t = p.thr[m * p.thr_m_stride + seg];
    thr[m] = t < kMinScore ? kMinScore : t;
  }

  // 1. Gate: score this warp's rows for every token and compact the kept ones.
  const int row_begin = chunk * p.chunk_rows + warp * warp_rows;
  const int row_end = min(row_begin + warp_rows, p.K);
  int n_rows = 0;
  long long kept = 0;
  // All of this warp's x and scale loads are issued before any is used: one round trip
  // instead of one per 32 rows (down and gate_up have 56-128 rows per warp).
  constexpr int kGateRounds = kMaxChunkRows / kWarps / 32;
  float g_scale[kGateRounds], g_x[kGateRounds][M];
#pragma unroll
  for (int r = 0; r < kGateRounds; ++r) {
    const int i = row_begin + r * 32 + lane;
    const bool in = i < row_end;
    g_scale[r] = in ? __ldg(scale + i) : 0.f;
#pragma unroll
    for (int m = 0; m < M; ++m)
      g_x[r][m] = in ? Vec<T>::to_float(x[static_cast<size_t>(m) * p.K + i]) : 0.f;
  }
#pragma unroll
  for (int r = 0; r < kGateRounds; ++r) {
    const int base = row_begin + r * 32;
    if (base >= row_end) break;
    const int i = base + lane;
    float xm[M];
    bool any = false;
    if (i < row_end) {
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float v = g_x[r][m];
        const bool keep = fabsf(v) * g_scale[r] >= thr[m];
        xm[m] = keep ? v : 0.f;
        any |= keep;
        kept += keep;
      }
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, any);
    if (any) {
      const int pos = n_rows + __popc(ballot & ((1u << lane) - 1u));
      s_idx[pos] = i;
#pragma unroll
      for (int m = 0; m < M; ++m) s_x[pos * M + m] = xm[m];
    }
    n_rows += __popc(ballot);
  }
  __syncwarp();

  // 2. Stream the kept rows: 16 bytes (8 columns) per lane, kUnroll rows in flight.
  float acc[M][8];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[m][j] = 0.f;

  if (lane_active) {
    const T* wt = static_cast<const T*>(p.wt) + my_col;
    for (int r0 = 0; r0 < n_rows; r0 += kUnroll) {
      uint4 w[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        w[u] = r0 + u < n_rows ? load_stream(wt + static_cast<size_t>(s_idx[r0 + u]) * p.ldw)
                               : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (r0 + u >= n_rows) break;
        const float2 f0 = Vec<T>::to_float2(w[u].x), f1 = Vec<T>::to_float2(w[u].y);
        const float2 f2 = Vec<T>::to_float2(w[u].z), f3 = Vec<T>::to_float2(w[u].w);
#pragma unroll
        for (int m = 0; m < M; ++m) {
          const float xv = s_x[(r0 + u) * M + m];
          acc[m][0] = fmaf(xv, f0.x, acc[m][0]); acc[m][1] = fmaf(xv, f0.y, acc[m][1]);
          acc[m][2] = fmaf(xv, f1.x, acc[m][2]); acc[m][3] = fmaf(xv, f1.y, acc[m][3]);
          acc[m][4] = fmaf(xv, f2.x, acc[m][4]); acc[m][5] = fmaf(xv, f2.y, acc[m][5]);
          acc[m][6] = fmaf(xv, f3.x, acc[m][6]); acc[m][7] = fmaf(xv, f3.y, acc[m][7]);
        }
      }
    }
  }

  // Realized sparsity: the first tile of a segment counts its rows, once per token.
  if (tile == p.tile_begin[seg]) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) kept += __shfl_xor_sync(0xffffffffu, kept, off);
    if (lane == 0) atomicAdd(reinterpret_cast<unsigned long long*>(&p.stats[2 * seg]),
                             static_cast<unsigned long long>(kept));
    if (chunk == 0 && threadIdx.x == 0)
      atomicAdd(reinterpret_cast<unsigned long long*>(&p.stats[2 * seg + 1]),
                static_cast<unsigned long long>(p.M) * p.K);
  }

  // 3. Sum the warps: thread t ends with column col0 + t of every token.
  float* s_red = reinterpret_cast<float*>(smem_raw);  // [kWarps][kTileN], reuses the lists
  float total[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    __syncthreads();
    float4* dst = reinterpret_cast<float4*>(s_red + warp * kTileN + lane * 8);
    dst[0] = make_float4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
    dst[1] = make_float4(acc[m][4], acc[m][5], acc[m][6], acc[m][7]);
    __syncthreads();
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v += s_red[w * kTileN + threadIdx.x];
    total[m] = v;
  }

  const int col = col0 + threadIdx.x;
  const bool col_valid = col >= seg_start && col < seg_end;
  T* out = static_cast<T*>(p.out);
  const T* bias = static_cast<const T*>(p.bias);
  const float b = (bias != nullptr && col_valid) ? Vec<T>::to_float(bias[col]) : 0.f;

  if (p.chunks == 1) {
    if (col_valid)
#pragma unroll
      for (int m = 0; m < M; ++m) out[static_cast<size_t>(m) * p.N + col] = Vec<T>::from_float(total[m] + b);
    return;
  }

  // 4. Split-K: publish this chunk's partial; the last block of the tile sums them in order.
  const int tiles = p.tile_begin[p.num_segments];
  float* part = p.partial + (static_cast<size_t>(chunk) * tiles + tile) * M * kTileN;
#pragma unroll
  for (int m = 0; m < M; ++m) part[m * kTileN + threadIdx.x] = total[m];
  // Arrival: the barrier orders every thread's partial before thread 0's device-scope
  // acq_rel increment, which publishes them (release) and, in the last block, makes the
  // others' visible to it (acquire; the barrier passes that on to its threads). One
  // ordered atomic instead of a fence in every thread before and after a relaxed one:
  // 0.3-1.0 us less per call on the H200 (benchmarks/RESULTS.md, section 1).
  __shared__ bool s_last;
  __syncthreads();
  if (threadIdx.x == 0) {
    cuda::atomic_ref<int, cuda::thread_scope_device> arrived(p.counters[tile]);
    s_last = arrived.fetch_add(1, cuda::memory_order_acq_rel) == p.chunks - 1;
  }
  __syncthreads();
  if (!s_last) return;
  // Sum the chunks in one round trip: a thread owns 4 columns (one float4) of every 4th
  // chunk, with up to kInFlight loads issued before the first add; then the 4 groups are
  // added in shared memory. Fixed order, so deterministic. (Scalar loads 8 at a time took
  // 3-4 round trips on qkv, o and down; with the gate's single round trip this saves
  // 0.3-0.6 us per call on the H200, RESULTS.md section 1.)
  constexpr int kGroups = kThreads / (kTileN / 4);
  constexpr int kInFlight = 8;  // 32 chunks in one round; keeps M <= 2 at 64 registers
  const int grp = threadIdx.x / (kTileN / 4), col4 = threadIdx.x % (kTileN / 4);
  const size_t chunk_stride = static_cast<size_t>(tiles) * M * kTileN;
  const float* src = p.partial + static_cast<size_t>(tile) * M * kTileN + col4 * 4;
  float* s_sum = reinterpret_cast<float*>(smem_raw);  // [kGroups][kTileN]
#pragma unroll 1
  for (int m = 0; m < M; ++m) {
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 1
    for (int c0 = grp; c0 < p.chunks; c0 += kGroups * kInFlight) {
      float4 v[kInFlight];
#pragma unroll
      for (int j = 0; j < kInFlight; ++j) {
        const int c = c0 + j * kGroups;
        const float* at = src + c * chunk_stride + m * kTileN;
        v[j] = c < p.chunks ? __ldcg(reinterpret_cast<const float4*>(at))
                            : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int j = 0; j < kInFlight; ++j) {
        sum.x += v[j].x; sum.y += v[j].y; sum.z += v[j].z; sum.w += v[j].w;
      }
    }
    if (m > 0) __syncthreads();  // the previous token's sums have been read
    reinterpret_cast<float4*>(s_sum)[grp * (kTileN / 4) + col4] = sum;
    __syncthreads();
    if (col_valid) {
      float v = 0.f;
#pragma unroll
      for (int g = 0; g < kGroups; ++g) v += s_sum[g * kTileN + threadIdx.x];
      out[static_cast<size_t>(m) * p.N + col] = Vec<T>::from_float(v + b);
    }
  }
  if (threadIdx.x == 0) p.counters[tile] = 0;
}

// Resident blocks per SM of one instance at its largest shared memory (cached).
template <typename T, int M>
int sparse_gemv_blocks_per_sm() {
  static int blocks = 0;
  if (blocks == 0) {
    const size_t smem = kMaxChunkRows * (sizeof(int) + M * sizeof(float));
    cudaFuncSetAttribute(sparse_gemv_kernel<T, M>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(kMaxChunkRows * (sizeof(int) + kMaxTokens * sizeof(float))));
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, sparse_gemv_kernel<T, M>, kThreads, smem);
    if (blocks < 1) blocks = 1;
  }
  return blocks;
}

template <typename T, int M>
void launch_sparse_gemv(const SparseGemvParams& p, bool pdl, cudaStream_t stream) {
  const size_t list_bytes = static_cast<size_t>(p.chunk_rows) * (sizeof(int) + M * sizeof(float));
  const size_t red_bytes = static_cast<size_t>(kWarps) * kTileN * sizeof(float);
  const size_t smem = list_bytes > red_bytes ? list_bytes : red_bytes;
  sparse_gemv_blocks_per_sm<T, M>();  // sets the shared-memory limit once
  launch_kernel(sparse_gemv_kernel<T, M>, dim3(p.tile_begin[p.num_segments], p.chunks), kThreads,
                smem, pdl, stream, p);
}

}  // namespace wina
