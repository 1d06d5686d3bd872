#include "app/run.h"

#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "app/bound.h"
#include "app/export.h"
#include "app/metrics.h"
#include "app/result.h"
#include "app/session.h"
#include "app/trace.h"
#include "comm/mpi_util.h"
#include "core/check.h"
#include "core/fileio.h"
#include "core/init.h"
#include "core/options.h"
#include "lss_git_commit.h"
#include "strategies/strategy.h"
#ifdef LSS_HAVE_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "comm/nccl_communicator.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cudnn_attention.h"
#include "kernels/cuda/flash_attention.h"
#endif

namespace lss {

namespace {

using json = nlohmann::ordered_json;

}  // namespace

void add_step_options(OptionParser& p) {
  p.add_string("strategy", "serial", "serial | lss | megatron_sp");
  p.add_string("backend", "cpu", "cpu | cuda");
  p.add_string("attention", "auto", "cuda attention path: auto (the own wgmma kernels for bf16 D=64 and D=128 on H100/H200, else cuDNN where it takes the shape) | cudnn | flash");
  p.add_size("sp", 1, "P: ranks per sequence (lss) or tensor (megatron_sp) group");
  p.add_size("layers", 2, "L: transformer blocks");
  p.add_size("width", 64, "C: model width");
  p.add_size("heads", 4, "H: attention heads (C % H == 0)");
  p.add_size("seq", 128, "T: tokens per sequence");
  p.add_size("max-seq", 0, "T_max: rows of the positional table (0: equal to --seq)");
  p.add_size("batch", 1, "B: sequences per step, over all data-parallel replicas");
  p.add_flag("causal", true, "causal attention mask");
  p.add_string("dtype", "fp32", "fp32 | fp64 | bf16 (bf16: cuda only)");
  p.add_size("seed", 1234, "seed of weights and synthetic data");
  p.add_double("lr", 1e-3, "AdamW learning rate");
  p.add_double("beta1", 0.9, "AdamW beta1");
  p.add_double("beta2", 0.95, "AdamW beta2");
  p.add_double("adam-eps", 1e-8, "AdamW epsilon");
  p.add_double("weight-decay", 0.1, "AdamW decoupled weight decay (weights and embeddings only)");
  p.add_string("data", "", "file of raw bytes to train on (empty: synthetic tokens)");
  p.add_size("threads", 0, "host threads per rank (0: cores / ranks on this node)");
  p.add_flag("keep-kv", false, "lss: keep the gathered K/V for backward instead of re-gathering");
  p.add_flag("recompute", false, "activation checkpointing (keep block outputs, recompute blocks in backward)");
  p.add_flag("zigzag", false, "lss: balanced segment order (chunks p and 2P-1-p of T/(2P)) for causal masks");
  p.add_flag("split-causal", true,
             "lss: each segment's causal attention as a block on its own keys (run while the K/V gather is in flight) "
             "plus one on the keys before it, merged by log-sum-exp");
  p.add_flag("chunk-pipeline", false,
             "lss, zigzag: gather the front and the back chunks' K/V in two all-gathers and interleave the two chunks' "
             "blocks in forward, so that each gather runs beside the other chunk's compute");
  p.add_flag("placed-reduce-scatter", false,
             "lss, zigzag: sum backward's dK/dV from token order into each rank's chunks (grouped reduces) instead of "
             "copying it into rank order for a reduce-scatter");
  p.add_flag("local-cross-block", false,
             "lss, zigzag, split causal blocks: run the back chunk's block on the rank's own front chunk beside the K/V "
             "gather (forward) and the dK/dV reduce-scatter (backward) instead of after and before them");
  p.add_size("placed-gather-min", int64_t{16} << 20,
             "lss, zigzag: place the K/V gathers (and --placed-reduce-scatter) at the token positions only from this "
             "many gathered bytes on (T x the batch of one data-parallel replica x 2 x width x element size); below, gather rank-major and copy");
  p.add_flag("regather-ln", true, "megatron_sp: re-gather LayerNorm outputs in backward");
  p.add_size("scatter-chunks", 0,
             "megatron_sp: run each row-parallel layer's forward GEMM in this many chunks of every rank's rows and "
             "reduce-scatter each chunk beside the next one's GEMM (1: one reduce-scatter after the GEMM; 0: 4 or 2 "
             "chunks of at least 4096 rows where T/P x B/R divides so, else 1)");
  p.add_flag("distributed-optimizer", false,
             "shard the optimizer over the sequence group (ZeRO-1): reduce-scatter the summed gradients, step 1/P "
             "of them, all-gather the parameters in the next forward");
  p.add_flag("optimizer-in-backward", false,
             "on one rank (P = R = 1): step each bucket of parameters (head, each layer's halves) with AdamW beside the "
             "rest of backward, as soon as backward has finished its gradients");
  p.add_string("grad-reduce-dtype", "master",
               "dtype in which the sequence and data groups sum the gradients: master (fp32 in a bf16 model), or "
               "narrower: bf16 (as Megatron-LM's --grad-reduce-in-bf16), fp32 (fp64 model); the sums are widened back "
               "before AdamW");
  p.add_flag("overlap", true, "overlap collectives with compute (communication stream, per-layer gradient all-reduces)");
  p.add_flag("copy-engine-gathers", false,
             "cuda: the sequence group's all-gathers on the GPUs' copy engines (NCCL zero-CTA policy, symmetric "
             "windows), leaving every SM to the compute they overlap");
  p.add_flag("registered-gathers", false,
             "cuda: the sequence group's gathered buffers registered with NCCL (ncclMemAlloc, ncclCommRegister), "
             "so that its all-gather kernels write into the peers' buffers without a staging copy, on 16 channels "
             "instead of 24");
  p.add_flag("symmetric-collectives", false,
             "cuda: the sequence group's gathered and reduce-scattered buffers in NCCL's symmetric windows "
             "(ncclMemAlloc, ncclCommWindowRegister), where NCCL 2.28 runs those all-gathers and reduce-scatters on "
             "its symmetric kernels (loads and stores to the peers' memory without the ring's staging copies, on "
             "--symmetric-ctas blocks); placed ones stay grouped broadcasts and reduces");
  p.add_size("symmetric-ctas", RunConfig{}.symmetric_ctas,
             "cuda, with --symmetric-collectives: the blocks NCCL's symmetric kernels run on (NCCL_SYM_CTAS; 0: NCCL's "
             "own pick, 9 on 2 x H200, slower than the ring alone)");
}

RunConfig step_config_from(const OptionParser& p) {
  RunConfig rc;
  ModelConfig& m = rc.model;
  m.L = p.size("layers");
  m.C = p.size("width");
  m.H = p.size("heads");
  m.T = p.size("seq");
  m.T_max = p.size("max-seq") == 0 ? m.T : p.size("max-seq");
  m.B = p.size("batch");
  m.causal = p.flag("causal");
  m.dtype = parse_dtype(p.str("dtype"));
  LSS_REQUIRE_INPUT(p.size("seed") >= 0, "--seed " + p.str("seed") + ": must not be negative");
  m.seed = static_cast<uint64_t>(p.size("seed"));
  rc.opt = {p.real("lr"), p.real("beta1"), p.real("beta2"), p.real("adam-eps"), p.real("weight-decay")};
  LSS_REQUIRE_INPUT(rc.opt.lr > 0, "--lr " + p.str("lr") + ": must be positive");
  LSS_REQUIRE_INPUT(rc.opt.beta1 >= 0 && rc.opt.beta1 < 1, "--beta1 " + p.str("beta1") + ": must be in [0, 1)");
  LSS_REQUIRE_INPUT(rc.opt.beta2 >= 0 && rc.opt.beta2 < 1, "--beta2 " + p.str("beta2") + ": must be in [0, 1)");
  LSS_REQUIRE_INPUT(rc.opt.eps > 0, "--adam-eps " + p.str("adam-eps") + ": must be positive");
  LSS_REQUIRE_INPUT(rc.opt.weight_decay >= 0, "--weight-decay " + p.str("weight-decay") + ": must not be negative");
  rc.strategy_opts.keep_kv = p.flag("keep-kv");
  rc.strategy_opts.regather_ln = p.flag("regather-ln");
  rc.strategy_opts.zigzag = p.flag("zigzag");
  rc.strategy_opts.split_causal = p.flag("split-causal");
  rc.strategy_opts.recompute = p.flag("recompute");
  rc.strategy_opts.chunk_pipeline = p.flag("chunk-pipeline");
  rc.strategy_opts.placed_reduce_scatter = p.flag("placed-reduce-scatter");
  rc.strategy_opts.local_cross_block = p.flag("local-cross-block");
  rc.strategy_opts.placed_gather_min_bytes = p.size("placed-gather-min");
  LSS_REQUIRE_INPUT(rc.strategy_opts.placed_gather_min_bytes >= 0,
                    "--placed-gather-min " + p.str("placed-gather-min") + ": must not be negative");
  rc.strategy_opts.scatter_chunks = p.size("scatter-chunks");
  LSS_REQUIRE_INPUT(rc.strategy_opts.scatter_chunks >= 0,
                    "--scatter-chunks " + p.str("scatter-chunks") + ": must not be negative (0: chosen by size)");
  rc.strategy_opts.overlap = p.flag("overlap");
  rc.strategy_opts.distributed_optimizer = p.flag("distributed-optimizer");
  rc.strategy_opts.optimizer_in_backward = p.flag("optimizer-in-backward");
  if (p.str("grad-reduce-dtype") != "master")
    rc.strategy_opts.grad_reduce_dtype = parse_dtype(p.str("grad-reduce-dtype"), "--grad-reduce-dtype");
  rc.copy_engine_gathers = p.flag("copy-engine-gathers");
  rc.registered_gathers = p.flag("registered-gathers");
  rc.symmetric_collectives = p.flag("symmetric-collectives");
  const int64_t symmetric_ctas = p.size("symmetric-ctas");
  require_symmetric_ctas_in_range(symmetric_ctas, "--symmetric-ctas " + p.str("symmetric-ctas"));
  // (Not "given": `project --like` passes every recorded option on, the default included.)
  LSS_REQUIRE_INPUT(symmetric_ctas == RunConfig{}.symmetric_ctas || rc.symmetric_collectives,
                    "--symmetric-ctas " + p.str("symmetric-ctas") +
                        ": the blocks of NCCL's symmetric kernels, which run only with --symmetric-collectives");
  rc.symmetric_ctas = static_cast<int>(symmetric_ctas);
  rc.strategy = p.str("strategy");
  // The serial model keeps every activation (it is also the reference the distributed runs are
  // checked against, built from their options); timed with --recompute it would run a plain step
  // under the name, and the bound, of a checkpointed one.
  LSS_REQUIRE_INPUT(!(rc.strategy == "serial" && rc.strategy_opts.recompute),
                    "--recompute: --strategy serial keeps every activation (lss and megatron_sp checkpoint, "
                    "also on one GPU with --sp 1)");
  // An option of another strategy would otherwise be dropped unseen, and the run timed and saved
  // as if it had applied (e.g. megatron_sp with --zigzag).
  for (const auto& [option, value] : p.values()) {
    if (!p.given(option) || strategy_reads(rc.strategy, option)) continue;
    throw UsageError(fmt::format("--{}: an option of {}, which --strategy {} does not read (leave it out)", option,
                                 fmt::join(strategies_reading(option), ", "), rc.strategy));
  }
  rc.backend = p.str("backend");
  rc.attention = p.str("attention");
  rc.data_path = p.str("data");
  const int64_t sp = p.size("sp");
  LSS_REQUIRE_INPUT(sp >= 1 && sp <= (1 << 20), "--sp " + p.str("sp") + ": must be a positive group size");
  rc.P = static_cast<int>(sp);
  const int64_t threads = p.size("threads");
  LSS_REQUIRE_INPUT(threads >= 0 && threads <= 4096, "--threads " + p.str("threads") + ": must be 0 (auto) or positive");
  if (threads == 0) {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    rc.threads = std::max(1, cores / node_position(MPI_COMM_WORLD).size);
  } else {
    rc.threads = static_cast<int>(threads);
  }
  return rc;
}

namespace {

OptionParser make_parser() {
  OptionParser p(
      "usage: mpiexec -n WORLD lssbench run [options]\n"
      "Trains the model of DESIGN.md for --warmup + --iters steps with one strategy on a process\n"
      "grid of WORLD = R x P ranks (P = --sp; the world size comes from the launcher), prints a\n"
      "table and writes the result JSON (schema v1). Sizes take K/M/G suffixes (16K = 16384).");
  add_step_options(p);
  p.add_size("iters", 5, "timed steps (at least; see --min-time)");
  p.add_double("min-time", 0.0,
               "timed steps go on past --iters until the timed region has lasted this many seconds (rank 0's "
               "clock), e.g. 1 for energy per step within 1% on a GPU at its power cap (README, Metrics)");
  p.add_size("warmup", 1, "untimed steps before them");
  p.add_string("out", "", "result JSON path, never overwritten (empty: results/runs/<name>-<time>.json)");
  p.add_string("export", "", "safetensors file of the first step's params, grads and inputs");
  p.add_string("trace", "",
               "after timing, --trace-steps more steps traced: every rank's operations, collectives and waits as a "
               "Chrome trace JSON (chrome://tracing, ui.perfetto.dev), never overwritten; its summary goes into the result");
  p.add_size("trace-steps", 1, "steps --trace records, one after the other (its summary is their mean per step)");
  p.add_double("peak-tflops", 0, "peak TFLOP/s per device for MFU (0: unknown, MFU not reported)");
  p.add_flag("measure-peak", true, "after timing, measure the device's GEMM rate for MFU (8192^3 on cuda)");
  p.add_flag("bound", true, "after timing, price the step at measured kernel and collective rates (needs --measure-peak)");
  p.add_double("bound-heat", 0.25,
               "seconds each kernel of the bound runs back to back before a second timing at the power limit "
               "(bound.sustained; 0: none; cpu: none unless given)");
  p.add_flag("check", false, "after timing, compare one step with serial on one rank (loss, gradients)");
  p.add_size("check-seq", 0, "sequence length of the --check step (0: --seq); must divide by --sp");
  return p;
}

RunConfig config_from(const OptionParser& p) {
  RunConfig rc = step_config_from(p);
  LSS_REQUIRE_INPUT(p.size("iters") >= 1, "--iters " + p.str("iters") + ": must be at least 1");
  LSS_REQUIRE_INPUT(p.size("warmup") >= 0, "--warmup " + p.str("warmup") + ": must not be negative");
  LSS_REQUIRE_INPUT(p.real("min-time") >= 0 && p.real("min-time") <= 3600,
                    "--min-time " + p.str("min-time") + ": must be between 0 and 3600 seconds");
  LSS_REQUIRE_INPUT(p.real("peak-tflops") >= 0, "--peak-tflops " + p.str("peak-tflops") + ": must not be negative");
  LSS_REQUIRE_INPUT(p.real("bound-heat") >= 0, "--bound-heat " + p.str("bound-heat") + ": must not be negative");
  LSS_REQUIRE_INPUT(p.real("bound-heat") <= 60, "--bound-heat " + p.str("bound-heat") + ": at most 60 seconds");
  return rc;
}

std::vector<std::string> all_hosts() {
  int world = 1;
  LSS_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world));
  char mine[256] = {};
  std::snprintf(mine, sizeof(mine), "%s", host_name().c_str());
  std::vector<char> all(256 * static_cast<size_t>(world));
  LSS_MPI_CHECK(MPI_Allgather(mine, 256, MPI_CHAR, all.data(), 256, MPI_CHAR, MPI_COMM_WORLD));
  std::vector<std::string> hosts;
  for (int r = 0; r < world; ++r) {
    std::string h(all.data() + 256 * r);
    if (std::find(hosts.begin(), hosts.end(), h) == hosts.end()) hosts.push_back(h);
  }
  return hosts;
}

std::string mpi_version() {
  char buf[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int len = 0;
  MPI_Get_library_version(buf, &len);
  std::string s(buf, static_cast<size_t>(len));
  if (auto nl = s.find('\n'); nl != std::string::npos) s = s.substr(0, nl);
  return s;
}

// Versions of what this process loaded: driver, CUDA runtime, NCCL, cuDNN, cuBLASLt (null on cpu).
// The loaded ones, not the ones built against: a machine may hold several (system and Python).
json library_versions(const std::string& backend) {
  json v = {{"driver", nullptr}, {"cuda", nullptr}, {"nccl", nullptr}, {"cudnn", nullptr}, {"cublas", nullptr}};
#ifdef LSS_HAVE_CUDA
  if (backend == "cuda") {
    auto dotted = [](int x) { return fmt::format("{}.{}", x / 1000, (x % 1000) / 10); };
    int driver = 0, runtime = 0;
    if (cudaDriverGetVersion(&driver) == cudaSuccess) v["driver_cuda_api"] = dotted(driver);
    if (cudaRuntimeGetVersion(&runtime) == cudaSuccess) v["cuda"] = dotted(runtime);
    v["nccl"] = nccl_loaded_version();
    const int cudnn = cuda::CudnnAttention::loaded_version();
    v["cudnn"] = fmt::format("{}.{}.{}", cudnn / 10000, (cudnn % 10000) / 100, cudnn % 100);
    const size_t cublas = cublasLtGetVersion();
    v["cublas"] = fmt::format("{}.{}.{}", cublas / 10000, (cublas % 10000) / 100, cublas % 100);
    // The kernel driver's own version, as nvidia-smi shows it: the first dotted number on the
    // "NVRM version" line (its wording differs between the open and the proprietary module).
    if (FILE* f = std::fopen("/proc/driver/nvidia/version", "r")) {
      char line[512] = {};
      if (std::fgets(line, sizeof(line), f)) {
        std::smatch match;
        const std::string l(line);
        if (std::regex_search(l, match, std::regex(R"((\d+\.\d+(\.\d+)?))"))) v["driver"] = match.str(1);
      }
      std::fclose(f);
    }
  }
#else
  (void)backend;
#endif
  return v;
}

// Dense bf16 datasheet peak per device in TFLOP/s where the device is known (0 otherwise).
double datasheet_peak_tflops(const std::string& device, DType dtype) {
  const bool hopper = device.find("H100") != std::string::npos || device.find("H200") != std::string::npos;
  if (!hopper) return 0;
  if (dtype == DType::bf16) return 989.0;
  return 67.0;  // fp32 (non-tensor-core) datasheet figure of the H100/H200 SXM
}

// Calls and bytes per group and collective; with `group_sizes`, also the time inside the
// collective and the bus bandwidth of nccl-tests: busbw = bytes / time x (n-1)/n, x 2(n-1)/n for
// all-reduce (n the group size).
json counts_json(const CommModel& m, const std::map<std::string, int>* group_sizes = nullptr) {
  json j = json::object();
  for (const auto& [group, c] : m) {
    json g = json::object();
    for (int k = 0; k < kNumCollKinds; ++k) {
      if (!c.calls[k]) continue;
      json e = {{"calls", c.calls[k]}, {"bytes", c.bytes[k]}};
      if (group_sizes && group_sizes->count(group)) {
        const double t = c.seconds_by_kind[k];
        const double factor = bus_factor(static_cast<CollKind>(k), group_sizes->at(group));
        e["ms"] = t * 1e3;
        e["busbw_GBps"] = t > 0 ? json(static_cast<double>(c.bytes[k]) / t * factor / 1e9) : json(nullptr);
      }
      g[coll_kind_name(static_cast<CollKind>(k))] = e;
    }
    j[group] = g;
  }
  return j;
}

bool same_counts(const CommModel& a, const CommModel& b) {
  auto nonempty = [](const CommModel& m) {
    CommModel out;
    for (const auto& [g, c] : m)
      if (c.total_calls() > 0) out[g] = c;
    return out;
  };
  return nonempty(a) == nonempty(b);
}

// Per-element maximum over the world (the slowest rank of each iteration).
std::vector<double> max_over_ranks(std::vector<double> v) {
  LSS_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  return v;
}

// Every rank's device state over the timed steps (rank 0 gets them all, in rank order); null
// when no rank could sample its device.
json gather_device_states(const std::optional<DeviceState>& mine, int world) {
  constexpr int kFields = 14;
  std::vector<double> v(kFields, 0.0);
  if (mine) {
    v = {1.0,
         static_cast<double>(mine->samples),
         mine->sm_clock_mhz_median,
         mine->sm_clock_mhz_min,
         mine->sm_clock_mhz_max,
         mine->power_w_median,
         mine->power_limit_w,
         mine->power_capped_fraction,
         mine->slowdown_fraction,
         mine->energy_j,
         mine->region_s,
         mine->mean_power_w,
         mine->energy_window_s,
         static_cast<double>(mine->energy_updates)};
  }
  std::vector<double> all(static_cast<size_t>(kFields) * world);
  LSS_MPI_CHECK(MPI_Gather(v.data(), kFields, MPI_DOUBLE, all.data(), kFields, MPI_DOUBLE, 0, MPI_COMM_WORLD));
  json per_rank = json::array();
  bool any = false;
  for (int r = 0; r < world; ++r) {
    const double* f = all.data() + static_cast<size_t>(r) * kFields;
    if (f[0] == 0.0) {
      per_rank.push_back(nullptr);
      continue;
    }
    any = true;
    json rank_state = {{"samples", static_cast<int64_t>(f[1])},
                       {"sm_clock_mhz_median", f[2]},
                       {"sm_clock_mhz_min", f[3]},
                       {"sm_clock_mhz_max", f[4]},
                       {"power_w_median", f[5]},
                       {"power_limit_w", f[6]},
                       {"power_capped_fraction", f[7]},
                       {"slowdown_fraction", f[8]},
                       {"region_s", f[10]}};
    if (f[13] >= 0) rank_state["energy_updates"] = static_cast<int64_t>(f[13]);
    if (f[12] > 0) rank_state["energy_window_s"] = f[12];
    if (f[9] >= 0) {
      rank_state["energy_j"] = f[9];
      rank_state["mean_power_w"] = f[11];
    }
    per_rank.push_back(std::move(rank_state));
  }
  if (!any) return nullptr;
  return {{"source", fmt::format("NVML on each rank's device, every {} ms through the timed steps; energy_j from "
                                 "the driver's energy counter, polled every 1 ms: the mean power between its first "
                                 "and last update in the region, times the region's time",
                                 mine ? mine->period_ms : 10.0)},
          {"per_rank", per_rank}};
}

// The energy of the timed region summed over the ranks' devices (README, Metrics), or nullopt
// where a rank has no reading.
std::optional<double> total_energy_j(const json& device_states) {
  if (device_states.is_null()) return std::nullopt;
  double total = 0;
  for (const json& d : device_states["per_rank"]) {
    if (d.is_null() || !d.contains("energy_j")) return std::nullopt;
    total += d["energy_j"].get<double>();
  }
  return total;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return fmt::format("{:.2f} {}", b, units[u]);
}

}  // namespace

double measure_gemm_tflops(Backend& be, DType dtype, int64_t n) {
  Buffer a = be.alloc(dtype, n * n), b = be.alloc(dtype, n * n), c = be.alloc(dtype, n * n);  // (n, n) each
  // Random operands: constant ones let the tensor cores draw less power and clock higher, which
  // overstates the rate the model's GEMMs can reach.
  std::vector<double> values(static_cast<size_t>(n * n));
  const uint64_t key = stream_key(12345, "gemm-peak");
  for (size_t i = 0; i < values.size(); ++i) values[i] = uniform01(key, i) - 0.5;
  be.copy_from_host(a.view(), values.data(), DType::f64);
  be.copy_from_host(b.view(), values.data(), DType::f64);
  GemmArgs g;
  g.dtype = g.c_dtype = dtype;
  g.trans_b = true;
  g.m = g.n = g.k = n;
  g.a = a.ptr();
  g.b = b.ptr();
  g.c = c.ptr();
  g.lda = g.ldb = g.ldc = n;
  std::vector<double> times;
  for (int i = 0; i < 7; ++i) {
    const auto t0 = be.mark();
    be.gemm(g);
    const auto t1 = be.mark();
    if (i >= 2) times.push_back(be.seconds_between(t0, t1));
  }
  return 2.0 * static_cast<double>(n) * n * n / percentile(times, 50) / 1e12;
}

namespace {

// `steps` training steps (numbers it, it + 1, ...) traced on every rank: the Chrome trace written by
// rank 0 to `path`, and the result's "trace" entry returned there (null on the other ranks).
json run_traced_steps(Session& session, int64_t it, int64_t steps, const std::string& path, const json& meta) {
  Backend& be = session.backend();
  // The ranks start their traces together: each origin is recorded on the device right after a
  // one-element all-reduce over the world, which ends at the same moment on every device. On the
  // device's stream, not with the host waiting: the card goes on from the timed steps without a pause.
  Buffer token = be.alloc_zeroed(DType::f32, 1);  // (1)
  session.grid().world_comm->all_reduce(token.view());
  token.reset();  // before the step, so that its high-water mark is the timed steps'
  be.begin_trace();
  for (int64_t k = it; k < it + steps; ++k) {
    session.reset_counts();
    session.forward_backward_into_optimizer(k, k + 1);
    session.optimizer_step(k + 1);
    session.loss();
    session.comm_counts();  // the collectives' spans are read with their times
  }
  const std::vector<RankTrace> ranks = gather_traces(be.end_trace());
  if (ranks.empty()) return nullptr;
  json per_rank = json::array();
  size_t slowest = 0;
  for (const RankTrace& r : ranks) {
    per_rank.emplace_back(trace_rank_summary(r, steps));
    if (per_rank.back()["step_ms"].get<double>() > per_rank[slowest]["step_ms"].get<double>())
      slowest = per_rank.size() - 1;
  }
  write_file_atomic_no_overwrite(path, chrome_trace(ranks, meta).dump() + "\n");
  return {{"path", path},
          {"steps", steps},
          {"definition", "steps after the timed ones, each operation's and collective's span recorded by device "
                         "events (host clock on cpu) on its rank's lanes; per rank, means per traced step: step_ms, "
                         "compute_ms (union of operations), comm_ms (union of collectives), comm_hidden_ms (collectives "
                         "on the comm lane beside operations), exposed_ms (waits and blocking collectives), "
                         "compute_gaps_ms (no work on the compute lane), by_operation, by_collective (README, "
                         "Metrics)"},
          {"slowest_rank", per_rank[slowest]},
          {"per_rank", per_rank}};
}

json run_check(RunConfig rc, int64_t check_seq) {
  if (check_seq > 0) {
    rc.model.T = check_seq;
    rc.model.T_max = std::max(check_seq, rc.model.T_max);
  }
  int rank = 0;
  LSS_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  double loss = 0;
  std::map<std::string, std::vector<double>> grads;
  {
    Session dist(rc, MPI_COMM_WORLD);
    loss = dist.forward_backward(0);
    grads = dist.gather_full(true);
  }
  if (rank != 0) return nullptr;
  RunConfig ref = rc;
  ref.strategy = "serial";
  ref.P = 1;
  Session serial(ref, MPI_COMM_SELF);
  const double ref_loss = serial.forward_backward(0);
  const auto ref_grads = serial.gather_full(true);
  // Bounds: fp64 only reorders sums; fp32 reorders fp32 sums; bf16 rounds every activation. The
  // gradients' also that of the dtype their sums move in (--grad-reduce-dtype), where wider.
  const auto bound_of = [](DType d) { return d == DType::f64 ? 1e-10 : d == DType::f32 ? 1e-4 : 5e-2; };
  const double bound = bound_of(rc.model.dtype);
  const double gradient_bound = std::max(bound, bound_of(gradient_wire_dtype(rc.model, rc.strategy_opts)));
  double worst = 0;
  std::string worst_name;
  json checksums = json::object();
  for (const auto& [name, g] : ref_grads) {
    // The key bias's true gradient is zero (softmax shift invariance): its entries are rounding
    // noise on both sides, so its error is reported in the checksums but not bounded.
    const double e = norm_rel_error(grads.at(name), g);
    double sum = 0, sq = 0;
    for (double x : grads.at(name)) sum += x, sq += x * x;
    checksums[name] = {{"sum", sum}, {"norm", std::sqrt(sq)}, {"rel_error", e}};
    if (name.find("c_attn.bias") == std::string::npos && e > worst) worst = e, worst_name = name;
  }
  const double loss_error = std::abs(loss - ref_loss) / std::abs(ref_loss);
  return {{"reference", "serial on one rank, same backend and dtype, step 0"},
          {"seq", rc.model.T},
          {"loss", loss},
          {"reference_loss", ref_loss},
          {"loss_rel_error", loss_error},
          {"grad_rel_error_max", worst},
          {"worst_tensor", worst_name},
          {"bound", bound},
          {"gradient_bound", gradient_bound},
          {"passed", loss_error < bound && worst < gradient_bound},
          {"gradients", checksums}};
}

}  // namespace

int cmd_run(const std::vector<std::string>& args, const std::string& command_line) {
  int rank = 0;
  LSS_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  OptionParser parser = make_parser();
  if (!parser.parse(args)) {
    if (rank == 0) fmt::print("{}", parser.help());
    return 0;
  }
  RunConfig rc = config_from(parser);
  const int64_t min_iters = parser.size("iters"), warmup = parser.size("warmup");
  const double min_time_s = parser.real("min-time");
  const double peak_tflops = parser.real("peak-tflops");
  const std::string export_path = parser.str("export");
  const std::string trace_path = parser.str("trace");
  const int64_t trace_steps = parser.size("trace-steps");
  LSS_REQUIRE_INPUT(trace_steps >= 1, "--trace-steps " + parser.str("trace-steps") + ": must be at least 1");

  Session session(rc, MPI_COMM_WORLD);
  Grid& grid = session.grid();
  Backend& be = session.backend();
  const ModelConfig& m = session.config().model;

  std::string out = parser.str("out");
  if (out.empty()) {
    // One name for all ranks, rank 0's: its clock's second, then "-2", "-3", ... where a run of the
    // same second has the name (scripted runs back to back).
    std::string name;
    if (rank == 0) {
      const std::string stem = fmt::format("results/runs/{}_{}_w{}_sp{}_T{}_{}", rc.strategy, rc.backend, grid.world,
                                           grid.P, m.T, utc_timestamp());
      name = stem + ".json";
      for (int n = 2; path_exists(name); ++n) name = fmt::format("{}-{}.json", stem, n);
    }
    int length = static_cast<int>(name.size());
    LSS_MPI_CHECK(MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD));
    name.resize(static_cast<size_t>(length));
    LSS_MPI_CHECK(MPI_Bcast(name.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD));
    out = name;
  }
  LSS_REQUIRE_INPUT(!path_exists(out), "--out " + out + ": exists already; results are never overwritten");
  LSS_REQUIRE_INPUT(export_path.empty() || !path_exists(export_path),
                    "--export " + export_path + ": exists already; files are never overwritten");
  LSS_REQUIRE_INPUT(trace_path.empty() || !path_exists(trace_path),
                    "--trace " + trace_path + ": exists already; files are never overwritten");
  LSS_REQUIRE_INPUT(trace_path.empty() || (trace_path != out && trace_path != export_path),
                    "--trace " + trace_path + ": the same file as --out or --export");

  const FlopCount flops = model_flops(m);
  if (rank == 0) {
    fmt::print("lssbench run  {} ({})\n", LSS_VERSION, LSS_GIT_COMMIT);
    fmt::print("  {:<14} {}\n", "strategy", rc.strategy);
    fmt::print("  {:<14} {} ({}), {} threads/rank\n", "backend", rc.backend, be.device_name(), rc.threads);
    fmt::print("  {:<14} world {} = dp {} x sp {}\n", "grid", grid.world, grid.R, grid.P);
    fmt::print("  {:<14} L={} C={} H={} D={} V={} T={} T_max={} B={} {} {}\n", "model", m.L, m.C, m.H, m.D(), m.V, m.T,
               m.T_max, m.B, m.causal ? "causal" : "non-causal", dtype_name(m.dtype));
    fmt::print("  {:<14} {}\n", "data", session.data().describe());
    fmt::print("  {:<14} {} warm-up + {} timed steps{}\n", "steps", warmup, min_iters,
               min_time_s > 0 ? fmt::format(", more until {:g} s", min_time_s) : "");
    fmt::print("  {:<14} {:.4g} GFLOP/step\n", "model FLOPs", flops.step / 1e9);
    fmt::print("  {:<14} {}{}\n", "options", session.strategy().options_json().dump(),
               rc.copy_engine_gathers  ? ", all-gathers on the copy engines"
               : rc.registered_gathers ? ", gathered buffers registered with NCCL"
               : rc.symmetric_collectives
                   ? fmt::format(", gathers and reduce-scatters on NCCL's symmetric kernels ({} blocks)",
                                 rc.symmetric_ctas == 0 ? std::string("NCCL's pick") : std::to_string(rc.symmetric_ctas))
                   : "");
    fmt::print("  {:<14} {}\n", "result", out);
  }

  const int64_t base_bytes = be.memory_stats().current_bytes;  // params, grads, AdamW moments
  be.reset_peak();
  std::vector<double> step_s, fwd_s, bwd_s, opt_s, comm_s, exposed_s, bwd_enq_s, opt_enq_s;
  std::vector<double> losses;
  CommModel step_counts, last_counts;  // of the first and of the last step
  bool counts_stable = true;
  const auto wall0 = std::chrono::steady_clock::now();
  auto timed0 = wall0;  // the timed region's start
  std::optional<DeviceState> device_state;
  // Steps past warmup + min_iters while the region is shorter than --min-time: rank 0 decides
  // after each step and tells the others, so that every rank runs the same steps.
  const auto one_more = [&](int64_t it) {
    if (it + 1 < warmup + min_iters) return true;
    if (min_time_s <= 0) return false;
    const double timed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - timed0).count();
    int more = rank == 0 && timed_s < min_time_s;
    LSS_MPI_CHECK(MPI_Bcast(&more, 1, MPI_INT, 0, MPI_COMM_WORLD));
    return more != 0;
  };
  int64_t iters = 0;  // timed steps run
  for (int64_t it = 0;; ++it) {
    if (it == warmup) {
      be.start_device_sampling();
      timed0 = std::chrono::steady_clock::now();
    }
    session.reset_counts();
    StepTimes t;
    // The export reads the first step's gradients: they must be final before the optimizer.
    const bool exporting = it == 0 && !export_path.empty();
    if (exporting) {
      session.forward_backward(it, &t);
      export_step(session, it, export_path);
    } else {
      session.forward_backward_into_optimizer(it, it + 1, &t);
    }
    session.optimizer_step(it + 1, &t);
    const double loss = session.loss();
    const CommModel counts = session.comm_counts();
    losses.push_back(loss);
    last_counts = counts;
    if (it == 0) step_counts = counts;
    else if (!same_counts(counts, step_counts)) counts_stable = false;
    if (it >= warmup) {
      ++iters;
      step_s.push_back(t.total());
      fwd_s.push_back(t.forward);
      bwd_s.push_back(t.backward);
      opt_s.push_back(t.optimizer);
      comm_s.push_back(t.comm);
      exposed_s.push_back(t.comm_exposed);
      bwd_enq_s.push_back(t.backward_enqueue);
      opt_enq_s.push_back(t.optimizer_enqueue);
    }
    const bool more = one_more(it);
    if (rank == 0) {
      const auto now = std::chrono::steady_clock::now();
      const double elapsed = std::chrono::duration<double>(now - wall0).count();
      const int64_t left = std::max<int64_t>(0, warmup + min_iters - it - 1);  // steps --iters still asks for
      double eta = elapsed / static_cast<double>(it + 1) * static_cast<double>(left);
      if (more && it >= warmup)
        eta = std::max(eta, min_time_s - std::chrono::duration<double>(now - timed0).count());
      // A terminal gets one updating line; a log gets one line per step. Past --iters the count
      // has no total.
      const bool tty = isatty(2);
      const std::string of = it + 1 <= warmup + min_iters ? fmt::format("/{}", warmup + min_iters) : "";
      fmt::print(stderr, "{}  step {}{}  loss {:.5f}  {:.1f} ms  ETA {:.0f} s{}", tty ? "\r" : "", it + 1, of, loss,
                 t.total() * 1e3, std::max(0.0, eta), tty ? "   " : "\n");
      if (tty && !more) fmt::print(stderr, "\n");
    }
    if (!more) break;
  }

  // Measure, then check: everything below runs after the timed loop.
  device_state = be.stop_device_sampling();
  // --trace: --trace-steps more steps with every span recorded, at once after the timed ones so
  // that the card is in the same state. Their markers cost host time, so they are not timed steps;
  // the device's sampling has stopped, and the memory high-water marks do not move (each step
  // allocates what the timed ones did).
  json trace = nullptr;
  if (!trace_path.empty()) {
    const json meta = {{"schema", "lssbench-trace"},
                       {"schema_version", 1},
                       {"version", LSS_VERSION},
                       {"git_commit", LSS_GIT_COMMIT},
                       {"command", command_line},
                       {"strategy", rc.strategy},
                       {"backend", rc.backend},
                       {"device", be.device_name()},
                       {"grid", {{"world", grid.world}, {"sp", grid.P}, {"dp", grid.R}}},
                       {"model", {{"L", m.L}, {"C", m.C}, {"H", m.H}, {"T", m.T}, {"B", m.B}, {"dtype", dtype_name(m.dtype)}}},
                       {"strategy_options", session.strategy().options_json()},
                       {"result", out},
                       {"timed_step_median_ms", percentile(max_over_ranks(step_s), 50) * 1e3},
                       {"traced_steps", trace_steps}};
    trace = run_traced_steps(session, warmup + iters, trace_steps, trace_path, meta);
  }
  const json device_states = gather_device_states(device_state, grid.world);
  step_s = max_over_ranks(step_s);
  fwd_s = max_over_ranks(fwd_s);
  bwd_s = max_over_ranks(bwd_s);
  opt_s = max_over_ranks(opt_s);
  comm_s = max_over_ranks(comm_s);
  exposed_s = max_over_ranks(exposed_s);
  bwd_enq_s = max_over_ranks(bwd_enq_s);
  opt_enq_s = max_over_ranks(opt_enq_s);
  const MemoryStats mem = be.memory_stats();
  std::vector<double> mem_v = {static_cast<double>(mem.peak_bytes), static_cast<double>(mem.peak_bytes - base_bytes),
                               static_cast<double>(mem.device_peak_bytes)};
  mem_v = max_over_ranks(mem_v);
  const CommModel expected = session.expected_comm();
  int comm_ok = counts_stable && same_counts(step_counts, expected) ? 1 : 0;
  LSS_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &comm_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  const auto hosts = all_hosts();

  const double median = percentile(step_s, 50);
  const double tokens_per_s = static_cast<double>(m.B * m.T) / median;
  const double tflops_per_dev = flops.step / median / grid.world / 1e12;
  const double datasheet = datasheet_peak_tflops(be.device_name(), m.dtype);
  // The card's GEMM rate, measured after the timed region so that its buffers touch neither the
  // timings nor the memory high-water marks; each rank measures its own device, the slowest counts.
  double gemm_peak = 0;
  std::string gemm_shape;
  if (parser.flag("measure-peak")) {
    const int64_t n = rc.backend == "cuda" ? 8192 : 1024;
    gemm_shape = fmt::format("{}^3 {}", n, dtype_name(m.dtype));
    double mine = measure_gemm_tflops(be, m.dtype, n);
    LSS_MPI_CHECK(MPI_Allreduce(&mine, &gemm_peak, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD));
  }
  // The analytic bound prices the step at the rates just measured (after the timed region too).
  // The sustained bound by default on cuda only: a CPU has no power cap for the heat to reach, and
  // the tests run the bound on CPU many times; an explicit --bound-heat measures it there too.
  json bound = nullptr;
  if (gemm_peak > 0 && parser.flag("bound")) {
    const double heat_s = rc.backend == "cpu" && !parser.given("bound-heat") ? 0.0 : parser.real("bound-heat");
    bound = analytic_bound(session, session.config(), gemm_peak, heat_s);
    bound["step_over_bound"] = median / (bound["bound_ms"].get<double>() * 1e-3);
    bound["step_over_sustained_bound"] =
        bound["sustained"].is_null() ? json(nullptr)
                                     : json(median / (bound["sustained"]["bound_ms"].get<double>() * 1e-3));
    bound["step_over_contended_bound"] = median / (bound["contended"]["bound_ms"].get<double>() * 1e-3);
  }

  // --check: after the timed region, the same configuration (or a shorter sequence) stepped once
  // by this strategy on this grid and by serial on one rank; loss and gradients compared.
  json check = nullptr;
  if (parser.flag("check")) check = run_check(session.config(), parser.size("check-seq"));
  std::string status = "ok";
  if (rank == 0) {
    auto ms = [](const std::vector<double>& v) {
      std::vector<double> out;
      for (double x : v) out.push_back(x * 1e3);
      return out;
    };
    json j;
    j["schema_version"] = 1;
    j["status"] = "ok";
    j["strategy"] = rc.strategy;
    j["backend"] = rc.backend;
    j["config"] = {
        {"layers", m.L},        {"width", m.C},         {"heads", m.H},         {"head_dim", m.D()},
        {"vocab", m.V},         {"seq", m.T},           {"max_seq", m.T_max},   {"batch", m.B},
        {"causal", m.causal},   {"dtype", dtype_name(m.dtype)}, {"seed", m.seed}, {"iters", iters},
        {"min_iters", min_iters}, {"min_time_s", min_time_s}, {"warmup", warmup},
        {"data", rc.data_path.empty() ? "synthetic" : rc.data_path},
        {"threads_per_rank", rc.threads},
        {"optimizer", {{"name", "adamw"}, {"lr", rc.opt.lr}, {"beta1", rc.opt.beta1}, {"beta2", rc.opt.beta2},
                       {"eps", rc.opt.eps}, {"weight_decay", rc.opt.weight_decay}}},
        {"strategy_options", session.strategy().options_json()},
        {"copy_engine_gathers", rc.copy_engine_gathers},
        {"registered_gathers", rc.registered_gathers},
        {"symmetric_collectives", rc.symmetric_collectives},
        {"symmetric_ctas", rc.symmetric_collectives ? json(rc.symmetric_ctas) : json(nullptr)},
        {"options", parser.values()}};
    j["grid"] = {{"world", grid.world}, {"sp", grid.P}, {"dp", grid.R}};
    j["machine"] = {{"hosts", hosts},
                    {"devices", {be.device_name()}},
                    {"device_count", grid.world},
                    {"mpi", mpi_version()},
                    {"compiler", __VERSION__},
                    {"lssbench_version", LSS_VERSION},
                    {"git_commit", LSS_GIT_COMMIT},
                    {"command_line", command_line},
                    {"datasheet_peak_tflops", datasheet > 0 ? json(datasheet) : json(nullptr)}};
    const json versions = library_versions(rc.backend);
    for (auto it = versions.begin(); it != versions.end(); ++it) j["machine"][it.key()] = it.value();
    // Which of the own flash kernels this head dim and dtype run here (what --attention flash uses,
    // and auto at D = 64 and 128 on H100/H200 or where cuDNN declines a shape): bf16 on wgmma or
    // mma.sync, fp32 on the CUDA cores.
    j["machine"]["flash_attention_kernels"] = nullptr;
    // Which path this rank's attention calls took (--attention auto decides per shape).
    j["machine"]["attention_forward_calls"] = nullptr;
#ifdef LSS_HAVE_CUDA
    if (rc.backend == "cuda") {
      j["machine"]["flash_attention_kernels"] =
          m.dtype != DType::bf16 ? "fp32" : cuda::flash_wgmma_available(m.D()) ? "wgmma" : "mma.sync";
      const AttentionPathCalls calls = attention_path_calls(be);
      j["machine"]["attention_forward_calls"] = {{"cudnn", calls.cudnn}, {"flash", calls.flash}};
    }
#endif
    j["loss"] = losses.front();
    j["losses"] = losses;
    j["timing"] = {{"unit", "ms"},
                   {"clock", rc.backend == "cuda" ? "device events on the compute stream, slowest rank per iteration"
                                                : "steady_clock (host), slowest rank per iteration"},
                   {"iterations_ms", ms(step_s)},
                   {"median_ms", median * 1e3},
                   {"p10_ms", percentile(step_s, 10) * 1e3},
                   {"p90_ms", percentile(step_s, 90) * 1e3},
                   {"forward_median_ms", percentile(fwd_s, 50) * 1e3},
                   {"backward_median_ms", percentile(bwd_s, 50) * 1e3},
                   {"optimizer_median_ms", percentile(opt_s, 50) * 1e3},
                   {"backward_enqueue_median_ms", percentile(bwd_enq_s, 50) * 1e3},
                   {"optimizer_enqueue_median_ms", percentile(opt_enq_s, 50) * 1e3},
                   {"comm_median_ms", percentile(comm_s, 50) * 1e3},
                   {"comm_exposed_median_ms", percentile(exposed_s, 50) * 1e3},
                   {"comm_exposed_fraction", percentile(exposed_s, 50) / median},
                   {"device_state", device_states},
                   {"comm_overlap", !rc.strategy_opts.overlap || rc.backend != "cuda"
                                        ? "none: collectives run in order (blocking MPI on CPU, --no-overlap)"
                                        : "communication stream; exposed = compute-stream stall at each wait "
                                          "plus the blocking collectives"}};
    j["metrics"] = {{"tokens_per_s", tokens_per_s},
                    {"flops_per_step", flops.step},
                    {"flops_convention", flops.convention},
                    {"tflops_per_gpu", tflops_per_dev},
                    {"peak_tflops", peak_tflops > 0 ? json(peak_tflops) : json(nullptr)},
                    {"mfu", peak_tflops > 0 ? json(tflops_per_dev / peak_tflops) : json(nullptr)},
                    {"mfu_datasheet", datasheet > 0 ? json(tflops_per_dev / datasheet) : json(nullptr)},
                    {"measured_gemm_tflops", gemm_peak > 0 ? json(gemm_peak) : json(nullptr)},
                    {"measured_gemm_shape", gemm_peak > 0 ? json(gemm_shape) : json(nullptr)},
                    {"mfu_measured", gemm_peak > 0 ? json(tflops_per_dev / gemm_peak) : json(nullptr)},
                    {"peak_mem_bytes", static_cast<int64_t>(mem_v[0])},
                    {"peak_activation_bytes", static_cast<int64_t>(mem_v[1])},
                    {"device_peak_mem_bytes", mem_v[2] < 0 ? json(nullptr) : json(static_cast<int64_t>(mem_v[2]))}};
    if (const std::optional<double> energy = total_energy_j(device_states); energy && *energy > 0) {
      j["metrics"]["energy_j_per_step"] = *energy / static_cast<double>(iters);
      j["metrics"]["tokens_per_joule"] = static_cast<double>(m.B * m.T * iters) / *energy;
    }
    const std::map<std::string, int> sizes = {{"sp", grid.P}, {"dp", grid.R}, {"world", grid.world}};
    j["comm"] = {{"per_step_rank0", counts_json(last_counts, &sizes)},
                 {"expected_rank0", counts_json(expected)},
                 {"matches_model", comm_ok == 1},
                 {"byte_convention", "all_gather: output bytes; reduce_scatter, all_to_all: input bytes; "
                                     "all_reduce: buffer bytes (nccl-tests size)"}};
    j["bound"] = bound;
    j["check"] = check;
    j["trace"] = trace;
    const std::string reason = sanity_verdict(j);
    if (!reason.empty()) {
      j["status"] = "failed";
      j["status_reason"] = reason;
    }
    status = j["status"].get<std::string>();
    write_file_atomic_no_overwrite(out, j.dump(2) + "\n");

    fmt::print("\n  {:<22} {:>14}\n", "result", "value");
    fmt::print("  {:<22} {:>14.6f}\n", "loss (first step)", losses.front());
    fmt::print("  {:<22} {:>14.6f}\n", "loss (last step)", losses.back());
    fmt::print("  {:<22} {:>14.3f}\n", "step median (ms)", median * 1e3);
    fmt::print("  {:<22} {:>14.3f}\n", "step p10 (ms)", percentile(step_s, 10) * 1e3);
    fmt::print("  {:<22} {:>14.3f}\n", "step p90 (ms)", percentile(step_s, 90) * 1e3);
    fmt::print("  {:<22} backward {:.2f} of {:.2f} on the device, optimizer {:.2f} of {:.2f}\n", "host enqueue (ms)",
               percentile(bwd_enq_s, 50) * 1e3, percentile(bwd_s, 50) * 1e3, percentile(opt_enq_s, 50) * 1e3,
               percentile(opt_s, 50) * 1e3);
    if (!device_states.is_null()) {
      // The rank whose device ran at the lowest median clock.
      const json* low = nullptr;
      for (const json& d : device_states["per_rank"])
        if (!d.is_null() && (!low || d["sm_clock_mhz_median"].get<double>() < (*low)["sm_clock_mhz_median"].get<double>()))
          low = &d;
      const json& d = *low;
      // The mean power from the energy counter where the driver has one: the power reading is a
      // moving average that lags a region shorter than its window.
      const bool mean = d.contains("mean_power_w");
      fmt::print("  {:<22} SM {:.0f} MHz median (top {:.0f}), {:.0f} W {} of {:.0f}, power cap in {:.0f}% of samples{}\n",
                 grid.world > 1 ? "device (lowest clock)" : "device during steps", d["sm_clock_mhz_median"].get<double>(),
                 d["sm_clock_mhz_max"].get<double>(), (mean ? d["mean_power_w"] : d["power_w_median"]).get<double>(),
                 mean ? "mean" : "median reading", d["power_limit_w"].get<double>(),
                 100.0 * d["power_capped_fraction"].get<double>(),
                 d["slowdown_fraction"].get<double>() > 0
                     ? fmt::format(", thermal/hw slowdown in {:.0f}%", 100.0 * d["slowdown_fraction"].get<double>())
                     : "");
    }
    fmt::print("  {:<22} {:>14.3f}\n", "comm median (ms)", percentile(comm_s, 50) * 1e3);
    fmt::print("  {:<22} {:>14.3f}\n", "comm exposed (ms)", percentile(exposed_s, 50) * 1e3);
    if (!bound.is_null()) {
      fmt::print("  {:<22} {:>14.3f}  (step / bound {:.3f})\n", "analytic bound (ms)", bound["bound_ms"].get<double>(),
                 bound["step_over_bound"].get<double>());
      if (!bound["sustained"].is_null())
        fmt::print("  {:<22} {:>14.3f}  (step / sustained {:.3f}; each kernel after {:g} s back to back)\n",
                   "sustained bound (ms)", bound["sustained"]["bound_ms"].get<double>(),
                   bound["step_over_sustained_bound"].get<double>(), bound["sustained"]["heat_s"].get<double>());
      fmt::print("  {:<22} {:>14.3f}  (step / contended {:.3f}; the hidden collectives timed beside GEMMs)\n",
                 "contended bound (ms)", bound["contended"]["bound_ms"].get<double>(),
                 bound["step_over_contended_bound"].get<double>());
      // Where the bound's time goes on rank 0 (bound.rank0 has each kernel).
      const json& b0 = bound["rank0"];
      const double opt_share = b0["optimizer_hidden_share"].get<double>();
      fmt::print("  {:<22} gemm {:.2f}, attention {:.2f}, elementwise {:.2f}, passes {:.2f}, optimizer {:.2f}{}, "
                 "exposed comm {:.2f}\n",
                 "  rank 0's parts (ms)", b0["gemm_ms"].get<double>(), b0["attention_ms"].get<double>(),
                 b0["elementwise_ms"].get<double>(), b0["passes_ms"].get<double>(),
                 b0["optimizer_exposed_ms"].get<double>(),
                 opt_share > 0 ? fmt::format(" (of {:.2f}: {:.0f}% beside backward)", b0["optimizer_ms"].get<double>(),
                                             100 * opt_share)
                               : std::string(),
                 b0["comm_exposed_ms"].get<double>());
    }
    if (const json& calls = j["machine"]["attention_forward_calls"]; !calls.is_null())
      fmt::print("  {:<22} cuDNN {}, own flash ({}) {} (rank 0's forward calls)\n", "attention path",
                 calls["cudnn"].get<int64_t>(), j["machine"]["flash_attention_kernels"].get<std::string>(),
                 calls["flash"].get<int64_t>());
    fmt::print("  {:<22} {:>14.1f}\n", "tokens/s", tokens_per_s);
    fmt::print("  {:<22} {:>14.4f}\n", "TFLOP/s per device", tflops_per_dev);
    if (j["metrics"].contains("energy_j_per_step"))
      fmt::print("  {:<22} {:>14.1f}  ({:.0f} tokens/J, all {} devices)\n", "energy per step (J)",
                 j["metrics"]["energy_j_per_step"].get<double>(), j["metrics"]["tokens_per_joule"].get<double>(),
                 grid.world);
    else if (!device_states.is_null())
      for (const json& d : device_states["per_rank"])
        if (!d.is_null() && d.contains("energy_updates") && !d.contains("energy_j")) {
          const int64_t updates = d["energy_updates"].get<int64_t>();
          fmt::print("  {:<22} {:>14}  (the energy counter's {} update{} in the {:.2f} s region spanned {:.2f} s; it "
                     "needs {:.1f} s: --min-time 1)\n",
                     "energy per step (J)", "not measured", updates, updates == 1 ? "" : "s",
                     d["region_s"].get<double>(), d.value("energy_window_s", 0.0), kMinEnergyWindowS);
          break;
        }
    if (!trace.is_null()) {
      const json& r = trace["slowest_rank"];
      fmt::print("  {:<22} {:.2f} ms{} traced on rank {}: compute {:.2f}, comm {:.2f} (hidden {:.2f}), exposed {:.2f}, "
                 "compute-lane gaps {:.2f} ms\n",
                 "step trace", r["step_ms"].get<double>(),
                 trace_steps > 1 ? fmt::format(" (mean of {} steps)", trace_steps) : std::string(), r["rank"].get<int>(), r["compute_ms"].get<double>(),
                 r["comm_ms"].get<double>(), r["comm_hidden_ms"].get<double>(), r["exposed_ms"].get<double>(),
                 r["compute_gaps_ms"].get<double>());
      fmt::print("  {:<22} {}\n", "", trace["path"].get<std::string>());
    }
    fmt::print("  {:<22} {:>14}\n", "peak memory/rank", human_bytes(mem_v[0]));
    fmt::print("  {:<22} {:>14}\n", "peak activations/rank", human_bytes(mem_v[1]));
    fmt::print("  {:<22} {:>14}\n", "comm matches model", comm_ok ? "yes" : "NO");
    if (!check.is_null())
      fmt::print("  {:<22} {:>14}\n", "check vs serial", check["passed"].get<bool>() ? "passed" : "FAILED");
    fmt::print("  {:<22} {:>14}\n", "status", status);
    if (!reason.empty()) fmt::print("  reason: {}\n", reason);
    fmt::print("  wrote {}\n", out);
  }
  int ok = status == "ok" ? 1 : 0;
  LSS_MPI_CHECK(MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD));
  return ok ? 0 : 1;
}

}  // namespace lss
