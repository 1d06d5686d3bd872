#include "strategies/lss/lss.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>

#include "core/check.h"
#include "model/layers.h"

namespace lss {

namespace {

class LssStrategy final : public Strategy {
 public:
  explicit LssStrategy(StrategyContext ctx)
      : Strategy(ctx),
        P_(ctx.grid.P),
        Tl_(ctx.cfg.T / ctx.grid.P),
        Bl_(ctx.cfg.B / ctx.grid.R),
        N_(Tl_ * Bl_),
        segments_(segments_of(ctx.grid.p)),
        store_(ctx.backend, ctx.cfg, param_specs_for(ctx.grid.p)) {
    plan_shards();
  }

  std::string name() const override { return "lss"; }
  ParamStore& params() override { return store_; }
  nlohmann::json options_json() const override {
    return {{"kv", ctx_.opts.keep_kv ? "keep" : "regather"},
            {"order", ctx_.opts.zigzag ? "zigzag" : "contiguous"},
            {"split_causal", split()},
            {"chunk_pipeline", pipelined()},
            {"placed_gather", placed_gather()},
            {"placed_gather_min_bytes", ctx_.opts.placed_gather_min_bytes},
            {"placed_reduce_scatter", placed_scatter()},
            {"local_cross_block", local_cross()},
            {"recompute", ctx_.opts.recompute},
            {"distributed_optimizer", sharded()},
            {"grad_reduce_dtype", dtype_name(gradient_wire_dtype(ctx_.cfg, ctx_.opts))},
            {"overlap", ctx_.opts.overlap}};
  }

  std::vector<ParamSpec> param_specs_for(int p) const override {
    const ModelConfig& cfg = ctx_.cfg;
    auto specs = model_param_specs(cfg);
    for (auto& s : specs) {
      if (s.name != "wpe") continue;
      // Each rank owns the positional rows of its segments, in local order; the rank holding the
      // sequence's last tokens also owns the unused tail [T, T_max), so that every row is
      // updated (weight decay) exactly as in serial.
      s.row_ranges = segments_of(p);
      const bool holds_end = ctx_.opts.zigzag ? p == 0 : p == P_ - 1;
      if (holds_end && cfg.T_max > cfg.T) s.row_ranges.push_back({cfg.T, cfg.T_max - cfg.T});
      s.seq_reduced = false;
    }
    return specs;
  }

  CommModel expected_comm() const override {
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t kv_bytes = kv_gather_bytes();
    CommModel m;
    const int P = ctx_.grid.P;
    // Forward gathers once per layer; backward gathers again unless the forward's gather was kept
    // (with recomputation, the recomputed forward's gather is the second one).
    const bool one_gather = ctx_.opts.keep_kv && !ctx_.opts.recompute;
    if (pipelined()) {
      // The forward's gather in two halves (front chunks, back chunks); backward's re-gather in
      // halves too, or with recomputation the recomputed forward's one fused gather.
      expect_calls(m, "sp", P, CollKind::all_gather, 2 * cfg.L, kv_bytes / 2);
      if (ctx_.opts.recompute) expect_calls(m, "sp", P, CollKind::all_gather, cfg.L, kv_bytes);
      else if (!one_gather) expect_calls(m, "sp", P, CollKind::all_gather, 2 * cfg.L, kv_bytes / 2);
    } else {
      expect_calls(m, "sp", P, CollKind::all_gather, cfg.L * (one_gather ? 1 : 2), kv_bytes);
    }
    // The dK/dV reduce-scatter: in halves in the pipeline's layout.
    if (wave_backward()) expect_calls(m, "sp", P, CollKind::reduce_scatter, 2 * cfg.L, kv_bytes / 2);
    else expect_calls(m, "sp", P, CollKind::reduce_scatter, cfg.L, kv_bytes);
    // The sequence-reduced gradients' sums per bucket (head, each layer, embeddings), then the
    // data group's.
    expect_gradient_comm(m, store_);
    return m;
  }

  BoundModel bound_model() const override {
    const ModelConfig& cfg = ctx_.cfg;
    const double N = static_cast<double>(N_), C = static_cast<double>(cfg.C);
    BoundModel m;
    m.layer_linears = {{N_, cfg.C, 2 * cfg.C},
                       {N_, cfg.C, cfg.C},
                       {N_, cfg.C, cfg.C, true},
                       {N_, cfg.C, 4 * cfg.C, false, true},
                       {N_, 4 * cfg.C, cfg.C, true, false, true}};
    if (pipelined())
      for (auto& lin : m.layer_linears) lin.forward_parts = static_cast<int64_t>(segments_.size());
    // The causal blocks on a segment's own keys (split_causal), 4 Bl H c^2 D / 2 FLOPs forward, run
    // beside the gather; priced at the GEMM rate.
    double diagonal_forward = 0;
    for (const RowRange& seg : segments_) {
      if (!split()) {
        m.layer_attention.push_back(attention_shape(Bl_, cfg.H, seg.count, key_count(seg), seg.start));
        continue;
      }
      m.layer_attention.push_back(attention_shape(Bl_, cfg.H, seg.count, seg.count, 0));
      diagonal_forward += 2.0 * static_cast<double>(Bl_ * seg.count * seg.count) * C;
    }
    auto unmasked = [&](int64_t queries, int64_t keys) {
      AttentionArgs shape = attention_shape(Bl_, cfg.H, queries, keys, 0);
      shape.causal = false;
      m.layer_attention.push_back(shape);
    };
    if (split())
      for (const KeyBlock& b : dkv_plan(wave_backward()).blocks) unmasked(segments_[b.seg].count, b.count);
    // --local-cross-block: beside the gather in forward (with the diagonal blocks), beside the
    // reduce-scatter in backward (its five products, 2.5 forwards). Attention FLOPs counted at
    // the GEMM rate, as the diagonal blocks' are: attention runs below it, so the time they take
    // beside a collective is understated and the hidden time a lower bound.
    double cross_forward = 0;
    if (local_cross()) {
      unmasked(segments_[1].count, segments_[0].count);
      cross_forward = 4.0 * static_cast<double>(Bl_ * segments_[1].count * segments_[0].count) * C;
    }
    if (P_ > 1) {
      const int64_t kv_bytes = kv_gather_bytes();
      const double q_projection = 2 * N * C * C + diagonal_forward + cross_forward;  // beside each forward gather
      const double mlp_backward = 4 * (2 * N * C * 4 * C);                      // beside a backward re-gather
      // Beside the reduce-scatter: the out-projection's weight gradient and the Q projection's
      // backward (the diagonal blocks' backward runs before it: attention_backward), and the local
      // cross block's backward.
      const double q_backward = 3 * (2 * N * C * C) + 2.5 * cross_forward;
      // The fused gathers, placed in each rank's segments (placed_gather) or rank-major.
      const std::vector<PlacedPiece> pieces = placed_gather() ? kv_pieces() : std::vector<PlacedPiece>{};
      if (pipelined()) add_pipelined_gather_bounds(m, kv_bytes);
      else m.comm.push_back({"K/V all-gather, forward", "sp", CollKind::all_gather, kv_bytes, cfg.L, q_projection});
      if (!pipelined()) m.comm.back().placed = pieces;
      if (ctx_.opts.recompute) {
        m.comm.push_back({"K/V all-gather, recomputed forward", "sp", CollKind::all_gather, kv_bytes, cfg.L,
                          q_projection});
        m.comm.back().placed = pieces;
      } else if (!ctx_.opts.keep_kv && wave_backward()) {
        // Both halves start before the MLP's backward, which runs beside the two.
        for (const char* half : {"front", "back"})
          m.comm.push_back({std::string("K/V re-gather, backward, ") + half + " chunks", "sp", CollKind::all_gather,
                            kv_bytes / 2, cfg.L, mlp_backward / 2});
      } else if (!ctx_.opts.keep_kv) {
        m.comm.push_back({"K/V re-gather, backward", "sp", CollKind::all_gather, kv_bytes, cfg.L, mlp_backward});
        m.comm.back().placed = pieces;
      }
      if (wave_backward()) {
        for (const char* half : {"front", "back"})
          m.comm.push_back({std::string("dK/dV reduce-scatter, ") + half + " chunks", "sp", CollKind::reduce_scatter,
                            kv_bytes / 2, cfg.L, q_backward / 2});
      } else {
        m.comm.push_back({"dK/dV reduce-scatter", "sp", CollKind::reduce_scatter, kv_bytes, cfg.L, q_backward});
        if (placed_scatter()) m.comm.back().placed = pieces;
      }
    }
    add_gradient_bounds(m, store_, 48 * N * C * C);
    m.layer_passes = passes();
    return m;
  }

  // --chunk-pipeline's forward gathers, each with the FLOPs that forward_pipelined's order runs
  // beside it. Per chunk (n = N/2 rows): its K/V projection; then, after its gather starts, its Q
  // projection and diagonal block; later its "attend" part (preceding block, out projection,
  // MLP). A front chunk's gather of layer l runs beside its own Q projection and diagonal, then
  // attend(back, l-1) and the back chunk's whole project(l); a back chunk's gather beside its own
  // Q projection and diagonal, attend(front, l) and the front chunk's project(l+1). Layer 0's
  // front gather has no attend(back, -1) beside it, layer L-1's back gather no project(front, L).
  void add_pipelined_gather_bounds(BoundModel& m, int64_t kv_bytes) const {
    const ModelConfig& cfg = ctx_.cfg;
    const double C = static_cast<double>(cfg.C);
    auto chunk = [&](int s) {
      const RowRange& seg = segments_[s];
      const double n = static_cast<double>(seg.count * Bl_);
      const double diagonal = 2.0 * static_cast<double>(Bl_ * seg.count * seg.count) * C;
      const double kv_projection = 2 * n * C * 2 * C;
      const double q_and_diagonal = 2 * n * C * C + diagonal;
      const double attend = 4.0 * static_cast<double>(Bl_ * seg.count * seg.start) * C + 2 * n * C * C + 16 * n * C * C;
      return std::array<double, 3>{kv_projection, q_and_diagonal, attend};
    };
    const auto front = chunk(0), back = chunk(1);
    const double front_gather = front[1] + back[2] + back[0] + back[1];  // layers 1...L-1
    const double front_gather_first = front[1] + back[0] + back[1];      // layer 0: no attend(back, -1)
    const double back_gather = back[1] + front[2] + front[0] + front[1];  // layers 0...L-2
    const double back_gather_last = back[1] + front[2];                  // layer L-1: no project(front, L)
    const int64_t half = kv_bytes / 2;
    m.comm.push_back({"K/V all-gather, forward, front chunks, layer 0", "sp", CollKind::all_gather, half, 1,
                      front_gather_first});
    if (cfg.L > 1)
      m.comm.push_back({"K/V all-gather, forward, front chunks", "sp", CollKind::all_gather, half, cfg.L - 1,
                        front_gather});
    if (cfg.L > 1)
      m.comm.push_back({"K/V all-gather, forward, back chunks", "sp", CollKind::all_gather, half, cfg.L - 1,
                        back_gather});
    m.comm.push_back({"K/V all-gather, forward, back chunks, last layer", "sp", CollKind::all_gather, half, 1,
                      back_gather_last});
  }

  // The memory-bound passes of one layer, as attention_forward / attention_backward run them.
  std::vector<BoundModel::Pass> passes() const {
    using Kind = BoundModel::Pass::Kind;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C, key_row = Bl_ * 2 * C, kv = cfg.T * key_row;
    std::vector<BoundModel::Pass> out;
    if (alone()) {
      // No gather, no reduce-scatter: the split blocks' one segment has no keys before it, and
      // its diagonal block writes [dK|dV] in place.
      return out;
    }
    if (ctx_.opts.zigzag && !wave_backward()) {
      // A rank-major gather is put into token order: the forward's, and backward's re-gather.
      const bool regather = !ctx_.opts.keep_kv && !ctx_.opts.recompute;
      // --chunk-pipeline with recomputation: the pipelined forward attends from the gathered
      // halves as they are; only the recomputed forward (the fused gather) copies, once per layer,
      // counted twice. Without recomputation the pipeline copies nothing (wave_backward).
      const double forward_copies = pipelined() ? 0.5 : 1;
      if (!placed_gather())
        out.push_back({"[K|V] to token order", Kind::copy, kv, {}, forward_copies, regather ? 1.0 : 0.0});
      if (!placed_scatter()) out.push_back({"[dK|dV] to rank order", Kind::copy, kv, {}, 0, 1});
    }
    // Backward's dK/dV (dkv_plan): the rows no block writes zeroed, a block whose rows an earlier
    // one wrote added from a scratch buffer.
    const DkvPlan plan = dkv_plan(wave_backward());
    for (const RowRange& rows : plan.zeroed)
      out.push_back({"[dK|dV] rows no gathered block writes, zeroed", Kind::fill_zero, rows.count * key_row, {}, 0, 1});
    for (const KeyBlock& b : plan.blocks)
      if (!b.direct) out.push_back({"[dK|dV] of a second segment, added", Kind::add, b.count * key_row, {}, 0, 1});
    if (split()) {
      // Each unmasked block's output merged into its segment's, its dQ added to the segment's.
      auto merged_block = [&](int64_t queries) {
        AttentionArgs merge = attention_shape(Bl_, cfg.H, queries, queries, 0);
        out.push_back({"split blocks' merge", Kind::attention_merge, 0, merge, 1, 0});
        out.push_back({"split blocks' dQ, added", Kind::add, queries * Bl_ * C, {}, 0, 1});
      };
      for (const KeyBlock& b : plan.blocks) merged_block(segments_[b.seg].count);
      if (local_cross()) {
        merged_block(segments_[1].count);
        out.push_back({"local cross block's dK/dV, added", Kind::add, segments_[0].count * key_row, {}, 0, 1});
      }
      out.push_back({"diagonal blocks' dK/dV, added", Kind::add, N_ * 2 * C, {}, 0, 1});
    }
    return out;
  }

  void forward(int64_t step, View loss_sum) override {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C, N = N_;
    upload_batch(step, ctx_.grid.r * Bl_, Bl_, segments_, tokens_, targets_);
    resid0_ = be.alloc(cfg.dtype, N * C);
    params_needed("embed");
    prefetch_params(attention_key(0));  // beside the embedding: nothing comes before it
    be.embedding_forward(resid0_.view(), tokens_.view(), store_.param("wte"), store_.param("wpe").slice(0, Tl_ * C),
                         Tl_, Bl_, C);
    layers_.resize(cfg.L);
    if (pipelined()) {
      forward_pipelined();
    } else {
      View h = resid0_.view();
      for (int64_t l = 0; l < cfg.L; ++l) {
        Layer& a = layers_[l];
        block_forward(l, h, a);
        if (ctx_.opts.recompute) keep_only_output(a);
        h = a.h_out.view();
      }
    }
    const View h = layers_.empty() ? resid0_.view() : layers_.back().h_out.view();
    params_needed("head");
    head_forward(be, cfg, store_, h, targets_.view(), head_, N, 1.0 / static_cast<double>(cfg.B * cfg.T), loss_sum);
  }

  void backward() override {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C, N = N_;
    Buffer dh = be.alloc(cfg.dtype, N * C);  // (N, C) gradient of the residual stream
    head_backward(be, cfg, store_, layers_.empty() ? resid0_.view() : layers_.back().h_out.view(), dh.view(),
                  head_, N);
    head_gradients_ready(store_);
    Regather regather;
    for (int64_t l = cfg.L - 1; l >= 0; --l) {
      Layer& a = layers_[l];
      const View h_in = l == 0 ? resid0_.view() : layers_[l - 1].h_out.view();
      if (ctx_.opts.recompute) {
        // The recomputed forward gathers [K|V] once more; that gather is kept for this block's
        // backward, so backward gathers no third time.
        a = Layer{};
        block_forward(l, h_in, a, /*keep_kv=*/true);
      }
      a.h_out.reset();
      // The re-gather of [K|V] runs while the MLP's backward computes (--chunk-pipeline: in
      // halves, into the forward's layout); the layer after this one started it already.
      if (l == cfg.L - 1 || ctx_.opts.recompute) regather = start_regather(a);
      mlp_backward(be, cfg, layer_params(store_, l), layer_grads(store_, l), a.h_mid.view(), dh.view(), a.mlp, N);
      // The MLP half's sum runs beside the attention's backward kernels, ahead of the dK/dV
      // reduce-scatter (behind it, beside the next MLP's GEMMs, the step at T = 16K on 4 GPUs was
      // 2.4-3.4% slower: PERFORMANCE.md, twelfth session).
      mlp_gradients_ready(store_, l);
      finish_regather(a, regather);
      attention_backward(layer_params(store_, l), layer_grads(store_, l), h_in, dh.view(), a);
      // The next layer's re-gather goes ahead of this layer's attention-half sum on the
      // communication stream: it is waited for after one MLP backward, the sum only by the
      // optimizer step (or the data group's sum a block later).
      if (l > 0 && !ctx_.opts.recompute) regather = start_regather(layers_[l - 1]);
      attention_gradients_ready(store_, l);
    }
    be.embedding_backward(store_.grad("wte"), store_.grad("wpe").slice(0, Tl_ * C), dh.view(), tokens_.view(), Tl_,
                          Bl_, C);
    layers_.clear();
    resid0_.reset();
    tokens_.reset();
    targets_.reset();
    reduce_gradients(store_);
  }

 private:
  struct Layer {
    Buffer ln_out;      // (N, C) LN1 output
    Buffer mean, rstd;  // (N)
    Buffer q;           // (N, C) local queries
    Buffer kv_local;    // (N, 2C) row n = [k | v] of local token n (kept for the re-gather)
    Buffer kv_full;     // (T*Bl, 2C) gathered, in global token order (kept only with keep_kv)
    // --chunk-pipeline: (T*Bl, 2C) the back chunks' gathered [K|V] (rank q's chunk 2P-1-q at rows
    // q*c*Bl), then the front chunks' (rank q's chunk q at rows (P+q)*c*Bl), and the two gathers
    // writing them (index: chunk 0 front, 1 back); forward's, kept for backward with keep_kv, or
    // backward's own.
    Buffer kv_wave;
    CommHandle wave_gather[2];
    Buffer attn_out;    // (N, C)
    Buffer lse;         // (Bl, H, Tl): one (Bl, H, count) block per segment
    Buffer h_mid;       // (N, C) residual after attention
    MlpActivations mlp;
    Buffer h_out;       // (N, C) residual after the block
  };

  // One transformer block from its input h: attention and MLP sub-blocks, saving what backward
  // needs in `a` (the gathered [K|V] too when keep_kv). The MLP half's parameters travel behind
  // the K/V gather, the next layer's attention half's beside this MLP.
  void block_forward(int64_t l, View h, Layer& a, bool keep_kv = false) {
    params_needed(attention_key(l));
    const LayerTensors w = layer_params(store_, l);
    attention_forward(w, h, a, keep_kv || ctx_.opts.keep_kv, mlp_key(l));
    a.h_out = ctx_.backend.alloc(ctx_.cfg.dtype, N_ * ctx_.cfg.C);
    params_needed(mlp_key(l));
    prefetch_params(attention_key(l + 1));
    mlp_forward(ctx_.backend, ctx_.cfg, w, a.h_mid.view(), a.h_out.view(), a.mlp, N_);
  }

  // The pipeline's gathered [K|V] of a layer, forward's or backward's re-gather.
  Buffer alloc_kv_wave() {
    return ctx_.backend.alloc_symmetric(ctx_.cfg.dtype, ctx_.cfg.T * Bl_ * 2 * ctx_.cfg.C);  // (T*Bl, 2C) [back | front]
  }

  // Backward's re-gather of a layer's [K|V] in flight: rank-major, or (wave) in the pipeline's two
  // halves into kv_wave; none where the layer kept its gather.
  struct Regather {
    bool wave = false;
    PendingCollective pending;
  };
  Regather start_regather(Layer& a) {
    Regather r;
    if (wave_backward() && !a.kv_wave) {
      r.wave = true;
      a.kv_wave = alloc_kv_wave();
      start_wave_gather(a, 0);
      start_wave_gather(a, 1);
    } else if (!wave_backward() && !a.kv_full) {
      r.pending = start_gather_kv(a);
    }
    return r;
  }
  void finish_regather(Layer& a, Regather& r) {
    if (r.wave) {
      wait_seq(a.wave_gather[0]);
      wait_seq(a.wave_gather[1]);
    } else if (r.pending.out) {
      a.kv_full = finish_gather_kv(r.pending);
    }
    r = Regather{};
  }

  // The c_attn weight (3C, C) holds Q rows, then K and V rows: K and V together are one
  // contiguous (2C, C) block, so one GEMM writes [k | v] rows that are gathered as they are.
  View wq(const View& w) const { return w.slice(0, ctx_.cfg.C * ctx_.cfg.C); }
  View wkv(const View& w) const { return w.slice(ctx_.cfg.C * ctx_.cfg.C, 2 * ctx_.cfg.C * ctx_.cfg.C); }
  View bq(const View& b) const { return b.slice(0, ctx_.cfg.C); }
  View bkv(const View& b) const { return b.slice(ctx_.cfg.C, 2 * ctx_.cfg.C); }

  // The token ranges rank p holds, in local order: one contiguous segment, or (zigzag) chunks p
  // and 2P-1-p of T/(2P) tokens, which give every rank the same causal attention work.
  std::vector<RowRange> segments_of(int p) const {
    if (!ctx_.opts.zigzag) return {{p * Tl_, Tl_}};
    const int64_t Tc = Tl_ / 2;
    // At P = 1 the two chunks are the whole sequence: one segment, the contiguous order's square
    // causal call. Rank P-1's chunks P-1 and P are neighbours too. With split causal blocks they
    // are one segment: its causal block on 2c keys and its 2c queries against the (P-1)c keys
    // before it are the score tiles of the two chunks' four calls, in two calls, whose longer
    // rows run 1.0-1.9% faster on cuDNN (PERFORMANCE.md, twenty-seventh session). Without split
    // blocks the neighbours stay two calls like every rank's: one call of 2c queries on (P+1)c
    // keys computes (2P+2)c² score tiles where the two calls compute (2P+1)c², since cuDNN's
    // causal mask with a query offset (bottom-right alignment) computes every tile of the call,
    // masked or not, as far as the per-rank attention times of 4 x H200 tell (that model predicts
    // them within 3%; third session). The chunk pipeline interleaves two chunks on every rank.
    // With --local-cross-block rank P-1 keeps two segments too: its back chunk's block on its front
    // chunk is the block that runs beside the collectives.
    if (P_ == 1 || (p == P_ - 1 && split() && !pipelined() && !local_cross())) return {{p * Tc, 2 * Tc}};
    return {{p * Tc, Tc}, {(2 * P_ - 1 - p) * Tc, Tc}};
  }

  // The keys a segment's queries see: with a causal mask those up to its last token (the rest
  // would be masked out entirely), else all T.
  int64_t key_count(const RowRange& seg) const { return ctx_.cfg.causal ? seg.start + seg.count : ctx_.cfg.T; }

  // The keys whose dK/dV a segment's backward call writes into the gathered [dK|dV]: those it sees,
  // or with split_causal those before it (its own keys' go to the diagonal block's buffer).
  int64_t dkv_keys(const RowRange& seg) const { return split() ? seg.start : key_count(seg); }

  // Attention of local segment `s` (rows [row0, row0 + count) of the local Tl) against all keys,
  // which start at token row kv_row0 of `kv`.
  AttentionArgs attention_args(const Layer& a, const Buffer& kv, const RowRange& seg, int64_t row0,
                               int64_t kv_row0 = 0) const {
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C;
    const int64_t es = static_cast<int64_t>(dtype_size(cfg.dtype));
    AttentionArgs args;
    args.dtype = cfg.dtype;
    args.B = Bl_;
    args.H = cfg.H;
    args.D = cfg.D();
    args.Tq = seg.count;
    args.Tk = key_count(seg);
    args.q_offset = seg.start;
    args.causal = cfg.causal;
    args.scale = 1.0 / std::sqrt(static_cast<double>(cfg.D()));
    auto* keys = static_cast<char*>(kv.ptr()) + kv_row0 * Bl_ * 2 * C * es;
    args.q = {static_cast<char*>(a.q.ptr()) + row0 * Bl_ * C * es, C, Bl_ * C};
    args.k = {keys, 2 * C, Bl_ * 2 * C};
    args.v = {keys + C * es, 2 * C, Bl_ * 2 * C};
    args.out = {static_cast<char*>(a.attn_out.ptr()) + row0 * Bl_ * C * es, C, Bl_ * C};
    args.lse = static_cast<char*>(a.lse.ptr()) + Bl_ * cfg.H * row0 * static_cast<int64_t>(dtype_size(stat_dtype(cfg.dtype)));
    return args;
  }

  // split_causal: segment `seg`'s queries (local rows row0...) against its own keys, rows
  // [kv_row0, kv_row0 + count) of `kv` (kv_local in local order, or kv_full in global order),
  // as a square causal block; output and lse are the segment's own.
  AttentionArgs diagonal_args(const Layer& a, const Buffer& kv, const RowRange& seg, int64_t row0, int64_t kv_row0) const {
    AttentionArgs args = attention_args(a, kv, seg, row0, kv_row0);
    args.Tk = seg.count;
    args.q_offset = 0;
    return args;
  }
  // split_causal: the segment's queries against every key before it, unmasked: rows
  // [kv_row0, kv_row0 + seg.start) of `kv` (kv_full in global order: from 0; --chunk-pipeline's
  // kv_wave: from wave_first_key).
  AttentionArgs preceding_args(const Layer& a, const Buffer& kv, const RowRange& seg, int64_t row0,
                               int64_t kv_row0 = 0) const {
    return unmasked_args(a, kv, seg, row0, kv_row0, seg.start);
  }
  // The segment's queries against `keys` key rows of `kv` from token row kv_row0, unmasked.
  AttentionArgs unmasked_args(const Layer& a, const Buffer& kv, const RowRange& seg, int64_t row0, int64_t kv_row0,
                              int64_t keys) const {
    AttentionArgs args = attention_args(a, kv, seg, row0, kv_row0);
    args.Tk = keys;
    args.q_offset = 0;
    args.causal = false;
    return args;
  }

  // One attention call on the gathered keys (or, wave, the pipeline's layout): segment `seg`
  // (index into segments_) against the key rows [first, first + count) of that layout; unmasked
  // with split blocks, else the segment's causal call on every key it sees (first 0). Backward
  // writes its [dK|dV] rows straight into dkv_full (`direct`: no earlier direct block wrote them)
  // or through a scratch buffer that is added.
  struct KeyBlock {
    size_t seg;
    int64_t first, count;
    bool direct = true;
  };
  // A segment's first local row.
  int64_t segment_row0(size_t i) const {
    int64_t row0 = 0;
    for (size_t j = 0; j < i; ++j) row0 += segments_[j].count;
    return row0;
  }
  // The calls on gathered keys in backward's order: the segment seeing the most keys first (its
  // blocks in key order), each marked direct or added, and the rows of dkv_full no direct block
  // writes (zeroed). With --local-cross-block the back chunk's keys before it are two blocks, those
  // before the front chunk and those between the chunks: its block on the front chunk's own keys
  // (local_cross_args) is not among these.
  struct DkvPlan {
    std::vector<KeyBlock> blocks;
    std::vector<RowRange> zeroed;
  };
  DkvPlan dkv_plan(bool wave) const {
    std::vector<size_t> order(segments_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t x, size_t y) { return dkv_keys(segments_[x]) > dkv_keys(segments_[y]); });
    DkvPlan plan;
    for (size_t i : order) {
      const RowRange& seg = segments_[i];
      const int64_t first = wave ? wave_first_key(static_cast<int>(i)) : 0, keys = dkv_keys(seg);
      if (local_cross() && i == 1) {
        const RowRange& front = segments_[0];
        const int64_t between = front.start + front.count;
        plan.blocks.push_back({i, 0, front.start});
        plan.blocks.push_back({i, between, seg.start - between});
      } else {
        plan.blocks.push_back({i, first, keys});
      }
    }
    std::erase_if(plan.blocks, [](const KeyBlock& b) { return b.count == 0; });
    // A block is direct where no direct block before it wrote any of its rows; otherwise every one
    // of its rows must have been written (else it would add into rows never set).
    std::vector<RowRange> written;
    for (KeyBlock& b : plan.blocks) {
      const int64_t end = b.first + b.count;
      int64_t covered = 0;
      for (const RowRange& w : written)
        covered += std::max<int64_t>(0, std::min(end, w.start + w.count) - std::max(b.first, w.start));
      b.direct = covered == 0;
      LSS_CHECK(b.direct || covered == b.count, "lss: a [dK|dV] block of segment " + std::to_string(b.seg) +
                                                   " overlaps the rows written before it only in part");
      if (b.direct) written.push_back({b.first, b.count});
    }
    std::sort(written.begin(), written.end(), [](const RowRange& x, const RowRange& y) { return x.start < y.start; });
    int64_t row = 0;
    for (const RowRange& w : written) {
      if (w.start > row) plan.zeroed.push_back({row, w.start - row});
      row = std::max(row, w.start + w.count);
    }
    if (row < ctx_.cfg.T) plan.zeroed.push_back({row, ctx_.cfg.T - row});
    return plan;
  }
  // A gathered block's call (forward's arguments; backward adds its gradients' places).
  AttentionArgs block_args(const Layer& a, const Buffer& kv, const KeyBlock& b) const {
    const RowRange& seg = segments_[b.seg];
    if (!split()) return attention_args(a, kv, seg, segment_row0(b.seg));
    return unmasked_args(a, kv, seg, segment_row0(b.seg), b.first, b.count);
  }
  // --local-cross-block: the back chunk's queries against its front chunk's keys, which start at
  // token row kv_row0 of `kv` (kv_local: 0; kv_full: the front chunk's first token).
  AttentionArgs local_cross_args(const Layer& a, const Buffer& kv, int64_t kv_row0) const {
    return unmasked_args(a, kv, segments_[1], segments_[0].count, kv_row0, segments_[0].count);
  }
  // split_causal forward: the preceding block `own` (out and lse: the diagonal block's) into a
  // part of its own, merged into the diagonal block's.
  void attend_preceding(const AttentionArgs& own) {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    Buffer part = be.alloc(cfg.dtype, own.Tq * Bl_ * cfg.C);             // (count*Bl, C)
    Buffer part_lse = be.alloc(stat_dtype(cfg.dtype), Bl_ * cfg.H * own.Tq);  // (Bl, H, count)
    AttentionArgs before = own;
    before.out = {part.ptr(), cfg.C, Bl_ * cfg.C};
    before.lse = part_lse.ptr();
    be.attention_forward(before);
    be.attention_merge(attention_merge_args(own, before));
  }
  // The buffers LN1 and the Q and K/V projections write, for the rank's N rows.
  void allocate_projections(Layer& a) {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const DType st = stat_dtype(cfg.dtype);
    a.ln_out = be.alloc(cfg.dtype, N_ * cfg.C);
    a.mean = be.alloc(st, N_);
    a.rstd = be.alloc(st, N_);
    a.q = be.alloc(cfg.dtype, N_ * cfg.C);
    a.kv_local = be.alloc_symmetric(cfg.dtype, N_ * 2 * cfg.C);  // all-gathered
  }
  // Activation checkpointing: keep only the block's output (the next block's input); the rest is
  // recomputed from it in backward.
  static void keep_only_output(Layer& a) {
    Buffer out = std::move(a.h_out);
    a = Layer{};
    a.h_out = std::move(out);
  }
  bool split() const { return ctx_.cfg.causal && ctx_.opts.split_causal; }
  // One rank holds the whole sequence (P = 1): its [K|V] is the gathered one, already in token
  // order (one segment), and its [dK|dV] the reduce-scattered one. No collective runs and nothing
  // is copied, zeroed or added for them: the step is serial's, as the weak-scaling baseline must
  // be (the local copies cost 1.7% at T = 16K on an H200; PERFORMANCE.md, twenty-seventh session).
  bool alone() const { return P_ == 1; }
  bool local_cross() const {
    return ctx_.opts.local_cross_block && ctx_.opts.zigzag && split() && !pipelined() && P_ > 1;
  }
  bool pipelined() const { return ctx_.opts.chunk_pipeline && ctx_.opts.zigzag && split() && P_ > 1; }
  // Backward in the pipeline's [back | front] layout: its [K|V] (kept, or gathered again in two
  // halves) and its [dK|dV] (reduce-scattered in two halves) need no reorder copy. With
  // recomputation the recomputed forward gathers once, in rank order, as without the pipeline.
  bool wave_backward() const { return pipelined() && !ctx_.opts.recompute; }

  // --chunk-pipeline's forward. Every key a chunk's preceding block sees is one range of kv_wave
  // (the front chunk p: front chunks 0...p-1; the back chunk 2P-1-p: the back chunks of ranks
  // p+1...P-1, then every front chunk), and an unmasked block does not depend on the order of its
  // keys, so the gathered halves are used as they arrive. The blocks run in the order
  //   project(0, front) project(0, back) attend(0, front)
  //   project(l, front) attend(l-1, back) project(l, back) attend(l, front)   for l = 1...L-1
  //   attend(L-1, back)
  // so that each half's gather runs beside the other chunk's work (README, `--chunk-pipeline`).
  void forward_pipelined() {
    const int64_t L = ctx_.cfg.L;
    wave_project(0, 0);
    wave_project(0, 1);
    wave_attend(0, 0);
    for (int64_t l = 1; l < L; ++l) {
      wave_project(l, 0);
      wave_attend(l - 1, 1);
      wave_project(l, 1);
      wave_attend(l, 0);
    }
    wave_attend(L - 1, 1);
  }

  View block_input(int64_t l) const { return l == 0 ? resid0_.view() : layers_[l - 1].h_out.view(); }
  // The first local token of chunk s (its rows start at that times Bl), and the first token row
  // of kv_wave that its preceding block reads.
  int64_t chunk_row0(int s) const { return s == 0 ? 0 : segments_[0].count; }
  int64_t wave_first_key(int s) const {
    const int64_t c = Tl_ / 2;
    return s == 0 ? P_ * c : (ctx_.grid.p + 1) * c;
  }

  // Chunk s of layer l up to its gather: LN1, the K/V projection, the gather started, the Q
  // projection and the diagonal block. The front chunk allocates the layer's activations.
  void wave_project(int64_t l, int s) {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C;
    const DType st = stat_dtype(cfg.dtype);
    Layer& a = layers_[l];
    if (s == 0) params_needed(attention_key(l));
    const LayerTensors w = layer_params(store_, l);
    if (s == 0) {
      allocate_projections(a);
      a.kv_wave = alloc_kv_wave();
      a.attn_out = be.alloc(cfg.dtype, N_ * C);
      a.lse = be.alloc(st, Bl_ * cfg.H * Tl_);
      a.h_mid = be.alloc(cfg.dtype, N_ * C);
      a.h_out = be.alloc(cfg.dtype, N_ * C);
      mlp_allocate(be, cfg, a.mlp, N_);
    }
    const RowRange& seg = segments_[s];
    const int64_t row0 = chunk_row0(s), r = row0 * Bl_, n = seg.count * Bl_;
    const View ln = a.ln_out.view().slice(r * C, n * C), kv = a.kv_local.view().slice(r * 2 * C, n * 2 * C);
    be.layernorm_forward(ln, a.mean.view().slice(r, n), a.rstd.view().slice(r, n), block_input(l).slice(r * C, n * C),
                         w.ln1_w, w.ln1_b, n, C, cfg.ln_eps);
    linear_forward(be, kv, ln, wkv(w.attn_w), bkv(w.attn_b), n, C, 2 * C);
    start_wave_gather(a, s);
    // This layer's MLP half's parameters travel behind the front chunks' gather, the next layer's
    // attention half's behind the back chunks', each beside the other chunk's work.
    prefetch_params(s == 0 ? mlp_key(l) : attention_key(l + 1));
    linear_forward(be, a.q.view().slice(r * C, n * C), ln, wq(w.attn_w), bq(w.attn_b), n, C, C);
    be.attention_forward(diagonal_args(a, a.kv_local, seg, row0, row0));
  }

  // Chunk s's [K|V] (its rows of kv_local) into its half of kv_wave: the front chunks' half after
  // the back chunks'.
  void start_wave_gather(Layer& a, int s) {
    const int64_t C = ctx_.cfg.C, n = segments_[s].count * Bl_, r = chunk_row0(s) * Bl_;
    const int64_t half = P_ * n * 2 * C;  // elements of one gathered half
    CommLabel label(*ctx_.grid.seq, s == 0 ? "K/V all-gather, back chunks" : "K/V all-gather, front chunks");
    a.wave_gather[s] = start_seq_all_gather_into(a.kv_local.view().slice(r * 2 * C, n * 2 * C),
                                                 a.kv_wave.view().slice(s == 0 ? half : 0, half));
  }

  // Chunk s of layer l from its gather on: the preceding block (merged into the diagonal one's),
  // the out projection and the MLP. The back chunk finishes the layer.
  void wave_attend(int64_t l, int s) {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C;
    Layer& a = layers_[l];
    const LayerTensors w = layer_params(store_, l);
    const RowRange& seg = segments_[s];
    const int64_t row0 = chunk_row0(s), r = row0 * Bl_, n = seg.count * Bl_;
    // The back chunk reads both halves (a second wait on the front's is a no-op).
    wait_seq(a.wave_gather[0]);
    if (s == 1) wait_seq(a.wave_gather[1]);
    if (seg.start > 0) attend_preceding(preceding_args(a, a.kv_wave, seg, row0, wave_first_key(s)));
    const View h = block_input(l).slice(r * C, n * C);
    linear_forward(be, a.h_mid.view().slice(r * C, n * C), a.attn_out.view().slice(r * C, n * C), w.proj_w, w.proj_b,
                   n, C, C, h);
    params_needed(mlp_key(l));
    mlp_forward_rows(be, cfg, w, a.h_mid.view(), a.h_out.view(), a.mlp, r, n);
    if (s == 0) return;
    if (ctx_.opts.recompute) {
      keep_only_output(a);
      return;
    }
    // Backward reads [K|V] in this layout too (attention_backward): the halves are kept as they
    // are with keep_kv (and kv_local, for the diagonal blocks), gathered again otherwise.
    if (!ctx_.opts.keep_kv) a.kv_wave.reset();
  }

  // Moves [K|V] rows between the all-gather's rank-major order (rank q's local rows at q*Tl) and
  // global token order, piece by piece as a placed gather lays them (kv_pieces).
  void reorder_kv(View rank_major, View global, bool to_global) {
    const int64_t local = Tl_ * Bl_ * 2 * ctx_.cfg.C;  // elements of one rank's [K|V]
    for (const PlacedPiece& pc : kv_pieces()) {
      View g = global.slice(pc.dst, pc.count);
      View r = rank_major.slice(pc.rank * local + pc.src, pc.count);
      if (to_global) ctx_.backend.copy(g, r);
      else ctx_.backend.copy(r, g);
    }
  }

  // The gathered [K|V] of one layer, in bytes.
  int64_t kv_gather_bytes() const {
    return ctx_.cfg.T * Bl_ * 2 * ctx_.cfg.C * static_cast<int64_t>(dtype_size(ctx_.cfg.dtype));
  }
  // Zigzag's gather lands each rank's chunks at their token positions (one collective, no reorder
  // copy after it) where the sequence group can place a gather's pieces and the gather is large
  // enough for that to pay (--placed-gather-min); with copy-engine gathers, or smaller, it lands
  // rank-major and is reordered.
  bool placed_gather() const {
    return ctx_.opts.zigzag && ctx_.grid.seq->places_gathers() &&
           kv_gather_bytes() >= ctx_.opts.placed_gather_min_bytes;
  }
  // --placed-reduce-scatter: backward's fused dK/dV reduce-scatter reads token order through the
  // same pieces (the pipeline's halves need no reorder; copy-engine gathers keep rank order).
  bool placed_scatter() const { return ctx_.opts.placed_reduce_scatter && placed_gather() && !wave_backward(); }
  // The pieces of that gather: rank q's segments, in local order, at their token rows.
  std::vector<PlacedPiece> kv_pieces() const {
    const int64_t row = Bl_ * 2 * ctx_.cfg.C;  // elements of one token position
    std::vector<PlacedPiece> pieces;
    for (int q = 0; q < P_; ++q) {
      int64_t local = 0;
      for (const RowRange& seg : segments_of(q)) {
        pieces.push_back({q, local * row, seg.count * row, seg.start * row});
        local += seg.count;
      }
    }
    return pieces;
  }
  // The all-gather of [K|V]; kv_local must stay alive until finish_gather_kv.
  PendingCollective start_gather_kv(const Layer& a) {
    CommLabel label(*ctx_.grid.seq, "K/V all-gather");
    return placed_gather() ? start_seq_all_gather_placed(a.kv_local.view(), kv_pieces())
                           : start_seq_all_gather(a.kv_local.view());
  }
  // The gathered [K|V] of all T tokens in global order.
  Buffer finish_gather_kv(PendingCollective& g) {
    Buffer gathered = finish(g);  // (T*Bl, 2C): in global order, or rank-major (P*Tl*Bl, 2C)
    if (!ctx_.opts.zigzag || placed_gather()) return gathered;
    Buffer global = ctx_.backend.alloc(ctx_.cfg.dtype, gathered.numel());  // (T*Bl, 2C)
    reorder_kv(gathered.view(), global.view(), true);
    return global;
  }

  // `next`: the bucket whose parameters the forward reads next, prefetched behind the K/V gather.
  void attention_forward(const LayerTensors& w, View h, Layer& a, bool keep_kv, const std::string& next) {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C, N = N_;
    const DType st = stat_dtype(cfg.dtype);
    allocate_projections(a);
    be.layernorm_forward(a.ln_out.view(), a.mean.view(), a.rstd.view(), h, w.ln1_w, w.ln1_b, N, C, cfg.ln_eps);
    // K and V first, so that their all-gather runs while Q is projected.
    linear_forward(be, a.kv_local.view(), a.ln_out.view(), wkv(w.attn_w), bkv(w.attn_b), N, C, 2 * C);
    PendingCollective gather;
    if (!alone()) gather = start_gather_kv(a);
    prefetch_params(next);
    linear_forward(be, a.q.view(), a.ln_out.view(), wq(w.attn_w), bq(w.attn_b), N, C, C);
    a.attn_out = be.alloc(cfg.dtype, N * C);
    a.lse = be.alloc(st, Bl_ * cfg.H * Tl_);
    if (split()) {
      // The blocks on the segments' own keys need no gathered row: they run while the gather does.
      for (int64_t i = 0, row0 = 0; i < std::ssize(segments_); row0 += segments_[i].count, ++i)
        be.attention_forward(diagonal_args(a, a.kv_local, segments_[i], row0, row0));
      // --local-cross-block: the back chunk's block on the front chunk's keys is local too.
      if (local_cross()) attend_preceding(local_cross_args(a, a.kv_local, 0));
    }
    Buffer kv_full = alone() ? std::move(a.kv_local) : finish_gather_kv(gather);
    // The calls on gathered keys: with split blocks each merged into its segment's output.
    for (const KeyBlock& b : dkv_plan(false).blocks) {
      if (split()) attend_preceding(block_args(a, kv_full, b));
      else be.attention_forward(block_args(a, kv_full, b));
    }
    if (keep_kv || alone()) {  // alone: kv_full is kv_local, kept at no cost
      a.kv_full = std::move(kv_full);
      a.kv_local.reset();  // its rows are inside kv_full
    }
    a.h_mid = be.alloc(cfg.dtype, N * C);
    linear_forward(be, a.h_mid.view(), a.attn_out.view(), w.proj_w, w.proj_b, N, C, C, h);
  }

  // dh: gradient w.r.t. h_mid on entry, w.r.t. the block input h on exit.
  void attention_backward(const LayerTensors& w, const LayerTensors& g, View h, View dh, Layer& a) {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C, N = N_;
    a.h_mid.reset();
    Buffer d_attn = be.alloc(cfg.dtype, N * C);  // (N, C)
    // The out-projection's data gradient only: its weight gradient waits for the dK/dV
    // reduce-scatter, beside which it runs (dh and attn_out stay unchanged until then).
    linear_backward(be, d_attn.view(), 0.0, View{}, View{}, dh, a.attn_out.view(), w.proj_w, N, C, C);
    // Gathered by the caller: in global order, or (wave_backward) in the pipeline's [back | front]
    // layout, where every segment's keys before it are one row range starting at wave_first_key
    // and the diagonal blocks read kv_local.
    const bool wave = wave_backward();
    Buffer kv_full = std::move(wave ? a.kv_wave : a.kv_full);
    if (!wave) a.kv_local.reset();
    const int64_t es = static_cast<int64_t>(dtype_size(cfg.dtype));
    Buffer dq = be.alloc(cfg.dtype, N * C);                       // (N, C)
    // (T*Bl, 2C) partial sums, kv_full's layout; reduce-scattered as they are unless zigzag's
    // global order is reordered to rank-major first or summed piece by piece (placed)
    const int64_t dkv_numel = cfg.T * Bl_ * 2 * C;
    Buffer dkv_full = wave || !ctx_.opts.zigzag ? alloc_seq_scatter(cfg.dtype, dkv_numel) : be.alloc(cfg.dtype, dkv_numel);
    // Each backward call on gathered keys writes their dK/dV into dkv_full (dkv_plan: the segment
    // seeing the most keys first, straight into its rows; a block whose rows an earlier one wrote,
    // e.g. zigzag's front chunk's, through a scratch buffer that is then added; the rows no block
    // writes zeroed).
    std::vector<int64_t> row0_of(segments_.size());
    for (size_t i = 0; i < segments_.size(); ++i) row0_of[i] = segment_row0(i);
    const int64_t key_row = Bl_ * 2 * C;  // elements of one key position in [dK | dV]
    auto dq_rows_of = [&](int64_t row0) { return static_cast<char*>(dq.ptr()) + row0 * Bl_ * C * es; };
    auto grad_args = [&](AttentionArgs args, int64_t row0, void* dq_rows) {
      args.dout = {static_cast<char*>(d_attn.ptr()) + row0 * Bl_ * C * es, C, Bl_ * C};
      args.dq = {dq_rows, C, Bl_ * C};
      return args;
    };
    // split_causal: the diagonal blocks go first. Their dK/dV belong to this rank's own rows alone
    // (added to the reduce-scatter's result), and a rank's diagonal and preceding blocks together
    // are the same work on every rank where either kind alone is not (P = 2: rank 0's preceding
    // block has 8K x 24K keys, rank 1's 16K x 8K). With the preceding blocks first, the ranks
    // reached the [dK|dV] reduce-scatter 2.3 ms apart and the early rank's NCCL kernel held SMs
    // through its diagonal block (PERFORMANCE.md, twenty-eighth session); now they reach it
    // together, and it runs beside the GEMMs that follow. The segment's dQ rows take the first
    // call's part (the diagonal block's); every later call's comes through a scratch and is added.
    Buffer dkv_own;  // (N, 2C) split_causal: the diagonal blocks' dK/dV, local order (alone: into dkv_full)
    if (split()) {
      if (!alone()) dkv_own = be.alloc(cfg.dtype, N * 2 * C);
      char* own_rows = static_cast<char*>(alone() ? dkv_full.ptr() : dkv_own.ptr());
      for (size_t i = 0; i < segments_.size(); ++i) {
        const RowRange& seg = segments_[i];
        const int64_t row0 = row0_of[i];
        AttentionArgs args = grad_args(wave ? diagonal_args(a, a.kv_local, seg, row0, row0)
                                            : diagonal_args(a, kv_full, seg, row0, seg.start),
                                       row0, dq_rows_of(row0));
        char* own = own_rows + row0 * key_row * es;
        args.dk = {own, 2 * C, key_row};
        args.dv = {own + C * es, 2 * C, key_row};
        be.attention_backward(args);
      }
    }
    const DkvPlan plan = dkv_plan(wave);
    if (!alone())  // alone: every row is the rank's own (the diagonal's)
      for (const RowRange& rows : plan.zeroed) be.fill_zero(dkv_full.view().slice(rows.start * key_row, rows.count * key_row));
    // The segment's dQ rows (split_causal: the diagonal block wrote them) plus a call's part.
    auto add_dq = [&](size_t i, const Buffer& part) {
      View rows = dq.view().slice(row0_of[i] * Bl_ * C, segments_[i].count * Bl_ * C);
      be.add(rows, rows, part.view());
    };
    for (const KeyBlock& b : plan.blocks) {
      const int64_t row0 = row0_of[b.seg];
      Buffer scratch;  // (count*Bl, 2C), a block whose rows an earlier one wrote
      if (!b.direct) scratch = be.alloc(cfg.dtype, b.count * key_row);
      auto* dkv = b.direct ? static_cast<char*>(dkv_full.ptr()) + b.first * key_row * es : static_cast<char*>(scratch.ptr());
      Buffer dq_part;  // (count*Bl, C) split_causal
      if (split()) dq_part = be.alloc(cfg.dtype, segments_[b.seg].count * Bl_ * C);
      AttentionArgs args = grad_args(block_args(a, kv_full, b), row0, split() ? dq_part.ptr() : dq_rows_of(row0));
      args.dk = {dkv, 2 * C, key_row};
      args.dv = {dkv + C * es, 2 * C, key_row};
      be.attention_backward(args);
      if (!b.direct) {
        View rows = dkv_full.view().slice(b.first * key_row, b.count * key_row);
        be.add(rows, rows, scratch.view());
      }
      if (split()) add_dq(b.seg, dq_part);
    }
    // The reduce-scatters return the summed [dK | dV] of this rank's own rows (split_causal: the
    // diagonal blocks' are added to the result); they run while the out-projection's weight
    // gradient and the Q projection's backward compute (with --local-cross-block after the back
    // chunk's block on the front chunk's keys). One fused call on rank-major rows
    // (zigzag: reordered from global order first, or with --placed-reduce-scatter summed from
    // global order piece by piece), or (wave) one per half of the [back | front] layout, each into
    // its chunk's local rows.
    Buffer dkv_local;  // (N, 2C)
    std::array<CommHandle, 2> scatters;
    if (wave) {
      dkv_local = alloc_seq_scatter(cfg.dtype, N * 2 * C);
      const int64_t chunk = segments_[0].count * key_row, half = P_ * chunk;  // elements
      for (int s : {0, 1}) {
        CommLabel label(*ctx_.grid.seq, s == 0 ? "dK/dV reduce-scatter, back chunks" : "dK/dV reduce-scatter, front chunks");
        scatters[s] = start_seq_reduce_scatter_into(dkv_full.view().slice(s == 0 ? half : 0, half),
                                                    dkv_local.view().slice(chunk_row0(s) * key_row, chunk));
      }
    } else if (alone()) {
      dkv_local = std::move(dkv_full);
    } else {
      if (ctx_.opts.zigzag && !placed_scatter()) {
        Buffer rank_major = alloc_seq_scatter(cfg.dtype, cfg.T * Bl_ * 2 * C);  // (P*Tl*Bl, 2C)
        reorder_kv(rank_major.view(), dkv_full.view(), false);
        dkv_full = std::move(rank_major);
      }
      CommLabel label(*ctx_.grid.seq, "dK/dV reduce-scatter");
      PendingCollective scatter = placed_scatter() ? start_seq_reduce_scatter_placed(dkv_full.view(), kv_pieces())
                                                   : start_seq_reduce_scatter(dkv_full.view());
      dkv_local = std::move(scatter.out);
      scatters[0] = scatter.handle;
    }
    if (local_cross()) {
      // Beside the reduce-scatter: the back chunk's block on the front chunk's keys, whose dK/dV
      // are this rank's own rows (added to the diagonal blocks') and its dQ the back chunk's.
      const RowRange& front = segments_[0];
      Buffer dq_part = be.alloc(cfg.dtype, segments_[1].count * Bl_ * C);  // (count*Bl, C)
      Buffer dkv_cross = be.alloc(cfg.dtype, front.count * key_row);         // (count*Bl, 2C)
      AttentionArgs args = grad_args(local_cross_args(a, kv_full, front.start), row0_of[1], dq_part.ptr());
      args.dk = {dkv_cross.ptr(), 2 * C, key_row};
      args.dv = {static_cast<char*>(dkv_cross.ptr()) + C * es, 2 * C, key_row};
      be.attention_backward(args);
      add_dq(1, dq_part);
      View own = dkv_own.view().slice(0, front.count * key_row);
      be.add(own, own, dkv_cross.view());
    }
    linear_backward(be, View{}, 0.0, g.proj_w, g.proj_b, dh, a.attn_out.view(), w.proj_w, N, C, C);
    kv_full.reset();
    a.kv_local.reset();
    a.q.reset();
    a.attn_out.reset();
    a.lse.reset();
    Buffer d_ln = std::move(d_attn);  // (N, C), reused: d_attn is dead after attention backward
    linear_backward(be, d_ln.view(), 0.0, wq(g.attn_w), bq(g.attn_b), dq.view(), a.ln_out.view(), wq(w.attn_w), N, C,
                    C);
    for (CommHandle& h : scatters) wait_seq(h);
    dkv_full.reset();
    if (split() && !alone()) be.add(dkv_local.view(), dkv_local.view(), dkv_own.view());
    linear_backward(be, d_ln.view(), 1.0, wkv(g.attn_w), bkv(g.attn_b), dkv_local.view(), a.ln_out.view(),
                    wkv(w.attn_w), N, C, 2 * C);
    be.layernorm_backward(dh, g.ln1_w, g.ln1_b, d_ln.view(), h, a.mean.view(), a.rstd.view(), w.ln1_w, N, C);
  }

  const int P_;
  const int64_t Tl_, Bl_, N_;  // tokens per rank, sequences per replica, local rows Tl*Bl
  const std::vector<RowRange> segments_;  // token ranges of this rank, in local order
  ParamStore store_;
  std::vector<Layer> layers_;
  Buffer resid0_;            // (N, C) embedding output
  Buffer tokens_, targets_;  // (Tl, Bl) int32
  HeadActivations head_;
};

}  // namespace

std::unique_ptr<Strategy> make_lss_strategy(StrategyContext ctx) {
  const ModelConfig& cfg = ctx.cfg;
  LSS_REQUIRE_INPUT(cfg.T % ctx.grid.P == 0, "--seq " + std::to_string(cfg.T) + " does not divide by --sp " +
                                                 std::to_string(ctx.grid.P) + " (lss splits the sequence into P equal segments)");
  LSS_REQUIRE_INPUT(!ctx.opts.zigzag || cfg.T % (2 * ctx.grid.P) == 0,
                    "--zigzag: --seq " + std::to_string(cfg.T) + " does not divide by 2 x --sp = " +
                        std::to_string(2 * ctx.grid.P) + " (each rank holds two chunks of T/(2P))");
  // The pipeline interleaves the two zigzag chunks and reads each one's preceding keys from the
  // gathered halves as an unmasked block: it needs the chunks, the causal mask and the split blocks.
  LSS_REQUIRE_INPUT(!ctx.opts.placed_reduce_scatter || ctx.opts.zigzag,
                    "--placed-reduce-scatter needs --zigzag (the contiguous order's [dK|dV] is rank-major already)");
  // What the two options below need, as given.
  const std::string order_mask_split = std::string(ctx.opts.zigzag ? "--zigzag" : "--no-zigzag") + ", " +
                                       (cfg.causal ? "--causal" : "--no-causal") + ", " +
                                       (ctx.opts.split_causal ? "--split-causal" : "--no-split-causal");
  LSS_REQUIRE_INPUT(!ctx.opts.local_cross_block || (ctx.opts.zigzag && cfg.causal && ctx.opts.split_causal &&
                                                    !ctx.opts.chunk_pipeline),
                    "--local-cross-block needs --zigzag, a causal mask and --split-causal, without --chunk-pipeline "
                    "(given: " + order_mask_split + (ctx.opts.chunk_pipeline ? ", --chunk-pipeline" : "") + ")");
  LSS_REQUIRE_INPUT(!ctx.opts.chunk_pipeline || (ctx.opts.zigzag && cfg.causal && ctx.opts.split_causal),
                    "--chunk-pipeline needs --zigzag, a causal mask and --split-causal (given: " + order_mask_split + ")");
  return std::make_unique<LssStrategy>(ctx);
}

}  // namespace lss
