// The extension's torch-facing functions, shared between its source files.
#pragma once

#include <ATen/ATen.h>

namespace wina {

// Fused gate + sparse GEMV for 1..8 tokens (torch_bindings.cpp, sparse_gemv.cuh).
at::Tensor sparse_gemv(const at::Tensor& x, const at::Tensor& weight_t,
                       const c10::optional<at::Tensor>& bias, const at::Tensor& scale,
                       const at::Tensor& thresholds, bool per_token, at::Tensor& stats,
                       at::Tensor& workspace, c10::IntArrayRef seg_ends, bool pdl);

// Per-token k-th largest score per segment, [M, S] (torch_bindings.cpp, topk_thresholds.cuh).
at::Tensor topk_thresholds(const at::Tensor& x, const at::Tensor& scale, c10::IntArrayRef keep,
                           bool pdl);

// x @ weight_t[:, :n] by cuBLASLt's algo-th algorithm for this problem (lt_matmul.cpp).
int64_t lt_algos(const at::Tensor& x, const at::Tensor& weight_t, int64_t n);
at::Tensor lt_matmul(const at::Tensor& x, const at::Tensor& weight_t, int64_t n, int64_t algo);

}  // namespace wina
