// lss: the LSS Transformer (Wang et al. 2023). P-way sequence parallel, R-way data parallel.
// Rank p of a sequence group holds tokens [p*T/P, (p+1)*T/P) of its B/R sequences and the
// positional-embedding rows of that segment; per layer, one fused [K|V] all-gather in forward
// and one fused [dK|dV] reduce-scatter in backward; double gradient averaging.
#pragma once
#include "strategies/strategy.h"

namespace lss {
std::unique_ptr<Strategy> make_lss_strategy(StrategyContext ctx);
}
