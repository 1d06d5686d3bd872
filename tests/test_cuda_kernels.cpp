// Tests of every CUDA backend operation but attention (tested with its kernels) against the CPU
// backend in fp64 on the same inputs: random values rounded to the CUDA dtype first, so that the
// reference sees exactly what the kernels see. Outputs that an operation overwrites are poisoned
// with NaN first; accumulated ones start from random values.
//
// Bounds, normwise as in test_cpu_kernels.cpp (|got - ref| <= tol * max|ref| for every element):
// - fp32 outputs of fp32 or bf16 inputs: 1e-5 (fp32 rounding is ~6e-8 per operation; the
//   reductions here are at most a few thousand terms, summed in blocks);
// - bf16 outputs: 1e-2 (one bf16 rounding is up to 2^-9 = 2e-3 relative, plus the rounding of
//   bf16 inputs accumulated into them);
// - GEMM with bf16 A and B into an fp32 C: 1e-4 (the products are exact in fp32, but tensor-core
//   accumulation does not round like sequential fp32 additions).
// The test exits 77 (CTest's skip code) without a CUDA device.
#include <gtest/gtest.h>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/backend.h"
#include "core/check.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"

namespace lss {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kF32Tol = 1e-5;
constexpr double kBf16Tol = 1e-2;
constexpr double kMixedGemmTol = 1e-4;

double tol_for(DType output) { return output == DType::bf16 ? kBf16Tol : kF32Tol; }

void expect_close(const std::vector<double>& got, const std::vector<double>& ref, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double scale = 1e-300;
  for (double r : ref) scale = std::max(scale, std::abs(r));
  int failures = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::abs(got[i] - ref[i]);
    if (!(err <= tol * scale)) {  // also catches NaN
      if (++failures <= 5)
        ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", expected " << ref[i]
                      << " (error " << err / scale << " of max|ref| " << scale << ", bound " << tol
                      << ")";
    }
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << ref.size() << " elements off";
}

// Round to nearest even bf16 on the host, for values exactly representable in fp32.
double round_bf16(double x) {
  float f = static_cast<float>(x);
  uint32_t u = 0;
  std::memcpy(&u, &f, sizeof u);
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

class CudaTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> gpu = make_cuda_backend(CudaBackendOptions{});
  std::unique_ptr<Backend> cpu = make_cpu_backend(2);
  std::mt19937_64 rng{20240611};

  // n values in [lo, hi), rounded to dtype t (through the GPU's conversion).
  std::vector<double> random(int64_t n, DType t, double lo = -1.0, double hi = 1.0) {
    std::uniform_real_distribution<double> dist(lo, hi);
    std::vector<double> v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<double>(static_cast<float>(dist(rng)));
    if (t == DType::bf16) v = download(upload(v, t));
    return v;
  }
  std::vector<int32_t> random_tokens(int64_t n, int32_t V) {
    std::uniform_int_distribution<int32_t> dist(0, V - 1);
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = dist(rng);
    return v;
  }
  Buffer upload(const std::vector<double>& host, DType t) {
    Buffer b = gpu->alloc(t, static_cast<int64_t>(host.size()));
    gpu->copy_from_host(b.view(), host.data(), DType::f64);
    return b;
  }
  Buffer upload_tokens(const std::vector<int32_t>& host) {
    Buffer b = gpu->alloc(DType::i32, static_cast<int64_t>(host.size()));
    gpu->copy_from_host(b.view(), host.data(), DType::i32);
    return b;
  }
  Buffer poisoned(int64_t n, DType t) {
    return upload(std::vector<double>(static_cast<size_t>(n), kNaN), t);
  }
  std::vector<double> download(const View& v) {
    std::vector<double> host(static_cast<size_t>(v.numel));
    gpu->copy_to_host(host.data(), DType::f64, v);
    return host;
  }
  std::vector<double> download(const Buffer& b) { return download(b.view()); }
  Buffer ref_upload(const std::vector<double>& host) {
    Buffer b = cpu->alloc(DType::f64, static_cast<int64_t>(host.size()));
    cpu->copy_from_host(b.view(), host.data(), DType::f64);
    return b;
  }
  Buffer ref_tokens(const std::vector<int32_t>& host) {
    Buffer b = cpu->alloc(DType::i32, static_cast<int64_t>(host.size()));
    cpu->copy_from_host(b.view(), host.data(), DType::i32);
    return b;
  }
  std::vector<double> ref_download(const Buffer& b) {
    std::vector<double> host(static_cast<size_t>(b.numel()));
    cpu->copy_to_host(host.data(), DType::f64, b.view());
    return host;
  }
};

// Operations run for each compute dtype.
class CudaOps : public CudaTest, public ::testing::WithParamInterface<DType> {
 protected:
  DType dt() const { return GetParam(); }
  double tol() const { return tol_for(dt()); }
};

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaOps, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// ---------------------------------------------------------------------------------------------
// backend, memory and copies

TEST_F(CudaTest, NameDeviceAndOptions) {
  EXPECT_STREQ(gpu->name(), "cuda");
  const std::string dev = gpu->device_name();
  EXPECT_NE(dev.find("(sm_"), std::string::npos) << dev;
  EXPECT_NE(dev.find("CUDA runtime"), std::string::npos) << dev;
  EXPECT_GT(cuda_device_count(), 0);
  EXPECT_NE(cuda_stream_of(*gpu), nullptr);
  EXPECT_THROW(make_cuda_backend(CudaBackendOptions{0, "fastest"}), UsageError);
  EXPECT_THROW(make_cuda_backend(CudaBackendOptions{cuda_device_count(), "auto"}), UsageError);
}

TEST_F(CudaTest, MarkersTimeDeviceWork) {
  Buffer x = upload(random(int64_t{1} << 22, DType::f32), DType::f32);
  const Backend::Marker a = gpu->mark();
  for (int i = 0; i < 10; ++i) gpu->gelu_forward(x.view(), x.view());
  const Backend::Marker b = gpu->mark();
  const double s = gpu->seconds_between(a, b);
  EXPECT_GT(s, 0.0);
  EXPECT_LT(s, 10.0);
  EXPECT_EQ(gpu->seconds_between(b, b), 0.0);
}

TEST_F(CudaTest, CachingAllocatorAndAccounting) {
  void* first = nullptr;
  {
    Buffer a = gpu->alloc(DType::f32, 1000);
    Buffer b = gpu->alloc_zeroed(DType::bf16, 3);
    first = a.ptr();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.ptr()) % 256, 0u);
    EXPECT_EQ(gpu->memory_stats().current_bytes, 4000 + 6);
    EXPECT_EQ(download(b), (std::vector<double>{0.0, 0.0, 0.0}));
  }
  EXPECT_EQ(gpu->memory_stats().current_bytes, 0);
  EXPECT_EQ(gpu->memory_stats().peak_bytes, 4006);
  // A freed block is handed out again for a request of its size class.
  Buffer c = gpu->alloc(DType::i32, 1000);
  EXPECT_EQ(c.ptr(), first);
  Buffer big = gpu->alloc(DType::f32, int64_t{3} << 20);  // 12 MiB
  const MemoryStats s = gpu->memory_stats();
  EXPECT_GE(s.device_peak_bytes, int64_t{12} << 20);
  gpu->reset_peak();
  EXPECT_EQ(gpu->memory_stats().peak_bytes, gpu->memory_stats().current_bytes);
}

TEST_F(CudaTest, OutOfMemoryIsReportedAndRecoverable) {
  try {
    Buffer huge = gpu->alloc(DType::f32, int64_t{1} << 42);  // 16 TiB
    ADD_FAILURE() << "no exception";
  } catch (const OutOfMemoryError& e) {
    EXPECT_NE(std::string(e.what()).find("out of device memory: asked"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(gpu->memory_stats().current_bytes, 0);
  // The failed cudaMalloc left no pending error behind: later operations still work.
  Buffer x = upload({1.0, -2.0, 3.0}, DType::f32);
  gpu->gelu_forward(x.view(), x.view());
  gpu->synchronize();
  EXPECT_EQ(download(x).size(), 3u);
}

TEST_F(CudaTest, HostCopiesConvert) {
  const std::vector<double> src = {1.5, -2.25, 3.0, 1e-3, 1.00390625, -7.0e5};
  std::vector<double> as_float(src.size()), as_bf16(src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    as_float[i] = static_cast<float>(src[i]);
    as_bf16[i] = round_bf16(as_float[i]);
  }
  // host f64 -> device f32 / bf16 -> host f64
  EXPECT_EQ(download(upload(src, DType::f32)), as_float);
  EXPECT_EQ(download(upload(as_float, DType::bf16)), as_bf16);

  // host f32 -> device bf16 -> host f32
  std::vector<float> srcf(as_float.begin(), as_float.end());
  Buffer b = gpu->alloc(DType::bf16, static_cast<int64_t>(srcf.size()));
  gpu->copy_from_host(b.view(), srcf.data(), DType::f32);
  std::vector<float> backf(srcf.size());
  gpu->copy_to_host(backf.data(), DType::f32, b.view());
  for (size_t i = 0; i < srcf.size(); ++i) EXPECT_EQ(backf[i], static_cast<float>(as_bf16[i]));

  // tokens: host i32 -> device i32 -> host f32
  const std::vector<int32_t> tok = {7, 0, 42};
  Buffer t = upload_tokens(tok);
  std::vector<float> tf(3);
  gpu->copy_to_host(tf.data(), DType::f32, t.view());
  EXPECT_EQ(tf, (std::vector<float>{7.f, 0.f, 42.f}));

  // fp64 device buffers hold data (the loss sum is reduced in one) though nothing computes in fp64.
  const double loss = 3.0000000000000004;
  Buffer l = gpu->alloc(DType::f64, 1);
  gpu->copy_from_host(l.view(), &loss, DType::f64);
  double back = 0;
  gpu->copy_to_host(&back, DType::f64, l.view());
  EXPECT_EQ(back, loss);

  // device copies convert: f32 -> bf16 -> f32, and f32 -> f32
  Buffer f = upload(as_float, DType::f32);
  Buffer h = gpu->alloc(DType::bf16, f.numel());
  Buffer f2 = poisoned(f.numel(), DType::f32);
  gpu->copy(h.view(), f.view());
  gpu->copy(f2.view(), h.view());
  EXPECT_EQ(download(f2), as_bf16);
  gpu->copy(f2.view(), f.view());
  EXPECT_EQ(download(f2), as_float);
  gpu->fill_zero(f2.view());
  EXPECT_EQ(download(f2), std::vector<double>(src.size(), 0.0));
}

TEST_F(CudaTest, LargeCopiesConvert) {
  // Long enough for the vectorised paths and several grid-stride iterations; an odd length and
  // an offset of one element for the scalar ones.
  const int64_t n = (int64_t{1} << 20) + 3;
  const auto v = random(n, DType::f32, -100.0, 100.0);
  std::vector<double> rounded(v.size());
  for (size_t i = 0; i < v.size(); ++i) rounded[i] = round_bf16(v[i]);
  Buffer f = upload(v, DType::f32);
  Buffer h = gpu->alloc(DType::bf16, n + 1);
  gpu->copy(h.slice(0, n), f.view());
  EXPECT_EQ(download(h.slice(0, n)), rounded);
  gpu->copy(h.slice(1, n), f.view());
  EXPECT_EQ(download(h.slice(1, n)), rounded);
}

TEST_F(CudaTest, Fp64ComputeIsRejected) {
  Buffer x = gpu->alloc(DType::f64, 16);
  Buffer y = gpu->alloc(DType::f64, 16);
  EXPECT_THROW(gpu->gelu_forward(x.view(), x.view()), UsageError);
  EXPECT_THROW(gpu->axpy(y.view(), x.view(), 1.0), UsageError);
  GemmArgs g;
  g.dtype = g.c_dtype = DType::f64;
  g.m = g.n = g.k = 4;
  g.a = g.b = x.ptr();
  g.c = y.ptr();
  g.lda = g.ldb = g.ldc = 4;
  EXPECT_THROW(gpu->gemm(g), UsageError);
  AttentionArgs a;
  a.dtype = DType::f64;
  EXPECT_THROW(gpu->attention_forward(a), UsageError);
  EXPECT_THROW(gpu->attention_backward(a), UsageError);
  try {
    gpu->add(x.view(), x.view(), y.view());
    ADD_FAILURE() << "no exception";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("fp64 is not supported; use --dtype fp32 or bf16"),
              std::string::npos)
        << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// dense algebra

struct GemmCase {
  int64_t m, n, k;
  bool ta, tb, bias;
  double alpha, beta;
  int64_t pad;     // extra leading-dimension elements
  int64_t offset;  // elements before A's first (misaligned views)
};

class GemmTest : public CudaTest {
 protected:
  void check(const GemmCase& c, DType dtype, DType c_dtype, double tol) {
    const int64_t a_rows = c.ta ? c.k : c.m, a_cols = c.ta ? c.m : c.k;
    const int64_t b_rows = c.tb ? c.n : c.k, b_cols = c.tb ? c.k : c.n;
    const int64_t lda = a_cols + c.pad, ldb = b_cols + c.pad, ldc = c.n + c.pad;
    const auto A = random(c.offset + a_rows * lda, dtype);
    const auto Bm = random(b_rows * ldb, dtype);
    auto C0 = random(c.m * ldc, c_dtype);
    if (c.beta == 0.0) std::fill(C0.begin(), C0.end(), kNaN);  // overwritten, never read
    const auto bias = random(c.n, c_dtype);

    Buffer gA = upload(A, dtype), gB = upload(Bm, dtype), gC = upload(C0, c_dtype);
    Buffer gbias = upload(bias, c_dtype);
    GemmArgs g;
    g.dtype = dtype;
    g.c_dtype = c_dtype;
    g.trans_a = c.ta;
    g.trans_b = c.tb;
    g.m = c.m;
    g.n = c.n;
    g.k = c.k;
    g.a = gA.slice(c.offset, a_rows * lda).ptr;
    g.lda = lda;
    g.b = gB.ptr();
    g.ldb = ldb;
    g.c = gC.ptr();
    g.ldc = ldc;
    g.alpha = c.alpha;
    g.beta = c.beta;
    g.bias = c.bias ? gbias.ptr() : nullptr;
    gpu->gemm(g);
    const auto got = download(gC);

    auto C0ref = C0;
    if (c.beta == 0.0) std::fill(C0ref.begin(), C0ref.end(), 0.0);
    Buffer rA = ref_upload(A), rB = ref_upload(Bm), rC = ref_upload(C0ref),
           rbias = ref_upload(bias);
    GemmArgs r = g;
    r.dtype = r.c_dtype = DType::f64;
    r.a = rA.slice(c.offset, a_rows * lda).ptr;
    r.b = rB.ptr();
    r.c = rC.ptr();
    r.bias = c.bias ? rbias.ptr() : nullptr;
    cpu->gemm(r);
    const auto ref = ref_download(rC);

    std::vector<double> got_mn, ref_mn;
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < ldc; ++j) {
        const double v = got[static_cast<size_t>(i * ldc + j)];
        if (j < c.n) {
          got_mn.push_back(v);
          ref_mn.push_back(ref[static_cast<size_t>(i * ldc + j)]);
        } else if (c.beta == 0.0) {
          EXPECT_TRUE(std::isnan(v)) << "padding C[" << i << "][" << j << "] was written";
        } else {
          EXPECT_EQ(v, C0[static_cast<size_t>(i * ldc + j)])
              << "padding C[" << i << "][" << j << "]";
        }
      }
    expect_close(got_mn, ref_mn, tol,
                 std::string("gemm ") + dtype_name(dtype) + "->" + dtype_name(c_dtype) +
                     " m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) +
                     " k=" + std::to_string(c.k) + " ta=" + std::to_string(c.ta) +
                     " tb=" + std::to_string(c.tb) + " bias=" + std::to_string(c.bias) +
                     " beta=" + std::to_string(c.beta) + " offset=" + std::to_string(c.offset));
  }

  void check_all(DType dtype, DType c_dtype, double tol) {
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (bool bias : {false, true})
          for (double beta : {0.0, 1.0}) {
            check({37, 29, 45, ta, tb, bias, 0.75, beta, 3, 0}, dtype, c_dtype, tol);
            check({64, 96, 128, ta, tb, bias, 1.0, beta, 0, 0}, dtype, c_dtype, tol);
          }
    // Larger: tensor-core kernels, split-K with the workspace.
    check({256, 384, 1024, false, true, true, 1.0, 0.0, 0, 0}, dtype, c_dtype, tol);
    check({384, 256, 1024, true, false, false, 1.0, 1.0, 0, 0}, dtype, c_dtype, tol);
    // Views at odd element offsets and odd leading dimensions.
    check({33, 40, 24, false, true, true, 1.0, 0.0, 1, 1}, dtype, c_dtype, tol);
    check({40, 33, 24, true, false, false, 1.0, 1.0, 1, 3}, dtype, c_dtype, tol);
    // k = 0: C = beta C (+ bias).
    check({5, 7, 0, false, false, true, 1.0, 0.0, 0, 0}, dtype, c_dtype, tol);
    check({5, 7, 0, false, false, true, 1.0, 1.0, 0, 0}, dtype, c_dtype, tol);
  }
};

TEST_F(GemmTest, Fp32) { check_all(DType::f32, DType::f32, kF32Tol); }
TEST_F(GemmTest, Bf16IntoBf16) { check_all(DType::bf16, DType::bf16, kBf16Tol); }
TEST_F(GemmTest, Bf16IntoFp32) { check_all(DType::bf16, DType::f32, kMixedGemmTol); }

// GEMMs planned for fewer SMs (Backend::reserve_sms: cuBLASLt's SM count target, bench_collectives'
// sm_reserve) compute the same products; a reserve outside [0, SMs) is refused.
TEST_F(GemmTest, PlannedForFewerSms) {
  gpu->reserve_sms(16);
  check_all(DType::bf16, DType::bf16, kBf16Tol);
  check({2048, 2048, 512, false, true, true, 1.0, 0.0, 0, 0}, DType::bf16, DType::bf16, kBf16Tol);  // more tiles than SMs
  gpu->reserve_sms(0);
  EXPECT_THROW(gpu->reserve_sms(-1), UsageError);
  EXPECT_THROW(gpu->reserve_sms(1 << 20), UsageError);
}

TEST_F(GemmTest, Fp32IntoBf16IsRejected) {
  Buffer x = gpu->alloc(DType::f32, 16);
  Buffer y = gpu->alloc(DType::bf16, 16);
  GemmArgs g;
  g.dtype = DType::f32;
  g.c_dtype = DType::bf16;
  g.m = g.n = g.k = 4;
  g.a = g.b = x.ptr();
  g.c = y.ptr();
  g.lda = g.ldb = g.ldc = 4;
  EXPECT_THROW(gpu->gemm(g), UsageError);
}

TEST_P(CudaOps, Axpy) {
  for (int64_t n : {int64_t{1}, int64_t{1003}, int64_t{1} << 16}) {
    const auto y = random(n, dt()), x = random(n, dt());
    Buffer gy = upload(y, dt()), gx = upload(x, dt());
    gpu->axpy(gy.view(), gx.view(), -0.375);
    Buffer ry = ref_upload(y), rx = ref_upload(x);
    cpu->axpy(ry.view(), rx.view(), -0.375);
    expect_close(download(gy), ref_download(ry), tol(), "axpy n=" + std::to_string(n));
  }
  // fp32 accumulation of a compute-dtype vector (bf16 into fp32 gradients).
  const int64_t n = 1001;
  const auto y = random(n, DType::f32), x = random(n, dt());
  Buffer gy = upload(y, DType::f32), gx = upload(x, dt());
  gpu->axpy(gy.view(), gx.view(), 2.5);
  Buffer ry = ref_upload(y), rx = ref_upload(x);
  cpu->axpy(ry.view(), rx.view(), 2.5);
  expect_close(download(gy), ref_download(ry), kF32Tol, "axpy into fp32");
}

TEST_P(CudaOps, AddWithAliasingAndOddOffsets) {
  const int64_t n = 4099;
  const auto a = random(n + 1, dt()), b = random(n + 1, dt());
  Buffer ra = ref_upload(a), rb = ref_upload(b), rout = ref_upload(std::vector<double>(n + 1));
  cpu->add(rout.view(), ra.view(), rb.view());
  const auto ref = ref_download(rout);
  {
    Buffer ga = upload(a, dt()), gb = upload(b, dt()), out = poisoned(n + 1, dt());
    gpu->add(out.view(), ga.view(), gb.view());
    expect_close(download(out), ref, tol(), "add");
    gpu->add(ga.view(), ga.view(), gb.view());  // out aliases a
    expect_close(download(ga), ref, tol(), "add in place");
  }
  {
    // Views starting one element in: no vector accesses.
    Buffer ga = upload(a, dt()), gb = upload(b, dt()), out = poisoned(n + 1, dt());
    gpu->add(out.slice(1, n), ga.slice(1, n), gb.slice(1, n));
    const auto got = download(out.slice(1, n));
    expect_close(got, std::vector<double>(ref.begin() + 1, ref.end()), tol(), "add at offset 1");
  }
}

// Two attention parts of the same queries merged by their log-sum-exp, in the model's strided
// layout (B = 2 sequences interleaved per row), with rows where one part or both saw no key
// (lse = -inf), against the CPU backend in fp64. D = 40 takes the warp-per-row kernel, D = 64 and 128
// the 16-byte vector one (a row's 8-32 threads within a warp, up to 4 rows to a warp).
TEST_P(CudaOps, AttentionMerge) {
  for (const int64_t D : {40, 64, 128}) {
    SCOPED_TRACE("D = " + std::to_string(D));
    const int64_t B = 2, H = 3, Tq = 37, C = H * D, n = Tq * B * C, rows = B * H * Tq;
    const auto out = random(n, dt()), part = random(n, dt());
    auto lse = random(rows, DType::f32, -4.0, 4.0), part_lse = random(rows, DType::f32, -4.0, 4.0);
    const double inf = std::numeric_limits<double>::infinity();
    lse[1] = -inf;                // only the part saw keys
    part_lse[2] = -inf;           // only the accumulated result did
    lse[3] = part_lse[3] = -inf;  // neither: stays as it was
    auto merge = [&](Backend& be, DType t, Buffer& o, Buffer& l, Buffer& p, Buffer& pl) {
      AttentionMergeArgs a;
      a.dtype = t;
      a.B = B;
      a.H = H;
      a.D = D;
      a.Tq = Tq;
      a.out = {o.ptr(), C, B * C};
      a.lse = l.ptr();
      a.part = {p.ptr(), C, B * C};
      a.part_lse = pl.ptr();
      be.attention_merge(a);
    };
    Buffer go = upload(out, dt()), gl = upload(lse, DType::f32), gp = upload(part, dt()),
           gpl = upload(part_lse, DType::f32);
    merge(*gpu, dt(), go, gl, gp, gpl);
    Buffer ro = ref_upload(out), rl = ref_upload(lse), rp = ref_upload(part), rpl = ref_upload(part_lse);
    merge(*cpu, DType::f64, ro, rl, rp, rpl);
    expect_close(download(go), ref_download(ro), tol(), "attention_merge out");
    const auto got_lse = download(gl), ref_lse = ref_download(rl);
    EXPECT_TRUE(std::isinf(got_lse[3]) && got_lse[3] < 0) << "lse of a row without keys: " << got_lse[3];
    std::vector<double> got_finite, ref_finite;
    for (int64_t i = 0; i < rows; ++i)
      if (i != 3) got_finite.push_back(got_lse[i]), ref_finite.push_back(ref_lse[i]);
    expect_close(got_finite, ref_finite, kF32Tol, "attention_merge lse");
  }
}

TEST_P(CudaOps, BiasGrad) {
  struct Case {
    int64_t rows, n;
  };
  for (const Case c : {Case{37, 29}, Case{1000, 72}, Case{4096, 256}, Case{3, 1}}) {
    for (DType db_dtype : {DType::f32, dt()}) {
      const auto dy = random(c.rows * c.n, dt()), db = random(c.n, db_dtype);
      Buffer gdy = upload(dy, dt()), gdb = upload(db, db_dtype);
      gpu->bias_grad(gdb.view(), gdy.view(), c.rows, c.n);
      Buffer rdy = ref_upload(dy), rdb = ref_upload(db);
      cpu->bias_grad(rdb.view(), rdy.view(), c.rows, c.n);
      expect_close(download(gdb), ref_download(rdb), tol_for(db_dtype),
                   std::string("bias_grad into ") + dtype_name(db_dtype) +
                       " rows=" + std::to_string(c.rows) + " n=" + std::to_string(c.n));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// model operations

TEST_P(CudaOps, Embedding) {
  struct Case {
    int64_t Tl, B, C;
    int32_t V;
    int32_t distinct;  // tokens drawn from [0, distinct): repeats
  };
  for (const Case c : {Case{7, 3, 24, 50, 10}, Case{5, 2, 13, 17, 17}, Case{256, 16, 64, 300, 300},
                       Case{64, 4, 128, 1000, 3}}) {
    const int64_t N = c.Tl * c.B;
    const auto tokens = random_tokens(N, c.distinct);
    const auto wte = random(int64_t{c.V} * c.C, dt()), wpe = random(c.Tl * c.C, dt());
    const std::string what =
        " Tl=" + std::to_string(c.Tl) + " B=" + std::to_string(c.B) + " C=" + std::to_string(c.C);
    Buffer gtok = upload_tokens(tokens), rtok = ref_tokens(tokens);

    Buffer gwte = upload(wte, dt()), gwpe = upload(wpe, dt()), gout = poisoned(N * c.C, dt());
    gpu->embedding_forward(gout.view(), gtok.view(), gwte.view(), gwpe.view(), c.Tl, c.B, c.C);
    Buffer rwte = ref_upload(wte), rwpe = ref_upload(wpe),
           rout = ref_upload(std::vector<double>(N * c.C));
    cpu->embedding_forward(rout.view(), rtok.view(), rwte.view(), rwpe.view(), c.Tl, c.B, c.C);
    expect_close(download(gout), ref_download(rout), tol(), "embedding_forward" + what);

    // Gradients accumulate into fp32 tables.
    const auto dout = random(N * c.C, dt());
    const auto dwte = random(int64_t{c.V} * c.C, DType::f32), dwpe = random(c.Tl * c.C, DType::f32);
    Buffer gdout = upload(dout, dt()), gdwte = upload(dwte, DType::f32),
           gdwpe = upload(dwpe, DType::f32);
    gpu->embedding_backward(gdwte.view(), gdwpe.view(), gdout.view(), gtok.view(), c.Tl, c.B, c.C);
    Buffer rdout = ref_upload(dout), rdwte = ref_upload(dwte), rdwpe = ref_upload(dwpe);
    cpu->embedding_backward(rdwte.view(), rdwpe.view(), rdout.view(), rtok.view(), c.Tl, c.B, c.C);
    expect_close(download(gdwte), ref_download(rdwte), kF32Tol, "embedding_backward dwte" + what);
    expect_close(download(gdwpe), ref_download(rdwpe), kF32Tol, "embedding_backward dwpe" + what);
  }
}

TEST_P(CudaOps, EmbeddingBackwardIsDeterministic) {
  const int64_t Tl = 128, B = 8, C = 64;
  const int32_t V = 40;
  const auto tokens = random_tokens(Tl * B, V);
  const auto dout = random(Tl * B * C, dt(), -100.0, 100.0);
  Buffer gtok = upload_tokens(tokens), gdout = upload(dout, dt());
  std::vector<double> first;
  for (int rep = 0; rep < 3; ++rep) {
    Buffer dwte = gpu->alloc_zeroed(DType::f32, V * C),
           dwpe = gpu->alloc_zeroed(DType::f32, Tl * C);
    gpu->embedding_backward(dwte.view(), dwpe.view(), gdout.view(), gtok.view(), Tl, B, C);
    const auto got = download(dwte);
    if (rep == 0)
      first = got;
    else
      EXPECT_EQ(got, first) << "repetition " << rep;
  }
}

TEST_P(CudaOps, LayerNorm) {
  struct Case {
    int64_t N, C;
  };
  // Beside the small shapes, the limits of the register paths and just past them (forward: rows
  // of 4 KiB, C = 2048 bf16, 1024 fp32; backward: 512 16-byte vectors, C = 4096 bf16, 2048
  // fp32), with row counts that leave the backward's blocks a partial last group of rows.
  for (const Case c : {Case{37, 96}, Case{19, 33}, Case{5000, 64}, Case{64, 1024}, Case{3, 4},
                       Case{1, 2048}, Case{4097, 2048}, Case{33, 2056}, Case{65, 1032},
                       Case{130, 4096}, Case{7, 4104}}) {
    const std::string what = " N=" + std::to_string(c.N) + " C=" + std::to_string(c.C);
    const auto x = random(c.N * c.C, dt(), -2.0, 3.0);
    const auto w = random(c.C, dt(), 0.5, 1.5), b = random(c.C, dt());

    Buffer gx = upload(x, dt()), gw = upload(w, dt()), gb = upload(b, dt());
    Buffer gout = poisoned(c.N * c.C, dt()), gmean = poisoned(c.N, DType::f32),
           grstd = poisoned(c.N, DType::f32);
    gpu->layernorm_forward(gout.view(), gmean.view(), grstd.view(), gx.view(), gw.view(), gb.view(),
                           c.N, c.C, 1e-5);
    Buffer rx = ref_upload(x), rw = ref_upload(w), rb = ref_upload(b);
    Buffer rout = ref_upload(std::vector<double>(c.N * c.C)),
           rmean = ref_upload(std::vector<double>(c.N)),
           rrstd = ref_upload(std::vector<double>(c.N));
    cpu->layernorm_forward(rout.view(), rmean.view(), rrstd.view(), rx.view(), rw.view(), rb.view(),
                           c.N, c.C, 1e-5);
    expect_close(download(gout), ref_download(rout), tol(), "layernorm_forward out" + what);
    expect_close(download(gmean), ref_download(rmean), kF32Tol, "layernorm_forward mean" + what);
    expect_close(download(grstd), ref_download(rrstd), kF32Tol, "layernorm_forward rstd" + what);

    // Backward from the fp32 statistics the forward wrote, into accumulated dx and fp32 dw, db.
    const auto mean = download(gmean), rstd = download(grstd);
    const auto dout = random(c.N * c.C, dt()), dx = random(c.N * c.C, dt());
    const auto dw = random(c.C, DType::f32), db = random(c.C, DType::f32);
    Buffer gdout = upload(dout, dt()), gdx = upload(dx, dt());
    Buffer gdw = upload(dw, DType::f32), gdb = upload(db, DType::f32);
    gpu->layernorm_backward(gdx.view(), gdw.view(), gdb.view(), gdout.view(), gx.view(),
                            gmean.view(), grstd.view(), gw.view(), c.N, c.C);
    Buffer rdout = ref_upload(dout), rdx = ref_upload(dx), rdw = ref_upload(dw),
           rdb = ref_upload(db);
    Buffer rm = ref_upload(mean), rr = ref_upload(rstd);
    cpu->layernorm_backward(rdx.view(), rdw.view(), rdb.view(), rdout.view(), rx.view(), rm.view(),
                            rr.view(), rw.view(), c.N, c.C);
    expect_close(download(gdx), ref_download(rdx), tol(), "layernorm_backward dx" + what);
    expect_close(download(gdw), ref_download(rdw), kF32Tol, "layernorm_backward dweight" + what);
    expect_close(download(gdb), ref_download(rdb), kF32Tol, "layernorm_backward dbias" + what);
  }
}

TEST_P(CudaOps, LayerNormBackwardIsDeterministic) {
  const int64_t N = 1001, C = 2048;
  const auto x = random(N * C, dt(), -2.0, 3.0), w = random(C, dt(), 0.5, 1.5),
             b = random(C, dt()), dout = random(N * C, dt()), dx = random(N * C, dt());
  Buffer gx = upload(x, dt()), gw = upload(w, dt()), gb = upload(b, dt()),
         gdout = upload(dout, dt());
  Buffer gout = gpu->alloc(dt(), N * C), gmean = gpu->alloc(DType::f32, N),
         grstd = gpu->alloc(DType::f32, N);
  gpu->layernorm_forward(gout.view(), gmean.view(), grstd.view(), gx.view(), gw.view(), gb.view(),
                         N, C, 1e-5);
  std::vector<double> first_dx, first_dw, first_db;
  for (int rep = 0; rep < 3; ++rep) {
    Buffer gdx = upload(dx, dt()), gdw = gpu->alloc_zeroed(DType::f32, C),
           gdb = gpu->alloc_zeroed(DType::f32, C);
    gpu->layernorm_backward(gdx.view(), gdw.view(), gdb.view(), gdout.view(), gx.view(),
                            gmean.view(), grstd.view(), gw.view(), N, C);
    if (rep == 0) {
      first_dx = download(gdx);
      first_dw = download(gdw);
      first_db = download(gdb);
    } else {
      EXPECT_EQ(download(gdx), first_dx) << "repetition " << rep;
      EXPECT_EQ(download(gdw), first_dw) << "repetition " << rep;
      EXPECT_EQ(download(gdb), first_db) << "repetition " << rep;
    }
  }
}

TEST_P(CudaOps, Gelu) {
  for (int64_t n : {int64_t{1001}, int64_t{1} << 18}) {
    const std::string what = " n=" + std::to_string(n);
    const auto x = random(n, dt(), -6.0, 6.0), g = random(n, dt());
    Buffer rx = ref_upload(x), rg = ref_upload(g), rout = ref_upload(std::vector<double>(n));
    cpu->gelu_forward(rout.view(), rx.view());
    const auto ref_fwd = ref_download(rout);
    cpu->gelu_backward(rg.view(), rg.view(), rx.view());
    const auto ref_bwd = ref_download(rg);

    Buffer gx = upload(x, dt()), gout = poisoned(n, dt());
    gpu->gelu_forward(gout.view(), gx.view());
    expect_close(download(gout), ref_fwd, tol(), "gelu_forward" + what);
    Buffer gg = upload(g, dt()), gdin = poisoned(n, dt());
    gpu->gelu_backward(gdin.view(), gg.view(), gx.view());
    expect_close(download(gdin), ref_bwd, tol(), "gelu_backward" + what);
    gpu->gelu_backward(gg.view(), gg.view(), gx.view());  // din aliases dout
    expect_close(download(gg), ref_bwd, tol(), "gelu_backward in place" + what);
    gpu->gelu_forward(gx.view(), gx.view());  // out aliases in
    expect_close(download(gx), ref_fwd, tol(), "gelu_forward in place" + what);
  }
}

// The GEMM's extras, fused by cuBLASLt where it has an algorithm (residual through a separate C
// input, GELU_AUX(_BIAS), DGELU), else run as passes: against the fp64 CPU backend, whose passes
// test_cpu_kernels checks against loops. Shapes with tensor-core algorithms and an odd one.
TEST_P(CudaOps, GemmResidualAndGeluEpilogues) {
  struct Shape {
    int64_t m, n, k;
  };
  for (const Shape& sh : {Shape{64, 96, 128}, Shape{512, 768, 256}, Shape{37, 29, 45}}) {
    const int64_t m = sh.m, n = sh.n, k = sh.k;
    const auto x = random(m * k, dt()), w = random(n * k, dt()), bias = random(n, dt());
    const auto residual = random(m * n, dt()), aux_in = random(m * n, dt(), -4.0, 4.0);
    Buffer gx = upload(x, dt()), gw = upload(w, dt()), gbias = upload(bias, dt());
    Buffer rx = ref_upload(x), rw = ref_upload(w), rbias = ref_upload(bias);
    auto args = [&](DType t, const Buffer& X, const Buffer& W, const Buffer& B, void* c) {
      GemmArgs g;
      g.dtype = g.c_dtype = t;
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
      g.bias = B.ptr();
      return g;
    };
    const std::string what = " m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k);
    {
      Buffer gr = upload(residual, dt()), gc = poisoned(m * n, dt());
      Buffer rr = ref_upload(residual), rc = ref_upload(std::vector<double>(m * n));
      GemmArgs g = args(dt(), gx, gw, gbias, gc.ptr()), r = args(DType::f64, rx, rw, rbias, rc.ptr());
      g.c_in = gr.ptr();
      r.c_in = rr.ptr();
      g.beta = r.beta = 1.0;
      gpu->gemm(g);
      cpu->gemm(r);
      expect_close(download(gc), ref_download(rc), tol(), "residual" + what);
      expect_close(download(gr), residual, 0.0, "residual input" + what);
    }
    {
      Buffer gc = poisoned(m * n, dt()), gaux = poisoned(m * n, dt());
      Buffer rc = ref_upload(std::vector<double>(m * n)), raux = ref_upload(std::vector<double>(m * n));
      GemmArgs g = args(dt(), gx, gw, gbias, gc.ptr()), r = args(DType::f64, rx, rw, rbias, rc.ptr());
      g.epilogue = r.epilogue = GemmEpilogue::gelu;
      g.aux = gaux.ptr();
      r.aux = raux.ptr();
      gpu->gemm(g);
      cpu->gemm(r);
      expect_close(download(gc), ref_download(rc), tol(), "gelu epilogue" + what);
      expect_close(download(gaux), ref_download(raux), tol(), "gelu epilogue's pre-activation" + what);
    }
    {
      Buffer gc = poisoned(m * n, dt()), gaux = upload(aux_in, dt());
      Buffer rc = ref_upload(std::vector<double>(m * n)), raux = ref_upload(aux_in);
      GemmArgs g = args(dt(), gx, gw, gbias, gc.ptr()), r = args(DType::f64, rx, rw, rbias, rc.ptr());
      g.bias = r.bias = nullptr;
      g.epilogue = r.epilogue = GemmEpilogue::gelu_backward;
      g.aux = gaux.ptr();
      r.aux = raux.ptr();
      gpu->gemm(g);
      cpu->gemm(r);
      expect_close(download(gc), ref_download(rc), tol(), "gelu_backward epilogue" + what);
    }
  }
}

// timing.device_state's source: the backend samples its device through NVML while work runs,
// and the summary is that of real readings. Skipped where the driver's NVML library is missing.
TEST_F(CudaTest, DeviceSamplingWhileWorkRuns) {
  if (void* nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL)) {
    dlclose(nvml);
  } else {
    GTEST_SKIP() << "libnvidia-ml.so.1 is not loadable here";
  }
  const int64_t n = 2048;
  Buffer a = upload(random(n * n, DType::bf16), DType::bf16), c = gpu->alloc(DType::bf16, n * n);
  GemmArgs g;
  g.dtype = g.c_dtype = DType::bf16;
  g.m = g.n = g.k = n;
  g.a = g.b = a.ptr();
  g.lda = g.ldb = g.ldc = n;
  g.c = c.ptr();
  gpu->start_device_sampling();
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(1100)) {
    for (int i = 0; i < 20; ++i) gpu->gemm(g);
    gpu->synchronize();
  }
  const std::optional<DeviceState> st = gpu->stop_device_sampling();
  ASSERT_TRUE(st.has_value()) << "NVML loads but the backend sampled nothing";
  EXPECT_GE(st->samples, 50);  // every 10 ms over 1.1 s
  EXPECT_DOUBLE_EQ(st->period_ms, 10.0);
  EXPECT_GT(st->sm_clock_mhz_min, 0.0);
  EXPECT_LE(st->sm_clock_mhz_min, st->sm_clock_mhz_median);
  EXPECT_LE(st->sm_clock_mhz_median, st->sm_clock_mhz_max);
  EXPECT_GT(st->power_w_median, 0.0);
  EXPECT_GT(st->power_limit_w, 0.0);
  for (double f : {st->power_capped_fraction, st->slowdown_fraction}) {
    EXPECT_GE(f, 0.0);
    EXPECT_LE(f, 1.0);
  }
  // The region's energy from the driver's counter (every data-centre GPU since Volta has one),
  // polled every 1 ms: it updates every few tens of ms, so a 1.1 s region sees its updates span
  // kMinEnergyWindowS. The mean power between them lies between an idle card's and the limit (the
  // cap's controller lets it run a few percent over for a moment), and the region lasted the
  // loop's 1.1 s.
  EXPECT_GE(st->region_s, 1.1);
  EXPECT_LT(st->region_s, 6.0);
  ASSERT_GE(st->energy_updates, 2) << "the driver's energy counter moved fewer than twice in 1.1 s";
  ASSERT_GE(st->energy_window_s, kMinEnergyWindowS) << "its updates spanned less than kMinEnergyWindowS in 1.1 s";
  ASSERT_GE(st->energy_j, 0.0);
  std::printf("energy counter: %lld updates over %.3f s of a %.3f s region, %.1f W mean\n",
              static_cast<long long>(st->energy_updates), st->energy_window_s, st->region_s, st->mean_power_w);
  EXPECT_GT(st->energy_window_s, 0.0);
  EXPECT_LE(st->energy_window_s, st->region_s);
  EXPECT_NEAR(st->energy_j, st->mean_power_w * st->region_s, 1e-9 * st->energy_j);
  EXPECT_GT(st->mean_power_w, 30.0);
  EXPECT_LT(st->mean_power_w, 1.1 * st->power_limit_w);
  // A second region, as long and mostly idle, starts afresh: about as many samples (not the two
  // regions' sum), a lower mean power and less energy for its time.
  gpu->start_device_sampling();
  gpu->gemm(g);
  gpu->synchronize();
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const std::optional<DeviceState> again = gpu->stop_device_sampling();
  ASSERT_TRUE(again.has_value());
  EXPECT_LT(again->samples, st->samples + st->samples / 2);
  EXPECT_GE(again->region_s, 1.1);
  ASSERT_GE(again->energy_updates, 2);
  EXPECT_LT(again->mean_power_w, st->mean_power_w);
  EXPECT_GE(again->energy_j, 0.0);
  EXPECT_LT(again->energy_j, st->energy_j * again->region_s / st->region_s);
}

TEST_P(CudaOps, CrossEntropy) {
  struct Case {
    int64_t N, V;
  };
  for (const Case c : {Case{13, 1000}, Case{9, 257}, Case{64, 50304}, Case{2, 1}}) {
    const std::string what = " N=" + std::to_string(c.N) + " V=" + std::to_string(c.V);
    const auto logits = random(c.N * c.V, dt(), -4.0, 4.0);
    const auto targets = random_tokens(c.N, static_cast<int32_t>(c.V));
    const double scale = 1.0 / static_cast<double>(c.N);
    Buffer gl = upload(logits, dt()), gt = upload_tokens(targets), gsum = gpu->alloc(DType::f64, 1);
    gpu->cross_entropy_fused(gl.view(), gt.view(), gsum.view(), c.N, c.V, scale);
    double loss = 0.0;
    gpu->copy_to_host(&loss, DType::f64, gsum.view());
    Buffer rl = ref_upload(logits), rt = ref_tokens(targets), rsum = cpu->alloc(DType::f64, 1);
    cpu->cross_entropy_fused(rl.view(), rt.view(), rsum.view(), c.N, c.V, scale);
    double ref_loss = 0.0;
    cpu->copy_to_host(&ref_loss, DType::f64, rsum.view());
    EXPECT_NEAR(loss, ref_loss, kF32Tol * std::max(1.0, std::abs(ref_loss))) << "loss" << what;
    expect_close(download(gl), ref_download(rl), tol(), "cross_entropy gradient" + what);
  }
}

TEST_P(CudaOps, AdamW) {
  for (int64_t n : {int64_t{1003}, int64_t{1} << 16}) {
    for (bool with_copy : {false, true}) {
      const std::string what = " n=" + std::to_string(n) + (with_copy ? " with copy" : "");
      const auto p = random(n, DType::f32), g = random(n, DType::f32), m = random(n, DType::f32);
      const auto v = random(n, DType::f32, 0.0, 1.0);
      Buffer gp = upload(p, DType::f32), gg = upload(g, DType::f32), gm = upload(m, DType::f32),
             gv = upload(v, DType::f32), gcopy = poisoned(n, dt());
      const Backend::AdamW hp{1e-2, 0.9, 0.95, 1e-8, 0.1, 3, with_copy ? gcopy.view() : View{}};
      gpu->adamw(gp.view(), gg.view(), gm.view(), gv.view(), hp);
      Buffer rp = ref_upload(p), rg = ref_upload(g), rm = ref_upload(m), rv = ref_upload(v);
      Backend::AdamW rhp = hp;
      rhp.param_copy = View{};
      cpu->adamw(rp.view(), rg.view(), rm.view(), rv.view(), rhp);
      const auto ref_p = ref_download(rp);
      expect_close(download(gp), ref_p, kF32Tol, "adamw param" + what);
      expect_close(download(gm), ref_download(rm), kF32Tol, "adamw m" + what);
      expect_close(download(gv), ref_download(rv), kF32Tol, "adamw v" + what);
      if (with_copy) expect_close(download(gcopy), ref_p, tol(), "adamw param_copy" + what);
    }
  }
}

// One call over tensors laid end to end, each run with its own weight decay: runs whose ends fall
// inside a 4-element vector, empty runs, neighbours with the same decay, and more runs than one
// launch takes (kAdamWMaxRuns = 64).
TEST_P(CudaOps, AdamWDecayRuns) {
  for (int count : {5, 150}) {
    std::vector<Backend::DecayRun> runs;
    int64_t n = 0;
    for (int r = 0; r < count; ++r) {
      const int64_t len = r % 7 == 3 ? 0 : 1 + (r * 37) % 301;
      runs.push_back({len, r % 3 ? 0.0 : 0.05 * (1 + r % 5)});
      n += len;
    }
    const std::string what = " runs=" + std::to_string(count) + " n=" + std::to_string(n);
    const auto p = random(n, DType::f32), g = random(n, DType::f32), m = random(n, DType::f32);
    const auto v = random(n, DType::f32, 0.0, 1.0);
    Buffer gp = upload(p, DType::f32), gg = upload(g, DType::f32), gm = upload(m, DType::f32),
           gv = upload(v, DType::f32), gcopy = poisoned(n, dt());
    Backend::AdamW hp{1e-2, 0.9, 0.95, 1e-8, 0.7, 3, gcopy.view()};
    hp.decay_runs = runs;
    gpu->adamw(gp.view(), gg.view(), gm.view(), gv.view(), hp);
    Buffer rp = ref_upload(p), rg = ref_upload(g), rm = ref_upload(m), rv = ref_upload(v);
    Backend::AdamW rhp = hp;
    rhp.param_copy = View{};
    cpu->adamw(rp.view(), rg.view(), rm.view(), rv.view(), rhp);  // run by run (CpuKernels.AdamWDecayRuns)
    const auto ref_p = ref_download(rp);
    expect_close(download(gp), ref_p, kF32Tol, "adamw param" + what);
    expect_close(download(gm), ref_download(rm), kF32Tol, "adamw m" + what);
    expect_close(download(gv), ref_download(rv), kF32Tol, "adamw v" + what);
    expect_close(download(gcopy), ref_p, tol(), "adamw param_copy" + what);
  }
}

}  // namespace
}  // namespace lss

int main(int argc, char** argv) {
  if (lss::cuda_device_count() == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
