// cuBLASLt GEMMs for the row-major GemmArgs contract. cuBLASLt is column-major; a row-major
// r x c matrix with leading dimension ld is the column-major c x r matrix with the same ld, so
// the row-major C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: cuBLASLt's
// first operand is our B, its second our A, and its m and n are our n and m. The row-major bias
// (broadcast over C's rows) is then a vector over C^T's rows, which is what cuBLASLt's BIAS
// epilogue adds.
//
// The model's other fusions go to the epilogue too: a residual added through the beta term with a
// separate C input (cuBLASLt reads C and writes D, which may differ), the MLP's GELU (GELU_AUX /
// GELU_AUX_BIAS keep the pre-activation in the aux matrix) and its gradient (DGELU reads it back).
// cuBLASLt's GELU is the tanh form, the model's (kernels/cpu/ops.cpp, ops.cu). The GELU epilogues
// are for bf16; fp32 runs them as passes (see run()).
#include "kernels/cuda/gemm.h"

#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <unordered_map>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops.h"

namespace lss::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

cudaDataType_t cuda_type(DType t) { return t == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F; }

// The largest power of two dividing the address, up to 256: the alignment cuBLASLt's heuristic
// must assume (its default, 256, would admit kernels that fail on the sub-views GEMMs get, such
// as the K block inside a fused QKV buffer).
uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a == 0) return 256;
  return static_cast<uint32_t>(std::min<uintptr_t>(256, a & (~a + 1)));
}

// Everything the heuristic's choice depends on.
struct Key {
  int64_t m, n, k, lda, ldb, ldc;
  DType dtype, c_dtype;
  bool trans_a, trans_b, bias, beta_zero;
  GemmEpilogue epilogue;
  int32_t sm_target;
  uint32_t align_a, align_b, align_c, align_bias, align_aux;
  bool operator==(const Key&) const = default;
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;
    const auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    for (int64_t v : {k.m, k.n, k.k, k.lda, k.ldb, k.ldc}) mix(static_cast<uint64_t>(v));
    mix(static_cast<uint64_t>(k.dtype) | static_cast<uint64_t>(k.c_dtype) << 8 |
        uint64_t{k.trans_a} << 16 | uint64_t{k.trans_b} << 17 | uint64_t{k.bias} << 18 |
        uint64_t{k.beta_zero} << 19 | static_cast<uint64_t>(k.epilogue) << 20 |
        static_cast<uint64_t>(static_cast<uint32_t>(k.sm_target)) << 24);
    for (uint32_t v : {k.align_a, k.align_b, k.align_c, k.align_bias, k.align_aux}) mix(v);
    return static_cast<size_t>(h);
  }
};

// The cached descriptors of one shape. a_layout describes cuBLASLt's first operand (our B),
// b_layout its second (our A), c_layout C^T (also the output D).
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a_layout = nullptr, b_layout = nullptr, c_layout = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool fused_bias = false;  // false with a bias: added by scale_add_bias after the matmul
  bool fallback = false;    // no cuBLASLt algorithm: gemm_fallback computes everything
  bool passes = false;      // no algorithm with the epilogue: gemm_in_passes does it

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (c_layout) LSS_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(c_layout));
    if (b_layout) LSS_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(b_layout));
    if (a_layout) LSS_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(a_layout));
    if (desc) LSS_CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
  }
};

template <class V>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& value) {
  LSS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}

template <class V>
void set_pref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
              const V& value) {
  LSS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
}

void check_args(const GemmArgs& g) {
  for (DType t : {g.dtype, g.c_dtype}) require_compute_dtype(t, "gemm");
  if (g.dtype == DType::f32 && g.c_dtype == DType::bf16)
    throw UsageError("cuda backend: gemm with fp32 A and B into a bf16 C is not supported");
  const auto fits = [](int64_t x) { return x >= 0; };
  LSS_CHECK(fits(g.m) && fits(g.n) && fits(g.k) && fits(g.lda) && fits(g.ldb) && fits(g.ldc),
            "gemm: bad shape m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) +
                " k=" + std::to_string(g.k) + " lda=" + std::to_string(g.lda) +
                " ldb=" + std::to_string(g.ldb) + " ldc=" + std::to_string(g.ldc));
  if (g.m == 0 || g.n == 0) return;
  // Row-major leading dimensions are at least the stored row length.
  const int64_t a_cols = g.trans_a ? g.m : g.k, b_cols = g.trans_b ? g.k : g.n;
  LSS_CHECK(g.ldc >= g.n && g.c != nullptr, "gemm: ldc " + std::to_string(g.ldc) + " < n");
  if (g.k > 0) {
    LSS_CHECK(g.lda >= std::max<int64_t>(a_cols, 1) && g.a != nullptr,
              "gemm: lda " + std::to_string(g.lda) + " < " + std::to_string(a_cols));
    LSS_CHECK(g.ldb >= std::max<int64_t>(b_cols, 1) && g.b != nullptr,
              "gemm: ldb " + std::to_string(g.ldb) + " < " + std::to_string(b_cols));
  }
}

}  // namespace

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;  // kWorkspaceBytes
  std::unordered_map<Key, std::unique_ptr<Plan>, KeyHash> plans;
  int32_t sm_target = 0;  // set_sm_target

  // Builds the descriptors of g's shape and asks the heuristic for the best algorithm; with a
  // bias, falls back to a plain matmul when no algorithm takes the bias epilogue.
  std::unique_ptr<Plan> make_plan(const Key& key, const GemmArgs& g) {
    auto p = std::make_unique<Plan>();
    LSS_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    set_desc(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
    set_desc(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
    if (key.sm_target > 0) set_desc(p->desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, key.sm_target);
    const auto u = [](int64_t x) { return static_cast<uint64_t>(x); };
    // Our B stored row-major (trans_b ? n x k : k x n) is column-major (trans_b ? k x n : n x k).
    LSS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a_layout, cuda_type(g.dtype),
                                                u(g.trans_b ? g.k : g.n), u(g.trans_b ? g.n : g.k),
                                                g.ldb));
    // Our A stored row-major (trans_a ? k x m : m x k) is column-major (trans_a ? m x k : k x m).
    LSS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b_layout, cuda_type(g.dtype),
                                                u(g.trans_a ? g.m : g.k), u(g.trans_a ? g.k : g.m),
                                                g.lda));
    LSS_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p->c_layout, cuda_type(g.c_dtype), u(g.n), u(g.m), g.ldc));

    cublasLtMatmulPreference_t pref = nullptr;
    LSS_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    set_pref(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t{kWorkspaceBytes});
    set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b);
    set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a);
    set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c);
    set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c);

    const auto heuristic = [&]() {
      cublasLtMatmulHeuristicResult_t result{};
      int count = 0;
      const cublasStatus_t st =
          cublasLtMatmulAlgoGetHeuristic(handle, p->desc, p->a_layout, p->b_layout, p->c_layout,
                                         p->c_layout, pref, 1, &result, &count);
      if (st != CUBLAS_STATUS_SUCCESS || count == 0 || result.state != CUBLAS_STATUS_SUCCESS)
        return false;
      p->algo = result.algo;
      return true;
    };
    if (g.epilogue != GemmEpilogue::none) {
      const bool fwd = g.epilogue == GemmEpilogue::gelu;
      set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
               fwd ? (g.bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX) : CUBLASLT_EPILOGUE_DGELU);
      if (g.bias) {
        set_desc(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
        set_desc(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<int32_t>(cuda_type(g.c_dtype)));
      }
      // aux is laid out as C (check_gemm_extras: contiguous, C's dtype).
      set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<const void*>(g.aux));
      set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.ldc);
      set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, static_cast<int32_t>(cuda_type(g.c_dtype)));
      p->fused_bias = g.bias != nullptr;
      p->passes = !heuristic();
      LSS_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
      return p;
    }
    bool found = false;
    // beta C is added before the bias, inside the epilogue (a residual through c_in keeps its
    // bias fused).
    if (g.bias) {
      // The heuristic reads the bias pointer for its alignment; the bias has C's type.
      set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
      set_desc(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
      set_desc(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
               static_cast<int32_t>(cuda_type(g.c_dtype)));
      found = p->fused_bias = heuristic();
      if (!found) set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_DEFAULT);
    }
    if (!found) found = heuristic();
    LSS_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    if (!found) {
      // Plans are cached: said once per shape.
      p->fallback = true;
      std::fprintf(stderr,
                   "[rank %d] gemm: cuBLASLt has no algorithm for m=%lld n=%lld k=%lld lda=%lld "
                   "ldb=%lld ldc=%lld A/B %s C %s (alignments A %u B %u C %u bytes); using the "
                   "slow fallback kernel\n",
                   process_rank(), static_cast<long long>(g.m), static_cast<long long>(g.n),
                   static_cast<long long>(g.k), static_cast<long long>(g.lda),
                   static_cast<long long>(g.ldb), static_cast<long long>(g.ldc),
                   dtype_name(g.dtype), dtype_name(g.c_dtype), key.align_a, key.align_b,
                   key.align_c);
    }
    return p;
  }
};

Gemm::Gemm() : impl_(std::make_unique<Impl>()) {
  LSS_CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
  LSS_CUDA_CHECK(cudaMalloc(&impl_->workspace, kWorkspaceBytes));
}

Gemm::~Gemm() {
  impl_->plans.clear();
  if (impl_->workspace) LSS_CUDA_CHECK(cudaFree(impl_->workspace));
  if (impl_->handle) LSS_CUBLAS_CHECK(cublasLtDestroy(impl_->handle));
}

void Gemm::set_sm_target(int sms) {
  LSS_CHECK(sms >= 0, "gemm: SM count target " + std::to_string(sms) + " < 0");
  impl_->sm_target = static_cast<int32_t>(sms);
}

bool Gemm::run(const GemmArgs& g, cudaStream_t stream) {
  check_args(g);
  check_gemm_extras(g);
  if (g.m == 0 || g.n == 0) return true;
  const bool extras = g.c_in || g.epilogue != GemmEpilogue::none;
  // cuBLASLt's GELU derivative is an approximation good to ~1e-5 relative: far below bf16's
  // rounding, but above what the fp32 mode (the one checked against the CPU backend) promises.
  if (g.epilogue != GemmEpilogue::none && g.dtype == DType::f32) return false;
  if (g.k == 0) {
    if (extras) return false;
    // cuBLASLt rejects k = 0; C = beta C (+ bias), with beta = 0 overwriting.
    scale_add_bias(stream, g.c, g.c_dtype, g.m, g.n, g.ldc, g.beta, g.bias);
    return true;
  }
  const Key key{g.m,
                g.n,
                g.k,
                g.lda,
                g.ldb,
                g.ldc,
                g.dtype,
                g.c_dtype,
                g.trans_a,
                g.trans_b,
                g.bias != nullptr,
                g.beta == 0.0,
                g.epilogue,
                impl_->sm_target,
                alignment(g.a),
                alignment(g.b),
                std::min(alignment(g.c), alignment(g.c_in)),
                alignment(g.bias),
                alignment(g.aux)};
  auto it = impl_->plans.find(key);
  if (it == impl_->plans.end()) it = impl_->plans.emplace(key, impl_->make_plan(key, g)).first;
  const Plan& p = *it->second;
  if (p.passes || (p.fallback && extras)) return false;
  if (p.fallback) {
    gemm_fallback(stream, g);
    return true;
  }
  if (p.fused_bias) set_desc(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (g.epilogue != GemmEpilogue::none)
    set_desc(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<const void*>(g.aux));
  const float alpha = static_cast<float>(g.alpha), beta = static_cast<float>(g.beta);
  const void* c_in = g.c_in ? g.c_in : g.c;
  LSS_CUBLAS_CHECK(cublasLtMatmul(impl_->handle, p.desc, &alpha, g.b, p.a_layout, g.a, p.b_layout,
                                  &beta, c_in, p.c_layout, g.c, p.c_layout, &p.algo,
                                  impl_->workspace, kWorkspaceBytes, stream));
  if (g.bias && !p.fused_bias) scale_add_bias(stream, g.c, g.c_dtype, g.m, g.n, g.ldc, 1.0, g.bias);
  return true;
}

}  // namespace lss::cuda
