// Tests of the CUDA backend's attention against the CPU backend in fp32: the project's flash
// kernels (attention = "flash") in fp32 and bf16, and cuDNN (attention = "cudnn") in bf16, on the
// strided layouts the model uses, causal and not, with and without a query offset, and lengths
// that are not multiples of any tile.
//
// Every path sees the same inputs: they are drawn once, rounded to bf16, and the fp32 reference
// (CPU backend, one thread) is computed from exactly those values, so the differences are the
// kernels' own rounding only.
//
// Bounds are normwise, |got - ref| <= tol * max|ref| per output tensor (so entries that are small
// through cancellation need no more accuracy than the data has):
// - fp32: tol = 1e-4. Both sides round at ~6e-8 per operation over sums of at most 1024 terms;
//   1e-4 leaves room for the different summation orders and still catches any indexing or
//   masking error, which shows at the 1e-2..1 level.
// - bf16: tol = 2e-2. Outputs are rounded to bf16 (relative 2^-9 = 2e-3 per element), and P and
//   dS are rounded to bf16 before their products (another few 1e-3 after fp32 accumulation).
// dq and dk are exactly zero where a query sees a single key, so their scale has a floor of the
// inputs' magnitude (1e-2) to keep the bound meaningful there.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cudnn_attention.h"
#include "kernels/cuda/flash_attention.h"

namespace lss {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kTolFp32 = 1e-4;
constexpr double kTolBf16 = 2e-2;
constexpr double kGradFloor = 1e-2;

struct AttnShape {
  int64_t B, H, D, Tq, Tk, q_offset;
  bool causal;
};

std::string describe(const AttnShape& s) {
  return "B=" + std::to_string(s.B) + " H=" + std::to_string(s.H) + " D=" + std::to_string(s.D) +
         " Tq=" + std::to_string(s.Tq) + " Tk=" + std::to_string(s.Tk) +
         " q_offset=" + std::to_string(s.q_offset) + (s.causal ? " causal" : " full");
}

// Where the operands live. Activations are (T, B, parts*C) buffers, C = H*D, and an operand is
// column block `part` of each row: element (b, t, h, d) at ((t*B + b)*parts + part)*C + h*D + d,
// i.e. batch_stride = parts*C, row_stride = B*parts*C. Queries are in a buffer of Tq rows, keys
// and values in one of Tk rows; the gradients dq, dk, dv mirror q, k, v.
struct Layout {
  const char* name;
  int q_parts, kv_parts;
  int q_part, k_part, v_part;
};
// The model's fused QKV projection: one [q|k|v] row per token.
constexpr Layout kPackedQkv{"packed [q|k|v]", 3, 3, 0, 1, 2};
// LSS: the segment's q contiguous, the all-gathered keys and values in one [k|v] buffer.
constexpr Layout kLss{"lss q + [k|v]", 1, 2, 0, 0, 1};

// Dense (B, T, H, D) host tensors, index ((b*T + t)*H + h)*D + d.
struct AttnInputs {
  std::vector<float> q, k, v, dout;
};
struct AttnResult {
  std::vector<float> out, lse, dq, dk, dv;
};

// Round to nearest even bf16 (finite inputs), as a float.
float round_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  float y;
  std::memcpy(&y, &u, sizeof(y));
  return y;
}

AttnInputs make_inputs(const AttnShape& s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  auto rnd = [&](int64_t n, float amp) {
    std::vector<float> v(n);
    for (auto& x : v) x = round_bf16(amp * dist(rng));
    return v;
  };
  const int64_t nq = s.B * s.Tq * s.H * s.D, nk = s.B * s.Tk * s.H * s.D;
  AttnInputs in;
  // Larger queries make the softmax far from uniform (scores of a few units after scaling), so
  // that masking, offset and rescaling errors show.
  in.q = rnd(nq, 4.f);
  in.k = rnd(nk, 1.f);
  in.v = rnd(nk, 1.f);
  in.dout = rnd(nq, 1.f);
  return in;
}

// Normwise comparison (see the header comment); `what` names the quantity in failures.
void expect_close(const std::vector<float>& got, const std::vector<float>& ref, double tol,
                  const std::string& what, double floor = 1e-30) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double scale = floor;
  for (float r : ref) scale = std::max(scale, static_cast<double>(std::abs(r)));
  int failures = 0;
  double worst = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - ref[i]);
    if (!(err <= tol * scale)) {  // also catches NaN
      if (++failures <= 5)
        ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", expected " << ref[i]
                      << " (error " << err / scale << " of max|ref| " << scale << ", bound " << tol
                      << ")";
    }
    if (std::isnan(err) || err > worst) worst = err;
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << ref.size()
                         << " elements off; worst error " << worst / scale << " of max|ref|";
}

// One attention problem on one backend: device buffers in `layout`, forward and backward calls
// with the outputs poisoned with NaN first, results gathered back to dense host tensors.
class AttnHarness {
 public:
  AttnHarness(Backend& be, DType dtype, const AttnShape& s, const Layout& layout,
              const AttnInputs& in)
      : be_(be), dtype_(dtype), s_(s), layout_(layout), C_(s.H * s.D) {
    qbuf_ = be_.alloc(dtype, s.Tq * s.B * layout.q_parts * C_);
    kvbuf_ = be_.alloc(dtype, s.Tk * s.B * layout.kv_parts * C_);
    out_ = be_.alloc(dtype, s.Tq * s.B * C_);
    dout_ = be_.alloc(dtype, s.Tq * s.B * C_);
    lse_ = be_.alloc(stat_dtype(dtype), s.B * s.H * s.Tq);
    dqbuf_ = be_.alloc(dtype, s.Tq * s.B * layout.q_parts * C_);
    dkvbuf_ = be_.alloc(dtype, s.Tk * s.B * layout.kv_parts * C_);

    // The parts of the input buffers that are not operands hold NaN: reading them would show.
    std::vector<float> hq(qbuf_.numel(), kNaN), hkv(kvbuf_.numel(), kNaN);
    scatter(hq, s.Tq, layout.q_parts, layout.q_part, in.q);
    scatter(hkv, s.Tk, layout.kv_parts, layout.k_part, in.k);
    scatter(hkv, s.Tk, layout.kv_parts, layout.v_part, in.v);
    std::vector<float> hdout(dout_.numel(), kNaN);
    scatter(hdout, s.Tq, 1, 0, in.dout);
    be_.copy_from_host(qbuf_.view(), hq.data(), DType::f32);
    be_.copy_from_host(kvbuf_.view(), hkv.data(), DType::f32);
    be_.copy_from_host(dout_.view(), hdout.data(), DType::f32);

    args_.dtype = dtype;
    args_.B = s.B;
    args_.H = s.H;
    args_.D = s.D;
    args_.Tq = s.Tq;
    args_.Tk = s.Tk;
    args_.q_offset = s.q_offset;
    args_.causal = s.causal;
    args_.scale = 1.0 / std::sqrt(static_cast<double>(s.D));
    args_.q = operand(qbuf_, layout.q_parts, layout.q_part);
    args_.k = operand(kvbuf_, layout.kv_parts, layout.k_part);
    args_.v = operand(kvbuf_, layout.kv_parts, layout.v_part);
    args_.out = operand(out_, 1, 0);
    args_.lse = lse_.ptr();
    args_.dout = operand(dout_, 1, 0);
    args_.dq = operand(dqbuf_, layout.q_parts, layout.q_part);
    args_.dk = operand(dkvbuf_, layout.kv_parts, layout.k_part);
    args_.dv = operand(dkvbuf_, layout.kv_parts, layout.v_part);
  }

  const AttentionArgs& args() const { return args_; }

  void forward() {
    poison(out_);
    poison(lse_);
    be_.attention_forward(args_);
    be_.synchronize();
  }

  void backward() {
    poison(dqbuf_);
    poison(dkvbuf_);
    be_.attention_backward(args_);
    be_.synchronize();
  }

  std::vector<float> out() const { return gather(download(out_), s_.Tq, 1, 0); }
  std::vector<float> lse() const { return download(lse_); }
  std::vector<float> dq() const {
    return gather(download(dqbuf_), s_.Tq, layout_.q_parts, layout_.q_part);
  }
  std::vector<float> dk() const {
    return gather(download(dkvbuf_), s_.Tk, layout_.kv_parts, layout_.k_part);
  }
  std::vector<float> dv() const {
    return gather(download(dkvbuf_), s_.Tk, layout_.kv_parts, layout_.v_part);
  }

  // Every element of the gradient buffers outside dq, dk, dv is still NaN.
  bool grads_untouched_outside() const {
    auto untouched = [&](const Buffer& b, int parts, std::initializer_list<int> inside) {
      const std::vector<float> h = download(b);
      for (size_t i = 0; i < h.size(); ++i) {
        const int part = static_cast<int>((i / C_) % parts);
        if (std::find(inside.begin(), inside.end(), part) == inside.end() && !std::isnan(h[i]))
          return false;
      }
      return true;
    };
    return untouched(dqbuf_, layout_.q_parts, {layout_.q_part}) &&
           untouched(dkvbuf_, layout_.kv_parts, {layout_.k_part, layout_.v_part});
  }

 private:
  AttnOperand operand(const Buffer& b, int parts, int part) const {
    char* base =
        static_cast<char*>(b.ptr()) + part * C_ * static_cast<int64_t>(dtype_size(b.dtype()));
    return {base, parts * C_, s_.B * parts * C_};
  }
  // Dense (B, T, H, D) <-> part `part` of a (T, B, parts*C) host buffer.
  void scatter(std::vector<float>& buf, int64_t T, int parts, int part,
               const std::vector<float>& dense) const {
    for (int64_t b = 0; b < s_.B; ++b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C_; ++c)
          buf[((t * s_.B + b) * parts + part) * C_ + c] = dense[(b * T + t) * C_ + c];
  }
  std::vector<float> gather(const std::vector<float>& buf, int64_t T, int parts, int part) const {
    std::vector<float> dense(s_.B * T * C_);
    for (int64_t b = 0; b < s_.B; ++b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C_; ++c)
          dense[(b * T + t) * C_ + c] = buf[((t * s_.B + b) * parts + part) * C_ + c];
    return dense;
  }
  std::vector<float> download(const Buffer& b) const {
    std::vector<float> h(b.numel());
    be_.copy_to_host(h.data(), DType::f32, b.view());
    return h;
  }
  void poison(Buffer& b) {
    const std::vector<float> nan(b.numel(), kNaN);
    be_.copy_from_host(b.view(), nan.data(), DType::f32);
  }

  Backend& be_;
  DType dtype_;
  AttnShape s_;
  Layout layout_;
  int64_t C_;
  Buffer qbuf_, kvbuf_, out_, dout_, lse_, dqbuf_, dkvbuf_;
  AttentionArgs args_;
};

AttnResult cpu_reference(const AttnShape& s, const AttnInputs& in) {
  auto cpu = make_cpu_backend(1);
  AttnHarness run(*cpu, DType::f32, s, kLss, in);
  run.forward();
  run.backward();
  return {run.out(), run.lse(), run.dq(), run.dk(), run.dv()};
}

// Forward, then backward twice (outputs re-poisoned each time: every call must overwrite, and
// the second must not see state left by the first), against the reference.
void check_backend(Backend& be, DType dtype, double tol, const AttnShape& s, const Layout& layout,
                   const AttnInputs& in, const AttnResult& ref) {
  AttnHarness run(be, dtype, s, layout, in);
  run.forward();
  expect_close(run.out(), ref.out, tol, "out");
  expect_close(run.lse(), ref.lse, tol, "lse");
  for (int call = 0; call < 2; ++call) {
    SCOPED_TRACE("backward call " + std::to_string(call + 1));
    run.backward();
    expect_close(run.dq(), ref.dq, tol, "dq", kGradFloor);
    expect_close(run.dk(), ref.dk, tol, "dk", kGradFloor);
    expect_close(run.dv(), ref.dv, tol, "dv", kGradFloor);
    EXPECT_TRUE(run.grads_untouched_outside()) << "backward wrote outside dq, dk, dv";
  }
}

// The own flash kernels on one problem: fp32, then bf16 on each generation the GPU and build have
// (mma.sync always; wgmma where built for this D, else a note that the path went unchecked).
void check_own_kernels(Backend& flash, const AttnShape& s, const Layout& layout, const AttnInputs& in,
                       const AttnResult& ref) {
  {
    SCOPED_TRACE("flash fp32");
    check_backend(flash, DType::f32, kTolFp32, s, layout, in, ref);
  }
  {
    SCOPED_TRACE("flash bf16, mma.sync kernels");
    cuda::set_flash_kernels(cuda::FlashKernels::mma_sync);
    check_backend(flash, DType::bf16, kTolBf16, s, layout, in, ref);
    cuda::set_flash_kernels(cuda::FlashKernels::automatic);
  }
  if (cuda::flash_wgmma_available(s.D)) {
    SCOPED_TRACE("flash bf16, wgmma kernels");
    cuda::set_flash_kernels(cuda::FlashKernels::wgmma);
    check_backend(flash, DType::bf16, kTolBf16, s, layout, in, ref);
    cuda::set_flash_kernels(cuda::FlashKernels::automatic);
  } else {
    std::cout << "[ note ] no wgmma flash kernels for D = " << s.D
              << " on this GPU/build: that path is not checked for this shape\n";
  }
}

std::unique_ptr<Backend> cuda_backend(const std::string& attention) {
  CudaBackendOptions options;
  options.device = 0;
  options.attention = attention;
  return make_cuda_backend(options);
}

std::vector<AttnShape> attention_shapes() {
  std::vector<AttnShape> shapes;
  for (int64_t D : {64, 128})
    for (bool causal : {true, false}) {
      shapes.push_back({2, 3, D, 256, 1024, 512, causal});  // LSS segment: Tk > q_offset + Tq
      shapes.push_back({2, 3, D, 333, 333, 0, causal});     // not a multiple of any tile
      shapes.push_back({2, 3, D, 200, 200, 0, causal});
      shapes.push_back({2, 3, D, 256, 256, 0, causal});   // exact multiples of the tiles
      shapes.push_back({2, 3, D, 70, 200, 130, causal});  // the last segment of a sequence
    }
  shapes.push_back({2, 3, 32, 97, 150, 53, true});  // D = 32, offset not on a tile boundary
  shapes.push_back({1, 2, 32, 1, 1, 0, true});      // a single query and key
  return shapes;
}

class CudaAttention : public ::testing::TestWithParam<AttnShape> {
 protected:
  // One CUDA backend per attention path for the whole suite (their caches persist).
  static void SetUpTestSuite() {
    flash_ = cuda_backend("flash").release();
    cudnn_ = cuda_backend("cudnn").release();
  }
  static void TearDownTestSuite() {
    delete flash_;
    delete cudnn_;
    flash_ = cudnn_ = nullptr;
  }
  static Backend* flash_;
  static Backend* cudnn_;
};
Backend* CudaAttention::flash_ = nullptr;
Backend* CudaAttention::cudnn_ = nullptr;

TEST_P(CudaAttention, MatchesCpuReference) {
  const AttnShape s = GetParam();
  SCOPED_TRACE(describe(s));
  const AttnInputs in = make_inputs(s, 1234 + s.Tq * 7 + s.Tk * 13 + s.D + (s.causal ? 1 : 0));
  const AttnResult ref = cpu_reference(s, in);
  for (const Layout* layout : {&kPackedQkv, &kLss}) {
    SCOPED_TRACE(layout->name);
    check_own_kernels(*flash_, s, *layout, in, ref);
    {
      SCOPED_TRACE("cudnn bf16");
      AttnHarness probe(*cudnn_, DType::bf16, s, *layout, in);
      cuda::CudnnAttention cudnn(cuda_stream_of(*cudnn_));
      if (!cudnn.supported(probe.args())) {
        std::cout << "[ note ] cuDNN does not take " << describe(s) << " (" << layout->name
                  << "): its path is not checked for this shape\n";
      } else {
        check_backend(*cudnn_, DType::bf16, kTolBf16, s, *layout, in, ref);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttention, ::testing::ValuesIn(attention_shapes()),
                         [](const ::testing::TestParamInfo<AttnShape>& info) {
                           const AttnShape& s = info.param;
                           return "D" + std::to_string(s.D) + "_Tq" + std::to_string(s.Tq) + "_Tk" +
                                  std::to_string(s.Tk) + "_off" + std::to_string(s.q_offset) +
                                  (s.causal ? "_causal" : "_full");
                         });

// Keys growing along the sequence (row t of k times 1 + t / ramp), so that a row's largest score
// keeps rising from key tile to key tile. The forward lets a row's scores rise up to 8 (base 2)
// above the max its probabilities are taken against (flash_attention_common.cuh, kMaxLag) before
// that max moves and the output is rescaled. At ramp 16 the max rises by ~40 a 128-key tile and
// ~300 over the 1024 keys: it must move at every tile (a max that never moved would overflow fp32's
// 2^128); at ramp 128 by ~5 a tile, so that it moves every other tile and holds in between. The
// random inputs of MatchesCpuReference settle their max in the first tile or two, so those moves
// are rare there.
TEST(CudaFlashAttention, ScoresRisingAlongTheKeys) {
  auto flash = cuda_backend("flash");
  for (int64_t ramp : {16, 128})
    for (int64_t D : {64, 128})
      for (bool causal : {true, false}) {
        const AttnShape s{1, 2, D, 1024, 1024, 0, causal};
        SCOPED_TRACE(describe(s) + " keys times 1 + t/" + std::to_string(ramp));
        AttnInputs in = make_inputs(s, 4321 + ramp + D + (causal ? 1 : 0));
        for (int64_t t = 0; t < s.Tk; ++t)
          for (int64_t i = 0; i < s.H * s.D; ++i) {
            float& x = in.k[t * s.H * s.D + i];
            x = round_bf16(x * (1.f + static_cast<float>(t) / static_cast<float>(ramp)));
          }
        const AttnResult ref = cpu_reference(s, in);
        check_own_kernels(*flash, s, kPackedQkv, in, ref);
      }
}

// On a compute capability 9.0 GPU (H100, H200) the build's default architectures include sm_90a,
// so the wgmma kernels must be there: a build that lost them would otherwise test and time only
// the mma.sync kernels without saying so.
TEST(CudaFlashAttention, WgmmaKernelsOnHopper) {
  int device = 0, major = 0, minor = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), cudaSuccess);
  if (major != 9 || minor != 0) GTEST_SKIP() << "not a compute capability 9.0 GPU";
  EXPECT_TRUE(cuda::flash_wgmma_available(64));
  EXPECT_TRUE(cuda::flash_wgmma_available(128));
  EXPECT_FALSE(cuda::flash_wgmma_available(32));
}

// Which shapes the flash kernels take: head dims 32/64/128, fp32 and bf16, and for bf16 rows that
// start on 16-byte boundaries (cp.async moves 16-byte chunks).
TEST(CudaFlashAttention, SupportedShapes) {
  auto be = cuda_backend("flash");
  const AttnShape s{2, 3, 64, 64, 64, 0, true};
  const AttnInputs in = make_inputs(s, 7);
  AttnHarness run(*be, DType::bf16, s, kLss, in);
  AttentionArgs a = run.args();
  EXPECT_TRUE(cuda::flash_attention_supported(a));
  a.dtype = DType::f32;
  EXPECT_TRUE(cuda::flash_attention_supported(a));
  a.dtype = DType::f64;
  EXPECT_FALSE(cuda::flash_attention_supported(a));
  a.dtype = DType::bf16;
  a.D = 80;
  EXPECT_FALSE(cuda::flash_attention_supported(a));
  a.D = 64;
  a.k.row_stride += 1;  // rows no longer 16-byte aligned
  EXPECT_FALSE(cuda::flash_attention_supported(a));
  a.dtype = DType::f32;  // the fp32 path reads scalars: any stride
  EXPECT_TRUE(cuda::flash_attention_supported(a));
}

// Where --attention auto takes the own kernels over cuDNN: bf16 at D = 64 and 128 on the wgmma
// kernels only (on a compute capability 9.0 GPU), never where they cannot run or the mma.sync
// ones are forced.
TEST(CudaFlashAttention, AutoPrefersWgmmaAtD64AndD128) {
  auto be = cuda_backend("flash");
  const AttnShape s{2, 3, 128, 64, 64, 0, true};
  const AttnInputs in = make_inputs(s, 7);
  AttnHarness run(*be, DType::bf16, s, kLss, in);
  AttentionArgs a = run.args();
  const bool hopper = cuda::flash_wgmma_available(128);
  EXPECT_EQ(cuda::flash_attention_preferred(a), hopper);
  cuda::set_flash_kernels(cuda::FlashKernels::mma_sync);
  EXPECT_FALSE(cuda::flash_attention_preferred(a));
  cuda::set_flash_kernels(cuda::FlashKernels::automatic);
  a.dtype = DType::f32;
  EXPECT_FALSE(cuda::flash_attention_preferred(a));
  a.dtype = DType::bf16;
  a.D = 64;
  EXPECT_EQ(cuda::flash_attention_preferred(a), cuda::flash_wgmma_available(64));
  a.D = 128;
  a.k.row_stride += 1;  // rows no longer 16-byte aligned: the kernels do not take it
  EXPECT_FALSE(cuda::flash_attention_preferred(a));
}

}  // namespace
}  // namespace lss

int main(int argc, char** argv) {
  if (lss::cuda_device_count() == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;  // CTest's SKIP_RETURN_CODE
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
