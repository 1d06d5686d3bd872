// Internal interface of the CPU backend: the kernels behind CpuBackend (ops.cpp, attention.cpp)
// and the helpers they share. Every kernel takes the number of threads for its own OpenMP loops;
// views are checked for dtype and size here, not by the caller.
#pragma once
#include <cblas.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "core/backend.h"
#include "core/check.h"

namespace lss::cpu {

// Throws UsageError for bf16 (no CPU kernels for it) and fails for any other non-float dtype,
// which can only come from a programming error.
void require_float(DType t, const char* op);

// Calls f(float{}) or f(double{}) for the floating-point dtype t (checked by require_float).
template <class F>
decltype(auto) dispatch_float(DType t, const char* op, F&& f) {
  require_float(t, op);
  if (t == DType::f64) return f(double{});
  return f(float{});
}

// Fails unless v holds dtype t and at least `numel` elements.
void check_view(const View& v, DType t, int64_t numel, const char* op, const char* what);

// dst[i] = src[i] converted, for i < n, between any two of f32, f64, i32 (same dtype: a memmove);
// throws UsageError for bf16.
void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n);

template <class T>
constexpr DType dtype_of = std::is_same_v<T, double> ? DType::f64 : DType::f32;

// Row-major GEMM on the BLAS: C (m x n) = alpha op(A) op(B) + beta C. No size checks: the
// callers pass valid, non-empty shapes (OpenBLAS only prints a message for bad leading
// dimensions and returns, so a mistake here would silently leave C unwritten).
inline void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                      float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
              static_cast<blasint>(ldc));
}
inline void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,
                      const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                      double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
              static_cast<blasint>(ldc));
}

// exp for the softmax-style loops, which otherwise spend most of their non-GEMM time in libm:
// Cody-Waite reduction x = n ln2 + r, a degree-6 polynomial for e^r (the Cephes expf
// coefficients, ~1 ulp), and 2^n built in the exponent bits. Inputs below -87.3 (where 2^n would
// leave the normal range, including -inf) give exactly 0; inputs above 88 saturate at e^88; NaN
// stays NaN. V is float or a GCC vector of floats (I: the matching int32 type), so the scalar
// tails and the SIMD bodies in ops.cpp compute bit-identical results.
template <class V, class I>
[[gnu::always_inline]] inline V exp_f32(const V& x) {
  constexpr float kLo = -87.3f, kHi = 88.0f;
  const V zero = V{};
  V xc = x < kLo ? zero + kLo : x;
  xc = xc > kHi ? zero + kHi : xc;
  // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
  constexpr float kRound = 12582912.0f;
  const V n = (xc * 1.44269504088896341f + kRound) - kRound;
  V r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  I ni;
  if constexpr (std::is_same_v<V, float>)
    ni = static_cast<int32_t>(n);
  else
    ni = __builtin_convertvector(n, I);
  const V scale = __builtin_bit_cast(V, (ni + 127) << 23);
  return x < kLo ? zero : p * scale;
}

inline float fast_exp(float x) { return exp_f32<float, int32_t>(x); }
// fp64 runs are the exact reference path: libm's exp there.
inline double fast_exp(double x) { return std::exp(x); }

// Row primitives for the softmax and GELU loops: explicit SIMD for float (ops.cpp, with clones
// per instruction set, since the build targets baseline x86-64), plain loops with libm for
// double. One call per row keeps the dispatch cost off the elements.
float row_max(const float* x, int64_t n);  // max of x[0, n); -inf for n = 0
double row_max(const double* x, int64_t n);
// x[j] = exp(x[j] - shift) for j < n; returns the sum of the new values.
float exp_shift_sum(float* x, int64_t n, float shift);
double exp_shift_sum(double* x, int64_t n, double shift);
// out = gelu_tanh(in), din = dout * gelu_tanh'(in) over n elements; outputs may alias inputs.
void gelu_forward_row(float* out, const float* in, int64_t n);
void gelu_forward_row(double* out, const double* in, int64_t n);
void gelu_backward_row(float* din, const float* dout, const float* in, int64_t n);
void gelu_backward_row(double* din, const double* dout, const double* in, int64_t n);

// Sets OpenBLAS to one thread for the lifetime of the guard and restores `threads` after: used
// around OpenMP regions that call the BLAS from every thread, where nested BLAS threading would
// oversubscribe the cores.
class BlasSingleThread {
 public:
  explicit BlasSingleThread(int threads);
  ~BlasSingleThread();
  BlasSingleThread(const BlasSingleThread&) = delete;
  BlasSingleThread& operator=(const BlasSingleThread&) = delete;

 private:
  int threads_;
};

// ---- kernels (see Backend in core/backend.h for the contracts) ----
void gemm(const GemmArgs& g, int threads);
void axpy(View y, View x, double alpha, int threads);
void add(View out, View a, View b, int threads);
void bias_grad(View db, View dy, int64_t rows, int64_t n, int threads);
void embedding_forward(View out, View tokens, View wte, View wpe_rows, int64_t Tl, int64_t B,
                       int64_t C, int threads);
void embedding_backward(View dwte, View dwpe_rows, View dout, View tokens, int64_t Tl, int64_t B,
                        int64_t C, int threads);
void layernorm_forward(View out, View mean, View rstd, View x, View weight, View bias, int64_t N,
                       int64_t C, double eps, int threads);
void layernorm_backward(View dx, View dweight, View dbias, View dout, View x, View mean, View rstd,
                        View weight, int64_t N, int64_t C, int threads);
void gelu_forward(View out, View in, int threads);
void gelu_backward(View din, View dout, View in, int threads);
double cross_entropy_fused(View logits, View targets, int64_t N, int64_t V, double grad_scale,
                           int threads);
void adamw(View param, View grad, View m, View v, const Backend::AdamW& hp, int threads);
void attention_forward(const AttentionArgs& a, int threads);
void attention_backward(const AttentionArgs& a, int threads);
void attention_merge(const AttentionMergeArgs& a, int threads);

}  // namespace lss::cpu
