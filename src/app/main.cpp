// lssbench: long-sequence distributed transformer training benchmark.
#include <mpi.h>

#include <unistd.h>

#include <cstdio>
#include <exception>
#include <new>
#include <fmt/format.h>
#include <string>
#include <vector>

#include "app/compare.h"
#include "app/project.h"
#include "app/result.h"
#include "app/run.h"
#include "app/sweep.h"
#include "core/check.h"

namespace {
const char* kUsage =
    "usage: mpiexec -n WORLD lssbench <command> [options]\n"
    "\n"
    "commands:\n"
    "  run      train one configuration with one strategy; print a table and write the result JSON\n"
    "  sweep    run a sweep specification (sweeps/*.json): many points, resumable, aggregated\n"
    "  compare  regression check of two result files or folders (BASE NEW)\n"
    "  project  price one configuration on a grid larger than this machine (one process; README, Projection)\n"
    "  validate check result JSON files against schema v1 (RESULTS.md)\n"
    "\n"
    "`lssbench <command> --help` lists a command's options with their defaults.\n";
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string command_line;
  for (int i = 0; i < argc; ++i) command_line += (i ? " " : "") + std::string(argv[i]);
  int rc = 0;
  try {
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
      if (rank == 0) fmt::print("{}", kUsage);
      rc = args.empty() ? 2 : 0;
    } else if (args[0] == "sweep") {
      // The sweep is a driver: it launches its own MPI jobs, so it runs on one process.
      int world = 1;
      MPI_Comm_size(MPI_COMM_WORLD, &world);
      if (world != 1) throw lss::UsageError("sweep launches its own MPI jobs: run it without mpiexec");
      char self[4096] = {};
      const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
      rc = lss::cmd_sweep({args.begin() + 1, args.end()}, n > 0 ? std::string(self, static_cast<size_t>(n)) : argv[0]);
    } else if (args[0] == "compare") {
      rc = rank == 0 ? lss::cmd_compare({args.begin() + 1, args.end()}) : 0;
    } else if (args[0] == "validate") {
      rc = rank == 0 ? lss::cmd_validate({args.begin() + 1, args.end()}) : 0;
    } else if (args[0] == "project") {
      rc = lss::cmd_project({args.begin() + 1, args.end()}, command_line);
    } else if (args[0] == "run") {
      rc = lss::cmd_run({args.begin() + 1, args.end()}, command_line);
    } else {
      throw lss::UsageError("unknown command '" + args[0] + "' (see lssbench --help)");
    }
  } catch (const lss::UsageError& e) {
    // Every rank parses the same arguments and reaches the same verdict, so each reports it and
    // exits non-zero without a collective that could hang.
    std::fprintf(stderr, "[rank %d] lssbench: error: %s\n", rank, e.what());
    rc = 2;
  } catch (const lss::OutOfMemoryError& e) {
    std::fprintf(stderr, "[rank %d on %s] lssbench: out of memory: %s\n", rank, lss::host_name().c_str(), e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 4);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "[rank %d on %s] lssbench: out of memory: host allocation failed\n", rank,
                 lss::host_name().c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 4);
  } catch (const std::exception& e) {
    lss::fatal_error(__FILE__, __LINE__, "lssbench", e.what());
  }
  MPI_Finalize();
  return rc;
}
