// The analytic bound of a training step (README, "Analytic bound"): the time this rank's step
// would take at the card's measured kernel rates, with only the communication that the schedule
// cannot hide. Measured after the timed region; the slowest rank's bound counts.
#pragma once
#include <nlohmann/json.hpp>

#include "app/session.h"

namespace lss {

// gemm_tflops: the measured GEMM rate; heat_s > 0: also
// the sustained bound (bound.sustained, else null), each compute kernel timed after heat_s seconds
// of running back to back. Collective over the session's world (heat_s the same on every rank).
nlohmann::json analytic_bound(Session& session, const RunConfig& rc, double gemm_tflops, double heat_s);

}  // namespace lss
