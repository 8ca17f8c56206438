// Shared declarations of the WINA CUDA kernels (see sparse_gemv.cuh).
#pragma once

#include <cuda_runtime.h>
#include <cstdint>

namespace wina {

constexpr int kMaxTokens = 8;    // tokens per sparse call (the op's max_sparse_batch)
constexpr int kMaxSegments = 4;  // fused projections per linear (q/k/v, gate/up)
constexpr int kThreads = 256;    // threads per block: 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kTileN = 256;      // output columns per block: 32 lanes x 8 columns (16 bytes)
constexpr int kMaxChunkRows = 1024;
// The lowest threshold the gate applies (FLT_MIN, gate.py's MIN_SCORE): a lower one is
// raised to it when loaded, so a zero score is never kept whatever the thresholds say.
constexpr float kMinScore = 1.17549435e-38f;

// Everything one launch of the fused gate + sparse GEMV needs.
struct SparseGemvParams {
  const void* x;            // [M, K] activations (T)
  const void* wt;           // [K, ldw] weight, input-major (T)
  const void* bias;         // [N] (T) or nullptr
  const float* scale;       // [S, K] column scale: L2 norm (WINA) or 1 (TEAL)
  const float* thr;         // thresholds: [S] (thr_m_stride 0) or [M, S] (thr_m_stride S)
  void* out;                // [M, N] (T)
  float* partial;           // [chunks, tiles, M, kTileN] split-K partial sums
  int* counters;            // [tiles] arrival counters, zero before and after a launch
  long long* stats;         // [S, 2] kept / seen channel counts
  int K, N, ldw, M;
  int thr_m_stride;
  int num_segments;
  int seg_start[kMaxSegments];   // first output column of each segment
  int seg_end[kMaxSegments];     // one past its last column
  int tile_begin[kMaxSegments + 1];  // first tile of each segment; tile_begin[S] = tiles
  int chunk_rows;           // input rows (K) per block, multiple of 32 * kWarps
  int chunks;               // blocks along K per tile
};

// pdl: launch with programmatic stream serialization (sm_90 only; see sparse_gemv.cuh).
template <typename T, int M>
void launch_sparse_gemv(const SparseGemvParams& p, bool pdl, cudaStream_t stream);

template <typename T, int M>
int sparse_gemv_blocks_per_sm();

// Per-token k-th largest score per segment (top-k mode): thr[m, s].
struct SegmentKeep {
  int k[kMaxSegments];  // channels kept per segment
};

template <typename T>
void launch_topk_thresholds(const void* x, const float* scale, const SegmentKeep& keep, float* thr,
                            int M, int K, int S, bool pdl, cudaStream_t stream);

}  // namespace wina
