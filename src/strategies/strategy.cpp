#include "strategies/strategy.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace lss {

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
// The bucket a parameter's gradient belongs to: its layer ("h.<l>."), the embeddings, or the head
// (final LayerNorm, LM head), in the order backward finishes them: head, layers L-1..0, embed.
std::string bucket_key(const std::string& name) {
  if (name.rfind("h.", 0) == 0) return name.substr(2, name.find('.', 2) - 2);
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
  for (int64_t l = ctx_.cfg.L - 1; l >= 0; --l) keys.push_back(std::to_string(l));
  keys.push_back("embed");
  return keys;
}

int64_t Strategy::gradient_buckets(const ParamStore& store) const {
  int64_t n = 0;
  for (const auto& k : bucket_keys()) {
    const auto [b, e] = bucket_range(store, k);
    if (e > b) ++n;
  }
  return n;
}

int64_t Strategy::data_gradient_calls(const ParamStore& store) const {
  int64_t n = 0;
  for (const auto& k : bucket_keys())
    for (bool seq_reduced : {true, false}) {
      const auto [b, e] = bucket_range(store, k, seq_reduced);
      if (e > b) ++n;
    }
  return n;
}

void Strategy::add_gradient_bounds(BoundModel& m, const ParamStore& store, double block_backward_flops) const {
  const int64_t es_grad = static_cast<int64_t>(dtype_size(master_dtype(ctx_.cfg.dtype)));
  const bool replicas = ctx_.grid.R > 1;
  const std::vector<std::string> keys = bucket_keys();  // head, L-1 .. 0, embed
  const size_t last_layer = keys.size() - 2;           // the index of layer 0's bucket
  // The share of the parameters that optimizer_step steps as the buckets of keys [from, to): with
  // one replica only their sequence-reduced ranges, the rest being ready at once (`ready`, which
  // steps before every bucket).
  const double numel = static_cast<double>(std::max<int64_t>(1, store.numel()));
  auto share = [&](size_t from, size_t to) {
    int64_t n = 0;
    for (size_t i = from; i < to; ++i)
      for (bool seq_reduced : {true, false}) {
        if (!seq_reduced && !replicas) continue;
        const auto [b, e] = bucket_range(store, keys[i], seq_reduced);
        n += e - b;
      }
    return static_cast<double>(n) / numel;
  };
  const double ready = replicas ? 0.0 : static_cast<double>(store.numel() - store.seq_reduced_numel()) / numel;
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string& key = keys[i];
    if (ctx_.grid.P > 1) {
      const auto [b, e] = bucket_range(store, key);
      if (e > b) {
        BoundModel::Comm c{"gradient all-reduce, bucket " + key, "sp", CollKind::all_reduce, (e - b) * es_grad, 1};
        if (i < last_layer) {
          c.hidden_by_flops = block_backward_flops;  // the next block's backward
        } else if (i == last_layer) {
          // Beside the AdamW of every bucket before it; with replicas, of the one before it
          // (the communication stream first runs that bucket's data-group sums).
          c.hidden_by_optimizer_share = replicas ? share(i - 1, i) : ready + share(0, i);
        } else if (!replicas) {
          c.hidden_by_optimizer_share = share(last_layer, last_layer + 1);  // beside layer 0's AdamW
        }
        m.comm.push_back(c);
      }
    }
    if (!replicas) continue;
    for (bool seq_reduced : {true, false}) {
      const auto [b, e] = bucket_range(store, key, seq_reduced);
      if (e <= b) continue;
      BoundModel::Comm c{std::string("gradient all-reduce (data group), bucket ") + key +
                             (seq_reduced ? ", sequence-reduced" : ", the rest"),
                         "dp", CollKind::all_reduce, (e - b) * es_grad, 1};
      // Started when the next layer's bucket is ready: the backward of the block after that runs
      // beside it; the one started at layer 0's readiness runs beside the optimizer's steps of
      // the buckets before it; layer 0's starts in the optimizer step with nothing beside it,
      // the embeddings' beside layer 0's AdamW.
      if (i + 2 <= last_layer) c.hidden_by_flops = block_backward_flops;
      else if (i + 1 == last_layer) c.hidden_by_optimizer_share = share(0, i);
      else if (i == last_layer + 1) c.hidden_by_optimizer_share = share(last_layer, last_layer + 1);
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

void Strategy::start_bucket(ParamStore& store, const std::string& key) {
  Bucket bucket;
  const auto [b, e] = bucket_range(store, key);
  if (e > b) {
    bucket.seq = ctx_.grid.seq->start_all_reduce(store.all_grads().slice(b, e - b));
    wait_unless_overlap(*ctx_.grid.seq, bucket.seq);
    bucket.ranges.emplace_back(b, e);
  }
  if (ctx_.grid.R > 1) {
    const auto [rb, re] = bucket_range(store, key, false);
    if (re > rb) bucket.ranges.emplace_back(rb, re);
  }
  if (bucket.ranges.empty()) return;
  buckets_in_flight_.push_back(bucket);
  if (!ctx_.opts.overlap) start_data(store, buckets_in_flight_.back());
}

void Strategy::start_data(ParamStore& store, Bucket& b) {
  if (b.data_started) return;
  b.data_started = true;
  if (ctx_.grid.R == 1) return;
  ctx_.grid.seq->wait(b.seq);
  for (const auto& [begin, end] : b.ranges) {
    b.data.push_back(ctx_.grid.data->start_all_reduce(store.all_grads().slice(begin, end - begin)));
    wait_unless_overlap(*ctx_.grid.data, b.data.back());
  }
}

Strategy::PendingCollective Strategy::start_seq_all_gather(View local) {
  PendingCollective g{ctx_.backend.alloc_symmetric(local.dtype, ctx_.grid.P * local.numel), {}};
  g.handle = start_seq_all_gather_into(local, g.out.view());
  return g;
}

Strategy::PendingCollective Strategy::start_seq_reduce_scatter(View full) {
  PendingCollective r{ctx_.backend.alloc(full.dtype, full.numel / ctx_.grid.P), {}};
  r.handle = start_seq_reduce_scatter_into(full, r.out.view());
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

void Strategy::head_gradients_ready(ParamStore& store) { start_bucket(store, "head"); }

void Strategy::layer_gradients_ready(ParamStore& store, int64_t l) {
  // The buckets before this one have had a block's backward to finish their sequence-group sums:
  // their data-group sums start now, behind them on the communication stream.
  for (Bucket& b : buckets_in_flight_) start_data(store, b);
  start_bucket(store, std::to_string(l));
}

void Strategy::reduce_gradients(ParamStore& store) {
  start_bucket(store, "embed");
  if (!ctx_.opts.overlap) finish_gradients();
}

void Strategy::wait_bucket(Bucket& b) {
  ctx_.grid.seq->wait(b.seq);
  for (CommHandle& h : b.data) ctx_.grid.data->wait(h);
}

void Strategy::finish_gradients() {
  ParamStore& store = params();
  for (Bucket& b : buckets_in_flight_) start_data(store, b);
  for (Bucket& b : buckets_in_flight_) wait_bucket(b);
  buckets_in_flight_.clear();
}

void Strategy::optimizer_step(const OptimizerConfig& opt, int64_t step) {
  ParamStore& store = params();
  std::vector<Bucket> buckets = std::move(buckets_in_flight_);
  buckets_in_flight_.clear();
  // The flat gradient's ranges outside every bucket in flight (their ranges do not overlap).
  std::vector<std::pair<int64_t, int64_t>> in_flight, ready;
  for (const Bucket& b : buckets) in_flight.insert(in_flight.end(), b.ranges.begin(), b.ranges.end());
  std::sort(in_flight.begin(), in_flight.end());
  int64_t at = 0;
  for (const auto& [b, e] : in_flight) {
    if (b > at) ready.emplace_back(at, b);
    at = std::max(at, e);
  }
  if (store.numel() > at) ready.emplace_back(at, store.numel());
  for (const auto& [b, e] : ready) store.adamw_step(opt, step, b, e);
  // The buckets whose sums are all under way first, each after its waits; then the last ones'
  // data-group sums start (after their sequence-group sums), and they step as those finish.
  auto step_bucket = [&](Bucket& b) {
    wait_bucket(b);
    for (const auto& [begin, end] : b.ranges) store.adamw_step(opt, step, begin, end);
  };
  for (Bucket& b : buckets)
    if (b.data_started || ctx_.grid.R == 1) step_bucket(b);
  std::vector<Bucket*> last;
  for (Bucket& b : buckets)
    if (!b.data_started && ctx_.grid.R > 1) last.push_back(&b);
  for (Bucket* b : last) start_data(store, *b);
  for (Bucket* b : last) step_bucket(*b);
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
