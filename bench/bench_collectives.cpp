// Collective micro-benchmarks through the project's communicators, under MPI:
//   mpiexec -n P bench_collectives [--backend=cpu|cuda] [--large] [Google Benchmark flags]
// Every rank runs the same fixed iteration count; each iteration's time (backend markers:
// device events on cuda) is max-reduced over ranks, and rank 0 reports. Sizes are the total
// buffer of nccl-tests ("size": the gathered output of all_gather, the input of
// reduce_scatter/all_to_all, the buffer of all_reduce); algbw = size / time and
// busbw = algbw x (P-1)/P (all_gather, reduce_scatter, all_to_all) or x 2(P-1)/P (all_reduce).
#include <mpi.h>

#include "bench/bench_common.h"
#include "comm/grid.h"
#ifdef LSS_HAVE_CUDA
#include "comm/nccl_communicator.h"
#include "kernels/cuda/cuda_backend.h"
#endif

namespace lss::bench {
namespace {

Settings g_settings;
std::unique_ptr<Backend> g_backend;
Grid g_grid;
constexpr int kIterations = 20;

enum Kind { kAllGather, kReduceScatter, kAllReduce, kAllToAll };

void collective(benchmark::State& state, Kind kind) {
  const int P = g_grid.world;
  const int64_t bytes = state.range(0);
  const DType dt = bench_dtype(g_settings);
  const int64_t es = static_cast<int64_t>(dtype_size(dt));
  const int64_t total = bytes / es / P * P;  // elements of the full buffer, a multiple of P
  Buffer full = random_buffer(*g_backend, dt, total, 11);
  Buffer part = random_buffer(*g_backend, dt, total / P, 12);
  Buffer other = g_backend->alloc(dt, total);
  Communicator& comm = *g_grid.world_comm;
  auto run = [&] {
    switch (kind) {
      case kAllGather: comm.all_gather(part.view(), full.view()); break;
      case kReduceScatter: comm.reduce_scatter(full.view(), part.view()); break;
      case kAllReduce: comm.all_reduce(full.view()); break;
      case kAllToAll: comm.all_to_all(full.view(), other.view()); break;
    }
  };
  run();
  for (auto _ : state) {
    const auto a = g_backend->mark();
    run();
    const auto b = g_backend->mark();
    double t = g_backend->seconds_between(a, b);
    MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    state.SetIterationTime(t);
  }
  const double size = static_cast<double>(total * es);
  const double factor = kind == kAllReduce ? 2.0 * (P - 1) / P : static_cast<double>(P - 1) / P;
  state.counters["size_bytes"] = size;
  state.counters["algbw_GB/s"] = benchmark::Counter(size / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["busbw_GB/s"] = benchmark::Counter(size * factor / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void register_all() {
  const std::vector<std::pair<const char*, Kind>> kinds = {
      {"all_gather", kAllGather}, {"reduce_scatter", kReduceScatter}, {"all_reduce", kAllReduce}, {"all_to_all", kAllToAll}};
  for (const auto& [name, kind] : kinds) {
    auto* b = benchmark::RegisterBenchmark(name, [kind = kind](benchmark::State& s) { collective(s, kind); });
    b->ArgNames({"bytes"})->UseManualTime()->Iterations(kIterations)->Unit(benchmark::kMicrosecond);
    const int64_t hi = g_settings.large ? (int64_t{1} << 30) : (int64_t{1} << 24);
    for (int64_t s = int64_t{1} << 16; s <= hi; s *= 4) b->Args({s});
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
  int rc = 0;
  try {
    const int local = lss::node_position(MPI_COMM_WORLD).rank;
    g_backend = lss::make_backend(lss::BackendOptions{g_settings.backend, g_settings.threads, local, g_settings.attention});
#ifdef LSS_HAVE_CUDA
    if (g_settings.backend == "cuda") g_grid = lss::make_nccl_grid(MPI_COMM_WORLD, 1, lss::cuda_stream_of(*g_backend));
    else g_grid = lss::make_mpi_grid(MPI_COMM_WORLD, 1);
#else
    g_grid = lss::make_mpi_grid(MPI_COMM_WORLD, 1);
#endif
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
  g_grid = lss::Grid{};
  g_backend.reset();
  MPI_Finalize();
  return rc;
}
