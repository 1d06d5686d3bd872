#include "app/trace.h"

#include <mpi.h>

#include <algorithm>
#include <map>

#include "comm/communicator.h"
#include "comm/mpi_util.h"
#include "core/check.h"

namespace lss {

using nlohmann::json;
using Intervals = std::vector<std::pair<double, double>>;

namespace {

// The lanes in the order a timeline draws them (Chrome trace thread ids).
int lane_id(const std::string& lane) {
  static const std::vector<std::string> lanes = {"phase", "compute", "side", "comm"};
  const auto it = std::find(lanes.begin(), lanes.end(), lane);
  return it == lanes.end() ? static_cast<int>(lanes.size()) : static_cast<int>(it - lanes.begin());
}

bool is_collective(const std::string& name) { return coll_kind_from_name(name).has_value(); }

// What a span is, as the Chrome trace's "cat" and the summary read it.
enum class Category { phase, wait, comm, compute };
Category category_of(const Backend::TraceSpan& s) {
  if (s.lane == "phase") return Category::phase;
  if (s.name.rfind("wait ", 0) == 0) return Category::wait;
  return is_collective(s.name) ? Category::comm : Category::compute;
}
const char* category_name(Category c) {
  switch (c) {
    case Category::phase: return "phase";
    case Category::wait: return "wait";
    case Category::comm: return "comm";
    default: return "compute";
  }
}

// {name: {calls, ms}} per step from summed calls and seconds.
json per_step(const std::map<std::string, std::pair<int64_t, double>>& totals, double steps) {
  json out = json::object();
  for (const auto& [name, v] : totals)
    out[name] = {{"calls", static_cast<double>(v.first) / steps}, {"ms", v.second * 1e3 / steps}};
  return out;
}

// Sorted, merged.
Intervals merged(Intervals v) {
  std::sort(v.begin(), v.end());
  Intervals out;
  for (const auto& [b, e] : v) {
    if (e <= b) continue;
    if (!out.empty() && b <= out.back().second) out.back().second = std::max(out.back().second, e);
    else out.push_back({b, e});
  }
  return out;
}

}  // namespace

double union_length(Intervals intervals) {
  double total = 0;
  for (const auto& [b, e] : merged(std::move(intervals))) total += e - b;
  return total;
}

double overlap_length(Intervals a, Intervals b) {
  const Intervals x = merged(std::move(a)), y = merged(std::move(b));
  double total = 0;
  size_t i = 0, j = 0;
  while (i < x.size() && j < y.size()) {
    const double lo = std::max(x[i].first, y[j].first), hi = std::min(x[i].second, y[j].second);
    if (hi > lo) total += hi - lo;
    if (x[i].second < y[j].second) ++i;
    else ++j;
  }
  return total;
}

std::vector<RankTrace> gather_traces(const std::vector<Backend::TraceSpan>& mine) {
  int rank = 0, world = 1;
  LSS_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  LSS_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world));
  json spans = json::array();
  for (const auto& s : mine) spans.push_back({s.name, s.lane, s.detail, s.begin_s, s.end_s, s.label});
  const std::string text = json{{"host", host_name()}, {"spans", spans}}.dump();
  const int length = static_cast<int>(text.size());
  std::vector<int> lengths(static_cast<size_t>(world)), offsets(static_cast<size_t>(world));
  LSS_MPI_CHECK(MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, 0, MPI_COMM_WORLD));
  std::string all;
  if (rank == 0) {
    int at = 0;
    for (int r = 0; r < world; ++r) {
      offsets[static_cast<size_t>(r)] = at;
      at += lengths[static_cast<size_t>(r)];
    }
    all.resize(static_cast<size_t>(at));
  }
  LSS_MPI_CHECK(MPI_Gatherv(text.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR, 0,
                            MPI_COMM_WORLD));
  std::vector<RankTrace> out;
  if (rank != 0) return out;
  for (int r = 0; r < world; ++r) {
    const json j = json::parse(all.substr(static_cast<size_t>(offsets[static_cast<size_t>(r)]),
                                          static_cast<size_t>(lengths[static_cast<size_t>(r)])));
    RankTrace t{r, j["host"].get<std::string>(), {}};
    for (const auto& s : j["spans"])
      t.spans.push_back({s[0].get<std::string>(), s[1].get<std::string>(), s[2].get<std::string>(), s[3].get<double>(),
                         s[4].get<double>(), s[5].get<std::string>()});
    out.push_back(std::move(t));
  }
  return out;
}

json chrome_trace(const std::vector<RankTrace>& ranks, const json& meta) {
  json events = json::array();
  for (const RankTrace& r : ranks) {
    events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", r.rank},
                      {"args", {{"name", "rank " + std::to_string(r.rank) + " (" + r.host + ")"}}}});
    events.push_back({{"name", "process_sort_index"}, {"ph", "M"}, {"pid", r.rank}, {"args", {{"sort_index", r.rank}}}});
    for (const char* lane : {"phase", "compute", "side", "comm"}) {
      const bool used = std::any_of(r.spans.begin(), r.spans.end(), [&](const auto& s) { return s.lane == lane; });
      if (!used) continue;
      events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", r.rank}, {"tid", lane_id(lane)},
                        {"args", {{"name", lane}}}});
      events.push_back({{"name", "thread_sort_index"}, {"ph", "M"}, {"pid", r.rank}, {"tid", lane_id(lane)},
                        {"args", {{"sort_index", lane_id(lane)}}}});
    }
    for (const auto& s : r.spans) {
      json e = {{"name", s.name}, {"cat", category_name(category_of(s))}, {"ph", "X"}, {"pid", r.rank}, {"tid", lane_id(s.lane)},
                {"ts", s.begin_s * 1e6}, {"dur", std::max(0.0, s.end_s - s.begin_s) * 1e6}};
      if (!s.detail.empty()) e["args"] = {{"detail", s.detail}};
      if (!s.label.empty()) e["args"]["label"] = s.label;
      events.push_back(std::move(e));
    }
  }
  return {{"traceEvents", events}, {"displayTimeUnit", "ms"}, {"otherData", meta}};
}

json trace_rank_summary(const RankTrace& r, int64_t steps) {
  LSS_CHECK(steps >= 1, "trace_rank_summary: steps " + std::to_string(steps));
  Intervals step_spans, compute, comm, comm_lane, compute_lane_all;
  double exposed = 0;
  std::map<std::string, std::pair<int64_t, double>> by_op, by_collective;
  for (const auto& s : r.spans) {
    const std::pair<double, double> iv{s.begin_s, s.end_s};
    const double d = std::max(0.0, s.end_s - s.begin_s);
    const Category category = category_of(s);
    if (category == Category::phase) {
      // A step runs from its forward's start to its optimizer's end.
      if (s.name == "forward") step_spans.push_back(iv);
      else if (s.name == "optimizer" && !step_spans.empty()) step_spans.back().second = s.end_s;
      continue;
    }
    if (s.lane == "compute") compute_lane_all.push_back(iv);
    if (category == Category::wait) {
      exposed += d;
    } else if (category == Category::comm) {
      comm.push_back(iv);
      // By what it is for (its label), else by kind.
      auto& [calls, seconds] = by_collective[s.label.empty() ? s.name : s.label];
      ++calls;
      seconds += d;
      if (s.lane == "comm") comm_lane.push_back(iv);
      else exposed += d;  // blocking, in line with compute
    } else {
      compute.push_back(iv);
      auto& [calls, seconds] = by_op[s.name];
      ++calls;
      seconds += d;
    }
  }
  const double n = static_cast<double>(steps);
  const double step = union_length(step_spans);
  return {{"rank", r.rank},
          {"host", r.host},
          {"spans", r.spans.size()},
          {"steps", steps},
          {"step_ms", step * 1e3 / n},
          {"compute_ms", union_length(compute) * 1e3 / n},
          {"comm_ms", union_length(comm) * 1e3 / n},
          {"comm_hidden_ms", overlap_length(comm_lane, compute) * 1e3 / n},
          {"exposed_ms", exposed * 1e3 / n},
          {"compute_gaps_ms", std::max(0.0, step - overlap_length(compute_lane_all, step_spans)) * 1e3 / n},
          {"by_operation", per_step(by_op, n)},
          {"by_collective", per_step(by_collective, n)}};
}

}  // namespace lss
