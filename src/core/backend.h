// The backend interface: whole-tensor operations the model needs, and memory with peak
// accounting. Strategies are written once against this interface and run unchanged on the CPU
// backend (fp32/fp64, kernels/cpu) and the CUDA backend (bf16/fp32, kernels/cuda).
//
// Conventions used by every operation:
// - matrices are row-major; "N" counts rows (tokens), activations are laid out (T, B, C), i.e.
//   row n = t*B + b, so that a contiguous block of T rows is one sequence segment for all B
//   sequences (a collective over a segment needs no packing);
// - "accumulate" outputs are added to (+=), all others are overwritten;
// - parameter gradients (dW, db, LayerNorm and embedding gradients) have the master dtype
//   (fp32 when activations are bf16), everything else the compute dtype of the activations;
// - per-row statistics (LayerNorm mean/rstd, attention lse) have type stat_dtype(dtype).
#pragma once
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace lss {

class Backend;

// A non-owning view of contiguous elements on a backend.
struct View {
  void* ptr = nullptr;
  DType dtype = DType::f32;
  int64_t numel = 0;

  size_t bytes() const { return static_cast<size_t>(numel) * dtype_size(dtype); }
  // Sub-view of `count` elements starting at element `offset`.
  View slice(int64_t offset, int64_t count) const;
  template <class T>
  T* as() const { return static_cast<T*>(ptr); }
};

// Device memory that every rank of a group maps at once, so that a collective can address its
// peers' buffers directly (NCCL's symmetric windows, which copy-engine all-gathers need). Its
// owner is the group's communicator; allocate() is collective over the group: every rank calls it
// with the same size in the same order.
class SymmetricMemory {
 public:
  virtual ~SymmetricMemory() = default;
  virtual void* allocate(size_t bytes) = 0;
};

// An owning buffer; freed through the backend that allocated it. Move-only.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend* backend, View view) : backend_(backend), view_(view) {}
  // Another buffer's elements, not freed by this one (which must not outlive them): where a
  // collective of a one-rank group would only copy its input, its output can be the input.
  static Buffer borrowed(View view) { return Buffer(nullptr, view); }
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { reset(); }

  void reset();
  const View& view() const { return view_; }
  void* ptr() const { return view_.ptr; }
  int64_t numel() const { return view_.numel; }
  DType dtype() const { return view_.dtype; }
  View slice(int64_t offset, int64_t count) const { return view_.slice(offset, count); }
  explicit operator bool() const { return view_.ptr != nullptr; }

 private:
  Backend* backend_ = nullptr;
  View view_;
};

// What a GEMM does with Z = alpha op(A) op(B) + beta C_in [+ bias] before storing C. The
// activation's kernels then need not run separately: cuBLASLt applies them in the GEMM's
// epilogue while the tile is in registers.
enum class GemmEpilogue : uint8_t {
  none,           // C = Z
  gelu,           // aux = Z, C = gelu_tanh(Z): a linear layer and its activation, keeping the
                  // pre-activation for backward
  gelu_backward,  // C = Z * gelu_tanh'(aux): a data gradient through the activation of input aux
};

// C (m x n, ldc) = epilogue(alpha * op(A) * op(B) + beta * C_in [+ bias broadcast over rows]).
// op(A) is m x k: A is stored m x k (lda) or, with trans_a, k x m (lda). Same for B (k x n).
// A and B have type `dtype`; C and the bias have type `c_dtype` (mixed precision: bf16 inputs
// accumulating into fp32 weight gradients). Accumulation is in fp32 (fp64 for fp64).
// C_in is C unless c_in is set (a residual added in the GEMM: y = x W^T + b + h). With c_in or
// an epilogue, C, C_in and aux are contiguous (ldc == n) and share C's dtype, which is A's.
struct GemmArgs {
  DType dtype = DType::f32;
  DType c_dtype = DType::f32;
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  void* c = nullptr;
  int64_t ldc = 0;
  double alpha = 1.0, beta = 0.0;
  const void* bias = nullptr;  // (n) or null
  const void* c_in = nullptr;  // (m x n) the beta term's matrix, or null for C itself
  GemmEpilogue epilogue = GemmEpilogue::none;
  void* aux = nullptr;         // (m x n) gelu: written; gelu_backward: read
};
// Fails on an epilogue or c_in the contract above does not allow (every backend checks with it).
void check_gemm_extras(const GemmArgs& g);
// The epilogue and c_in as separate passes around a plain GEMM (copy, gemm, gelu kernels of
// `be`): for a backend, or a shape, whose GEMM cannot fuse them. Same result up to rounding.
void gemm_in_passes(Backend& be, const GemmArgs& g);

// A (B, T, H*D)-shaped operand of attention inside a larger buffer: element (b, t, h, d) is at
// ptr + b*batch_stride + t*row_stride + h*D + d (in elements).
struct AttnOperand {
  void* ptr = nullptr;
  int64_t batch_stride = 0;
  int64_t row_stride = 0;
};

// Scaled dot-product attention of Tq queries against Tk keys, H heads of size D.
// Query i has global position q_offset + i, key j has global position j; with `causal`, query i
// sees key j iff j <= q_offset + i (LSS: a segment's queries against the whole sequence's keys).
// lse: (B, H, Tq) log-sum-exp of the scaled scores, written by forward, read by backward.
// Backward overwrites dq, dk, dv.
struct AttentionArgs {
  DType dtype = DType::f32;
  int64_t B = 0, H = 0, D = 0, Tq = 0, Tk = 0;
  int64_t q_offset = 0;
  bool causal = true;
  double scale = 1.0;
  AttnOperand q, k, v, out;
  void* lse = nullptr;  // (B, H, Tq), stat_dtype(dtype)
  AttnOperand dout, dq, dk, dv;  // backward only
};

// Two attention results of the same queries over disjoint key sets, merged into the result over
// their union: with L = log(e^lse + e^part_lse), out = out e^(lse - L) + part e^(part_lse - L) and
// lse = L. An empty key set has lse = -inf (and out 0).
struct AttentionMergeArgs {
  DType dtype = DType::f32;
  int64_t B = 0, H = 0, D = 0, Tq = 0;
  AttnOperand out;              // (B, Tq, H*D): one part on entry, the merged result on exit
  void* lse = nullptr;          // (B, H, Tq), stat_dtype(dtype): likewise
  AttnOperand part;             // (B, Tq, H*D) the other part
  const void* part_lse = nullptr;  // (B, H, Tq)
};
// The merge of `part`'s result (its out and lse) into `into`'s: the same queries, other keys.
AttentionMergeArgs attention_merge_args(const AttentionArgs& into, const AttentionArgs& part);
// Fails on a bad shape or a null operand; every backend's attention_merge checks with it.
void check_attention_merge(const AttentionMergeArgs& a);

// Bytes allocated through the backend: now, the high-water mark since the last reset, and the
// device's own high-water mark where the backend can read one (-1 otherwise).
struct MemoryStats {
  int64_t current_bytes = 0;
  int64_t peak_bytes = 0;
  int64_t device_peak_bytes = -1;
};

// The device's state over a timed region, sampled on the side (CUDA: NVML). A card held at its
// power limit runs below its top clock, so a step runs slower than its kernels timed alone in
// short bursts (as the analytic bound and kernel benchmarks time them).
struct DeviceState {
  int64_t samples = 0;
  double period_ms = 0;
  double sm_clock_mhz_median = 0, sm_clock_mhz_min = 0;
  double sm_clock_mhz_max = 0;       // the device's top SM clock
  double power_w_median = 0;         // the driver's power reading (its own moving average)
  double power_limit_w = 0;          // the enforced limit
  double power_capped_fraction = 0;  // of samples: the software power cap held the clocks down
  double slowdown_fraction = 0;      // of samples: a thermal or hardware slowdown
  // The device's energy over the region from the driver's cumulative counter (region_energy
  // below); < 0 where the driver has no counter, or its updates in the region span less than
  // kMinEnergyWindowS.
  double energy_j = -1;
  double mean_power_w = 0;      // energy_j / region_s
  double region_s = 0;          // the region's wall time
  double energy_window_s = 0;   // between the counter's first and last update seen in the region
  int64_t energy_updates = -1;  // the counter's updates seen in the region; -1: no counter
};

// The energy counter's readings over a region: seconds since the region started, and the
// counter's value (mJ). The first reading is taken as the region starts.
struct EnergyReading {
  double t_s = 0;
  double mj = 0;
};
// The driver updates its energy counter only every few tens of milliseconds, so the plain
// difference of the readings at a region's start and end covers a window shifted and stretched
// by up to one update period (±20% over a 0.35 s region on an H200). The mean power is taken
// between the first and the last update seen inside the region (energy_window_s), and energy_j =
// that power × region_s. But the value an update shows is not the energy up to the moment it is
// seen: on 2 × H200 the updates came 48-125 ms apart, and one 48 ms window read 1680 W on a card
// capped at 700. So the window must be long against that jitter: energy only where it spans
// kMinEnergyWindowS (energy_j < 0 otherwise, energy_window_s and energy_updates say why); an
// empty list: no counter (energy_updates = -1).
void region_energy(const std::vector<EnergyReading>& readings, double region_s, DeviceState& st);
// The shortest span of counter updates an energy is taken over. Of the committed readings of
// H200s held at their power cap (results/ when it was set), none of the 194 over
// a window of 0.8 s or more read above 1.06 of the cap; of the 312 under 0.6 s, 27 read above
// 1.08 and one 2.4.
inline constexpr double kMinEnergyWindowS = 0.8;

// One reading of a device monitor.
struct DeviceSample {
  double sm_clock_mhz = 0, power_w = 0;
  bool power_capped = false, slowdown = false;
};
// The summary of a region's readings (medians of the middle two for an even count); the device's
// top clock and power limit are passed through. Empty `samples`: samples == 0 and zeros.
DeviceState summarize_device_samples(const std::vector<DeviceSample>& samples, double period_ms,
                                     double sm_clock_mhz_max, double power_limit_w);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // One-line description of the device(s) this backend runs on.
  virtual std::string device_name() const = 0;

  // ---- memory (accounting is done here, storage by the backend) ----
  Buffer alloc(DType dtype, int64_t numel);
  Buffer alloc_zeroed(DType dtype, int64_t numel);
  // A buffer that a sequence-group all-gather reads or writes. From `symmetric` memory once
  // use_symmetric_memory() has set one (--copy-engine-gathers), else as alloc(). Collective over
  // that group when a new block is needed, so its ranks call it for the same sizes in the same
  // order (the strategies' gathers are shaped alike on every rank).
  Buffer alloc_symmetric(DType dtype, int64_t numel);
  // Where alloc_symmetric takes its blocks from (null: alloc). The backend caches released blocks
  // for reuse and never frees them: `memory` owns them. Unset it before `memory` goes away.
  virtual void use_symmetric_memory(SymmetricMemory* memory);
  MemoryStats memory_stats() const;
  void reset_peak() { peak_bytes_ = current_bytes_; }

  // ---- data movement ----
  // Host <-> backend copies with conversion between element types (host side: f32, f64, i32).
  virtual void copy_from_host(View dst, const void* src, DType src_dtype) = 0;
  virtual void copy_to_host(void* dst, DType dst_dtype, View src) = 0;
  virtual void copy(View dst, View src) = 0;  // same numel; converts when the dtypes differ
  virtual void fill_zero(View dst) = 0;
  virtual void synchronize() {}

  // ---- timing ----
  // A point in the backend's stream of work. seconds_between(a, b) is the time from a to b as the
  // device saw it (device events on cuda, waiting for b); the CPU backend's work is synchronous,
  // so its markers are host steady_clock readings.
  struct Marker {
    double host_s = 0;
    std::shared_ptr<void> device;  // backend-specific (a cudaEvent_t holder on cuda)
  };
  virtual Marker mark();
  virtual double seconds_between(const Marker& a, const Marker& b);

  // ---- dense algebra ----
  virtual void gemm(const GemmArgs& args) = 0;
  // GEMMs enqueued after this plan for the device's SMs less `sms`, which a collective running
  // beside them holds (0: every SM); UsageError outside [0, SMs). A backend without such a choice
  // ignores it.
  virtual void reserve_sms(int sms) { (void)sms; }
  // y (n) += alpha * x (n)
  virtual void axpy(View y, View x, double alpha) = 0;
  // out (n) = a (n) + b (n); out may alias a or b
  virtual void add(View out, View a, View b) = 0;
  // db (n) += column sums of dy (rows x n): the bias gradient of a linear layer.
  virtual void bias_grad(View db, View dy, int64_t rows, int64_t n) = 0;

  // ---- model operations ----
  // out (N, C), row n = t*B + b: wte[tokens[n]] + wpe_rows[t], for N = Tl*B rows.
  virtual void embedding_forward(View out, View tokens, View wte, View wpe_rows, int64_t Tl,
                                 int64_t B, int64_t C) = 0;
  // dwte[tokens[n]] += dout[n]; dwpe_rows[t] += sum over b of dout[t*B + b]. accumulate.
  virtual void embedding_backward(View dwte, View dwpe_rows, View dout, View tokens, int64_t Tl,
                                  int64_t B, int64_t C) = 0;
  // out (N, C) = (x - mean) * rstd * weight + bias, eps inside the sqrt; mean, rstd (N) written.
  virtual void layernorm_forward(View out, View mean, View rstd, View x, View weight, View bias,
                                 int64_t N, int64_t C, double eps) = 0;
  // dx (N, C) += dL/dx; dweight, dbias (C) += ...  (all accumulate)
  virtual void layernorm_backward(View dx, View dweight, View dbias, View dout, View x,
                                  View mean, View rstd, View weight, int64_t N, int64_t C) = 0;
  // out = gelu_tanh(in) elementwise; out may alias in.
  virtual void gelu_forward(View out, View in) = 0;
  // din = dout * gelu_tanh'(in); din may alias dout.
  virtual void gelu_backward(View din, View dout, View in) = 0;
  virtual void attention_forward(const AttentionArgs& args) = 0;
  virtual void attention_backward(const AttentionArgs& args) = 0;
  virtual void attention_merge(const AttentionMergeArgs& args) = 0;
  // Softmax cross-entropy of logits (N, V) against targets (N, int32). Writes the sum over rows
  // of -log softmax(logits)[target] into loss_sum (one fp64 element on the device: no host
  // synchronisation), and overwrites logits with its gradient (softmax - onehot) * grad_scale.
  virtual void cross_entropy_fused(View logits, View targets, View loss_sum, int64_t N, int64_t V,
                                   double grad_scale) = 0;
  // Decoupled AdamW on one tensor: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
  // p -= lr * (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + weight_decay * p).
  // param, grad, m, v share one dtype (the master dtype); param_copy, when not empty, receives
  // the updated parameter converted to its own dtype (the bf16 working copy of fp32 masters).
  // With decay_runs, one call steps several tensors laid end to end, each with its own weight
  // decay: the runs cover param in order (their numel add up to param's) and weight_decay is
  // unused.
  struct DecayRun {
    int64_t numel;
    double weight_decay;
  };
  struct AdamW {
    double lr, beta1, beta2, eps, weight_decay;
    int64_t step;  // 1-based
    View param_copy{};
    std::vector<DecayRun> decay_runs{};
  };
  virtual void adamw(View param, View grad, View m, View v, const AdamW& hp) = 0;

  // ---- a second lane of work ----
  // Work enqueued between begin_side_work() and end_side_work() runs on a second lane, after all
  // work enqueued before begin_side_work() and beside the work enqueued on the main lane after it;
  // join_side_work() orders the main lane's later work after all side work so far. The side lane
  // is for elementwise kernels on long-lived buffers (the optimizer stepping a layer's
  // parameters while backward goes on): nothing may be allocated, timed or synchronized inside.
  // The CPU backend runs everything at once, in order: there these do nothing.
  virtual void begin_side_work() {}
  virtual void end_side_work() {}
  virtual void join_side_work() {}

  // ---- device state ----
  // Starts sampling the device's clocks and power; stop returns their summary, or nullopt where
  // the backend cannot read them (the CPU backend, a machine without NVML).
  virtual void start_device_sampling() {}
  virtual std::optional<DeviceState> stop_device_sampling() { return std::nullopt; }

  // ---- step trace (lssbench run --trace) ----
  // Between begin_trace() and end_trace() every operation above records a span: when its work
  // began and ended on the lane it ran on, as the device saw it, in seconds from begin_trace().
  // An operation inside another's span (gemm_in_passes' copies) is not recorded again.
  // Collectives and the step's phases add theirs with add_trace_span.
  struct TraceSpan {
    std::string name;    // the operation, collective or phase: "gemm", "all_gather", "forward"
    std::string lane;    // "compute", "side" (begin_side_work), "comm" (the collectives' lane) or "phase"
    std::string detail;  // shapes; for a collective what it is for, its group and bytes
    double begin_s = 0, end_s = 0;
    std::string label = {};  // a collective and its wait: what it is for (CommLabel), else empty
  };
  void begin_trace();
  // The spans recorded since begin_trace(), in the order they were added (waits for the device).
  std::vector<TraceSpan> end_trace();
  bool tracing() const { return trace_ != nullptr; }
  // The marker begin_trace() made: the origin of every span's times.
  const Marker& trace_origin() const;
  // A span between two markers made since begin_trace(); its times are read at end_trace().
  void add_trace_span(std::string name, std::string lane, std::string detail, Marker begin, Marker end,
                      std::string label = {});
  // A span whose times are known already (a communicator's, read from its own events).
  void add_trace_span(TraceSpan span);

 protected:
  // A marker on the lane the next work goes to (main or side) and that lane's name, for spans.
  virtual Marker mark_lane() { return mark(); }
  virtual const char* lane_name() const { return "compute"; }
  // One operation's span while tracing (nothing otherwise): a backend opens one at the top of
  // each operation. `detail` (a callable returning the span's detail string) runs only while tracing.
  class OpSpan {
   public:
    template <class Detail>
    OpSpan(Backend& be, const char* name, Detail&& detail) {
      if (!be.tracing()) return;
      be_ = &be;
      if (be.trace_depth_++ > 0) return;
      outer_ = true;
      name_ = name;
      detail_ = detail();
      begin_ = be.mark_lane();
      exceptions_ = std::uncaught_exceptions();
    }
    OpSpan(Backend& be, const char* name) : OpSpan(be, name, [] { return std::string(); }) {}
    OpSpan(const OpSpan&) = delete;
    OpSpan& operator=(const OpSpan&) = delete;
    ~OpSpan();

   private:
    Backend* be_ = nullptr;
    bool outer_ = false;
    const char* name_ = "";
    std::string detail_;
    Marker begin_;
    int exceptions_ = 0;
  };
  virtual void* raw_alloc(size_t bytes) = 0;
  virtual void raw_free(void* ptr, size_t bytes) = 0;
  // From the memory use_symmetric_memory set (freed through raw_free). Backends that take none
  // keep alloc()'s storage.
  virtual void* raw_alloc_symmetric(size_t bytes) { return raw_alloc(bytes); }
  virtual int64_t device_peak_bytes() const { return -1; }

 private:
  friend class Buffer;
  Buffer allocate(DType dtype, int64_t numel, bool symmetric);
  void release(View& v);
  int64_t current_bytes_ = 0;
  int64_t peak_bytes_ = 0;
  // The trace in progress (null when not tracing): its origin and its spans, some still markers.
  struct PendingSpan {
    TraceSpan span;
    Marker begin, end;  // unset for a span added with its times
    bool resolved = false;
  };
  struct Trace {
    Marker origin;
    std::vector<PendingSpan> spans;
  };
  std::unique_ptr<Trace> trace_;
  int trace_depth_ = 0;  // open OpSpans
};

// Short descriptions of an operation's shape for trace spans.
std::string describe(const GemmArgs& g);
std::string describe(const AttentionArgs& a);

// Fails unless hp's decay runs (if any) cover param's numel elements in order.
void check_decay_runs(const Backend::AdamW& hp, int64_t numel);
// Calls step(param, grad, m, v, hp) once per decay run of hp, on the run's slices with its weight
// decay and no runs (once with hp itself when it has none): for a backend whose AdamW takes one
// weight decay a call.
template <class Step>
void for_each_decay_run(View param, View grad, View m, View v, const Backend::AdamW& hp, Step&& step) {
  check_decay_runs(hp, param.numel);
  if (hp.decay_runs.empty()) {
    step(param, grad, m, v, hp);
    return;
  }
  int64_t at = 0;
  for (const Backend::DecayRun& run : hp.decay_runs) {
    Backend::AdamW one{hp.lr, hp.beta1, hp.beta2, hp.eps, run.weight_decay, hp.step,
                       hp.param_copy.numel ? hp.param_copy.slice(at, run.numel) : View{}};
    step(param.slice(at, run.numel), grad.slice(at, run.numel), m.slice(at, run.numel), v.slice(at, run.numel), one);
    at += run.numel;
  }
}

struct BackendOptions {
  std::string name = "cpu";        // "cpu" | "cuda"
  int threads = 1;                 // host threads (cpu)
  int device = 0;                  // device ordinal (cuda)
  std::string attention = "auto";  // cuda: "auto" | "cudnn" | "flash"
};

// The backend the options name; throws UsageError for unknown or unavailable ones.
std::unique_ptr<Backend> make_backend(const BackendOptions& options);

}  // namespace lss
