// Attention through cuDNN's fused SDPA (cudnn-frontend graph API) for the AttentionArgs contract.
//
// Mapping of the contract onto cuDNN:
// - every operand is a 4-D (B, H, S, D) tensor with strides (batch_stride, D, row_stride, 1), so
//   strided views into packed QKV buffers and the (T, B, C) activation layout need no copies;
// - lse (B, H, Tq) fp32 is cuDNN's Stats tensor (B, H, Tq, 1), bound directly: forward writes it,
//   backward reads it, and both use the natural-log LSE of the scaled scores;
// - causal with a query offset: cuDNN's bottom-right alignment places query i at
//   Tkv - Tq + i. Running on the first Tkv = q_offset + Tq keys puts it at q_offset + i; the keys
//   after those are masked for every query anyway, so their dK/dV rows are zero and are filled
//   here. q_offset == 0 is the ordinary top-left causal mask on the first Tq keys.
#include "kernels/cuda/cudnn_attention.h"

// The project never serializes cuDNN graphs; skipping the frontend's JSON support keeps its
// bundled copy of nlohmann::json (a different version from the one lss_core links) out of the
// build and shortens the compile of this file considerably.
#define CUDNN_FRONTEND_SKIP_JSON_LIB
// lss_core builds with -Wall -Wextra; the frontend's headers define helpers this file never calls.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include <cudnn_frontend.h>
#pragma GCC diagnostic pop

#include <array>
#include <bit>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <type_traits>
#include <unordered_map>

#include "core/check.h"
#include "kernels/cuda/cuda_check.h"

#ifndef LSS_CUDNN_CHECK
#define LSS_CUDNN_CHECK(call)                                                            \
  do {                                                                                   \
    const cudnnStatus_t lss_cudnn_st_ = (call);                                          \
    if (lss_cudnn_st_ != CUDNN_STATUS_SUCCESS)                                           \
      ::lss::fatal_error(__FILE__, __LINE__, #call, cudnnGetErrorString(lss_cudnn_st_)); \
  } while (0)
#endif

// A cudnn-frontend call returning error_t (its failures carry a message, not just a status).
#define LSS_CUDNN_FE_CHECK(call)                                          \
  do {                                                                    \
    auto lss_fe_err_ = (call);                                            \
    if (!lss_fe_err_.is_good())                                           \
      ::lss::fatal_error(__FILE__, __LINE__, #call,                       \
                         "cudnn-frontend: " + lss_fe_err_.get_message()); \
  } while (0)

namespace lss::cuda {
namespace {

namespace fe = cudnn_frontend;
using Uid = fe::graph::Tensor_attributes::uid_t;

// Fixed uids, so that a variant pack can be built without keeping the tensor objects around.
enum : Uid { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

enum class Mask : int64_t { none = 0, top_left = 1, bottom_right = 2 };

struct Strides {
  int64_t batch = 0, row = 0;
};

// One attention call as cuDNN sees it. Everything a graph depends on is here, and nothing else
// (no pointers), so equal problems share a graph.
struct Problem {
  bool backward = false;
  int64_t B = 0, H = 0, D = 0, Tq = 0;
  int64_t Tkv = 0;  // keys handed to cuDNN (<= Tk)
  Mask mask = Mask::none;
  float scale = 1.0f;
  Strides q, k, v, o;
  Strides dout, dq, dk, dv;  // backward only
};

// Strides of an operand with S rows. A stride over a dimension of extent 1 is never multiplied
// by a non-zero index, so callers may leave anything there; it is replaced by a canonical value
// so that it neither fails cuDNN's alignment rules nor splits the graph cache.
Strides normalized(const AttnOperand& x, int64_t B, int64_t S, int64_t width) {
  Strides s{x.batch_stride, x.row_stride};
  if (S == 1) s.row = width;
  if (B == 1) s.batch = S * s.row;
  return s;
}

// The cuDNN form of `a`, or nothing when the contract's masking cannot be expressed with it.
// With `backward`, gradient operands the caller left unset (a forward-only query from
// supported()) take the layout of their forward counterparts.
std::optional<Problem> describe(const AttentionArgs& a, bool backward) {
  if (a.B <= 0 || a.H <= 0 || a.D <= 0 || a.Tq <= 0 || a.Tk <= 0) return std::nullopt;
  Problem p;
  p.backward = backward;
  p.B = a.B;
  p.H = a.H;
  p.D = a.D;
  p.Tq = a.Tq;
  p.Tkv = a.Tk;
  p.scale = static_cast<float>(a.scale);
  if (a.causal) {
    if (a.q_offset < 0) return std::nullopt;
    if (a.q_offset >= a.Tk - 1) {
      // The first query already sits at or after the last key: nothing is masked.
    } else if (a.q_offset + a.Tq <= a.Tk) {
      p.Tkv = a.q_offset + a.Tq;
      p.mask = a.q_offset == 0 ? Mask::top_left : Mask::bottom_right;
    } else {
      // Queries run past the last key while the first ones are still masked: bottom-right
      // alignment would need Tkv > Tk, which is not there to give.
      return std::nullopt;
    }
  }
  const int64_t width = a.H * a.D;
  p.q = normalized(a.q, a.B, a.Tq, width);
  p.k = normalized(a.k, a.B, p.Tkv, width);
  p.v = normalized(a.v, a.B, p.Tkv, width);
  p.o = normalized(a.out, a.B, a.Tq, width);
  if (backward) {
    p.dout = a.dout.ptr ? normalized(a.dout, a.B, a.Tq, width) : p.o;
    p.dq = a.dq.ptr ? normalized(a.dq, a.B, a.Tq, width) : p.q;
    p.dk = a.dk.ptr ? normalized(a.dk, a.B, p.Tkv, width) : p.k;
    p.dv = a.dv.ptr ? normalized(a.dv, a.B, p.Tkv, width) : p.v;
  }
  return p;
}

// cuDNN's SDPA kernels move operands with 16-byte vector loads / TMA and do not check the
// pointers they are given: on sm90 a misaligned operand gives wrong results rather than an
// error. Such calls are left to the project's own kernel.
bool aligned(const AttentionArgs& a, const Problem& p) {
  constexpr int64_t kElems = 16 / 2;  // bf16 elements per 16 bytes
  if (p.D % kElems != 0) return false;
  const auto ok = [&](const void* ptr, const Strides& s) {
    if (ptr != nullptr && reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
    return s.batch % kElems == 0 && s.row % kElems == 0;
  };
  bool good = ok(a.q.ptr, p.q) && ok(a.k.ptr, p.k) && ok(a.v.ptr, p.v) && ok(a.out.ptr, p.o);
  if (p.backward) {
    good = good && ok(a.dout.ptr, p.dout) && ok(a.dq.ptr, p.dq) && ok(a.dk.ptr, p.dk) &&
           ok(a.dv.ptr, p.dv);
  }
  return good;
}

struct Key {
  std::array<int64_t, 24> v{};
  bool operator==(const Key&) const = default;
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (int64_t x : k.v) {
      h ^= static_cast<uint64_t>(x) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    }
    return static_cast<size_t>(h);
  }
};

// clang-format off
Key key_of(const Problem& p) {
  return Key{{p.backward, p.B, p.H, p.D, p.Tq, p.Tkv, static_cast<int64_t>(p.mask),
              static_cast<int64_t>(std::bit_cast<uint32_t>(p.scale)),
              p.q.batch, p.q.row, p.k.batch, p.k.row, p.v.batch, p.v.row, p.o.batch, p.o.row,
              p.dout.batch, p.dout.row, p.dq.batch, p.dq.row, p.dk.batch, p.dk.row,
              p.dv.batch, p.dv.row}};
}
// clang-format on

// A built graph (null when cuDNN rejected the problem, with the reason) and its workspace.
struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
  std::string error;
};

fe::graph::Tensor_attributes bhsd(const char* name, Uid uid, const Problem& p, int64_t S,
                                  const Strides& s) {
  return fe::graph::Tensor_attributes()
      .set_name(name)
      .set_uid(uid)
      .set_dim({p.B, p.H, S, p.D})
      .set_stride({s.batch, p.D, s.row, 1})
      .set_data_type(fe::DataType_t::BFLOAT16);
}

void declare_output(fe::graph::Tensor_attributes& t, Uid uid, const Problem& p, int64_t S,
                    const Strides& s) {
  t.set_output(true)
      .set_uid(uid)
      .set_dim({p.B, p.H, S, p.D})
      .set_stride({s.batch, p.D, s.row, 1})
      .set_data_type(fe::DataType_t::BFLOAT16);
}

fe::graph::Tensor_attributes stats_tensor(const Problem& p) {
  return fe::graph::Tensor_attributes()
      .set_name("Stats")
      .set_uid(kStats)
      .set_dim({p.B, p.H, p.Tq, 1})
      .set_stride({p.H * p.Tq, p.Tq, 1, 1})
      .set_data_type(fe::DataType_t::FLOAT);
}

// The setters below changed names across cudnn-frontend releases; the GPU machines may build
// against a different release than this one, so each picks whichever spelling the headers have.

template <class Attrs>
void request_stats(Attrs& attrs) {
  if constexpr (requires { attrs.set_generate_stats(true); }) {
    attrs.set_generate_stats(true);
  } else {
    attrs.set_is_inference(false);
  }
}

template <class Attrs>
void apply_mask(Attrs& attrs, Mask mask) {
  if (mask == Mask::none) return;
  if constexpr (requires { attrs.set_diagonal_band_right_bound(0); }) {
    attrs.set_diagonal_alignment(mask == Mask::top_left ? fe::DiagonalAlignment_t::TOP_LEFT
                                                        : fe::DiagonalAlignment_t::BOTTOM_RIGHT);
    attrs.set_diagonal_band_right_bound(0);
  } else if (mask == Mask::top_left) {
    attrs.set_causal_mask(true);
  } else {
    attrs.set_causal_mask_bottom_right(true);
  }
}

template <class F>
struct member_arg;
template <class C, class R, class A>
struct member_arg<R (C::*)(A)> {
  using type = std::remove_cvref_t<A>;
};

// Newer frontends choose between the long-standing composite SDPA lowering and a "unified" one
// (cuDNN >= 9.13.1). The unified path is new and not what the backward graph uses; pinning the
// composite one keeps forward and backward on the same, well-trodden kernels. Older frontends
// have only the composite lowering and no setter.
template <class Attrs>
void prefer_composite(Attrs& attrs) {
  if constexpr (requires { &Attrs::set_implementation; }) {
    using Impl = typename member_arg<decltype(&Attrs::set_implementation)>::type;
    attrs.set_implementation(Impl::COMPOSITE);
  }
}

fe::error_t build_plans(fe::graph::Graph& g, cudnnHandle_t handle) {
  if (auto e = g.validate(); !e.is_good()) return e;
  if (auto e = g.build_operation_graph(handle); !e.is_good()) return e;
  if (auto e = g.create_execution_plans({fe::HeurMode_t::A}); !e.is_good()) return e;
  if (auto e = g.check_support(handle); !e.is_good()) return e;
  return g.build_plans(handle, fe::BuildPlanPolicy_t::HEURISTICS_CHOICE);
}

void set_graph_types(fe::graph::Graph& g) {
  g.set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
}

// Declares the forward graph; build_plans validates it against the device and builds it.
void define_forward(fe::graph::Graph& g, const Problem& p) {
  set_graph_types(g);
  auto q = g.tensor(bhsd("Q", kQ, p, p.Tq, p.q));
  auto k = g.tensor(bhsd("K", kK, p, p.Tkv, p.k));
  auto v = g.tensor(bhsd("V", kV, p, p.Tkv, p.v));

  fe::graph::SDPA_attributes attrs;
  attrs.set_name("lss_sdpa_fwd");
  attrs.set_attn_scale(p.scale);
  request_stats(attrs);
  apply_mask(attrs, p.mask);
  prefer_composite(attrs);

  auto [o, stats] = g.sdpa(q, k, v, attrs);
  declare_output(*o, kO, p, p.Tq, p.o);
  stats->set_output(true)
      .set_uid(kStats)
      .set_dim({p.B, p.H, p.Tq, 1})
      .set_stride({p.H * p.Tq, p.Tq, 1, 1})
      .set_data_type(fe::DataType_t::FLOAT);
}

void define_backward(fe::graph::Graph& g, const Problem& p) {
  set_graph_types(g);
  auto q = g.tensor(bhsd("Q", kQ, p, p.Tq, p.q));
  auto k = g.tensor(bhsd("K", kK, p, p.Tkv, p.k));
  auto v = g.tensor(bhsd("V", kV, p, p.Tkv, p.v));
  auto o = g.tensor(bhsd("O", kO, p, p.Tq, p.o));
  auto dout = g.tensor(bhsd("dO", kDO, p, p.Tq, p.dout));
  auto stats = g.tensor(stats_tensor(p));

  fe::graph::SDPA_backward_attributes attrs;
  attrs.set_name("lss_sdpa_bwd");
  attrs.set_attn_scale(p.scale);
  apply_mask(attrs, p.mask);

  auto [dq, dk, dv] = g.sdpa_backward(q, k, v, o, dout, stats, attrs);
  declare_output(*dq, kDQ, p, p.Tq, p.dq);
  declare_output(*dk, kDK, p, p.Tkv, p.dk);
  declare_output(*dv, kDV, p, p.Tkv, p.dv);
}

Plan make_plan(const Problem& p, cudnnHandle_t handle) {
  Plan plan;
  auto g = std::make_shared<fe::graph::Graph>();
  try {
    if (p.backward) {
      define_backward(*g, p);
    } else {
      define_forward(*g, p);
    }
    fe::error_t e = build_plans(*g, handle);
    if (e.is_good()) e = g->get_workspace_size(plan.workspace);
    if (e.is_good()) {
      plan.graph = std::move(g);
      return plan;
    }
    plan.error = e.get_message();
  } catch (const std::exception& ex) {
    // The frontend throws (rather than returns) for some unsupported attribute combinations.
    plan.error = ex.what();
  }
  // A rejected build may leave a non-sticky error behind (a kernel image probe, an attribute
  // query); it must not surface at the next unrelated launch check.
  (void)cudaGetLastError();
  return plan;
}

// Zeroes rows [begin, end) of every batch of a (B, T, width) strided bf16 operand.
void zero_rows(const AttnOperand& x, int64_t B, int64_t width, int64_t begin, int64_t end,
               cudaStream_t stream) {
  if (end <= begin) return;
  constexpr size_t kBytes = 2;
  const int64_t rows = end - begin;
  for (int64_t b = 0; b < B; ++b) {
    char* base = static_cast<char*>(x.ptr) + (b * x.batch_stride + begin * x.row_stride) * kBytes;
    if (rows == 1 || x.row_stride >= width) {
      const size_t pitch = static_cast<size_t>(rows == 1 ? width : x.row_stride) * kBytes;
      LSS_CUDA_CHECK(cudaMemset2DAsync(base, pitch, 0, static_cast<size_t>(width) * kBytes,
                                       static_cast<size_t>(rows), stream));
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        LSS_CUDA_CHECK(cudaMemsetAsync(base + r * x.row_stride * kBytes, 0,
                                       static_cast<size_t>(width) * kBytes, stream));
      }
    }
  }
}

}  // namespace

struct CudnnAttention::Impl {
  cudaStream_t stream = nullptr;
  cudnnHandle_t handle = nullptr;
  std::unordered_map<Key, Plan, KeyHash> plans;

  const Plan& plan(const Problem& p) {
    const Key key = key_of(p);
    auto it = plans.find(key);
    if (it == plans.end()) it = plans.emplace(key, make_plan(p, handle)).first;
    return it->second;
  }

  // The problem and built graph of a call the caller was told is supported; anything else is a
  // contract violation and fatal.
  std::pair<Problem, const Plan*> require(const AttentionArgs& a, bool backward, const char* what) {
    LSS_CHECK(a.dtype == DType::bf16, std::string(what) + ": cuDNN attention takes bf16 only");
    const auto p = describe(a, backward);
    LSS_CHECK(p.has_value(), std::string(what) + ": masking not expressible for cuDNN (Tq=" +
                                 std::to_string(a.Tq) + ", Tk=" + std::to_string(a.Tk) +
                                 ", q_offset=" + std::to_string(a.q_offset) + ")");
    const Plan& pl = plan(*p);
    LSS_CHECK(pl.graph != nullptr, std::string(what) + ": cuDNN rejected the graph: " + pl.error);
    return {*p, &pl};
  }
};

CudnnAttention::CudnnAttention(cudaStream_t stream) : impl_(std::make_unique<Impl>()) {
  impl_->stream = stream;
  LSS_CUDNN_CHECK(cudnnCreate(&impl_->handle));
  LSS_CUDNN_CHECK(cudnnSetStream(impl_->handle, stream));
}

CudnnAttention::~CudnnAttention() {
  if (!impl_) return;
  // Plans hold backend descriptors tied to the handle: release them first.
  impl_->plans.clear();
  // Not checked: at process teardown the CUDA context may already be gone, and there is nothing
  // useful to do about a failed destroy.
  if (impl_->handle != nullptr) (void)cudnnDestroy(impl_->handle);
}

bool CudnnAttention::supported(const AttentionArgs& args) {
  if (args.dtype != DType::bf16) return false;
  const auto fwd = describe(args, false);
  const auto bwd = describe(args, true);
  if (!fwd || !bwd) return false;
  if (!aligned(args, *fwd) || !aligned(args, *bwd)) return false;
  // The backward graph is built too: a shape cuDNN runs forward but not backward would otherwise
  // be found out only in the middle of the first training step.
  return impl_->plan(*fwd).graph != nullptr && impl_->plan(*bwd).graph != nullptr;
}

size_t CudnnAttention::forward_workspace(const AttentionArgs& args) {
  return static_cast<size_t>(
      impl_->require(args, false, "cuDNN attention forward").second->workspace);
}

size_t CudnnAttention::backward_workspace(const AttentionArgs& args) {
  return static_cast<size_t>(
      impl_->require(args, true, "cuDNN attention backward").second->workspace);
}

void CudnnAttention::forward(const AttentionArgs& args, void* workspace) {
  const auto [p, plan] = impl_->require(args, false, "cuDNN attention forward");
  LSS_CHECK(args.lse != nullptr, "cuDNN attention forward: lse is required");
  LSS_CHECK(aligned(args, p), "cuDNN attention forward: operands not 16-byte aligned");
  LSS_CHECK(workspace != nullptr || plan->workspace == 0,
            "cuDNN attention forward: missing workspace of " + std::to_string(plan->workspace) +
                " bytes");
  std::unordered_map<Uid, void*> pack{
      {kQ, args.q.ptr}, {kK, args.k.ptr}, {kV, args.v.ptr}, {kO, args.out.ptr}, {kStats, args.lse}};
  try {
    LSS_CUDNN_FE_CHECK(plan->graph->execute(impl_->handle, pack, workspace));
  } catch (const std::exception& ex) {
    ::lss::fatal_error(__FILE__, __LINE__, "cudnn-frontend Graph::execute (forward)", ex.what());
  }
}

void CudnnAttention::backward(const AttentionArgs& args, void* workspace) {
  const auto [p, plan] = impl_->require(args, true, "cuDNN attention backward");
  LSS_CHECK(args.lse != nullptr && args.dout.ptr != nullptr && args.dq.ptr != nullptr &&
                args.dk.ptr != nullptr && args.dv.ptr != nullptr,
            "cuDNN attention backward: lse, dout, dq, dk and dv are required");
  LSS_CHECK(aligned(args, p), "cuDNN attention backward: operands not 16-byte aligned");
  LSS_CHECK(workspace != nullptr || plan->workspace == 0,
            "cuDNN attention backward: missing workspace of " + std::to_string(plan->workspace) +
                " bytes");
  std::unordered_map<Uid, void*> pack{{kQ, args.q.ptr},   {kK, args.k.ptr},   {kV, args.v.ptr},
                                      {kO, args.out.ptr}, {kStats, args.lse}, {kDO, args.dout.ptr},
                                      {kDQ, args.dq.ptr}, {kDK, args.dk.ptr}, {kDV, args.dv.ptr}};
  try {
    LSS_CUDNN_FE_CHECK(plan->graph->execute(impl_->handle, pack, workspace));
  } catch (const std::exception& ex) {
    ::lss::fatal_error(__FILE__, __LINE__, "cudnn-frontend Graph::execute (backward)", ex.what());
  }
  // Keys the graph did not see are visible to no query: their gradients are zero.
  const int64_t width = args.H * args.D;
  zero_rows(args.dk, args.B, width, p.Tkv, args.Tk, impl_->stream);
  zero_rows(args.dv, args.B, width, p.Tkv, args.Tk, impl_->stream);
}

int CudnnAttention::loaded_version() { return static_cast<int>(cudnnGetVersion()); }

}  // namespace lss::cuda
