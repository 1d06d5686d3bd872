// CPU kernels of everything but attention: GEMM on OpenBLAS, the rest as OpenMP loops templated
// on the element type (float or double), dispatched once per call.

// -Wpsabi only notes that 16-lane vectors returned by value (load16, exp_f32, the gelu helpers)
// would be returned differently per ISA; those helpers are always inlined, so no such call
// crosses an ABI boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <omp.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/kernels.h"

// The build targets baseline x86-64 (SSE2); the SIMD row primitives are compiled once more for
// AVX2 and AVX-512 and picked at load time by the CPU they run on.
#if defined(__x86_64__)
#define LSS_SIMD_CLONES [[gnu::target_clones("avx512f", "avx2", "default")]]
#else
#define LSS_SIMD_CLONES
#endif

namespace lss::cpu {

// ---- row primitives (declared in kernels.h) ----
// The float versions use GCC vector extensions: 16 lanes, lowered to whatever the clone's
// instruction set has.

namespace {

using f32x16 = float __attribute__((vector_size(64)));
using i32x16 = int32_t __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

[[gnu::always_inline]] inline f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
[[gnu::always_inline]] inline void store16(float* p, const f32x16& v) {
  std::memcpy(p, &v, sizeof v);
}
[[gnu::always_inline]] inline float lane_sum(const f32x16& v) {
  float s = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) s += v[l];
  return s;
}
// Lane-wise square root. std::sqrt may set errno, and that branch keeps GCC (without
// -fno-math-errno) from vectorising it; the SSE instruction is the same correctly rounded
// operation.
[[gnu::always_inline]] inline f32x16 sqrt16(const f32x16& x) {
  f32x16 r;
#if defined(__x86_64__)
  for (int64_t l = 0; l < kLanes; l += 4) {
    __m128 q;
    std::memcpy(&q, reinterpret_cast<const float*>(&x) + l, sizeof q);
    q = _mm_sqrt_ps(q);
    std::memcpy(reinterpret_cast<float*>(&r) + l, &q, sizeof q);
  }
#else
  for (int64_t l = 0; l < kLanes; ++l) r[l] = std::sqrt(x[l]);
#endif
  return r;
}

// gelu_tanh(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). With
// 0.5 (1 + tanh(u)) = s = 1 / (1 + e^(-2u)) and 1 - tanh^2(u) = 4 s (1 - s), where
// 1 - s = e^(-2u) s, both directions follow from one exp with no cancellation.
constexpr double kGeluK0 = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kGeluK1 = 0.044715;
// Bound on -2u before the exp: keeps e^(-2u) finite (and s normal in fp32) so that e s stays
// meaningful; |gelu| is below 1e-30 there anyway.
constexpr float kGeluExpMaxF = 80.0f;
constexpr double kGeluExpMaxD = 700.0;

// V: float or f32x16, I: the matching int32 type.
template <class V, class I>
[[gnu::always_inline]] inline V gelu_f32(const V& x) {
  const V u = static_cast<float>(kGeluK0) * (x + static_cast<float>(kGeluK1) * x * x * x);
  V a = -2.0f * u;
  a = a > kGeluExpMaxF ? V{} + kGeluExpMaxF : a;
  return x / (1.0f + exp_f32<V, I>(a));
}

template <class V, class I>
[[gnu::always_inline]] inline V gelu_grad_f32(const V& x) {
  const float k0 = static_cast<float>(kGeluK0), k1 = static_cast<float>(kGeluK1);
  const V u = k0 * (x + k1 * x * x * x);
  V a = -2.0f * u;
  a = a > kGeluExpMaxF ? V{} + kGeluExpMaxF : a;
  const V e = exp_f32<V, I>(a);
  const V s = 1.0f / (1.0f + e);
  const V du = k0 * (1.0f + 3.0f * k1 * x * x);
  return s + 2.0f * x * s * (e * s) * du;
}

// AdamW's per-call constants in the element type. 1 - beta comes from the double values:
// 1 - 0.999f is off by 5e-5 relative in fp32.
template <class T>
struct AdamWConsts {
  T b1, b2, omb1, omb2, c1, c2, lr, eps, wd;
  explicit AdamWConsts(const Backend::AdamW& hp) {
    const double t = static_cast<double>(hp.step);
    b1 = static_cast<T>(hp.beta1);
    b2 = static_cast<T>(hp.beta2);
    omb1 = static_cast<T>(1.0 - hp.beta1);
    omb2 = static_cast<T>(1.0 - hp.beta2);
    c1 = static_cast<T>(1.0 / (1.0 - std::pow(hp.beta1, t)));  // bias corrections
    c2 = static_cast<T>(1.0 / (1.0 - std::pow(hp.beta2, t)));
    lr = static_cast<T>(hp.lr);
    eps = static_cast<T>(hp.eps);
    wd = static_cast<T>(hp.weight_decay);
  }
};

}  // namespace

LSS_SIMD_CLONES float row_max(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  if (n >= kLanes) {
    f32x16 acc = load16(x);
    for (j = kLanes; j + kLanes <= n; j += kLanes) {
      const f32x16 v = load16(x + j);
      acc = v > acc ? v : acc;
    }
    for (int64_t l = 0; l < kLanes; ++l) m = std::max(m, acc[l]);
  }
  for (; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

double row_max(const double* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

LSS_SIMD_CLONES float exp_shift_sum(float* x, int64_t n, float shift) {
  f32x16 acc = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const f32x16 e = exp_f32<f32x16, i32x16>(load16(x + j) - shift);
    store16(x + j, e);
    acc += e;
  }
  float sum = lane_sum(acc);
  for (; j < n; ++j) {
    x[j] = fast_exp(x[j] - shift);
    sum += x[j];
  }
  return sum;
}

double exp_shift_sum(double* x, int64_t n, double shift) {
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    x[j] = std::exp(x[j] - shift);
    sum += x[j];
  }
  return sum;
}

LSS_SIMD_CLONES void gelu_forward_row(float* out, const float* in, int64_t n) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) store16(out + j, gelu_f32<f32x16, i32x16>(load16(in + j)));
  for (; j < n; ++j) out[j] = gelu_f32<float, int32_t>(in[j]);
}

void gelu_forward_row(double* out, const double* in, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const double x = in[j];
    const double u = kGeluK0 * (x + kGeluK1 * x * x * x);
    out[j] = x / (1.0 + std::exp(std::min(-2.0 * u, kGeluExpMaxD)));
  }
}

LSS_SIMD_CLONES void gelu_backward_row(float* din, const float* dout, const float* in, int64_t n) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    store16(din + j, load16(dout + j) * gelu_grad_f32<f32x16, i32x16>(load16(in + j)));
  for (; j < n; ++j) din[j] = dout[j] * gelu_grad_f32<float, int32_t>(in[j]);
}

void gelu_backward_row(double* din, const double* dout, const double* in, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const double x = in[j];
    const double u = kGeluK0 * (x + kGeluK1 * x * x * x);
    const double e = std::exp(std::min(-2.0 * u, kGeluExpMaxD));
    const double s = 1.0 / (1.0 + e);
    const double du = kGeluK0 * (1.0 + 3.0 * kGeluK1 * x * x);
    din[j] = dout[j] * (s + 2.0 * x * s * (e * s) * du);
  }
}

namespace {

// One AdamW element; the scalar tails and the double path. sqrt of a non-negative value.
template <class T>
[[gnu::always_inline]] inline void adamw_elem(T& p, T g, T& m, T& v, const AdamWConsts<T>& k) {
  m = k.b1 * m + k.omb1 * g;
  v = k.b2 * v + k.omb2 * g * g;
  p -= k.lr * ((m * k.c1) / (std::sqrt(v * k.c2) + k.eps) + k.wd * p);
}

LSS_SIMD_CLONES void adamw_row(float* p, const float* g, float* m, float* v, int64_t n,
                               const AdamWConsts<float>& k) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const f32x16 gj = load16(g + j);
    const f32x16 mj = k.b1 * load16(m + j) + k.omb1 * gj;
    const f32x16 vj = k.b2 * load16(v + j) + k.omb2 * gj * gj;
    const f32x16 pj = load16(p + j);
    store16(m + j, mj);
    store16(v + j, vj);
    store16(p + j, pj - k.lr * ((mj * k.c1) / (sqrt16(vj * k.c2) + k.eps) + k.wd * pj));
  }
  for (; j < n; ++j) adamw_elem(p[j], g[j], m[j], v[j], k);
}

void adamw_row(double* p, const double* g, double* m, double* v, int64_t n,
               const AdamWConsts<double>& k) {
  for (int64_t j = 0; j < n; ++j) adamw_elem(p[j], g[j], m[j], v[j], k);
}

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;
// Elements per task of the elementwise loops that call row primitives.
constexpr int64_t kElemChunk = 4096;

int threads_for(int64_t work, int threads) { return work >= kParallelMin ? threads : 1; }

// [begin, end) of part `i` of `parts` near-equal parts of [0, n).
std::pair<int64_t, int64_t> part_range(int64_t n, int parts, int i) {
  const int64_t q = n / parts, r = n % parts;
  const int64_t begin = i * q + std::min<int64_t>(i, r);
  return {begin, begin + q + (i < r ? 1 : 0)};
}

// ---- gemm ----
template <class T>
void gemm_t(const GemmArgs& g, int threads) {
  T* c = static_cast<T*>(g.c);
  const T alpha = static_cast<T>(g.alpha), beta = static_cast<T>(g.beta);
  const int nt = threads_for(g.m * g.n, threads);
  if (g.k == 0) {
    // The BLAS would reject k = 0 leading dimensions; C = beta C, with beta = 0 overwriting.
#pragma omp parallel for num_threads(nt)
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < g.n; ++j)
        c[i * g.ldc + j] = beta == T(0) ? T(0) : beta * c[i * g.ldc + j];
  } else {
    // The BLAS thread count is process-wide: re-assert ours, another backend may have set its own.
    if (openblas_get_num_threads() != threads) openblas_set_num_threads(threads);
    blas_gemm(g.trans_a, g.trans_b, g.m, g.n, g.k, alpha, static_cast<const T*>(g.a), g.lda,
              static_cast<const T*>(g.b), g.ldb, beta, c, g.ldc);
  }
  if (g.bias) {
    const T* bias = static_cast<const T*>(g.bias);
#pragma omp parallel for num_threads(nt)
    for (int64_t i = 0; i < g.m; ++i) {
      T* row = c + i * g.ldc;
#pragma omp simd
      for (int64_t j = 0; j < g.n; ++j) row[j] += bias[j];
    }
  }
}

// ---- elementwise ----
template <class T>
void axpy_t(View y, View x, double alpha, int threads) {
  T* py = y.as<T>();
  const T* px = x.as<T>();
  const T a = static_cast<T>(alpha);
  const int64_t n = y.numel;
#pragma omp parallel for simd num_threads(threads_for(n, threads))
  for (int64_t i = 0; i < n; ++i) py[i] += a * px[i];
}

template <class T>
void add_t(View out, View a, View b, int threads) {
  T* po = out.as<T>();
  const T* pa = a.as<T>();
  const T* pb = b.as<T>();
  const int64_t n = out.numel;
#pragma omp parallel for simd num_threads(threads_for(n, threads))
  for (int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i];
}

// Column chunks give each thread its own slice of db, so the sums need no reduction step and are
// the same for every thread count.
constexpr int64_t kColChunk = 64;

template <class T>
void bias_grad_t(View db, View dy, int64_t rows, int64_t n, int threads) {
  T* pdb = db.as<T>();
  const T* pdy = dy.as<T>();
  const int64_t chunks = (n + kColChunk - 1) / kColChunk;
  const int nt = threads_for(rows * n, threads);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t c0 = ch * kColChunk, nc = std::min(kColChunk, n - c0);
    T acc[kColChunk] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = pdy + r * n + c0;
#pragma omp simd
      for (int64_t j = 0; j < nc; ++j) acc[j] += row[j];
    }
    for (int64_t j = 0; j < nc; ++j) pdb[c0 + j] += acc[j];
  }
}

// ---- embedding ----
void check_tokens(const int32_t* tokens, int64_t n, int64_t V, const char* op) {
  for (int64_t i = 0; i < n; ++i)
    LSS_CHECK(tokens[i] >= 0 && tokens[i] < V,
              std::string(op) + ": token " + std::to_string(tokens[i]) + " at row " +
                  std::to_string(i) + " outside the vocabulary of " + std::to_string(V));
}

template <class T>
void embedding_forward_t(View out, View tokens, View wte, View wpe_rows, int64_t Tl, int64_t B,
                         int64_t C, int threads) {
  const int64_t N = Tl * B, V = wte.numel / C;
  const int32_t* tok = tokens.as<int32_t>();
  check_tokens(tok, N, V, "embedding_forward");
  T* po = out.as<T>();               // (N, C)
  const T* pwte = wte.as<T>();       // (V, C)
  const T* pwpe = wpe_rows.as<T>();  // (Tl, C)
  const int nt = threads_for(N * C, threads);
#pragma omp parallel for num_threads(nt)
  for (int64_t r = 0; r < N; ++r) {
    const T* e = pwte + static_cast<int64_t>(tok[r]) * C;
    const T* p = pwpe + (r / B) * C;
    T* o = po + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = e[c] + p[c];
  }
}

template <class T>
void embedding_backward_t(View dwte, View dwpe_rows, View dout, View tokens, int64_t Tl, int64_t B,
                          int64_t C, int threads) {
  const int64_t N = Tl * B, V = dwte.numel / C;
  const int32_t* tok = tokens.as<int32_t>();
  check_tokens(tok, N, V, "embedding_backward");
  T* pdwte = dwte.as<T>();       // (V, C)
  T* pdwpe = dwpe_rows.as<T>();  // (Tl, C)
  const T* pdo = dout.as<T>();   // (N, C)
  const int nt = threads_for(N * C, threads);
  // Repeated tokens hit the same dwte row, so threads split the columns, not the rows: no races
  // and a fixed summation order.
#pragma omp parallel num_threads(nt)
  {
    const auto [c0, c1] = part_range(C, omp_get_num_threads(), omp_get_thread_num());
    for (int64_t r = 0; r < N; ++r) {
      T* d = pdwte + static_cast<int64_t>(tok[r]) * C;
      const T* g = pdo + r * C;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) d[c] += g[c];
    }
  }
#pragma omp parallel for num_threads(nt)
  for (int64_t t = 0; t < Tl; ++t) {
    T* d = pdwpe + t * C;
    for (int64_t b = 0; b < B; ++b) {
      const T* g = pdo + (t * B + b) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) d[c] += g[c];
    }
  }
}

// ---- layernorm ----
template <class T>
void layernorm_forward_t(View out, View mean, View rstd, View x, View weight, View bias, int64_t N,
                         int64_t C, double eps, int threads) {
  T* po = out.as<T>();           // (N, C)
  T* pmean = mean.as<T>();       // (N)
  T* prstd = rstd.as<T>();       // (N)
  const T* px = x.as<T>();       // (N, C)
  const T* pw = weight.as<T>();  // (C)
  const T* pb = bias.as<T>();    // (C)
  const int nt = threads_for(N * C, threads);
#pragma omp parallel for num_threads(nt)
  for (int64_t r = 0; r < N; ++r) {
    const T* xr = px + r * C;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < C; ++c) sum += xr[c];
    const T mu = sum / static_cast<T>(C);
    // Two passes: the variance of centred values does not cancel catastrophically.
    T sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < C; ++c) sq += (xr[c] - mu) * (xr[c] - mu);
    const T rs = T(1) / std::sqrt(sq / static_cast<T>(C) + static_cast<T>(eps));
    T* o = po + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = (xr[c] - mu) * rs * pw[c] + pb[c];
    pmean[r] = mu;
    prstd[r] = rs;
  }
}

template <class T>
void layernorm_backward_t(View dx, View dweight, View dbias, View dout, View x, View mean,
                          View rstd, View weight, int64_t N, int64_t C, int threads) {
  T* pdx = dx.as<T>();            // (N, C)
  T* pdw = dweight.as<T>();       // (C)
  T* pdb = dbias.as<T>();         // (C)
  const T* pdo = dout.as<T>();    // (N, C)
  const T* px = x.as<T>();        // (N, C)
  const T* pmean = mean.as<T>();  // (N)
  const T* prstd = rstd.as<T>();  // (N)
  const T* pw = weight.as<T>();   // (C)
  const int nt = threads_for(N * C, threads);
  // Per-thread partial dweight/dbias over a fixed row partition, summed in thread order after:
  // deterministic for a given thread count.
  std::vector<T> partial(static_cast<size_t>(nt) * 2 * C, T(0));  // (threads, 2, C)
#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num();
    const auto [r0, r1] = part_range(N, omp_get_num_threads(), tid);
    T* dw = partial.data() + static_cast<size_t>(tid) * 2 * C;
    T* db = dw + C;
    for (int64_t r = r0; r < r1; ++r) {
      const T* g = pdo + r * C;
      const T* xr = px + r * C;
      const T mu = pmean[r], rs = prstd[r];
      // dxhat = g * w; dx = rs * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
      T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t c = 0; c < C; ++c) {
        const T xhat = (xr[c] - mu) * rs;
        const T dxhat = g[c] * pw[c];
        s1 += dxhat;
        s2 += dxhat * xhat;
        dw[c] += g[c] * xhat;
        db[c] += g[c];
      }
      const T m1 = s1 / static_cast<T>(C), m2 = s2 / static_cast<T>(C);
      T* d = pdx + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T xhat = (xr[c] - mu) * rs;
        d[c] += rs * (g[c] * pw[c] - m1 - xhat * m2);
      }
    }
  }
  for (int t = 0; t < nt; ++t) {
    const T* dw = partial.data() + static_cast<size_t>(t) * 2 * C;
    const T* db = dw + C;
    for (int64_t c = 0; c < C; ++c) {
      pdw[c] += dw[c];
      pdb[c] += db[c];
    }
  }
}

// ---- gelu ----
template <class T>
void gelu_forward_t(View out, View in, int threads) {
  T* po = out.as<T>();
  const T* pi = in.as<T>();
  const int64_t n = out.numel;
  const int64_t chunks = (n + kElemChunk - 1) / kElemChunk;
#pragma omp parallel for num_threads(threads_for(n, threads))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kElemChunk;
    gelu_forward_row(po + i0, pi + i0, std::min(kElemChunk, n - i0));
  }
}

template <class T>
void gelu_backward_t(View din, View dout, View in, int threads) {
  T* pdin = din.as<T>();
  const T* pdo = dout.as<T>();
  const T* pi = in.as<T>();
  const int64_t n = din.numel;
  const int64_t chunks = (n + kElemChunk - 1) / kElemChunk;
#pragma omp parallel for num_threads(threads_for(n, threads))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kElemChunk;
    gelu_backward_row(pdin + i0, pdo + i0, pi + i0, std::min(kElemChunk, n - i0));
  }
}

// ---- cross-entropy ----
template <class T>
double cross_entropy_t(View logits, View targets, int64_t N, int64_t V, double grad_scale,
                       int threads) {
  T* pl = logits.as<T>();                      // (N, V)
  const int32_t* tgt = targets.as<int32_t>();  // (N)
  check_tokens(tgt, N, V, "cross_entropy_fused");
  const int nt = threads_for(N * V, threads);
  const T gs = static_cast<T>(grad_scale);
  // Per-thread loss partials over a fixed row partition, summed in order: deterministic.
  std::vector<double> partial(nt, 0.0);
#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num();
    const auto [r0, r1] = part_range(N, omp_get_num_threads(), tid);
    double loss = 0.0;
    for (int64_t r = r0; r < r1; ++r) {
      T* x = pl + r * V;
      const T mx = row_max(x, V);
      const T xt = x[tgt[r]];
      const T sum = exp_shift_sum(x, V, mx);
      // -log softmax[t] = log(sum) + max - x[t], with the max subtracted for stability.
      loss +=
          std::log(static_cast<double>(sum)) + static_cast<double>(mx) - static_cast<double>(xt);
      const T f = gs / sum;
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) x[j] *= f;
      x[tgt[r]] -= gs;
    }
    partial[tid] = loss;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

// ---- AdamW ----
template <class T>
void adamw_t(View param, View grad, View m, View v, const Backend::AdamW& hp, int threads) {
  T* p = param.as<T>();
  const T* g = grad.as<T>();
  T* pm = m.as<T>();
  T* pv = v.as<T>();
  const int64_t n = param.numel;
  const AdamWConsts<T> k(hp);
  const View& copy = hp.param_copy;
  const int64_t chunks = (n + kElemChunk - 1) / kElemChunk;
#pragma omp parallel for num_threads(threads_for(n, threads))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kElemChunk, len = std::min(kElemChunk, n - i0);
    adamw_row(p + i0, g + i0, pm + i0, pv + i0, len, k);
    // The working copy chunk by chunk, while the updated parameters are still in cache.
    if (copy.numel > 0) convert(copy.slice(i0, len).ptr, copy.dtype, p + i0, dtype_of<T>, len);
  }
}

}  // namespace

// ---- entry points: checks, then one dispatch on the dtype ----

void gemm(const GemmArgs& g, int threads) {
  dispatch_float(g.dtype, "gemm", [&](auto tag) {
    using T = decltype(tag);
    // The BLAS takes 32-bit dimensions.
    const auto fits = [](int64_t x) { return x >= 0 && x <= INT_MAX; };
    LSS_CHECK(fits(g.m) && fits(g.n) && fits(g.k) && fits(g.lda) && fits(g.ldb) && fits(g.ldc),
              "gemm: bad shape m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) +
                  " k=" + std::to_string(g.k) + " lda=" + std::to_string(g.lda) +
                  " ldb=" + std::to_string(g.ldb) + " ldc=" + std::to_string(g.ldc));
    // C and the bias have c_dtype; the CPU backend has no mixed-precision GEMM (its master and
    // compute dtypes coincide), so it must match A and B.
    require_float(g.c_dtype, "gemm");
    LSS_CHECK(g.c_dtype == g.dtype, std::string("gemm: C has dtype ") + dtype_name(g.c_dtype) +
                                        ", A and B " + dtype_name(g.dtype) +
                                        ": the CPU backend has no mixed-precision GEMM");
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
    gemm_t<T>(g, threads);
  });
}

void axpy(View y, View x, double alpha, int threads) {
  dispatch_float(y.dtype, "axpy", [&](auto tag) {
    using T = decltype(tag);
    check_view(x, y.dtype, y.numel, "axpy", "x");
    axpy_t<T>(y, x, alpha, threads);
  });
}

void add(View out, View a, View b, int threads) {
  dispatch_float(out.dtype, "add", [&](auto tag) {
    using T = decltype(tag);
    check_view(a, out.dtype, out.numel, "add", "a");
    check_view(b, out.dtype, out.numel, "add", "b");
    add_t<T>(out, a, b, threads);
  });
}

void bias_grad(View db, View dy, int64_t rows, int64_t n, int threads) {
  dispatch_float(db.dtype, "bias_grad", [&](auto tag) {
    using T = decltype(tag);
    check_view(db, db.dtype, n, "bias_grad", "db");
    check_view(dy, db.dtype, rows * n, "bias_grad", "dy");
    bias_grad_t<T>(db, dy, rows, n, threads);
  });
}

void embedding_forward(View out, View tokens, View wte, View wpe_rows, int64_t Tl, int64_t B,
                       int64_t C, int threads) {
  dispatch_float(out.dtype, "embedding_forward", [&](auto tag) {
    using T = decltype(tag);
    LSS_CHECK(C > 0 && wte.numel % C == 0, "embedding_forward: wte is not (V, C)");
    check_view(out, out.dtype, Tl * B * C, "embedding_forward", "out");
    check_view(tokens, DType::i32, Tl * B, "embedding_forward", "tokens");
    check_view(wte, out.dtype, C, "embedding_forward", "wte");
    check_view(wpe_rows, out.dtype, Tl * C, "embedding_forward", "wpe_rows");
    embedding_forward_t<T>(out, tokens, wte, wpe_rows, Tl, B, C, threads);
  });
}

void embedding_backward(View dwte, View dwpe_rows, View dout, View tokens, int64_t Tl, int64_t B,
                        int64_t C, int threads) {
  dispatch_float(dwte.dtype, "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    LSS_CHECK(C > 0 && dwte.numel % C == 0, "embedding_backward: dwte is not (V, C)");
    check_view(dwpe_rows, dwte.dtype, Tl * C, "embedding_backward", "dwpe_rows");
    check_view(dout, dwte.dtype, Tl * B * C, "embedding_backward", "dout");
    check_view(tokens, DType::i32, Tl * B, "embedding_backward", "tokens");
    embedding_backward_t<T>(dwte, dwpe_rows, dout, tokens, Tl, B, C, threads);
  });
}

void layernorm_forward(View out, View mean, View rstd, View x, View weight, View bias, int64_t N,
                       int64_t C, double eps, int threads) {
  dispatch_float(out.dtype, "layernorm_forward", [&](auto tag) {
    using T = decltype(tag);
    const DType st = stat_dtype(out.dtype);
    check_view(out, out.dtype, N * C, "layernorm_forward", "out");
    check_view(mean, st, N, "layernorm_forward", "mean");
    check_view(rstd, st, N, "layernorm_forward", "rstd");
    check_view(x, out.dtype, N * C, "layernorm_forward", "x");
    check_view(weight, out.dtype, C, "layernorm_forward", "weight");
    check_view(bias, out.dtype, C, "layernorm_forward", "bias");
    layernorm_forward_t<T>(out, mean, rstd, x, weight, bias, N, C, eps, threads);
  });
}

void layernorm_backward(View dx, View dweight, View dbias, View dout, View x, View mean, View rstd,
                        View weight, int64_t N, int64_t C, int threads) {
  dispatch_float(dx.dtype, "layernorm_backward", [&](auto tag) {
    using T = decltype(tag);
    const DType st = stat_dtype(dx.dtype);
    check_view(dx, dx.dtype, N * C, "layernorm_backward", "dx");
    check_view(dweight, dx.dtype, C, "layernorm_backward", "dweight");
    check_view(dbias, dx.dtype, C, "layernorm_backward", "dbias");
    check_view(dout, dx.dtype, N * C, "layernorm_backward", "dout");
    check_view(x, dx.dtype, N * C, "layernorm_backward", "x");
    check_view(mean, st, N, "layernorm_backward", "mean");
    check_view(rstd, st, N, "layernorm_backward", "rstd");
    check_view(weight, dx.dtype, C, "layernorm_backward", "weight");
    layernorm_backward_t<T>(dx, dweight, dbias, dout, x, mean, rstd, weight, N, C, threads);
  });
}

void gelu_forward(View out, View in, int threads) {
  dispatch_float(out.dtype, "gelu_forward", [&](auto tag) {
    using T = decltype(tag);
    check_view(in, out.dtype, out.numel, "gelu_forward", "in");
    gelu_forward_t<T>(out, in, threads);
  });
}

void gelu_backward(View din, View dout, View in, int threads) {
  dispatch_float(din.dtype, "gelu_backward", [&](auto tag) {
    using T = decltype(tag);
    check_view(dout, din.dtype, din.numel, "gelu_backward", "dout");
    check_view(in, din.dtype, din.numel, "gelu_backward", "in");
    gelu_backward_t<T>(din, dout, in, threads);
  });
}

double cross_entropy_fused(View logits, View targets, int64_t N, int64_t V, double grad_scale,
                           int threads) {
  return dispatch_float(logits.dtype, "cross_entropy_fused", [&](auto tag) {
    using T = decltype(tag);
    LSS_CHECK(V > 0, "cross_entropy_fused: empty vocabulary");
    check_view(logits, logits.dtype, N * V, "cross_entropy_fused", "logits");
    check_view(targets, DType::i32, N, "cross_entropy_fused", "targets");
    return cross_entropy_t<T>(logits, targets, N, V, grad_scale, threads);
  });
}

void adamw(View param, View grad, View m, View v, const Backend::AdamW& hp, int threads) {
  dispatch_float(param.dtype, "adamw", [&](auto tag) {
    using T = decltype(tag);
    LSS_CHECK(hp.step >= 1, "adamw: step " + std::to_string(hp.step) + " is not 1-based");
    check_view(grad, param.dtype, param.numel, "adamw", "grad");
    check_view(m, param.dtype, param.numel, "adamw", "m");
    check_view(v, param.dtype, param.numel, "adamw", "v");
    if (hp.param_copy.numel > 0) {
      require_float(hp.param_copy.dtype, "adamw");
      LSS_CHECK(hp.param_copy.numel == param.numel && hp.param_copy.ptr != nullptr,
                "adamw: param_copy has " + std::to_string(hp.param_copy.numel) +
                    " elements, param " + std::to_string(param.numel));
    }
    adamw_t<T>(param, grad, m, v, hp, threads);
  });
}

}  // namespace lss::cpu
