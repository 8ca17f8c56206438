// wina_C::linear: the whole gated linear of one layer in C++, sparse or dense by token count.
//
// The same computation as torch.ops.wina.sparse_linear (wina_vllm/ops.py) for the layers
// the kernels cover (CUDA, bf16/fp16, dense prefill), without Python on the way: that op's
// CUDA implementation is Python, reached through the dispatcher's boxed call, and costs
// 5-50 us of host time a call on the H200 machines. Steps outside CUDA graphs (prefill,
// steps that mix prefill and decode) are bound by the host and pay it on every linear: an
// eager Llama-3-8B step took 0.1-25 ms longer than dense (benchmarks/RESULTS.md, section
// 3). Here a call costs what an ATen op costs.
//
// 1..max_sparse_batch tokens: the select kernel in top-k mode, then the sparse GEMV.
// Otherwise the dense product on the input-major layout, by the form dense.py's tuner chose
// for this shape and token count (set_dense_form; "mm" when none was chosen).
//
// Inputs are checked once, in Python, when the layer loads (kernels.check_inputs): the
// tensors and lists are the layer's own and only x changes between calls.
//
// The kernels' realized-sparsity counters and arrival counters are not arguments: the
// layer registers them once (register_layer, keyed by its weight's address), so the op
// mutates none of its inputs. Declared mutations make torch.compile functionalize the op
// and wrap every compiled piece with an input-mutation prologue: under vLLM's default
// Inductor setup that cost about 2 ms of host time on an eager Llama-3-8B step
// (benchmarks/RESULTS.md, section 3). The counters are read only outside the graph
// (metrics), and the arrival counters return to zero after every call.
#include "ops.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace wina {
namespace {

enum class Form { kLt, kSegments, kAlgo };

struct DenseForm {
  Form form;
  int64_t algo = 0;    // kAlgo: the index in cuBLASLt's list for this problem
  at::Tensor zeros;    // kLt without a bias: torch sends addmm with a bias to cuBLASLt
};

// device, K, seg_ends, tokens, dtype, has bias
using FormKey = std::tuple<int, int64_t, std::vector<int64_t>, int64_t, int, bool>;

std::mutex forms_mutex;
std::map<FormKey, DenseForm>& forms() {
  static auto* m = new std::map<FormKey, DenseForm>();  // never freed: outlives CUDA
  return *m;
}

FormKey form_key(const at::Tensor& weight_t, c10::IntArrayRef seg_ends, int64_t tokens,
                 bool has_bias) {
  return {weight_t.get_device(), weight_t.size(0), seg_ends.vec(), tokens,
          static_cast<int>(weight_t.scalar_type()), has_bias};
}

// Record the tuner's choice for a shape (wina_vllm/dense.py). Called while the model
// loads, never inside a CUDA-graph capture (the zeros are made here).
void set_dense_form(const at::Tensor& weight_t, c10::IntArrayRef seg_ends, int64_t tokens,
                    bool has_bias, c10::string_view form) {
  const std::string name(form);
  const FormKey key = form_key(weight_t, seg_ends, tokens, has_bias);
  std::lock_guard<std::mutex> lock(forms_mutex);
  if (name == "mm") {
    forms().erase(key);
  } else if (name == "lt") {
    DenseForm f{Form::kLt};
    if (!has_bias) f.zeros = at::zeros({seg_ends.back()}, weight_t.options());
    forms()[key] = f;
  } else if (name == "segments") {
    forms()[key] = DenseForm{Form::kSegments};
  } else if (name.rfind("algo", 0) == 0) {
    forms()[key] = DenseForm{Form::kAlgo, std::stoll(name.substr(4))};
  } else {
    TORCH_CHECK(false, "wina_C: set_dense_form: unknown form ", name,
                "; accepted: mm, lt, segments, algo<i>");
  }
}

// The chosen form for this call, or nullptr for the plain product.
const DenseForm* find_form(const at::Tensor& x, const at::Tensor& weight_t,
                           c10::IntArrayRef seg_ends, bool has_bias) {
  std::lock_guard<std::mutex> lock(forms_mutex);
  if (forms().empty()) return nullptr;
  auto it = forms().find(form_key(weight_t, seg_ends, x.size(0), has_bias));
  return it == forms().end() ? nullptr : &it->second;
}

at::Tensor dense(const at::Tensor& x, const at::Tensor& weight_t,
                 const c10::optional<at::Tensor>& bias, c10::IntArrayRef seg_ends) {
  const int64_t n = seg_ends.back();
  const at::Tensor w = n == weight_t.size(1) ? weight_t : weight_t.narrow(1, 0, n);
  if (const DenseForm* f = find_form(x, weight_t, seg_ends, bias.has_value())) {
    switch (f->form) {
      case Form::kLt:
        return at::addmm(bias.has_value() ? *bias : f->zeros, x, w);
      case Form::kSegments: {
        at::Tensor out = at::empty({x.size(0), n}, x.options());
        int64_t start = 0;
        for (const int64_t end : seg_ends) {
          at::Tensor part = out.narrow(1, start, end - start);
          const at::Tensor ws = weight_t.narrow(1, start, end - start);
          if (bias.has_value())
            at::addmm_out(part, bias->narrow(0, start, end - start), x, ws);
          else
            at::mm_out(part, x, ws);
          start = end;
        }
        return out;
      }
      case Form::kAlgo:  // the algorithms were chosen for 16-byte aligned, contiguous x
        if (x.is_contiguous() && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0)
          return lt_matmul(x, weight_t, n, f->algo);
        break;
    }
  }
  return bias.has_value() ? at::addmm(*bias, x, w) : at::mm(x, w);
}

// A gated layer's counters: realized sparsity (stats) and split-K arrivals (workspace).
struct LayerCounters {
  at::Tensor stats, workspace;
};

std::mutex layers_mutex;
std::unordered_map<const void*, LayerCounters>& layers() {
  static auto* m = new std::unordered_map<const void*, LayerCounters>();  // outlives CUDA
  return *m;
}

// Called when a layer loads (wina_vllm/linear.py); a later layer at the same address
// replaces an earlier one's entry.
void register_layer(const at::Tensor& weight_t, const at::Tensor& stats,
                    const at::Tensor& workspace) {
  std::lock_guard<std::mutex> lock(layers_mutex);
  layers()[weight_t.data_ptr()] = LayerCounters{stats, workspace};
}

// The registered counters of this weight. A weight nobody registered (a copy, as
// opcheck makes), or whose address held another layer's weight before (an entry of the
// wrong sizes), runs with scratch counters: the call works and its realized sparsity goes
// uncounted. (Not an error: the extension's TORCH_CHECKs crash the process on the H200
// machines instead of raising, kernels.check_inputs.)
LayerCounters counters_of(const at::Tensor& weight_t, c10::IntArrayRef seg_ends) {
  int64_t groups = 0, start = 0;  // one arrival counter per 8 output columns (ops.workspace_size)
  for (const int64_t end : seg_ends) {
    groups += (end - start / 8 * 8 + 7) / 8;
    start = end;
  }
  const int64_t segments = static_cast<int64_t>(seg_ends.size());
  {
    std::lock_guard<std::mutex> lock(layers_mutex);
    auto it = layers().find(weight_t.data_ptr());
    if (it != layers().end() && it->second.stats.numel() == 2 * segments &&
        it->second.workspace.numel() >= groups)
      return it->second;
  }
  const auto options = weight_t.options();
  return LayerCounters{at::zeros({segments, 2}, options.dtype(at::kLong)),
                       at::zeros({groups}, options.dtype(at::kInt))};
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight_t,
                  const c10::optional<at::Tensor>& bias, const at::Tensor& scale,
                  const at::Tensor& thresholds, c10::IntArrayRef seg_ends,
                  c10::IntArrayRef keep, bool topk, int64_t max_sparse_batch, bool pdl) {
  const int64_t m = x.size(0);
  if (m == 0 || m > max_sparse_batch) return dense(x, weight_t, bias, seg_ends);
  LayerCounters c = counters_of(weight_t, seg_ends);
  const at::Tensor xc = x.contiguous();
  const at::Tensor thr = topk ? topk_thresholds(xc, scale, keep, pdl) : thresholds;
  return sparse_gemv(xc, weight_t, bias, scale, thr, topk, c.stats, c.workspace, seg_ends, pdl);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(wina_C, m) {
  m.def("linear(Tensor x, Tensor weight_t, Tensor? bias, Tensor scale, Tensor thresholds, "
        "int[] seg_ends, int[] keep, bool topk, int max_sparse_batch, bool pdl) -> Tensor");
  m.def("register_layer(Tensor weight_t, Tensor stats, Tensor workspace) -> ()");
  m.def("set_dense_form(Tensor weight_t, int[] seg_ends, int tokens, bool has_bias, str form) -> ()");
}

TORCH_LIBRARY_IMPL(wina_C, CUDA, m) {
  m.impl("linear", &linear);
  m.impl("set_dense_form", &set_dense_form);
  m.impl("register_layer", &register_layer);
}

}  // namespace wina
