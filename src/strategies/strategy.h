// The one interface between the harness and a distributed strategy. The harness builds a
// strategy by name from the registry and only ever calls these methods.
#pragma once
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/grid.h"
#include "core/backend.h"
#include "model/config.h"
#include "model/data.h"
#include "model/params.h"

namespace lss {

struct StrategyContext {
  Backend& backend;
  Grid& grid;
  const ModelConfig& cfg;
  const StrategyOptions& opts;
  const DataSource& data;
};

// The dtype in which the gradients' collectives move them: --grad-reduce-dtype, or the master dtype.
DType gradient_wire_dtype(const ModelConfig& cfg, const StrategyOptions& opts);

// Expected collective calls and bytes per training step, by group name ("sp", "dp", "world").
using CommModel = std::map<std::string, CommCounts>;

// The work of one step on this rank that the analytic bound prices (README, Metrics): the
// linear layers and attention calls of one layer, and each collective with the GEMM FLOPs that
// the schedule runs beside it. The harness adds the head, the elementwise kernels (the same
// T*B/world rows for every strategy) and the optimizer, and measures every rate.
struct BoundModel {
  // One layer's linear layers on this rank, y (rows, out) = x (rows, in) W^T + b: each runs
  // forward, and backward (data and weight gradients), per layer and step, and forward once
  // more with recomputation.
  struct Linear {
    int64_t rows = 0, in = 0, out = 0;
    bool residual = false;  // forward adds the residual stream in the GEMM (linear_forward's residual)
    bool gelu_out = false;  // forward applies GELU in the GEMM's epilogue (linear_gelu_forward)
    bool gelu_in = false;   // its input is a GELU output: the data gradient goes through gelu' in the epilogue
    // The step's forward runs it as this many GEMMs on consecutive row ranges (lss
    // --chunk-pipeline: one per chunk; megatron_sp: the own rows beside their gather, then the
    // rest); priced whole in backward and a recomputed forward.
    int64_t forward_parts = 1;
  };
  std::vector<Linear> layer_linears;
  // Residual adds a block runs as separate kernels on the rank's N rows (those not fused into a
  // GEMM: megatron_sp adds after its reduce-scatter).
  int64_t residual_adds = 0;
  // A strategy's own memory-bound passes per layer (lss: the zigzag reorder copies of [K|V] and
  // [dK|dV], the split blocks' log-sum-exp merges and additions): each timed alone at its size.
  struct Pass {
    enum class Kind { copy, add, fill_zero, attention_merge };
    std::string what;  // for the JSON
    Kind kind = Kind::copy;
    int64_t numel = 0;     // copy, add, fill_zero: elements of the compute dtype
    AttentionArgs merge;   // attention_merge: B, H, D, Tq of the merged result
    double forward_calls = 0;   // per layer and forward (twice with recomputation)
    double backward_calls = 0;  // per layer and backward
  };
  std::vector<Pass> layer_passes;
  // One layer's attention calls on this rank (shapes only, no pointers): each runs forward and
  // backward per layer and step, and forward once more with recomputation.
  std::vector<AttentionArgs> layer_attention;
  struct Comm {
    std::string what;  // for the JSON ("K/V all-gather, forward")
    std::string group;
    CollKind kind = CollKind::all_gather;
    int64_t bytes = 0;  // per call, communicator.h's convention
    int64_t calls = 0;
    double hidden_by_flops = 0;  // GEMM FLOPs of the same rank that run beside each call (with --overlap)
    // Share of the optimizer step (parameters stepped / all) that runs beside it (with --overlap).
    double hidden_by_optimizer_share = 0;
    // It moves gradients (gradient_wire_dtype; otherwise the compute dtype), as every all-reduce does.
    bool gradients = false;
    // An all-gather placed by these pieces (Communicator::all_gather_placed, timed as such), in
    // elements of its dtype; empty: rank-major.
    std::vector<PlacedPiece> placed = {};
    // Its operands are plain allocations whatever the memory options (the distributed optimizer's
    // flat gradient and parameter buffers): timed so, not in the symmetric windows or registered
    // blocks where the bound otherwise puts a gather's (and with --symmetric-collectives a
    // rank-major reduce-scatter's) operands, since NCCL runs the two differently.
    bool plain_memory = false;
  };
  std::vector<Comm> comm;
};

class Strategy {
 public:
  explicit Strategy(StrategyContext ctx) : ctx_(ctx) {}
  virtual ~Strategy() = default;

  virtual std::string name() const = 0;
  // Forward pass on step `step`'s batch; writes this rank's sum of -log p over its predicted
  // tokens into loss_sum (one fp64 on the device; the harness sums it over the world for the
  // mean loss). Keeps what backward needs.
  virtual void forward(int64_t step, View loss_sum) = 0;
  // Backward pass and the gradient reductions: after finish_gradients() every rank holds the
  // gradients of its local parameter shards, equal to the serial model's gradients of those
  // elements. With --overlap, backward returns with the last buckets' all-reduces still in
  // flight (reduce_gradients), for optimizer_step to finish.
  virtual void backward() = 0;
  virtual ParamStore& params() = 0;
  // The parameter shards held by sequence (tensor) position p, 0 <= p < P; every data replica
  // holds the same.
  virtual std::vector<ParamSpec> param_specs_for(int p) const = 0;
  // Calls and bytes per step that the README's formulas predict for this rank.
  virtual CommModel expected_comm() const = 0;
  // Strategy options in effect, for the result JSON.
  virtual nlohmann::json options_json() const = 0;
  // What the analytic bound needs to know of this rank's step.
  virtual BoundModel bound_model() const = 0;

  // Waits for the gradient reductions backward left in flight (nothing when none is), and for the
  // parameters backward stepped on the side lane (step_in_backward).
  void finish_gradients();
  // The next backward may step (AdamW step `adam_step` of `opt`) each bucket whose gradients are
  // final when backward finishes them, on the backend's side lane beside the rest of backward
  // (--optimizer-in-backward: on one rank, P = R = 1, where no bucket waits for a sum); null:
  // none. optimizer_step(opt, adam_step) then steps the rest; a call before it, with parameters
  // already stepped, is a bug (LSS_CHECK): the model would be left half stepped.
  void step_in_backward(const OptimizerConfig* opt, int64_t adam_step);
  // The share of optimizer_numel() that backward steps beside its compute under step_in_backward:
  // every bucket but the last two (layer 0's attention half, whose AdamW has only the embeddings'
  // backward beside it, and the embeddings'); 0 where backward steps none. For the bound.
  double optimizer_share_beside_backward(const ParamStore& store) const;
  // Elements of the flat parameter buffers this rank's optimizer steps: all of them, or with
  // --distributed-optimizer its shards of the sequence-reduced ones and all the others.
  int64_t optimizer_numel() const;
  // Elements of the flat gradient that --grad-reduce-dtype rounds into its copy per step
  // (every bucket's parts that a group sums) and widens back (those this rank steps); zero
  // without the option or with nothing to sum. For the bound.
  std::pair<int64_t, int64_t> gradient_cast_numel(const ParamStore& store) const;
  // With --distributed-optimizer each rank holds the summed gradients (and, in a bf16 model, the
  // current masters) of its shards only: all-gathers the rest from the group so that every rank
  // holds every element (for the export and the checks; not part of a step). Nothing otherwise.
  void complete_shards(bool grads);
  // AdamW on every local parameter. AdamW is elementwise, so a parameter may step as soon as its
  // gradient is summed: the parameters outside the buckets still in flight step first, then each
  // bucket's as its all-reduce finishes, so that the last buckets (layer 0's, the embeddings')
  // travel while the optimizer steps the rest instead of after backward.
  void optimizer_step(const OptimizerConfig& opt, int64_t step);

 protected:
  // Double gradient averaging: sum the sequence-reduced gradients over the sequence (tensor)
  // group, then the whole gradient over the data group. With --distributed-optimizer the
  // sequence group's sum is a reduce-scatter into each rank's shard of the bucket (1/P of it, an
  // all-reduce for the few elements P does not divide), and the data group sums the shard. With the loss normalised by all B*T
  // predicted tokens, these sums are the serial gradient. Both go in buckets (head, each layer's
  // MLP half and attention half, embeddings) as backward produces them: call head_gradients_ready
  // after the head's backward, mlp_gradients_ready(l) after block l's MLP backward,
  // attention_gradients_ready(l) after its attention backward, and reduce_gradients at the end
  // (embeddings). Halves, so that layer 0's MLP sum runs beside layer 0's attention backward and
  // layer 0's MLP gather beside its attention forward: at either end of the step only a third of
  // a layer's parameters travels with nothing beside it. A bucket's sequence-group sum starts at
  // once; its data-group all-reduces (of its sequence-reduced range and of the rest) start when
  // the bucket after the next is ready, after a wait for the sequence group's sum that a block's
  // backward has had time to finish. With --overlap all of them run beside the rest of backward,
  // and the last ones beside the optimizer step (optimizer_step); with --no-overlap each is
  // waited for at once.
  void head_gradients_ready(ParamStore& store);
  void mlp_gradients_ready(ParamStore& store, int64_t l);
  void attention_gradients_ready(ParamStore& store, int64_t l);
  void reduce_gradients(ParamStore& store);
  // --distributed-optimizer: the forward calls params_needed(key) before it reads a bucket's
  // parameters ("embed", attention_key(l), mlp_key(l), "head"), which starts the bucket's all-gather of its
  // updated shards unless under way and waits for it; prefetch_params(key) starts it early, beside
  // compute. Each bucket is gathered once per step, in the forward (the first forward's too).
  // Nothing without the option.
  void params_needed(const std::string& key);
  void prefetch_params(const std::string& key);
  // The bucket keys of layer l's attention half (LN1 and attention; "head" for l == L, the next
  // after the last layer) and MLP half (LN2 and MLP).
  std::string attention_key(int64_t l) const { return l < ctx_.cfg.L ? std::to_string(l) + ".attn" : "head"; }
  std::string mlp_key(int64_t l) const { return std::to_string(l) + ".mlp"; }
  // The gradient reductions and parameter gathers of a step, as the README's formulas count them
  // (for expected_comm): over the sequence group one all-reduce per bucket (head, each layer's two
  // halves, embeddings) with sequence-reduced
  // gradients, or with --distributed-optimizer a reduce-scatter, an all-reduce of the remainder
  // P does not divide and the parameters' all-gather; over the data group, per bucket, one
  // all-reduce of each range this rank steps.
  void expect_gradient_comm(CommModel& m, const ParamStore& store) const;
  // Lays out the --distributed-optimizer shards and gives the store its optimizer ranges: each
  // strategy calls it once its store exists (its constructor).
  void plan_shards();
  // A --grad-reduce-dtype narrower than the gradients, where something is summed: the
  // collectives move wire_grads_.
  bool casts_gradients() const {
    return gradient_wire_dtype(ctx_.cfg, ctx_.opts) != master_dtype(ctx_.cfg.dtype) && !nothing_to_sum();
  }
  // --distributed-optimizer in effect: asked for, and a sequence group to shard over.
  bool sharded() const { return ctx_.opts.distributed_optimizer && ctx_.grid.P > 1; }
  // The gradient all-reduces of the bound model, as the schedule above runs them: a layer's two
  // sequence-group all-reduces beside the next block's backward (`block_backward_flops` of GEMMs,
  // each half priced beside its own share: a third for the attention half, two for the MLP),
  // except layer 0's and the embeddings'; their data-group ones likewise, a half block later;
  // the rest beside the optimizer's steps before their waits (README, analytic bound). (The
  // harness prices every collective as exposed under --no-overlap.)
  // With --distributed-optimizer the reduce-scatters take the all-reduces' places and the
  // parameters' all-gathers run beside the forward of the half before (its GEMMs: half its
  // backward's), but the embeddings' and layer 0's attention half's, which nothing precedes.
  void add_gradient_bounds(BoundModel& m, const ParamStore& store, double block_backward_flops) const;
  // The shape of an attention call for the bound model.
  AttentionArgs attention_shape(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t q_offset) const;
  // A collective of the sequence group in flight and the new buffer it writes; with
  // --no-overlap it has already finished. Its input must stay alive and unchanged until finish().
  struct PendingCollective {
    Buffer out;
    CommHandle handle;
  };
  // All-gathers `local` over the sequence group into P x its elements.
  PendingCollective start_seq_all_gather(View local);
  // The same, each rank's pieces placed as `pieces` say (Communicator::all_gather_placed).
  PendingCollective start_seq_all_gather_placed(View local, std::vector<PlacedPiece> pieces);
  // A buffer that a sequence-group reduce-scatter reads or writes: from the group's symmetric
  // memory where its reduce-scatters take it (--symmetric-collectives: NCCL's symmetric kernels
  // then run them), else as Backend::alloc. Collective as Backend::alloc_symmetric.
  Buffer alloc_seq_scatter(DType dtype, int64_t numel);
  // Reduce-scatters `full` over the sequence group into 1/P of its elements (alloc_seq_scatter).
  PendingCollective start_seq_reduce_scatter(View full);
  // The same, `full` laid out as `pieces` say (Communicator::reduce_scatter_placed).
  PendingCollective start_seq_reduce_scatter_placed(View full, std::vector<PlacedPiece> pieces);
  // Waits for it and hands over its buffer.
  Buffer finish(PendingCollective& p);
  // All-gathers `local` over the sequence group into `out` (P x its elements), a part of a buffer
  // the caller owns; both must stay alive and unchanged until wait_seq().
  CommHandle start_seq_all_gather_into(View local, View out);
  // Reduce-scatters `full` over the sequence group into `out` (1/P of its elements), a part of a
  // buffer the caller owns; both must stay alive and unchanged until wait_seq().
  CommHandle start_seq_reduce_scatter_into(View full, View out);
  void wait_seq(CommHandle& h);
  // Uploads this rank's window of step `step`: sequences [b0, b0+nb) at the positions of
  // `ranges` one after the other, each (count, nb) T-major; int32 tokens and targets.
  void upload_batch(int64_t step, int64_t b0, int64_t nb, const std::vector<RowRange>& ranges, Buffer& tokens,
                    Buffer& targets);

  StrategyContext ctx_;

 private:
  // [begin, end) of the flat gradient holding bucket `key`'s sequence-reduced entries ("head",
  // "embed", or the layer index), or with seq_reduced false its other entries; empty when it has
  // none.
  std::pair<int64_t, int64_t> bucket_range(const ParamStore& store, const std::string& key,
                                           bool seq_reduced = true) const;
  // The bucket keys in the order backward finishes them: head, layers L-1..0, embeddings.
  std::vector<std::string> bucket_keys() const;
  // Waits at once unless collectives overlap compute (the --no-overlap order).
  void wait_unless_overlap(Communicator& comm, CommHandle& h) {
    if (!ctx_.opts.overlap) comm.wait(h);
  }
  void start_bucket(ParamStore& store, const std::string& key);
  // A layer half's gradients are complete: the data-group sums of the buckets before the last
  // one started, then this bucket's sequence-group sum.
  void half_gradients_ready(ParamStore& store, const std::string& key);
  // --distributed-optimizer: a bucket's sequence-reduced range [begin, end) of the flat buffers,
  // cut into P shards of `size` elements, rank p's at begin + p*size, and the remainder
  // [begin + P*size, end) that every rank sums and steps whole.
  struct Shard {
    std::string key;
    int64_t begin = 0, end = 0, size = 0;
    // The bucket's parameter all-gather: owed (its shards stepped since the last), started.
    bool gather_owed = false;
    CommHandle gather;
  };
  const Shard* shard_of(const std::string& key) const;
  Shard* shard_of(const std::string& key) {
    return const_cast<Shard*>(static_cast<const Strategy*>(this)->shard_of(key));
  }
  int64_t shard_begin(const Shard& s) const { return s.begin + ctx_.grid.p * s.size; }
  int64_t remainder_begin(const Shard& s) const { return s.begin + ctx_.grid.P * s.size; }
  bool planned_ = false;
  int64_t optimizer_numel_ = 0;
  std::vector<Shard> shards_;                       // in bucket order
  std::vector<std::pair<int64_t, int64_t>> owned_;  // the flat ranges this rank steps, sorted
  // Number of data-group gradient all-reduces per step: per bucket, one of each range it steps.
  int64_t data_gradient_calls(const ParamStore& store) const;
  // The flat ranges of bucket `key` this rank steps and the data group sums: its shard and
  // remainder (or its whole sequence-reduced range), and with replicas its other entries.
  std::vector<std::pair<int64_t, int64_t>> stepped_ranges(const ParamStore& store, const std::string& key) const;
  struct Bucket {
    // The sequence group's sum of its sequence-reduced range: one all-reduce, or a reduce-scatter
    // and the remainder's all-reduce.
    std::vector<CommHandle> seq;
    std::vector<CommHandle> data;  // the data group's all-reduces (none with one replica)
    bool data_started = false;
    // Its ranges of the flat gradient that this rank steps (stepped_ranges).
    std::vector<std::pair<int64_t, int64_t>> ranges;
  };
  // Waits for the bucket's sequence-group sum and starts its data-group all-reduces (once).
  void start_data(ParamStore& store, Bucket& b);
  // Waits for every all-reduce of the bucket started so far; with a narrower --grad-reduce-dtype
  // then widens its sums into the gradients.
  void wait_bucket(ParamStore& store, Bucket& b);
  // The flat gradient as the collectives move it: the gradients, or their narrower copy.
  View wire_gradients(ParamStore& store);
  Buffer wire_grads_;  // (numel) --grad-reduce-dtype, when casts_gradients(): the gradients the collectives sum
  std::vector<Bucket> buckets_in_flight_;  // in the order started
  // One rank (P = R = 1): no bucket waits for a sum, so step_in_backward applies.
  bool nothing_to_sum() const;
  // The parts of bucket `key`, those not empty: its sequence-reduced range and, with `rest`, its
  // other one (the parts its collectives sum: rest only with data replicas).
  std::vector<std::pair<int64_t, int64_t>> bucket_parts(const ParamStore& store, const std::string& key,
                                                        bool rest = true) const;
  // step_in_backward's AdamW (null: none) and the flat ranges backward has stepped with it.
  const OptimizerConfig* backward_opt_ = nullptr;
  int64_t backward_adam_step_ = 0;
  std::vector<std::pair<int64_t, int64_t>> stepped_in_backward_;
};

// Adds `calls` calls of `bytes` bytes each of kind k to group g of the model (when the group has
// more than one rank: groups of one move nothing and count nothing).
void expect_calls(CommModel& model, const std::string& group, int group_size, CollKind k, int64_t calls,
                  int64_t bytes);

// The strategy named `name`; throws UsageError for unknown names or configurations the strategy
// refuses (every rank throws the same).
// The same with `total_bytes` over all `calls` calls (calls of different sizes).
void expect_total(CommModel& model, const std::string& group, int group_size, CollKind k, int64_t calls,
                  int64_t total_bytes);

std::unique_ptr<Strategy> make_strategy(const std::string& name, StrategyContext ctx);
std::vector<std::string> strategy_names();
// The strategies that read `option` (a `lssbench run` option, without "--"), where only some do
// (e.g. "zigzag": lss); empty where every strategy reads it or it is no strategy's option.
std::vector<std::string> strategies_reading(const std::string& option);
// Whether strategy `name` reads `option`: a run or sweep point must not give one it does not read,
// which would time a step without the option under the option's name. Unknown name: UsageError.
bool strategy_reads(const std::string& name, const std::string& option);

}  // namespace lss
