// `lssbench compare BASE NEW`: regression check of two result files or folders.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace lss {

struct CompareTolerances {
  double throughput = 0.05;  // tokens/s may fall by this fraction
  double memory = 0.05;      // peak memory may grow by this fraction
  double loss = 1e-5;        // first-step loss, relative
  double exposed = 0.03;     // exposed communication may grow by this fraction of the step (absolute)
  double energy = 0.05;      // energy per step (where both results read it) may grow by this fraction
  bool timing = true;        // false: skip throughput (deterministic comparisons on noisy CPUs)
  bool allow_missing = false;
};

struct CompareReport {
  std::vector<std::string> regressions, notes;
  std::vector<std::vector<std::string>> table;  // point, metric, base, new, change, verdict
};

// Compares matched points (by configuration) of two sets of results.
CompareReport compare_results(const std::vector<nlohmann::ordered_json>& base,
                              const std::vector<nlohmann::ordered_json>& fresh, const CompareTolerances& tol);

int cmd_compare(const std::vector<std::string>& args);

}  // namespace lss
