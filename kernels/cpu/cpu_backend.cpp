// The CPU backend: host memory, conversions between host and buffer types, and the forwarding of
// every operation to the kernels in ops.cpp / attention.cpp with the backend's thread count.
#include "kernels/cpu/cpu_backend.h"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "kernels/cpu/kernels.h"

namespace lss {
namespace cpu {
namespace {

[[noreturn]] void throw_no_bf16() {
  throw UsageError("cpu backend: bf16 is not supported (use --dtype fp32 or fp64)");
}

template <class Dst, class Src>
void convert_typed(Dst* dst, const Src* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Dst>(src[i]);
}

template <class Dst>
void convert_from(Dst* dst, const void* src, DType src_dtype, int64_t n) {
  switch (src_dtype) {
    case DType::f32:
      return convert_typed(dst, static_cast<const float*>(src), n);
    case DType::f64:
      return convert_typed(dst, static_cast<const double*>(src), n);
    case DType::i32:
      return convert_typed(dst, static_cast<const int32_t*>(src), n);
    case DType::bf16:
      break;
  }
  throw_no_bf16();
}

}  // namespace

void require_float(DType t, const char* op) {
  if (t == DType::bf16) throw_no_bf16();
  LSS_CHECK(t == DType::f32 || t == DType::f64,
            std::string(op) + ": dtype " + dtype_name(t) + " is not a floating-point type");
}

void check_view(const View& v, DType t, int64_t numel, const char* op, const char* what) {
  if (v.dtype == DType::bf16) throw_no_bf16();
  LSS_CHECK(v.dtype == t, std::string(op) + ": " + what + " has dtype " + dtype_name(v.dtype) +
                              ", expected " + dtype_name(t));
  LSS_CHECK(v.numel >= numel && (v.ptr != nullptr || numel == 0),
            std::string(op) + ": " + what + " has " + std::to_string(v.numel) +
                " elements, needs " + std::to_string(numel));
}

void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n) {
  if (dst_dtype == DType::bf16 || src_dtype == DType::bf16) throw_no_bf16();
  if (dst_dtype == src_dtype) {
    if (dst != src) std::memmove(dst, src, static_cast<size_t>(n) * dtype_size(dst_dtype));
    return;
  }
  switch (dst_dtype) {
    case DType::f32:
      return convert_from(static_cast<float*>(dst), src, src_dtype, n);
    case DType::f64:
      return convert_from(static_cast<double*>(dst), src, src_dtype, n);
    case DType::i32:
      return convert_from(static_cast<int32_t*>(dst), src, src_dtype, n);
    case DType::bf16:
      break;
  }
}

BlasSingleThread::BlasSingleThread(int threads) : threads_(threads) { openblas_set_num_threads(1); }

BlasSingleThread::~BlasSingleThread() { openblas_set_num_threads(threads_); }

}  // namespace cpu

namespace {

constexpr size_t kAlignment = 64;  // a cache line, and the widest SIMD register

// Memory ops accept the i32 token buffers too; only bf16 is refused.
void require_supported(DType t) {
  if (t == DType::bf16) cpu::throw_no_bf16();
}

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const auto start = line.find_first_not_of(" \t", colon + 1);
    if (start != std::string::npos) return line.substr(start);
  }
  return "unknown CPU";
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : threads_(threads) {
    // One global BLAS setting: this backend owns the process's BLAS threading.
    openblas_set_num_threads(threads_);
  }

  const char* name() const override { return "cpu"; }
  std::string device_name() const override {
    return cpu_model_name() + " (" + std::to_string(threads_) +
           (threads_ == 1 ? " thread)" : " threads)");
  }

  void copy_from_host(View dst, const void* src, DType src_dtype) override {
    cpu::convert(dst.ptr, dst.dtype, src, src_dtype, dst.numel);
  }
  void copy_to_host(void* dst, DType dst_dtype, View src) override {
    cpu::convert(dst, dst_dtype, src.ptr, src.dtype, src.numel);
  }
  void copy(View dst, View src) override {
    OpSpan span(*this, "copy", [&] { return std::to_string(dst.numel); });
    LSS_CHECK(dst.numel == src.numel,
              std::string("copy: ") + dtype_name(src.dtype) + "[" + std::to_string(src.numel) +
                  "] into " + dtype_name(dst.dtype) + "[" + std::to_string(dst.numel) + "]");
    cpu::convert(dst.ptr, dst.dtype, src.ptr, src.dtype, dst.numel);
  }
  void fill_zero(View dst) override {
    OpSpan span(*this, "fill_zero", [&] { return std::to_string(dst.numel); });
    require_supported(dst.dtype);
    std::memset(dst.ptr, 0, dst.bytes());
  }

  // The epilogue and c_in as passes: on the CPU they cost what fused ones would.
  void gemm(const GemmArgs& args) override {
    OpSpan span(*this, "gemm", [&] { return describe(args); });
    if (args.c_in || args.epilogue != GemmEpilogue::none)
      gemm_in_passes(*this, args);
    else
      cpu::gemm(args, threads_);
  }
  void axpy(View y, View x, double alpha) override {
    OpSpan span(*this, "axpy", [&] { return std::to_string(y.numel); });
    cpu::axpy(y, x, alpha, threads_);
  }
  void add(View out, View a, View b) override {
    OpSpan span(*this, "add", [&] { return std::to_string(out.numel); });
    cpu::add(out, a, b, threads_);
  }
  void bias_grad(View db, View dy, int64_t rows, int64_t n) override {
    OpSpan span(*this, "bias_grad", [&] { return std::to_string(rows) + "x" + std::to_string(n); });
    cpu::bias_grad(db, dy, rows, n, threads_);
  }

  void embedding_forward(View out, View tokens, View wte, View wpe_rows, int64_t Tl, int64_t B,
                         int64_t C) override {
    OpSpan span(*this, "embedding_forward", [&] { return std::to_string(Tl * B) + "x" + std::to_string(C); });
    cpu::embedding_forward(out, tokens, wte, wpe_rows, Tl, B, C, threads_);
  }
  void embedding_backward(View dwte, View dwpe_rows, View dout, View tokens, int64_t Tl, int64_t B,
                          int64_t C) override {
    OpSpan span(*this, "embedding_backward", [&] { return std::to_string(Tl * B) + "x" + std::to_string(C); });
    cpu::embedding_backward(dwte, dwpe_rows, dout, tokens, Tl, B, C, threads_);
  }
  void layernorm_forward(View out, View mean, View rstd, View x, View weight, View bias, int64_t N,
                         int64_t C, double eps) override {
    OpSpan span(*this, "layernorm_forward", [&] { return std::to_string(N) + "x" + std::to_string(C); });
    cpu::layernorm_forward(out, mean, rstd, x, weight, bias, N, C, eps, threads_);
  }
  void layernorm_backward(View dx, View dweight, View dbias, View dout, View x, View mean,
                          View rstd, View weight, int64_t N, int64_t C) override {
    OpSpan span(*this, "layernorm_backward", [&] { return std::to_string(N) + "x" + std::to_string(C); });
    cpu::layernorm_backward(dx, dweight, dbias, dout, x, mean, rstd, weight, N, C, threads_);
  }
  void gelu_forward(View out, View in) override {
    OpSpan span(*this, "gelu_forward", [&] { return std::to_string(out.numel); });
    cpu::gelu_forward(out, in, threads_);
  }
  void gelu_backward(View din, View dout, View in) override {
    OpSpan span(*this, "gelu_backward", [&] { return std::to_string(din.numel); });
    cpu::gelu_backward(din, dout, in, threads_);
  }
  void attention_forward(const AttentionArgs& args) override {
    OpSpan span(*this, "attention_forward", [&] { return describe(args); });
    cpu::attention_forward(args, threads_);
  }
  void attention_backward(const AttentionArgs& args) override {
    OpSpan span(*this, "attention_backward", [&] { return describe(args); });
    cpu::attention_backward(args, threads_);
  }
  void attention_merge(const AttentionMergeArgs& args) override {
    OpSpan span(*this, "attention_merge", [&] { return std::to_string(args.Tq) + " queries"; });
    cpu::attention_merge(args, threads_);
  }
  void cross_entropy_fused(View logits, View targets, View loss_sum, int64_t N, int64_t V,
                           double grad_scale) override {
    OpSpan span(*this, "cross_entropy", [&] { return std::to_string(N) + "x" + std::to_string(V); });
    LSS_CHECK(loss_sum.dtype == DType::f64 && loss_sum.numel == 1, "cross_entropy_fused: loss_sum is not one fp64");
    *loss_sum.as<double>() = cpu::cross_entropy_fused(logits, targets, N, V, grad_scale, threads_);
  }
  void adamw(View param, View grad, View m, View v, const AdamW& hp) override {
    OpSpan span(*this, "adamw", [&] { return std::to_string(param.numel); });
    for_each_decay_run(param, grad, m, v, hp, [&](View p, View g, View mm, View vv, const AdamW& one) {
      cpu::adamw(p, g, mm, vv, one, threads_);
    });
  }

 protected:
  void* raw_alloc(size_t bytes) override {
    // aligned_alloc wants a size that is a multiple of the alignment.
    const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* p = std::aligned_alloc(kAlignment, rounded);
    LSS_CHECK(p != nullptr, "aligned_alloc of " + std::to_string(rounded) + " bytes");
    return p;
  }
  void raw_free(void* ptr, size_t) override { std::free(ptr); }

 private:
  int threads_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int num_threads) {
  LSS_REQUIRE_INPUT(num_threads >= 1,
                    "--threads: must be at least 1 (got " + std::to_string(num_threads) + ")");
  return std::make_unique<CpuBackend>(num_threads);
}

}  // namespace lss
