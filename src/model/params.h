// Parameters of the model as shards: each strategy says which rows and columns of each global
// tensor a rank holds; the store keeps every local shard in one flat buffer (with flat gradient
// and AdamW moment buffers beside it), initialises each element as a pure function of
// (seed, name, global index), and lets the gradient reductions run as one call per group.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "core/backend.h"
#include "model/config.h"

namespace lss {

struct RowRange {
  int64_t start = 0, count = 0;
};

struct ParamSpec {
  enum class Init { normal, zeros, ones };
  std::string name;           // the torch-style name of DESIGN.md ("h.0.attn.c_attn.weight")
  int64_t rows = 0, cols = 1; // global shape; a vector has cols == 1 and is_vector
  bool is_vector = false;
  std::vector<RowRange> row_ranges;  // rows held locally, in local order
  int64_t col_start = 0, col_count = 1;
  Init init = Init::normal;
  double std = 0.0;
  bool decay = false;         // AdamW weight decay applies (matrices and embeddings)
  // The gradient is summed over the sequence/tensor group: true for every parameter whose
  // gradient gets contributions from several ranks of the group.
  bool seq_reduced = true;

  int64_t local_rows() const;
  int64_t local_numel() const { return local_rows() * col_count; }
  std::vector<int64_t> shape() const;  // global export shape
};

// Spec helpers: a full (unsharded) tensor.
ParamSpec full_matrix(std::string name, int64_t rows, int64_t cols, ParamSpec::Init init, double std, bool decay);
ParamSpec full_vector(std::string name, int64_t n, ParamSpec::Init init);

// The model's parameter list, unsharded, in DESIGN.md's names; strategies shard it.
std::vector<ParamSpec> model_param_specs(const ModelConfig& cfg);

class ParamStore {
 public:
  struct Entry {
    ParamSpec spec;
    int64_t offset = 0;  // into the flat buffers
  };

  // Lays out the specs (sequence-reduced ones first, so that they form one prefix), allocates
  // master params and grads (master_dtype(cfg.dtype)) and, when the compute dtype differs, a
  // working copy of the params in cfg.dtype; initialises params from cfg.seed. The AdamW moments
  // m, v (master dtype) are allocated, zeroed, by set_optimizer_ranges.
  ParamStore(Backend& backend, const ModelConfig& cfg, std::vector<ParamSpec> specs);

  // The parameter as the model computes with it (the compute-dtype copy, or the master itself).
  View param(const std::string& name) const;
  // The master value (what the optimizer updates and the export writes).
  View master(const std::string& name) const;
  View grad(const std::string& name) const;
  View all_params() const { return params_.view(); }
  // Every parameter as the model computes with it (the compute-dtype copy, or the masters).
  View all_working() const { return (compute_ ? compute_ : params_).view(); }
  // After writing masters directly (tests), refresh the compute-dtype copy.
  void refresh_compute_copy();
  View all_grads() const { return grads_.view(); }
  // Elements [0, seq_reduced_numel) of the flat gradient are summed over the sequence group.
  int64_t seq_reduced_numel() const { return seq_reduced_numel_; }
  int64_t numel() const { return params_.numel(); }
  const std::vector<Entry>& entries() const { return entries_; }

  void zero_grads();
  // The flat ranges this rank steps (a distributed optimizer: its shards), disjoint; none: every
  // element. Allocates the AdamW moments for these elements only. Before the first adamw_step.
  void set_optimizer_ranges(std::vector<std::pair<int64_t, int64_t>> ranges);
  // Elements this rank steps (and keeps AdamW moments for).
  int64_t optimizer_numel() const;
  // AdamW on the elements [begin, end) of the flat buffers (all by default), which must lie in
  // the optimizer ranges. AdamW is elementwise: a range may cut a parameter.
  void adamw_step(const OptimizerConfig& opt, int64_t step, int64_t begin = 0, int64_t end = -1);

 private:
  const Entry& entry(const std::string& name) const;
  Backend& backend_;
  DType master_;
  std::vector<Entry> entries_;
  std::map<std::string, size_t> index_;
  int64_t seq_reduced_numel_ = 0;
  Buffer params_, grads_;          // (numel) each, master dtype
  // Flat ranges stepped by this rank, each with its first row in m_ and v_ (empty: all of them).
  struct OptimizerRange {
    int64_t begin, end, state;
  };
  std::vector<OptimizerRange> optimizer_ranges_;
  Buffer m_, v_;                   // (optimizer_numel) each, master dtype
  Buffer compute_;                 // (numel) compute-dtype copy of params_, empty if the same dtype
};

// Host values of a spec's local shard, element (local row, col) row-major, computed from
// (seed, name, global index = global_row * cols + global_col).
std::vector<double> init_shard_values(const ParamSpec& spec, uint64_t seed);

}  // namespace lss
