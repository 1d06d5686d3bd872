// The CUDA backend: one non-blocking stream per backend that every operation is enqueued on, a
// caching allocator over cudaMalloc, cuBLASLt GEMMs (gemm.cpp), the other kernels (ops.cu), and
// attention through cuDNN or the project's flash-attention kernel.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cudnn_attention.h"
#include "kernels/cuda/device_monitor.h"
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/ops.h"

namespace lss {
namespace {

// Requests up to 1 MiB are rounded up to 512 bytes; larger ones to one of 8 classes per power of
// two (at most 12.5% over the request), so that the buffers of a training step, which come back
// with the same sizes every step, are served from the cache.
constexpr size_t kSmallLimit = size_t{1} << 20;
constexpr size_t kSmallGranule = 512;
constexpr int kClassesPerOctave = 8;

size_t size_class(size_t bytes) {
  if (bytes <= kSmallLimit)
    return std::max<size_t>(1, (bytes + kSmallGranule - 1) / kSmallGranule) * kSmallGranule;
  size_t octave = kSmallLimit;  // the largest power of two <= bytes
  while (octave <= bytes / 2) octave *= 2;
  const size_t step = octave / kClassesPerOctave;
  return (bytes + step - 1) / step * step;
}

std::string dotted_version(int v) {
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

std::string mib(size_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& options)
      : device_(options.device), attention_(options.attention) {
    LSS_CUDA_CHECK(cudaSetDevice(device_));
    LSS_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    // The side lane at the lowest priority: its blocks take the SMs the main lane leaves free (the
    // tails and gaps of backward's kernels) rather than delay the main lane's.
    int least = 0, greatest = 0;
    LSS_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    LSS_CUDA_CHECK(cudaStreamCreateWithPriority(&side_stream_, cudaStreamNonBlocking, least));
    LSS_CUDA_CHECK(cudaEventCreateWithFlags(&side_fork_, cudaEventDisableTiming));
    LSS_CUDA_CHECK(cudaEventCreateWithFlags(&side_join_, cudaEventDisableTiming));
    LSS_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device_));
    gemm_ = std::make_unique<cuda::Gemm>();
    sample_device_memory();  // the GEMM workspace
  }

  void start_device_sampling() override {
    if (!monitor_) monitor_ = std::make_unique<cuda::DeviceMonitor>(device_);
    monitor_->start();
  }
  std::optional<DeviceState> stop_device_sampling() override {
    return monitor_ ? monitor_->stop() : std::nullopt;
  }

  ~CudaBackend() override {
    LSS_CUDA_CHECK(cudaStreamSynchronize(side_stream_));
    LSS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    cudnn_.reset();
    gemm_.reset();
    free_cache();
    // Buffers must not outlive their backend; free what is left rather than leak it.
    for (const auto& [ptr, bytes] : live_) LSS_CUDA_CHECK(cudaFree(ptr));
    LSS_CUDA_CHECK(cudaEventDestroy(side_fork_));
    LSS_CUDA_CHECK(cudaEventDestroy(side_join_));
    LSS_CUDA_CHECK(cudaStreamDestroy(side_stream_));
    LSS_CUDA_CHECK(cudaStreamDestroy(stream_));
  }

  const char* name() const override { return "cuda"; }

  std::string device_name() const override {
    cudaDeviceProp prop{};
    LSS_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    int driver = 0, runtime = 0;
    LSS_CUDA_CHECK(cudaDriverGetVersion(&driver));
    LSS_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
    return std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
           std::to_string(prop.minor) + ", driver " + dotted_version(driver) + ", CUDA runtime " +
           dotted_version(runtime) + ")";
  }

  cudaStream_t stream() const { return stream_; }

  // ---- data movement ----
  // The host side is converted on the host; the copy is complete when these return (the host
  // data may be gone right after).
  void copy_from_host(View dst, const void* src, DType src_dtype) override {
    if (dst.numel == 0) return;
    const void* from = src;
    std::vector<char> staging;
    if (src_dtype != dst.dtype) {
      staging.resize(dst.bytes());
      cuda::convert_host(staging.data(), dst.dtype, src, src_dtype, dst.numel);
      from = staging.data();
    }
    LSS_CUDA_CHECK(cudaMemcpyAsync(dst.ptr, from, dst.bytes(), cudaMemcpyHostToDevice, stream_));
    LSS_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void copy_to_host(void* dst, DType dst_dtype, View src) override {
    if (src.numel == 0) return;
    void* to = dst;
    std::vector<char> staging;
    if (dst_dtype != src.dtype) {
      staging.resize(src.bytes());
      to = staging.data();
    }
    LSS_CUDA_CHECK(cudaMemcpyAsync(to, src.ptr, src.bytes(), cudaMemcpyDeviceToHost, stream_));
    LSS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (to != dst) cuda::convert_host(dst, dst_dtype, staging.data(), src.dtype, src.numel);
  }

  void copy(View dst, View src) override {
    OpSpan span(*this, "copy", [&] { return std::to_string(dst.numel); });
    cuda::convert(ctx(), dst, src);
  }

  void fill_zero(View dst) override {
    OpSpan span(*this, "fill_zero", [&] { return std::to_string(dst.numel); });
    if (dst.numel == 0) return;
    LSS_CUDA_CHECK(cudaMemsetAsync(dst.ptr, 0, dst.bytes(), stream_));
  }

  void synchronize() override {
    LSS_CHECK(!in_side_work_, "cuda backend: synchronize() inside side work");
    LSS_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // ---- the side lane ----
  // Inside side work every operation goes to the side stream (stream_ is swapped), so the kernels'
  // own code needs no second path.
  void begin_side_work() override {
    LSS_CHECK(!in_side_work_, "cuda backend: begin_side_work() inside side work");
    LSS_CUDA_CHECK(cudaEventRecord(side_fork_, stream_));
    LSS_CUDA_CHECK(cudaStreamWaitEvent(side_stream_, side_fork_, 0));
    std::swap(stream_, side_stream_);
    in_side_work_ = true;
    side_pending_ = true;
  }
  void end_side_work() override {
    LSS_CHECK(in_side_work_, "cuda backend: end_side_work() without begin_side_work()");
    std::swap(stream_, side_stream_);
    in_side_work_ = false;
  }
  void join_side_work() override {
    LSS_CHECK(!in_side_work_, "cuda backend: join_side_work() inside side work");
    if (!side_pending_) return;
    LSS_CUDA_CHECK(cudaEventRecord(side_join_, side_stream_));
    LSS_CUDA_CHECK(cudaStreamWaitEvent(stream_, side_join_, 0));
    side_pending_ = false;
  }

  // ---- timing ----
  // A marker is an event recorded on the stream (no synchronization); the time between two is
  // what the device measured between them.
  Marker mark() override {
    LSS_CHECK(!in_side_work_, "cuda backend: a timing marker inside side work");
    return mark_lane();
  }
  // A trace span's marker goes on whichever lane the operation runs on.
  Marker mark_lane() override {
    Marker m;
    m.host_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    cudaEvent_t ev = nullptr;
    LSS_CUDA_CHECK(cudaEventCreate(&ev));
    m.device = std::shared_ptr<void>(static_cast<void*>(ev), [](void* e) {
      // A marker destroyed during process teardown finds the runtime gone: nothing to free then.
      const cudaError_t err = cudaEventDestroy(static_cast<cudaEvent_t>(e));
      if (err != cudaErrorCudartUnloading) LSS_CUDA_CHECK(err);
    });
    LSS_CUDA_CHECK(cudaEventRecord(ev, stream_));
    return m;
  }

  const char* lane_name() const override { return in_side_work_ ? "side" : "compute"; }

  double seconds_between(const Marker& a, const Marker& b) override {
    LSS_CHECK(a.device && b.device, "seconds_between: markers not made by a CUDA backend");
    const auto ea = static_cast<cudaEvent_t>(a.device.get());
    const auto eb = static_cast<cudaEvent_t>(b.device.get());
    LSS_CUDA_CHECK(cudaEventSynchronize(eb));
    float ms = 0.0f;
    LSS_CUDA_CHECK(cudaEventElapsedTime(&ms, ea, eb));
    return 1e-3 * static_cast<double>(ms);
  }

  // ---- dense algebra ----
  // cuBLASLt fuses c_in and the epilogues where it has an algorithm for them; otherwise passes.
  void gemm(const GemmArgs& args) override {
    OpSpan span(*this, "gemm", [&] { return describe(args); });
    if (!gemm_->run(args, stream_)) gemm_in_passes(*this, args);
  }
  void reserve_sms(int sms) override {
    const std::string range = "[0, " + std::to_string(num_sms_) + ")";
    LSS_REQUIRE_INPUT(sms >= 0 && sms < num_sms_,
                      "reserve_sms: " + std::to_string(sms) + " SMs reserved, outside the device's " + range);
    gemm_->set_sm_target(sms > 0 ? num_sms_ - sms : 0);
  }
  void axpy(View y, View x, double alpha) override {
    OpSpan span(*this, "axpy", [&] { return std::to_string(y.numel); });
    cuda::axpy(ctx(), y, x, alpha);
  }
  void add(View out, View a, View b) override {
    OpSpan span(*this, "add", [&] { return std::to_string(out.numel); });
    cuda::add(ctx(), out, a, b);
  }
  void bias_grad(View db, View dy, int64_t rows, int64_t n) override {
    OpSpan span(*this, "bias_grad", [&] { return std::to_string(rows) + "x" + std::to_string(n); });
    cuda::bias_grad(ctx(), db, dy, rows, n);
  }

  // ---- model operations ----
  void embedding_forward(View out, View tokens, View wte, View wpe_rows, int64_t Tl, int64_t B,
                         int64_t C) override {
    OpSpan span(*this, "embedding_forward", [&] { return std::to_string(Tl * B) + "x" + std::to_string(C); });
    cuda::embedding_forward(ctx(), out, tokens, wte, wpe_rows, Tl, B, C);
  }
  void embedding_backward(View dwte, View dwpe_rows, View dout, View tokens, int64_t Tl, int64_t B,
                          int64_t C) override {
    OpSpan span(*this, "embedding_backward", [&] { return std::to_string(Tl * B) + "x" + std::to_string(C); });
    cuda::embedding_backward(ctx(), dwte, dwpe_rows, dout, tokens, Tl, B, C);
  }
  void layernorm_forward(View out, View mean, View rstd, View x, View weight, View bias, int64_t N,
                         int64_t C, double eps) override {
    OpSpan span(*this, "layernorm_forward", [&] { return std::to_string(N) + "x" + std::to_string(C); });
    cuda::layernorm_forward(ctx(), out, mean, rstd, x, weight, bias, N, C, eps);
  }
  void layernorm_backward(View dx, View dweight, View dbias, View dout, View x, View mean,
                          View rstd, View weight, int64_t N, int64_t C) override {
    OpSpan span(*this, "layernorm_backward", [&] { return std::to_string(N) + "x" + std::to_string(C); });
    cuda::layernorm_backward(ctx(), dx, dweight, dbias, dout, x, mean, rstd, weight, N, C);
  }
  void gelu_forward(View out, View in) override {
    OpSpan span(*this, "gelu_forward", [&] { return std::to_string(out.numel); });
    cuda::gelu_forward(ctx(), out, in);
  }
  void gelu_backward(View din, View dout, View in) override {
    OpSpan span(*this, "gelu_backward", [&] { return std::to_string(din.numel); });
    cuda::gelu_backward(ctx(), din, dout, in);
  }
  void cross_entropy_fused(View logits, View targets, View loss_sum, int64_t N, int64_t V,
                           double grad_scale) override {
    OpSpan span(*this, "cross_entropy", [&] { return std::to_string(N) + "x" + std::to_string(V); });
    cuda::cross_entropy_fused(ctx(), logits, targets, loss_sum, N, V, grad_scale);
  }
  void adamw(View param, View grad, View m, View v, const AdamW& hp) override {
    OpSpan span(*this, "adamw", [&] { return std::to_string(param.numel); });
    cuda::adamw(ctx(), param, grad, m, v, hp);
  }

  // ---- attention ----
  void attention_forward(const AttentionArgs& args) override {
    OpSpan span(*this, "attention_forward", [&] { return describe(args); });
    if (use_cudnn(args)) {
      Buffer ws = workspace(cudnn().forward_workspace(args));
      cudnn().forward(args, ws ? ws.ptr() : nullptr);
      ++attention_calls_.cudnn;
    } else {
      cuda::flash_attention_forward(args, stream_);
      ++attention_calls_.flash;
    }
  }
  AttentionPathCalls attention_calls() const { return attention_calls_; }

  void attention_merge(const AttentionMergeArgs& args) override {
    OpSpan span(*this, "attention_merge", [&] { return std::to_string(args.Tq) + " queries"; });
    cuda::attention_merge(ctx(), args);
  }

  void attention_backward(const AttentionArgs& args) override {
    OpSpan span(*this, "attention_backward", [&] { return describe(args); });
    if (use_cudnn(args)) {
      Buffer ws = workspace(cudnn().backward_workspace(args));
      cudnn().backward(args, ws ? ws.ptr() : nullptr);
    } else {
      Buffer ws = workspace(cuda::flash_attention_backward_workspace(args));
      cuda::flash_attention_backward(args, ws ? ws.ptr() : nullptr, stream_);
    }
  }

 protected:
  // ---- caching allocator ----
  // Every kernel of the backend runs on stream_, so a block freed here may be handed out again at
  // once: work enqueued after the reuse runs after the work that used the block before.
  void* raw_alloc(size_t bytes) override {
    // A block handed out on the side lane could still be in use by the main lane's earlier work.
    LSS_CHECK(!in_side_work_, "cuda backend: an allocation inside side work");
    const size_t cls = size_class(bytes);
    if (auto it = free_.find(cls); it != free_.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      live_.emplace(p, cls);
      return p;
    }
    void* p = device_malloc(cls);
    if (p == nullptr) {
      // Cached blocks of other sizes may be what is missing: give them back and try once more.
      free_cache();
      p = device_malloc(cls);
    }
    if (p == nullptr) {
      size_t free_b = 0, total_b = 0;
      LSS_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
      // The cache is empty now: what the backend holds is in live buffers.
      throw OutOfMemoryError("out of device memory: asked " + std::to_string(bytes) +
                       " bytes on device " + std::to_string(device_) + ", with " +
                       mib(reserved_bytes_) + " in live buffers of this backend and " +
                       mib(free_b) + " of " + mib(total_b) + " free on the device");
    }
    live_.emplace(p, cls);
    return p;
  }

  // Symmetric blocks are cached like the others but in their own lists, and never freed here:
  // the communicator that registered them owns them. The first request of a size class reaches
  // the communicator's allocate(), a collective: the ranks' identical request sequences (the
  // gathers are shaped alike on every rank) keep them in step.
  // Unsetting it (null) is always allowed: buffers still live then go to a free list nothing
  // draws from again.
  void use_symmetric_memory(SymmetricMemory* memory) override {
    LSS_CHECK(memory == nullptr || symmetric_live_.empty(),
              "cuda backend: symmetric memory replaced while " + std::to_string(symmetric_live_.size()) +
                  " of its buffers are live");
    symmetric_ = memory;
    symmetric_free_.clear();
  }

  void* raw_alloc_symmetric(size_t bytes) override {
    if (symmetric_ == nullptr) return raw_alloc(bytes);
    const size_t cls = size_class(bytes);
    void* p = nullptr;
    if (auto it = symmetric_free_.find(cls); it != symmetric_free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
    } else {
      p = symmetric_->allocate(cls);
      sample_device_memory();
    }
    symmetric_live_.emplace(p, cls);
    return p;
  }

  void raw_free(void* ptr, size_t) override {
    if (const auto sym = symmetric_live_.find(ptr); sym != symmetric_live_.end()) {
      symmetric_free_[sym->second].push_back(ptr);
      symmetric_live_.erase(sym);
      return;
    }
    const auto it = live_.find(ptr);
    LSS_CHECK(it != live_.end(), "cuda backend: freeing a pointer it did not allocate");
    free_[it->second].push_back(ptr);
    live_.erase(it);
  }

  int64_t device_peak_bytes() const override { return device_peak_; }

 private:
  cuda::OpContext ctx() { return cuda::OpContext{stream_, num_sms_, this}; }

  // cudaMalloc of `bytes`, null when the device is out of memory (any other failure aborts).
  void* device_malloc(size_t bytes) {
    LSS_CUDA_CHECK(cudaSetDevice(device_));
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
      // Clear the error, or the next checked launch would report it.
      (void)cudaGetLastError();
      return nullptr;
    }
    LSS_CUDA_CHECK(err);
    reserved_bytes_ += bytes;
    sample_device_memory();
    return p;
  }

  void free_cache() {
    // Frees are safe once nothing enqueued can still touch the blocks.
    LSS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (auto& [cls, blocks] : free_) {
      for (void* p : blocks) LSS_CUDA_CHECK(cudaFree(p));
      reserved_bytes_ -= cls * blocks.size();
    }
    free_.clear();
  }

  // The device-wide high-water mark: used memory only grows through cudaMalloc (here or in the
  // libraries at their setup), so sampling after each one sees the maximum.
  void sample_device_memory() {
    size_t free_b = 0, total_b = 0;
    LSS_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    device_peak_ = std::max(device_peak_, static_cast<int64_t>(total_b - free_b));
  }

  Buffer workspace(size_t bytes) {
    if (bytes == 0) return Buffer{};
    return ctx().scratch(bytes);
  }

  cuda::CudnnAttention& cudnn() {
    if (!cudnn_) {
      cudnn_ = std::make_unique<cuda::CudnnAttention>(stream_);
      sample_device_memory();
    }
    return *cudnn_;
  }

  // Which implementation runs this shape (--attention cudnn | flash | auto: the own kernels where
  // cuda::flash_attention_preferred, else cuDNN where it takes the shape, else the own kernels);
  // UsageError when the chosen one (for auto: either) does not take it.
  bool use_cudnn(const AttentionArgs& args) {
    cuda::require_compute_dtype(args.dtype, "attention");
    const auto shape = [&] {
      return std::string(dtype_name(args.dtype)) + " B=" + std::to_string(args.B) +
             " H=" + std::to_string(args.H) + " D=" + std::to_string(args.D) +
             " Tq=" + std::to_string(args.Tq) + " Tk=" + std::to_string(args.Tk);
    };
    if (attention_ == "cudnn") {
      LSS_REQUIRE_INPUT(cudnn().supported(args),
                        "--attention cudnn: cuDNN does not support attention of shape " + shape());
      return true;
    }
    if (attention_ == "auto" && !cuda::flash_attention_preferred(args) && cudnn().supported(args))
      return true;
    LSS_REQUIRE_INPUT(cuda::flash_attention_supported(args),
                      "--attention " + attention_ +
                          ": the flash-attention kernel does not support attention of shape " +
                          shape());
    return false;
  }

  int device_;
  std::string attention_;
  AttentionPathCalls attention_calls_;
  cudaStream_t stream_ = nullptr;       // the main lane (swapped with side_stream_ inside side work)
  cudaStream_t side_stream_ = nullptr;  // the side lane, lowest priority
  cudaEvent_t side_fork_ = nullptr, side_join_ = nullptr;
  bool in_side_work_ = false;
  bool side_pending_ = false;  // side work enqueued since the last join
  int num_sms_ = 1;
  std::unique_ptr<cuda::Gemm> gemm_;
  std::unique_ptr<cuda::CudnnAttention> cudnn_;  // created on first use
  std::unique_ptr<cuda::DeviceMonitor> monitor_;  // created on first use

  std::unordered_map<size_t, std::vector<void*>> free_;  // size class -> cached blocks
  std::unordered_map<void*, size_t> live_;               // handed-out block -> size class
  SymmetricMemory* symmetric_ = nullptr;                 // alloc_symmetric's blocks (not owned)
  std::unordered_map<size_t, std::vector<void*>> symmetric_free_;
  std::unordered_map<void*, size_t> symmetric_live_;
  size_t reserved_bytes_ = 0;                            // from cudaMalloc, live or cached
  int64_t device_peak_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options) {
  const int count = cuda_device_count();
  LSS_REQUIRE_INPUT(count > 0, "--backend cuda: no CUDA device is visible to this process");
  LSS_REQUIRE_INPUT(options.device >= 0 && options.device < count,
                    "--backend cuda: device " + std::to_string(options.device) +
                        " does not exist (" + std::to_string(count) + " visible)");
  LSS_REQUIRE_INPUT(
      options.attention == "auto" || options.attention == "cudnn" || options.attention == "flash",
      "--attention: unknown value '" + options.attention + "' (expected auto, cudnn or flash)");
  return std::make_unique<CudaBackend>(options);
}

cudaStream_t cuda_stream_of(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  LSS_CHECK(cuda != nullptr,
            std::string("cuda_stream_of: backend '") + backend.name() + "' is not a CUDA backend");
  return cuda->stream();
}

AttentionPathCalls attention_path_calls(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  LSS_CHECK(cuda != nullptr, std::string("attention_path_calls: backend '") + backend.name() +
                                 "' is not a CUDA backend");
  return cuda->attention_calls();
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    // No driver or no device: not an error for the caller, and not one to leave pending.
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace lss
