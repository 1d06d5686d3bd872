// The sweep aggregate's derived metrics on fixture points, against values computed by hand.
#include <gtest/gtest.h>

#include "app/sweep.h"

using namespace lss;
using json = nlohmann::ordered_json;

namespace {

json point(const std::string& strategy, int world, int64_t seq, double ms, double tflops, double mem) {
  return {{"status", "ok"},
          {"strategy", strategy},
          {"grid", {{"world", world}, {"sp", world}, {"dp", 1}}},
          {"config", {{"seq", seq}}},
          {"timing", {{"median_ms", ms}}},
          {"metrics", {{"tokens_per_s", seq / ms * 1e3}, {"tflops_per_gpu", tflops}, {"peak_mem_bytes", mem}}}};
}

const json* find(const json& list, const std::string& strategy, int world) {
  for (const auto& e : list)
    if (e.value("strategy", "") == strategy && e["world"] == world) return &e;
  return nullptr;
}

TEST(SweepAggregate, StrongScalingSpeedupAndMemoryRatio) {
  // lss: 100 ms on 1 rank, 30 ms on 4: E = (1 x 100) / (4 x 30) = 0.8333..., speedup 3.333...
  // megatron_sp on 4 ranks: 45 ms, 6 GB against lss's 2 GB: speedup 45/30 = 1.5, memory ratio 3.
  std::vector<json> pts = {point("lss", 1, 1024, 100, 50, 8e9), point("lss", 4, 1024, 30, 40, 2e9),
                           point("megatron_sp", 4, 1024, 45, 30, 6e9),
                           {{"status", "oom"}, {"strategy", "megatron_sp"}, {"grid", {{"world", 1}, {"sp", 1}}},
                            {"config", {{"seq", 1024}}}, {"status_reason", "exit code 134 and no result"}}};
  const json a = aggregate_points(pts, "strong");
  EXPECT_EQ(a["points_ok"], 3);
  ASSERT_EQ(a["points_failed"].size(), 1u);
  EXPECT_EQ(a["points_failed"][0]["status"], "oom");
  ASSERT_EQ(a["speedup_lss_over_megatron_sp"].size(), 1u);
  EXPECT_DOUBLE_EQ(a["speedup_lss_over_megatron_sp"][0]["speedup"].get<double>(), 1.5);
  EXPECT_DOUBLE_EQ(a["speedup_lss_over_megatron_sp"][0]["memory_ratio"].get<double>(), 3.0);
  const json* e4 = find(a["strong_scaling"], "lss", 4);
  ASSERT_NE(e4, nullptr);
  EXPECT_NEAR((*e4)["efficiency"].get<double>(), 100.0 / 120.0, 1e-12);
  EXPECT_NEAR((*e4)["speedup"].get<double>(), 100.0 / 30.0, 1e-12);
  // megatron_sp's only point is its own base: efficiency 1.
  EXPECT_DOUBLE_EQ((*find(a["strong_scaling"], "megatron_sp", 4))["efficiency"].get<double>(), 1.0);
}

TEST(SweepAggregate, WeakScalingBothDefinitions) {
  // T grows with the ranks: 1 rank T=1K in 10 ms at 100 TFLOP/s; 4 ranks T=4K in 25 ms at 160.
  // FLOP-rate efficiency 160/100 = 1.6; paper-style time ratio 10/25 = 0.4.
  std::vector<json> pts = {point("lss", 1, 1024, 10, 100, 1e9), point("lss", 4, 4096, 25, 160, 1e9)};
  const json a = aggregate_points(pts, "weak");
  const json* e = find(a["weak_scaling"], "lss", 4);
  ASSERT_NE(e, nullptr);
  EXPECT_DOUBLE_EQ((*e)["flop_rate_efficiency"].get<double>(), 1.6);
  EXPECT_DOUBLE_EQ((*e)["time_ratio_paper_style"].get<double>(), 0.4);
  EXPECT_EQ((*e)["base_seq"], 1024);
  EXPECT_FALSE(a.contains("strong_scaling"));
}

TEST(SweepAggregate, WeakScalingBoundCeiling) {
  // The bound's ceiling: model FLOPs per GPU over the bound. 1 rank: 1e12 FLOPs in a 5 ms bound,
  // 200 TFLOP/s; 4 ranks: 8e12 FLOPs, 2e12 per GPU in a 12.5 ms bound, 160 TFLOP/s: 0.8.
  json one = point("lss", 1, 1024, 6, 150, 1e9), four = point("lss", 4, 4096, 16, 125, 1e9);
  one["metrics"]["flops_per_step"] = 1e12;
  one["bound"] = {{"bound_ms", 5.0}};
  four["metrics"]["flops_per_step"] = 8e12;
  four["bound"] = {{"bound_ms", 12.5}};
  json a = aggregate_points({one, four}, "weak");
  const json* e = find(a["weak_scaling"], "lss", 4);
  ASSERT_NE(e, nullptr);
  EXPECT_NEAR((*e)["bound_flop_rate_efficiency"].get<double>(), 0.8, 1e-12);
  EXPECT_NEAR((*e)["flop_rate_efficiency"].get<double>(), 125.0 / 150.0, 1e-12);
  // Without a bound on either side there is no ceiling (null), and the rest is unchanged.
  four.erase("bound");
  a = aggregate_points({one, four}, "weak");
  e = find(a["weak_scaling"], "lss", 4);
  ASSERT_NE(e, nullptr);
  EXPECT_TRUE((*e)["bound_flop_rate_efficiency"].is_null());
  EXPECT_NEAR((*e)["flop_rate_efficiency"].get<double>(), 125.0 / 150.0, 1e-12);
}

TEST(SweepAggregate, BaseOverSerial) {
  // Strong: serial takes 80 ms at T = 1K, lss's base point (1 rank) 100 ms: every lss entry of
  // that T carries 100/80 = 1.25; at T = 2K there is no serial point: null.
  std::vector<json> pts = {point("serial", 1, 1024, 80, 50, 1e9), point("lss", 1, 1024, 100, 40, 1e9),
                           point("lss", 4, 1024, 30, 35, 1e9), point("lss", 1, 2048, 300, 40, 1e9)};
  json a = aggregate_points(pts, "strong");
  int lss_at_1k = 0;
  for (const auto& e : a["strong_scaling"]) {
    if (e["strategy"] == "serial") EXPECT_DOUBLE_EQ(e["base_over_serial"].get<double>(), 1.0);
    if (e["strategy"] != "lss") continue;
    if (e["seq"] == 2048) {
      EXPECT_TRUE(e["base_over_serial"].is_null());
      continue;
    }
    ++lss_at_1k;
    EXPECT_DOUBLE_EQ(e["base_over_serial"].get<double>(), 1.25);
  }
  EXPECT_EQ(lss_at_1k, 2);
  // Without p10/p90 the medians stand for the spreads: 1.25 is clearly slower; serial is not.
  EXPECT_EQ((*find(a["strong_scaling"], "lss", 4))["base_clearly_slower_than_serial"], true);
  EXPECT_EQ((*find(a["strong_scaling"], "serial", 1))["base_clearly_slower_than_serial"], false);
  // Overlapping spreads (lss's p10 under serial's p90) are not, whatever the medians say.
  pts[0]["timing"]["p90_ms"] = 95.0;
  pts[1]["timing"]["p10_ms"] = 90.0;
  a = aggregate_points(pts, "strong");
  EXPECT_EQ((*find(a["strong_scaling"], "lss", 4))["base_clearly_slower_than_serial"], false);
  EXPECT_DOUBLE_EQ((*find(a["strong_scaling"], "lss", 4))["base_over_serial"].get<double>(), 1.25);
  // Weak: the base point (1 rank, T = 1K) against serial at that T, on every entry.
  pts = {point("serial", 1, 1024, 80, 50, 1e9), point("lss", 1, 1024, 84, 48, 1e9), point("lss", 4, 4096, 250, 45, 1e9)};
  a = aggregate_points(pts, "weak");
  const json* e = find(a["weak_scaling"], "lss", 4);
  ASSERT_NE(e, nullptr);
  EXPECT_DOUBLE_EQ((*e)["base_over_serial"].get<double>(), 84.0 / 80.0);
  EXPECT_EQ((*e)["base_clearly_slower_than_serial"], true);
  EXPECT_TRUE(a["definitions"].contains("base_over_serial"));
}

}  // namespace
