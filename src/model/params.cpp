#include "model/params.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include "core/check.h"
#include "core/init.h"

namespace lss {

int64_t ParamSpec::local_rows() const {
  int64_t n = 0;
  for (const auto& r : row_ranges) n += r.count;
  return n;
}

std::vector<int64_t> ParamSpec::shape() const {
  if (is_vector) return {rows};
  return {rows, cols};
}

ParamSpec full_matrix(std::string name, int64_t rows, int64_t cols, ParamSpec::Init init, double std, bool decay) {
  ParamSpec s;
  s.name = std::move(name);
  s.rows = rows;
  s.cols = cols;
  s.row_ranges = {{0, rows}};
  s.col_start = 0;
  s.col_count = cols;
  s.init = init;
  s.std = std;
  s.decay = decay;
  return s;
}

ParamSpec full_vector(std::string name, int64_t n, ParamSpec::Init init) {
  ParamSpec s = full_matrix(std::move(name), n, 1, init, 0.0, false);
  s.is_vector = true;
  return s;
}

std::vector<ParamSpec> model_param_specs(const ModelConfig& cfg) {
  using I = ParamSpec::Init;
  const int64_t C = cfg.C;
  const double std = cfg.init_std;
  // GPT-2's scaling of the projections into the residual stream keeps its variance O(1) in L.
  const double proj_std = cfg.init_std / std::sqrt(2.0 * static_cast<double>(cfg.L));
  std::vector<ParamSpec> s;
  s.push_back(full_matrix("wte", cfg.V, C, I::normal, std, true));
  s.push_back(full_matrix("wpe", cfg.T_max, C, I::normal, std, true));
  for (int64_t l = 0; l < cfg.L; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    s.push_back(full_vector(p + "ln_1.weight", C, I::ones));
    s.push_back(full_vector(p + "ln_1.bias", C, I::zeros));
    s.push_back(full_matrix(p + "attn.c_attn.weight", 3 * C, C, I::normal, std, true));
    s.push_back(full_vector(p + "attn.c_attn.bias", 3 * C, I::zeros));
    s.push_back(full_matrix(p + "attn.c_proj.weight", C, C, I::normal, proj_std, true));
    s.push_back(full_vector(p + "attn.c_proj.bias", C, I::zeros));
    s.push_back(full_vector(p + "ln_2.weight", C, I::ones));
    s.push_back(full_vector(p + "ln_2.bias", C, I::zeros));
    s.push_back(full_matrix(p + "mlp.c_fc.weight", 4 * C, C, I::normal, std, true));
    s.push_back(full_vector(p + "mlp.c_fc.bias", 4 * C, I::zeros));
    s.push_back(full_matrix(p + "mlp.c_proj.weight", C, 4 * C, I::normal, proj_std, true));
    s.push_back(full_vector(p + "mlp.c_proj.bias", C, I::zeros));
  }
  s.push_back(full_vector("ln_f.weight", C, I::ones));
  s.push_back(full_vector("ln_f.bias", C, I::zeros));
  s.push_back(full_matrix("lm_head.weight", cfg.V, C, I::normal, std, true));
  return s;
}

std::vector<double> init_shard_values(const ParamSpec& spec, uint64_t seed) {
  std::vector<double> out(static_cast<size_t>(spec.local_numel()));
  const uint64_t key = stream_key(seed, spec.name);
  size_t i = 0;
  for (const auto& rr : spec.row_ranges) {
    for (int64_t r = rr.start; r < rr.start + rr.count; ++r) {
      for (int64_t c = spec.col_start; c < spec.col_start + spec.col_count; ++c, ++i) {
        switch (spec.init) {
          case ParamSpec::Init::zeros: out[i] = 0.0; break;
          case ParamSpec::Init::ones: out[i] = 1.0; break;
          case ParamSpec::Init::normal:
            out[i] = spec.std * normal(key, static_cast<uint64_t>(r * spec.cols + c));
            break;
        }
      }
    }
  }
  return out;
}

ParamStore::ParamStore(Backend& backend, const ModelConfig& cfg, std::vector<ParamSpec> specs)
    : backend_(backend), master_(master_dtype(cfg.dtype)) {
  std::stable_partition(specs.begin(), specs.end(), [](const ParamSpec& s) { return s.seq_reduced; });
  int64_t offset = 0;
  for (auto& s : specs) {
    LSS_CHECK(s.col_start >= 0 && s.col_start + s.col_count <= s.cols, "bad column shard of " + s.name);
    for (const auto& rr : s.row_ranges)
      LSS_CHECK(rr.start >= 0 && rr.count >= 0 && rr.start + rr.count <= s.rows, "bad row shard of " + s.name);
    if (s.seq_reduced) seq_reduced_numel_ = offset + s.local_numel();
    index_[s.name] = entries_.size();
    entries_.push_back({std::move(s), offset});
    offset += entries_.back().spec.local_numel();
  }
  params_ = backend.alloc(master_, offset);
  grads_ = backend.alloc_zeroed(master_, offset);
  if (master_ != cfg.dtype) compute_ = backend.alloc(cfg.dtype, offset);
  for (const auto& e : entries_) {
    const auto values = init_shard_values(e.spec, cfg.seed);
    backend.copy_from_host(params_.slice(e.offset, e.spec.local_numel()), values.data(), DType::f64);
  }
  refresh_compute_copy();
}

void ParamStore::refresh_compute_copy() {
  if (compute_) backend_.copy(compute_.view(), params_.view());
}

const ParamStore::Entry& ParamStore::entry(const std::string& name) const {
  auto it = index_.find(name);
  LSS_CHECK(it != index_.end(), "no parameter named " + name + " on this rank");
  return entries_[it->second];
}

View ParamStore::param(const std::string& name) const {
  const auto& e = entry(name);
  return (compute_ ? compute_ : params_).slice(e.offset, e.spec.local_numel());
}

View ParamStore::master(const std::string& name) const {
  const auto& e = entry(name);
  return params_.slice(e.offset, e.spec.local_numel());
}

View ParamStore::grad(const std::string& name) const {
  const auto& e = entry(name);
  return grads_.slice(e.offset, e.spec.local_numel());
}

void ParamStore::zero_grads() { backend_.fill_zero(grads_.view()); }

void ParamStore::set_optimizer_ranges(std::vector<std::pair<int64_t, int64_t>> ranges) {
  LSS_CHECK(!m_, "set_optimizer_ranges after the first AdamW step");
  std::sort(ranges.begin(), ranges.end());
  optimizer_ranges_.clear();
  int64_t state = 0, at = 0;
  for (const auto& [b, e] : ranges) {
    LSS_CHECK(b >= at && e <= numel() && b <= e, "set_optimizer_ranges: ranges overlap or leave the flat buffers");
    if (e > b) optimizer_ranges_.push_back({b, e, state});
    state += e - b;
    at = e;
  }
  m_ = backend_.alloc_zeroed(master_, optimizer_numel());
  v_ = backend_.alloc_zeroed(master_, optimizer_numel());
}

int64_t ParamStore::optimizer_numel() const {
  if (optimizer_ranges_.empty()) return numel();
  return optimizer_ranges_.back().state + optimizer_ranges_.back().end - optimizer_ranges_.back().begin;
}

void ParamStore::adamw_step(const OptimizerConfig& opt, int64_t step, int64_t begin, int64_t end) {
  if (end < 0) end = numel();
  LSS_CHECK(m_, "adamw_step before set_optimizer_ranges (the strategy's plan_shards)");
  // The row of m_ and v_ that holds flat element i (which must be stepped by this rank).
  auto state_row = [&](int64_t i, int64_t n) {
    if (optimizer_ranges_.empty()) return i;
    auto it = std::upper_bound(optimizer_ranges_.begin(), optimizer_ranges_.end(), i,
                               [](int64_t x, const OptimizerRange& r) { return x < r.begin; });
    LSS_CHECK(it != optimizer_ranges_.begin() && i + n <= std::prev(it)->end,
              "adamw_step: elements [" + std::to_string(i) + ", " + std::to_string(i + n) +
                  ") are not in one of this rank's optimizer ranges");
    --it;
    return it->state + i - it->begin;
  };
  // Parameters next to each other in the flat buffers and in m_ and v_ step in one call, each
  // with its own weight decay (one launch where one per tensor left most launches a few thousand
  // elements long); neighbours with the same decay share a run (a layer's biases and LayerNorm
  // weights), so a layer's 12 tensors are 8 runs.
  Backend::AdamW hp{opt.lr, opt.beta1, opt.beta2, opt.eps, 0.0, step};
  int64_t run_b = 0, run_s = 0, run_n = 0;  // the call being gathered: flat [run_b, +run_n), state row run_s
  auto flush = [&] {
    if (run_n == 0) return;
    hp.param_copy = compute_ ? compute_.slice(run_b, run_n) : View{};
    backend_.adamw(params_.slice(run_b, run_n), grads_.slice(run_b, run_n), m_.slice(run_s, run_n),
                   v_.slice(run_s, run_n), hp);
    hp.decay_runs.clear();
    run_n = 0;
  };
  for (const auto& e : entries_) {
    // The part of this parameter inside [begin, end).
    const int64_t b = std::max(begin, e.offset), n = std::min(end, e.offset + e.spec.local_numel()) - b;
    if (n <= 0) continue;
    const int64_t s = state_row(b, n);
    if (run_n > 0 && (b != run_b + run_n || s != run_s + run_n)) flush();
    if (run_n == 0) {
      run_b = b;
      run_s = s;
    }
    const double wd = e.spec.decay ? opt.weight_decay : 0.0;
    if (!hp.decay_runs.empty() && hp.decay_runs.back().weight_decay == wd)
      hp.decay_runs.back().numel += n;
    else
      hp.decay_runs.push_back({n, wd});
    run_n += n;
  }
  flush();
}

}  // namespace lss
