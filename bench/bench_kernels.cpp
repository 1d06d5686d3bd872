// Kernel micro-benchmarks through the backend interface: attention forward and backward over T
// and D, the model's GEMM shapes, the MLP's linear layers plain and with the step's fusions,
// LayerNorm forward and backward, GELU, cross-entropy, the merge of two attention results. Times
// are the backend's own markers (device events on cuda); FLOP and byte rates are user counters.
//   bench_kernels [--backend=cpu|cuda] [--attention=auto|cudnn|flash] [--dtype=..] [--large]
//                 [Google Benchmark flags, e.g. --benchmark_format=json --benchmark_out=FILE]
#include <cmath>

#include "bench/bench_common.h"
#include "lss_git_commit.h"
#include "model/layers.h"

namespace lss::bench {
namespace {

Settings g_settings;
std::unique_ptr<Backend> g_backend;

// Runs `body` once per iteration between two markers and reports that time.
template <class F>
void timed_loop(benchmark::State& state, F&& body) {
  body();  // warm-up (graph building, caches)
  for (auto _ : state) {
    const auto a = g_backend->mark();
    body();
    const auto b = g_backend->mark();
    state.SetIterationTime(g_backend->seconds_between(a, b));
  }
}

void attention(benchmark::State& state, bool backward) {
  const int64_t T = state.range(0), D = state.range(1);
  const bool causal = state.range(2) != 0;
  const int64_t B = 1, H = g_settings.large ? 16 : 2, C = H * D;
  const DType dt = bench_dtype(g_settings);
  Buffer qkv = random_buffer(*g_backend, dt, T * B * 3 * C, 1);   // (T, B, 3C)
  Buffer out = g_backend->alloc(dt, T * B * C);                    // (T, B, C)
  Buffer lse = g_backend->alloc(stat_dtype(dt), B * H * T);        // (B, H, T)
  Buffer dout = random_buffer(*g_backend, dt, T * B * C, 2);       // (T, B, C)
  Buffer dqkv = g_backend->alloc(dt, T * B * 3 * C);               // (T, B, 3C)
  AttentionArgs a;
  a.dtype = dt;
  a.B = B;
  a.H = H;
  a.D = D;
  a.Tq = a.Tk = T;
  a.causal = causal;
  a.scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto* q = static_cast<char*>(qkv.ptr());
  auto* d = static_cast<char*>(dqkv.ptr());
  const int64_t es = static_cast<int64_t>(dtype_size(dt));
  a.q = {q, 3 * C, B * 3 * C};
  a.k = {q + C * es, 3 * C, B * 3 * C};
  a.v = {q + 2 * C * es, 3 * C, B * 3 * C};
  a.out = {out.ptr(), C, B * C};
  a.lse = lse.ptr();
  a.dout = {dout.ptr(), C, B * C};
  a.dq = {d, 3 * C, B * 3 * C};
  a.dk = {d + C * es, 3 * C, B * 3 * C};
  a.dv = {d + 2 * C * es, 3 * C, B * 3 * C};
  g_backend->attention_forward(a);
  timed_loop(state, [&] {
    g_backend->attention_forward(a);
    if (backward) g_backend->attention_backward(a);
  });
  // FLOPs: 4*B*H*T^2*D forward (halved for causal), x3.5 for forward + backward.
  const double fwd = 4.0 * B * H * static_cast<double>(T) * T * D * (causal ? 0.5 : 1.0);
  state.counters["TFLOP/s"] =
      benchmark::Counter((backward ? 3.5 * fwd : fwd) / 1e12, benchmark::Counter::kIsIterationInvariantRate);
}

void gemm(benchmark::State& state) {
  const int64_t M = state.range(0), N = state.range(1), K = state.range(2);
  const DType dt = bench_dtype(g_settings);
  Buffer a = random_buffer(*g_backend, dt, M * K, 3), b = random_buffer(*g_backend, dt, N * K, 4);
  Buffer c = g_backend->alloc(dt, M * N);
  GemmArgs g;
  g.dtype = g.c_dtype = dt;
  g.trans_b = true;  // y = x W^T, as a linear layer
  g.m = M;
  g.n = N;
  g.k = K;
  g.a = a.ptr();
  g.lda = K;
  g.b = b.ptr();
  g.ldb = K;
  g.c = c.ptr();
  g.ldc = N;
  timed_loop(state, [&] { g_backend->gemm(g); });
  state.counters["TFLOP/s"] = benchmark::Counter(2.0 * M * N * K / 1e12, benchmark::Counter::kIsIterationInvariantRate);
}

// A linear layer of the MLP as the step runs it (model/layers.h), plain and with each fusion:
// kind 0 forward y = x W^T + b, 1 forward with GELU and its pre-activation, 2 forward with the
// residual, 3 the data gradient dx = dy W, 4 the data gradient through GELU's derivative.
void linear_fused(benchmark::State& state) {
  const int64_t M = state.range(0), in = state.range(1), out = state.range(2), kind = state.range(3);
  const DType dt = bench_dtype(g_settings);
  Buffer x = random_buffer(*g_backend, dt, M * in, 3), w = random_buffer(*g_backend, dt, out * in, 4);
  Buffer bias = random_buffer(*g_backend, dt, out, 5), dy = random_buffer(*g_backend, dt, M * out, 6);
  Buffer residual = random_buffer(*g_backend, dt, M * out, 7), x_pre = random_buffer(*g_backend, dt, M * in, 8);
  Buffer y = g_backend->alloc(dt, M * out), pre = g_backend->alloc(dt, M * out);  // (M, out) each
  Buffer dx = g_backend->alloc(dt, M * in);                                         // (M, in)
  timed_loop(state, [&] {
    if (kind == 0) linear_forward(*g_backend, y.view(), x.view(), w.view(), bias.view(), M, in, out);
    if (kind == 1) linear_gelu_forward(*g_backend, y.view(), pre.view(), x.view(), w.view(), bias.view(), M, in, out);
    if (kind == 2) linear_forward(*g_backend, y.view(), x.view(), w.view(), bias.view(), M, in, out, residual.view());
    if (kind >= 3)
      linear_backward(*g_backend, dx.view(), 0.0, View{}, View{}, dy.view(), x.view(), w.view(), M, in, out,
                      kind == 4 ? x_pre.view() : View{});
  });
  state.counters["TFLOP/s"] = benchmark::Counter(2.0 * M * in * out / 1e12, benchmark::Counter::kIsIterationInvariantRate);
}

void layernorm_backward(benchmark::State& state) {
  const int64_t N = state.range(0), C = state.range(1);
  const DType dt = bench_dtype(g_settings), gd = dt == DType::bf16 ? DType::f32 : dt;
  Buffer x = random_buffer(*g_backend, dt, N * C, 5), w = random_buffer(*g_backend, dt, C, 6),
         bias = random_buffer(*g_backend, dt, C, 7), dout = random_buffer(*g_backend, dt, N * C, 8);
  Buffer y = g_backend->alloc(dt, N * C), mean = g_backend->alloc(stat_dtype(dt), N),
         rstd = g_backend->alloc(stat_dtype(dt), N), dx = random_buffer(*g_backend, dt, N * C, 9);
  Buffer dw = g_backend->alloc_zeroed(gd, C), db = g_backend->alloc_zeroed(gd, C);
  g_backend->layernorm_forward(y.view(), mean.view(), rstd.view(), x.view(), w.view(), bias.view(), N, C, 1e-5);
  timed_loop(state, [&] {
    g_backend->layernorm_backward(dx.view(), dw.view(), db.view(), dout.view(), x.view(), mean.view(), rstd.view(),
                                  w.view(), N, C);
  });
  // Reads dout, x and dx, writes dx.
  state.counters["GB/s"] = benchmark::Counter(4.0 * N * C * dtype_size(dt) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void layernorm(benchmark::State& state) {
  const int64_t N = state.range(0), C = state.range(1);
  const DType dt = bench_dtype(g_settings);
  Buffer x = random_buffer(*g_backend, dt, N * C, 5), w = random_buffer(*g_backend, dt, C, 6),
         bias = random_buffer(*g_backend, dt, C, 7);
  Buffer y = g_backend->alloc(dt, N * C), mean = g_backend->alloc(stat_dtype(dt), N),
         rstd = g_backend->alloc(stat_dtype(dt), N);
  timed_loop(state, [&] { g_backend->layernorm_forward(y.view(), mean.view(), rstd.view(), x.view(), w.view(), bias.view(), N, C, 1e-5); });
  state.counters["GB/s"] = benchmark::Counter(2.0 * N * C * dtype_size(dt) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void gelu(benchmark::State& state) {
  const int64_t n = state.range(0);
  const DType dt = bench_dtype(g_settings);
  Buffer x = random_buffer(*g_backend, dt, n, 8), y = g_backend->alloc(dt, n);
  timed_loop(state, [&] { g_backend->gelu_forward(y.view(), x.view()); });
  state.counters["GB/s"] = benchmark::Counter(2.0 * n * dtype_size(dt) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void cross_entropy(benchmark::State& state) {
  const int64_t N = state.range(0), V = 256;
  const DType dt = bench_dtype(g_settings);
  Buffer logits = random_buffer(*g_backend, dt, N * V, 9);
  std::vector<int32_t> t(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) t[i] = static_cast<int32_t>((i * 37) % V);
  Buffer targets = g_backend->alloc(DType::i32, N), sum = g_backend->alloc(DType::f64, 1);
  g_backend->copy_from_host(targets.view(), t.data(), DType::i32);
  // The fused loss overwrites the logits with their gradient: the values stay bounded, so
  // repeating it measures the same work.
  timed_loop(state, [&] { g_backend->cross_entropy_fused(logits.view(), targets.view(), sum.view(), N, V, 1.0); });
  state.counters["GB/s"] = benchmark::Counter(2.0 * N * V * dtype_size(dt) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Two attention results of the same rows merged by their log-sum-exp (lss's split causal blocks:
// the diagonal block's out and lse, and those of its queries against the keys before it), in the
// model's (Tq, B, H*D) layout, in place as lss runs it. Repeated merges keep the values bounded
// (each row is a convex combination of the two). GB/s: both outputs and both lse read, the merged
// output and lse written.
void attention_merge(benchmark::State& state) {
  const int64_t Tq = state.range(0), H = state.range(1), D = state.range(2), B = 1, C = H * D;
  const DType dt = bench_dtype(g_settings);
  Buffer out = random_buffer(*g_backend, dt, Tq * B * C, 10);                // (Tq, B, C)
  Buffer part = random_buffer(*g_backend, dt, Tq * B * C, 11);               // (Tq, B, C)
  Buffer lse = random_buffer(*g_backend, stat_dtype(dt), B * H * Tq, 12);    // (B, H, Tq)
  Buffer part_lse = random_buffer(*g_backend, stat_dtype(dt), B * H * Tq, 13);  // (B, H, Tq)
  const AttentionMergeArgs a{.dtype = dt, .B = B, .H = H, .D = D, .Tq = Tq,
                             .out = {out.ptr(), C, B * C}, .lse = lse.ptr(),
                             .part = {part.ptr(), C, B * C}, .part_lse = part_lse.ptr()};
  timed_loop(state, [&] { g_backend->attention_merge(a); });
  const double bytes = 3.0 * Tq * B * C * dtype_size(dt) + 3.0 * B * H * Tq * dtype_size(stat_dtype(dt));
  state.counters["GB/s"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void register_all() {
  const bool L = g_settings.large;
  auto* fwd = benchmark::RegisterBenchmark("attention_fwd", [](benchmark::State& s) { attention(s, false); });
  auto* fb = benchmark::RegisterBenchmark("attention_fwd_bwd", [](benchmark::State& s) { attention(s, true); });
  for (auto* b : {fwd, fb}) {
    b->ArgNames({"T", "D", "causal"})->UseManualTime()->Unit(benchmark::kMillisecond);
    for (int64_t T : L ? std::vector<int64_t>{4096, 16384, 65536} : std::vector<int64_t>{256, 1024})
      for (int64_t D : {64, 128})
        for (int64_t causal : {1, 0}) b->Args({T, D, causal});
  }
  auto* g = benchmark::RegisterBenchmark("gemm_linear", gemm);
  g->ArgNames({"M", "N", "K"})->UseManualTime()->Unit(benchmark::kMillisecond);
  // The model's shapes at C (QKV, out-projection, MLP up, MLP down) for M = T*B rows.
  const int64_t C = L ? 2048 : 256, M = L ? 16384 : 1024;
  for (auto [n, k] : std::vector<std::pair<int64_t, int64_t>>{{3 * C, C}, {C, C}, {4 * C, C}, {C, 4 * C}}) g->Args({M, n, k});
  if (L) g->Args({8192, 8192, 8192});
  auto* f = benchmark::RegisterBenchmark("linear_fused", linear_fused);
  f->ArgNames({"M", "in", "out", "kind"})->UseManualTime()->Unit(benchmark::kMillisecond);
  for (int64_t kind : {0, 1}) f->Args({M, C, 4 * C, kind});        // MLP up: plain, with GELU
  for (int64_t kind : {0, 2, 3, 4}) f->Args({M, 4 * C, C, kind});  // MLP down: + residual; data gradient, + GELU'
  benchmark::RegisterBenchmark("layernorm_fwd", layernorm)->ArgNames({"N", "C"})->Args({M, C})->UseManualTime();
  benchmark::RegisterBenchmark("layernorm_bwd", layernorm_backward)->ArgNames({"N", "C"})->Args({M, C})->UseManualTime();
  benchmark::RegisterBenchmark("gelu_fwd", gelu)->ArgNames({"n"})->Args({M * 4 * C})->UseManualTime();
  benchmark::RegisterBenchmark("cross_entropy", cross_entropy)->ArgNames({"N"})->Args({M})->UseManualTime();
  // lss's split blocks at 16K, 64K and 256K tokens on 4 GPUs: T / 8 rows each.
  auto* m = benchmark::RegisterBenchmark("attention_merge", attention_merge);
  m->ArgNames({"Tq", "H", "D"})->UseManualTime()->Unit(benchmark::kMillisecond);
  for (int64_t Tq : L ? std::vector<int64_t>{2048, 8192, 32768} : std::vector<int64_t>{256, 1024})
    m->Args({Tq, L ? 16 : 2, L ? 128 : 64});
}

}  // namespace
}  // namespace lss::bench

int main(int argc, char** argv) {
  using namespace lss::bench;
  g_settings = parse_settings(&argc, argv);
  try {
    g_backend = lss::make_backend(lss::BackendOptions{g_settings.backend, g_settings.threads, 0, g_settings.attention});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_kernels: %s\n", e.what());
    return 2;
  }
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::AddCustomContext("backend", g_backend->device_name());
  benchmark::AddCustomContext("dtype", lss::dtype_name(bench_dtype(g_settings)));
  benchmark::AddCustomContext("git_commit", LSS_GIT_COMMIT);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_backend.reset();
  return 0;
}
