// Attention throughput of the CUDA backend: the project's flash kernels (on a compute capability
// 9.0 GPU both generations: wgmma, the default there, and mma.sync) against cuDNN's fused SDPA,
// bf16, forward and forward+backward, on the model's packed [q|k|v] layout.
//
// Shapes: B = 1, model width H*D = 2048 (H = 16 at D = 128, H = 32 at D = 64), T in {4K, 16K,
// 64K}, causal and not. Time per iteration is measured with CUDA events on the backend's stream
// (manual time), and TFLOP/s counts the matmul work of the textbook algorithm:
// forward 4*B*H*T^2*D (QK^T and PV), halved when causal; forward+backward 3.5 times that (the
// backward's five products, one of them the recomputed QK^T, are 2.5 forwards).
//
// BM_AttentionLssRank: the attention calls of one lss rank (zigzag segments, split causal blocks,
// as strategies/lss runs them) at sequence T on P GPUs, D = 128: per segment of T/(2P) rows, its
// causal block on its own keys and, unless it is the first, its queries against every key
// before it (unmasked). With `merged`, rank P-1's two neighbouring chunks are one segment of
// T/P rows (two calls instead of four, the same score tiles). The calls' shapes on one GPU,
// without the gather and the merge beside them: what the kernels contribute to lss's step at
// that grid.
//
// BM_AttentionBlock: one of those calls alone (Tq queries on Tk keys), to tell which runs below
// the others' rate.
//
// BM_AttentionHeated: BM_Attention's causal D = 128 calls after kHeatSeconds of running back to
// back, timed over about kHeatedSeconds: the rate a training step sees on a card held at its
// power limit, where a short burst runs at higher clocks. Beside TFLOP/s it reports, from NVML
// over the timed region, the card's mean power (W), median SM clock (MHz), the share of samples
// the power cap held the clocks down (capped) and the energy per FLOP (pJ/FLOP): under the cap
// the rate follows energy per FLOP, not the kernels' burst speed.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_monitor.h"
#include "kernels/cuda/flash_attention.h"
#include "lss_git_commit.h"

namespace lss {
namespace {

constexpr int64_t kBatch = 1;
constexpr int64_t kWidth = 2048;  // H * D

// The textbook matmul work of one call of Tq queries on Tk keys (the header's count): 4·B·H·Tq·Tk·D
// forward (Q·Kᵀ and P·V), halved when causal, 3.5 times that with the backward.
double call_flops(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, bool causal, bool with_backward) {
  return 4.0 * B * H * static_cast<double>(Tq) * Tk * D * (causal ? 0.5 : 1.0) * (with_backward ? 3.5 : 1.0);
}

// One CUDA backend per attention path, kept for the whole run (cuDNN caches its graphs).
Backend& backend(const std::string& attention) {
  static std::map<std::string, std::unique_ptr<Backend>> backends;
  auto& be = backends[attention];
  if (!be) {
    CudaBackendOptions options;
    options.attention = attention;
    be = make_cuda_backend(options);
  }
  return *be;
}

// Fills a device buffer with bf16-representable values in [-amp, amp], one host chunk at a time.
void fill_random(Backend& be, const Buffer& buf, float amp, uint64_t seed) {
  constexpr int64_t kChunk = int64_t{1} << 22;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-amp, amp);
  std::vector<float> host(std::min<int64_t>(kChunk, buf.numel()));
  for (auto& x : host) x = dist(rng);
  for (int64_t off = 0; off < buf.numel(); off += kChunk) {
    const int64_t n = std::min<int64_t>(kChunk, buf.numel() - off);
    be.copy_from_host(buf.slice(off, n), host.data(), DType::f32);
  }
}

// The kernels behind each value of the `path` argument.
enum Path : int { kFlash = 0, kCudnn = 1, kFlashMmaSync = 2 };

// Times `step` once per iteration with CUDA events on `stream` (manual time), after one warm-up
// call (kernel attributes, cuDNN graphs, workspace allocation).
template <class Step>
void time_iterations(benchmark::State& state, Backend& be, cudaStream_t stream, Step&& step) {
  step();
  be.synchronize();
  cudaEvent_t start, stop;
  LSS_CUDA_CHECK(cudaEventCreate(&start));
  LSS_CUDA_CHECK(cudaEventCreate(&stop));
  for (auto _ : state) {
    LSS_CUDA_CHECK(cudaEventRecord(start, stream));
    step();
    LSS_CUDA_CHECK(cudaEventRecord(stop, stream));
    LSS_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.f;
    LSS_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms * 1e-3);
  }
  LSS_CUDA_CHECK(cudaEventDestroy(start));
  LSS_CUDA_CHECK(cudaEventDestroy(stop));
}

// Runs `step` back to back for at least heat_s seconds (by CUDA events on `stream`, in batches
// that double from one call), so that the card reaches the clocks its power limit holds.
template <class Step>
void heat(Backend& be, cudaStream_t stream, double heat_s, Step&& step) {
  cudaEvent_t start, stop;
  LSS_CUDA_CHECK(cudaEventCreate(&start));
  LSS_CUDA_CHECK(cudaEventCreate(&stop));
  LSS_CUDA_CHECK(cudaEventRecord(start, stream));
  for (int64_t batch = 1;; batch = std::min<int64_t>(2 * batch, 64)) {
    for (int64_t i = 0; i < batch; ++i) step();
    LSS_CUDA_CHECK(cudaEventRecord(stop, stream));
    LSS_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.f;
    LSS_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (ms * 1e-3 >= heat_s) break;
  }
  be.synchronize();
  LSS_CUDA_CHECK(cudaEventDestroy(start));
  LSS_CUDA_CHECK(cudaEventDestroy(stop));
}

// The path's display name and backend (cuDNN, or the own kernels of the forced generation).
std::string select_path(Path path_id, int64_t D) {
  cuda::set_flash_kernels(path_id == kFlashMmaSync ? cuda::FlashKernels::mma_sync
                                                   : cuda::FlashKernels::automatic);
  return path_id == kCudnn                     ? "cudnn"
         : path_id == kFlashMmaSync            ? "flash-mma.sync"
         : cuda::flash_wgmma_available(D) ? "flash-wgmma"
                                               : "flash-mma.sync";
}

constexpr double kHeatSeconds = 3.0;    // BM_AttentionHeated's heat before timing
constexpr double kHeatedSeconds = 3.0;  // and its timed region (at least)

// Arguments: T, D, causal (0/1), path (Path), backward (0 forward only, 1 both). heat_s > 0: the
// calls run back to back for heat_s first, and NVML samples the card over the timed iterations.
void attention_case(benchmark::State& state, double heat_s) {
  const int64_t T = state.range(0), D = state.range(1);
  const bool causal = state.range(2) != 0;
  const Path path_id = static_cast<Path>(state.range(3));
  const bool with_backward = state.range(4) != 0;
  const int64_t H = kWidth / D, C = kWidth, B = kBatch;
  const std::string path = select_path(path_id, D);
  try {
    Backend& be = backend(path_id == kCudnn ? "cudnn" : "flash");
    const cudaStream_t stream = cuda_stream_of(be);
    // The model's layout: (T, B, 3C) packed [q|k|v] rows, (T, B, C) out and dout.
    Buffer qkv = be.alloc(DType::bf16, T * B * 3 * C);
    Buffer dqkv = be.alloc(DType::bf16, T * B * 3 * C);
    Buffer out = be.alloc(DType::bf16, T * B * C);
    Buffer dout = be.alloc(DType::bf16, T * B * C);
    Buffer lse = be.alloc(DType::f32, B * H * T);
    fill_random(be, qkv, 2.f, 1);
    fill_random(be, dout, 1.f, 2);

    AttentionArgs a;
    a.dtype = DType::bf16;
    a.B = B;
    a.H = H;
    a.D = D;
    a.Tq = a.Tk = T;
    a.q_offset = 0;
    a.causal = causal;
    a.scale = 1.0 / std::sqrt(static_cast<double>(D));
    auto part = [&](const Buffer& b, int i) {
      return AttnOperand{static_cast<char*>(b.ptr()) + i * C * 2, 3 * C, B * 3 * C};
    };
    a.q = part(qkv, 0);
    a.k = part(qkv, 1);
    a.v = part(qkv, 2);
    a.out = {out.ptr(), C, B * C};
    a.lse = lse.ptr();
    a.dout = {dout.ptr(), C, B * C};
    a.dq = part(dqkv, 0);
    a.dk = part(dqkv, 1);
    a.dv = part(dqkv, 2);

    auto step = [&] {
      be.attention_forward(a);
      if (with_backward) be.attention_backward(a);
    };
    std::optional<DeviceState> card;
    if (heat_s > 0) {
      int device = 0;
      LSS_CUDA_CHECK(cudaGetDevice(&device));
      cuda::DeviceMonitor monitor(device);
      heat(be, stream, heat_s, step);
      monitor.start();
      time_iterations(state, be, stream, step);
      card = monitor.stop();
    } else {
      time_iterations(state, be, stream, step);
    }

    const double flops = call_flops(B, H, T, T, D, causal, with_backward);
    state.counters["TFLOP/s"] =
        benchmark::Counter(flops * 1e-12 * state.iterations(), benchmark::Counter::kIsRate);
    if (heat_s > 0) {
      // Without NVML the case ends with an error row saying so; without the driver's energy
      // counter pJ/FLOP is left out (and W is the sampled power): nothing is reported as 0.
      if (!card) throw std::runtime_error("NVML gave no reading of the card: no power or clocks to report");
      state.counters["W"] = card->energy_j >= 0 ? card->mean_power_w : card->power_w_median;
      state.counters["MHz"] = card->sm_clock_mhz_median;
      state.counters["capped"] = card->power_capped_fraction;
      if (card->energy_j >= 0) state.counters["pJ/FLOP"] = card->energy_j / (flops * state.iterations()) * 1e12;
    }
    state.SetLabel(path + (with_backward ? " fwd+bwd" : " fwd") + (causal ? " causal" : " full") +
                   " B=1 H=" + std::to_string(H) + " D=" + std::to_string(D) +
                   " T=" + std::to_string(T) + (heat_s > 0 ? " heated" : ""));
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void attention_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"T", "D", "causal", "path", "bwd"});
  for (int64_t T : {4096, 16384, 32768, 65536})
    for (int64_t D : {64, 128})
      for (int causal : {1, 0})
        for (int path : {kFlash, kCudnn, kFlashMmaSync}) {
          // The mma.sync generation forced, at one length: on a GPU without the wgmma kernels it
          // repeats the flash rows. 32K: the serial step's causal D = 128 calls beside lss's ranks at
          // 16K per GPU on 2 GPUs (BM_AttentionLssRank).
          if (path == kFlashMmaSync && T != 16384) continue;
          if (T == 32768 && (D != 128 || !causal || path == kFlashMmaSync)) continue;
          for (int bwd : {0, 1}) b->Args({T, D, causal, path, bwd});
        }
}

void BM_Attention(benchmark::State& state) { attention_case(state, 0); }
BENCHMARK(BM_Attention)->Apply(attention_args)->UseManualTime()->Unit(benchmark::kMillisecond);

// BM_AttentionHeated: the model's calls (causal, D = 128) at serial's 16K, lss's 32K on 2 GPUs and
// 64K on 4, on the own kernels and cuDNN, forward and forward+backward: the sustained rates beside
// BM_Attention's. Each case runs once with a fixed count of iterations, about kHeatedSeconds at
// 500 TFLOP/s: Google Benchmark's search for a count would call it several times, each with
// its heat and its host-side setup (during which the card cools).
void register_heated() {
  for (int64_t T : {16384, 32768, 65536})
    for (int path : {kFlash, kCudnn})
      for (int bwd : {0, 1}) {
        const double flops = call_flops(1, kWidth / 128, T, T, 128, true, bwd != 0);
        const auto iterations = static_cast<benchmark::IterationCount>(std::ceil(kHeatedSeconds * 500e12 / flops));
        benchmark::RegisterBenchmark("BM_AttentionHeated", [](benchmark::State& state) { attention_case(state, kHeatSeconds); })
            ->ArgNames({"T", "D", "causal", "path", "bwd"})
            ->Args({T, 128, 1, path, bwd})
            ->Iterations(iterations)
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond);
      }
}

// A bf16 call of one sequence with Tq queries, as lss's calls are (operands and Tk set by the caller).
AttentionArgs one_sequence_args(int64_t H, int64_t D, int64_t Tq) {
  AttentionArgs a;
  a.dtype = DType::bf16;
  a.B = 1;
  a.H = H;
  a.D = D;
  a.Tq = Tq;
  a.scale = 1.0 / std::sqrt(static_cast<double>(D));
  return a;
}

// Arguments: T, P, rank, path (Path), backward (0 forward only, 1 both), merged (0/1).
void BM_AttentionLssRank(benchmark::State& state) {
  const int64_t T = state.range(0), P = state.range(1), rank = state.range(2);
  const Path path_id = static_cast<Path>(state.range(3));
  const bool with_backward = state.range(4) != 0;
  const bool merged = state.range(5) != 0 && rank == P - 1;
  constexpr int64_t D = 128, H = kWidth / D, C = kWidth;
  const int64_t chunk_rows = T / (2 * P), Tl = 2 * chunk_rows;  // the rank's two chunks
  const std::string path = select_path(path_id, D);
  try {
    if (T % (2 * P) != 0 || rank < 0 || rank >= P)
      throw std::invalid_argument("BM_AttentionLssRank: T = " + std::to_string(T) +
                                  " must be a multiple of 2P = " + std::to_string(2 * P) +
                                  " and rank = " + std::to_string(rank) + " in [0, P)");
    Backend& be = backend(path_id == kCudnn ? "cudnn" : "flash");
    const cudaStream_t stream = cuda_stream_of(be);
    // The rank's layout in lss: its (Tl, C) queries and outputs, the gathered (T, 2C) [K|V] rows
    // in token order.
    Buffer q = be.alloc(DType::bf16, Tl * C);
    Buffer dq = be.alloc(DType::bf16, Tl * C);
    Buffer kv = be.alloc(DType::bf16, T * 2 * C);
    Buffer dkv = be.alloc(DType::bf16, T * 2 * C);
    Buffer out = be.alloc(DType::bf16, Tl * C);
    Buffer dout = be.alloc(DType::bf16, Tl * C);
    fill_random(be, q, 2.f, 1);
    fill_random(be, kv, 2.f, 2);
    fill_random(be, dout, 1.f, 3);

    std::vector<AttentionArgs> calls;
    std::vector<int64_t> call_rows;  // each call's query rows
    double flops = 0;
    struct Segment {
      int64_t row0, start, rows;
    };
    const std::vector<Segment> segments =
        merged ? std::vector<Segment>{{0, rank * chunk_rows, Tl}}
               : std::vector<Segment>{{0, rank * chunk_rows, chunk_rows},
                                      {chunk_rows, (2 * P - 1 - rank) * chunk_rows, chunk_rows}};
    for (const auto [row0, start, seg_rows] : segments) {
      AttentionArgs a = one_sequence_args(H, D, seg_rows);
      auto rows = [&](const Buffer& b, int64_t r, int64_t width, int64_t col) {
        return AttnOperand{static_cast<char*>(b.ptr()) + (r * width + col) * 2, width, width};
      };
      a.q = rows(q, row0, C, 0);
      a.out = rows(out, row0, C, 0);
      a.dout = rows(dout, row0, C, 0);
      a.dq = rows(dq, row0, C, 0);
      // Its causal block on its own keys.
      a.Tk = seg_rows;
      a.causal = true;
      a.k = rows(kv, start, 2 * C, 0);
      a.v = rows(kv, start, 2 * C, C);
      a.dk = rows(dkv, start, 2 * C, 0);
      a.dv = rows(dkv, start, 2 * C, C);
      calls.push_back(a);
      call_rows.push_back(seg_rows);
      flops += call_flops(1, H, seg_rows, seg_rows, D, true, with_backward);
      if (start == 0) continue;
      // Its queries against every key before it.
      a.Tk = start;
      a.causal = false;
      a.k = rows(kv, 0, 2 * C, 0);
      a.v = rows(kv, 0, 2 * C, C);
      a.dk = rows(dkv, 0, 2 * C, 0);
      a.dv = rows(dkv, 0, 2 * C, C);
      calls.push_back(a);
      call_rows.push_back(seg_rows);
      flops += call_flops(1, H, seg_rows, start, D, false, with_backward);
    }
    Buffer call_lse = be.alloc(DType::f32, 2 * H * Tl);  // (calls, H, rows): at most 4 calls of Tl/2 rows
    for (size_t c = 0, offset = 0; c < calls.size(); offset += H * call_rows[c], ++c)
      calls[c].lse = static_cast<float*>(call_lse.ptr()) + offset;
    auto step = [&] {
      for (const AttentionArgs& a : calls) be.attention_forward(a);
      if (with_backward)
        for (const AttentionArgs& a : calls) be.attention_backward(a);
    };
    time_iterations(state, be, stream, step);

    state.counters["TFLOP/s"] =
        benchmark::Counter(flops * 1e-12 * state.iterations(), benchmark::Counter::kIsRate);
    state.SetLabel(path + (with_backward ? " fwd+bwd" : " fwd") + " lss rank " + std::to_string(rank) + " of " +
                   std::to_string(P) + " T=" + std::to_string(T) + " (" + std::to_string(calls.size()) +
                   " calls, " + (merged ? "one segment of " + std::to_string(Tl) : "segments of " + std::to_string(chunk_rows)) +
                   ")");
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// Rank 0 on 4 GPUs at 16K and 64K tokens per GPU, the sweeps' lss points: under zigzag every rank
// has the same work (ranks 0 and 3 measured within 1% of each other on an H200). Then every rank
// at 16K per GPU on 2 and 4 GPUs, forward and backward on the own kernels and on cuDNN, rank P-1
// also merged: how the ranks' calls differ in time where their work is the same, and (beside
// BM_Attention's one causal call at T) what splitting the sequence costs the kernels alone.
void lss_rank_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"T", "P", "rank", "path", "bwd", "merged"});
  for (int64_t per_gpu : {16384, 65536})
    for (int path : {kFlash, kCudnn})
      for (int bwd : {0, 1}) b->Args({per_gpu * 4, 4, 0, path, bwd, 0});
  for (int64_t P : {2, 4})
    for (int path : {kFlash, kCudnn})
      for (int64_t rank = 0; rank < P; ++rank)
        for (int merged : {0, 1})
          if (!merged || rank == P - 1) b->Args({16384 * P, P, rank, path, 1, merged});
}

BENCHMARK(BM_AttentionLssRank)->Apply(lss_rank_args)->UseManualTime()->Unit(benchmark::kMillisecond);

// Arguments: Tq, Tk, causal (0/1; causal needs Tq = Tk), path (Path), backward (0/1).
// One attention call of Tq queries on Tk keys, D = 128, in lss's layout (separate (Tq, C) queries,
// (Tk, 2C) [K|V] rows): the single calls BM_AttentionLssRank sums, to tell which of a rank's calls
// runs below the others' rate.
void BM_AttentionBlock(benchmark::State& state) {
  const int64_t Tq = state.range(0), Tk = state.range(1);
  const bool causal = state.range(2) != 0;
  const Path path_id = static_cast<Path>(state.range(3));
  const bool with_backward = state.range(4) != 0;
  constexpr int64_t D = 128, H = kWidth / D, C = kWidth;
  const std::string path = select_path(path_id, D);
  try {
    if (causal && Tq != Tk)
      throw std::invalid_argument("BM_AttentionBlock: a causal block is square (Tq = " + std::to_string(Tq) +
                                  ", Tk = " + std::to_string(Tk) + ")");
    Backend& be = backend(path_id == kCudnn ? "cudnn" : "flash");
    const cudaStream_t stream = cuda_stream_of(be);
    Buffer q = be.alloc(DType::bf16, Tq * C);        // (Tq, C)
    Buffer dq = be.alloc(DType::bf16, Tq * C);       // (Tq, C)
    Buffer kv = be.alloc(DType::bf16, Tk * 2 * C);   // (Tk, 2C) [K|V]
    Buffer dkv = be.alloc(DType::bf16, Tk * 2 * C);  // (Tk, 2C) [dK|dV]
    Buffer out = be.alloc(DType::bf16, Tq * C);      // (Tq, C)
    Buffer dout = be.alloc(DType::bf16, Tq * C);     // (Tq, C)
    Buffer lse = be.alloc(DType::f32, H * Tq);       // (H, Tq)
    fill_random(be, q, 2.f, 1);
    fill_random(be, kv, 2.f, 2);
    fill_random(be, dout, 1.f, 3);
    auto cols = [](const Buffer& b, int64_t width, int64_t col) {
      return AttnOperand{static_cast<char*>(b.ptr()) + col * 2, width, width};
    };
    AttentionArgs a = one_sequence_args(H, D, Tq);
    a.Tk = Tk;
    a.causal = causal;
    a.q = cols(q, C, 0);
    a.out = cols(out, C, 0);
    a.dout = cols(dout, C, 0);
    a.dq = cols(dq, C, 0);
    a.k = cols(kv, 2 * C, 0);
    a.v = cols(kv, 2 * C, C);
    a.dk = cols(dkv, 2 * C, 0);
    a.dv = cols(dkv, 2 * C, C);
    a.lse = lse.ptr();
    auto step = [&] {
      be.attention_forward(a);
      if (with_backward) be.attention_backward(a);
    };
    time_iterations(state, be, stream, step);

    const double flops = call_flops(1, H, Tq, Tk, D, causal, with_backward);
    state.counters["TFLOP/s"] =
        benchmark::Counter(flops * 1e-12 * state.iterations(), benchmark::Counter::kIsRate);
    state.SetLabel(path + (with_backward ? " fwd+bwd" : " fwd") + (causal ? " causal" : " full") +
                   " Tq=" + std::to_string(Tq) + " Tk=" + std::to_string(Tk));
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// The calls of lss's ranks at 16K tokens per GPU on 4 GPUs (zigzag, split causal blocks, rank 3
// merged): 8K-row causal blocks, 8K queries on 8K-56K keys before them, and rank 3's 16K causal
// block and 16K x 24K preceding block.
void block_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"Tq", "Tk", "causal", "path", "bwd"});
  std::vector<std::array<int64_t, 3>> shapes = {{8192, 8192, 1}, {16384, 16384, 1}, {16384, 24576, 0}};
  for (int64_t keys = 8192; keys <= 57344; keys += 8192) shapes.push_back({8192, keys, 0});
  for (const auto& [Tq, Tk, causal] : shapes)
    for (int path : {kFlash, kCudnn})
      for (int bwd : {0, 1}) b->Args({Tq, Tk, causal, path, bwd});
}

BENCHMARK(BM_AttentionBlock)->Apply(block_args)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace lss

int main(int argc, char** argv) {
  if (lss::cuda_device_count() == 0) {
    std::printf("no CUDA device: skipped\n");
    return 0;
  }
  lss::register_heated();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  // What ran, in the JSON's context (plots/attnplot.py puts it under the charts).
  int device = 0;
  cudaDeviceProp prop{};
  LSS_CUDA_CHECK(cudaGetDevice(&device));
  LSS_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  benchmark::AddCustomContext("device", prop.name);
  benchmark::AddCustomContext("compute_capability",
                              std::to_string(prop.major) + "." + std::to_string(prop.minor));
  benchmark::AddCustomContext("git_commit", LSS_GIT_COMMIT);
  benchmark::AddCustomContext("flash_wgmma_d128", lss::cuda::flash_wgmma_available(128) ? "yes" : "no");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
