// `lssbench sweep SPEC --out DIR`: runs a sweep specification (sweeps/*.json) point by point, each
// point its own MPI job under a timeout, resumable, and aggregates the results.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace lss {

// One point of a sweep: a full `lssbench run` configuration.
struct SweepPoint {
  std::string id;         // file-name-safe, unique within the sweep
  std::string strategy;
  int world = 1, sp = 1;
  int64_t seq = 0;
  std::vector<std::string> args;  // the `lssbench run` arguments (without --out)
};

struct SweepSpec {
  std::string name, mode;  // mode: weak | strong | max_seq
  nlohmann::ordered_json raw;
  std::vector<SweepPoint> points;  // weak/strong: all points; max_seq: none (searched)
  int timeout_s = 600;
  std::string launcher = "auto";   // auto | mpiexec | srun
  std::string binary;              // lssbench to run (default: this executable)
  int64_t max_seq_granularity = 0, max_seq_limit = 0;  // max_seq mode only
  int trace_steps = 0;  // each weak/strong point traces this many steps into traces/<id>.json (0: none)
};

// Parses and validates a spec; throws UsageError naming the file and the bad field.
SweepSpec load_sweep_spec(const std::string& path);

// Derived metrics over point results (fields of RESULTS.md): speedup and memory ratio of lss over
// megatron_sp at matching points, strong- and weak-scaling efficiencies, throughput against T.
nlohmann::ordered_json aggregate_points(const std::vector<nlohmann::ordered_json>& points, const std::string& mode);

int cmd_sweep(const std::vector<std::string>& args, const std::string& self_path);

}  // namespace lss
