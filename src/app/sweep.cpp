#include "app/sweep.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "app/result.h"
#include "core/check.h"
#include "core/fileio.h"
#include "core/options.h"
#include "strategies/strategy.h"

namespace lss {

using json = nlohmann::ordered_json;
namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------- spec

// Model options a spec may set, passed to `lssbench run` as --key value (booleans as --key or
// --no-key).
const std::set<std::string> kModelKeys = {"layers", "width", "heads", "batch", "dtype", "backend", "causal",
                                          "attention", "keep-kv", "regather-ln", "scatter-chunks", "zigzag", "split-causal", "chunk-pipeline", "placed-reduce-scatter", "local-cross-block", "placed-gather-min", "recompute", "distributed-optimizer", "optimizer-in-backward", "grad-reduce-dtype", "overlap", "copy-engine-gathers", "registered-gathers", "symmetric-collectives", "symmetric-ctas", "threads", "data", "max-seq"};

[[noreturn]] void bad_spec(const std::string& path, const std::string& msg) {
  throw UsageError("sweep spec " + path + ": " + msg);
}

std::vector<int64_t> int_list(const json& v, const std::string& path, const std::string& field) {
  std::vector<int64_t> out;
  auto one = [&](const json& x) {
    int64_t n = 0;
    if (x.is_number_integer()) n = x.get<int64_t>();
    else if (x.is_string()) n = parse_size(x.get<std::string>(), field);
    else bad_spec(path, field + ": expected a whole number or a size such as \"16K\"");
    if (n <= 0) bad_spec(path, field + ": " + std::to_string(n) + " must be positive");
    out.push_back(n);
  };
  if (v.is_array()) {
    if (v.empty()) bad_spec(path, field + ": must not be empty");
    for (const auto& x : v) one(x);
  } else {
    one(v);
  }
  return out;
}

std::string id_for(const std::string& prefix, const std::string& strategy, int world, int sp, int64_t seq) {
  return fmt::format("{}{}_w{}_sp{}_T{}", prefix, strategy, world, sp, seq);
}

}  // namespace

SweepSpec load_sweep_spec(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UsageError("sweep spec " + path + ": cannot be opened");
  SweepSpec spec;
  try {
    spec.raw = json::parse(in);
  } catch (const std::exception& e) {
    bad_spec(path, std::string("not valid JSON: ") + e.what());
  }
  const json& r = spec.raw;
  if (!r.is_object()) bad_spec(path, "must be a JSON object");
  static const std::set<std::string> known = {"name", "description", "mode", "strategies", "world", "sp", "seq",
                                              "model", "iters", "min_time_s", "warmup", "timeout_s", "launcher",
                                              "extra_args", "trace_steps", "strategy_model",
                                              "max_seq", "binary"};
  for (const auto& [k, v] : r.items())
    if (!known.count(k)) bad_spec(path, "unknown field '" + k + "'");
  for (const char* f : {"name", "mode", "strategies", "world", "seq", "model"})
    if (!r.contains(f)) bad_spec(path, std::string("missing field '") + f + "'");
  spec.name = r["name"].is_string() ? r["name"].get<std::string>() : "";
  if (spec.name.empty() || spec.name.find_first_of("/ ") != std::string::npos)
    bad_spec(path, "name: a non-empty string without spaces or slashes");
  spec.mode = r["mode"].is_string() ? r["mode"].get<std::string>() : "";
  if (spec.mode != "weak" && spec.mode != "strong" && spec.mode != "max_seq")
    bad_spec(path, "mode: '" + r["mode"].dump() + "' is not weak, strong or max_seq");
  if (!r["strategies"].is_array() || r["strategies"].empty()) bad_spec(path, "strategies: a non-empty list");
  std::vector<std::string> strategies;
  const auto known_strategies = strategy_names();
  for (const auto& s : r["strategies"]) {
    if (!s.is_string() || std::find(known_strategies.begin(), known_strategies.end(), s.get<std::string>()) ==
                              known_strategies.end()) {
      bad_spec(path, fmt::format("strategies: unknown strategy {} ({})", s.dump(), fmt::join(known_strategies, ", ")));
    }
    strategies.push_back(s.get<std::string>());
  }
  const auto worlds = int_list(r["world"], path, "world");
  const auto seqs = int_list(r["seq"], path, "seq");
  const bool sp_is_world = !r.contains("sp") || (r["sp"].is_string() && r["sp"] == "world");
  std::vector<int64_t> sps;
  if (!sp_is_world) sps = int_list(r["sp"], path, "sp");
  if (!r["model"].is_object()) bad_spec(path, "model: an object of `lssbench run` options");
  // Each option's arguments, given to the points of the strategies that read it (model.zigzag to
  // lss's, not to megatron_sp's, which would refuse it); one that no strategy of the spec reads is
  // an error, not a sweep that silently measures without it.
  using OptionArgs = std::vector<std::pair<std::string, std::vector<std::string>>>;  // (option, its arguments)
  // One option's arguments; `where` names it in a message ("model", "strategy_model.lss").
  auto option_args = [&](const std::string& where, const std::string& k, const json& v) -> std::vector<std::string> {
    if (!kModelKeys.count(k)) {
      bad_spec(path, fmt::format("{}: unknown option '{}' (known: {})", where, k, fmt::join(kModelKeys, ", ")));
    }
    if (v.is_boolean()) return {v.get<bool>() ? "--" + k : "--no-" + k};
    if (v.is_number_integer() || v.is_string())
      return {"--" + k, v.is_string() ? v.get<std::string>() : std::to_string(v.get<int64_t>())};
    bad_spec(path, where + "." + k + ": expected a number, a string or true/false");
  };
  OptionArgs model_args;
  for (const auto& [k, v] : r["model"].items()) {
    model_args.push_back({k, option_args("model", k, v)});
    if (std::none_of(strategies.begin(), strategies.end(), [&](const std::string& s) { return strategy_reads(s, k); })) {
      bad_spec(path, fmt::format("model.{}: an option of {}, none of which this sweep runs", k,
                                 fmt::join(strategies_reading(k), ", ")));
    }
  }
  // strategy_model: options for one strategy's points alone, over `model`'s (each method at its own
  // best options in one sweep, so that the aggregate's speedups compare best with best).
  std::map<std::string, OptionArgs> strategy_args;
  if (r.contains("strategy_model")) {
    if (!r["strategy_model"].is_object()) bad_spec(path, "strategy_model: an object of strategy: {options}");
    for (const auto& [strategy, options] : r["strategy_model"].items()) {
      const std::string where = "strategy_model." + strategy;
      if (std::find(strategies.begin(), strategies.end(), strategy) == strategies.end())
        bad_spec(path, fmt::format("{}: not a strategy of this sweep ({})", where, fmt::join(strategies, ", ")));
      if (!options.is_object()) bad_spec(path, where + ": an object of `lssbench run` options");
      for (const auto& [k, v] : options.items()) {
        std::vector<std::string> args = option_args(where, k, v);
        if (!strategy_reads(strategy, k)) {
          bad_spec(path, fmt::format("{}.{}: an option of {}, which {} does not read", where, k,
                                     fmt::join(strategies_reading(k), ", "), strategy));
        }
        strategy_args[strategy].push_back({k, std::move(args)});
      }
    }
  }
  // The options of one strategy's points: `model`'s that it reads, each replaced by its own.
  auto args_of = [&](const std::string& strategy) {
    OptionArgs out;
    const OptionArgs& own = strategy_args[strategy];
    auto overridden = [&](const std::string& k) {
      return std::any_of(own.begin(), own.end(), [&](const auto& o) { return o.first == k; });
    };
    for (const auto& [k, args] : model_args)
      if (strategy_reads(strategy, k) && !overridden(k)) out.push_back({k, args});
    out.insert(out.end(), own.begin(), own.end());
    return out;
  };
  auto positive_int = [&](const char* f, int def) {
    if (!r.contains(f)) return def;
    if (!r[f].is_number_integer() || r[f].get<int64_t>() < (std::string(f) == "warmup" ? 0 : 1))
      bad_spec(path, std::string(f) + ": " + r[f].dump() + " is not a valid count");
    return r[f].get<int>();
  };
  const int iters = positive_int("iters", 5), warmup = positive_int("warmup", 1);
  // Each point's timed steps go on past `iters` until they have lasted this long (lssbench run
  // --min-time): a short point's energy and its card's power-cap burst even out over ~1 s.
  double min_time_s = 0;
  if (r.contains("min_time_s")) {
    if (!r["min_time_s"].is_number() || r["min_time_s"].get<double>() < 0 || r["min_time_s"].get<double>() > 3600)
      bad_spec(path, "min_time_s: " + r["min_time_s"].dump() + " is not a number of seconds from 0 to 3600");
    min_time_s = r["min_time_s"].get<double>();
  }
  spec.timeout_s = positive_int("timeout_s", 600);
  // Each point's traced steps (lssbench run --trace, --trace-steps) into traces/<point>.json.
  if (r.contains("trace_steps")) {
    if (!r["trace_steps"].is_number_integer() || r["trace_steps"].get<int64_t>() < 0 || r["trace_steps"].get<int64_t>() > 100)
      bad_spec(path, "trace_steps: " + r["trace_steps"].dump() + " is not a count from 0 to 100");
    spec.trace_steps = r["trace_steps"].get<int>();
    if (spec.trace_steps > 0 && spec.mode == "max_seq")
      bad_spec(path, "trace_steps: max_seq probes are not traced (a weak or strong sweep at the length found is)");
  }
  if (r.contains("launcher")) {
    spec.launcher = r["launcher"].is_string() ? r["launcher"].get<std::string>() : "";
    if (spec.launcher != "auto" && spec.launcher != "mpiexec" && spec.launcher != "srun")
      bad_spec(path, "launcher: '" + spec.launcher + "' is not auto, mpiexec or srun");
  }
  if (r.contains("binary")) spec.binary = r["binary"].get<std::string>();
  std::vector<std::string> extra;
  if (r.contains("extra_args")) {
    if (!r["extra_args"].is_array()) bad_spec(path, "extra_args: a list of strings");
    for (const auto& a : r["extra_args"]) extra.push_back(a.get<std::string>());
  }
  if (spec.mode == "max_seq") {
    if (!r.contains("max_seq") || !r["max_seq"].is_object()) bad_spec(path, "max_seq: {granularity, limit} is required in mode max_seq");
    for (const char* f : {"granularity", "limit"})
      if (!r["max_seq"].contains(f)) bad_spec(path, std::string("max_seq.") + f + ": missing");
    spec.max_seq_granularity = int_list(r["max_seq"]["granularity"], path, "max_seq.granularity").front();
    spec.max_seq_limit = int_list(r["max_seq"]["limit"], path, "max_seq.limit").front();
  }

  for (const auto& strategy : strategies)
    for (int64_t world : worlds) {
      std::vector<int64_t> grid_sps = sp_is_world ? std::vector<int64_t>{world} : sps;
      if (strategy == "serial") {
        if (world != 1) continue;
        grid_sps = {1};
      }
      for (int64_t sp : grid_sps) {
        if (world % sp != 0) continue;
        for (int64_t base : seqs) {
          const int64_t seq = spec.mode == "weak" ? base * world : base;
          SweepPoint p;
          p.strategy = strategy;
          p.world = static_cast<int>(world);
          p.sp = static_cast<int>(sp);
          p.seq = seq;
          p.id = id_for("", strategy, p.world, p.sp, seq);
          p.args = {"--strategy", strategy, "--sp", std::to_string(sp), "--seq", std::to_string(seq),
                    "--iters", std::to_string(iters), "--warmup", std::to_string(warmup)};
          if (min_time_s > 0) p.args.insert(p.args.end(), {"--min-time", fmt::format("{}", min_time_s)});
          for (const auto& [k, args] : args_of(strategy)) p.args.insert(p.args.end(), args.begin(), args.end());
          p.args.insert(p.args.end(), extra.begin(), extra.end());
          spec.points.push_back(std::move(p));
        }
      }
    }
  if (spec.points.empty()) bad_spec(path, "no point fits (every world size fails to divide by sp?)");
  return spec;
}

// ---------------------------------------------------------------- running

namespace {

volatile std::sig_atomic_t g_stop = 0;
pid_t g_child = 0;

void on_signal(int) { g_stop = 1; }

std::string tail_of(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return s.size() > max_bytes ? s.substr(s.size() - max_bytes) : s;
}

struct Outcome {
  int exit_code = 0;   // -1: timed out; -2: interrupted
  double seconds = 0;
};

// Runs argv with stdout/stderr into log_path, in its own process group, killed at the timeout.
Outcome run_process(const std::vector<std::string>& argv, const std::string& log_path, int timeout_s) {
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  LSS_CHECK(pid >= 0, "fork failed");
  if (pid == 0) {
    setpgid(0, 0);
    const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    execvp(cargv[0], cargv.data());
    std::fprintf(stderr, "cannot execute %s\n", cargv[0]);
    _exit(127);
  }
  setpgid(pid, pid);
  g_child = pid;
  Outcome o;
  int status = 0;
  for (;;) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (g_stop || elapsed > timeout_s) {
      // The whole job (launcher and ranks) goes: TERM, a grace period, then KILL.
      kill(-pid, SIGTERM);
      for (int i = 0; i < 50 && waitpid(pid, &status, WNOHANG) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
      o.exit_code = g_stop ? -2 : -1;
      g_child = 0;
      o.seconds = elapsed;
      return o;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  g_child = 0;
  o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return o;
}

// A point's trace, beside its folder of results: <sweep>/traces/<point>.json.
fs::path trace_path_of(const fs::path& result) {
  return result.parent_path().parent_path() / "traces" / result.filename();
}

std::vector<std::string> launch_argv(const SweepSpec& spec, const std::string& binary, const SweepPoint& p,
                                     const std::string& out) {
  std::string launcher = spec.launcher;
  if (launcher == "auto") launcher = std::getenv("SLURM_JOB_ID") ? "srun" : "mpiexec";
  std::vector<std::string> argv;
  if (launcher == "srun") argv = {"srun", "--ntasks=" + std::to_string(p.world), "--kill-on-bad-exit=1"};
  else argv = {"mpiexec", "-n", std::to_string(p.world)};
  argv.push_back(binary);
  argv.push_back("run");
  argv.insert(argv.end(), p.args.begin(), p.args.end());
  argv.push_back("--out");
  argv.push_back(out);
  if (spec.trace_steps > 0)
    argv.insert(argv.end(), {"--trace", trace_path_of(out).string(), "--trace-steps", std::to_string(spec.trace_steps)});
  return argv;
}

// Runs one point unless its result exists; returns the point's result JSON, or null when the point
// has no result and was not run (interrupted, or run_missing false).
json run_point(const SweepSpec& spec, const std::string& binary, const SweepPoint& p, const fs::path& dir, bool run_missing,
               bool* ran) {
  const fs::path out = dir / "points" / (p.id + ".json");
  *ran = false;
  if (fs::exists(out)) {
    std::ifstream in(out);
    return json::parse(in);
  }
  if (!run_missing) return json();
  *ran = true;
  // A trace without its result was left by an interrupted run: kept under another name, since
  // lssbench never overwrites and the point runs again.
  if (const fs::path trace = trace_path_of(out); spec.trace_steps > 0 && fs::exists(trace)) {
    const std::string stem = (trace.parent_path() / trace.stem()).string() + ".interrupted-" + utc_timestamp();
    std::string kept = stem + ".json";
    for (int n = 2; fs::exists(kept); ++n) kept = fmt::format("{}-{}.json", stem, n);
    fs::rename(trace, kept);
    fmt::print("  {}: a trace without a result (an interrupted run) kept as {}\n", p.id, kept);
  }
  const fs::path log = dir / "logs" / (p.id + ".log");
  const Outcome o = run_process(launch_argv(spec, binary, p, out.string()), log.string(), spec.timeout_s);
  if (o.exit_code == -2) return json();  // interrupted: nothing recorded, the rerun does it
  if (fs::exists(out)) {
    std::ifstream in(out);
    return json::parse(in);
  }
  // No result: record why, so the sweep goes on and a rerun does not repeat a known failure.
  const std::string log_tail = tail_of(log.string(), 2000);
  std::string status = "crashed";
  if (o.exit_code == -1) status = "timeout";
  else if (log_tail.find("out of memory") != std::string::npos || log_tail.find("out of device memory") != std::string::npos)
    status = "oom";
  else if (log_tail.find("lssbench: error:") != std::string::npos)
    status = "rejected";
  json f;
  f["schema_version"] = kResultSchemaVersion;
  f["kind"] = "sweep_point_failure";
  f["status"] = status;
  f["status_reason"] = o.exit_code == -1 ? fmt::format("no result within the {} s timeout", spec.timeout_s)
                                         : fmt::format("exit code {} and no result", o.exit_code);
  f["strategy"] = p.strategy;
  f["grid"] = {{"world", p.world}, {"sp", p.sp}, {"dp", p.world / p.sp}};
  f["config"] = {{"seq", p.seq}};
  f["command"] = launch_argv(spec, binary, p, out.string());
  f["seconds"] = o.seconds;
  f["log_tail"] = log_tail;
  write_file_atomic_no_overwrite(out.string(), f.dump(2) + "\n");
  return f;
}

bool point_ok(const json& r) { return r.is_object() && r.value("status", "") == "ok"; }

}  // namespace

// ---------------------------------------------------------------- aggregate

json aggregate_points(const std::vector<json>& points, const std::string& mode) {
  struct Key {
    std::string strategy;
    int world, sp;
    int64_t seq;
    auto tie() const { return std::tie(strategy, world, sp, seq); }
    bool operator<(const Key& o) const { return tie() < o.tie(); }
  };
  std::map<Key, const json*> ok;
  json failed = json::array();
  for (const auto& r : points) {
    if (!r.is_object()) continue;
    const Key k{r.value("strategy", ""), r["grid"].value("world", 0), r["grid"].value("sp", 0),
                r["config"].value("seq", int64_t{0})};
    if (point_ok(r)) ok[k] = &r;
    else failed.push_back({{"strategy", k.strategy}, {"world", k.world}, {"sp", k.sp}, {"seq", k.seq},
                           {"status", r.value("status", "")}, {"reason", r.value("status_reason", "")}});
  }
  auto ms = [](const json* r) { return (*r)["timing"]["median_ms"].get<double>(); };
  auto mem = [](const json* r) { return (*r)["metrics"]["peak_mem_bytes"].get<double>(); };
  auto tflops = [](const json* r) { return (*r)["metrics"]["tflops_per_gpu"].get<double>(); };
  // Model TFLOP/s per GPU if the step took its analytic bound; null without a bound.
  auto bound_tflops = [](const json* r) -> json {
    const json b = r->value("bound", json());
    if (!b.is_object() || !b.contains("bound_ms") || b["bound_ms"].get<double>() <= 0) return nullptr;
    return (*r)["metrics"]["flops_per_step"].get<double>() / (*r)["grid"]["world"].get<double>() /
           (b["bound_ms"].get<double>() * 1e-3) / 1e12;
  };

  json speedup = json::array();
  for (const auto& [k, r] : ok) {
    if (k.strategy != "lss") continue;
    const auto it = ok.find(Key{"megatron_sp", k.world, k.sp, k.seq});
    if (it == ok.end()) continue;
    speedup.push_back({{"world", k.world}, {"sp", k.sp}, {"seq", k.seq}, {"lss_ms", ms(r)},
                       {"megatron_sp_ms", ms(it->second)}, {"speedup", ms(it->second) / ms(r)},
                       {"lss_peak_mem_bytes", mem(r)}, {"megatron_sp_peak_mem_bytes", mem(it->second)},
                       {"memory_ratio", mem(it->second) / mem(r)}});
  }

  // The base point's step over serial's at its T (serial on one rank in the same sweep), or null:
  // above 1 a strategy's efficiencies are taken against a baseline slower than the model's step.
  // Clearly slower: over 1.02 with the two points' spreads apart (the base's p10 step above
  // serial's p90), so that a few noisy steps on a busy CPU do not count.
  auto serial_at = [&](const Key& base) -> const json* {
    const auto it = ok.find(Key{"serial", 1, 1, base.seq});
    return it == ok.end() ? nullptr : it->second;
  };
  auto over_serial = [&](const Key& base, const json* r) -> json {
    const json* serial = serial_at(base);
    return serial ? json(ms(r) / ms(serial)) : json();
  };
  auto clearly_slower = [&](const Key& base, const json* r) -> json {
    const json* serial = serial_at(base);
    if (!serial) return nullptr;
    const double p10 = (*r)["timing"].value("p10_ms", ms(r)), serial_p90 = (*serial)["timing"].value("p90_ms", ms(serial));
    return ms(r) > 1.02 * ms(serial) && p10 > serial_p90;
  };

  // Scaling, per strategy, against the point with the fewest ranks (of the same T for strong).
  json strong = json::array(), weak = json::array(), throughput = json::array();
  std::set<std::string> strategies;
  for (const auto& [k, r] : ok) strategies.insert(k.strategy);
  for (const auto& s : strategies) {
    std::vector<std::pair<Key, const json*>> mine;
    for (const auto& [k, r] : ok)
      if (k.strategy == s) mine.push_back({k, r});
    for (const auto& [k, r] : mine)
      throughput.push_back({{"strategy", s}, {"world", k.world}, {"sp", k.sp}, {"seq", k.seq},
                            {"tokens_per_s", (*r)["metrics"]["tokens_per_s"]}, {"tflops_per_gpu", tflops(r)},
                            {"mfu_measured", (*r)["metrics"].value("mfu_measured", json())}});
    if (mode == "strong") {
      std::map<int64_t, std::pair<Key, const json*>> base;  // per T: the fewest ranks
      for (const auto& e : mine)
        if (!base.count(e.first.seq) || e.first.world < base[e.first.seq].first.world) base[e.first.seq] = e;
      for (const auto& [k, r] : mine) {
        const auto& [bk, br] = base[k.seq];
        strong.push_back({{"strategy", s}, {"world", k.world}, {"sp", k.sp}, {"seq", k.seq}, {"base_world", bk.world},
                          {"efficiency", (bk.world * ms(br)) / (k.world * ms(r))}, {"speedup", ms(br) / ms(r)},
                          {"base_over_serial", over_serial(bk, br)},
                          {"base_clearly_slower_than_serial", clearly_slower(bk, br)}});
      }
    } else if (mode == "weak" && !mine.empty()) {
      const auto base = *std::min_element(mine.begin(), mine.end(),
                                          [](const auto& a, const auto& b) { return a.first.world < b.first.world; });
      const json base_bound = bound_tflops(base.second);
      for (const auto& [k, r] : mine) {
        const json mine_bound = bound_tflops(r);
        const json ceiling = mine_bound.is_null() || base_bound.is_null()
                                 ? json()
                                 : json(mine_bound.get<double>() / base_bound.get<double>());
        weak.push_back({{"strategy", s}, {"world", k.world}, {"sp", k.sp}, {"seq", k.seq}, {"base_world", base.first.world},
                        {"base_seq", base.first.seq},
                        {"flop_rate_efficiency", tflops(r) / tflops(base.second)},
                        {"bound_flop_rate_efficiency", ceiling},
                        {"time_ratio_paper_style", ms(base.second) / ms(r)},
                        {"base_over_serial", over_serial(base.first, base.second)},
                        {"base_clearly_slower_than_serial", clearly_slower(base.first, base.second)}});
      }
    }
  }
  json a;
  a["schema_version"] = kResultSchemaVersion;
  a["kind"] = "sweep_aggregate";
  a["mode"] = mode;
  a["points_ok"] = static_cast<int64_t>(ok.size());
  a["points_failed"] = failed;
  a["speedup_lss_over_megatron_sp"] = speedup;
  a["definitions"] = {
      {"speedup", "megatron_sp median step time / lss median step time at the same world, sp and T"},
      {"memory_ratio", "megatron_sp peak memory per rank / lss peak memory per rank"},
      {"strong_efficiency", "(W_base * t_base) / (W * t): fixed problem, W ranks"},
      {"weak_flop_rate_efficiency", "TFLOP/s per GPU at W / TFLOP/s per GPU at W_base (T grows with W)"},
      {"weak_bound_flop_rate_efficiency",
       "the same ratio with each step at its analytic bound (model FLOPs per GPU / bound): the weak efficiency a "
       "schedule without losses would reach, below 1 when the kernel mix changes with T (attention's share grows, "
       "and attention runs slower per FLOP than the GEMMs); null without bounds"},
      {"weak_time_ratio_paper_style", "t_base / t_W with T grows with W; exceeds 1 when attention's T^2 work is "
                                      "split better than linearly, as the LSS paper's 'super-linear' efficiency"},
      {"base_over_serial", "t_base / t_serial at the base point's T (serial on one rank in the same sweep; null "
                           "without one): above 1 the efficiencies are taken against a baseline slower than the "
                           "model's own single-device step"},
      {"base_clearly_slower_than_serial", "base_over_serial above 1.02 with the base point's p10 step above serial's "
                                          "p90 (their spreads apart); null without a serial point"}};
  if (mode == "strong") a["strong_scaling"] = strong;
  if (mode == "weak") a["weak_scaling"] = weak;
  a["throughput"] = throughput;
  return a;
}

// ---------------------------------------------------------------- command

int cmd_sweep(const std::vector<std::string>& args, const std::string& self_path) {
  OptionParser p(
      "usage: lssbench sweep SPEC.json --out DIR [options]\n"
      "Runs every point of a sweep specification as its own MPI job (mpiexec -n WORLD, or srun under\n"
      "Slurm) with a timeout, into DIR/points/<point>.json (logs in DIR/logs/). A crash, a hang or an\n"
      "out-of-memory of one point is recorded in that point's file and the sweep goes on. A rerun\n"
      "skips the points already done. At the end DIR/aggregate-<time>.json holds the derived metrics.");
  p.add_string("out", "", "sweep folder (required)");
  p.add_string("emit-slurm", "", "write a Slurm batch script that runs this sweep to this file, and stop");
  p.add_size("gpus-per-node", 4, "--emit-slurm: GPUs per node");
  p.add_string("time", "02:00:00", "--emit-slurm: wall time limit");
  p.add_string("partition", "", "--emit-slurm: partition (empty: the cluster's default)");
  p.add_size("max-world", 0, "skip points of more ranks than this (0: run all), e.g. the GPUs of this machine");
  p.add_size("min-world", 0, "skip points of fewer ranks than this (0: run all), to run a sweep in parts");
  p.add_flag("aggregate-only", false,
             "run nothing: aggregate the points DIR holds, list the missing ones; a max-sequence search stops at its "
             "first missing probe and is marked incomplete");
  std::vector<std::string> rest;
  std::string spec_path;
  for (const auto& a : args) {
    if (spec_path.empty() && a.rfind("--", 0) != 0 && (rest.empty() || rest.back().rfind("--", 0) != 0 ||
                                                       rest.back() == "--help")) {
      spec_path = a;
      continue;
    }
    rest.push_back(a);
  }
  if (!p.parse(rest)) {
    fmt::print("{}", p.help());
    return 0;
  }
  LSS_REQUIRE_INPUT(!spec_path.empty(), "sweep: give a specification file (see sweeps/)");
  SweepSpec spec = load_sweep_spec(spec_path);
  const std::string out = p.str("out");
  LSS_REQUIRE_INPUT(!out.empty(), "sweep: --out DIR is required");
  const std::string binary = spec.binary.empty() ? self_path : spec.binary;
  if (const int64_t max_world = p.size("max-world"); max_world > 0) {
    LSS_REQUIRE_INPUT(max_world > 0, "--max-world must be positive");
    std::erase_if(spec.points, [&](const SweepPoint& pt) { return pt.world > max_world; });
    LSS_REQUIRE_INPUT(!spec.points.empty(), "--max-world " + std::to_string(max_world) + ": leaves no point of the spec");
  }
  if (const int64_t min_world = p.size("min-world"); min_world > 0) {
    std::erase_if(spec.points, [&](const SweepPoint& pt) { return pt.world < min_world; });
    LSS_REQUIRE_INPUT(!spec.points.empty(), "--min-world " + std::to_string(min_world) + ": leaves no point of the spec");
  }

  if (!p.str("emit-slurm").empty()) {
    int max_world = 1;
    for (const auto& pt : spec.points) max_world = std::max(max_world, pt.world);
    const int64_t per_node = p.size("gpus-per-node");
    LSS_REQUIRE_INPUT(per_node > 0, "--gpus-per-node " + std::to_string(per_node) + ": must be positive");
    const int64_t nodes = (max_world + per_node - 1) / per_node;
    std::string s = "#!/bin/bash\n";
    s += fmt::format("#SBATCH --job-name=lssbench-{}\n#SBATCH --nodes={}\n#SBATCH --ntasks-per-node={}\n", spec.name, nodes, per_node);
    s += fmt::format("#SBATCH --gpus-per-node={}\n#SBATCH --time={}\n", per_node, p.str("time"));
    if (!p.str("partition").empty()) s += "#SBATCH --partition=" + p.str("partition") + "\n";
    s += "#SBATCH --output=" + out + "/slurm-%j.out\n\n";
    s += "# Every point is launched with srun inside this allocation (one rank per GPU); a rerun of\n"
         "# this script skips the points already done.\n";
    s += "set -euo pipefail\nexport NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}\nmkdir -p " + out + "\n";
    s += fmt::format("{} sweep {} --out {}\n", fs::absolute(binary).string(), fs::absolute(spec_path).string(), out);
    write_file_atomic_no_overwrite(p.str("emit-slurm"), s);
    fmt::print("wrote {} ({} nodes x {} GPUs, {} points)\n", p.str("emit-slurm"), nodes, per_node, spec.points.size());
    return 0;
  }

  fs::create_directories(fs::path(out) / "points");
  fs::create_directories(fs::path(out) / "logs");
  if (spec.trace_steps > 0) fs::create_directories(fs::path(out) / "traces");
  const fs::path spec_copy = fs::path(out) / "spec.json";
  if (!fs::exists(spec_copy)) write_file_atomic_no_overwrite(spec_copy.string(), spec.raw.dump(2) + "\n");

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const bool run_missing = !p.flag("aggregate-only");
  std::vector<json> results;
  json searches = json::array();  // max_seq: one search per strategy and grid
  json missing = json::array();   // --aggregate-only: the points without a result
  const auto t0 = std::chrono::steady_clock::now();
  int ran_count = 0;
  auto progress = [&](size_t done, size_t total, const std::string& what) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double eta = ran_count ? elapsed / ran_count * static_cast<double>(total - done) : 0;
    fmt::print("[{}/{}] {}  elapsed {:.0f} s  ETA {:.0f} s\n", done, total, what, elapsed, eta);
    std::fflush(stdout);
  };

  if (spec.mode != "max_seq") {
    size_t done = 0;
    for (const auto& pt : spec.points) {
      if (g_stop) break;
      bool ran = false;
      json r = run_point(spec, binary, pt, out, run_missing, &ran);
      if (g_stop && r.is_null()) break;
      if (r.is_null()) {
        missing.push_back(pt.id);
        continue;
      }
      ran_count += ran;
      ++done;
      progress(done, spec.points.size(),
               fmt::format("{} {}{}", pt.id, r.value("status", "?"), ran ? "" : " (done before)"));
      results.push_back(std::move(r));
    }
  } else {
    // Longest trainable T per strategy and grid: double from the spec's T until a step fails,
    // then bisect between the last success and the first failure down to the granularity.
    const int64_t gran = spec.max_seq_granularity, limit = spec.max_seq_limit;
    size_t done = 0;
    for (const auto& base : spec.points) {
      if (g_stop) break;
      const int64_t step = std::lcm(gran, static_cast<int64_t>(base.sp));
      auto probe = [&](int64_t T) {
        SweepPoint pt = base;
        pt.seq = T;
        pt.id = id_for("maxseq_", base.strategy, base.world, base.sp, T);
        for (size_t i = 0; i + 1 < pt.args.size(); ++i)
          if (pt.args[i] == "--seq") pt.args[i + 1] = std::to_string(T);
        // One step answers whether T fits (the later options win).
        pt.args.insert(pt.args.end(), {"--iters", "1", "--min-time", "0", "--warmup", "0", "--no-measure-peak"});
        bool ran = false;
        json r = run_point(spec, binary, pt, out, run_missing, &ran);
        if (r.is_null()) {  // interrupted or (--aggregate-only) not run: the search stops below
          missing.push_back(pt.id);
          return r;
        }
        ran_count += ran;
        ++done;
        // The number of probes is not known in advance: no ETA, a running count.
        fmt::print("[probe {}] {} {}{}\n", done, pt.id, r.value("status", "?"), ran ? "" : " (done before)");
        std::fflush(stdout);
        results.push_back(r);
        return r;
      };
      int64_t good = 0, bad = 0;
      bool complete = true;
      std::string bad_status;
      enum class Outcome { trained, failed, missing };
      auto try_seq = [&](int64_t T) {
        const json r = probe(T);
        if (r.is_null()) {
          complete = false;
          return Outcome::missing;
        }
        if (point_ok(r)) {
          good = T;
          return Outcome::trained;
        }
        bad = T;
        bad_status = r.value("status", "");
        return Outcome::failed;
      };
      for (int64_t T = (base.seq + step - 1) / step * step; T <= limit && !g_stop; T *= 2)
        if (try_seq(T) != Outcome::trained) break;
      while (bad && good && bad - good > step && !g_stop) {
        const int64_t mid = (good + bad) / 2 / step * step;
        if (mid <= good || try_seq(mid) == Outcome::missing) break;
      }
      if (g_stop) break;
      searches.push_back({{"strategy", base.strategy}, {"world", base.world}, {"sp", base.sp},
                          {"max_seq", good ? json(good) : json(nullptr)},
                          {"first_failing_seq", bad ? json(bad) : json(nullptr)},
                          {"failure", bad_status.empty() ? json(nullptr) : json(bad_status)},
                          {"granularity", step}, {"limit", limit},
                          {"limit_reached", complete && bad == 0 && good > 0},
                          // Incomplete (--aggregate-only on a sweep cut short): max_seq is a lower bound.
                          {"complete", complete}});
    }
  }
  if (g_stop) {
    fmt::print("interrupted: the points done so far are kept; rerun the same command to continue\n");
    return 130;
  }
  json a = aggregate_points(results, spec.mode);
  if (spec.mode == "max_seq") a["max_seq"] = searches;
  a["points_missing"] = missing;
  a["spec"] = spec.raw;
  // Two aggregates within one second (an --aggregate-only right after the sweep) get a suffix:
  // an aggregate is never overwritten.
  const std::string stamp = utc_timestamp();
  std::string path = (fs::path(out) / ("aggregate-" + stamp + ".json")).string();
  for (int n = 2; fs::exists(path); ++n) path = (fs::path(out) / fmt::format("aggregate-{}-{}.json", stamp, n)).string();
  write_file_atomic_no_overwrite(path, a.dump(2) + "\n");
  if (spec.mode != "max_seq") {
    fmt::print("\n{:<34} {:>9} {:>10} {:>10}\n", "point", "status", "step ms", "TFLOP/s");
    for (const auto& r : results)
      fmt::print("{:<34} {:>9} {:>10} {:>10}\n",
                 fmt::format("{}_w{}_sp{}_T{}", r.value("strategy", "?"), r["grid"].value("world", 0), r["grid"].value("sp", 0),
                             r["config"].value("seq", int64_t{0})),
                 r.value("status", "?"),
                 point_ok(r) ? fmt::format("{:.2f}", r["timing"]["median_ms"].get<double>()) : "-",
                 point_ok(r) ? fmt::format("{:.2f}", r["metrics"]["tflops_per_gpu"].get<double>()) : "-");
  }
  else {
    fmt::print("\n{:<12} {:>5} {:>10} {:>13}  {}\n", "strategy", "world", "max T", "first failing", "search");
    for (const auto& e : searches)
      fmt::print("{:<12} {:>5} {:>10} {:>13}  {}\n", e["strategy"].get<std::string>(), e["world"].get<int>(),
                 e["max_seq"].is_null() ? "-" : std::to_string(e["max_seq"].get<int64_t>()),
                 e["first_failing_seq"].is_null() ? "-" : std::to_string(e["first_failing_seq"].get<int64_t>()),
                 !e["complete"].get<bool>()         ? "incomplete (probes missing): a lower bound"
                 : e["limit_reached"].get<bool>() ? "limit reached"
                                                  : e["failure"].is_null() ? "" : e["failure"].get<std::string>());
  }
  // A strategy whose base point is slower than serial's step makes every efficiency look better.
  std::set<std::pair<std::string, int64_t>> noted;
  for (const char* list : {"strong_scaling", "weak_scaling"}) {
    if (!a.contains(list)) continue;
    for (const auto& e : a[list]) {
      const int64_t base_seq = e.value("base_seq", e["seq"].get<int64_t>());
      if (e["base_clearly_slower_than_serial"] != true || !noted.insert({e["strategy"], base_seq}).second) continue;
      fmt::print("note: {}'s base point (T={}) takes {:.3f}x serial's step: its efficiencies are against a slower "
                 "baseline\n",
                 e["strategy"].get<std::string>(), base_seq, e["base_over_serial"].get<double>());
    }
  }
  if (!missing.empty()) fmt::print("{} point(s) without a result: {}\n", missing.size(), missing.dump());
  fmt::print("wrote {}\n", path);
  return 0;
}

}  // namespace lss
