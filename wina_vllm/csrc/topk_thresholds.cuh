// Per-token top-k thresholds for the WINA gate (top-k mode), on the device, no host sync.
//
// Architecture: one block per (token m, segment s). It writes the scores
// |x[m, i]| * scale[s, i] into shared memory as uint32 bit patterns (scores are
// non-negative, so their bits order like the floats: bit 31 is always 0), then finds the
// k-th largest by radix select in three passes over bits 30..20, 19..9 and 8..0. Each
// pass histograms the keys that match the digits found so far (2048 bins; the first
// pass's bins are exponent plus 3 mantissa bits, so keys spread and shared-memory
// atomics rarely collide), then a block-wide scan from the top bin finds the digit.
// thr[m, s] is that key, so the gate's ">= thr" (which never keeps a zero score) keeps
// exactly k channels unless scores tie or fewer than k are nonzero.
// The first pass's histogram is taken as the keys are made, from registers, and each
// thread clears the two bins it scanned as it reads them (select_digit), so no pass starts
// with a clearing barrier (benchmarks/select_probe, RESULTS.md section 1, eighteenth and
// nineteenth sessions).
//
// Latency, which is all this kernel costs at decode: the scale (static weights) is loaded
// before waiting for the previous kernel (programmatic dependent launch), x after, both
// as 16-byte vectors issued before any is used (one round trip; K <= kMaxVecs * 8 *
// kSelectThreads), and the sparse GEMV that consumes thr is let launch at once, so its
// blocks are resident and waiting when this grid ends.
//
// Constraints: K * 4 bytes of shared memory (kernels.check_keep raises ValueError beyond
// the GPU's opt-in bound). keep[s] <= 0 gives
// +inf (keep nothing) and keep[s] >= K gives 0 (keep every nonzero channel).
#pragma once

#include "sparse_gemv.cuh"

namespace wina {

constexpr int kSelectThreads = 1024;
constexpr int kSelectWarps = kSelectThreads / 32;
constexpr int kSelectBins = 2048;  // 2 bins per thread
constexpr int kMaxVecs = 4;  // 16-byte vectors of x per thread: K <= 32768 in one round trip

// One radix digit: the histogram of the candidate keys is complete in hist; thread t owns
// bins 2047-2t and 2046-2t (adjacent, so one 8-byte access), scans from the top bin down,
// appends the bin holding the remaining-th largest key to s_prefix, and clears its two
// bins for the next digit, whose atomics start after this function's barriers.
__device__ __forceinline__ void select_digit(int* hist, int shift, uint32_t* s_prefix,
                                             int* s_remaining, int* s_warp_excl) {
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const uint32_t prefix = *s_prefix;
  const int remaining = *s_remaining;
  const int b0 = kSelectBins - 1 - 2 * tid, b1 = b0 - 1;
  const int h0 = hist[b0], h1 = hist[b1], local = h0 + h1;
  hist[b0] = 0;
  hist[b1] = 0;
  int incl = local;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const int v = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += v;
  }
  if (lane == 31) s_warp_excl[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int total = s_warp_excl[lane];
    int wincl = total;
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const int v = __shfl_up_sync(0xffffffffu, wincl, off);
      if (lane >= off) wincl += v;
    }
    s_warp_excl[lane] = wincl - total;
  }
  __syncthreads();
  const int before = s_warp_excl[warp] + incl - local;  // keys in bins above b0
  if (before < remaining && before + local >= remaining) {  // exactly one thread
    const bool first = before + h0 >= remaining;
    *s_prefix = prefix | (static_cast<uint32_t>(first ? b0 : b1) << shift);
    *s_remaining = remaining - (first ? before : before + h0);
  }
  __syncthreads();
}

// The next digit, bits shift + bits - 1 .. shift, of the keys whose higher bits equal the
// prefix so far: its histogram from the keys in shared memory, then the digit chosen.
__device__ __forceinline__ void next_digit(const uint32_t* keys, int K, int shift, int bits,
                                           int* hist, uint32_t* s_prefix, int* s_remaining,
                                           int* s_warp_excl) {
  const uint32_t prefix = *s_prefix, higher = ~0u << (shift + bits), digit = (1u << bits) - 1;
  for (int i = threadIdx.x; i < K; i += kSelectThreads) {
    const uint32_t kv = keys[i];
    if ((kv & higher) == prefix) atomicAdd(&hist[(kv >> shift) & digit], 1);
  }
  __syncthreads();
  select_digit(hist, shift, s_prefix, s_remaining, s_warp_excl);
}

// VEC: x and scale rows read as 16-byte vectors (K % 8 == 0, aligned rows), else one
// channel at a time. Two instantiations rather than a runtime flag: with the scalar loop in
// the same kernel the vector path took 0.2-0.5 us more per call (H100: 1.4-2.3% of a
// top-k call at M = 1 in qkv, o and down; RESULTS.md section 1, twentieth session).
// x is read after wait_for_previous_kernel(), since the previous kernel may write it, so it
// is not __restrict__: that would let the compiler use the non-coherent path
// (ld.global.nc), which assumes x is read-only while this kernel lives, and ptxas may
// then issue those loads before the wait (a build that did read stale x in a chain of
// programmatically launched layers: RESULTS.md section 1, twentieth session).
template <typename T, bool VEC>
__global__ void __launch_bounds__(kSelectThreads)
topk_thresholds_kernel(const T* x, const float* __restrict__ scale,
                       const SegmentKeep keep, float* __restrict__ thr, int K, int S) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint32_t* keys = reinterpret_cast<uint32_t*>(smem_raw);
  __shared__ __align__(16) int hist[kSelectBins];
  __shared__ int s_warp_excl[kSelectWarps];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining;
  const int m = blockIdx.x, s = blockIdx.y;
  const int k = keep.k[s];
  allow_next_kernel_launch();
  if (k <= 0 || k >= K) {
    wait_for_previous_kernel();  // thr may still be read by the previous kernel
    if (threadIdx.x == 0) thr[m * S + s] = k <= 0 ? __int_as_float(0x7f800000) : 0.f;
    return;
  }
  const int tid = threadIdx.x;
  const T* xm = x + static_cast<size_t>(m) * K;
  const float* sc = scale + static_cast<size_t>(s) * K;
  const auto key = [](float xv, float sv) { return __float_as_uint(fabsf(xv) * sv); };
  hist[tid] = 0;
  hist[tid + kSelectThreads] = 0;
  if (tid == 0) { s_prefix = 0; s_remaining = k; }
  __syncthreads();  // hist cleared
  // Keys to shared memory, and the first digit's histogram (bits 30..20) from registers.
  if constexpr (VEC) {  // 8 channels per vector: x as one uint4, scale as two float4
    const int n_vec = K / 8;
    float4 s_lo[kMaxVecs], s_hi[kMaxVecs];
#pragma unroll
    for (int j = 0; j < kMaxVecs; ++j) {
      const int v = tid + j * kSelectThreads;
      if (v < n_vec) {
        s_lo[j] = __ldg(reinterpret_cast<const float4*>(sc) + 2 * v);
        s_hi[j] = __ldg(reinterpret_cast<const float4*>(sc) + 2 * v + 1);
      }
    }
    wait_for_previous_kernel();
    uint4 xv[kMaxVecs];
#pragma unroll
    for (int j = 0; j < kMaxVecs; ++j) {
      const int v = tid + j * kSelectThreads;
      if (v < n_vec) xv[j] = *(reinterpret_cast<const uint4*>(xm) + v);
    }
#pragma unroll
    for (int j = 0; j < kMaxVecs; ++j) {
      const int v = tid + j * kSelectThreads;
      if (v >= n_vec) break;
      const float2 a = Vec<T>::to_float2(xv[j].x), b = Vec<T>::to_float2(xv[j].y);
      const float2 c = Vec<T>::to_float2(xv[j].z), d = Vec<T>::to_float2(xv[j].w);
      const uint4 lo = make_uint4(key(a.x, s_lo[j].x), key(a.y, s_lo[j].y),
                                  key(b.x, s_lo[j].z), key(b.y, s_lo[j].w));
      const uint4 hi = make_uint4(key(c.x, s_hi[j].x), key(c.y, s_hi[j].y),
                                  key(d.x, s_hi[j].z), key(d.y, s_hi[j].w));
      reinterpret_cast<uint4*>(keys)[2 * v] = lo;
      reinterpret_cast<uint4*>(keys)[2 * v + 1] = hi;
      atomicAdd(&hist[lo.x >> 20], 1); atomicAdd(&hist[lo.y >> 20], 1);
      atomicAdd(&hist[lo.z >> 20], 1); atomicAdd(&hist[lo.w >> 20], 1);
      atomicAdd(&hist[hi.x >> 20], 1); atomicAdd(&hist[hi.y >> 20], 1);
      atomicAdd(&hist[hi.z >> 20], 1); atomicAdd(&hist[hi.w >> 20], 1);
    }
  } else {
    wait_for_previous_kernel();
    for (int i = tid; i < K; i += kSelectThreads) {
      keys[i] = key(Vec<T>::to_float(xm[i]), sc[i]);
      atomicAdd(&hist[keys[i] >> 20], 1);
    }
  }
  __syncthreads();
  select_digit(hist, 20, &s_prefix, &s_remaining, s_warp_excl);
  next_digit(keys, K, 9, 11, hist, &s_prefix, &s_remaining, s_warp_excl);  // bits 19..9
  next_digit(keys, K, 0, 9, hist, &s_prefix, &s_remaining, s_warp_excl);   // bits 8..0
  if (tid == 0) thr[m * S + s] = __uint_as_float(s_prefix);
}

// Lets a kernel use the GPU's opt-in shared memory, less its static part; once per kernel.
template <typename Kernel>
void allow_optin_smem(Kernel kernel) {
  int device = 0, max_optin = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  cudaFuncAttributes attr{};
  cudaFuncGetAttributes(&attr, kernel);  // static shared memory counts too
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       max_optin - static_cast<int>(attr.sharedSizeBytes));
}

template <typename T>
void launch_topk_thresholds(const void* x, const float* scale, const SegmentKeep& keep, float* thr,
                            int M, int K, int S, bool pdl, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(K) * sizeof(uint32_t);
  static bool attr_set = false;
  if (!attr_set) {
    allow_optin_smem(topk_thresholds_kernel<T, true>);
    allow_optin_smem(topk_thresholds_kernel<T, false>);
    attr_set = true;
  }
  // Vector loads need 16-byte aligned rows of x and scale.
  const bool vec = K % 8 == 0 && K <= kMaxVecs * 8 * kSelectThreads &&
                   reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(scale) % 16 == 0;
  launch_kernel(vec ? topk_thresholds_kernel<T, true> : topk_thresholds_kernel<T, false>,
                dim3(M, S), kSelectThreads, smem, pdl, stream, static_cast<const T*>(x), scale,
                keep, thr, K, S);
}

}  // namespace wina
