// Collective micro-benchmarks through the project's communicators, under MPI:
//   mpiexec -n P bench_collectives [--backend=cpu|cuda] [--large]
//       [--copy-engine | --registered | --symmetric [--symmetric-ctas=N]] [Google Benchmark flags]
// Every rank runs the same fixed iteration count; each iteration's time (backend markers:
// device events on cuda) is max-reduced over ranks, and rank 0 reports. Sizes are the total
// buffer of nccl-tests ("size": the gathered output of all_gather, the input of
// reduce_scatter/all_to_all, the buffer of all_reduce); algbw = size / time and
// busbw = algbw x (P-1)/P (all_gather, reduce_scatter, all_to_all) or x 2(P-1)/P (all_reduce).
// all_gather_zigzag is lss's placed K/V gather (Communicator::all_gather_placed, each rank's two
// chunks at their token positions), counted as an all_gather; reduce_scatter_zigzag its inverse
// (reduce_scatter_placed), counted as a reduce_scatter.
// The overlap_* benchmarks time an asynchronous all-gather or reduce-scatter with the model's MLP
// GEMMs running beside it on the compute stream, against each alone: how much of the collective
// the GEMMs hide and how much each slows the other (the trade of every overlapped schedule).
// --copy-engine (cuda): the communicator of lssbench's --copy-engine-gathers, whose all-gathers
// run on the copy engines from symmetric windows; every operand is then in those windows.
// --registered (cuda): every operand in ncclMemAlloc blocks registered with the communicator
// (lssbench's --registered-gathers), where NCCL's kernels skip their staging copies.
// --symmetric (cuda): every operand in symmetric windows at NCCL's default CTA policy (lssbench's
// --symmetric-collectives), where NCCL runs its symmetric kernels on --symmetric-ctas blocks
// (default 24, as lssbench's; 0: NCCL's own pick).
#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <optional>

#include "bench/bench_common.h"
#include "comm/grid.h"
#include "core/check.h"
#include "lss_git_commit.h"
#include "model/layers.h"
#ifdef LSS_HAVE_CUDA
#include "comm/nccl_communicator.h"
#include "kernels/cuda/cuda_backend.h"
#endif

namespace lss::bench {
namespace {

Settings g_settings;
lss::GatherMemory g_gather_memory = lss::GatherMemory::plain;
std::unique_ptr<Backend> g_backend;
Grid g_grid;  // one group of all ranks: the collectives run on g_grid.seq
constexpr int kIterations = 20;

// A collective's operand of n random elements, in symmetric memory where --copy-engine or
// --registered set one.
Buffer operand(DType dtype, int64_t n, uint64_t seed) {
  Buffer values = random_buffer(*g_backend, dtype, n, seed);
  Buffer b = g_backend->alloc_symmetric(dtype, n);
  g_backend->copy(b.view(), values.view());
  return b;
}

// kAllGatherZigzag: all_gather_placed as lss's zigzag K/V gather runs it, each rank's part in two
// pieces landing at blocks q and 2P-1-q of the gathered buffer (NCCL: grouped broadcasts), to set
// against the rank-major all_gather and the copy it replaces.
// kReduceScatterZigzag: its inverse, reduce_scatter_placed from token order (NCCL: grouped
// reduces), against the rank-major reduce-scatter and the copy into rank order before it.
enum Kind { kAllGather, kReduceScatter, kAllReduce, kAllToAll, kAllGatherZigzag, kReduceScatterZigzag };

// Seconds of op() on the compute stream, slowest rank.
template <class Op>
double timed(Op op) {
  const auto a = g_backend->mark();
  op();
  const auto b = g_backend->mark();
  double t = g_backend->seconds_between(a, b);
  MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return t;
}

void collective(benchmark::State& state, Kind kind) {
  const int P = g_grid.P;
  const int64_t bytes = state.range(0);
  const DType dt = bench_dtype(g_settings);
  const int64_t es = static_cast<int64_t>(dtype_size(dt));
  const int64_t total = bytes / es / (2 * P) * (2 * P);  // elements of the full buffer, a multiple of 2P
  Buffer full = operand(dt, total, 11);
  Buffer part = operand(dt, total / P, 12);
  Buffer other = g_backend->alloc(dt, total);
  Communicator& comm = *g_grid.seq;
  std::vector<PlacedPiece> zigzag;
  const int64_t chunk = total / (2 * P);
  for (int q = 0; q < P; ++q) {
    zigzag.push_back({q, 0, chunk, q * chunk});
    zigzag.push_back({q, chunk, chunk, (2 * P - 1 - q) * chunk});
  }
  auto run = [&] {
    switch (kind) {
      case kAllGather: comm.all_gather(part.view(), full.view()); break;
      case kAllGatherZigzag: comm.all_gather_placed(part.view(), other.view(), zigzag); break;
      case kReduceScatterZigzag: comm.reduce_scatter_placed(full.view(), part.view(), zigzag); break;
      case kReduceScatter: comm.reduce_scatter(full.view(), part.view()); break;
      case kAllReduce: comm.all_reduce(full.view()); break;
      case kAllToAll: comm.all_to_all(full.view(), other.view()); break;
    }
  };
  run();
  for (auto _ : state) state.SetIterationTime(timed(run));
  const double size = static_cast<double>(total * es);
  const double factor = kind == kAllReduce ? 2.0 * (P - 1) / P : static_cast<double>(P - 1) / P;  // zigzag: as all_gather
  state.counters["size_bytes"] = size;
  state.counters["algbw_GB/s"] = benchmark::Counter(size / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["busbw_GB/s"] = benchmark::Counter(size * factor / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

template <class Op>
double median_seconds(Op op, int runs) {
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) t.push_back(timed(op));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Args: the collective's size (as above) and the number of GEMMs beside it, each the MLP's
// first linear layer on `rows` local rows, (rows, C) x (C, 4C), C = 2048 with --large (the
// model of GPU.md; rows 4096 = T 16K on 4 ranks), else 64 on 256 rows. Iteration time: the
// collective started, the GEMMs, the wait, on the compute stream. Counters (microseconds, slowest
// rank, medians): coll_alone_us, gemms_alone_us, gemms_beside_us (the GEMMs while the collective
// runs), together_us; hidden = (coll_alone + gemms_alone - together) / min(coll_alone,
// gemms_alone), 1 when the shorter one is hidden whole at no cost to the other, 0 when they
// run as if one after the other; gemm_slowdown = gemms_beside / gemms_alone. The third arg,
// sm_reserve, is the SMs the GEMMs beside the collective leave to it (Backend::reserve_sms; 0:
// they plan for all); gemms_reserved_alone_us times them so planned with nothing beside.
void overlap(benchmark::State& state, Kind kind) {
  const int P = g_grid.P;
  const int64_t bytes = state.range(0), gemms = state.range(1);
  const int sm_reserve = static_cast<int>(state.range(2));
  const DType dt = bench_dtype(g_settings);
  const int64_t es = static_cast<int64_t>(dtype_size(dt));
  const int64_t total = bytes / es / P * P;
  const int64_t C = g_settings.large ? 2048 : 64, rows = g_settings.large ? 4096 : 256;
  Buffer full = operand(dt, total, 11);                          // (total)
  Buffer part = operand(dt, total / P, 12);                      // (total / P)
  Buffer x = random_buffer(*g_backend, dt, rows * C, 13);        // (rows, C)
  Buffer w = random_buffer(*g_backend, dt, 4 * C * C, 14, 0.02);  // (4C, C)
  Buffer bias = random_buffer(*g_backend, dt, 4 * C, 15);        // (4C)
  Buffer y = g_backend->alloc(dt, rows * 4 * C);                 // (rows, 4C)
  Communicator& comm = *g_grid.seq;
  auto run_gemms = [&] {
    for (int64_t i = 0; i < gemms; ++i) linear_forward(*g_backend, y.view(), x.view(), w.view(), bias.view(), rows, C, 4 * C);
  };
  auto start = [&] {
    return kind == kAllGather ? comm.start_all_gather(part.view(), full.view())
                              : comm.start_reduce_scatter(full.view(), part.view());
  };
  auto alone = [&] {
    CommHandle h = start();
    comm.wait(h);
  };
  double beside = 0;
  auto reserved_gemms = [&] {
    g_backend->reserve_sms(sm_reserve);
    run_gemms();
    g_backend->reserve_sms(0);
  };
  auto together = [&] {
    const auto a = g_backend->mark();
    CommHandle h = start();
    reserved_gemms();
    const auto m = g_backend->mark();
    comm.wait(h);
    beside = g_backend->seconds_between(a, m);
  };
  alone();
  run_gemms();
  reserved_gemms();
  together();
  constexpr int kRuns = 5;
  const double coll_alone = median_seconds(alone, kRuns), gemms_alone = median_seconds(run_gemms, kRuns);
  const double gemms_reserved_alone = median_seconds(reserved_gemms, kRuns);
  std::vector<double> beside_runs, together_runs;
  for (auto _ : state) {
    const double t = timed(together);
    MPI_Allreduce(MPI_IN_PLACE, &beside, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    beside_runs.push_back(beside);
    together_runs.push_back(t);
    state.SetIterationTime(t);
  }
  std::sort(beside_runs.begin(), beside_runs.end());
  std::sort(together_runs.begin(), together_runs.end());
  const double gemms_beside = beside_runs[beside_runs.size() / 2], both = together_runs[together_runs.size() / 2];
  state.counters["size_bytes"] = static_cast<double>(total * es);
  state.counters["coll_alone_us"] = coll_alone * 1e6;
  state.counters["gemms_alone_us"] = gemms_alone * 1e6;
  state.counters["gemms_reserved_alone_us"] = gemms_reserved_alone * 1e6;
  state.counters["gemms_beside_us"] = gemms_beside * 1e6;
  state.counters["together_us"] = both * 1e6;
  state.counters["hidden"] = (coll_alone + gemms_alone - both) / std::min(coll_alone, gemms_alone);
  state.counters["gemm_slowdown"] = gemms_beside / gemms_alone;
}

void register_all() {
  const std::vector<std::pair<const char*, Kind>> kinds = {
      {"all_gather", kAllGather}, {"reduce_scatter", kReduceScatter}, {"all_reduce", kAllReduce}, {"all_to_all", kAllToAll}};
  std::vector<std::pair<const char*, Kind>> all = kinds;
  if (g_grid.seq->places_gathers()) all.push_back({"all_gather_zigzag", kAllGatherZigzag});
  all.push_back({"reduce_scatter_zigzag", kReduceScatterZigzag});
  for (const auto& [name, kind] : all) {
    auto* b = benchmark::RegisterBenchmark(name, [kind = kind](benchmark::State& s) { collective(s, kind); });
    b->ArgNames({"bytes"})->UseManualTime()->Iterations(kIterations)->Unit(benchmark::kMicrosecond);
    const int64_t hi = g_settings.large ? (int64_t{1} << 30) : (int64_t{1} << 24);
    for (int64_t s = int64_t{1} << 16; s <= hi; s *= 4) b->Args({s});
  }
  // The K/V gather of the model at T = 16K (32 MiB per half, 64 MiB whole in bf16 with --large:
  // T * 2C * 2 bytes, halves of the chunk pipeline) and its reduce-scatter, beside 1-8 GEMMs.
  const std::vector<std::pair<const char*, Kind>> overlapped = {{"overlap_all_gather", kAllGather},
                                                                 {"overlap_reduce_scatter", kReduceScatter}};
  for (const auto& [name, kind] : overlapped) {
    auto* b = benchmark::RegisterBenchmark(name, [kind = kind](benchmark::State& s) { overlap(s, kind); });
    b->ArgNames({"bytes", "gemms", "sm_reserve"})->UseManualTime()->Iterations(kIterations)->Unit(benchmark::kMicrosecond);
    const std::vector<int64_t> sizes = g_settings.large ? std::vector<int64_t>{int64_t{1} << 25, int64_t{1} << 26, int64_t{1} << 27}
                                                        : std::vector<int64_t>{int64_t{1} << 20};
    // With --large also the GEMMs planned for fewer SMs (the CUDA backend's; others ignore it).
    const std::vector<int64_t> reserves = g_settings.large ? std::vector<int64_t>{0, 8, 16, 24, 32, 48}
                                                           : std::vector<int64_t>{0};
    for (int64_t size : sizes)
      for (int64_t gemms : {1, 2, 4, 8})
        for (int64_t reserve : reserves) b->Args({size, gemms, reserve});
  }
}

class NullReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace
}  // namespace lss::bench

int main(int argc, char** argv) {
  using namespace lss::bench;
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  g_settings = parse_settings(&argc, argv);
  // The operands' memory: at most one of these flags (each rank reads the same command line, so
  // every rank refuses a bad one alike).
  const std::vector<std::pair<std::string, lss::GatherMemory>> memory_flags = {
      {"--copy-engine", lss::GatherMemory::copy_engine},
      {"--registered", lss::GatherMemory::registered},
      {"--symmetric", lss::GatherMemory::symmetric}};
  std::vector<std::string> memory_given;
  const std::string ctas_flag = "--symmetric-ctas=";
  std::optional<std::string> ctas_text;  // as given; none: the default
  {
    int out = 1;
    for (int i = 1; i < argc; ++i) {
      if (std::string(argv[i]).rfind(ctas_flag, 0) == 0) {
        ctas_text = argv[i] + ctas_flag.size();
        continue;
      }
      const auto flag = std::find_if(memory_flags.begin(), memory_flags.end(),
                                     [&](const auto& f) { return f.first == argv[i]; });
      if (flag == memory_flags.end()) {
        argv[out++] = argv[i];
        continue;
      }
      g_gather_memory = flag->second;
      memory_given.push_back(flag->first);
    }
    argc = out;
  }
  int rc = 0;
  try {
    // (The messages are built only when their check fails.)
    LSS_REQUIRE_INPUT(memory_given.size() <= 1,
                      memory_given[0] + " with " + memory_given[1] + ": the operands live in one kind of memory (give one)");
    int symmetric_ctas = lss::kDefaultSymmetricCtas;
    if (ctas_text) {
      LSS_REQUIRE_INPUT(g_gather_memory == lss::GatherMemory::symmetric,
                        ctas_flag + *ctas_text + ": the blocks of NCCL's symmetric kernels, which run only with --symmetric");
      char* end = nullptr;
      const long v = std::strtol(ctas_text->c_str(), &end, 10);
      // Not a whole number (nothing given included): out of range, so that the message is the same.
      const bool whole = end != ctas_text->c_str() && *end == '\0';
      lss::require_symmetric_ctas_in_range(whole ? v : -1, ctas_flag + *ctas_text);
      symmetric_ctas = static_cast<int>(v);
    }
    const lss::NodePosition node = lss::node_position(MPI_COMM_WORLD);
    g_backend =
        lss::make_backend(lss::BackendOptions{g_settings.backend, g_settings.threads, node.rank, g_settings.attention});
    int world = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    LSS_REQUIRE_INPUT(memory_given.empty() || g_settings.backend == "cuda",
                      memory_given[0] + " needs --backend=cuda");
#ifdef LSS_HAVE_CUDA
    if (g_settings.backend == "cuda")
      g_grid = lss::make_nccl_grid(MPI_COMM_WORLD, world, lss::cuda_stream_of(*g_backend), g_gather_memory,
                                   symmetric_ctas);
    else g_grid = lss::make_mpi_grid(MPI_COMM_WORLD, world, node.size);
#else
    g_grid = lss::make_mpi_grid(MPI_COMM_WORLD, world, node.size);
#endif
    g_backend->use_symmetric_memory(g_grid.seq->symmetric_memory());
    register_all();
    if (rank != 0) {
      // Only rank 0 reports: the others drop any --benchmark_out so that one file is written.
      int out = 1;
      for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]).rfind("--benchmark_out", 0) != 0) argv[out++] = argv[i];
      argc = out;
    }
    benchmark::Initialize(&argc, argv);
    benchmark::AddCustomContext("backend", g_backend->device_name());
    benchmark::AddCustomContext("ranks", std::to_string(g_grid.world));
    benchmark::AddCustomContext("git_commit", LSS_GIT_COMMIT);
    benchmark::AddCustomContext("all_gather_engine",
                                g_gather_memory == lss::GatherMemory::copy_engine
                                    ? "copy engines (NCCL zero-CTA policy, symmetric windows)"
                                    : g_gather_memory == lss::GatherMemory::registered
                                          ? "SM kernels, operands registered (ncclCommRegister)"
                                    : g_gather_memory == lss::GatherMemory::symmetric
                                          ? "NCCL's symmetric kernels on " +
                                                (symmetric_ctas == 0 ? std::string("NCCL's pick of")
                                                                     : std::to_string(symmetric_ctas)) +
                                                " blocks, operands in symmetric windows"
                                          : "SM kernels");
    if (rank == 0) {
      benchmark::RunSpecifiedBenchmarks();
    } else {
      NullReporter quiet;
      benchmark::RunSpecifiedBenchmarks(&quiet);
    }
    benchmark::Shutdown();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[rank %d] bench_collectives: %s\n", rank, e.what());
    rc = 2;
  }
  if (g_backend) g_backend->use_symmetric_memory(nullptr);
  g_grid = lss::Grid{};
  g_backend.reset();
  MPI_Finalize();
  return rc;
}
