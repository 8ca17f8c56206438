// Per-token top-k thresholds for the WINA gate (top-k mode), on the device, no host sync.
//
// Architecture: one block per (token m, segment s). It writes the scores
// |x[m, i]| * scale[s, i] into shared memory as uint32 bit patterns (scores are
// non-negative, so their bits order like the floats), then finds the k-th largest
// with a 4-pass radix select over 8-bit digits: a shared-memory histogram per pass
// (warp-aggregated with match_any, since scores crowd into a few exponent bins),
// then one warp scans the 256 bins from the top. thr[m, s] is that score, so the
// gate's ">= thr" keeps exactly k channels unless scores tie.
//
// Constraints: K * 4 bytes of shared memory (K <= 50k on sm_90). keep[s] <= 0 gives
// +inf (keep nothing) and keep[s] >= K gives 0 (keep all).
#pragma once

#include "sparse_gemv.cuh"

namespace wina {

constexpr int kSelectThreads = 1024;

template <typename T>
__global__ void __launch_bounds__(kSelectThreads)
topk_thresholds_kernel(const T* __restrict__ x, const float* __restrict__ scale,
                       const SegmentKeep keep, float* __restrict__ thr, int K, int S) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint32_t* keys = reinterpret_cast<uint32_t*>(smem_raw);
  __shared__ int hist[256];
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
  uint32_t mask = 0;
  const int lane = threadIdx.x % 32;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    const uint32_t prefix = s_prefix;
    for (int base = 0; base < K; base += blockDim.x) {
      const int i = base + threadIdx.x;
      const bool in = i < K && (keys[i] & mask) == prefix;
      const int bin = in ? static_cast<int>((keys[i] >> shift) & 255u) : -1;
      const unsigned peers = __match_any_sync(0xffffffffu, bin);
      if (in && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // lane l holds bins 255-8l .. 248-8l, scanned from the top
      int counts[8], sum = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) { counts[j] = hist[255 - 8 * lane - j]; sum += counts[j]; }
      int incl = sum;
#pragma unroll
      for (int off = 1; off < 32; off *= 2) {
        const int v = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += v;
      }
      const int remaining = s_remaining;
      const unsigned hit = __ballot_sync(0xffffffffu, incl >= remaining);
      const int owner = __ffs(hit) - 1;
      if (lane == owner) {
        int above = incl - sum;
        int j = 0;
        while (above + counts[j] < remaining) above += counts[j++];
        s_prefix = prefix | (static_cast<uint32_t>(255 - 8 * lane - j) << shift);
        s_remaining = remaining - above;
      }
    }
    mask |= 255u << shift;
    __syncthreads();
  }
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
