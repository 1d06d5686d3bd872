// The result validator and the sanity guards on crafted results.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "app/metrics.h"
#include "app/result.h"
#include "app/trace.h"

using namespace lss;
using json = nlohmann::ordered_json;

namespace {

json valid_result() {
  return json::parse(R"({
    "schema_version": 1, "status": "ok", "strategy": "lss", "backend": "cpu",
    "config": {"layers": 2, "width": 64, "heads": 4, "seq": 128, "batch": 1, "iters": 3,
               "causal": true, "dtype": "fp32"},
    "grid": {"world": 2, "sp": 2, "dp": 1},
    "machine": {"hosts": ["a"], "git_commit": "abc", "command_line": "lssbench run",
                "datasheet_peak_tflops": 989.0},
    "loss": 5.5, "losses": [5.5, 5.4],
    "timing": {"unit": "ms", "iterations_ms": [1.0, 2.0, 3.0], "median_ms": 2.0, "p10_ms": 1.2, "p90_ms": 2.8},
    "metrics": {"tokens_per_s": 100.0, "flops_per_step": 1e9, "flops_convention": "model FLOPs",
                "tflops_per_gpu": 400.0, "peak_tflops": 800.0, "mfu": 0.5, "peak_mem_bytes": 1000,
                "peak_activation_bytes": 500},
    "comm": {"matches_model": true},
    "check": null
  })");
}

bool mentions(const std::vector<std::string>& errors, const std::string& field) {
  for (const auto& e : errors)
    if (e.rfind(field, 0) == 0) return true;
  return false;
}

TEST(Validator, AcceptsAValidResult) { EXPECT_TRUE(validate_result(valid_result()).empty()); }

TEST(Validator, NamesEachBadField) {
  auto r = valid_result();
  r.erase("strategy");
  r["schema_version"] = 2;
  r["grid"]["world"] = 3;
  r["timing"]["p10_ms"] = 2.5;
  r["metrics"]["tokens_per_s"] = -1.0;
  r["config"]["layers"] = 0;
  r["status"] = "failed";  // a failure without a reason
  const auto errors = validate_result(r);
  for (const char* f : {"strategy", "schema_version", "grid", "timing", "metrics.tokens_per_s", "config.layers", "status"})
    EXPECT_TRUE(mentions(errors, f)) << f;
}

TEST(Validator, ChecksTheAnalyticBound) {
  auto r = valid_result();
  r["bound"] = nullptr;  // --no-bound
  EXPECT_TRUE(validate_result(r).empty());
  r["bound"] = {{"bound_ms", 10.0}, {"step_over_bound", 1.2}, {"rank0", json::object()}};
  EXPECT_TRUE(validate_result(r).empty());
  r["bound"]["bound_ms"] = -1.0;
  r["bound"]["rank0"] = 3;
  const auto errors = validate_result(r);
  EXPECT_TRUE(mentions(errors, "bound.bound_ms"));
  EXPECT_TRUE(mentions(errors, "bound.rank0"));
  r["bound"] = "fast";
  EXPECT_TRUE(mentions(validate_result(r), "bound"));
}

TEST(Validator, ChecksTheTrace) {
  auto r = valid_result();
  r["trace"] = nullptr;  // no --trace
  EXPECT_TRUE(validate_result(r).empty());
  const json rank = {{"rank", 0},       {"step_ms", 9.0},       {"compute_ms", 8.0},    {"comm_ms", 2.0},
                     {"comm_hidden_ms", 1.5}, {"exposed_ms", 0.5}, {"compute_gaps_ms", 0.5}};
  r["trace"] = {{"path", "t.json"}, {"slowest_rank", rank}, {"per_rank", json::array({rank})}};
  EXPECT_TRUE(validate_result(r).empty());
  r["trace"]["slowest_rank"]["exposed_ms"] = -0.5;
  r["trace"]["per_rank"] = 1;
  r["trace"].erase("path");
  const auto errors = validate_result(r);
  EXPECT_TRUE(mentions(errors, "trace.slowest_rank.exposed_ms"));
  EXPECT_TRUE(mentions(errors, "trace.per_rank"));
  EXPECT_TRUE(mentions(errors, "trace.path"));
  r["trace"] = "yes";
  EXPECT_TRUE(mentions(validate_result(r), "trace"));
}

TEST(Validator, ChecksTheSustainedBound) {
  auto r = valid_result();
  r["bound"] = {{"bound_ms", 10.0}, {"step_over_bound", 1.2}, {"rank0", json::object()}};
  EXPECT_TRUE(validate_result(r).empty());  // a result from before the sustained bound
  r["bound"]["sustained"] = nullptr;        // cpu, or --bound-heat 0
  r["bound"]["step_over_sustained_bound"] = nullptr;
  EXPECT_TRUE(validate_result(r).empty());
  r["bound"]["sustained"] = {{"heat_s", 0.25}, {"bound_ms", 11.0}, {"per_rank_ms", {11.0, 10.5}},
                             {"rank0", {{"gemm_ms", 5.0}, {"attention_ms", 4.0}, {"elementwise_ms", 1.0},
                                        {"passes_ms", 0.0}}}};
  r["bound"]["step_over_sustained_bound"] = 1.1;
  EXPECT_TRUE(validate_result(r).empty());
  auto bad = r;
  bad["bound"]["sustained"]["bound_ms"] = 0.0;
  bad["bound"]["sustained"]["heat_s"] = -1.0;
  bad["bound"]["sustained"]["per_rank_ms"] = {11.0, -2.0};
  bad["bound"]["sustained"]["rank0"]["gemm_ms"] = -5.0;
  bad["bound"]["step_over_sustained_bound"] = -1.1;
  auto errors = validate_result(bad);
  for (const char* f : {"bound.sustained.bound_ms", "bound.sustained.heat_s", "bound.sustained.per_rank_ms",
                        "bound.sustained.rank0.gemm_ms", "bound.step_over_sustained_bound"})
    EXPECT_TRUE(mentions(errors, f)) << f;
  bad = r;
  bad["bound"].erase("step_over_sustained_bound");  // a sustained bound without its ratio
  bad["bound"]["sustained"].erase("rank0");
  errors = validate_result(bad);
  EXPECT_TRUE(mentions(errors, "bound.step_over_sustained_bound"));
  EXPECT_TRUE(mentions(errors, "bound.sustained.rank0"));
  bad = r;
  bad["bound"]["sustained"] = "hot";
  EXPECT_TRUE(mentions(validate_result(bad), "bound.sustained"));
}

TEST(Guards, PassAValidResult) { EXPECT_EQ(sanity_verdict(valid_result()), ""); }

TEST(Guards, NonFiniteLoss) {
  auto r = valid_result();
  r["losses"][1] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(sanity_verdict(r), "non-finite loss");
  r = valid_result();
  r["losses"][0] = nullptr;  // what a NaN becomes once written
  EXPECT_EQ(sanity_verdict(r), "non-finite loss");
}

TEST(Guards, AboveStatedPeak) {
  auto r = valid_result();
  r["metrics"]["tflops_per_gpu"] = 850.0;
  EXPECT_NE(sanity_verdict(r).find("above the stated peak"), std::string::npos);
}

TEST(Guards, AboveDatasheetPeak) {
  auto r = valid_result();
  r["metrics"]["peak_tflops"] = nullptr;
  r["metrics"]["tflops_per_gpu"] = 1200.0;
  EXPECT_NE(sanity_verdict(r).find("above the datasheet peak"), std::string::npos);
}

TEST(Guards, CommCountsDifferFromTheModel) {
  auto r = valid_result();
  r["comm"]["matches_model"] = false;
  EXPECT_NE(sanity_verdict(r).find("analytic model"), std::string::npos);
}

TEST(Guards, FailedCheck) {
  auto r = valid_result();
  r["check"] = {{"passed", false}};
  EXPECT_NE(sanity_verdict(r).find("--check"), std::string::npos);
}

}  // namespace

// The --check of a run takes the largest error over the tensors: a NaN there must not compare
// below the bound (or below the running maximum) and pass.
TEST(Metrics, NormRelErrorOfNonFiniteValuesIsInfinite) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  EXPECT_DOUBLE_EQ(norm_rel_error({1.0, 2.0}, {1.0, 2.0}), 0.0);
  EXPECT_NEAR(norm_rel_error({3.0, 0.0}, {0.0, 4.0}), 5.0 / 4.0, 1e-15);
  EXPECT_EQ(norm_rel_error({1.0, nan}, {1.0, 2.0}), inf);
  EXPECT_EQ(norm_rel_error({1.0, 2.0}, {nan, 2.0}), inf);
  EXPECT_EQ(norm_rel_error({inf, 2.0}, {1.0, 2.0}), inf);
}

// The trace summary's interval arithmetic, on intervals worked out by hand.
TEST(Trace, UnionAndOverlapOfIntervals) {
  EXPECT_DOUBLE_EQ(lss::union_length({}), 0.0);
  EXPECT_DOUBLE_EQ(lss::union_length({{0, 2}, {1, 3}, {5, 6}, {5.5, 5.75}}), 4.0);  // [0,3) + [5,6)
  EXPECT_DOUBLE_EQ(lss::union_length({{3, 4}, {0, 1}, {1, 2}}), 3.0);              // touching, unsorted
  EXPECT_DOUBLE_EQ(lss::union_length({{2, 1}}), 0.0);                                // empty
  // [0,3) u [5,6) against [2,5.5): [2,3) and [5,5.5).
  EXPECT_DOUBLE_EQ(lss::overlap_length({{0, 2}, {1, 3}, {5, 6}}, {{2, 4}, {4, 5.5}}), 1.5);
  EXPECT_DOUBLE_EQ(lss::overlap_length({{0, 1}}, {{1, 2}}), 0.0);
}

// One rank's summary of a hand-made step: 10 ms of phases; compute-lane operations [0,2), [3,6)
// and a wait [6,7); a side-lane AdamW [8,9); a comm-lane all-gather [1,4) (hidden 2 ms: [1,2)
// and [3,4)) and a blocking all-reduce in line [9,10).
TEST(Trace, RankSummaryOfAHandMadeStep) {
  lss::RankTrace r;
  r.rank = 3;
  r.host = "h";
  const auto ms = [](const char* name, const char* lane, double b, double e) {
    return lss::Backend::TraceSpan{name, lane, "", b * 1e-3, e * 1e-3};
  };
  r.spans = {ms("forward", "phase", 0, 4),        ms("backward", "phase", 4, 8),   ms("optimizer", "phase", 8, 10),
             ms("gemm", "compute", 0, 2),         ms("attention_forward", "compute", 3, 6),
             ms("wait all_gather", "compute", 6, 7), ms("adamw", "side", 8, 9), ms("all_gather", "comm", 1, 4),
             ms("all_reduce", "compute", 9, 10)};
  r.spans[7].detail = "K/V all-gather: sp, 256 MiB";
  r.spans[7].label = "K/V all-gather";
  // A label is the span's own field, not read back from the detail: a detail with ": " and no
  // label is grouped by kind.
  r.spans[8].detail = "gradients, head: sp, 4 MiB";
  const nlohmann::json s = lss::trace_rank_summary(r);
  EXPECT_EQ(s["rank"], 3);
  EXPECT_NEAR(s["step_ms"].get<double>(), 10.0, 1e-9);
  EXPECT_NEAR(s["compute_ms"].get<double>(), 6.0, 1e-9);       // [0,2) + [3,6) + [8,9)
  EXPECT_NEAR(s["comm_ms"].get<double>(), 4.0, 1e-9);          // [1,4) + [9,10)
  EXPECT_NEAR(s["comm_hidden_ms"].get<double>(), 2.0, 1e-9);   // the all-gather beside [0,2) and [3,6)
  EXPECT_NEAR(s["exposed_ms"].get<double>(), 2.0, 1e-9);       // the wait and the blocking all-reduce
  EXPECT_NEAR(s["compute_gaps_ms"].get<double>(), 3.0, 1e-9);  // [2,3) and [7,9) on the compute lane
  EXPECT_EQ(s["by_operation"]["gemm"]["calls"], 1);
  EXPECT_NEAR(s["by_operation"]["attention_forward"]["ms"].get<double>(), 3.0, 1e-9);
  EXPECT_EQ(s["by_operation"].size(), 3u);  // gemm, attention_forward, adamw: no waits or collectives
  EXPECT_NEAR(s["by_collective"]["K/V all-gather"]["ms"].get<double>(), 3.0, 1e-9);  // by its label
  EXPECT_NEAR(s["by_collective"]["all_reduce"]["ms"].get<double>(), 1.0, 1e-9);      // unlabelled: by kind
  EXPECT_EQ(s["by_collective"].size(), 2u);
}
