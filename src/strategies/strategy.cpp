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

std::pair<int64_t, int64_t> Strategy::bucket_range(const ParamStore& store, const std::string& key) const {
  int64_t begin = -1, end = -1, numel = 0;
  for (const auto& e : store.entries()) {
    if (!e.spec.seq_reduced || bucket_key(e.spec.name) != key || e.spec.local_numel() == 0) continue;
    begin = begin < 0 ? e.offset : std::min(begin, e.offset);
    end = std::max(end, e.offset + e.spec.local_numel());
    numel += e.spec.local_numel();
  }
  if (begin < 0) return {0, 0};
  // The store lays parameters out in model order, so a bucket is one contiguous range.
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

void Strategy::add_gradient_bounds(BoundModel& m, const ParamStore& store, double block_backward_flops) const {
  const int64_t es_grad = static_cast<int64_t>(dtype_size(master_dtype(ctx_.cfg.dtype)));
  const double numel = static_cast<double>(std::max<int64_t>(1, store.numel()));
  const auto [b0, e0] = bucket_range(store, "0");
  const auto [be, ee] = bucket_range(store, "embed");
  if (ctx_.grid.P > 1)
    for (const auto& key : bucket_keys()) {
      const auto [b, e] = bucket_range(store, key);
      if (e <= b) continue;
      BoundModel::Comm c{"gradient all-reduce, bucket " + key, "sp", CollKind::all_reduce, (e - b) * es_grad, 1};
      if (key != "0" && key != "embed") {
        // A block's backward is still to run beside it.
        c.hidden_by_flops = block_backward_flops;
      } else if (buckets_left_to_optimizer()) {
        // optimizer_step steps every parameter outside layer 0's and the embeddings' buckets
        // while layer 0's travels, then layer 0's while the embeddings' does (the communication
        // stream runs them one after the other).
        c.hidden_by_optimizer_share = key == "0" ? (numel - static_cast<double>((e0 - b0) + (ee - be))) / numel
                                                 : static_cast<double>(e0 - b0) / numel;
      }
      m.comm.push_back(c);
    }
  if (ctx_.grid.R > 1)
    m.comm.push_back({"gradient all-reduce, data group", "dp", CollKind::all_reduce, store.numel() * es_grad, 1, 0.0});
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
  const auto [b, e] = bucket_range(store, key);
  if (e <= b) return;
  CommHandle h = ctx_.grid.seq->start_all_reduce(store.all_grads().slice(b, e - b));
  wait_unless_overlap(*ctx_.grid.seq, h);
  buckets_in_flight_.push_back({h, b, e});
}

Strategy::PendingCollective Strategy::start_seq_all_gather(View local) {
  PendingCollective g{ctx_.backend.alloc(local.dtype, ctx_.grid.P * local.numel), {}};
  g.handle = ctx_.grid.seq->start_all_gather(local, g.out.view());
  wait_unless_overlap(*ctx_.grid.seq, g.handle);
  return g;
}

Strategy::PendingCollective Strategy::start_seq_reduce_scatter(View full) {
  PendingCollective r{ctx_.backend.alloc(full.dtype, full.numel / ctx_.grid.P), {}};
  r.handle = ctx_.grid.seq->start_reduce_scatter(full, r.out.view());
  wait_unless_overlap(*ctx_.grid.seq, r.handle);
  return r;
}

Buffer Strategy::finish(PendingCollective& p) {
  ctx_.grid.seq->wait(p.handle);
  return std::move(p.out);
}

void Strategy::head_gradients_ready(ParamStore& store) { start_bucket(store, "head"); }

void Strategy::layer_gradients_ready(ParamStore& store, int64_t l) { start_bucket(store, std::to_string(l)); }

void Strategy::reduce_gradients(ParamStore& store) {
  start_bucket(store, "embed");
  if (buckets_left_to_optimizer()) return;
  finish_gradients();
  ctx_.grid.data->all_reduce(store.all_grads());
}

void Strategy::finish_gradients() {
  for (Bucket& b : buckets_in_flight_) ctx_.grid.seq->wait(b.handle);
  buckets_in_flight_.clear();
}

void Strategy::optimizer_step(const OptimizerConfig& opt, int64_t step) {
  ParamStore& store = params();
  std::vector<Bucket> buckets = std::move(buckets_in_flight_);
  buckets_in_flight_.clear();
  // The flat gradient's ranges outside every bucket in flight (buckets do not overlap).
  std::vector<std::pair<int64_t, int64_t>> ready;
  std::vector<std::pair<int64_t, int64_t>> in_flight;
  for (const Bucket& b : buckets) in_flight.emplace_back(b.begin, b.end);
  std::sort(in_flight.begin(), in_flight.end());
  int64_t at = 0;
  for (const auto& [b, e] : in_flight) {
    if (b > at) ready.emplace_back(at, b);
    at = std::max(at, e);
  }
  if (store.numel() > at) ready.emplace_back(at, store.numel());
  for (const auto& [b, e] : ready) store.adamw_step(opt, step, b, e);
  for (Bucket& b : buckets) {
    ctx_.grid.seq->wait(b.handle);
    store.adamw_step(opt, step, b.begin, b.end);
  }
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
