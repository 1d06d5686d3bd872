#include "app/bound.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "app/metrics.h"
#include "comm/mpi_util.h"
#include "core/check.h"
#include "core/init.h"
#include "model/layers.h"

namespace lss {

namespace {

// Most back-to-back runs of one op before its sustained timing: a kernel of a few microseconds
// would otherwise take millions of launches to fill heat_s.
constexpr int64_t kMaxHeatRuns = 100000;

// Median seconds of `op` over 3 runs after one warm-up, by the backend's markers. With heat_s > 0
// (sustained) the op then runs back to back for at least heat_s before the timed runs, the count
// from the warm-up's time (at most kMaxHeatRuns), with nothing waiting on the host in between, so
// that the timed runs find the card at its power limit as the whole step holds it. The warm-up is
// timed at the clocks of a short burst, above the capped ones: the heat lasts at least heat_s.
template <class Op>
double time_median(Backend& be, double heat_s, Op op) {
  if (heat_s > 0) {
    const auto w0 = be.mark();
    op();
    const auto w1 = be.mark();
    const double warm = be.seconds_between(w0, w1);  // waits for the warm-up, before the heat
    const int64_t runs = warm > 0 ? static_cast<int64_t>(std::min<double>(kMaxHeatRuns, std::ceil(heat_s / warm)))
                                  : kMaxHeatRuns;
    for (int64_t i = 0; i < runs; ++i) op();
  } else {
    op();
  }
  std::vector<double> t;
  for (int i = 0; i < 3; ++i) {
    const auto m0 = be.mark();
    op();
    const auto m1 = be.mark();
    t.push_back(be.seconds_between(m0, m1));
  }
  return percentile(t, 50);
}

// n values uniform in [-0.5, 0.5): operands as the step has them. Zeros would let the tensor cores
// draw less power and clock higher (the GEMM-rate measurement uses random operands for the same
// reason), and the bound would then undercut the kernels it prices. One block is made on the host,
// the rest copied from it on the device.
Buffer random_operand(Backend& be, DType dtype, int64_t n) {
  Buffer b = be.alloc(dtype, n);
  const int64_t block = std::min<int64_t>(n, int64_t{1} << 20);
  std::vector<double> values(static_cast<size_t>(block));
  const uint64_t key = stream_key(4321, "bound-operand");
  for (int64_t i = 0; i < block; ++i) values[static_cast<size_t>(i)] = uniform01(key, static_cast<uint64_t>(i)) - 0.5;
  if (block > 0) be.copy_from_host(b.slice(0, block), values.data(), DType::f64);
  for (int64_t filled = block; filled < n;) {
    const int64_t count = std::min(filled, n - filled);
    be.copy(b.slice(filled, count), b.slice(0, count));
    filled += count;
  }
  return b;
}

// Forward and backward seconds of one attention call of `shape` on fresh, contiguous operands.
std::pair<double, double> attention_seconds(Backend& be, double heat_s, AttentionArgs a) {
  const int64_t W = a.H * a.D;
  Buffer q = random_operand(be, a.dtype, a.B * a.Tq * W), out = be.alloc(a.dtype, a.B * a.Tq * W);
  Buffer dout = random_operand(be, a.dtype, a.B * a.Tq * W), dq = be.alloc(a.dtype, a.B * a.Tq * W);
  Buffer k = random_operand(be, a.dtype, a.B * a.Tk * W), v = random_operand(be, a.dtype, a.B * a.Tk * W);
  Buffer dk = be.alloc(a.dtype, a.B * a.Tk * W), dv = be.alloc(a.dtype, a.B * a.Tk * W);
  Buffer lse = be.alloc(stat_dtype(a.dtype), a.B * a.H * a.Tq);
  // (T, B, W) row-major, as the strategies lay activations out.
  auto op = [&](Buffer& b) { return AttnOperand{b.ptr(), W, a.B * W}; };
  a.q = op(q), a.k = op(k), a.v = op(v), a.out = op(out), a.lse = lse.ptr();
  a.dout = op(dout), a.dq = op(dq), a.dk = op(dk), a.dv = op(dv);
  const double fwd = time_median(be, heat_s, [&] { be.attention_forward(a); });
  const double bwd = time_median(be, heat_s, [&] { be.attention_backward(a); });
  return {fwd, bwd};
}

// Forward and backward (data and weight gradients, bias) seconds of one linear layer, fresh
// operands, with the step's fusions (residual, GELU and its gradient in the GEMM's epilogue); and
// with forward_parts > 1 the forward run as that many GEMMs on consecutive row ranges.
struct LinearSeconds {
  double forward = 0, backward = 0, forward_in_parts = 0;
};
LinearSeconds linear_seconds(Backend& be, double heat_s, DType dtype, const BoundModel::Linear& l) {
  const DType gd = master_dtype(dtype);
  Buffer x = random_operand(be, dtype, l.rows * l.in), w = random_operand(be, dtype, l.out * l.in);
  Buffer b = random_operand(be, dtype, l.out), y = be.alloc(dtype, l.rows * l.out);
  Buffer dy = random_operand(be, dtype, l.rows * l.out), dx = be.alloc(dtype, l.rows * l.in);
  Buffer dw = be.alloc_zeroed(gd, l.out * l.in), db = be.alloc_zeroed(gd, l.out);
  Buffer residual = random_operand(be, dtype, l.residual ? l.rows * l.out : 0);  // (rows, out)
  Buffer pre = be.alloc(dtype, l.gelu_out ? l.rows * l.out : 0);                 // (rows, out)
  Buffer x_pre = random_operand(be, dtype, l.gelu_in ? l.rows * l.in : 0);       // (rows, in)
  // Rows [r0, r0 + n) of the forward.
  auto forward = [&](int64_t r0, int64_t n) {
    const View xs = x.view().slice(r0 * l.in, n * l.in), ys = y.view().slice(r0 * l.out, n * l.out);
    if (l.gelu_out)
      linear_gelu_forward(be, ys, pre.view().slice(r0 * l.out, n * l.out), xs, w.view(), b.view(), n, l.in, l.out);
    else
      linear_forward(be, ys, xs, w.view(), b.view(), n, l.in, l.out,
                     l.residual ? residual.view().slice(r0 * l.out, n * l.out) : View{});
  };
  LinearSeconds t;
  t.forward = time_median(be, heat_s, [&] { forward(0, l.rows); });
  t.backward = time_median(be, heat_s, [&] {
    linear_backward(be, dx.view(), 0.0, dw.view(), db.view(), dy.view(), x.view(), w.view(), l.rows, l.in, l.out,
                    x_pre.view());
  });
  t.forward_in_parts = t.forward;
  if (l.forward_parts > 1) {
    t.forward_in_parts = time_median(be, heat_s, [&] {
      for (int64_t part = 0, r0 = 0; part < l.forward_parts; ++part) {
        const int64_t n = (l.rows - r0) / (l.forward_parts - part);
        forward(r0, n);
        r0 += n;
      }
    });
  }
  return t;
}

// Most parameters of one timed AdamW call: the optimizer is memory-bound, its time proportional
// to the parameters it steps, so a larger store is priced by scaling this call's time.
constexpr int64_t kMaxAdamwChunk = int64_t{1} << 26;

// Seconds of the optimizer step of `numel` parameters (AdamW with a compute-dtype copy, as
// ParamStore steps them) on fresh operands: timed alone, because the step's optimizer phase also
// holds the waits for the gradient all-reduces it overlaps.
double optimizer_seconds(Backend& be, double heat_s, DType dtype, const OptimizerConfig& opt, int64_t numel) {
  const int64_t n = std::min(numel, kMaxAdamwChunk);
  if (n <= 0) return 0.0;
  const DType md = master_dtype(dtype);
  Buffer param = random_operand(be, md, n), grad = random_operand(be, md, n);
  Buffer m = be.alloc_zeroed(md, n), v = be.alloc_zeroed(md, n);
  Buffer copy = be.alloc(dtype, md != dtype ? n : 0);  // (n) the compute-dtype copy
  const Backend::AdamW hp{opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay, 1, copy ? copy.view() : View{}};
  const double t = time_median(be, heat_s, [&] { be.adamw(param.view(), grad.view(), m.view(), v.view(), hp); });
  return t * static_cast<double>(numel) / static_cast<double>(n);
}

// Seconds of a conversion of `numel` elements from dtype `from` into `to`, on fresh operands;
// memory-bound like the optimizer, so priced from at most kMaxAdamwChunk elements.
double cast_seconds(Backend& be, double heat_s, DType to, DType from, int64_t numel) {
  const int64_t n = std::min(numel, kMaxAdamwChunk);
  Buffer src = random_operand(be, from, n), dst = be.alloc(to, n);
  const double t = time_median(be, heat_s, [&] { be.copy(dst.view(), src.view()); });
  return t * static_cast<double>(numel) / static_cast<double>(n);
}

// Seconds of one of a strategy's own passes, on fresh operands.
double pass_seconds(Backend& be, double heat_s, DType dtype, const BoundModel::Pass& p) {
  using Kind = BoundModel::Pass::Kind;
  switch (p.kind) {
    case Kind::copy: {
      Buffer src = random_operand(be, dtype, p.numel), dst = be.alloc(dtype, p.numel);
      return time_median(be, heat_s, [&] { be.copy(dst.view(), src.view()); });
    }
    case Kind::add: {
      Buffer a = random_operand(be, dtype, p.numel), b = random_operand(be, dtype, p.numel);
      return time_median(be, heat_s, [&] { be.add(a.view(), a.view(), b.view()); });
    }
    case Kind::fill_zero: {
      Buffer a = be.alloc(dtype, p.numel);
      return time_median(be, heat_s, [&] { be.fill_zero(a.view()); });
    }
    case Kind::attention_merge: {
      AttentionArgs into = p.merge, part = p.merge;
      const int64_t W = into.H * into.D, rows = into.B * into.Tq;
      Buffer out = random_operand(be, dtype, rows * W), part_out = random_operand(be, dtype, rows * W);  // (Tq, B, W)
      Buffer lse = random_operand(be, stat_dtype(dtype), into.B * into.H * into.Tq);                     // (B, H, Tq)
      Buffer part_lse = random_operand(be, stat_dtype(dtype), into.B * into.H * into.Tq);
      into.out = {out.ptr(), W, into.B * W};
      into.lse = lse.ptr();
      part.out = {part_out.ptr(), W, into.B * W};
      part.lse = part_lse.ptr();
      const AttentionMergeArgs a = attention_merge_args(into, part);
      return time_median(be, heat_s, [&] { be.attention_merge(a); });
    }
  }
  return 0;
}

// Seconds of one call of each elementwise kernel of a step on n rows of width C (the same for
// every strategy: the LayerNorm and residual regions hold T*B/world rows), on the run's own
// tokens (the embedding's backward groups rows by token: its cost depends on their spread).
struct ElementwiseTimes {
  double ln_fwd = 0, ln_bwd = 0, add = 0, cross_entropy = 0, embedding_fwd = 0, embedding_bwd = 0;
};
ElementwiseTimes elementwise_seconds(Backend& be, double heat_s, const ModelConfig& m, const DataSource& data,
                                     int64_t n) {
  const DType dt = m.dtype, st = stat_dtype(dt), gd = master_dtype(dt);
  const int64_t C = m.C, V = m.V;
  Buffer x = random_operand(be, dt, n * C), y = be.alloc(dt, n * C), dx = random_operand(be, dt, n * C);
  Buffer mean = be.alloc_zeroed(st, n), rstd = be.alloc_zeroed(st, n);
  Buffer w = be.alloc_zeroed(dt, C), b = be.alloc_zeroed(dt, C), dw = be.alloc_zeroed(gd, C), dbias = be.alloc_zeroed(gd, C);
  ElementwiseTimes t;
  t.ln_fwd = time_median(be, heat_s, [&] { be.layernorm_forward(y.view(), mean.view(), rstd.view(), x.view(), w.view(), b.view(), n, C, m.ln_eps); });
  t.ln_bwd = time_median(be, heat_s, [&] {
    be.layernorm_backward(dx.view(), dw.view(), dbias.view(), y.view(), x.view(), mean.view(), rstd.view(), w.view(), n, C);
  });
  t.add = time_median(be, heat_s, [&] { be.add(y.view(), x.view(), dx.view()); });
  // Step 0's first n positions of the batch's sequences, as (t, b) rows.
  const int64_t nt = (n + m.B - 1) / m.B;
  std::vector<int32_t> inputs(static_cast<size_t>(nt * m.B)), targets(inputs.size());
  data.fill(0, 0, m.B, 0, nt, inputs.data(), targets.data());
  Buffer tokens = be.alloc(DType::i32, n);  // (n): the targets for the loss, then the inputs
  Buffer logits = random_operand(be, dt, n * V);
  Buffer wte = be.alloc_zeroed(dt, V * C), wpe = be.alloc_zeroed(dt, n * C);
  Buffer dwte = be.alloc_zeroed(gd, V * C), dwpe = be.alloc_zeroed(gd, n * C);
  Buffer loss_sum = be.alloc(DType::f64, 1);  // (1)
  be.copy_from_host(tokens.view(), targets.data(), DType::i32);
  t.cross_entropy = time_median(be, heat_s, [&] { be.cross_entropy_fused(logits.view(), tokens.view(), loss_sum.view(), n, V, 1.0); });
  be.copy_from_host(tokens.view(), inputs.data(), DType::i32);
  t.embedding_fwd = time_median(be, heat_s, [&] { be.embedding_forward(y.view(), tokens.view(), wte.view(), wpe.view(), n, 1, C); });
  t.embedding_bwd = time_median(be, heat_s, [&] { be.embedding_backward(dwte.view(), dwpe.view(), x.view(), tokens.view(), n, 1, C); });
  return t;
}

Communicator& group(Session& s, const std::string& name) {
  Grid& g = s.grid();
  if (name == "sp") return *g.seq;
  if (name == "dp") return *g.data;
  return *g.world_comm;
}

// A collective's operands: the gathered (or scattered, or reduced) buffer and one rank's part.
// A placed all-gather or reduce-scatter (BoundModel::Comm::placed not empty) also has the
// strategy's pieces. `dtype`: what it moves (gradients or activations).
struct CollectiveOperands {
  Buffer big, part;
  std::vector<PlacedPiece> pieces;
};
CollectiveOperands collective_operands(Backend& be, const Communicator& c, const BoundModel::Comm& entry, DType dtype) {
  const CollKind kind = entry.kind;
  const int64_t n = entry.bytes / static_cast<int64_t>(dtype_size(dtype));
  // A gather's operands come from where the strategies take theirs (symmetric memory: NCCL's
  // windows with --copy-engine-gathers or --symmetric-collectives, registered blocks with
  // --registered-gathers), and with --symmetric-collectives a rank-major reduce-scatter's too
  // (Strategy::alloc_seq_scatter; a placed one's stay plain), so that it runs as theirs do; an
  // entry on plain memory (the distributed optimizer's) stays plain.
  const bool is_placed = !entry.placed.empty();
  LSS_CHECK(!is_placed || kind == CollKind::all_gather || kind == CollKind::reduce_scatter,
            std::string("analytic bound: a placed ") + coll_kind_name(kind));
  auto operand = [&](int64_t count) {
    const bool symmetric =
        !entry.plain_memory &&
        (kind == CollKind::all_gather ||
         (kind == CollKind::reduce_scatter && !is_placed && c.scatters_in_symmetric_memory()));
    Buffer b = symmetric ? be.alloc_symmetric(dtype, count) : be.alloc(dtype, count);
    be.fill_zero(b.view());
    return b;
  };
  CollectiveOperands o;
  o.big = operand(n);
  o.part = operand(std::max<int64_t>(n / c.size(), 1));
  if (is_placed) o.pieces = entry.placed;
  return o;
}

// Seconds of one blocking call of the collective `entry` (its bytes in communicator.h's
// convention) on its group.
double collective_seconds(Session& s, const BoundModel::Comm& entry, DType dtype) {
  Backend& be = s.backend();
  Communicator& c = group(s, entry.group);
  const CollKind kind = entry.kind;
  CollectiveOperands o = collective_operands(be, c, entry, dtype);
  if (!o.pieces.empty() && kind == CollKind::all_gather)
    return time_median(be, 0.0, [&] { c.all_gather_placed(o.part.view(), o.big.view(), o.pieces); });
  if (!o.pieces.empty())
    return time_median(be, 0.0, [&] { c.reduce_scatter_placed(o.big.view(), o.part.view(), o.pieces); });
  switch (kind) {
    case CollKind::all_gather: return time_median(be, 0.0, [&] { c.all_gather(o.part.view(), o.big.view()); });
    case CollKind::reduce_scatter: return time_median(be, 0.0, [&] { c.reduce_scatter(o.big.view(), o.part.view()); });
    case CollKind::all_reduce: return time_median(be, 0.0, [&] { c.all_reduce(o.big.view()); });
    default: LSS_CHECK(false, std::string("analytic bound: no rate for ") + coll_kind_name(kind));
  }
  return 0;
}

CommHandle start_collective(Communicator& c, CollKind kind, CollectiveOperands& o) {
  if (!o.pieces.empty() && kind == CollKind::all_gather)
    return c.start_all_gather_placed(o.part.view(), o.big.view(), o.pieces);
  if (!o.pieces.empty()) return c.start_reduce_scatter_placed(o.big.view(), o.part.view(), o.pieces);
  switch (kind) {
    case CollKind::all_gather: return c.start_all_gather(o.part.view(), o.big.view());
    case CollKind::reduce_scatter: return c.start_reduce_scatter(o.big.view(), o.part.view());
    case CollKind::all_reduce: return c.start_all_reduce(o.big.view());
    default: LSS_CHECK(false, std::string("analytic bound: no overlap timing for ") + coll_kind_name(kind));
  }
  return {};
}

// One collective beside the GEMMs the schedule runs with it, measured: `gemms` forward GEMMs of
// `lin` (the layer's largest linear layer, standing in for the GEMM FLOPs beside the collective)
// alone, and the collective started on the communication lane, the same GEMMs on the compute
// stream, then the wait. together - gemms_alone is what the collective costs the step where it
// overlaps: its unhidden part, plus what the GEMMs lose to it (SMs, memory bandwidth, power).
struct OverlapSeconds {
  double gemms_alone = 0, together = 0;
};
OverlapSeconds overlap_seconds(Session& s, const BoundModel::Comm& entry, DType dtype, DType compute,
                               const BoundModel::Linear& lin, int64_t gemms) {
  Backend& be = s.backend();
  Communicator& c = group(s, entry.group);
  const CollKind kind = entry.kind;
  CollectiveOperands o = collective_operands(be, c, entry, dtype);
  Buffer x = random_operand(be, compute, lin.rows * lin.in), w = random_operand(be, compute, lin.out * lin.in);
  Buffer b = random_operand(be, compute, lin.out), y = be.alloc(compute, lin.rows * lin.out);
  auto run_gemms = [&] {
    for (int64_t i = 0; i < gemms; ++i) linear_forward(be, y.view(), x.view(), w.view(), b.view(), lin.rows, lin.in, lin.out);
  };
  OverlapSeconds t;
  t.gemms_alone = time_median(be, 0.0, run_gemms);
  t.together = time_median(be, 0.0, [&] {
    CommHandle h = start_collective(c, kind, o);
    run_gemms();
    c.wait(h);
  });
  return t;
}

// The compute parts of this rank's bound: linear layers, attention, elementwise kernels, the
// strategy's passes and the optimizer step, each kernel timed by time_median with `heat_s` (0: in
// a short burst).
struct ComputeParts {
  double gemm_s = 0, attention_s = 0, elementwise_s = 0, passes_s = 0, optimizer_s = 0;
  // The share of the optimizer's elements that backward steps beside its compute
  // (--optimizer-in-backward): hidden there, as a collective is behind the GEMMs beside it.
  double optimizer_hidden_share = 0;
  nlohmann::json linears = nlohmann::json::array(), elementwise_kernels, passes = nlohmann::json::array();
  double optimizer_exposed_s() const { return optimizer_s * (1 - optimizer_hidden_share); }
  double total() const { return gemm_s + attention_s + elementwise_s + passes_s + optimizer_exposed_s(); }
  // Milliseconds of each part and per kernel, as bound.rank0 and bound.sustained.rank0 have them.
  nlohmann::json to_json(double gemm_flops) const {
    return {{"gemm_ms", gemm_s * 1e3},
            {"gemm_tflops_at_step_shapes", gemm_flops / gemm_s / 1e12},
            {"elementwise_ms", elementwise_s * 1e3},
            {"elementwise_kernels", elementwise_kernels},
            {"linears", linears},
            {"passes_ms", passes_s * 1e3},
            {"passes", passes},
            {"attention_ms", attention_s * 1e3},
            {"optimizer_ms", optimizer_s * 1e3},
            {"optimizer_hidden_share", optimizer_hidden_share},
            {"optimizer_exposed_ms", optimizer_exposed_s() * 1e3}};
  }
};

ComputeParts compute_parts(const BoundRank& rank, const RunConfig& rc, const BoundModel& model, double heat_s) {
  const ModelConfig& m = rc.model;
  Backend& be = rank.backend;
  const double L = static_cast<double>(m.L);
  const int recompute = rc.strategy_opts.recompute ? 1 : 0;
  const int64_t rows = m.T * m.B / rank.world;  // LayerNorm / residual rows of every strategy
  // A kernel's seconds, from the cache where a rank before this one timed the same shape.
  auto cached = [&](const std::string& key, auto time) {
    using Seconds = decltype(time());
    if (rank.cache == nullptr) return time();
    const std::string full_key = fmt::format("{} heat {}", key, heat_s);
    auto it = rank.cache->find(full_key);
    if (it == rank.cache->end()) it = rank.cache->emplace(full_key, std::any(time())).first;
    return std::any_cast<Seconds>(it->second);
  };
  ComputeParts c;
  for (const auto& lin : model.layer_linears) {
    const auto [fwd, bwd, parts] = cached(fmt::format("linear {} {} {} {} {:d}{:d}{:d} {}", dtype_name(m.dtype), lin.rows, lin.in, lin.out,
                                                      lin.residual, lin.gelu_out, lin.gelu_in, lin.forward_parts),
                                          [&] {
                                            const LinearSeconds l = linear_seconds(be, heat_s, m.dtype, lin);
                                            return std::array<double, 3>{l.forward, l.backward, l.forward_in_parts};
                                          });
    const LinearSeconds t{fwd, bwd, parts};
    // The step's forward in its parts; the recomputed forward (one block at a time) whole.
    c.gemm_s += L * (t.forward_in_parts + recompute * t.forward + t.backward);
    nlohmann::json j = {{"rows", lin.rows}, {"in", lin.in}, {"out", lin.out}, {"residual", lin.residual},
                        {"gelu_out", lin.gelu_out}, {"gelu_in", lin.gelu_in}, {"forward_ms", t.forward * 1e3},
                        {"backward_ms", t.backward * 1e3}};
    if (lin.forward_parts > 1) {
      j["forward_parts"] = lin.forward_parts;
      j["forward_in_parts_ms"] = t.forward_in_parts * 1e3;
    }
    c.linears.push_back(j);
  }
  {
    const LinearSeconds t = linear_seconds(be, heat_s, m.dtype, {rows, m.C, m.V});  // LM head (its bias is measured too)
    c.gemm_s += t.forward + t.backward;
  }
  // A block runs LN1 and LN2 (and the strategy's unfused residual adds) forward, LN1 and LN2
  // backward; the head the final LayerNorm both ways, the loss and the embedding both ways.
  // GELU and the other residual adds are inside GEMMs (linear_seconds).
  const ElementwiseTimes ew = cached(fmt::format("elementwise {} {} {} {} {} {}", dtype_name(m.dtype), rows, m.C, m.V, m.B,
                                                 m.ln_eps), [&] {
    return elementwise_seconds(be, heat_s, m, rank.data, rows);
  });
  const double adds = static_cast<double>(model.residual_adds);
  const double ew_fwd = 2 * ew.ln_fwd + adds * ew.add, ew_bwd = 2 * ew.ln_bwd;
  c.elementwise_s = L * ((1 + recompute) * ew_fwd + ew_bwd) + ew.ln_fwd + ew.ln_bwd + ew.cross_entropy +
                    ew.embedding_fwd + ew.embedding_bwd;
  const double calls_ln_fwd = L * (1 + recompute) * 2 + 1, calls_ln_bwd = 2 * L + 1, calls_add = L * (1 + recompute) * adds;
  c.elementwise_kernels = {
      {"layernorm_forward", {{"ms_per_call", ew.ln_fwd * 1e3}, {"calls", calls_ln_fwd}}},
      {"layernorm_backward", {{"ms_per_call", ew.ln_bwd * 1e3}, {"calls", calls_ln_bwd}}},
      {"residual_add", {{"ms_per_call", ew.add * 1e3}, {"calls", calls_add}}},
      {"cross_entropy", {{"ms_per_call", ew.cross_entropy * 1e3}, {"calls", 1}}},
      {"embedding_forward", {{"ms_per_call", ew.embedding_fwd * 1e3}, {"calls", 1}}},
      {"embedding_backward", {{"ms_per_call", ew.embedding_bwd * 1e3}, {"calls", 1}}}};
  for (const auto& p : model.layer_passes) {
    const double t = cached(fmt::format("pass {} {} {} {} {} {} {}", dtype_name(m.dtype), static_cast<int>(p.kind), p.numel,
                                        p.merge.B, p.merge.H, p.merge.D, p.merge.Tq),
                            [&] { return pass_seconds(be, heat_s, m.dtype, p); });
    const double calls = L * ((1 + recompute) * p.forward_calls + p.backward_calls);
    c.passes_s += calls * t;
    c.passes.push_back({{"what", p.what}, {"ms_per_call", t * 1e3}, {"calls", calls}});
  }
  for (const AttentionArgs& a : model.layer_attention) {
    const auto [fwd, bwd] = cached(fmt::format("attention {} {} {} {} {} {} {} {:d} {}", dtype_name(a.dtype), a.B, a.H, a.D,
                                               a.Tq, a.Tk, a.q_offset, a.causal, a.scale),
                                   [&] { return attention_seconds(be, heat_s, a); });
    c.attention_s += L * ((1 + recompute) * fwd + bwd);
  }
  // A narrower --grad-reduce-dtype: the buckets' gradients rounded into the copy the collectives
  // sum, and the sums this rank steps widened back, once per step each.
  Strategy& strategy = rank.strategy;
  const auto [rounded, widened] = strategy.gradient_cast_numel(strategy.params());
  const DType md = master_dtype(m.dtype), wire = gradient_wire_dtype(m, rc.strategy_opts);
  for (const auto& [what, numel, to, from] : {std::tuple{"gradients rounded for their sums", rounded, wire, md},
                                              std::tuple{"sums widened into the gradients", widened, md, wire}}) {
    if (numel == 0) continue;
    const double t = cast_seconds(be, heat_s, to, from, numel);
    c.passes_s += t;
    c.passes.push_back({{"what", what}, {"ms_per_call", t * 1e3}, {"calls", 1}});
  }
  c.optimizer_s = optimizer_seconds(be, heat_s, m.dtype, rc.opt, strategy.optimizer_numel());
  c.optimizer_hidden_share = strategy.optimizer_share_beside_backward(strategy.params());
  return c;
}

}  // namespace

double comm_hidden_seconds(const BoundModel::Comm& c, bool overlap, double gemm_tflops, double optimizer_s) {
  // Under --no-overlap every collective runs where it is needed: nothing beside it.
  if (!overlap) return 0.0;
  return c.hidden_by_flops / (gemm_tflops * 1e12) + c.hidden_by_optimizer_share * optimizer_s;
}

PricedCompute price_compute(const BoundRank& rank, const RunConfig& rc, const BoundModel& model, double heat_s) {
  const ComputeParts c = compute_parts(rank, rc, model, heat_s);
  // Dense GEMM FLOPs per rank (QKV, out-projection, MLP: 24·B·T·C² per layer forward; LM head
  // 2·B·T·C·V), 3× forward for training plus one forward of the blocks with recomputation: for
  // the record (the GEMMs' rate at the step's shapes).
  const FlopCount flops = model_flops(rc.model);
  const double recompute = rc.strategy_opts.recompute ? 1.0 : 0.0;
  const double gemm_flops = ((3.0 + recompute) * flops.blocks_gemm_forward + 3.0 * flops.head_forward) / rank.world;
  nlohmann::json j = c.to_json(gemm_flops);
  j["gemm_flops"] = gemm_flops;
  return {c.total(), c.attention_s, c.optimizer_s, std::move(j)};
}

nlohmann::json bound_model_json(const BoundModel& m) {
  nlohmann::json linears = nlohmann::json::array(), attention = nlohmann::json::array();
  nlohmann::json passes = nlohmann::json::array(), comm = nlohmann::json::array();
  for (const auto& l : m.layer_linears)
    linears.push_back({{"rows", l.rows}, {"in", l.in}, {"out", l.out}, {"residual", l.residual},
                       {"gelu_out", l.gelu_out}, {"gelu_in", l.gelu_in}, {"forward_parts", l.forward_parts}});
  for (const auto& a : m.layer_attention)
    attention.push_back({{"dtype", dtype_name(a.dtype)}, {"B", a.B}, {"H", a.H}, {"D", a.D}, {"Tq", a.Tq}, {"Tk", a.Tk},
                         {"q_offset", a.q_offset}, {"causal", a.causal}, {"scale", a.scale}});
  for (const auto& p : m.layer_passes)
    passes.push_back({{"what", p.what}, {"kind", static_cast<int>(p.kind)}, {"numel", p.numel},
                      {"merge", {p.merge.B, p.merge.H, p.merge.D, p.merge.Tq}}, {"forward_calls", p.forward_calls},
                      {"backward_calls", p.backward_calls}});
  for (const auto& c : m.comm) {
    nlohmann::json placed = nlohmann::json::array();
    for (const auto& pc : c.placed) placed.push_back({pc.rank, pc.src, pc.count, pc.dst});
    comm.push_back({{"what", c.what}, {"group", c.group}, {"kind", coll_kind_name(c.kind)}, {"bytes", c.bytes},
                    {"calls", c.calls}, {"hidden_by_flops", c.hidden_by_flops},
                    {"hidden_by_optimizer_share", c.hidden_by_optimizer_share}, {"gradients", c.gradients},
                    {"placed", placed}, {"plain_memory", c.plain_memory}});
  }
  return {{"layer_linears", linears}, {"residual_adds", m.residual_adds}, {"layer_passes", passes},
          {"layer_attention", attention}, {"comm", comm}};
}

nlohmann::json analytic_bound(Session& session, const RunConfig& rc, double gemm_tflops, double heat_s) {
  const ModelConfig& m = rc.model;
  const Grid& grid = session.grid();
  const BoundModel model = session.strategy().bound_model();
  // Each kernel in a short burst first (as every bound before the sustained one was measured),
  // the collectives, and only then the sustained pass: its heat would lower the clocks of the
  // bursts after it. Each pass allocates its operands kernel by kernel, so the peak is one pass's.
  const BoundRank me{session.backend(), session.data(), session.strategy(), grid.world, nullptr};
  const PricedCompute burst = price_compute(me, rc, model, 0.0);
  nlohmann::json comm = nlohmann::json::array();
  double comm_s = 0, contended_comm_s = 0;
  // (group, kind, bytes, dtype, pieces, plain memory) -> s
  std::map<std::tuple<std::string, int, int64_t, int, std::vector<PlacedPiece>, bool>, double> measured;
  // The contended bound prices each collective that GEMMs hide by running it beside them: the
  // layer's largest linear layer stands in for those GEMMs.
  const BoundModel::Linear* stand_in = nullptr;
  for (const auto& lin : model.layer_linears)
    if (stand_in == nullptr || lin.rows * lin.in * lin.out > stand_in->rows * stand_in->in * stand_in->out) stand_in = &lin;
  // Gradients travel in the master dtype (or --grad-reduce-dtype), activations in the compute dtype.
  const DType gradient_dtype = gradient_wire_dtype(m, rc.strategy_opts);
  for (const auto& c : model.comm) {
    const DType dt = c.gradients || c.kind == CollKind::all_reduce ? gradient_dtype : m.dtype;
    const auto key =
        std::make_tuple(c.group, static_cast<int>(c.kind), c.bytes, static_cast<int>(dt), c.placed, c.plain_memory);
    if (!measured.count(key)) measured[key] = collective_seconds(session, c, dt);
    const double t = measured[key];
    const double beside_optimizer = c.hidden_by_optimizer_share * burst.optimizer_s;
    const double hidden = comm_hidden_seconds(c, rc.strategy_opts.overlap, gemm_tflops, burst.optimizer_s);
    const double exposed = static_cast<double>(c.calls) * std::max(0.0, t - hidden);
    comm_s += exposed;
    nlohmann::json entry = {{"what", c.what}, {"group", c.group}, {"kind", coll_kind_name(c.kind)}, {"bytes", c.bytes},
                            {"calls", c.calls}, {"measured_ms", t * 1e3}, {"hidden_by_ms", hidden * 1e3},
                            {"hidden_by_optimizer_share", c.hidden_by_optimizer_share},
                            {"exposed_ms", exposed * 1e3}, {"plain_memory", c.plain_memory}};
    // This rank's pieces, for the record (lss: two, or one for rank P-1's neighbouring chunks
    // without --local-cross-block).
    if (!c.placed.empty()) {
      const int me = group(session, c.group).rank();
      entry["placed_pieces"] = std::ranges::count_if(c.placed, [me](const PlacedPiece& pc) { return pc.rank == me; });
    }
    double contended = exposed;
    // Every rank has the same entries in the same order (their collectives match), so each
    // rank's overlap timing meets the others' in the collective.
    if (rc.strategy_opts.overlap && c.hidden_by_flops > 0 && c.calls > 0 && stand_in != nullptr) {
      const double stand_in_flops = 2.0 * static_cast<double>(stand_in->rows * stand_in->in * stand_in->out);
      const int64_t gemms = std::max<int64_t>(1, std::llround(c.hidden_by_flops / stand_in_flops));
      const OverlapSeconds o =
          overlap_seconds(session, c, dt, m.dtype, *stand_in, gemms);
      contended = static_cast<double>(c.calls) * std::max(0.0, o.together - o.gemms_alone - beside_optimizer);
      entry["contended"] = {{"gemms", gemms},
                            {"gemm_shape", {stand_in->rows, stand_in->in, stand_in->out}},
                            {"gemms_alone_ms", o.gemms_alone * 1e3},
                            {"together_ms", o.together * 1e3},
                            {"exposed_ms", contended * 1e3}};
    }
    contended_comm_s += contended;
    comm.push_back(entry);
  }
  const bool sustained = heat_s > 0;
  const PricedCompute hot = sustained ? price_compute(me, rc, model, heat_s) : PricedCompute{};
  session.reset_counts();
  // Every rank's bound, attention time and sustained bound: ranks whose attention differs make
  // the faster ones wait at the next collective (load imbalance), which the exposed
  // communication then shows.
  const int world = grid.world;
  constexpr int kFigures = 4;
  const double mine[kFigures] = {burst.total_s + comm_s, burst.attention_s, sustained ? hot.total_s + comm_s : 0.0,
                                 burst.total_s + contended_comm_s};
  std::vector<double> all(kFigures * static_cast<size_t>(world));
  LSS_MPI_CHECK(MPI_Allgather(mine, kFigures, MPI_DOUBLE, all.data(), kFigures, MPI_DOUBLE, MPI_COMM_WORLD));
  std::vector<double> per_rank_ms, per_rank_attention_ms, per_rank_sustained_ms, per_rank_contended_ms;
  double total = 0, total_sustained = 0, total_contended = 0;
  for (int r = 0; r < world; ++r) {
    const double* f = &all[static_cast<size_t>(kFigures * r)];
    per_rank_ms.push_back(f[0] * 1e3);
    per_rank_attention_ms.push_back(f[1] * 1e3);
    per_rank_sustained_ms.push_back(f[2] * 1e3);
    per_rank_contended_ms.push_back(f[3] * 1e3);
    total = std::max(total, f[0]);
    total_sustained = std::max(total_sustained, f[2]);
    total_contended = std::max(total_contended, f[3]);
  }
  nlohmann::json rank0 = burst.record;
  rank0["comm_exposed_ms"] = comm_s * 1e3;
  rank0["comm"] = comm;
  nlohmann::json sustained_json = nullptr;
  if (sustained)
    sustained_json = {{"definition", "the bound with every compute kernel (linear layers, attention, elementwise "
                                     "kernels, passes, the optimizer step) timed after heat_s seconds of running "
                                     "back to back, the card at its power limit as the whole step holds it; the "
                                     "same exposed communication as the bound (bound.rank0); slowest rank"},
                      {"heat_s", heat_s},
                      {"bound_ms", total_sustained * 1e3},
                      {"per_rank_ms", per_rank_sustained_ms},
                      {"rank0", hot.record}};
  return {{"definition", "this rank's linear layers (with the GELU and residual adds their GEMMs fuse), attention "
                         "calls, elementwise kernels (LayerNorm, unfused residual adds, head, loss, embedding on "
                         "the run's tokens) and the strategy's own passes (reorder copies, merges, additions; "
                         "the gradient casts of a narrower --grad-reduce-dtype) each timed alone at the step's "
                         "shapes + the optimizer step (AdamW on the rank's parameters) "
                         "timed alone, less the share backward steps beside its compute (--optimizer-in-backward) + "
                         "each collective timed alone less the GEMM and optimizer time the schedule "
                         "runs beside it; slowest rank"},
          {"bound_ms", total * 1e3},
          {"per_rank_ms", per_rank_ms},
          {"per_rank_attention_ms", per_rank_attention_ms},
          {"rank0", rank0},
          {"sustained", sustained_json},
          {"contended",
           {{"definition", "the bound with each collective that GEMMs hide priced as measured beside them: the "
                           "collective started, as many of the layer's largest GEMM as match the FLOPs the "
                           "schedule runs beside it, the wait; its cost is that time less the GEMMs' alone (its "
                           "unhidden part plus what the GEMMs lose to it), less the optimizer time beside it; "
                           "the other collectives as in the bound; slowest rank"},
            {"bound_ms", total_contended * 1e3},
            {"per_rank_ms", per_rank_contended_ms},
            {"comm_exposed_ms", contended_comm_s * 1e3}}}};
}

}  // namespace lss
