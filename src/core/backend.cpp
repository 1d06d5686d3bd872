#include "core/backend.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include <fmt/format.h>

#include "core/check.h"
#include "kernels/cpu/cpu_backend.h"
#ifdef LSS_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace lss {

View View::slice(int64_t offset, int64_t count) const {
  LSS_CHECK(offset >= 0 && count >= 0 && offset + count <= numel,
            "slice [" + std::to_string(offset) + ", +" + std::to_string(count) +
                ") outside a view of " + std::to_string(numel) + " elements");
  View v = *this;
  v.ptr = static_cast<char*>(ptr) + static_cast<size_t>(offset) * dtype_size(dtype);
  v.numel = count;
  return v;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    reset();
    backend_ = std::exchange(o.backend_, nullptr);
    view_ = std::exchange(o.view_, View{});
  }
  return *this;
}

void Buffer::reset() {
  if (backend_ && view_.ptr) backend_->release(view_);
  backend_ = nullptr;
  view_ = View{};
}

Buffer Backend::alloc(DType dtype, int64_t numel) { return allocate(dtype, numel, false); }

Buffer Backend::alloc_symmetric(DType dtype, int64_t numel) { return allocate(dtype, numel, true); }

Buffer Backend::allocate(DType dtype, int64_t numel, bool symmetric) {
  LSS_CHECK(numel >= 0, "negative allocation size " + std::to_string(numel));
  View v;
  v.dtype = dtype;
  v.numel = numel;
  // Zero-sized buffers still get a distinct pointer so views stay valid.
  const size_t bytes = std::max<size_t>(v.bytes(), 1);
  v.ptr = symmetric ? raw_alloc_symmetric(bytes) : raw_alloc(bytes);
  current_bytes_ += static_cast<int64_t>(v.bytes());
  if (current_bytes_ > peak_bytes_) peak_bytes_ = current_bytes_;
  return Buffer(this, v);
}

void Backend::use_symmetric_memory(SymmetricMemory* memory) {
  LSS_CHECK(memory == nullptr, std::string("the ") + name() + " backend has no symmetric memory (copy-engine collectives need cuda)");
}

Buffer Backend::alloc_zeroed(DType dtype, int64_t numel) {
  Buffer b = alloc(dtype, numel);
  fill_zero(b.view());
  return b;
}

void Backend::release(View& v) {
  raw_free(v.ptr, std::max<size_t>(v.bytes(), 1));
  current_bytes_ -= static_cast<int64_t>(v.bytes());
}

Backend::Marker Backend::mark() {
  synchronize();
  Marker m;
  m.host_s = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  return m;
}

double Backend::seconds_between(const Marker& a, const Marker& b) { return b.host_s - a.host_s; }

void Backend::begin_trace() {
  LSS_CHECK(!tracing(), "begin_trace: a trace is in progress");
  trace_ = std::make_unique<Trace>();
  trace_->origin = mark();
  trace_depth_ = 0;
}

const Backend::Marker& Backend::trace_origin() const {
  LSS_CHECK(tracing(), "trace_origin: no trace in progress");
  return trace_->origin;
}

void Backend::add_trace_span(std::string name, std::string lane, std::string detail, Marker begin, Marker end,
                             std::string label) {
  LSS_CHECK(tracing(), "add_trace_span: no trace in progress");
  TraceSpan span{std::move(name), std::move(lane), std::move(detail)};
  span.label = std::move(label);
  trace_->spans.push_back({std::move(span), std::move(begin), std::move(end), false});
}

void Backend::add_trace_span(TraceSpan span) {
  LSS_CHECK(tracing(), "add_trace_span: no trace in progress");
  trace_->spans.push_back({std::move(span), {}, {}, true});
}

std::vector<Backend::TraceSpan> Backend::end_trace() {
  LSS_CHECK(tracing(), "end_trace: no trace in progress");
  LSS_CHECK(trace_depth_ == 0, "end_trace: an operation's span is still open");
  std::unique_ptr<Trace> trace = std::move(trace_);
  std::vector<TraceSpan> out;
  out.reserve(trace->spans.size());
  for (PendingSpan& p : trace->spans) {
    if (!p.resolved) {
      p.span.begin_s = seconds_between(trace->origin, p.begin);
      p.span.end_s = seconds_between(trace->origin, p.end);
    }
    out.push_back(std::move(p.span));
  }
  return out;
}

Backend::OpSpan::~OpSpan() {
  if (!be_) return;
  --be_->trace_depth_;
  // An operation left by an exception has no end to record.
  if (!outer_ || std::uncaught_exceptions() > exceptions_ || !be_->tracing()) return;
  be_->add_trace_span(name_, be_->lane_name(), std::move(detail_), std::move(begin_), be_->mark_lane());
}

std::string describe(const GemmArgs& g) {
  return fmt::format("{}x{}x{}{}{}{}", g.m, g.n, g.k,
                     g.epilogue == GemmEpilogue::gelu            ? " +gelu"
                     : g.epilogue == GemmEpilogue::gelu_backward ? " +dgelu"
                                                                 : "",
                     g.bias ? " +bias" : "", g.c_in || g.beta != 0.0 ? " +C" : "");
}

std::string describe(const AttentionArgs& a) {
  return fmt::format("B{} H{} D{} q{} k{}{}{}", a.B, a.H, a.D, a.Tq, a.Tk, a.causal ? " causal" : "",
                     a.q_offset ? fmt::format(" q_offset {}", a.q_offset) : std::string());
}

MemoryStats Backend::memory_stats() const {
  MemoryStats s;
  s.current_bytes = current_bytes_;
  s.peak_bytes = peak_bytes_;
  s.device_peak_bytes = device_peak_bytes();
  return s;
}

AttentionMergeArgs attention_merge_args(const AttentionArgs& into, const AttentionArgs& part) {
  AttentionMergeArgs m;
  m.dtype = into.dtype;
  m.B = into.B;
  m.H = into.H;
  m.D = into.D;
  m.Tq = into.Tq;
  m.out = into.out;
  m.lse = into.lse;
  m.part = part.out;
  m.part_lse = part.lse;
  return m;
}

void check_attention_merge(const AttentionMergeArgs& a) {
  LSS_CHECK(a.B >= 0 && a.H >= 0 && a.D > 0 && a.Tq >= 0 && a.out.ptr && a.part.ptr && a.lse && a.part_lse &&
                a.out.row_stride >= a.H * a.D && a.part.row_stride >= a.H * a.D,
            "attention_merge: bad shape or null operand (B=" + std::to_string(a.B) + " H=" + std::to_string(a.H) +
                " D=" + std::to_string(a.D) + " Tq=" + std::to_string(a.Tq) + ")");
}

void check_gemm_extras(const GemmArgs& g) {
  const bool gelu = g.epilogue != GemmEpilogue::none;
  if (!gelu && !g.c_in) return;
  LSS_CHECK(g.ldc == g.n, "gemm: c_in or an epilogue needs a contiguous C (ldc " + std::to_string(g.ldc) +
                              " != n " + std::to_string(g.n) + ")");
  LSS_CHECK(g.c_dtype == g.dtype, std::string("gemm: c_in or an epilogue needs C in A's dtype (C ") +
                                      dtype_name(g.c_dtype) + ", A " + dtype_name(g.dtype) + ")");
  LSS_CHECK(!gelu || g.aux != nullptr, "gemm: a gelu epilogue without its aux matrix");
  LSS_CHECK(g.epilogue != GemmEpilogue::gelu_backward || g.bias == nullptr,
            "gemm: the gelu_backward epilogue takes no bias");
  LSS_CHECK(!gelu || (g.aux != g.c && g.aux != g.c_in), "gemm: the epilogue's aux aliases C or C_in");
}

void check_decay_runs(const Backend::AdamW& hp, int64_t numel) {
  if (hp.decay_runs.empty()) return;
  int64_t total = 0;
  for (const Backend::DecayRun& run : hp.decay_runs) {
    LSS_CHECK(run.numel >= 0, "adamw: a decay run of " + std::to_string(run.numel) + " elements");
    total += run.numel;
  }
  LSS_CHECK(total == numel, "adamw: decay runs of " + std::to_string(total) + " elements for a tensor of " +
                                std::to_string(numel));
}

void gemm_in_passes(Backend& be, const GemmArgs& g) {
  check_gemm_extras(g);
  const int64_t n = g.m * g.n;
  const auto whole = [&](const void* p) { return View{const_cast<void*>(p), g.c_dtype, n}; };
  // The plain GEMM writes Z where the epilogue wants it: aux for gelu, C otherwise.
  GemmArgs plain = g;
  plain.c_in = nullptr;
  plain.epilogue = GemmEpilogue::none;
  plain.aux = nullptr;
  if (g.epilogue == GemmEpilogue::gelu) plain.c = g.aux;
  const void* beta_src = g.c_in ? g.c_in : g.c;
  if (g.beta != 0.0 && beta_src != plain.c && n > 0) be.copy(whole(plain.c), whole(beta_src));
  be.gemm(plain);
  if (g.epilogue == GemmEpilogue::gelu) be.gelu_forward(whole(g.c), whole(g.aux));
  if (g.epilogue == GemmEpilogue::gelu_backward) be.gelu_backward(whole(g.c), whole(g.c), whole(g.aux));
}

DeviceState summarize_device_samples(const std::vector<DeviceSample>& samples, double period_ms,
                                     double sm_clock_mhz_max, double power_limit_w) {
  DeviceState st;
  st.period_ms = period_ms;
  st.sm_clock_mhz_max = sm_clock_mhz_max;
  st.power_limit_w = power_limit_w;
  if (samples.empty()) return st;
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  };
  std::vector<double> clocks, power;
  int64_t capped = 0, slowed = 0;
  for (const DeviceSample& s : samples) {
    clocks.push_back(s.sm_clock_mhz);
    power.push_back(s.power_w);
    capped += s.power_capped;
    slowed += s.slowdown;
  }
  st.samples = static_cast<int64_t>(samples.size());
  st.sm_clock_mhz_median = median(clocks);
  st.sm_clock_mhz_min = *std::min_element(clocks.begin(), clocks.end());
  st.power_w_median = median(power);
  st.power_capped_fraction = static_cast<double>(capped) / static_cast<double>(st.samples);
  st.slowdown_fraction = static_cast<double>(slowed) / static_cast<double>(st.samples);
  return st;
}

void region_energy(const std::vector<EnergyReading>& readings, double region_s, DeviceState& st) {
  st.region_s = region_s;
  st.energy_j = -1;
  st.mean_power_w = 0;
  st.energy_window_s = 0;
  st.energy_updates = readings.empty() ? -1 : 0;
  // An update is a reading that differs from the one before it; the first reading, taken as the
  // region started, marks no update (the counter may have moved just before it).
  const EnergyReading* first = nullptr;
  const EnergyReading* last = nullptr;
  for (size_t i = 1; i < readings.size(); ++i) {
    if (readings[i].mj == readings[i - 1].mj) continue;
    ++st.energy_updates;
    if (first == nullptr) first = &readings[i];
    last = &readings[i];
  }
  if (st.energy_updates < 2 || last->t_s <= first->t_s || last->mj < first->mj) return;
  st.energy_window_s = last->t_s - first->t_s;
  if (st.energy_window_s < kMinEnergyWindowS) return;
  st.mean_power_w = (last->mj - first->mj) * 1e-3 / st.energy_window_s;
  st.energy_j = st.mean_power_w * region_s;
}

DType parse_dtype(const std::string& s, const std::string& option) {
  if (s == "fp32") return DType::f32;
  if (s == "fp64") return DType::f64;
  if (s == "bf16") return DType::bf16;
  throw UsageError(option + ": unknown value '" + s + "' (expected fp32, fp64 or bf16)");
}

std::unique_ptr<Backend> make_backend(const BackendOptions& o) {
  if (o.attention != "auto" && o.attention != "cudnn" && o.attention != "flash")
    throw UsageError("--attention: unknown value '" + o.attention + "' (expected auto, cudnn or flash)");
  if (o.name == "cpu") return make_cpu_backend(o.threads);
  if (o.name == "cuda") {
#ifdef LSS_HAVE_CUDA
    const int devices = cuda_device_count();
    if (devices == 0) throw UsageError("--backend cuda: no CUDA device is visible to this process");
    if (o.device >= devices)
      throw UsageError("--backend cuda: this node has " + std::to_string(devices) + " CUDA devices but " +
                       std::to_string(o.device + 1) + " ranks on it; start at most one rank per GPU");
    return make_cuda_backend(CudaBackendOptions{o.device, o.attention});
#else
    throw UsageError("--backend cuda: this build has no CUDA backend (nvcc was not found at configure time)");
#endif
  }
  throw UsageError("--backend: unknown value '" + o.name + "' (expected cpu or cuda)");
}

}  // namespace lss
