#include "app/result.h"

#include <cmath>
#include <fmt/format.h>
#include <fstream>

namespace lss {

using json = nlohmann::ordered_json;

namespace {

bool finite_number(const json& v) { return v.is_number() && std::isfinite(v.get<double>()); }

struct Checker {
  std::vector<std::string> errors;
  const json* root;

  const json* at(const std::string& path) {
    const json* cur = root;
    size_t start = 0;
    while (start <= path.size()) {
      const size_t dot = path.find('.', start);
      const std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (!cur->is_object() || !cur->contains(key)) {
        errors.push_back(path + ": missing");
        return nullptr;
      }
      cur = &(*cur)[key];
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    return cur;
  }
  void object(const std::string& path) {
    if (const json* v = at(path); v && !v->is_object()) errors.push_back(path + ": must be an object");
  }
  void string(const std::string& path) {
    if (const json* v = at(path); v && !v->is_string()) errors.push_back(path + ": must be a string");
  }
  void boolean(const std::string& path) {
    if (const json* v = at(path); v && !v->is_boolean()) errors.push_back(path + ": must be true or false");
  }
  void positive_int(const std::string& path) {
    if (const json* v = at(path); v && (!v->is_number_integer() || v->get<int64_t>() <= 0))
      errors.push_back(path + ": must be a positive integer");
  }
  // A finite number > 0.
  void positive(const std::string& path) {
    if (const json* v = at(path); v && (!finite_number(*v) || v->get<double>() <= 0))
      errors.push_back(path + ": must be a finite number > 0");
  }
  // A number >= 0 (or null when `nullable`).
  void nonneg(const std::string& path, bool nullable = false) {
    const json* v = at(path);
    if (!v) return;
    if (nullable && v->is_null()) return;
    if (!finite_number(*v) || v->get<double>() < 0)
      errors.push_back(path + ": must be a finite number >= 0" + (nullable ? " or null" : ""));
  }
};

}  // namespace

std::vector<std::string> validate_result(const json& r) {
  Checker c{{}, &r};
  if (!r.is_object()) return {"the result must be a JSON object"};
  if (const json* v = c.at("schema_version"); v && (!v->is_number_integer() || v->get<int>() != kResultSchemaVersion))
    c.errors.push_back(fmt::format("schema_version: must be {}", kResultSchemaVersion));
  if (const json* v = c.at("status"); v && (!v->is_string() || (v->get<std::string>() != "ok" && !r.contains("status_reason"))))
    c.errors.push_back("status: must be \"ok\" or a failure kind with a status_reason");
  for (const char* s : {"strategy", "backend"}) c.string(s);
  for (const char* o : {"config", "grid", "machine", "timing", "metrics", "comm"}) c.object(o);
  for (const char* i : {"config.layers", "config.width", "config.heads", "config.seq", "config.batch", "config.iters",
                        "grid.world", "grid.sp", "grid.dp"})
    c.positive_int(i);
  c.boolean("config.causal");
  c.string("config.dtype");
  if (const json* w = r.contains("grid") ? &r["grid"] : nullptr; w && w->is_object() && w->contains("world") &&
      w->contains("sp") && w->contains("dp") && (*w)["world"].is_number_integer() &&
      (*w)["sp"].is_number_integer() && (*w)["dp"].is_number_integer() &&
      (*w)["world"].get<int64_t>() != (*w)["sp"].get<int64_t>() * (*w)["dp"].get<int64_t>())
    c.errors.push_back("grid: world must equal sp x dp");
  for (const char* s : {"machine.git_commit", "machine.command_line"}) c.string(s);
  if (const json* h = c.at("machine.hosts"); h && (!h->is_array() || h->empty()))
    c.errors.push_back("machine.hosts: must be a non-empty array");
  if (const json* u = c.at("timing.unit"); u && *u != "ms") c.errors.push_back("timing.unit: must be \"ms\"");
  if (const json* it = c.at("timing.iterations_ms"); it) {
    if (!it->is_array() || it->empty()) c.errors.push_back("timing.iterations_ms: must be a non-empty array");
    else
      for (const auto& x : *it)
        if (!finite_number(x) || x.get<double>() < 0) {
          c.errors.push_back("timing.iterations_ms: every entry must be a finite time >= 0");
          break;
        }
  }
  for (const char* t : {"timing.median_ms", "timing.p10_ms", "timing.p90_ms"}) c.nonneg(t);
  if (r.contains("timing") && r["timing"].is_object()) {
    const json& t = r["timing"];
    if (finite_number(t.value("p10_ms", json())) && finite_number(t.value("median_ms", json())) &&
        finite_number(t.value("p90_ms", json())) &&
        !(t["p10_ms"].get<double>() <= t["median_ms"].get<double>() &&
          t["median_ms"].get<double>() <= t["p90_ms"].get<double>()))
      c.errors.push_back("timing: p10_ms <= median_ms <= p90_ms must hold");
  }
  for (const char* m : {"metrics.tokens_per_s", "metrics.flops_per_step", "metrics.tflops_per_gpu",
                        "metrics.peak_mem_bytes", "metrics.peak_activation_bytes"})
    c.nonneg(m);
  c.nonneg("metrics.mfu", true);
  c.string("metrics.flops_convention");
  c.boolean("comm.matches_model");
  if (!r.contains("loss")) c.errors.push_back("loss: missing");
  if (!r.contains("check")) c.errors.push_back("check: missing (null when --check was not given)");
  // The traced step: optional (older files), null without --trace.
  if (r.contains("trace") && !r["trace"].is_null()) {
    if (!r["trace"].is_object()) c.errors.push_back("trace: must be an object or null");
    else {
      c.string("trace.path");
      c.object("trace.slowest_rank");
      for (const char* k : {"trace.slowest_rank.step_ms", "trace.slowest_rank.compute_ms", "trace.slowest_rank.comm_ms",
                            "trace.slowest_rank.comm_hidden_ms", "trace.slowest_rank.exposed_ms",
                            "trace.slowest_rank.compute_gaps_ms"})
        c.nonneg(k);
      if (!r["trace"].contains("per_rank") || !r["trace"]["per_rank"].is_array())
        c.errors.push_back("trace.per_rank: must be an array");
    }
  }
  // The analytic bound: optional (older files, --no-bound), else a positive time and its ratio.
  if (r.contains("bound") && !r["bound"].is_null()) {
    if (!r["bound"].is_object()) c.errors.push_back("bound: must be an object or null");
    else {
      c.nonneg("bound.bound_ms");
      c.nonneg("bound.step_over_bound");
      c.object("bound.rank0");
      // The sustained bound: optional (older files), null on cpu by default and with --bound-heat 0.
      const json& b = r["bound"];
      if (b.contains("step_over_sustained_bound")) c.nonneg("bound.step_over_sustained_bound", true);
      // The contended bound: optional (results before the tenth session).
      if (b.contains("contended")) {
        c.positive("bound.contended.bound_ms");
        c.nonneg("bound.step_over_contended_bound");
      }
      if (b.contains("sustained") && !b["sustained"].is_null()) {
        if (!b["sustained"].is_object()) c.errors.push_back("bound.sustained: must be an object or null");
        else {
          for (const char* t : {"bound.sustained.heat_s", "bound.sustained.bound_ms"}) c.positive(t);
          c.object("bound.sustained.rank0");
          if (b["sustained"].contains("rank0") && b["sustained"]["rank0"].is_object())
            for (const char* t : {"gemm_ms", "attention_ms", "elementwise_ms", "passes_ms"})
              if (b["sustained"]["rank0"].contains(t)) c.nonneg(std::string("bound.sustained.rank0.") + t);
          if (const json* p = c.at("bound.sustained.per_rank_ms"); p) {
            bool ok = p->is_array() && !p->empty();
            if (ok)
              for (const auto& x : *p) ok = ok && finite_number(x) && x.get<double>() > 0;
            if (!ok) c.errors.push_back("bound.sustained.per_rank_ms: must be a non-empty array of times > 0");
          }
          if (!b.contains("step_over_sustained_bound") || b["step_over_sustained_bound"].is_null())
            c.errors.push_back("bound.step_over_sustained_bound: must be a number beside bound.sustained");
        }
      }
    }
  }
  if (r.contains("timing") && r["timing"].is_object() && r["timing"].contains("comm_exposed_median_ms"))
    c.nonneg("timing.comm_exposed_median_ms");
  return c.errors;
}

std::string sanity_verdict(const json& r) {
  if (r.contains("losses") && r["losses"].is_array())
    for (const auto& l : r["losses"])
      if (!finite_number(l)) return "non-finite loss";
  if (r.contains("loss") && !finite_number(r["loss"])) return "non-finite loss";
  const json& m = r.contains("metrics") ? r["metrics"] : json::object();
  const double tflops = m.contains("tflops_per_gpu") && finite_number(m["tflops_per_gpu"]) ? m["tflops_per_gpu"].get<double>() : 0;
  if (m.contains("peak_tflops") && finite_number(m["peak_tflops"]) && tflops > m["peak_tflops"].get<double>())
    return fmt::format("{:.1f} TFLOP/s per device is above the stated peak {:.1f}", tflops, m["peak_tflops"].get<double>());
  if (r.contains("machine") && r["machine"].contains("datasheet_peak_tflops") &&
      finite_number(r["machine"]["datasheet_peak_tflops"]) && tflops > r["machine"]["datasheet_peak_tflops"].get<double>())
    return fmt::format("{:.1f} TFLOP/s per device is above the datasheet peak {:.1f}", tflops,
                       r["machine"]["datasheet_peak_tflops"].get<double>());
  if (r.contains("comm") && r["comm"].contains("matches_model") && r["comm"]["matches_model"] == false)
    return "collective calls or bytes differ from the analytic model";
  if (r.contains("check") && r["check"].is_object() && r["check"].value("passed", true) == false)
    return "--check: the step differs from the serial reference";
  return "";
}

int cmd_validate(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help") {
    fmt::print("usage: lssbench validate FILE.json...\nChecks result files against schema v1 (RESULTS.md).\n");
    return args.empty() ? 2 : 0;
  }
  int bad = 0;
  for (const auto& path : args) {
    std::ifstream in(path);
    if (!in) {
      fmt::print(stderr, "{}: cannot be opened\n", path);
      ++bad;
      continue;
    }
    json r;
    try {
      r = json::parse(in);
    } catch (const std::exception& e) {
      fmt::print(stderr, "{}: not JSON: {}\n", path, e.what());
      ++bad;
      continue;
    }
    const auto errors = validate_result(r);
    for (const auto& e : errors) fmt::print(stderr, "{}: {}\n", path, e);
    if (!errors.empty()) ++bad;
    else fmt::print("{}: valid (schema v{}, status {})\n", path, kResultSchemaVersion, r["status"].get<std::string>());
  }
  return bad ? 1 : 0;
}

}  // namespace lss
