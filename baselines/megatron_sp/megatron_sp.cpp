#include "baselines/megatron_sp/megatron_sp.h"

#include <cmath>
#include <functional>

#include "core/check.h"
#include "model/layers.h"

namespace lss {

namespace {

class MegatronSpStrategy final : public Strategy {
 public:
  explicit MegatronSpStrategy(StrategyContext ctx)
      : Strategy(ctx),
        P_(ctx.grid.P),
        Tl_(ctx.cfg.T / ctx.grid.P),
        Bl_(ctx.cfg.B / ctx.grid.R),
        N_(Tl_ * Bl_),
        NF_(ctx.cfg.T * Bl_),
        Cl_(ctx.cfg.C / ctx.grid.P),
        Hl_(ctx.cfg.H / ctx.grid.P),
        scatter_chunks_(scatter_chunks_for(ctx.opts.scatter_chunks, N_)),
        store_(ctx.backend, ctx.cfg, param_specs_for(ctx.grid.p)) {
    plan_shards();
  }

  std::string name() const override { return "megatron_sp"; }
  ParamStore& params() override { return store_; }
  nlohmann::json options_json() const override {
    return {{"regather_ln", ctx_.opts.regather_ln},
            {"scatter_chunks", scatter_chunks_},
            {"recompute", ctx_.opts.recompute},
            {"distributed_optimizer", sharded()},
            {"grad_reduce_dtype", dtype_name(gradient_wire_dtype(ctx_.cfg, ctx_.opts))},
            {"overlap", ctx_.opts.overlap}};
  }

  std::vector<ParamSpec> param_specs_for(int p) const override {
    const int64_t C = ctx_.cfg.C;
    auto specs = model_param_specs(ctx_.cfg);
    for (auto& s : specs) {
      auto ends_with = [&](const char* suffix) {
        const std::string x(suffix);
        return s.name.size() >= x.size() && s.name.compare(s.name.size() - x.size(), x.size(), x) == 0;
      };
      if (ends_with("attn.c_attn.weight") || ends_with("attn.c_attn.bias")) {
        // Column-parallel QKV: the Q, K and V rows of this rank's H/P heads.
        s.row_ranges = {{p * Cl_, Cl_}, {C + p * Cl_, Cl_}, {2 * C + p * Cl_, Cl_}};
        s.seq_reduced = false;
      } else if (ends_with("mlp.c_fc.weight") || ends_with("mlp.c_fc.bias")) {
        s.row_ranges = {{p * 4 * Cl_, 4 * Cl_}};
        s.seq_reduced = false;
      } else if (ends_with("attn.c_proj.weight")) {
        // Row-parallel (in torch's (out, in) storage: a block of input columns).
        s.col_start = p * Cl_;
        s.col_count = Cl_;
        s.seq_reduced = false;
      } else if (ends_with("mlp.c_proj.weight")) {
        s.col_start = p * 4 * Cl_;
        s.col_count = 4 * Cl_;
        s.seq_reduced = false;
      } else if (s.name == "wpe") {
        // Each rank reads only the positional rows of its own T/P tokens, so it owns them, as lss's
        // ranks do: their gradient needs no sum over the tensor group (Megatron-LM has none either:
        // its ranks add the table on all T rows before the scatter into the sequence-parallel
        // region). The last rank also owns the unused tail [T, T_max), so that every row decays
        // exactly as in serial.
        s.row_ranges = {{p * Tl_, Tl_}};
        if (p == P_ - 1 && ctx_.cfg.T_max > ctx_.cfg.T) s.row_ranges.push_back({ctx_.cfg.T, ctx_.cfg.T_max - ctx_.cfg.T});
        s.seq_reduced = false;
      }
      // Everything else (token embedding, LayerNorms, row-parallel biases, LM head) is replicated
      // and its gradient summed over the tensor group.
    }
    return specs;
  }

  CommModel expected_comm() const override {
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t es = static_cast<int64_t>(dtype_size(cfg.dtype));                 // activations
    const int64_t full = cfg.T * Bl_ * cfg.C * es;  // one (T, B/R, C) activation
    const int P = ctx_.grid.P;
    CommModel m;
    // Forward: 2 all-gathers + 2 reduce-scatters per layer; backward mirrors them (the gradient
    // of a reduce-scatter is an all-gather and vice versa), plus 2 re-gathers of LN outputs.
    // With recomputation the block's forward runs twice (2 + 2 more per layer) and the recomputed
    // LayerNorm gathers are kept, so nothing is re-gathered.
    const int64_t gathers = ctx_.opts.recompute ? 6 : (ctx_.opts.regather_ln ? 6 : 4);
    expect_calls(m, "sp", P, CollKind::all_gather, cfg.L * gathers, full);
    // The forward's reduce-scatters run in scatter_chunks_ calls of 1/scatter_chunks_ of the rows each.
    const int64_t forwards = ctx_.opts.recompute ? 2 : 1;
    expect_calls(m, "sp", P, CollKind::reduce_scatter, cfg.L * 2 * forwards * scatter_chunks_, full / scatter_chunks_);
    expect_calls(m, "sp", P, CollKind::reduce_scatter, cfg.L * 2, full);
    // The replicated gradients' sums per bucket (head, each layer, embeddings), then the data group's.
    expect_gradient_comm(m, store_);
    return m;
  }

  BoundModel bound_model() const override {
    const ModelConfig& cfg = ctx_.cfg;
    const double NF = static_cast<double>(NF_), C = static_cast<double>(cfg.C), Cl = static_cast<double>(Cl_);
    BoundModel m;
    // Its residual adds follow the row-parallel layers' reduce-scatters: separate kernels. The
    // column-parallel layers' forward runs on the rank's own rows beside their gather, then on the
    // rows before and after them (gather_rows_beside): 2 GEMMs on the first and last rank, 3 on the
    // others (priced as that many equal parts). The backward's data gradients beside the output
    // gradient's gathers are split the same way, priced whole. The row-parallel layers' forward runs as
    // scatter_chunks_ chunks of every rank's rows (gemm_scatter_rows): P x scatter_chunks_ parts
    // (one GEMM with one chunk).
    const int64_t parts = P_ == 1 ? 1 : (ctx_.grid.p == 0 || ctx_.grid.p == P_ - 1 ? 2 : 3);
    const int64_t row_parts = scatter_chunks_ == 1 ? 1 : P_ * scatter_chunks_;
    m.layer_linears = {{NF_, cfg.C, 3 * Cl_, false, false, false, parts},
                       {NF_, Cl_, cfg.C, false, false, false, row_parts},
                       {NF_, cfg.C, 4 * Cl_, false, true, false, parts},
                       {NF_, 4 * Cl_, cfg.C, false, false, true, row_parts}};
    m.residual_adds = 2;
    m.layer_attention = {attention_shape(Bl_, Hl_, cfg.T, cfg.T, 0)};
    if (P_ > 1) {
      const int64_t full = cfg.T * Bl_ * cfg.C * static_cast<int64_t>(dtype_size(cfg.dtype));
      const int64_t L = cfg.L;
      const double qkv = 2 * NF * C * 3 * Cl, fc = 2 * NF * C * 4 * Cl;  // one GEMM of each column-parallel layer
      const double proj = qkv / 3, fc2 = fc;                               // and of each row-parallel layer
      const int64_t k = scatter_chunks_;
      // Each gather runs beside its GEMM on the rank's own rows (1/P of the rows).
      const double own = 1.0 / P_;
      const auto add_forward = [&](const std::string& pass) {
        m.comm.push_back({"LN-output all-gather beside the QKV GEMM on the own rows, " + pass, "sp",
                          CollKind::all_gather, full, L, own * qkv});
        m.comm.push_back({"LN-output all-gather beside the MLP-up GEMM on the own rows, " + pass, "sp",
                          CollKind::all_gather, full, L, own * fc});
        // Each chunk's reduce-scatter beside the next chunk's GEMM; the last one's beside nothing.
        if (k > 1) {
          m.comm.push_back({"out-projection reduce-scatter beside the next chunk's GEMM, " + pass, "sp",
                            CollKind::reduce_scatter, full / k, (k - 1) * L, proj / k});
          m.comm.push_back({"MLP-down reduce-scatter beside the next chunk's GEMM, " + pass, "sp",
                            CollKind::reduce_scatter, full / k, (k - 1) * L, fc2 / k});
        }
        m.comm.push_back({k > 1 ? "row-parallel reduce-scatter, last chunk, " + pass : "row-parallel reduce-scatter, " + pass,
                          "sp", CollKind::reduce_scatter, full / k, 2 * L, 0.0});
      };
      add_forward("forward");
      if (ctx_.opts.recompute) add_forward("recomputed forward");
      // Backward's gathers of the output gradient beside the data gradient on the own rows (the
      // MLP-down layer's: as many FLOPs as the MLP-up GEMM; the out projection's: a third of QKV's).
      m.comm.push_back({"output-gradient all-gather beside the MLP-down data gradient on the own rows", "sp",
                        CollKind::all_gather, full, L, own * fc});
      m.comm.push_back({"output-gradient all-gather beside the out-projection data gradient on the own rows", "sp",
                        CollKind::all_gather, full, L, own * qkv / 3});
      if (ctx_.opts.regather_ln && !ctx_.opts.recompute) {
        m.comm.push_back({"LN-output re-gather beside the QKV data gradient", "sp", CollKind::all_gather, full, L, qkv});
        m.comm.push_back({"LN-output re-gather beside the MLP-up data gradient", "sp", CollKind::all_gather, full, L, fc});
      }
      m.comm.push_back({"input-gradient reduce-scatter beside the QKV weight gradient", "sp", CollKind::reduce_scatter,
                        full, L, qkv});
      m.comm.push_back({"input-gradient reduce-scatter beside the MLP-up weight gradient", "sp",
                        CollKind::reduce_scatter, full, L, fc});
    }
    add_gradient_bounds(m, store_, 48 * NF * C * Cl);
    return m;
  }

  void forward(int64_t step, View loss_sum) override {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C, N = N_;
    upload_batch(step, ctx_.grid.r * Bl_, Bl_, {{ctx_.grid.p * Tl_, Tl_}}, tokens_, targets_);
    resid0_ = be.alloc(cfg.dtype, N * C);
    // The rank's own positional rows come first in its wpe.
    params_needed("embed");
    be.embedding_forward(resid0_.view(), tokens_.view(), store_.param("wte"), store_.param("wpe").slice(0, Tl_ * C),
                         Tl_, Bl_, C);
    layers_.resize(cfg.L);
    View h = resid0_.view();
    for (int64_t l = 0; l < cfg.L; ++l) {
      Layer& a = layers_[l];
      block_forward(l, h, a, !ctx_.opts.regather_ln);
      // Activation checkpointing: keep only the block's output (the next block's input).
      if (ctx_.opts.recompute) {
        Buffer out = std::move(a.h_out);
        a = Layer{};
        a.h_out = std::move(out);
      }
      h = a.h_out.view();
    }
    params_needed("head");
    head_forward(be, cfg, store_, h, targets_.view(), head_, N, 1.0 / static_cast<double>(cfg.B * cfg.T), loss_sum);
  }

  void backward() override {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C, N = N_;
    Buffer dh = be.alloc_symmetric(cfg.dtype, N * C);  // (N, C) gradient of the local rows of the residual stream; all-gathered
    head_backward(be, cfg, store_, layers_.empty() ? resid0_.view() : layers_.back().h_out.view(), dh.view(), head_, N);
    head_gradients_ready(store_);
    for (int64_t l = cfg.L - 1; l >= 0; --l) {
      Layer& a = layers_[l];
      if (ctx_.opts.recompute) {
        // The recomputed forward's gathered LayerNorm outputs are kept for this block's backward.
        a = Layer{};
        block_forward(l, l == 0 ? resid0_.view() : layers_[l - 1].h_out.view(), a, /*keep_ln=*/true);
      }
      a.h_out.reset();
      const LayerTensors w = layer_params(store_, l), g = layer_grads(store_, l);
      mlp_backward(w, g, dh.view(), a);
      mlp_gradients_ready(store_, l);
      attention_backward(w, g, l == 0 ? resid0_.view() : layers_[l - 1].h_out.view(), dh.view(), a);
      attention_gradients_ready(store_, l);
    }
    be.embedding_backward(store_.grad("wte"), store_.grad("wpe").slice(0, Tl_ * C), dh.view(),
                          tokens_.view(), Tl_, Bl_, C);
    layers_.clear();
    resid0_.reset();
    tokens_.reset();
    targets_.reset();
    reduce_gradients(store_);
  }

 private:
  struct Layer {
    Buffer ln1_out, ln1_mean, ln1_rstd;  // (N, C), (N), (N) local rows
    Buffer ln1_full;                     // (T*Bl, C) gathered LN1 output (only without regather_ln)
    Buffer qkv;                          // (T*Bl, 3C/P): [q | k | v] of the local heads
    Buffer attn_out;                     // (T*Bl, C/P)
    Buffer lse;                          // (Bl, H/P, T)
    Buffer h_mid;                        // (N, C)
    Buffer ln2_out, ln2_mean, ln2_rstd;  // (N, C), (N), (N)
    Buffer ln2_full;                     // (T*Bl, C) (only without regather_ln)
    Buffer fc, act;                      // (T*Bl, 4C/P) pre- and post-GELU
    Buffer h_out;                        // (N, C)
  };

  // One block from its input h; keep_ln keeps the gathered LayerNorm outputs for backward.
  void block_forward(int64_t l, View h, Layer& a, bool keep_ln) {
    // The replicated LayerNorms and biases: small, each half prefetched at the other's start.
    params_needed(attention_key(l));
    prefetch_params(mlp_key(l));
    const LayerTensors w = layer_params(store_, l);
    attention_forward(w, h, a, keep_ln);
    a.h_out = ctx_.backend.alloc(ctx_.cfg.dtype, N_ * ctx_.cfg.C);
    params_needed(mlp_key(l));
    prefetch_params(attention_key(l + 1));
    mlp_forward(w, a.h_mid.view(), a.h_out.view(), a, keep_ln);
  }

  // At P = 1 the local rows are all T rows and a partial sum is the sum: the gathers and
  // reduce-scatters would only copy (1.9% of the step at T = 16K on an H200; PERFORMANCE.md,
  // twenty-seventh session), so they hand over their input instead, as serial's step has none.
  bool alone() const { return P_ == 1; }
  // All-gathers local rows (N, width) into all T*Bl rows and runs `gemm` on every row beside it, as
  // Megatron-LM's --tp-comm-overlap runs a column-parallel layer's GEMM beside its all-gather: first
  // on this rank's own rows, which are its local input and need no gather, while the gather is in
  // flight, then on the rows before and after them once it has landed. gemm(x, row0, rows) computes
  // the output rows [row0, row0 + rows) from x, those input rows. Returns the gathered rows
  // (alone: the local rows themselves, after one GEMM on them).
  Buffer gather_rows_beside(View local, int64_t width, const std::function<void(View, int64_t, int64_t)>& gemm) {
    if (alone()) {
      gemm(local, 0, N_);
      return Buffer::borrowed(local);
    }
    CommLabel label(*ctx_.grid.seq, "sequence all-gather");
    PendingCollective g = start_seq_all_gather(local);
    const int64_t own = ctx_.grid.p * N_, after = own + N_;
    gemm(local, own, N_);
    Buffer full = finish(g);
    if (own > 0) gemm(full.view().slice(0, own * width), 0, own);
    if (after < NF_) gemm(full.view().slice(after * width, (NF_ - after) * width), after, NF_ - after);
    return full;
  }
  // A row-parallel layer's forward: runs `gemm` on all T*Bl rows and sums its (T*Bl, C) partial
  // result over the tensor group into this rank's N rows, as Transformer Engine's pipelined
  // reduce-scatter overlap does: in scatter_chunks_ chunks of N/scatter_chunks_ rows of every rank,
  // each chunk's GEMMs (one per rank's rows) then its reduce-scatter, which runs beside the next
  // chunk's GEMMs. gemm(out, row0, rows) writes the partial sums of output rows [row0, row0 + rows)
  // into out (rows, C).
  Buffer gemm_scatter_rows(const std::function<void(View, int64_t, int64_t)>& gemm) {
    Backend& be = ctx_.backend;
    const int64_t C = ctx_.cfg.C, rows = N_ / scatter_chunks_;
    if (alone()) {
      Buffer out = be.alloc(ctx_.cfg.dtype, N_ * C);  // (N, C): the sums themselves
      gemm(out.view(), 0, N_);
      return out;
    }
    // (scatter_chunks, P, N/scatter_chunks, C): chunk i's rows of rank q at [i][q], so that each
    // chunk is one reduce-scatter's input.
    Buffer partial = alloc_seq_scatter(ctx_.cfg.dtype, NF_ * C);
    Buffer local = alloc_seq_scatter(ctx_.cfg.dtype, N_ * C);  // (N, C) this rank's rows, summed
    CommLabel label(*ctx_.grid.seq, "sequence reduce-scatter");
    if (scatter_chunks_ == 1) {
      // One chunk is the (T*Bl, C) rows in their order: one GEMM on all of them.
      gemm(partial.view(), 0, NF_);
      CommHandle h = start_seq_reduce_scatter_into(partial.view(), local.view());
      wait_seq(h);
      return local;
    }
    std::vector<CommHandle> scatters(static_cast<size_t>(scatter_chunks_));
    for (int64_t i = 0; i < scatter_chunks_; ++i) {
      View chunk = partial.view().slice(i * P_ * rows * C, P_ * rows * C);
      for (int q = 0; q < P_; ++q) gemm(chunk.slice(q * rows * C, rows * C), q * N_ + i * rows, rows);
      scatters[static_cast<size_t>(i)] = start_seq_reduce_scatter_into(chunk, local.view().slice(i * rows * C, rows * C));
    }
    for (CommHandle& h : scatters) wait_seq(h);
    return local;
  }
  // Backward of a column-parallel linear layer y (T*Bl, out) = x W^T + b on gathered input rows,
  // as Megatron-LM overlaps it: the re-gather of x (unless kept) runs during the data-gradient
  // GEMM, and the reduce-scatter of that gradient during the weight-gradient GEMM. Returns the
  // summed input gradient of this rank's T/P rows.
  Buffer column_parallel_backward(Buffer& x_full, View x_local, View dy, View W, View dW, View db, int64_t in,
                                  int64_t out) {
    Backend& be = ctx_.backend;
    PendingCollective regather;
    if (!x_full && !alone()) {
      CommLabel label(*ctx_.grid.seq, "sequence re-gather, backward");
      regather = start_seq_all_gather(x_local);
    }
    // (T*Bl, in) partial sums over the tensor group
    Buffer dx_full = alloc_seq_scatter(ctx_.cfg.dtype, NF_ * in);
    linear_backward(be, dx_full.view(), 0.0, View{}, View{}, dy, View{}, W, NF_, in, out);
    if (!x_full) x_full = alone() ? Buffer::borrowed(x_local) : finish(regather);
    PendingCollective dx;
    if (!alone()) {
      CommLabel label(*ctx_.grid.seq, "input-gradient reduce-scatter");
      dx = start_seq_reduce_scatter(dx_full.view());
    }
    linear_backward(be, View{}, 0.0, dW, db, dy, x_full.view(), W, NF_, in, out);
    x_full.reset();
    if (alone()) return dx_full;
    Buffer dx_local = finish(dx);
    dx_full.reset();
    return dx_local;
  }
  // A row-parallel bias is added once: by tensor rank 0, before the reduce-scatter sums the parts.
  View row_parallel_bias(View b) const { return ctx_.grid.p == 0 ? b : View{}; }

  AttentionArgs attention_args(const Layer& a) const {
    return packed_qkv_attention(ctx_.cfg, Bl_, Hl_, a.qkv.ptr(), a.attn_out.ptr(), a.lse.ptr());
  }

  void attention_forward(const LayerTensors& w, View h, Layer& a, bool keep_ln) {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C, N = N_, NF = NF_;
    const DType st = stat_dtype(cfg.dtype);
    a.ln1_out = be.alloc_symmetric(cfg.dtype, N * C);  // all-gathered
    a.ln1_mean = be.alloc(st, N);
    a.ln1_rstd = be.alloc(st, N);
    be.layernorm_forward(a.ln1_out.view(), a.ln1_mean.view(), a.ln1_rstd.view(), h, w.ln1_w, w.ln1_b, N, C, cfg.ln_eps);
    a.qkv = be.alloc(cfg.dtype, NF * 3 * Cl_);
    Buffer ln_full = gather_rows_beside(a.ln1_out.view(), C, [&](View x, int64_t row0, int64_t rows) {
      linear_forward(be, a.qkv.view().slice(row0 * 3 * Cl_, rows * 3 * Cl_), x, w.attn_w, w.attn_b, rows, C, 3 * Cl_);
    });
    if (keep_ln) a.ln1_full = std::move(ln_full);
    ln_full.reset();
    a.attn_out = be.alloc(cfg.dtype, NF * Cl_);
    a.lse = be.alloc(st, Bl_ * Hl_ * cfg.T);
    be.attention_forward(attention_args(a));
    a.h_mid = gemm_scatter_rows([&](View out, int64_t row0, int64_t rows) {
      linear_forward(be, out, a.attn_out.view().slice(row0 * Cl_, rows * Cl_), w.proj_w, row_parallel_bias(w.proj_b),
                     rows, Cl_, C);
    });
    be.add(a.h_mid.view(), a.h_mid.view(), h);
  }

  void mlp_forward(const LayerTensors& w, View h_in, View h_out, Layer& a, bool keep_ln) {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C, N = N_, NF = NF_;
    const DType st = stat_dtype(cfg.dtype);
    a.ln2_out = be.alloc_symmetric(cfg.dtype, N * C);  // all-gathered
    a.ln2_mean = be.alloc(st, N);
    a.ln2_rstd = be.alloc(st, N);
    be.layernorm_forward(a.ln2_out.view(), a.ln2_mean.view(), a.ln2_rstd.view(), h_in, w.ln2_w, w.ln2_b, N, C, cfg.ln_eps);
    a.fc = be.alloc(cfg.dtype, NF * 4 * Cl_);
    a.act = be.alloc(cfg.dtype, NF * 4 * Cl_);
    Buffer ln_full = gather_rows_beside(a.ln2_out.view(), C, [&](View x, int64_t row0, int64_t rows) {
      linear_gelu_forward(be, a.act.view().slice(row0 * 4 * Cl_, rows * 4 * Cl_),
                          a.fc.view().slice(row0 * 4 * Cl_, rows * 4 * Cl_), x, w.fc_w, w.fc_b, rows, C, 4 * Cl_);
    });
    if (keep_ln) a.ln2_full = std::move(ln_full);
    ln_full.reset();
    Buffer y = gemm_scatter_rows([&](View out, int64_t row0, int64_t rows) {
      linear_forward(be, out, a.act.view().slice(row0 * 4 * Cl_, rows * 4 * Cl_), w.fc2_w, row_parallel_bias(w.fc2_b),
                     rows, 4 * Cl_, C);
    });
    be.add(h_out, y.view(), h_in);
  }

  // dh: gradient w.r.t. h_out on entry, w.r.t. h_mid on exit.
  void mlp_backward(const LayerTensors& w, const LayerTensors& g, View dh, Layer& a) {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C, N = N_, NF = NF_;
    be.bias_grad(g.fc2_b, dh, N, C);
    Buffer d_act = be.alloc(cfg.dtype, NF * 4 * Cl_);  // (T*Bl, 4C/P)
    // The data gradient beside the output gradient's gather, then the weight gradient on all rows.
    Buffer dy_full = gather_rows_beside(dh, C, [&](View dy, int64_t row0, int64_t rows) {  // (T*Bl, C)
      linear_backward(be, d_act.view().slice(row0 * 4 * Cl_, rows * 4 * Cl_), 0.0, View{}, View{}, dy, View{}, w.fc2_w,
                      rows, 4 * Cl_, C, a.fc.view().slice(row0 * 4 * Cl_, rows * 4 * Cl_));
    });
    linear_backward(be, View{}, 0.0, g.fc2_w, View{}, dy_full.view(), a.act.view(), w.fc2_w, NF, 4 * Cl_, C);
    dy_full.reset();
    a.act.reset();
    a.fc.reset();
    Buffer d_ln = column_parallel_backward(a.ln2_full, a.ln2_out.view(), d_act.view(), w.fc_w, g.fc_w, g.fc_b, C,
                                           4 * Cl_);  // (N, C)
    d_act.reset();
    be.layernorm_backward(dh, g.ln2_w, g.ln2_b, d_ln.view(), a.h_mid.view(), a.ln2_mean.view(), a.ln2_rstd.view(),
                          w.ln2_w, N, C);
    a.ln2_out.reset();
    a.ln2_mean.reset();
    a.ln2_rstd.reset();
  }

  // dh: gradient w.r.t. h_mid on entry, w.r.t. the block input h on exit.
  void attention_backward(const LayerTensors& w, const LayerTensors& g, View h, View dh, Layer& a) {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C, N = N_, NF = NF_;
    a.h_mid.reset();
    be.bias_grad(g.proj_b, dh, N, C);
    Buffer d_attn = be.alloc(cfg.dtype, NF * Cl_);  // (T*Bl, C/P)
    Buffer dy_full = gather_rows_beside(dh, C, [&](View dy, int64_t row0, int64_t rows) {  // (T*Bl, C)
      linear_backward(be, d_attn.view().slice(row0 * Cl_, rows * Cl_), 0.0, View{}, View{}, dy, View{}, w.proj_w, rows,
                      Cl_, C);
    });
    linear_backward(be, View{}, 0.0, g.proj_w, View{}, dy_full.view(), a.attn_out.view(), w.proj_w, NF, Cl_, C);
    dy_full.reset();
    Buffer dqkv = be.alloc(cfg.dtype, NF * 3 * Cl_);  // (T*Bl, 3C/P), laid out as qkv
    AttentionArgs args = attention_args(a);
    set_packed_qkv_grads(args, d_attn.ptr(), dqkv.ptr());
    be.attention_backward(args);
    d_attn.reset();
    a.qkv.reset();
    a.attn_out.reset();
    a.lse.reset();
    Buffer d_ln = column_parallel_backward(a.ln1_full, a.ln1_out.view(), dqkv.view(), w.attn_w, g.attn_w, g.attn_b,
                                           C, 3 * Cl_);  // (N, C)
    dqkv.reset();
    be.layernorm_backward(dh, g.ln1_w, g.ln1_b, d_ln.view(), h, a.ln1_mean.view(), a.ln1_rstd.view(), w.ln1_w, N, C);
  }

  // --scatter-chunks resolved for a rank's N rows (0: by size; StrategyOptions::scatter_chunks).
  static int64_t scatter_chunks_for(int64_t asked, int64_t N) {
    if (asked > 0) return asked;
    for (int64_t k : {4, 2})
      if (N % k == 0 && N / k >= 4096) return k;
    return 1;
  }

  const int P_;
  const int64_t Tl_, Bl_, N_, NF_, Cl_, Hl_;  // local rows N = Tl*Bl, full rows NF = T*Bl
  const int64_t scatter_chunks_;              // chunks of the row-parallel layers' forward
  ParamStore store_;
  std::vector<Layer> layers_;
  Buffer resid0_;            // (N, C)
  Buffer tokens_, targets_;  // (Tl, Bl) int32
  HeadActivations head_;
};

}  // namespace

std::unique_ptr<Strategy> make_megatron_sp_strategy(StrategyContext ctx) {
  const ModelConfig& cfg = ctx.cfg;
  const int P = ctx.grid.P;
  LSS_REQUIRE_INPUT(cfg.H % P == 0, "--heads " + std::to_string(cfg.H) + " does not divide by --sp " +
                                        std::to_string(P) + " (megatron_sp gives each tensor rank H/P whole heads)");
  LSS_REQUIRE_INPUT(cfg.T % P == 0, "--seq " + std::to_string(cfg.T) + " does not divide by --sp " + std::to_string(P) +
                                        " (megatron_sp's LayerNorm regions hold T/P rows)");
  const int64_t k = ctx.opts.scatter_chunks, rows = cfg.T / P * (cfg.B / ctx.grid.R);
  LSS_REQUIRE_INPUT(k == 0 || rows % k == 0,
                    "--scatter-chunks " + std::to_string(k) + " does not divide the " + std::to_string(rows) +
                        " rows each rank holds (T/P x B/R = " + std::to_string(cfg.T / P) + " x " +
                        std::to_string(cfg.B / ctx.grid.R) + ")");
  return std::make_unique<MegatronSpStrategy>(ctx);
}

}  // namespace lss
