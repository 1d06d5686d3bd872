#include "strategies/strategy.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace lss {

// A gradient bucket's key ("head", "embed", "<layer>.attn", "<layer>.mlp") as a trace label.
static std::string bucket_label(const std::string& key) {
  return !key.empty() && key[0] >= '0' && key[0] <= '9' ? "layer " + key : key;
}

void expect_calls(CommModel& model, const std::string& group, int group_size, CollKind k, int64_t calls,
                  int64_t bytes) {
  if (group_size <= 1 || calls == 0) return;
  auto& c = model[group];
  c.calls[static_cast<int>(k)] += calls;
  c.bytes[static_cast<int>(k)] += calls * bytes;
}

void expect_total(CommModel& model, const std::string& group, int group_size, CollKind k, int64_t calls,
                  int64_t total_bytes) {
  if (group_size <= 1 || calls == 0) return;
  auto& c = model[group];
  c.calls[static_cast<int>(k)] += calls;
  c.bytes[static_cast<int>(k)] += total_bytes;
}

namespace {
// The bucket a parameter's gradient belongs to: its layer's attention half ("h.<l>.ln_1.*",
// "h.<l>.attn.*": "<l>.attn") or MLP half ("h.<l>.ln_2.*", "h.<l>.mlp.*": "<l>.mlp"), the
// embeddings, or the head (final LayerNorm, LM head).
std::string bucket_key(const std::string& name) {
  if (name.rfind("h.", 0) == 0) {
    const size_t dot = name.find('.', 2);
    const std::string layer = name.substr(2, dot - 2), rest = name.substr(dot + 1);
    if (rest.rfind("ln_1.", 0) == 0 || rest.rfind("attn.", 0) == 0) return layer + ".attn";
    if (rest.rfind("ln_2.", 0) == 0 || rest.rfind("mlp.", 0) == 0) return layer + ".mlp";
    LSS_CHECK(false, "gradient buckets: parameter '" + name + "' is in neither half of its layer");
  }
  if (name == "wte" || name == "wpe") return "embed";
  return "head";
}
}  // namespace

std::pair<int64_t, int64_t> Strategy::bucket_range(const ParamStore& store, const std::string& key,
                                                   bool seq_reduced) const {
  int64_t begin = -1, end = -1, numel = 0;
  for (const auto& e : store.entries()) {
    if (e.spec.seq_reduced != seq_reduced || bucket_key(e.spec.name) != key || e.spec.local_numel() == 0) continue;
    begin = begin < 0 ? e.offset : std::min(begin, e.offset);
    end = std::max(end, e.offset + e.spec.local_numel());
    numel += e.spec.local_numel();
  }
  if (begin < 0) return {0, 0};
  // The store lays parameters out in model order (the sequence-reduced ones first), so each of a
  // bucket's two parts is one contiguous range.
  LSS_CHECK(numel == end - begin, "gradient bucket '" + key + "' is not contiguous in the flat gradient");
  return {begin, end};
}

std::vector<std::string> Strategy::bucket_keys() const {
  std::vector<std::string> keys = {"head"};
  for (int64_t l = ctx_.cfg.L - 1; l >= 0; --l) {
    keys.push_back(mlp_key(l));
    keys.push_back(attention_key(l));
  }
  keys.push_back("embed");
  return keys;
}

void Strategy::plan_shards() {
  LSS_CHECK(!planned_, name() + ": plan_shards called twice");
  planned_ = true;
  ParamStore& store = params();
  if (!sharded()) {
    store.set_optimizer_ranges({});
    optimizer_numel_ = store.optimizer_numel();
    return;
  }
  const int P = ctx_.grid.P;
  for (const auto& key : bucket_keys()) {
    const auto [b, e] = bucket_range(store, key);
    if (e <= b) continue;
    Shard sh;
    sh.key = key;
    sh.begin = b;
    sh.end = e;
    sh.size = (e - b) / P;
    // Every rank's moments start at zero and its masters equal: the first forward gathers as
    // every later one does, so that each step moves the same bytes.
    sh.gather_owed = sh.size > 0;
    shards_.push_back(sh);
    if (sh.size > 0) owned_.emplace_back(shard_begin(sh), shard_begin(sh) + sh.size);
    if (remainder_begin(sh) < e) owned_.emplace_back(remainder_begin(sh), e);
  }
  if (store.numel() > store.seq_reduced_numel()) owned_.emplace_back(store.seq_reduced_numel(), store.numel());
  std::sort(owned_.begin(), owned_.end());
  store.set_optimizer_ranges(owned_);
  optimizer_numel_ = store.optimizer_numel();
}

const Strategy::Shard* Strategy::shard_of(const std::string& key) const {
  LSS_CHECK(planned_, name() + ": its constructor did not call plan_shards()");
  for (const Shard& s : shards_)
    if (s.key == key) return &s;
  return nullptr;
}

int64_t Strategy::optimizer_numel() const {
  LSS_CHECK(planned_, name() + ": its constructor did not call plan_shards()");
  return optimizer_numel_;
}

std::vector<std::pair<int64_t, int64_t>> Strategy::stepped_ranges(const ParamStore& store,
                                                                  const std::string& key) const {
  std::vector<std::pair<int64_t, int64_t>> out;
  if (const Shard* sh = sharded() ? shard_of(key) : nullptr) {
    if (sh->size > 0) out.emplace_back(shard_begin(*sh), shard_begin(*sh) + sh->size);
    if (remainder_begin(*sh) < sh->end) out.emplace_back(remainder_begin(*sh), sh->end);
  } else if (!sharded()) {
    const auto [b, e] = bucket_range(store, key);
    if (e > b) out.emplace_back(b, e);
  }
  if (ctx_.grid.R > 1) {
    const auto [b, e] = bucket_range(store, key, false);
    if (e > b) out.emplace_back(b, e);
  }
  return out;
}

int64_t Strategy::data_gradient_calls(const ParamStore& store) const {
  int64_t n = 0;
  for (const auto& k : bucket_keys()) n += static_cast<int64_t>(stepped_ranges(store, k).size());
  return n;
}

void Strategy::expect_gradient_comm(CommModel& m, const ParamStore& store) const {
  const int P = ctx_.grid.P, R = ctx_.grid.R;
  const int64_t es_grad = static_cast<int64_t>(dtype_size(gradient_wire_dtype(ctx_.cfg, ctx_.opts)));
  const int64_t es_param = static_cast<int64_t>(dtype_size(store.all_working().dtype));
  if (!sharded()) {
    int64_t buckets = 0;
    for (const auto& k : bucket_keys()) {
      const auto [b, e] = bucket_range(store, k);
      if (e > b) ++buckets;
    }
    expect_total(m, "sp", P, CollKind::all_reduce, buckets, store.seq_reduced_numel() * es_grad);
  }
  for (const Shard& sh : shards_) {
    expect_calls(m, "sp", P, CollKind::reduce_scatter, sh.size > 0 ? 1 : 0, P * sh.size * es_grad);
    expect_calls(m, "sp", P, CollKind::all_reduce, remainder_begin(sh) < sh.end ? 1 : 0,
                 (sh.end - remainder_begin(sh)) * es_grad);
    expect_calls(m, "sp", P, CollKind::all_gather, sh.size > 0 ? 1 : 0, P * sh.size * es_param);
  }
  // The data group sums what this rank steps: every element, or its shards and the rest.
  expect_total(m, "dp", R, CollKind::all_reduce, data_gradient_calls(store), optimizer_numel() * es_grad);
}

void Strategy::add_gradient_bounds(BoundModel& m, const ParamStore& store, double block_backward_flops) const {
  const int64_t es_grad = static_cast<int64_t>(dtype_size(gradient_wire_dtype(ctx_.cfg, ctx_.opts)));
  const int64_t es_param = static_cast<int64_t>(dtype_size(store.all_working().dtype));
  const bool replicas = ctx_.grid.R > 1;
  const int P = ctx_.grid.P;
  const std::vector<std::string> keys = bucket_keys();  // head, (L-1).mlp, (L-1).attn, ..., 0.mlp, 0.attn, embed
  const size_t last = keys.size() - 2;                 // layer 0's attention half: backward's last
  // A layer's GEMMs divide as its weights do: the attention half holds 4C² of the 12C², the MLP 8C².
  const double attention_flops = block_backward_flops / 3, mlp_flops = block_backward_flops - attention_flops;
  const auto is_mlp = [](const std::string& k) { return k.ends_with(".mlp"); };
  // The share of the optimizer's elements that optimizer_step steps as the buckets of keys
  // [from, to): with one replica only their sequence-reduced ranges (shards), the rest being
  // ready at once (`ready`, which steps before every bucket).
  const double numel = static_cast<double>(std::max<int64_t>(1, optimizer_numel()));
  auto share = [&](size_t from, size_t to) {
    int64_t n = 0;
    for (size_t i = from; i < to; ++i)
      for (const auto& [b, e] : stepped_ranges(store, keys[i]))
        if (b < store.seq_reduced_numel()) n += e - b;
    return static_cast<double>(n) / numel;
  };
  const double ready = replicas ? 0.0 : static_cast<double>(store.numel() - store.seq_reduced_numel()) / numel;
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string& key = keys[i];
    // The sequence-group sums run one after another on the communication stream, each layer's two
    // beside the backward that follows them: each half is priced beside the GEMMs of its own share
    // of a block (the head's beside layer L-1's MLP half). But layer 0's: its MLP half's beside
    // layer 0's attention backward and then (one replica) the AdamW of every bucket before it,
    // its attention half's beside that AdamW only (with replicas, beside the AdamW of the last
    // bucket whose data-group sums started in backward: the communication stream runs those
    // first); the embeddings' beside layer 0's attention half's AdamW.
    auto hide_seq = [&](BoundModel::Comm& c) {
      if (i + 1 < last) {
        c.hidden_by_flops = i == 0 || is_mlp(key) ? mlp_flops : attention_flops;
      } else if (i + 1 == last) {
        c.hidden_by_flops = attention_flops;
        if (!replicas) c.hidden_by_optimizer_share = ready + share(0, i);
      } else if (i == last) c.hidden_by_optimizer_share = replicas ? share(i - 2, i - 1) : ready + share(0, i);
      else if (!replicas) c.hidden_by_optimizer_share = share(last, last + 1);
    };
    if (P > 1 && !sharded()) {
      const auto [b, e] = bucket_range(store, key);
      if (e > b) {
        BoundModel::Comm c{"gradient all-reduce, bucket " + key, "sp", CollKind::all_reduce, (e - b) * es_grad, 1};
        hide_seq(c);
        m.comm.push_back(c);
      }
    }
    if (const Shard* sh = sharded() ? shard_of(key) : nullptr) {
      if (sh->size > 0) {
        BoundModel::Comm rs{"gradient reduce-scatter, bucket " + key, "sp", CollKind::reduce_scatter,
                            P * sh->size * es_grad, 1};
        rs.gradients = true;
        rs.plain_memory = true;  // the flat gradient buffer (ParamStore)
        hide_seq(rs);
        m.comm.push_back(rs);
        // The forward gathers each bucket beside the forward before it reads it: an MLP half beside
        // its layer's attention, an attention half (and the head) beside the MLP of the layer
        // before; nothing runs before the embeddings' and layer 0's attention half's.
        BoundModel::Comm ag{"parameter all-gather, bucket " + key, "sp", CollKind::all_gather, P * sh->size * es_param,
                            1};
        ag.plain_memory = true;  // the flat parameter buffer (ParamStore)
        if (is_mlp(key)) ag.hidden_by_flops = attention_flops / 2;
        else if (i < last) ag.hidden_by_flops = mlp_flops / 2;
        m.comm.push_back(ag);
      }
      if (remainder_begin(*sh) < sh->end) {
        BoundModel::Comm c{"gradient all-reduce, bucket " + key + ", the remainder P does not divide", "sp",
                           CollKind::all_reduce, (sh->end - remainder_begin(*sh)) * es_grad, 1};
        hide_seq(c);
        m.comm.push_back(c);
      }
    }
    if (!replicas) continue;
    for (const auto& [b, e] : stepped_ranges(store, key)) {
      BoundModel::Comm c{std::string("gradient all-reduce (data group), bucket ") + key +
                             (b < store.seq_reduced_numel() ? ", sequence-reduced" : ", the rest"),
                         "dp", CollKind::all_reduce, (e - b) * es_grad, 1};
      // Started when the bucket after the next is ready (the next has had a half block for its
      // own sums), beside the backward from there, priced as the sequence group's; the ones
      // started when layer 0's attention half is ready beside the optimizer's steps of the buckets
      // before them; layer 0's MLP half's starts in the optimizer step with nothing beside it,
      // layer 0's attention half's beside its MLP half's AdamW, the embeddings' beside layer 0's
      // attention half's.
      if (i + 3 <= last) c.hidden_by_flops = i == 0 || is_mlp(key) ? mlp_flops : attention_flops;
      else if (i + 2 == last) c.hidden_by_optimizer_share = share(0, i);
      else if (i == last) c.hidden_by_optimizer_share = share(i - 1, i);
      else if (i == last + 1) c.hidden_by_optimizer_share = share(last, last + 1);
      m.comm.push_back(c);
    }
  }
}

AttentionArgs Strategy::attention_shape(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t q_offset) const {
  AttentionArgs a;
  a.dtype = ctx_.cfg.dtype;
  a.B = B;
  a.H = H;
  a.D = ctx_.cfg.D();
  a.Tq = Tq;
  a.Tk = Tk;
  a.q_offset = q_offset;
  a.causal = ctx_.cfg.causal;
  a.scale = 1.0 / std::sqrt(static_cast<double>(ctx_.cfg.D()));
  return a;
}

bool Strategy::nothing_to_sum() const { return ctx_.grid.P == 1 && ctx_.grid.R == 1; }

std::vector<std::pair<int64_t, int64_t>> Strategy::bucket_parts(const ParamStore& store, const std::string& key,
                                                                bool rest) const {
  std::vector<std::pair<int64_t, int64_t>> parts;
  for (bool seq_reduced : {true, false}) {
    const auto [b, e] = bucket_range(store, key, seq_reduced);
    if (e > b && (seq_reduced || rest)) parts.emplace_back(b, e);
  }
  return parts;
}

void Strategy::step_in_backward(const OptimizerConfig* opt, int64_t adam_step) {
  LSS_CHECK(stepped_in_backward_.empty(), name() + ": a backward stepped parameters (AdamW step " +
                                              std::to_string(backward_adam_step_) +
                                              ") and no optimizer_step followed it");
  backward_opt_ = opt;
  backward_adam_step_ = adam_step;
}

double Strategy::optimizer_share_beside_backward(const ParamStore& store) const {
  if (!ctx_.opts.optimizer_in_backward || !nothing_to_sum()) return 0;
  const std::vector<std::string> keys = bucket_keys();
  int64_t n = 0;
  for (size_t i = 0; i + 2 < keys.size(); ++i)
    for (const auto& [b, e] : bucket_parts(store, keys[i])) n += e - b;
  return static_cast<double>(n) / static_cast<double>(std::max<int64_t>(1, optimizer_numel()));
}

DType gradient_wire_dtype(const ModelConfig& cfg, const StrategyOptions& opts) {
  return opts.grad_reduce_dtype.value_or(master_dtype(cfg.dtype));
}

std::pair<int64_t, int64_t> Strategy::gradient_cast_numel(const ParamStore& store) const {
  if (!casts_gradients()) return {0, 0};
  int64_t rounded = 0, widened = 0;
  for (const auto& key : bucket_keys()) {
    for (const auto& [b, e] : bucket_parts(store, key, ctx_.grid.R > 1)) rounded += e - b;
    for (const auto& [b, e] : stepped_ranges(store, key)) widened += e - b;
  }
  return {rounded, widened};
}

View Strategy::wire_gradients(ParamStore& store) {
  if (!casts_gradients()) return store.all_grads();
  if (!wire_grads_) wire_grads_ = ctx_.backend.alloc(gradient_wire_dtype(ctx_.cfg, ctx_.opts), store.numel());
  return wire_grads_.view();
}

void Strategy::start_bucket(ParamStore& store, const std::string& key) {
  if (backward_opt_ != nullptr && nothing_to_sum()) {
    // The bucket's gradients are final, so its parameters step now, beside the backward still to
    // come (which reads neither them nor these gradients).
    Backend& be = ctx_.backend;
    be.begin_side_work();
    for (const auto& [b, e] : bucket_parts(store, key)) {
      store.adamw_step(*backward_opt_, backward_adam_step_, b, e);
      stepped_in_backward_.emplace_back(b, e);
    }
    be.end_side_work();
    return;
  }
  Bucket bucket;
  bucket.ranges = stepped_ranges(store, key);
  Communicator& seq = *ctx_.grid.seq;
  CommLabel label(seq, "gradients, " + bucket_label(key));
  const View grads = wire_gradients(store);
  // The bucket's gradients are final on the compute stream here: its collectives sum them rounded.
  if (casts_gradients())
    for (const auto& [b, e] : bucket_parts(store, key, ctx_.grid.R > 1))
      ctx_.backend.copy(grads.slice(b, e - b), store.all_grads().slice(b, e - b));
  if (const Shard* sh = sharded() ? shard_of(key) : nullptr) {
    // In place: rank p's sum lands in its own shard of the bucket.
    if (sh->size > 0) {
      bucket.seq.push_back(seq.start_reduce_scatter(grads.slice(sh->begin, ctx_.grid.P * sh->size),
                                                    grads.slice(shard_begin(*sh), sh->size)));
      wait_unless_overlap(seq, bucket.seq.back());
    }
    if (remainder_begin(*sh) < sh->end) {
      bucket.seq.push_back(seq.start_all_reduce(grads.slice(remainder_begin(*sh), sh->end - remainder_begin(*sh))));
      wait_unless_overlap(seq, bucket.seq.back());
    }
  } else if (!sharded()) {
    const auto [b, e] = bucket_range(store, key);
    if (e > b) {
      bucket.seq.push_back(seq.start_all_reduce(grads.slice(b, e - b)));
      wait_unless_overlap(seq, bucket.seq.back());
    }
  }
  if (bucket.ranges.empty()) return;
  buckets_in_flight_.push_back(bucket);
  if (!ctx_.opts.overlap) start_data(store, buckets_in_flight_.back());
}

void Strategy::start_data(ParamStore& store, Bucket& b) {
  if (b.data_started) return;
  b.data_started = true;
  if (ctx_.grid.R == 1) return;
  for (CommHandle& h : b.seq) ctx_.grid.seq->wait(h);
  CommLabel label(*ctx_.grid.data, "gradients, data group");
  for (const auto& [begin, end] : b.ranges) {
    b.data.push_back(ctx_.grid.data->start_all_reduce(wire_gradients(store).slice(begin, end - begin)));
    wait_unless_overlap(*ctx_.grid.data, b.data.back());
  }
}

Strategy::PendingCollective Strategy::start_seq_all_gather(View local) {
  PendingCollective g{ctx_.backend.alloc_symmetric(local.dtype, ctx_.grid.P * local.numel), {}};
  g.handle = start_seq_all_gather_into(local, g.out.view());
  return g;
}

Strategy::PendingCollective Strategy::start_seq_all_gather_placed(View local, std::vector<PlacedPiece> pieces) {
  PendingCollective g{ctx_.backend.alloc_symmetric(local.dtype, ctx_.grid.P * local.numel), {}};
  g.handle = ctx_.grid.seq->start_all_gather_placed(local, g.out.view(), std::move(pieces));
  wait_unless_overlap(*ctx_.grid.seq, g.handle);
  return g;
}

Buffer Strategy::alloc_seq_scatter(DType dtype, int64_t numel) {
  return ctx_.grid.seq->scatters_in_symmetric_memory() ? ctx_.backend.alloc_symmetric(dtype, numel)
                                                       : ctx_.backend.alloc(dtype, numel);
}

Strategy::PendingCollective Strategy::start_seq_reduce_scatter(View full) {
  PendingCollective r{alloc_seq_scatter(full.dtype, full.numel / ctx_.grid.P), {}};
  r.handle = start_seq_reduce_scatter_into(full, r.out.view());
  return r;
}

Strategy::PendingCollective Strategy::start_seq_reduce_scatter_placed(View full, std::vector<PlacedPiece> pieces) {
  PendingCollective r{ctx_.backend.alloc(full.dtype, full.numel / ctx_.grid.P), {}};
  r.handle = ctx_.grid.seq->start_reduce_scatter_placed(full, r.out.view(), std::move(pieces));
  wait_unless_overlap(*ctx_.grid.seq, r.handle);
  return r;
}

CommHandle Strategy::start_seq_reduce_scatter_into(View full, View out) {
  CommHandle h = ctx_.grid.seq->start_reduce_scatter(full, out);
  wait_unless_overlap(*ctx_.grid.seq, h);
  return h;
}

Buffer Strategy::finish(PendingCollective& p) {
  wait_seq(p.handle);
  return std::move(p.out);
}

CommHandle Strategy::start_seq_all_gather_into(View local, View out) {
  CommHandle h = ctx_.grid.seq->start_all_gather(local, out);
  wait_unless_overlap(*ctx_.grid.seq, h);
  return h;
}

void Strategy::wait_seq(CommHandle& h) { ctx_.grid.seq->wait(h); }

void Strategy::params_needed(const std::string& key) {
  if (!sharded()) return;
  Shard* sh = shard_of(key);
  if (!sh) return;
  prefetch_params(key);
  ctx_.grid.seq->wait(sh->gather);
}

void Strategy::prefetch_params(const std::string& key) {
  if (!sharded()) return;
  Shard* sh = shard_of(key);
  if (!sh || !sh->gather_owed) return;
  sh->gather_owed = false;
  // In place: every rank's updated shard of the working copy into the others' copies.
  const View work = params().all_working();
  CommLabel label(*ctx_.grid.seq, "parameters, " + bucket_label(key));
  sh->gather = ctx_.grid.seq->start_all_gather(work.slice(shard_begin(*sh), sh->size),
                                               work.slice(sh->begin, ctx_.grid.P * sh->size));
  wait_unless_overlap(*ctx_.grid.seq, sh->gather);
}

void Strategy::complete_shards(bool grads) {
  if (!sharded()) return;
  ParamStore& store = params();
  // Where the model computes with the masters, a bucket's gather owed by the next forward is the
  // one that completes them; a bf16 model's gathers move the compute copy, so its masters' other
  // shards are gathered here.
  const bool masters_gathered = store.all_working().ptr == store.all_params().ptr;
  const View buf = grads ? store.all_grads() : store.all_params();
  for (Shard& sh : shards_) {
    if (sh.size == 0) continue;
    if (!grads && masters_gathered) {
      params_needed(sh.key);
      continue;
    }
    ctx_.grid.seq->all_gather(buf.slice(shard_begin(sh), sh.size), buf.slice(sh.begin, ctx_.grid.P * sh.size));
  }
}

void Strategy::head_gradients_ready(ParamStore& store) {
  // Every bucket's parameters were gathered by this step's forward before it read them.
  for (const Shard& sh : shards_)
    LSS_CHECK(!sh.gather_owed && !sh.gather.pending, name() + ": the forward read bucket " + sh.key +
                                                         "'s parameters without params_needed() (or before its "
                                                         "gather finished)");
  start_bucket(store, "head");
}

void Strategy::mlp_gradients_ready(ParamStore& store, int64_t l) { half_gradients_ready(store, mlp_key(l)); }

void Strategy::attention_gradients_ready(ParamStore& store, int64_t l) {
  half_gradients_ready(store, attention_key(l));
}

void Strategy::half_gradients_ready(ParamStore& store, const std::string& key) {
  // The buckets before the last one started have had a block's backward (two halves) to finish
  // their sequence-group sums: their data-group sums start now, behind them on the communication
  // stream (the last one's, started half a block ago, would stall the compute stream on its wait).
  for (size_t i = 0; i + 1 < buckets_in_flight_.size(); ++i) start_data(store, buckets_in_flight_[i]);
  start_bucket(store, key);
}

void Strategy::reduce_gradients(ParamStore& store) {
  start_bucket(store, "embed");
  if (!ctx_.opts.overlap) finish_gradients();
}

void Strategy::wait_bucket(ParamStore& store, Bucket& b) {
  for (CommHandle& h : b.seq) ctx_.grid.seq->wait(h);
  for (CommHandle& h : b.data) ctx_.grid.data->wait(h);
  if (!casts_gradients()) return;
  const View wire = wire_gradients(store);
  for (const auto& [begin, end] : b.ranges)
    ctx_.backend.copy(store.all_grads().slice(begin, end - begin), wire.slice(begin, end - begin));
}

void Strategy::finish_gradients() {
  ParamStore& store = params();
  for (Bucket& b : buckets_in_flight_) start_data(store, b);
  for (Bucket& b : buckets_in_flight_) wait_bucket(store, b);
  buckets_in_flight_.clear();
  ctx_.backend.join_side_work();
}

void Strategy::optimizer_step(const OptimizerConfig& opt, int64_t step) {
  ParamStore& store = params();
  std::vector<Bucket> buckets = std::move(buckets_in_flight_);
  buckets_in_flight_.clear();
  // The ranges this rank steps outside every bucket in flight (their ranges do not overlap, and
  // each lies inside one range this rank steps).
  std::vector<std::pair<int64_t, int64_t>> in_flight, ready;
  for (const Bucket& b : buckets) in_flight.insert(in_flight.end(), b.ranges.begin(), b.ranges.end());
  // And outside what backward has stepped already (step_in_backward).
  LSS_CHECK(stepped_in_backward_.empty() || step == backward_adam_step_,
            name() + ": optimizer_step " + std::to_string(step) + " after a backward that stepped AdamW step " +
                std::to_string(backward_adam_step_));
  in_flight.insert(in_flight.end(), stepped_in_backward_.begin(), stepped_in_backward_.end());
  std::sort(in_flight.begin(), in_flight.end());
  const std::vector<std::pair<int64_t, int64_t>> all = {{0, store.numel()}};
  for (const auto& [ob, oe] : sharded() ? owned_ : all) {
    int64_t at = ob;
    for (const auto& [b, e] : in_flight) {
      if (e <= ob || b >= oe) continue;
      if (b > at) ready.emplace_back(at, b);
      at = std::max(at, e);
    }
    if (oe > at) ready.emplace_back(at, oe);
  }
  for (const auto& [b, e] : ready) store.adamw_step(opt, step, b, e);
  // The buckets whose sums are all under way first, each after its waits; then the last ones'
  // data-group sums start (after their sequence-group sums), and they step as those finish.
  auto step_bucket = [&](Bucket& b) {
    wait_bucket(store, b);
    for (const auto& [begin, end] : b.ranges) store.adamw_step(opt, step, begin, end);
  };
  for (Bucket& b : buckets)
    if (b.data_started || ctx_.grid.R == 1) step_bucket(b);
  std::vector<Bucket*> last;
  for (Bucket& b : buckets)
    if (!b.data_started && ctx_.grid.R > 1) last.push_back(&b);
  for (Bucket* b : last) start_data(store, *b);
  for (Bucket* b : last) step_bucket(*b);
  // The next forward gathers the updated shards.
  for (Shard& sh : shards_) sh.gather_owed = sh.size > 0;
  // The next step's work (zeroing the gradients, the forward) after the side lane's AdamW.
  ctx_.backend.join_side_work();
  stepped_in_backward_.clear();
  backward_opt_ = nullptr;
}

void Strategy::upload_batch(int64_t step, int64_t b0, int64_t nb, const std::vector<RowRange>& ranges, Buffer& tokens,
                            Buffer& targets) {
  int64_t nt = 0;
  for (const auto& r : ranges) nt += r.count;
  std::vector<int32_t> in(static_cast<size_t>(nb * nt)), tg(static_cast<size_t>(nb * nt));
  int64_t row = 0;
  for (const auto& r : ranges) {
    ctx_.data.fill(step, b0, nb, r.start, r.count, in.data() + row * nb, tg.data() + row * nb);
    row += r.count;
  }
  tokens = ctx_.backend.alloc(DType::i32, nb * nt);
  targets = ctx_.backend.alloc(DType::i32, nb * nt);
  ctx_.backend.copy_from_host(tokens.view(), in.data(), DType::i32);
  ctx_.backend.copy_from_host(targets.view(), tg.data(), DType::i32);
}

}  // namespace lss
