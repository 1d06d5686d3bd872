// One traced training step (lssbench run --trace): every rank's spans as a Chrome trace, which
// chrome://tracing and ui.perfetto.dev draw as one timeline per rank (lanes: phase, compute,
// side, comm), and a summary of each rank's lanes for the result JSON (README, Metrics).
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/backend.h"

namespace lss {

struct RankTrace {
  int rank = 0;
  std::string host;
  std::vector<Backend::TraceSpan> spans;
};

// Collective over MPI_COMM_WORLD: rank 0 receives every rank's spans, in rank order; the other
// ranks receive nothing.
std::vector<RankTrace> gather_traces(const std::vector<Backend::TraceSpan>& mine);

// The Chrome trace event format (JSON object form): one process per rank, one thread per lane,
// a complete ("X") event per span with its detail in args; `meta` goes to "otherData".
nlohmann::json chrome_trace(const std::vector<RankTrace>& ranks, const nlohmann::json& meta);

// What one rank's lanes did over its `steps` traced steps, as means per step in ms (README, Metrics,
// "Step trace"):
//   step_ms            each step's phases' extent (forward start to optimizer end)
//   compute_ms         union of the compute and side lanes' operation spans
//   comm_ms            union of the collectives' spans (comm lane, and blocking ones in line)
//   comm_hidden_ms     the comm lane's union that overlaps compute_ms
//   exposed_ms         sum of the compute lane's waits and blocking collectives
//   compute_gaps_ms    step_ms less the compute lane's union of everything (operations, waits,
//                      blocking collectives) inside the steps: time it had no work enqueued (host-bound)
//   by_operation       {name: {calls, ms}} over the compute and side lanes' operations
//   by_collective      {label: {calls, ms}} over the collectives, by what they are for (CommLabel),
//                      or by kind where unlabelled
nlohmann::json trace_rank_summary(const RankTrace& rank, int64_t steps = 1);

// Length of the union of intervals [begin, end) (seconds in, seconds out).
double union_length(std::vector<std::pair<double, double>> intervals);
// Length of the intersection of two unions of intervals.
double overlap_length(std::vector<std::pair<double, double>> a, std::vector<std::pair<double, double>> b);

}  // namespace lss
