// The analytic bound of a training step (README, "Analytic bound"): the time this rank's step
// would take at the card's measured kernel rates, with only the communication that the schedule
// cannot hide. Measured after the timed region; the slowest rank's bound counts.
#pragma once
#include <nlohmann/json.hpp>

#include "app/session.h"

namespace lss {

// gemm_tflops: the measured GEMM rate; optimizer_s: the measured optimizer step. Collective over
// the session's world.
nlohmann::json analytic_bound(Session& session, const RunConfig& rc, double gemm_tflops, double optimizer_s);

}  // namespace lss
