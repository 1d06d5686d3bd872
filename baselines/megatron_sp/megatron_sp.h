// megatron_sp: Megatron-LM tensor + sequence parallelism (Korthikanti et al. 2022), the LSS
// paper's baseline. P-way tensor group (H/P heads and 4C/P MLP columns per rank; LayerNorm and
// residual regions hold T/P rows), R-way data parallel.
#pragma once
#include "strategies/strategy.h"

namespace lss {
std::unique_ptr<Strategy> make_megatron_sp_strategy(StrategyContext ctx);
}
