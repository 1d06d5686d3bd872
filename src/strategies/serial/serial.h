// serial: the whole model on one rank; the reference every other strategy is checked against.
#pragma once
#include "strategies/strategy.h"

namespace lss {
std::unique_ptr<Strategy> make_serial_strategy(StrategyContext ctx);
}
