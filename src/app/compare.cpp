#include "app/compare.h"

#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <map>

#include "app/result.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/options.h"

namespace lss {

using json = nlohmann::ordered_json;
namespace fs = std::filesystem;

namespace {

// Whether a result's energy per step counts: every rank's device state says how its energy was
// taken (`energy_window_s`, the power between the counter's updates; README, Metrics), over a
// window of at least kMinEnergyWindowS. Results of the builds before it read the counter at the
// region's two ends alone, 10-20% off over a sweep point's short region; those before the
// thirty-eighth session took it over any window, up to 2.4x off over the shortest. Neither is
// compared.
bool energy_measured(const json& r) {
  if (!r["metrics"].contains("energy_j_per_step")) return false;
  const json& states = r["timing"].value("device_state", json());
  if (!states.is_object() || !states.contains("per_rank") || states["per_rank"].empty()) return false;
  for (const json& rank : states["per_rank"])
    if (!rank.is_object() || !rank.contains("energy_window_s") ||
        rank["energy_window_s"].get<double>() < kMinEnergyWindowS)
      return false;
  return true;
}

// The configuration a point is matched by: everything that changes what is computed or where,
// nothing that is measured. Strategy options are matched separately (options_match).
std::string point_key(const json& r) {
  const json& c = r.value("config", json::object());
  const json& g = r.value("grid", json::object());
  return fmt::format("{} {} w{} sp{} T{} L{} C{} H{} B{} {}{}{}", r.value("strategy", "?"), r.value("backend", "?"),
                     g.value("world", 0), g.value("sp", 0), c.value("seq", int64_t{0}), c.value("layers", int64_t{0}),
                     c.value("width", int64_t{0}), c.value("heads", int64_t{0}), c.value("batch", int64_t{0}),
                     c.value("dtype", "?"), c.value("causal", true) ? "" : " non-causal",
                     c.value("copy_engine_gathers", false) ? " copy-engine-gathers" : "");
}

json options_of(const json& r) {
  return r.value("config", json::object()).value("strategy_options", json::object());
}

// Options recorded by both results must agree; an option only one of them records (a result
// written before the option existed) does not prevent the match.
bool options_match(const json& a, const json& b) {
  for (const auto& [k, v] : a.items())
    if (b.contains(k) && b[k] != v) return false;
  return true;
}

// Result files: FILE.json, or every *.json under a folder (points/ of a sweep included; aggregate
// files are skipped).
std::vector<json> load_results(const std::string& path) {
  std::vector<fs::path> files;
  if (fs::is_directory(path)) {
    for (const auto& e : fs::recursive_directory_iterator(path))
      if (e.is_regular_file() && e.path().extension() == ".json" && e.path().filename().string().rfind("aggregate-", 0) != 0 &&
          e.path().filename() != "spec.json" && e.path().filename() != "charts.json")
        files.push_back(e.path());
  } else if (fs::is_regular_file(path)) {
    files.push_back(path);
  } else {
    throw UsageError("compare: " + path + " is neither a result file nor a folder");
  }
  std::sort(files.begin(), files.end());
  std::vector<json> out;
  for (const auto& f : files) {
    std::ifstream in(f);
    json r;
    try {
      r = json::parse(in);
    } catch (const std::exception& e) {
      throw UsageError("compare: " + f.string() + " is not JSON: " + e.what());
    }
    // A projection (lssbench project) beside the results it was calibrated on is no measurement.
    if (r.is_object() && r.value("schema", "") == "lssbench-projection") continue;
    if (!r.is_object() || !r.contains("schema_version") || !r.contains("strategy"))
      throw UsageError("compare: " + f.string() + " is not an lssbench result");
    if (r["schema_version"] != kResultSchemaVersion)
      throw UsageError(fmt::format("compare: {} has schema_version {}, this lssbench reads {}", f.string(),
                                   r["schema_version"].dump(), kResultSchemaVersion));
    r["_file"] = f.string();
    out.push_back(std::move(r));
  }
  if (out.empty()) throw UsageError("compare: no result files under " + path);
  return out;
}

std::string pct(double base, double fresh) {
  return base != 0 ? fmt::format("{:+.2f}%", 100.0 * (fresh - base) / base) : "n/a";
}

// Rank 0's collectives per step as {"group.kind": [calls, bytes]}.
json comm_calls_bytes(const json& result) {
  json out = json::object();
  if (!result.contains("comm")) return out;
  const json per_step = result["comm"].value("per_step_rank0", json::object());  // outlives the loop over its items
  for (const auto& [group, kinds] : per_step.items())
    for (const auto& [kind, v] : kinds.items()) out[group + "." + kind] = {v.value("calls", 0), v.value("bytes", int64_t{0})};
  return out;
}

// The collectives whose calls or bytes differ, each as "group.kind C calls B bytes -> C' calls B'
// bytes" ("none" where one side has no such collective), so that a CI log says what moved.
std::string comm_difference(const json& base, const json& fresh) {
  auto side = [](const json& x, const std::string& name) {
    if (!x.contains(name)) return std::string("none");
    return fmt::format("{} calls {} bytes", x[name][0].get<int64_t>(), x[name][1].get<int64_t>());
  };
  json names = json::object();  // the union of both sides' names, in order
  for (const auto& [name, v] : base.items()) names[name] = true;
  for (const auto& [name, v] : fresh.items()) names[name] = true;
  std::string moved;
  for (const auto& [name, v] : names.items()) {
    const std::string a = side(base, name), c = side(fresh, name);
    if (a != c) moved += (moved.empty() ? "" : "; ") + name + " " + a + " -> " + c;
  }
  return "changed: " + moved;
}

}  // namespace

CompareReport compare_results(const std::vector<json>& base, const std::vector<json>& fresh, const CompareTolerances& tol) {
  CompareReport rep;
  // Keyed by configuration and strategy options; a new point takes a baseline's key when their
  // configurations are equal and their options agree.
  std::map<std::string, const json*> b, n;
  for (const auto& r : base) b[point_key(r) + " " + options_of(r).dump()] = &r;
  for (const auto& r : fresh) {
    std::string key = point_key(r) + " " + options_of(r).dump();
    for (const auto& [bk, br] : b)
      if (point_key(*br) == point_key(r) && options_match(options_of(*br), options_of(r)) && !n.count(bk)) {
        key = bk;
        break;
      }
    n[key] = &r;
  }
  auto row = [&](const std::string& key, const std::string& metric, const std::string& bv, const std::string& nv,
                 const std::string& change, bool bad) {
    rep.table.push_back({key, metric, bv, nv, change, bad ? "REGRESSION" : "ok"});
    if (bad) rep.regressions.push_back(key + ": " + metric + " " + bv + " -> " + nv + " (" + change + ")");
  };
  for (const auto& [key, br] : b) {
    const auto it = n.find(key);
    if (it == n.end()) {
      rep.table.push_back({key, "point", "present", "missing", "", tol.allow_missing ? "missing" : "REGRESSION"});
      if (tol.allow_missing) rep.notes.push_back(key + ": missing from the new results");
      else rep.regressions.push_back(key + ": missing from the new results");
      continue;
    }
    const json& a = *br;
    const json& c = *it->second;
    const std::string sa = a.value("status", "?"), sc = c.value("status", "?");
    if (sa == "ok" && sc != "ok") {
      row(key, "status", sa, sc, c.value("status_reason", ""), true);
      continue;
    }
    if (sa != "ok" || sc != "ok") {
      rep.table.push_back({key, "status", sa, sc, "", sa == sc ? "same" : "improved"});
      continue;
    }
    if (tol.timing) {
      const double tb = a["metrics"]["tokens_per_s"].get<double>(), tn = c["metrics"]["tokens_per_s"].get<double>();
      row(key, "tokens/s", fmt::format("{:.1f}", tb), fmt::format("{:.1f}", tn), pct(tb, tn), tn < tb * (1.0 - tol.throughput));
      // The share of the step that waits for communication: an overlap that stopped working shows
      // here before it moves tokens/s beyond the tolerance. Results from before the field have none.
      const json& ta = a["timing"];
      const json& tc = c["timing"];
      if (ta.contains("comm_exposed_fraction") && tc.contains("comm_exposed_fraction")) {
        const double eb = ta["comm_exposed_fraction"].get<double>(), en = tc["comm_exposed_fraction"].get<double>();
        row(key, "comm_exposed_fraction", fmt::format("{:.4f}", eb), fmt::format("{:.4f}", en),
            fmt::format("{:+.4f}", en - eb), en > eb + tol.exposed);
      }
      // The devices' energy per step (GPU runs whose driver has an energy counter): a change that
      // keeps the speed but draws more power shows here, on a card below its power cap.
      const json& ma = a["metrics"];
      const json& mc = c["metrics"];
      if (energy_measured(a) && energy_measured(c)) {
        const double jb = ma["energy_j_per_step"].get<double>(), jn = mc["energy_j_per_step"].get<double>();
        row(key, "energy_j_per_step", fmt::format("{:.2f}", jb), fmt::format("{:.2f}", jn), pct(jb, jn),
            jn > jb * (1.0 + tol.energy));
      }
    }
    for (const char* m : {"peak_mem_bytes", "peak_activation_bytes"}) {
      const double mb = a["metrics"].value(m, 0.0), mn = c["metrics"].value(m, 0.0);
      row(key, m, fmt::format("{:.0f}", mb), fmt::format("{:.0f}", mn), pct(mb, mn), mn > mb * (1.0 + tol.memory));
    }
    const double lb = a.value("loss", 0.0), ln = c.value("loss", 0.0);
    row(key, "loss", fmt::format("{:.8f}", lb), fmt::format("{:.8f}", ln), fmt::format("{:.2e} rel", std::abs(ln - lb) / std::abs(lb)),
        !(std::abs(ln - lb) <= tol.loss * std::abs(lb)));
    const json xa = comm_calls_bytes(a), xc = comm_calls_bytes(c);
    row(key, "comm calls/bytes", std::to_string(xa.size()) + " collectives", std::to_string(xc.size()) + " collectives",
        xa == xc ? "same" : comm_difference(xa, xc), xa != xc);
    const bool checked_before = a.contains("check") && a["check"].is_object() && a["check"].value("passed", false);
    const bool checked_now = c.contains("check") && c["check"].is_object() && c["check"].value("passed", false);
    if (checked_before) row(key, "check", "passed", checked_now ? "passed" : "lost", "", !checked_now);
  }
  for (const auto& [key, r] : n)
    if (!b.count(key)) {
      rep.table.push_back({key, "point", "missing", "present", "", "extra"});
      rep.notes.push_back(key + ": new point, not in the baseline");
    }
  return rep;
}

int cmd_compare(const std::vector<std::string>& args) {
  OptionParser p(
      "usage: lssbench compare BASE NEW [options]\n"
      "Matches the points of two result files or folders (sweep folders included) by configuration\n"
      "and exits 1 on a regression: throughput down or memory or energy per step up beyond the\n"
      "tolerances, a loss that moved, changed collective counts, a lost --check verdict, a point\n"
      "that passed now failing, or a baseline point missing. Mismatched schemas or unreadable\n"
      "files exit 2.");
  p.add_double("tol-throughput", 0.05, "allowed fall of tokens/s (fraction)");
  p.add_double("tol-memory", 0.05, "allowed growth of peak memory (fraction)");
  p.add_double("tol-loss", 1e-5, "allowed relative change of the first-step loss");
  p.add_double("tol-exposed", 0.03, "allowed growth of the exposed-communication share of the step (absolute)");
  p.add_double("tol-energy", 0.05, "allowed growth of the devices' energy per step (fraction; where both results have it)");
  p.add_flag("timing", true, "compare throughput (--no-timing: deterministic figures only)");
  p.add_flag("allow-missing", false, "report baseline points missing from NEW without failing");
  std::vector<std::string> paths, rest;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].rfind("--", 0) == 0) {
      rest.push_back(args[i]);
      if (args[i].find('=') == std::string::npos && i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0 &&
          (args[i].rfind("--tol-", 0) == 0))
        rest.push_back(args[++i]);
    } else {
      paths.push_back(args[i]);
    }
  }
  if (!p.parse(rest)) {
    fmt::print("{}", p.help());
    return 0;
  }
  LSS_REQUIRE_INPUT(paths.size() == 2, "compare: give BASE and NEW (got " + std::to_string(paths.size()) + " paths)");
  CompareTolerances tol;
  tol.throughput = p.real("tol-throughput");
  tol.memory = p.real("tol-memory");
  tol.loss = p.real("tol-loss");
  tol.exposed = p.real("tol-exposed");
  tol.energy = p.real("tol-energy");
  tol.timing = p.flag("timing");
  tol.allow_missing = p.flag("allow-missing");
  const CompareReport rep = compare_results(load_results(paths[0]), load_results(paths[1]), tol);
  fmt::print("{:<58} {:<22} {:>16} {:>16} {:>12}  {}\n", "point", "metric", "base", "new", "change", "verdict");
  for (const auto& r : rep.table)
    fmt::print("{:<58} {:<22} {:>16} {:>16} {:>12}  {}\n", r[0], r[1], r[2], r[3], r[4].size() > 12 ? r[4].substr(0, 12) : r[4], r[5]);
  for (const auto& n : rep.notes) fmt::print("note: {}\n", n);
  for (const auto& r : rep.regressions) fmt::print("REGRESSION: {}\n", r);
  fmt::print("{} regressions\n", rep.regressions.size());
  return rep.regressions.empty() ? 0 : 1;
}

}  // namespace lss
