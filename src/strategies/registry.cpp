// The registry of strategies: adding one is its folder, one line here and one CMake entry.
#include <algorithm>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <functional>

#include "baselines/megatron_sp/megatron_sp.h"
#include "core/check.h"
#include "strategies/lss/lss.h"
#include "strategies/serial/serial.h"
#include "strategies/strategy.h"

namespace lss {

namespace {
using Factory = std::function<std::unique_ptr<Strategy>(StrategyContext)>;
struct Entry {
  std::string name;
  Factory make;
  // The `lssbench run` options of StrategyOptions that this strategy reads, of those only some
  // strategies read (the rest, e.g. --overlap or --distributed-optimizer, every strategy reads).
  std::vector<std::string> options;
};
const std::vector<Entry>& registry() {
  static const std::vector<Entry> r = {
      {"serial", make_serial_strategy, {}},
      {"lss", make_lss_strategy,
       {"keep-kv", "zigzag", "split-causal", "chunk-pipeline", "placed-reduce-scatter", "local-cross-block", "placed-gather-min",
        "recompute"}},
      {"megatron_sp", make_megatron_sp_strategy, {"regather-ln", "scatter-chunks", "recompute"}},
  };
  return r;
}

const Entry& entry(const std::string& name) {
  for (const auto& e : registry())
    if (e.name == name) return e;
  throw UsageError(fmt::format("--strategy: unknown value '{}' (expected one of: {})", name,
                               fmt::join(strategy_names(), ", ")));
}
}  // namespace

std::vector<std::string> strategy_names() {
  std::vector<std::string> names;
  for (const auto& e : registry()) names.push_back(e.name);
  return names;
}

std::unique_ptr<Strategy> make_strategy(const std::string& name, StrategyContext ctx) { return entry(name).make(ctx); }

std::vector<std::string> strategies_reading(const std::string& option) {
  std::vector<std::string> readers;
  for (const auto& e : registry())
    if (std::find(e.options.begin(), e.options.end(), option) != e.options.end()) readers.push_back(e.name);
  return readers;
}

bool strategy_reads(const std::string& name, const std::string& option) {
  const auto readers = strategies_reading(option);
  return readers.empty() || std::find(readers.begin(), readers.end(), entry(name).name) != readers.end();
}

}  // namespace lss
