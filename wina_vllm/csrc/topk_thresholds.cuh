// Per-token top-k thresholds for the WINA gate (top-k mode), on the device, no host sync.
//
// Architecture: one block per (token m, segment s). It writes the scores
// |x[m, i]| * scale[s, i] into shared memory as uint32 bit patterns (scores are
// non-negative, so their bits order like the floats), then finds the k-th largest
// with a radix select over 4-bit digits, 8 passes. Each thread counts the digits of
// its keys in byte fields of two registers (no shared-memory atomics: scores crowd
// into a few exponent bins, where atomics or match_any serialize), each warp sums
// them with __reduce_add_sync, and one warp picks the digit. thr[m, s] is that
// score, so the gate's ">= thr" keeps exactly k channels unless scores tie.
//
// Constraints: K * 4 bytes of shared memory (K <= 50k on sm_90), K / 1024 <= 255
// keys per thread (byte counters). keep[s] <= 0 gives +inf (keep nothing) and
// keep[s] >= K gives 0 (keep all). Needs sm_80 (__reduce_add_sync).
#pragma once

#include "sparse_gemv.cuh"

namespace wina {

constexpr int kSelectThreads = 1024;
constexpr int kSelectWarps = kSelectThreads / 32;

template <typename T>
__global__ void __launch_bounds__(kSelectThreads)
topk_thresholds_kernel(const T* __restrict__ x, const float* __restrict__ scale,
                       const SegmentKeep keep, float* __restrict__ thr, int K, int S) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint32_t* keys = reinterpret_cast<uint32_t*>(smem_raw);
  __shared__ int s_count[kSelectWarps][16];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining;
  const int m = blockIdx.x, s = blockIdx.y;
  const int k = keep.k[s];
  if (k <= 0 || k >= K) {
    if (threadIdx.x == 0) thr[m * S + s] = k <= 0 ? __int_as_float(0x7f800000) : 0.f;
    return;
  }
  for (int i = threadIdx.x; i < K; i += blockDim.x)
    keys[i] = __float_as_uint(fabsf(Vec<T>::to_float(x[static_cast<size_t>(m) * K + i])) *
                              scale[static_cast<size_t>(s) * K + i]);
  if (threadIdx.x == 0) { s_prefix = 0; s_remaining = k; }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint32_t mask = 0;
  for (int shift = 28; shift >= 0; shift -= 4) {
    __syncthreads();
    const uint32_t prefix = s_prefix;
    unsigned long long lo = 0, hi = 0;  // digit d counted in byte d % 8 of lo (d < 8) or hi
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
      const uint32_t key = keys[i];
      if ((key & mask) == prefix) {
        const uint32_t d = (key >> shift) & 15u;
        const unsigned long long inc = 1ull << ((d & 7u) * 8u);
        if (d < 8u) lo += inc; else hi += inc;
      }
    }
#pragma unroll
    for (int d = 0; d < 16; ++d) {
      const unsigned field = static_cast<unsigned>(((d < 8 ? lo : hi) >> ((d & 7) * 8)) & 255u);
      const unsigned total = __reduce_add_sync(0xffffffffu, field);
      if (lane == 0) s_count[warp][d] = static_cast<int>(total);
    }
    __syncthreads();
    if (warp == 0) {  // digit = largest d with (candidates with digit >= d) >= remaining
      int count = 0;
      if (lane < 16)
        for (int w = 0; w < kSelectWarps; ++w) count += s_count[w][lane];
      int at_least = count;  // suffix sum over digits >= lane
#pragma unroll
      for (int off = 1; off < 16; off *= 2) {
        const int v = __shfl_down_sync(0xffffffffu, at_least, off);
        if (lane + off < 16) at_least += v;
      }
      const int remaining = s_remaining;
      const unsigned hit = __ballot_sync(0xffffffffu, lane < 16 && at_least >= remaining);
      const int d = 31 - __clz(hit);
      const int above = __shfl_sync(0xffffffffu, at_least - count, d);
      if (lane == 0) {
        s_prefix = prefix | (static_cast<uint32_t>(d) << shift);
        s_remaining = remaining - above;
      }
    }
    mask |= 15u << shift;
  }
  __syncthreads();
  if (threadIdx.x == 0) thr[m * S + s] = __uint_as_float(s_prefix);
}

template <typename T>
void launch_topk_thresholds(const void* x, const float* scale, const SegmentKeep& keep, float* thr,
                            int M, int K, int S, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(K) * sizeof(uint32_t);
  static bool attr_set = false;
  if (!attr_set) {
    int device = 0, max_optin = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    cudaFuncSetAttribute(topk_thresholds_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         max_optin - 4096);
    attr_set = true;
  }
  topk_thresholds_kernel<T><<<dim3(M, S), kSelectThreads, smem, stream>>>(
      static_cast<const T*>(x), scale, keep, thr, K, S);
}

}  // namespace wina
