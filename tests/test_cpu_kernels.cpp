// Tests of every CPU backend operation against naive references written here in double, and of
// the backward passes against central finite differences of the forward passes (fp64).
//
// Bounds: results are compared normwise, |got - ref| <= tol * max|ref| for every element, so
// that entries that are small through cancellation do not need more accuracy than the data
// has. tol is 1e-12 for fp64 and 1e-5 for fp32 (fp32 rounding is ~6e-8 per operation; the
// longest reductions here are a few hundred terms). Finite differences use h = 1e-6 in fp64,
// whose truncation (~h^2) and rounding (~1e-16/h) errors stay below the 1e-7 bound used for them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "core/backend.h"
#include "core/check.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/block_order.h"

namespace lss {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kFdStep = 1e-6;
constexpr double kFdTol = 1e-7;

template <class T>
constexpr DType kDType = std::is_same_v<T, double> ? DType::f64 : DType::f32;
template <class T>
constexpr double kTol = std::is_same_v<T, double> ? 1e-12 : 1e-5;

// Normwise comparison (see the header comment); `what` names the quantity in failures. `floor`
// is a lower bound on the scale, for references that are exactly zero (then only rounding
// noise relative to the inputs' scale is expected).
template <class G>
void expect_close(const G* got, const std::vector<double>& ref, double tol, const std::string& what,
                  double floor = 1e-300) {
  double scale = floor;
  for (double r : ref) scale = std::max(scale, std::abs(r));
  int failures = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = static_cast<double>(got[i]);
    const double err = std::abs(g - ref[i]);
    if (!(err <= tol * scale)) {  // also catches NaN
      if (++failures <= 5)
        ADD_FAILURE() << what << "[" << i << "]: got " << g << ", expected " << ref[i] << " (error "
                      << err / scale << " of max|ref| " << scale << ", bound " << tol << ")";
    }
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << ref.size() << " elements off";
}

template <class G>
void expect_close(const std::vector<G>& got, const std::vector<double>& ref, double tol,
                  const std::string& what, double floor = 1e-300) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  expect_close(got.data(), ref, tol, what, floor);
}

template <class T>
class CpuKernels : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be = make_cpu_backend(2);
  std::mt19937_64 rng{20240601};

  std::vector<double> random(int64_t n, double lo = -1.0, double hi = 1.0) {
    std::uniform_real_distribution<double> dist(lo, hi);
    std::vector<double> v(n);
    // Rounded to T, so the double references see exactly the values the kernel sees.
    for (auto& x : v) x = static_cast<double>(static_cast<T>(dist(rng)));
    return v;
  }
  Buffer upload(const std::vector<double>& host) {
    Buffer b = be->alloc(kDType<T>, static_cast<int64_t>(host.size()));
    be->copy_from_host(b.view(), host.data(), DType::f64);
    return b;
  }
  Buffer upload_tokens(const std::vector<int32_t>& host) {
    Buffer b = be->alloc(DType::i32, static_cast<int64_t>(host.size()));
    be->copy_from_host(b.view(), host.data(), DType::i32);
    return b;
  }
  Buffer poisoned(int64_t n) {
    Buffer b = be->alloc(kDType<T>, n);
    std::fill(b.view().template as<T>(), b.view().template as<T>() + n, static_cast<T>(kNaN));
    return b;
  }
  std::vector<double> download(const Buffer& b) {
    std::vector<double> host(b.numel());
    be->copy_to_host(host.data(), DType::f64, b.view());
    return host;
  }
};

using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CpuKernels, FloatTypes);

// ---------------------------------------------------------------------------------------------
// memory and copies

TEST(CpuBackend, AllocIsAlignedAndCounted) {
  auto be = make_cpu_backend(1);
  EXPECT_STREQ(be->name(), "cpu");
  EXPECT_NE(be->device_name().find("1 thread"), std::string::npos) << be->device_name();
  {
    Buffer a = be->alloc(DType::f32, 1000);
    Buffer b = be->alloc_zeroed(DType::f64, 3);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.ptr()) % 64, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.ptr()) % 64, 0u);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(b.view().as<double>()[i], 0.0);
    EXPECT_EQ(be->memory_stats().current_bytes, 4000 + 24);
  }
  EXPECT_EQ(be->memory_stats().current_bytes, 0);
  EXPECT_EQ(be->memory_stats().peak_bytes, 4024);
}

TEST(CpuBackend, HostCopiesConvert) {
  auto be = make_cpu_backend(1);
  const std::vector<double> src = {1.5, -2.25, 3.0, 1e-3};
  Buffer f = be->alloc(DType::f32, 4);
  be->copy_from_host(f.view(), src.data(), DType::f64);
  std::vector<double> back(4);
  be->copy_to_host(back.data(), DType::f64, f.view());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(back[i], static_cast<double>(static_cast<float>(src[i])));

  const std::vector<int32_t> tok = {7, 0, 42};
  Buffer t = be->alloc(DType::i32, 3);
  be->copy_from_host(t.view(), tok.data(), DType::i32);
  std::vector<float> tf(3);
  be->copy_to_host(tf.data(), DType::f32, t.view());
  EXPECT_EQ(tf, (std::vector<float>{7.f, 0.f, 42.f}));

  Buffer d = be->alloc(DType::f64, 4);
  const std::vector<float> srcf = {0.5f, 1.f, -1.f, 2.f};
  be->copy_from_host(d.view(), srcf.data(), DType::f32);
  Buffer d2 = be->alloc(DType::f64, 4);
  be->copy(d2.view(), d.view());
  std::vector<float> outf(4);
  be->copy_to_host(outf.data(), DType::f32, d2.view());
  EXPECT_EQ(outf, srcf);
  be->fill_zero(d2.view());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(d2.view().as<double>()[i], 0.0);

  // Device-side copies convert between dtypes too.
  be->copy(d2.view(), f.view());  // f32 -> f64
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(d2.view().as<double>()[i], static_cast<double>(static_cast<float>(src[i])));
  Buffer t64 = be->alloc(DType::f64, 3);
  be->copy(t64.view(), t.view());  // i32 -> f64
  EXPECT_EQ(std::vector<double>(t64.view().as<double>(), t64.view().as<double>() + 3),
            (std::vector<double>{7.0, 0.0, 42.0}));
}

TEST(CpuBackend, Bf16IsRejected) {
  auto be = make_cpu_backend(1);
  Buffer x = be->alloc(DType::bf16, 16);
  Buffer y = be->alloc(DType::bf16, 16);
  EXPECT_THROW(be->gelu_forward(x.view(), x.view()), UsageError);
  EXPECT_THROW(be->axpy(y.view(), x.view(), 1.0), UsageError);
  EXPECT_THROW(be->fill_zero(x.view()), UsageError);
  std::vector<float> host(16, 1.f);
  EXPECT_THROW(be->copy_from_host(x.view(), host.data(), DType::f32), UsageError);
  GemmArgs g;
  g.dtype = DType::bf16;
  g.m = g.n = g.k = 4;
  g.a = g.b = x.ptr();
  g.c = y.ptr();
  g.lda = g.ldb = g.ldc = 4;
  EXPECT_THROW(be->gemm(g), UsageError);
  g.dtype = DType::f32;  // fp32 inputs accumulating into a bf16 C: still bf16
  g.c_dtype = DType::bf16;
  EXPECT_THROW(be->gemm(g), UsageError);
  AttentionArgs a;
  a.dtype = DType::bf16;
  EXPECT_THROW(be->attention_forward(a), UsageError);
  EXPECT_THROW(be->attention_backward(a), UsageError);
  try {
    be->add(x.view(), x.view(), y.view());
    ADD_FAILURE() << "no exception";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("use --dtype fp32 or fp64"), std::string::npos);
  }
}

TEST(CpuBackend, RejectsZeroThreads) { EXPECT_THROW(make_cpu_backend(0), UsageError); }

// ---------------------------------------------------------------------------------------------
// dense algebra

TYPED_TEST(CpuKernels, GemmAllTransposes) {
  using T = TypeParam;
  const int64_t m = 37, n = 29, k = 45;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (bool with_bias : {false, true})
        for (double beta : {0.0, 0.3}) {
          SCOPED_TRACE(::testing::Message() << "trans_a=" << ta << " trans_b=" << tb
                                            << " bias=" << with_bias << " beta=" << beta);
          // Stored shapes: A is m x k (or k x m), B is k x n (or n x k), all padded rows.
          const int64_t a_rows = ta ? k : m, a_cols = ta ? m : k;
          const int64_t b_rows = tb ? n : k, b_cols = tb ? k : n;
          const int64_t lda = a_cols + 3, ldb = b_cols + 5, ldc = n + 7;
          auto a = this->random(a_rows * lda);
          auto b = this->random(b_rows * ldb);
          auto bias = this->random(n);
          auto c0 = this->random(m * ldc);
          // Padding columns of C must survive; with beta = 0 C is not read, so NaN there must
          // not leak into the result.
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < ldc; ++j)
              if (j >= n || beta == 0.0) c0[i * ldc + j] = kNaN;
          Buffer A = this->upload(a), Bb = this->upload(b), Bias = this->upload(bias),
                 C = this->upload(c0);
          GemmArgs g;
          g.dtype = kDType<T>;
          g.c_dtype = kDType<T>;
          g.trans_a = ta;
          g.trans_b = tb;
          g.m = m;
          g.n = n;
          g.k = k;
          g.a = A.ptr();
          g.lda = lda;
          g.b = Bb.ptr();
          g.ldb = ldb;
          g.c = C.ptr();
          g.ldc = ldc;
          g.alpha = 0.7;
          g.beta = beta;
          g.bias = with_bias ? Bias.ptr() : nullptr;
          this->be->gemm(g);
          std::vector<double> ref(m * n), got(m * n);
          const auto c = this->download(C);
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
              double s = 0.0;
              for (int64_t p = 0; p < k; ++p) {
                const double av = ta ? a[p * lda + i] : a[i * lda + p];
                const double bv = tb ? b[j * ldb + p] : b[p * ldb + j];
                s += av * bv;
              }
              double r = 0.7 * s;
              if (beta != 0.0) r += beta * c0[i * ldc + j];
              if (with_bias) r += bias[j];
              ref[i * n + j] = r;
              got[i * n + j] = c[i * ldc + j];
            }
            for (int64_t j = n; j < ldc; ++j)
              EXPECT_TRUE(std::isnan(c[i * ldc + j])) << "padding of C written at " << i;
          }
          expect_close(got, ref, kTol<T>, "C");
        }
}

TYPED_TEST(CpuKernels, GemmEmptyInnerDimension) {
  using T = TypeParam;
  const int64_t m = 3, n = 4;
  auto c0 = this->random(m * n);
  auto bias = this->random(n);
  Buffer C = this->upload(c0), Bias = this->upload(bias);
  GemmArgs g;
  g.dtype = kDType<T>;
  g.c_dtype = kDType<T>;
  g.m = m;
  g.n = n;
  g.k = 0;
  g.c = C.ptr();
  g.ldc = n;
  g.beta = 0.5;
  g.bias = Bias.ptr();
  this->be->gemm(g);
  std::vector<double> ref(m * n);
  for (int64_t i = 0; i < m * n; ++i) ref[i] = 0.5 * c0[i] + bias[i % n];
  expect_close(this->download(C), ref, kTol<T>, "C");
}

TYPED_TEST(CpuKernels, AxpyAddBiasGrad) {
  using T = TypeParam;
  const int64_t n = 40000;  // above the parallel threshold
  auto x = this->random(n), y = this->random(n);
  Buffer X = this->upload(x), Y = this->upload(y);
  this->be->axpy(Y.view(), X.view(), -0.375);
  std::vector<double> ref(n);
  for (int64_t i = 0; i < n; ++i) ref[i] = y[i] - 0.375 * x[i];
  expect_close(this->download(Y), ref, kTol<T>, "axpy");

  Buffer Out = this->poisoned(n);
  Buffer Y2 = this->upload(y);
  this->be->add(Out.view(), X.view(), Y2.view());
  for (int64_t i = 0; i < n; ++i) ref[i] = x[i] + y[i];
  expect_close(this->download(Out), ref, kTol<T>, "add");
  this->be->add(X.view(), X.view(), Y2.view());  // aliasing out = a
  expect_close(this->download(X), ref, kTol<T>, "add aliased");

  const int64_t rows = 301, cols = 130;  // cols not a multiple of the 64-column chunks
  auto dy = this->random(rows * cols), db0 = this->random(cols);
  Buffer DY = this->upload(dy), DB = this->upload(db0);
  this->be->bias_grad(DB.view(), DY.view(), rows, cols);
  std::vector<double> dbref(db0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dbref[c] += dy[r * cols + c];
  expect_close(this->download(DB), dbref, kTol<T>, "bias_grad");
}

// ---------------------------------------------------------------------------------------------
// embedding

TYPED_TEST(CpuKernels, Embedding) {
  using T = TypeParam;
  const int64_t V = 11, C = 24, Tl = 5, B = 3, N = Tl * B;
  auto wte = this->random(V * C), wpe = this->random(Tl * C);
  std::vector<int32_t> tok(N);
  for (int64_t i = 0; i < N; ++i) tok[i] = static_cast<int32_t>((i * 7) % V % 6);  // repeats
  Buffer Wte = this->upload(wte), Wpe = this->upload(wpe), Tok = this->upload_tokens(tok);
  Buffer Out = this->poisoned(N * C);
  this->be->embedding_forward(Out.view(), Tok.view(), Wte.view(), Wpe.view(), Tl, B, C);
  std::vector<double> ref(N * C);
  for (int64_t t = 0; t < Tl; ++t)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t r = t * B + b;
        ref[r * C + c] = wte[tok[r] * C + c] + wpe[t * C + c];
      }
  expect_close(this->download(Out), ref, kTol<T>, "embedding out");

  auto dout = this->random(N * C), dwte0 = this->random(V * C), dwpe0 = this->random(Tl * C);
  Buffer Dout = this->upload(dout), Dwte = this->upload(dwte0), Dwpe = this->upload(dwpe0);
  this->be->embedding_backward(Dwte.view(), Dwpe.view(), Dout.view(), Tok.view(), Tl, B, C);
  std::vector<double> dwte(dwte0), dwpe(dwpe0);
  for (int64_t t = 0; t < Tl; ++t)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t r = t * B + b;
        dwte[tok[r] * C + c] += dout[r * C + c];
        dwpe[t * C + c] += dout[r * C + c];
      }
  expect_close(this->download(Dwte), dwte, kTol<T>, "dwte");
  expect_close(this->download(Dwpe), dwpe, kTol<T>, "dwpe");
}

// ---------------------------------------------------------------------------------------------
// layernorm

struct LayerNormRef {
  std::vector<double> out, mean, rstd;
};

LayerNormRef layernorm_reference(const std::vector<double>& x, const std::vector<double>& w,
                                 const std::vector<double>& b, int64_t N, int64_t C, double eps) {
  LayerNormRef r{std::vector<double>(N * C), std::vector<double>(N), std::vector<double>(N)};
  for (int64_t n = 0; n < N; ++n) {
    double mu = 0.0;
    for (int64_t c = 0; c < C; ++c) mu += x[n * C + c];
    mu /= C;
    double var = 0.0;
    for (int64_t c = 0; c < C; ++c) var += (x[n * C + c] - mu) * (x[n * C + c] - mu);
    var /= C;
    const double rs = 1.0 / std::sqrt(var + eps);
    for (int64_t c = 0; c < C; ++c) r.out[n * C + c] = (x[n * C + c] - mu) * rs * w[c] + b[c];
    r.mean[n] = mu;
    r.rstd[n] = rs;
  }
  return r;
}

TYPED_TEST(CpuKernels, LayerNorm) {
  using T = TypeParam;
  const double eps = 1e-5;
  for (auto [N, C] : {std::pair<int64_t, int64_t>{7, 33}, {130, 300}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << N << " C=" << C);
    auto x = this->random(N * C, -2.0, 3.0), w = this->random(C, 0.5, 1.5), b = this->random(C);
    Buffer X = this->upload(x), W = this->upload(w), Bi = this->upload(b);
    Buffer Out = this->poisoned(N * C), Mean = this->poisoned(N), Rstd = this->poisoned(N);
    this->be->layernorm_forward(Out.view(), Mean.view(), Rstd.view(), X.view(), W.view(), Bi.view(),
                                N, C, eps);
    const auto ref = layernorm_reference(x, w, b, N, C, eps);
    expect_close(this->download(Out), ref.out, kTol<T>, "out");
    expect_close(this->download(Mean), ref.mean, kTol<T>, "mean");
    expect_close(this->download(Rstd), ref.rstd, kTol<T>, "rstd");

    // Backward, accumulating into non-zero gradients, against the analytic formula in double.
    auto dout = this->random(N * C), dx0 = this->random(N * C), dw0 = this->random(C),
         db0 = this->random(C);
    Buffer Dout = this->upload(dout), Dx = this->upload(dx0), Dw = this->upload(dw0),
           Db = this->upload(db0);
    this->be->layernorm_backward(Dx.view(), Dw.view(), Db.view(), Dout.view(), X.view(),
                                 Mean.view(), Rstd.view(), W.view(), N, C);
    std::vector<double> dx(dx0), dw(dw0), db(db0);
    for (int64_t n = 0; n < N; ++n) {
      // dL/dx_c = rs/C * sum_k (C delta_kc - 1 - xhat_k xhat_c) g_k w_k
      const double mu = ref.mean[n], rs = ref.rstd[n];
      for (int64_t c = 0; c < C; ++c) {
        double s = 0.0;
        for (int64_t kk = 0; kk < C; ++kk) {
          const double xk = (x[n * C + kk] - mu) * rs, xc = (x[n * C + c] - mu) * rs;
          s += ((kk == c ? C : 0) - 1.0 - xk * xc) * dout[n * C + kk] * w[kk];
        }
        dx[n * C + c] += rs / C * s;
        dw[c] += dout[n * C + c] * (x[n * C + c] - mu) * rs;
        db[c] += dout[n * C + c];
      }
    }
    expect_close(this->download(Dx), dx, kTol<T>, "dx");
    expect_close(this->download(Dw), dw, kTol<T>, "dweight");
    expect_close(this->download(Db), db, kTol<T>, "dbias");
  }
}

// L = sum(out * R) as a function of every input, through the backend's own forward.
TEST(CpuKernelsFp64, LayerNormBackwardMatchesFiniteDifferences) {
  auto be = make_cpu_backend(1);
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  const int64_t N = 4, C = 13;
  const double eps = 1e-5;
  auto rnd = [&](int64_t n) {
    std::vector<double> v(n);
    for (auto& e : v) e = dist(rng);
    return v;
  };
  std::vector<double> x = rnd(N * C), w = rnd(C), b = rnd(C), R = rnd(N * C);
  auto up = [&](const std::vector<double>& h) {
    Buffer buf = be->alloc(DType::f64, static_cast<int64_t>(h.size()));
    be->copy_from_host(buf.view(), h.data(), DType::f64);
    return buf;
  };
  auto loss = [&] {
    Buffer X = up(x), W = up(w), Bi = up(b), Out = be->alloc(DType::f64, N * C),
           Mean = be->alloc(DType::f64, N), Rstd = be->alloc(DType::f64, N);
    be->layernorm_forward(Out.view(), Mean.view(), Rstd.view(), X.view(), W.view(), Bi.view(), N, C,
                          eps);
    double L = 0.0;
    for (int64_t i = 0; i < N * C; ++i) L += Out.view().as<double>()[i] * R[i];
    return L;
  };
  auto fd = [&](std::vector<double>& p) {
    std::vector<double> g(p.size());
    for (size_t i = 0; i < p.size(); ++i) {
      const double keep = p[i];
      p[i] = keep + kFdStep;
      const double lp = loss();
      p[i] = keep - kFdStep;
      const double lm = loss();
      p[i] = keep;
      g[i] = (lp - lm) / (2 * kFdStep);
    }
    return g;
  };
  Buffer X = up(x), W = up(w), Bi = up(b), Out = be->alloc(DType::f64, N * C),
         Mean = be->alloc(DType::f64, N), Rstd = be->alloc(DType::f64, N), Dout = up(R),
         Dx = be->alloc_zeroed(DType::f64, N * C), Dw = be->alloc_zeroed(DType::f64, C),
         Db = be->alloc_zeroed(DType::f64, C);
  be->layernorm_forward(Out.view(), Mean.view(), Rstd.view(), X.view(), W.view(), Bi.view(), N, C,
                        eps);
  be->layernorm_backward(Dx.view(), Dw.view(), Db.view(), Dout.view(), X.view(), Mean.view(),
                         Rstd.view(), W.view(), N, C);
  expect_close(Dx.view().as<double>(), fd(x), kFdTol, "dx vs finite differences");
  expect_close(Dw.view().as<double>(), fd(w), kFdTol, "dweight vs finite differences");
  expect_close(Db.view().as<double>(), fd(b), kFdTol, "dbias vs finite differences");
}

// ---------------------------------------------------------------------------------------------
// gelu

double gelu_ref(double x) {
  const double k0 = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(k0 * (x + 0.044715 * x * x * x)));
}
double gelu_grad_ref(double x) {
  const double k0 = std::sqrt(2.0 / M_PI);
  const double th = std::tanh(k0 * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * k0 * (1.0 + 3.0 * 0.044715 * x * x);
}

TYPED_TEST(CpuKernels, Gelu) {
  using T = TypeParam;
  const int64_t n = 40000;
  auto x = this->random(n, -6.0, 6.0);
  for (double e : {0.0, -30.0, 30.0, -9.0, 9.0, 1e-4, -1e-4}) x.push_back(e);
  const int64_t m = static_cast<int64_t>(x.size());
  Buffer X = this->upload(x), Out = this->poisoned(m);
  this->be->gelu_forward(Out.view(), X.view());
  std::vector<double> ref(m), gref(m);
  for (int64_t i = 0; i < m; ++i) ref[i] = gelu_ref(x[i]);
  expect_close(this->download(Out), ref, kTol<T>, "gelu");

  auto dout = this->random(m);
  Buffer Dout = this->upload(dout), Din = this->poisoned(m);
  this->be->gelu_backward(Din.view(), Dout.view(), X.view());
  for (int64_t i = 0; i < m; ++i) gref[i] = dout[i] * gelu_grad_ref(x[i]);
  expect_close(this->download(Din), gref, kTol<T>, "gelu backward");
  this->be->gelu_backward(Dout.view(), Dout.view(), X.view());  // din aliases dout
  expect_close(this->download(Dout), gref, kTol<T>, "gelu backward aliased");
  this->be->gelu_forward(X.view(), X.view());  // out aliases in
  expect_close(this->download(X), ref, kTol<T>, "gelu aliased");
}

// The GEMM's extras (core/backend.h): a separate beta input (the residual) and the GELU
// epilogues, against loops over the same formulas. The CPU backend runs them as passes; the CUDA
// backend's fused versions are checked against these in test_cuda_kernels.
TYPED_TEST(CpuKernels, GemmResidualAndGeluEpilogues) {
  using T = TypeParam;
  const int64_t m = 23, n = 31, k = 17;  // y (m, n) = x (m, k) W^T, W (n, k)
  const auto x = this->random(m * k), w = this->random(n * k), bias = this->random(n);
  const auto residual = this->random(m * n), aux_in = this->random(m * n, -4.0, 4.0);
  std::vector<double> z(m * n);  // x W^T + bias
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = bias[j];
      for (int64_t p = 0; p < k; ++p) s += x[i * k + p] * w[j * k + p];
      z[i * n + j] = s;
    }
  Buffer X = this->upload(x), W = this->upload(w), Bias = this->upload(bias);
  auto args = [&](void* c) {
    GemmArgs g;
    g.dtype = g.c_dtype = kDType<T>;
    g.trans_b = true;
    g.m = m;
    g.n = n;
    g.k = k;
    g.a = X.ptr();
    g.lda = k;
    g.b = W.ptr();
    g.ldb = k;
    g.c = c;
    g.ldc = n;
    g.bias = Bias.ptr();
    return g;
  };
  std::vector<double> ref(m * n);
  {  // C = x W^T + b + R, R untouched
    Buffer R = this->upload(residual), C = this->poisoned(m * n);
    GemmArgs g = args(C.ptr());
    g.c_in = R.ptr();
    g.beta = 1.0;
    this->be->gemm(g);
    for (int64_t i = 0; i < m * n; ++i) ref[i] = z[i] + residual[i];
    expect_close(this->download(C), ref, kTol<T>, "residual");
    expect_close(this->download(R), residual, 0.0, "residual input");
  }
  {  // C = gelu(Z), aux = Z
    Buffer C = this->poisoned(m * n), Aux = this->poisoned(m * n);
    GemmArgs g = args(C.ptr());
    g.epilogue = GemmEpilogue::gelu;
    g.aux = Aux.ptr();
    this->be->gemm(g);
    for (int64_t i = 0; i < m * n; ++i) ref[i] = gelu_ref(z[i]);
    expect_close(this->download(C), ref, kTol<T>, "gelu epilogue");
    expect_close(this->download(Aux), z, kTol<T>, "gelu epilogue's pre-activation");
  }
  {  // C = Z * gelu'(aux), no bias
    Buffer C = this->poisoned(m * n), Aux = this->upload(aux_in);
    GemmArgs g = args(C.ptr());
    g.bias = nullptr;
    g.epilogue = GemmEpilogue::gelu_backward;
    g.aux = Aux.ptr();
    this->be->gemm(g);
    for (int64_t i = 0; i < m * n; ++i) ref[i] = (z[i] - bias[i % n]) * gelu_grad_ref(aux_in[i]);
    expect_close(this->download(C), ref, kTol<T>, "gelu_backward epilogue");
  }
  {  // what the contract rules out fails loudly
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    Buffer C = this->poisoned(m * n), Aux = this->poisoned(m * n);
    GemmArgs g = args(C.ptr());
    g.epilogue = GemmEpilogue::gelu_backward;  // with a bias
    g.aux = Aux.ptr();
    EXPECT_DEATH(this->be->gemm(g), "takes no bias");
    g = args(C.ptr());
    g.epilogue = GemmEpilogue::gelu;  // no aux
    EXPECT_DEATH(this->be->gemm(g), "without its aux");
  }
}

TEST(CpuKernelsFp64, GeluBackwardMatchesFiniteDifferences) {
  auto be = make_cpu_backend(1);
  std::vector<double> x;
  for (double v = -7.0; v <= 7.0; v += 0.173) x.push_back(v);
  const int64_t n = static_cast<int64_t>(x.size());
  Buffer X = be->alloc(DType::f64, n), Y = be->alloc(DType::f64, n);
  be->copy_from_host(X.view(), x.data(), DType::f64);
  std::vector<double> ones(n, 1.0), fd(n);
  auto eval = [&](const std::vector<double>& at) {
    be->copy_from_host(X.view(), at.data(), DType::f64);
    be->gelu_forward(Y.view(), X.view());
    return std::vector<double>(Y.view().as<double>(), Y.view().as<double>() + n);
  };
  std::vector<double> xp(x), xm(x);
  for (int64_t i = 0; i < n; ++i) {
    xp[i] += kFdStep;
    xm[i] -= kFdStep;
  }
  const auto yp = eval(xp), ym = eval(xm);
  for (int64_t i = 0; i < n; ++i) fd[i] = (yp[i] - ym[i]) / (2 * kFdStep);
  be->copy_from_host(X.view(), x.data(), DType::f64);
  Buffer G = be->alloc(DType::f64, n);
  be->copy_from_host(G.view(), ones.data(), DType::f64);
  be->gelu_backward(G.view(), G.view(), X.view());
  expect_close(G.view().as<double>(), fd, kFdTol, "gelu' vs finite differences");
}

// ---------------------------------------------------------------------------------------------
// cross-entropy

TYPED_TEST(CpuKernels, CrossEntropy) {
  using T = TypeParam;
  for (auto [N, V] : {std::pair<int64_t, int64_t>{7, 50}, {50, 1000}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << N << " V=" << V);
    auto logits = this->random(N * V, -5.0, 5.0);
    // A row with a huge offset: only a max-subtracted softmax survives it.
    for (int64_t j = 0; j < V; ++j)
      logits[2 * V + j] = static_cast<double>(static_cast<T>(logits[2 * V + j] + 1000.0));
    std::vector<int32_t> tgt(N);
    for (int64_t i = 0; i < N; ++i) tgt[i] = static_cast<int32_t>((i * 13 + 5) % V);
    Buffer L = this->upload(logits), Tg = this->upload_tokens(tgt);
    const double grad_scale = 1.0 / static_cast<double>(N);
    Buffer sum = this->be->alloc(DType::f64, 1);  // (1)
    this->be->cross_entropy_fused(L.view(), Tg.view(), sum.view(), N, V, grad_scale);
    double loss = 0.0;
    this->be->copy_to_host(&loss, DType::f64, sum.view());
    double ref_loss = 0.0;
    std::vector<double> grad(N * V);
    for (int64_t i = 0; i < N; ++i) {
      const double* row = logits.data() + i * V;
      const double mx = *std::max_element(row, row + V);
      double sum = 0.0;
      for (int64_t j = 0; j < V; ++j) sum += std::exp(row[j] - mx);
      const double lse = mx + std::log(sum);
      ref_loss += lse - row[tgt[i]];  // -log_softmax[target]
      for (int64_t j = 0; j < V; ++j)
        grad[i * V + j] = (std::exp(row[j] - lse) - (j == tgt[i] ? 1.0 : 0.0)) * grad_scale;
    }
    // The loss is a sum of N terms of size ~log V; the row with +1000 is computed relative to
    // its max, so the bound is relative to the loss itself.
    EXPECT_NEAR(loss, ref_loss, kTol<T> * std::abs(ref_loss));
    expect_close(this->download(L), grad, kTol<T>, "dlogits");
  }
}

TEST(CpuKernelsFp64, CrossEntropyGradientMatchesFiniteDifferences) {
  auto be = make_cpu_backend(1);
  const int64_t N = 3, V = 11;
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> dist(-3.0, 3.0);
  std::vector<double> x(N * V);
  for (auto& e : x) e = dist(rng);
  const std::vector<int32_t> tgt = {4, 0, 10};
  Buffer Tg = be->alloc(DType::i32, N), L = be->alloc(DType::f64, N * V), sum = be->alloc(DType::f64, 1);
  be->copy_from_host(Tg.view(), tgt.data(), DType::i32);
  const double grad_scale = 0.37;
  auto loss_at = [&](const std::vector<double>& at) {
    be->copy_from_host(L.view(), at.data(), DType::f64);
    be->cross_entropy_fused(L.view(), Tg.view(), sum.view(), N, V, grad_scale);
    double loss = 0.0;
    be->copy_to_host(&loss, DType::f64, sum.view());
    return loss;
  };
  std::vector<double> fd(N * V);
  for (int64_t i = 0; i < N * V; ++i) {
    std::vector<double> xp(x), xm(x);
    xp[i] += kFdStep;
    xm[i] -= kFdStep;
    fd[i] = (loss_at(xp) - loss_at(xm)) / (2 * kFdStep) * grad_scale;
  }
  loss_at(x);
  expect_close(L.view().as<double>(), fd, kFdTol, "dlogits vs finite differences");
}

// ---------------------------------------------------------------------------------------------
// AdamW

TYPED_TEST(CpuKernels, AdamWThreeSteps) {
  using T = TypeParam;
  const int64_t n = 40000;
  auto p = this->random(n), m = std::vector<double>(n, 0.0), v = std::vector<double>(n, 0.0);
  Buffer P = this->upload(p), M = this->upload(m), Vb = this->upload(v);
  // The working copy in the other float type, poisoned so that every element must be written.
  const DType copy_dtype = kDType<T> == DType::f32 ? DType::f64 : DType::f32;
  Buffer Copy = this->be->alloc(copy_dtype, n);
  const std::vector<double> nans(n, kNaN);
  this->be->copy_from_host(Copy.view(), nans.data(), DType::f64);
  Backend::AdamW hp{0.01, 0.9, 0.999, 1e-8, 0.1, 0};
  hp.param_copy = Copy.view();
  for (int64_t step = 1; step <= 3; ++step) {
    hp.step = step;
    auto g = this->random(n);
    Buffer G = this->upload(g);
    this->be->adamw(P.view(), G.view(), M.view(), Vb.view(), hp);
    const double c1 = 1.0 - std::pow(hp.beta1, step), c2 = 1.0 - std::pow(hp.beta2, step);
    for (int64_t i = 0; i < n; ++i) {
      m[i] = hp.beta1 * m[i] + (1 - hp.beta1) * g[i];
      v[i] = hp.beta2 * v[i] + (1 - hp.beta2) * g[i] * g[i];
      p[i] -= hp.lr * ((m[i] / c1) / (std::sqrt(v[i] / c2) + hp.eps) + hp.weight_decay * p[i]);
    }
  }
  expect_close(this->download(P), p, kTol<T>, "param");
  std::vector<double> copy(n), converted(n);
  this->be->copy_to_host(copy.data(), DType::f64, Copy.view());
  for (int64_t i = 0; i < n; ++i) {
    const T pi = P.view().template as<T>()[i];
    converted[i] = copy_dtype == DType::f32 ? static_cast<double>(static_cast<float>(pi))
                                            : static_cast<double>(pi);
  }
  EXPECT_EQ(copy, converted) << "param_copy is not the converted parameter";
  expect_close(this->download(M), m, kTol<T>, "m");
  expect_close(this->download(Vb), v, kTol<T>, "v");
}

// Several tensors laid end to end in one call, each run with its own weight decay (runs of odd
// lengths, an empty one), against the formula; and runs that do not cover the tensor fail.
TYPED_TEST(CpuKernels, AdamWDecayRuns) {
  using T = TypeParam;
  const std::vector<Backend::DecayRun> runs = {{7, 0.1}, {0, 0.3}, {1001, 0.0}, {33, 0.25}, {2, 0.0}};
  int64_t n = 0;
  for (const auto& r : runs) n += r.numel;
  auto p = this->random(n), g = this->random(n), m = this->random(n), v = this->random(n, 0.0, 1.0);
  Buffer P = this->upload(p), G = this->upload(g), M = this->upload(m), Vb = this->upload(v);
  Backend::AdamW hp{0.01, 0.9, 0.999, 1e-8, 0.5, 2};  // weight_decay unused with runs
  hp.decay_runs = runs;
  this->be->adamw(P.view(), G.view(), M.view(), Vb.view(), hp);
  const double c1 = 1.0 - std::pow(hp.beta1, 2.0), c2 = 1.0 - std::pow(hp.beta2, 2.0);
  int64_t i = 0;
  for (const auto& r : runs)
    for (int64_t j = 0; j < r.numel; ++j, ++i) {
      m[i] = hp.beta1 * m[i] + (1 - hp.beta1) * g[i];
      v[i] = hp.beta2 * v[i] + (1 - hp.beta2) * g[i] * g[i];
      p[i] -= hp.lr * ((m[i] / c1) / (std::sqrt(v[i] / c2) + hp.eps) + r.weight_decay * p[i]);
    }
  expect_close(this->download(P), p, kTol<T>, "param");
  expect_close(this->download(M), m, kTol<T>, "m");
  expect_close(this->download(Vb), v, kTol<T>, "v");
  hp.decay_runs.back().numel += 1;
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(this->be->adamw(P.view(), G.view(), M.view(), Vb.view(), hp),
               "decay runs of " + std::to_string(n + 1) + " elements for a tensor of " + std::to_string(n));
}

// ---------------------------------------------------------------------------------------------
// attention

struct AttnShape {
  int64_t B, H, D, Tq, Tk, q_offset;
  bool causal;
};

std::string describe(const AttnShape& s) {
  return "B=" + std::to_string(s.B) + " H=" + std::to_string(s.H) + " D=" + std::to_string(s.D) +
         " Tq=" + std::to_string(s.Tq) + " Tk=" + std::to_string(s.Tk) +
         " q_offset=" + std::to_string(s.q_offset) + (s.causal ? " causal" : " full");
}

// Dense (B, T, H, D) tensors; index ((b*T + t)*H + h)*D + d.
struct AttnRef {
  std::vector<double> out, lse, dq, dk, dv;
};

// Materialised softmax: S = scale Q K^T over visible keys, P = softmax(S), out = P V, and the
// textbook backward dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(P dP)), dQ = scale dS K,
// dK = scale dS^T Q.
AttnRef attention_reference(const AttnShape& s, double scale, const std::vector<double>& q,
                            const std::vector<double>& k, const std::vector<double>& v,
                            const std::vector<double>& dout) {
  const int64_t B = s.B, H = s.H, D = s.D, Tq = s.Tq, Tk = s.Tk;
  AttnRef r;
  r.out.assign(B * Tq * H * D, 0.0);
  r.lse.assign(B * H * Tq, 0.0);
  r.dq.assign(B * Tq * H * D, 0.0);
  r.dk.assign(B * Tk * H * D, 0.0);
  r.dv.assign(B * Tk * H * D, 0.0);
  auto qi = [&](int64_t b, int64_t t, int64_t h) { return ((b * Tq + t) * H + h) * D; };
  auto ki = [&](int64_t b, int64_t t, int64_t h) { return ((b * Tk + t) * H + h) * D; };
  std::vector<double> P(Tk), dP(Tk);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t nvis = s.causal ? std::min(Tk, s.q_offset + i + 1) : Tk;
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < nvis; ++j) {
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += q[qi(b, i, h) + d] * k[ki(b, j, h) + d];
          P[j] = scale * dot;
          mx = std::max(mx, P[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < nvis; ++j) sum += std::exp(P[j] - mx);
        r.lse[(b * H + h) * Tq + i] = mx + std::log(sum);
        for (int64_t j = 0; j < nvis; ++j) P[j] = std::exp(P[j] - mx) / sum;
        for (int64_t j = 0; j < nvis; ++j)
          for (int64_t d = 0; d < D; ++d) r.out[qi(b, i, h) + d] += P[j] * v[ki(b, j, h) + d];
        double rowsum = 0.0;
        for (int64_t j = 0; j < nvis; ++j) {
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += dout[qi(b, i, h) + d] * v[ki(b, j, h) + d];
          dP[j] = dot;
          rowsum += P[j] * dP[j];
        }
        for (int64_t j = 0; j < nvis; ++j) {
          const double ds = P[j] * (dP[j] - rowsum);
          for (int64_t d = 0; d < D; ++d) {
            r.dv[ki(b, j, h) + d] += P[j] * dout[qi(b, i, h) + d];
            r.dq[qi(b, i, h) + d] += scale * ds * k[ki(b, j, h) + d];
            r.dk[ki(b, j, h) + d] += scale * ds * q[qi(b, i, h) + d];
          }
        }
      }
  return r;
}

// Runs the backend's attention on strided operands laid out as in the model: q, k, v inside
// packed (T, B, 3C) QKV buffers (queries from one of Tq rows, keys and values from one of Tk
// rows), out and dout (T, B, C), dq/dk/dv in packed (T, B, 3C) gradient buffers. The parts of
// the gradient buffers that are not dq/dk/dv stay NaN and are checked to be untouched.
template <class T>
struct AttnRun {
  AttnShape s;
  Backend* be;
  Buffer qkv_q, qkv_kv, out, lse, dout, dqkv_q, dqkv_kv;
  AttentionArgs args;

  AttnRun(Backend* backend, const AttnShape& shape) : s(shape), be(backend) {
    const int64_t C = s.H * s.D;
    qkv_q = be->alloc(kDType<T>, s.Tq * s.B * 3 * C);
    qkv_kv = be->alloc(kDType<T>, s.Tk * s.B * 3 * C);
    out = be->alloc(kDType<T>, s.Tq * s.B * C);
    lse = be->alloc(stat_dtype(kDType<T>), s.B * s.H * s.Tq);
    dout = be->alloc(kDType<T>, s.Tq * s.B * C);
    dqkv_q = be->alloc(kDType<T>, s.Tq * s.B * 3 * C);
    dqkv_kv = be->alloc(kDType<T>, s.Tk * s.B * 3 * C);
    fill(qkv_q, kNaN);
    fill(qkv_kv, kNaN);
    args.dtype = kDType<T>;
    args.B = s.B;
    args.H = s.H;
    args.D = s.D;
    args.Tq = s.Tq;
    args.Tk = s.Tk;
    args.q_offset = s.q_offset;
    args.causal = s.causal;
    args.scale = 1.0 / std::sqrt(static_cast<double>(s.D));
    const int64_t packed_row = s.B * 3 * C, packed_batch = 3 * C;
    args.q = {qkv_q.ptr(), packed_batch, packed_row};
    args.k = {elem(qkv_kv, C), packed_batch, packed_row};
    args.v = {elem(qkv_kv, 2 * C), packed_batch, packed_row};
    args.out = {out.ptr(), C, s.B * C};
    args.lse = lse.ptr();
    args.dout = {dout.ptr(), C, s.B * C};
    args.dq = {dqkv_q.ptr(), packed_batch, packed_row};
    args.dk = {elem(dqkv_kv, C), packed_batch, packed_row};
    args.dv = {elem(dqkv_kv, 2 * C), packed_batch, packed_row};
  }
  static void fill(Buffer& b, double value) {
    std::fill(b.view().as<T>(), b.view().as<T>() + b.numel(), static_cast<T>(value));
  }
  static void* elem(const Buffer& b, int64_t offset) { return b.view().as<T>() + offset; }
  // Element (b, t, h, d) of a strided operand.
  T& at(const AttnOperand& o, int64_t b, int64_t t, int64_t h, int64_t d) const {
    return static_cast<T*>(o.ptr)[b * o.batch_stride + t * o.row_stride + h * s.D + d];
  }
  // Dense (B, T, H, D) <-> strided operand.
  void scatter(const AttnOperand& o, int64_t T_, const std::vector<double>& dense) {
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t t = 0; t < T_; ++t)
        for (int64_t h = 0; h < s.H; ++h)
          for (int64_t d = 0; d < s.D; ++d)
            at(o, b, t, h, d) = static_cast<T>(dense[((b * T_ + t) * s.H + h) * s.D + d]);
  }
  std::vector<double> gather(const AttnOperand& o, int64_t T_) const {
    std::vector<double> dense(s.B * T_ * s.H * s.D);
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t t = 0; t < T_; ++t)
        for (int64_t h = 0; h < s.H; ++h)
          for (int64_t d = 0; d < s.D; ++d)
            dense[((b * T_ + t) * s.H + h) * s.D + d] = static_cast<double>(at(o, b, t, h, d));
    return dense;
  }
  std::vector<double> lse_host() const {
    const T* p = lse.view().as<T>();
    return std::vector<double>(p, p + lse.numel());
  }
  // Every element of buffer `b` outside [part*C, part*C + C) of each packed row is still NaN.
  bool untouched_outside(const Buffer& b, std::initializer_list<int> parts) const {
    const int64_t C = s.H * s.D;
    const T* p = b.view().as<T>();
    for (int64_t i = 0; i < b.numel(); ++i) {
      const int part = static_cast<int>((i % (3 * C)) / C);
      const bool inside = std::find(parts.begin(), parts.end(), part) != parts.end();
      if (!inside && !std::isnan(static_cast<double>(p[i]))) return false;
    }
    return true;
  }
};

template <class T>
void check_attention(const AttnShape& s, std::mt19937_64& rng, int threads) {
  SCOPED_TRACE(describe(s) + " threads=" + std::to_string(threads));
  auto be = make_cpu_backend(threads);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  auto rnd = [&](int64_t n) {
    std::vector<double> v(n);
    for (auto& x : v) x = static_cast<double>(static_cast<T>(dist(rng)));
    return v;
  };
  const int64_t nq = s.B * s.Tq * s.H * s.D, nk = s.B * s.Tk * s.H * s.D;
  // Scores of size ~3 make the softmax far from uniform, so masking and scaling errors show.
  auto q = rnd(nq), k = rnd(nk), v = rnd(nk), dout = rnd(nq);
  for (auto& x : q) x = static_cast<double>(static_cast<T>(x * 2.5));
  AttnRun<T> run(be.get(), s);
  run.scatter(run.args.q, s.Tq, q);
  run.scatter(run.args.k, s.Tk, k);
  run.scatter(run.args.v, s.Tk, v);
  run.scatter(run.args.dout, s.Tq, dout);
  AttnRun<T>::fill(run.out, kNaN);
  AttnRun<T>::fill(run.lse, kNaN);
  AttnRun<T>::fill(run.dqkv_q, kNaN);
  AttnRun<T>::fill(run.dqkv_kv, kNaN);
  be->attention_forward(run.args);
  const auto ref = attention_reference(s, run.args.scale, q, k, v, dout);
  expect_close(run.gather(run.args.out, s.Tq), ref.out, kTol<T>, "out");
  expect_close(run.lse_host(), ref.lse, kTol<T>, "lse");
  be->attention_backward(run.args);
  // With a single visible key dq and dk are exactly zero, so the scale has a floor of the
  // inputs' order of magnitude.
  const double floor = 1e-2;
  expect_close(run.gather(run.args.dq, s.Tq), ref.dq, kTol<T>, "dq", floor);
  expect_close(run.gather(run.args.dk, s.Tk), ref.dk, kTol<T>, "dk", floor);
  expect_close(run.gather(run.args.dv, s.Tk), ref.dv, kTol<T>, "dv", floor);
  EXPECT_TRUE(run.untouched_outside(run.dqkv_q, {0})) << "backward wrote outside dq";
  EXPECT_TRUE(run.untouched_outside(run.dqkv_kv, {1, 2})) << "backward wrote outside dk/dv";
}

std::vector<AttnShape> attention_shapes() {
  std::vector<AttnShape> shapes;
  for (int64_t D : {8, 16, 64})
    for (bool causal : {true, false}) {
      shapes.push_back({2, 3, D, 24, 96, 40, causal});  // a segment in the middle, Tk > q_offset+Tq
      shapes.push_back({2, 3, D, 97, 97, 0, causal});   // not a multiple of the block
      shapes.push_back({2, 3, D, 130, 130, 0, causal});   // three blocks, last one of 2 rows
      shapes.push_back({2, 3, D, 70, 200, 130, causal});  // the last segment of a sequence
    }
  shapes.push_back({1, 2, 32, 1, 1, 0, true});  // a single query and key
  return shapes;
}

TYPED_TEST(CpuKernels, AttentionMatchesNaiveReference) {
  for (const auto& s : attention_shapes()) check_attention<TypeParam>(s, this->rng, 2);
  check_attention<TypeParam>({2, 3, 16, 97, 150, 53, true}, this->rng, 1);
}

TYPED_TEST(CpuKernels, AttentionIsDeterministicAcrossThreadCounts) {
  using T = TypeParam;
  const AttnShape s{2, 3, 16, 130, 130, 0, true};
  std::vector<std::vector<double>> results;
  for (int threads : {1, 2}) {
    auto be = make_cpu_backend(threads);
    AttnRun<T> run(be.get(), s);
    std::mt19937_64 rng(99);
    std::uniform_real_distribution<double> dist(-1.0, 1.0);
    for (Buffer* b : {&run.qkv_q, &run.qkv_kv, &run.dout})
      for (int64_t i = 0; i < b->numel(); ++i) b->view().template as<T>()[i] = dist(rng);
    be->attention_forward(run.args);
    be->attention_backward(run.args);
    std::vector<double> all = run.gather(run.args.out, s.Tq);
    for (const auto& part : {run.gather(run.args.dq, s.Tq), run.gather(run.args.dk, s.Tk),
                             run.gather(run.args.dv, s.Tk), run.lse_host()})
      all.insert(all.end(), part.begin(), part.end());
    results.push_back(all);
  }
  EXPECT_EQ(results[0], results[1]);
}

// The split lss uses (--split-causal): causal attention of Tq queries at offset o over o + Tq keys
// equals the merge (attention_merge) of a non-causal call on the first o keys and a square causal
// call on the last Tq; backward of both parts, each given the merged out and lse, gives the full
// call's dk/dv on their keys and, summed, its dq. fp64, to 1e-12.
TEST(CpuKernelsFp64, SplitCausalAttentionMergesToTheFullCall) {
  auto be = make_cpu_backend(2);
  const AttnShape s{2, 2, 8, 11, 23, 12, true};
  const int64_t C = s.H * s.D, off = s.q_offset;
  AttnRun<double> full(be.get(), s);
  std::mt19937_64 rng(17);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  for (Buffer* b : {&full.qkv_q, &full.qkv_kv, &full.dout})
    for (int64_t i = 0; i < b->numel(); ++i) b->view().as<double>()[i] = dist(rng);
  be->attention_forward(full.args);
  be->attention_backward(full.args);

  // The square causal part writes out/lse; the part before goes to buffers of its own.
  Buffer out = be->alloc(DType::f64, s.Tq * s.B * C), lse = be->alloc(DType::f64, s.B * s.H * s.Tq);
  Buffer part = be->alloc(DType::f64, s.Tq * s.B * C), part_lse = be->alloc(DType::f64, s.B * s.H * s.Tq);
  AttentionArgs diag = full.args, before = full.args;
  const int64_t shift = off * full.args.k.row_stride;  // key row `off` of the packed buffer
  diag.k.ptr = static_cast<double*>(diag.k.ptr) + shift;
  diag.v.ptr = static_cast<double*>(diag.v.ptr) + shift;
  diag.Tk = s.Tk - off;
  diag.q_offset = 0;
  diag.out = {out.ptr(), C, s.B * C};
  diag.lse = lse.ptr();
  before.Tk = off;
  before.causal = false;
  before.out = {part.ptr(), C, s.B * C};
  before.lse = part_lse.ptr();
  be->attention_forward(diag);
  be->attention_forward(before);
  be->attention_merge(attention_merge_args(diag, before));
  auto max_diff = [](const std::vector<double>& a, const std::vector<double>& b) {
    double e = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      const double d = std::abs(a[i] - b[i]);
      if (std::isnan(d)) return d;  // std::max would skip it; NaN fails the EXPECT_LT below
      e = std::max(e, d);
    }
    return e;
  };
  EXPECT_LT(max_diff(full.gather(diag.out, s.Tq), full.gather(full.args.out, s.Tq)), 1e-12);
  const double* l = lse.view().as<double>();
  EXPECT_LT(max_diff(std::vector<double>(l, l + lse.numel()), full.lse_host()), 1e-12);

  // Backward: both parts with the merged out and lse; dk/dv into their own key rows.
  Buffer dq_part = be->alloc(DType::f64, s.Tq * s.B * C), dkv = be->alloc(DType::f64, s.Tk * s.B * 3 * C);
  before.out = diag.out;
  before.lse = diag.lse;
  before.dq = {dq_part.ptr(), C, s.B * C};
  before.dk = {static_cast<double*>(dkv.ptr()) + C, 3 * C, s.B * 3 * C};
  before.dv = {static_cast<double*>(dkv.ptr()) + 2 * C, 3 * C, s.B * 3 * C};
  AttentionArgs diag_b = diag;
  Buffer dq_diag = be->alloc(DType::f64, s.Tq * s.B * C);
  diag_b.dq = {dq_diag.ptr(), C, s.B * C};
  diag_b.dk = {static_cast<double*>(before.dk.ptr) + shift, 3 * C, s.B * 3 * C};
  diag_b.dv = {static_cast<double*>(before.dv.ptr) + shift, 3 * C, s.B * 3 * C};
  be->attention_backward(before);
  be->attention_backward(diag_b);
  be->add(dq_part.view(), dq_part.view(), dq_diag.view());
  EXPECT_LT(max_diff(full.gather(before.dq, s.Tq), full.gather(full.args.dq, s.Tq)), 1e-12);
  EXPECT_LT(max_diff(full.gather(before.dk, s.Tk), full.gather(full.args.dk, s.Tk)), 1e-12);
  EXPECT_LT(max_diff(full.gather(before.dv, s.Tk), full.gather(full.args.dv, s.Tk)), 1e-12);
}

// L = sum(out * R); dL/dq, dk, dv by central differences through the forward pass.
TEST(CpuKernelsFp64, AttentionBackwardMatchesFiniteDifferences) {
  auto be = make_cpu_backend(2);
  for (const AttnShape& s : {AttnShape{2, 2, 4, 5, 9, 3, true}, AttnShape{2, 2, 4, 5, 9, 3, false},
                             AttnShape{1, 2, 3, 7, 7, 0, true}}) {
    SCOPED_TRACE(describe(s));
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<double> dist(-1.5, 1.5);
    AttnRun<double> run(be.get(), s);
    for (Buffer* b : {&run.qkv_q, &run.qkv_kv, &run.dout})
      for (int64_t i = 0; i < b->numel(); ++i) b->view().as<double>()[i] = dist(rng);
    auto loss = [&] {
      be->attention_forward(run.args);
      double L = 0.0;
      for (int64_t b = 0; b < s.B; ++b)
        for (int64_t t = 0; t < s.Tq; ++t)
          for (int64_t h = 0; h < s.H; ++h)
            for (int64_t d = 0; d < s.D; ++d)
              L += run.at(run.args.out, b, t, h, d) * run.at(run.args.dout, b, t, h, d);
      return L;
    };
    auto fd = [&](const AttnOperand& o, int64_t T_) {
      std::vector<double> g(s.B * T_ * s.H * s.D);
      for (int64_t b = 0; b < s.B; ++b)
        for (int64_t t = 0; t < T_; ++t)
          for (int64_t h = 0; h < s.H; ++h)
            for (int64_t d = 0; d < s.D; ++d) {
              double& x = run.at(o, b, t, h, d);
              const double keep = x;
              x = keep + kFdStep;
              const double lp = loss();
              x = keep - kFdStep;
              const double lm = loss();
              x = keep;
              g[((b * T_ + t) * s.H + h) * s.D + d] = (lp - lm) / (2 * kFdStep);
            }
      return g;
    };
    const auto gq = fd(run.args.q, s.Tq), gk = fd(run.args.k, s.Tk), gv = fd(run.args.v, s.Tk);
    be->attention_forward(run.args);
    be->attention_backward(run.args);
    expect_close(run.gather(run.args.dq, s.Tq), gq, kFdTol, "dq vs finite differences");
    expect_close(run.gather(run.args.dk, s.Tk), gk, kFdTol, "dk vs finite differences");
    expect_close(run.gather(run.args.dv, s.Tk), gv, kFdTol, "dv vs finite differences");
  }
}

// The device monitor's summary (timing.device_state): medians (the middle two averaged for an
// even count), the lowest clock, the shares of flagged samples, and nothing made up from no data.
TEST(DeviceSamples, SummaryOfARegion) {
  const std::vector<DeviceSample> samples = {{1980, 300, false, false},
                                             {1700, 690, true, false},
                                             {1650, 700, true, true},
                                             {1755, 695, true, false}};
  const DeviceState st = summarize_device_samples(samples, 10.0, 1980, 700);
  EXPECT_EQ(st.samples, 4);
  EXPECT_DOUBLE_EQ(st.period_ms, 10.0);
  EXPECT_DOUBLE_EQ(st.sm_clock_mhz_median, 0.5 * (1700 + 1755));
  EXPECT_DOUBLE_EQ(st.sm_clock_mhz_min, 1650);
  EXPECT_DOUBLE_EQ(st.sm_clock_mhz_max, 1980);
  EXPECT_DOUBLE_EQ(st.power_w_median, 0.5 * (690 + 695));
  EXPECT_DOUBLE_EQ(st.power_limit_w, 700);
  EXPECT_DOUBLE_EQ(st.power_capped_fraction, 0.75);
  EXPECT_DOUBLE_EQ(st.slowdown_fraction, 0.25);
  const DeviceState odd = summarize_device_samples({samples[0], samples[1], samples[2]}, 5.0, 1980, 700);
  EXPECT_DOUBLE_EQ(odd.sm_clock_mhz_median, 1700);
  EXPECT_DOUBLE_EQ(odd.power_w_median, 690);
  const DeviceState none = summarize_device_samples({}, 10.0, 1980, 700);
  EXPECT_EQ(none.samples, 0);
  EXPECT_DOUBLE_EQ(none.sm_clock_mhz_median, 0.0);
  EXPECT_DOUBLE_EQ(none.power_capped_fraction, 0.0);
}

// The region's energy from a counter that updates only every 100 ms (as the driver's does, every
// few tens of ms), polled every 1 ms through a 1.05 s region at a steady 700 W: the plain
// difference of the readings at the region's ends is off by half an update period over the
// region, the power between the first and last update seen is exact to the polling period.
TEST(DeviceSamples, EnergyFromCounterUpdates) {
  const double watts = 700, update_s = 0.1, poll_s = 0.001;
  for (const double region_s : {1.05, 0.35}) {
    for (const double phase : {0.0, 0.03, 0.07, 0.099}) {
      // The counter as the driver keeps it: the energy up to its last update, the first update at
      // `phase` after the region starts; an arbitrary count (mJ) from before the region.
      const auto counter_mj = [&](double t) {
        const double last_update = t < phase ? phase - update_s : phase + std::floor((t - phase) / update_s) * update_s;
        return 5.0e9 + 1e3 * watts * last_update;
      };
      std::vector<EnergyReading> readings;
      for (int i = 0; i * poll_s <= region_s + 1e-12; ++i) {
        const double t = i * poll_s;
        if (readings.empty() || readings.back().mj != counter_mj(t)) readings.push_back({t, counter_mj(t)});
      }
      const double plain_j = (readings.back().mj - readings.front().mj) * 1e-3;
      DeviceState st;
      region_energy(readings, region_s, st);
      const std::string at = " region " + std::to_string(region_s) + " s, phase " + std::to_string(phase);
      // Updates at phase + k·0.1 s inside the region; one at 0 is the start's own reading.
      const int64_t inside = static_cast<int64_t>(std::floor((region_s - phase) / update_s + 1e-9)) + (phase > 0 ? 1 : 0);
      EXPECT_EQ(st.energy_updates, inside) << at;
      EXPECT_DOUBLE_EQ(st.region_s, region_s);
      // Each update is seen up to one poll late (1.5 polls: the clock's rounding).
      EXPECT_NEAR(st.energy_window_s, update_s * (st.energy_updates - 1), 1.5 * poll_s) << at;
      if (region_s < kMinEnergyWindowS) {
        // 2-3 update periods: too short a window to take an energy over (kMinEnergyWindowS).
        EXPECT_LT(st.energy_j, 0.0) << at;
        continue;
      }
      const double rel = 1.5 * poll_s / st.energy_window_s;
      EXPECT_NEAR(st.mean_power_w, watts, watts * rel) << at;
      EXPECT_NEAR(st.energy_j, watts * region_s, watts * region_s * rel) << at;
      // What the readings at the ends alone would give: 4.8% off here.
      EXPECT_GT(std::abs(plain_j - watts * region_s), 0.04 * watts * region_s) << at;
    }
  }
  // One update in the region: no energy, and the count says why; no readings: no counter.
  DeviceState one;
  region_energy({{0.0, 100.0}, {0.05, 100.0}, {0.08, 170.0}, {0.2, 170.0}}, 0.2, one);
  EXPECT_EQ(one.energy_updates, 1);
  EXPECT_LT(one.energy_j, 0.0);
  EXPECT_DOUBLE_EQ(one.region_s, 0.2);
  DeviceState none;
  region_energy({}, 0.2, none);
  EXPECT_EQ(none.energy_updates, -1);
  EXPECT_LT(none.energy_j, 0.0);
  // Two updates a window of kMinEnergyWindowS apart: the power between them.
  DeviceState two;
  region_energy({{0.0, 1000.0}, {0.01, 1700.0}, {0.81, 561700.0}}, 0.9, two);
  EXPECT_EQ(two.energy_updates, 2);
  EXPECT_NEAR(two.mean_power_w, 700.0, 1e-9);
  EXPECT_NEAR(two.energy_j, 630.0, 1e-9);
}

// A counter whose updates show the energy up to a moment that lags them by a varying amount (0 or
// 50 ms, alternating), as the H200's did (updates 48-125 ms apart; one 48 ms window read 1680 W
// on a card capped at 700): over one update period the power between the first and last update
// is far off and is not taken; over kMinEnergyWindowS it is within the lag over the window.
TEST(DeviceSamples, EnergyOverAJitteringCounter) {
  const double watts = 700, update_s = 0.1, lag_s = 0.05, poll_s = 0.001;
  for (const double region_s : {0.15, 0.6, 0.95, 2.95}) {
    // Update k is seen at 0.03 + k·0.1 s and shows the energy up to that moment less k's lag.
    const auto counter_mj = [&](double t) {
      if (t < 0.03) return 0.0;
      const int64_t k = static_cast<int64_t>(std::floor((t - 0.03) / update_s + 1e-9));
      const double upto = 0.03 + static_cast<double>(k) * update_s - (k % 2 == 1 ? lag_s : 0.0);
      return 1e3 * watts * upto;
    };
    std::vector<EnergyReading> readings;
    for (int i = 0; i * poll_s <= region_s + 1e-12; ++i) {
      const double t = i * poll_s;
      if (readings.empty() || readings.back().mj != counter_mj(t)) readings.push_back({t, counter_mj(t)});
    }
    DeviceState st;
    region_energy(readings, region_s, st);
    const std::string at = " region " + std::to_string(region_s) + " s";
    EXPECT_GE(st.energy_updates, 2) << at;
    if (st.energy_window_s < kMinEnergyWindowS) {
      EXPECT_LT(st.energy_j, 0.0) << at;
      continue;
    }
    ASSERT_GE(st.energy_j, 0.0) << at;
    EXPECT_NEAR(st.mean_power_w, watts, watts * (lag_s + 1.5 * poll_s) / st.energy_window_s) << at;
  }
}

// The wgmma attention kernels' block order (kernels/cuda/block_order.h), index arithmetic only:
// every (block, head) exactly once, the head groups one after the other, within a group the heads
// fastest and the blocks in order (last to first with `reverse`).
TEST(BlockOrder, EveryBlockOnceGroupsInTurnHeadsFastest) {
  using cuda::flash_detail::block_of_cta_index;
  for (int H : {1, 2, 3, 16, 32})
    for (int n_blocks : {1, 5, 32, 128})
      for (int G = 1; G <= H; ++G)
        for (bool reverse : {false, true}) {
          SCOPED_TRACE("H=" + std::to_string(H) + " blocks=" + std::to_string(n_blocks) +
                       " group=" + std::to_string(G) + (reverse ? " reversed" : ""));
          std::vector<int> seen(static_cast<size_t>(n_blocks) * H, 0);
          int prev_group = 0, prev_step = 0, prev_head = -1;
          for (int cta = 0; cta < n_blocks * H; ++cta) {
            const auto c = block_of_cta_index(cta, n_blocks, H, G, reverse);
            ASSERT_GE(c.block, 0);
            ASSERT_LT(c.block, n_blocks);
            ASSERT_GE(c.head, 0);
            ASSERT_LT(c.head, H);
            ++seen[static_cast<size_t>(c.head) * n_blocks + c.block];
            const int group = c.head / G, step = reverse ? n_blocks - 1 - c.block : c.block;
            ASSERT_GE(group, prev_group) << "cta " << cta << ": an earlier head group";
            if (group == prev_group && cta > 0) {
              // Heads fastest: the step stays while the head rises, and rises by one per round.
              if (step == prev_step)
                ASSERT_EQ(c.head, prev_head + 1) << "cta " << cta;
              else
                ASSERT_EQ(step, prev_step + 1) << "cta " << cta;
            }
            prev_group = group;
            prev_step = step;
            prev_head = c.head;
          }
          for (size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], 1) << "pair " << i;
        }
}

// With all heads in one group the order is the heads-fastest one of the mma.sync kernels.
TEST(BlockOrder, OneGroupIsHeadsFastest) {
  using cuda::flash_detail::block_of_cta_index;
  const int H = 16, n_blocks = 32;
  for (bool reverse : {false, true})
    for (int cta = 0; cta < n_blocks * H; ++cta) {
      const auto c = block_of_cta_index(cta, n_blocks, H, H, reverse);
      const int block = cta / H;
      EXPECT_EQ(c.head, cta % H);
      EXPECT_EQ(c.block, reverse ? n_blocks - 1 - block : block);
    }
}

TEST(BlockOrder, HeadGroupSize) {
  using cuda::flash_detail::head_group_size;
  // The measured H200 cases (132 multiprocessors, H = 16): causal 4K (32 blocks) four heads,
  // causal 16K and 64K one, without masking always one.
  EXPECT_EQ(head_group_size(32, 16, true, 132), 4);
  EXPECT_EQ(head_group_size(128, 16, true, 132), 1);
  EXPECT_EQ(head_group_size(512, 16, true, 132), 1);
  EXPECT_EQ(head_group_size(32, 16, false, 132), 1);
  EXPECT_EQ(head_group_size(2, 16, true, 132), 16);  // no group of fewer heads has 66 CTAs
  // In general: causal, the smallest divisor of H with 2 x blocks x heads >= multiprocessors,
  // else all of H.
  for (int H : {1, 2, 3, 12, 16, 40})
    for (int64_t n_blocks : {1, 3, 8, 33, 64, 1000})
      for (int sms : {1, 78, 108, 132}) {
        const int g = head_group_size(n_blocks, H, true, sms);
        ASSERT_GE(g, 1);
        ASSERT_LE(g, H);
        ASSERT_EQ(H % g, 0);
        if (g < H) ASSERT_GE(2 * n_blocks * g, sms);
        for (int d = 1; d < g; ++d)
          if (H % d == 0) ASSERT_LT(2 * n_blocks * d, sms) << "H=" << H << " d=" << d;
      }
}

}  // namespace
}  // namespace lss
