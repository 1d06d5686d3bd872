#include "app/project.h"

#include <mpi.h>

#include <algorithm>
#include <any>
#include <chrono>
#include <cmath>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "app/bound.h"
#include "app/metrics.h"
#include "app/run.h"
#include "app/session.h"
#include "comm/mpi_util.h"
#include "comm/virtual_grid.h"
#include "core/check.h"
#include "core/fileio.h"
#include "lss_git_commit.h"
#include "strategies/strategy.h"
#ifdef LSS_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace lss {

namespace {

using json = nlohmann::ordered_json;

OptionParser make_parser() {
  OptionParser p(
      "usage: lssbench project [options]\n"
      "Projects one configuration's training step onto a grid of WORLD = --dp x --sp ranks that need not\n"
      "exist here (README, \"Projection\"): each rank's work as its strategy lays it out on that grid, every\n"
      "kernel of it timed on this machine's device, every collective priced at a bus bandwidth (fitted\n"
      "from a measured run, --calibration, or given), less what the schedule hides beside it, as the\n"
      "analytic bound does; the slowest rank counts. Runs on one process. Sizes take K/M/G suffixes.");
  add_step_options(p);
  p.add_string("like", "",
               "result JSON of `lssbench run`: every model, strategy and backend option this command line leaves "
               "out is taken from the options it recorded (e.g. --like RUN.json --calibration RUN.json --sp 8)");
  p.add_size("dp", 1, "R: data-parallel replicas of the projected grid (WORLD = R x P)");
  p.add_string("calibration", "",
               "result JSON of `lssbench run` with its bound: each group's latency and bus bandwidth are fitted "
               "to the collectives it timed, and what its compute lost beside its hidden collectives (per bus "
               "byte) and otherwise (a ratio) carries over to the projected step");
  p.add_double("sp-busbw", 0,
               "GB/s: bus bandwidth (nccl-tests' busbw) of the sequence group's collectives within a node (0: "
               "fitted from --calibration)");
  p.add_double("dp-busbw", 0,
               "GB/s: of the data group's collectives within a node (0: fitted from --calibration's data group, "
               "else the sequence group's; across nodes: --inter-node-busbw)");
  p.add_double("latency-us", 0,
               "microseconds per collective call of a group whose bandwidth is given (--sp-busbw, --dp-busbw, "
               "--inter-node-busbw); a fitted group has its fitted latency");
  p.add_size("gpus-per-node", 0,
             "GPUs of one node in the projected grid, ranks filling nodes in order (0: every rank on one node); a "
             "group whose ranks are on several nodes moves its bytes at --inter-node-busbw");
  p.add_double("inter-node-busbw", 0,
               "GB/s: bus bandwidth of a collective over ranks on several nodes (the slowest link of its ring: "
               "the GPU's share of the network); needed where a group spans nodes");
  p.add_size("rounds", 1,
             "price every rank this many times, its kernels timed afresh each round (rounds go over all ranks in "
             "turn; the GEMM rate that prices the FLOPs beside collectives is measured once), and keep each rank's "
             "median round: one timing of a shape moves with the card's clocks, and the slowest rank of single "
             "timings leans high");
  p.add_double("heat", 0,
               "seconds each kernel runs back to back before it is timed, as the sustained bound's --bound-heat (0: a "
               "burst, as the bound times them); with a calibration the compute ratio is then its step against its "
               "sustained bound, which its run must have (a CUDA run's default; give the same heat)");
  p.add_string("out", "", "projection JSON path, never overwritten (empty: results/projections/<name>-<time>.json)");
  return p;
}

CollKind coll_kind_from(const std::string& name, const std::string& file) {
  if (const auto kind = coll_kind_from_name(name)) return *kind;
  throw UsageError("--calibration " + file + ": unknown collective kind '" + name + "'");
}

// A result of `lssbench run`, read for `option` (--calibration, --like).
json read_run_result(const std::string& path, const std::string& option) {
  std::ifstream in(path);
  LSS_REQUIRE_INPUT(in.good(), "--" + option + " " + path + ": cannot be read");
  json j;
  try {
    j = json::parse(in);
  } catch (const std::exception& e) {
    throw UsageError("--" + option + " " + path + ": not JSON (" + e.what() + ")");
  }
  LSS_REQUIRE_INPUT(j.is_object() && j.contains("timing") && j.value("status", "") == "ok",
                    "--" + option + " " + path + ": not a result of `lssbench run` with status \"ok\"");
  return j;
}

// The command line with every step option it leaves out taken from --like's recorded options.
std::vector<std::string> with_options_of(const std::vector<std::string>& args, const OptionParser& given,
                                         const std::string& path) {
  const json run = read_run_result(path, "like");
  LSS_REQUIRE_INPUT(run.contains("config") && run["config"].contains("options") && run["config"]["options"].is_object(),
                    "--like " + path + ": records no options (config.options)");
  OptionParser step("");
  add_step_options(step);
  std::vector<std::string> out = args;
  const json& recorded = run["config"]["options"];
  // Options of another strategy than the one projected are left out, as `run` refuses them.
  const std::string strategy = given.given("strategy") ? given.str("strategy") : recorded.value("strategy", "serial");
  for (const auto& [name, default_value] : step.values()) {
    if (given.given(name) || !recorded.contains(name) || !strategy_reads(strategy, name)) continue;
    const std::string value = recorded[name].get<std::string>();
    const bool flag = default_value == "true" || default_value == "false";
    if (flag) out.push_back(value == "true" ? "--" + name : "--no-" + name);
    else out.push_back("--" + name + "=" + value);
  }
  return out;
}

// What a measured run says of the machine it ran on.
struct Calibration {
  std::string file;
  json record = nullptr;                 // for the projection's JSON
  std::map<std::string, double> busbw;     // bytes/s by group ("sp", "dp"), fitted
  std::map<std::string, double> latency;   // seconds per call by group, fitted
  // What the GEMMs lost beside the run's hidden collectives, per bus byte of them: the contended
  // bound's exposed time less the bound's, over their bus bytes (rank 0's); 0 where it has none.
  double contention_s_per_bus_byte = 0;
  // What the run's compute lost otherwise against its bound's (the power cap, gaps):
  // (step - exposed - contention) / (bound - exposed), with `exposed` the bound's exposed
  // communication and `contention` the above, rank 0's; 0 without a calibration.
  double compute_ratio = 0;
  // The same against its sustained bound (its kernels timed after heat_s of running back to back),
  // where the run has one; 0 otherwise.
  double sustained_compute_ratio = 0, sustained_heat_s = 0;
};

// Each group's latency and bus bandwidth from the collectives the run's bound timed alone: the
// line t = latency + bus bytes / busbw through their (bus bytes, time) per call, least squares
// with every call counted (so the sizes a step moves most weigh most). Where the line would have
// a negative latency or no slope (one size, or noise), latency 0 and their bus bytes over their
// time. A group of one rank, or one whose collectives took no time, gives none.
Calibration read_calibration_fields(const std::string& path, const std::string& backend) {
  Calibration c;
  c.file = path;
  const json j = read_run_result(path, "calibration");
  auto need = [&](bool ok, const std::string& what) {
    LSS_REQUIRE_INPUT(ok, "--calibration " + path + ": " + what);
  };
  need(j.contains("grid") && j["grid"].contains("sp") && j["grid"].contains("dp"), "has no grid");
  need(j.contains("bound") && j["bound"].is_object() && j["bound"].contains("rank0"),
       "has no analytic bound (run it with --bound)");
  const std::string run_backend = j.value("backend", "");
  need(run_backend == backend, "ran on --backend " + run_backend + ", the projection prices --backend " + backend +
                                   ": a bandwidth of one does not price the other");
  const std::map<std::string, int> sizes = {{"sp", j.at("grid").at("sp").get<int>()}, {"dp", j.at("grid").at("dp").get<int>()}};
  struct Sample {
    double bus_bytes, seconds, calls;  // per call
  };
  std::map<std::string, std::vector<Sample>> samples;  // by group
  double contention_s = 0, contended_bus_bytes = 0;
  for (const json& e : j.at("bound").at("rank0").at("comm")) {
    const std::string g = e.at("group").get<std::string>();
    if (!sizes.count(g) || sizes.at(g) < 2) continue;
    const double calls = e.at("calls").get<double>(), t = e.at("measured_ms").get<double>() * 1e-3;
    const double bus = bus_factor(coll_kind_from(e.at("kind").get<std::string>(), path), sizes.at(g)) *
                       e.at("bytes").get<double>();
    samples[g].push_back({bus, t, calls});
    if (e.contains("contended")) {
      contention_s += std::max(0.0, e.at("contended").at("exposed_ms").get<double>() - e.at("exposed_ms").get<double>()) * 1e-3;
      contended_bus_bytes += calls * bus;
    }
  }
  if (contended_bus_bytes > 0) c.contention_s_per_bus_byte = contention_s / contended_bus_bytes;
  json fitted = json::object();
  for (const auto& [g, v] : samples) {
    double w = 0, mx = 0, mt = 0;
    for (const Sample& x : v) w += x.calls, mx += x.calls * x.bus_bytes, mt += x.calls * x.seconds;
    if (w <= 0 || mt <= 0) continue;
    const double bytes_per_step = mx, seconds_per_step = mt;
    mx /= w, mt /= w;
    double sxx = 0, sxt = 0;
    for (const Sample& x : v) sxx += x.calls * (x.bus_bytes - mx) * (x.bus_bytes - mx), sxt += x.calls * (x.bus_bytes - mx) * (x.seconds - mt);
    double slope = sxx > 0 ? sxt / sxx : 0, intercept = mt - slope * mx;
    if (slope <= 0 || intercept < 0) slope = seconds_per_step / bytes_per_step, intercept = 0;
    c.busbw[g] = 1 / slope;
    c.latency[g] = intercept;
    fitted[g] = {{"busbw_GBps", c.busbw[g] / 1e9}, {"latency_us", intercept * 1e6},
                 {"bus_bytes_per_step", bytes_per_step}, {"ms_per_step", seconds_per_step * 1e3}};
  }
  const double bound_ms = j.at("bound").value("bound_ms", 0.0);
  const double exposed_ms = j.at("bound").at("rank0").value("comm_exposed_ms", 0.0);
  const double step_ms = j.at("timing").value("median_ms", 0.0);
  const double contention_ms = contention_s * 1e3;
  need(bound_ms > exposed_ms && step_ms > exposed_ms + contention_ms,
       fmt::format("its step ({} ms) and bound ({} ms) must both exceed its bound's exposed communication ({} ms), "
                   "the step also that plus the contention beside its hidden collectives ({} ms)",
                   step_ms, bound_ms, exposed_ms, contention_ms));
  c.compute_ratio = (step_ms - exposed_ms - contention_ms) / (bound_ms - exposed_ms);
  const json sustained = j.at("bound").value("sustained", json(nullptr));
  const double sustained_ms = sustained.is_object() ? sustained.value("bound_ms", 0.0) : 0.0;
  if (sustained_ms > exposed_ms) {
    c.sustained_compute_ratio = (step_ms - exposed_ms - contention_ms) / (sustained_ms - exposed_ms);
    c.sustained_heat_s = sustained.value("heat_s", 0.0);
  }
  const json machine = j.value("machine", json::object());
  c.record = {{"file", path},
              {"git_commit", machine.value("git_commit", "")},
              {"devices", machine.value("devices", json(nullptr))},
              {"strategy", j.value("strategy", "")},
              {"grid", j.at("grid")},
              {"seq", j.value("config", json::object()).value("seq", json(nullptr))},
              {"step_ms", step_ms},
              {"bound_ms", bound_ms},
              {"step_over_bound", j.at("bound").value("step_over_bound", json(nullptr))},
              {"comm_exposed_ms", exposed_ms},
              {"contention_ms", contention_ms},
              {"contention_ms_per_bus_GB", c.contention_s_per_bus_byte * 1e3 * 1e9},
              {"compute_ratio", c.compute_ratio},
              {"sustained_bound_ms", sustained_ms > 0 ? json(sustained_ms) : json(nullptr)},
              {"sustained_heat_s", sustained_ms > 0 ? json(c.sustained_heat_s) : json(nullptr)},
              {"sustained_compute_ratio", c.sustained_compute_ratio > 0 ? json(c.sustained_compute_ratio) : json(nullptr)},
              {"fitted", fitted}};
  return c;
}

Calibration read_calibration(const std::string& path, const std::string& backend) {
  if (path.empty()) return {};
  // A field of the wrong type or missing deep inside: the file is not what a run writes.
  try {
    return read_calibration_fields(path, backend);
  } catch (const json::exception& e) {
    throw UsageError("--calibration " + path + ": not a result of `lssbench run` (" + e.what() + ")");
  }
}

// One projected rank: its bound's compute and communication, in seconds, and their record.
struct ProjectedRank {
  double total_s = 0, attention_s = 0, comm_exposed_s = 0;
  double contention_s = 0;  // what its GEMMs lose beside its hidden collectives, at the calibration's rate
  json record;
};

}  // namespace

int cmd_project(const std::vector<std::string>& args, const std::string& command_line) {
  OptionParser parser = make_parser();
  if (!parser.parse(args)) {
    fmt::print("{}", parser.help());
    return 0;
  }
  if (!parser.str("like").empty()) {
    const std::vector<std::string> filled = with_options_of(args, parser, parser.str("like"));
    parser = make_parser();
    parser.parse(filled);
  }
  int launched = 1;
  LSS_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &launched));
  LSS_REQUIRE_INPUT(launched == 1, "project prices every rank of its grid in one process: run it without mpiexec "
                                   "(the launcher started " + std::to_string(launched) + ")");
  RunConfig rc = step_config_from(parser);
  check_run_config(rc);
  const ModelConfig& m = rc.model;
  const int64_t dp = parser.size("dp");
  LSS_REQUIRE_INPUT(dp >= 1 && dp <= (1 << 20), "--dp " + parser.str("dp") + ": must be a positive group size");
  LSS_REQUIRE_INPUT(static_cast<int64_t>(rc.P) * dp <= (1 << 20),
                    "--sp " + parser.str("sp") + " x --dp " + parser.str("dp") + ": more than 2^20 ranks");
  const int P = rc.P, R = static_cast<int>(dp), world = P * R;
  const int64_t rounds = parser.size("rounds");
  LSS_REQUIRE_INPUT(rounds >= 1 && rounds <= 99, "--rounds " + parser.str("rounds") + ": must be 1 to 99");
  LSS_REQUIRE_INPUT(m.B % R == 0, "--batch " + std::to_string(m.B) + " does not divide by the " + std::to_string(R) +
                                      " data-parallel replicas (--dp)");
  for (const char* o : {"sp-busbw", "dp-busbw", "latency-us", "inter-node-busbw"})
    LSS_REQUIRE_INPUT(parser.real(o) >= 0 && std::isfinite(parser.real(o)),
                      std::string("--") + o + " " + parser.str(o) + ": must not be negative");
  const Calibration cal = read_calibration(parser.str("calibration"), rc.backend);
  const double heat_s = parser.real("heat");
  LSS_REQUIRE_INPUT(heat_s >= 0 && heat_s <= 60, "--heat " + parser.str("heat") + ": must be 0 to 60 seconds");
  LSS_REQUIRE_INPUT(heat_s == 0 || cal.file.empty() || cal.sustained_compute_ratio > 0,
                    "--heat " + parser.str("heat") + ": the calibration " + cal.file +
                        " has no sustained bound to take the compute ratio against (run it with --bound-heat > 0)");
  // The ratio of the calibration's compute to its bound's, burst or sustained as this projection
  // times its kernels.
  const double compute_ratio = heat_s > 0 ? cal.sustained_compute_ratio : cal.compute_ratio;
  // Each group's collectives within a node: a given bandwidth with --latency-us, else the
  // calibration's fitted bandwidth and latency; the data group falls back on the sequence group's
  // (both on one node). Across nodes: --inter-node-busbw with --latency-us.
  const double latency_s = parser.real("latency-us") * 1e-6;
  struct Link {
    double busbw = 0, latency_s = 0;  // bytes/s, s per call
    std::string source;
  };
  std::map<std::string, Link> link;
  for (const char* g : {"sp", "dp"}) {
    const double given = parser.real(std::string(g) + "-busbw") * 1e9;
    if (given > 0) link[g] = {given, latency_s, "given"};
    else if (cal.busbw.count(g)) link[g] = {cal.busbw.at(g), cal.latency.at(g), "fitted"};
    else if (std::string(g) == "dp") link[g] = {link["sp"].busbw, link["sp"].latency_s, "the sequence group's"};
  }
  const std::map<std::string, int> group_size = {{"sp", P}, {"dp", R}, {"world", world}};
  // Ranks fill the nodes in order (grid.h: a sequence group is P consecutive ranks, a data group
  // the ranks P apart). Every group lies on one node when the whole grid fits on one; a sequence
  // group also when P divides the node's GPUs. Otherwise its ring crosses the network, whose
  // bandwidth then bounds it.
  const int64_t per_node = parser.size("gpus-per-node");
  LSS_REQUIRE_INPUT(per_node >= 0, "--gpus-per-node " + parser.str("gpus-per-node") + ": must not be negative");
  const std::map<std::string, bool> spans_nodes = {{"sp", per_node > 0 && P > 1 && world > per_node && per_node % P != 0},
                                                   {"dp", per_node > 0 && R > 1 && world > per_node},
                                                   {"world", per_node > 0 && world > per_node}};
  const double inter_node_busbw = parser.real("inter-node-busbw") * 1e9;
  LSS_REQUIRE_INPUT(inter_node_busbw == 0 || per_node > 0,
                    "--inter-node-busbw " + parser.str("inter-node-busbw") +
                        ": prices the groups that span nodes, which --gpus-per-node lays out (give it)");
  json spanning = json::array();
  for (const auto& [g, spans] : spans_nodes)
    if (spans && group_size.at(g) > 1) spanning.push_back(g);

  std::string out = parser.str("out");
  if (out.empty())
    out = fmt::format("results/projections/{}-w{}-sp{}-T{}-{}.json", rc.strategy, world, P, m.T, utc_timestamp());
  LSS_REQUIRE_INPUT(!path_exists(out), "--out " + out + ": exists already; results are never overwritten");

#ifdef LSS_HAVE_CUDA
  LSS_REQUIRE_INPUT(rc.backend != "cuda" || cuda_device_count() > 0,
                    "--backend cuda: no CUDA device is visible to this process (the projection times its kernels here)");
#endif
  std::unique_ptr<Backend> be = make_backend(BackendOptions{rc.backend, rc.threads, 0, rc.attention});
  const FlopCount flops = model_flops(m);
  fmt::print("lssbench project  {} ({})\n", LSS_VERSION, LSS_GIT_COMMIT);
  fmt::print("  {:<14} {}\n", "strategy", rc.strategy);
  fmt::print("  {:<14} {} ({}), kernels timed here\n", "backend", rc.backend, be->device_name());
  fmt::print("  {:<14} world {} = dp {} x sp {} (projected)\n", "grid", world, R, P);
  fmt::print("  {:<14} L={} C={} H={} D={} V={} T={} B={} {} {}\n", "model", m.L, m.C, m.H, m.D(), m.V, m.T, m.B,
             m.causal ? "causal" : "non-causal", dtype_name(m.dtype));
  for (const char* g : {"sp", "dp"})
    fmt::print("  {:<14} {} {:.1f} GB/s busbw, {:.1f} us a call ({}{})\n", g == std::string("sp") ? "collectives" : "", g,
               link[g].busbw / 1e9, link[g].latency_s * 1e6, link[g].source,
               link[g].source == "fitted" ? " from " + cal.file : "");
  if (per_node > 0)
    fmt::print("  {:<14} {} GPUs per node; across nodes ({}) {:.1f} GB/s busbw\n", "nodes", per_node,
               spanning.empty() ? std::string("no group") : spanning.dump(), inter_node_busbw / 1e9);
  fmt::print("  {:<14} {}\n", "result", out);

  const int64_t gemm_n = rc.backend == "cuda" ? 8192 : 1024;
  const double gemm_tflops = measure_gemm_tflops(*be, m.dtype, gemm_n);
  // The grid's ranks one after the other; every data replica's ranks do what replica 0's do, so
  // the sequence positions of replica 0 are the ranks that can differ. Each round times every
  // kernel afresh (ranks of one round share the timings of equal shapes).
  std::vector<std::vector<ProjectedRank>> rounds_of(P);  // [rank][round]
  const auto started = std::chrono::steady_clock::now();
  for (int64_t round = 0; round < rounds; ++round) {
    std::map<std::string, std::any> kernel_cache;
    for (int p = 0; p < P; ++p) {
      Grid grid = make_virtual_grid(world, P, p, !(rc.backend == "cuda" && rc.copy_engine_gathers));
      const DataSource data(m, rc.data_path);
      std::unique_ptr<Strategy> strategy =
          make_strategy(rc.strategy, StrategyContext{*be, grid, rc.model, rc.strategy_opts, data});
      const BoundModel model = strategy->bound_model();
      const PricedCompute compute = price_compute(BoundRank{*be, data, *strategy, world, &kernel_cache}, rc, model, heat_s);
      ProjectedRank r;
      json comm = json::array();
      for (const BoundModel::Comm& c : model.comm) {
        const int n = group_size.at(c.group);
        const bool across = spans_nodes.at(c.group);
        const Link& l = across ? Link{inter_node_busbw, latency_s, "given"} : link.count(c.group) ? link.at(c.group) : link.at("dp");
        const double rate = l.busbw;
        LSS_REQUIRE_INPUT(rate > 0 || n < 2 || !across,
                          "--inter-node-busbw: the " + c.group + " group of " + std::to_string(n) + " ranks spans nodes of " +
                              std::to_string(per_node) + " GPUs (--gpus-per-node); give the link's bus bandwidth");
        LSS_REQUIRE_INPUT(rate > 0 || n < 2, "--" + c.group + "-busbw: the " + c.group +
                                                 " group's collectives need a bus bandwidth (give it, or --calibration "
                                                 "with a run whose bound measured that group)");
        const double t = n < 2 ? 0.0 : l.latency_s + bus_factor(c.kind, n) * static_cast<double>(c.bytes) / rate;
        const double hidden = comm_hidden_seconds(c, rc.strategy_opts.overlap, gemm_tflops, compute.optimizer_s);
        const double exposed = static_cast<double>(c.calls) * std::max(0.0, t - hidden);
        r.comm_exposed_s += exposed;
        // As the contended bound counts it: the collectives that GEMMs hide.
        const bool beside_gemms = rc.strategy_opts.overlap && c.hidden_by_flops > 0 && n > 1;
        const double contention = beside_gemms ? cal.contention_s_per_bus_byte * static_cast<double>(c.calls) *
                                                     bus_factor(c.kind, n) * static_cast<double>(c.bytes)
                                               : 0.0;
        r.contention_s += contention;
        comm.push_back({{"what", c.what}, {"group", c.group}, {"kind", coll_kind_name(c.kind)}, {"bytes", c.bytes},
                        {"calls", c.calls}, {"across_nodes", across}, {"busbw_GBps", rate / 1e9},
                        {"latency_us", l.latency_s * 1e6}, {"priced_ms", t * 1e3},
                        {"hidden_by_ms", hidden * 1e3}, {"exposed_ms", exposed * 1e3},
                        {"contention_ms", contention * 1e3}});
      }
      r.total_s = compute.total_s + r.comm_exposed_s;
      r.attention_s = compute.attention_s;
      r.record = compute.record;
      r.record["comm_exposed_ms"] = r.comm_exposed_s * 1e3;
      r.record["contention_ms"] = r.contention_s * 1e3;
      r.record["comm"] = comm;
      r.record["bound_model"] = bound_model_json(model);
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      const int64_t done = round * P + p + 1, total = rounds * P;
      fmt::print("  {}rank {:>4}/{}: {:9.3f} ms (attention {:.3f}, exposed communication {:.3f})  ETA {:.0f} s\n",
                 rounds > 1 ? fmt::format("round {}/{} ", round + 1, rounds) : "", p, P, r.total_s * 1e3,
                 r.attention_s * 1e3, r.comm_exposed_s * 1e3, elapsed / static_cast<double>(done) * static_cast<double>(total - done));
      std::fflush(stdout);
      rounds_of[p].push_back(std::move(r));
    }
  }
  // Each rank's median round by its total (the lower middle one of an even count).
  std::vector<ProjectedRank> ranks;
  json per_rank_round_ms = json::array();
  for (auto& of_rank : rounds_of) {
    json totals = json::array();
    for (const ProjectedRank& r : of_rank) totals.push_back(r.total_s * 1e3);
    per_rank_round_ms.push_back(totals);
    std::stable_sort(of_rank.begin(), of_rank.end(),
                     [](const ProjectedRank& x, const ProjectedRank& y) { return x.total_s < y.total_s; });
    ranks.push_back(std::move(of_rank[(of_rank.size() - 1) / 2]));
  }
  size_t slowest = 0;
  std::vector<double> per_rank_ms, per_rank_attention_ms;
  for (size_t i = 0; i < ranks.size(); ++i) {
    per_rank_ms.push_back(ranks[i].total_s * 1e3);
    per_rank_attention_ms.push_back(ranks[i].attention_s * 1e3);
    if (ranks[i].total_s > ranks[slowest].total_s) slowest = i;
  }
  const double bound_s = ranks[slowest].total_s;
  const double tokens = static_cast<double>(m.B * m.T);
  // The projected step: the slowest rank's compute as the calibration run's compute ran against
  // its bound (what the kernels lose to the power cap and to the gaps between them), plus its
  // exposed communication as priced, plus what its GEMMs lose beside its hidden collectives at the
  // calibration's rate per bus byte: at the calibration's own grid, near its measured step.
  const double exposed_s = ranks[slowest].comm_exposed_s;
  const double compute_s = bound_s - exposed_s;
  const double step_s = compute_ratio > 0 ? compute_s * compute_ratio + exposed_s + ranks[slowest].contention_s : 0.0;
  auto or_null = [](bool ok, double v) { return ok ? json(v) : json(nullptr); };

  json j = {
      {"schema", "lssbench-projection"},
      {"schema_version", 1},
      {"status", "ok"},
      {"strategy", rc.strategy},
      {"backend", rc.backend},
      {"grid", {{"world", world}, {"sp", P}, {"dp", R}}},
      {"config",
       {{"layers", m.L}, {"width", m.C}, {"heads", m.H}, {"head_dim", m.D()}, {"vocab", m.V}, {"seq", m.T},
        {"max_seq", m.T_max}, {"batch", m.B}, {"causal", m.causal}, {"dtype", dtype_name(m.dtype)},
        {"options", parser.values()}}},
      {"machine",
       {{"device", be->device_name()},
        {"lssbench_version", LSS_VERSION},
        {"git_commit", LSS_GIT_COMMIT},
        {"command_line", command_line}}},
      {"rates",
       {{"measured_gemm_tflops", gemm_tflops},
        {"measured_gemm_shape", fmt::format("{}^3 {}", gemm_n, dtype_name(m.dtype))},
        {"sp_busbw_GBps", link["sp"].busbw / 1e9},
        {"sp_latency_us", link["sp"].latency_s * 1e6},
        {"sp_source", link["sp"].source},
        {"dp_busbw_GBps", link["dp"].busbw / 1e9},
        {"dp_latency_us", link["dp"].latency_s * 1e6},
        {"dp_source", link["dp"].source},
        {"latency_us", latency_s * 1e6},
        {"gpus_per_node", per_node},
        {"inter_node_busbw_GBps", inter_node_busbw / 1e9},
        {"groups_spanning_nodes", spanning},
        {"busbw_source", cal.file.empty() ? "given" : "given, or fitted from the calibration (sp_source, dp_source)"}}},
      {"calibration", cal.record},
      {"projection",
       {{"definition",
         "each rank of the projected grid priced as the analytic bound prices a rank of a run (README, Analytic "
         "bound): its kernels timed alone on this device at the rank's shapes, each collective at latency_us + "
         "bus factor x bytes / busbw of its group less the GEMM and optimizer time the schedule runs beside it; "
         "each rank's median of `rounds` pricings; slowest rank. step_ms: that rank's compute x compute_ratio (the calibration's, against its bound, or with heat_s > 0 "
         "its sustained bound) + its exposed "
         "communication + its contention (the calibration's contended cost per bus byte x the bus bytes of "
         "its collectives that GEMMs hide)"},
        {"bound_ms", bound_s * 1e3},
        {"per_rank_ms", per_rank_ms},
        {"per_rank_attention_ms", per_rank_attention_ms},
        {"rounds", rounds},
        {"heat_s", heat_s},
        {"compute_ratio", or_null(compute_ratio > 0, compute_ratio)},
        {"compute_ratio_against", heat_s > 0 ? "the calibration's sustained bound" : "the calibration's bound"},
        {"per_rank_round_ms", per_rank_round_ms},
        {"slowest_rank", slowest},
        {"bound_tokens_per_s", tokens / bound_s},
        {"bound_tflops_per_gpu", flops.step / bound_s / world / 1e12},
        {"step_ms", or_null(step_s > 0, step_s * 1e3)},
        {"step_tokens_per_s", or_null(step_s > 0, tokens / step_s)},
        {"step_tflops_per_gpu", or_null(step_s > 0, flops.step / step_s / world / 1e12)},
        {"flops_per_step", flops.step},
        {"slowest", ranks[slowest].record}}}};
  write_file_atomic_no_overwrite(out, j.dump(2) + "\n");
  fmt::print("\n  {:<26} {:10.3f} ms  ({:.1f} TFLOP/s per GPU, {:.4g} tokens/s)\n", "projected bound",
             bound_s * 1e3, flops.step / bound_s / world / 1e12, tokens / bound_s);
  if (step_s > 0)
    fmt::print("  {:<26} {:10.3f} ms  ({:.1f} TFLOP/s per GPU; the compute x {:.3f}, the calibration's{})\n",
               "projected step", step_s * 1e3, flops.step / step_s / world / 1e12, compute_ratio,
               heat_s > 0 ? " against its sustained bound" : "");
  // Where the step goes, for people: the slowest rank's parts, summing to the step (or, without a
  // calibration, to the bound). The JSON's projection.slowest holds the same numbers.
  const json& parts = ranks[slowest].record;
  const double total_ms = (step_s > 0 ? step_s : bound_s) * 1e3;
  fmt::print("  the slowest rank ({}) by part, ms (share of the projected {}):\n", slowest, step_s > 0 ? "step" : "bound");
  auto part = [&](const char* what, double ms, const std::string& note = "") {
    fmt::print("    {:<24} {:10.3f}  ({:4.1f}%{})\n", what, ms, 100.0 * ms / total_ms, note);
  };
  const double gemm_ms = parts.at("gemm_ms").get<double>();
  part("GEMMs", gemm_ms, fmt::format(", {:.3g} TFLOP/s", parts.at("gemm_tflops_at_step_shapes").get<double>()));
  part("attention", parts.at("attention_ms").get<double>());
  part("elementwise", parts.at("elementwise_ms").get<double>());
  part("optimizer, exposed", parts.at("optimizer_exposed_ms").get<double>());
  part("passes", parts.at("passes_ms").get<double>());
  part("exposed communication", exposed_s * 1e3);
  if (step_s > 0) {
    part("compute x (ratio - 1)", compute_s * 1e3 * (compute_ratio - 1.0), fmt::format(", ratio {:.3f}", compute_ratio));
    part("contention", ranks[slowest].contention_s * 1e3);
  }
  fmt::print("    {:<24} {:10.3f}\n", step_s > 0 ? "= projected step" : "= projected bound", total_ms);
  fmt::print("  wrote {}\n", out);
  return 0;
}

}  // namespace lss
