// The analytic bound of a training step (README, "Analytic bound"): the time this rank's step
// would take at the card's measured kernel rates, with only the communication that the schedule
// cannot hide. Measured after the timed region; the slowest rank's bound counts.
#pragma once
#include <any>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "app/session.h"

namespace lss {

// What one rank's compute is priced from: the backend whose device's rates are measured, the
// rank's strategy (its BoundModel, optimizer elements, gradient casts) and data (the tokens the
// embedding's backward groups), on a grid of `world` ranks. `cache`: kernel seconds by shape,
// shared by the ranks of one configuration that a projection prices one after the other (the
// elementwise kernels' key leaves the tokens out: one configuration has one data source); null:
// every kernel timed.
struct BoundRank {
  Backend& backend;
  const DataSource& data;
  Strategy& strategy;
  int world = 1;
  std::map<std::string, std::any>* cache = nullptr;
};

// The compute part of one rank's bound in a short burst (heat_s 0) or after heat_s of heat: its
// seconds (the optimizer's exposed part counted), of them attention's, the optimizer's whole,
// and the per-kernel record of bound.rank0.
struct PricedCompute {
  double total_s = 0, attention_s = 0, optimizer_s = 0;
  nlohmann::json record;
};
PricedCompute price_compute(const BoundRank& rank, const RunConfig& rc, const BoundModel& model, double heat_s);

// Seconds of a collective's time that the schedule hides (README, "Analytic bound"): the GEMM
// FLOPs beside it at the measured GEMM rate plus its share of the optimizer step; none under
// --no-overlap.
double comm_hidden_seconds(const BoundModel::Comm& c, bool overlap, double gemm_tflops, double optimizer_s);

// A strategy's BoundModel as JSON: the projection's record, and the tests' comparison of a
// projected rank with the real one.
nlohmann::json bound_model_json(const BoundModel& m);

// gemm_tflops: the measured GEMM rate; heat_s > 0: also
// the sustained bound (bound.sustained, else null), each compute kernel timed after heat_s seconds
// of running back to back. Collective over the session's world (heat_s the same on every rank).
nlohmann::json analytic_bound(Session& session, const RunConfig& rc, double gemm_tflops, double heat_s);

}  // namespace lss
