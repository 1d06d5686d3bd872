// The registry of strategies: adding one is its folder, one line here and one CMake entry.
#include <functional>

#include "baselines/megatron_sp/megatron_sp.h"
#include "core/check.h"
#include "strategies/lss/lss.h"
#include "strategies/serial/serial.h"
#include "strategies/strategy.h"

namespace lss {

namespace {
using Factory = std::function<std::unique_ptr<Strategy>(StrategyContext)>;
const std::vector<std::pair<std::string, Factory>>& registry() {
  static const std::vector<std::pair<std::string, Factory>> r = {
      {"serial", make_serial_strategy},
      {"lss", make_lss_strategy},
      {"megatron_sp", make_megatron_sp_strategy},
  };
  return r;
}
}  // namespace

std::vector<std::string> strategy_names() {
  std::vector<std::string> names;
  for (const auto& [n, f] : registry()) names.push_back(n);
  return names;
}

std::unique_ptr<Strategy> make_strategy(const std::string& name, StrategyContext ctx) {
  for (const auto& [n, f] : registry())
    if (n == name) return f(ctx);
  std::string known;
  for (const auto& n : strategy_names()) known += (known.empty() ? "" : ", ") + n;
  throw UsageError("--strategy: unknown value '" + name + "' (expected one of: " + known + ")");
}

}  // namespace lss
