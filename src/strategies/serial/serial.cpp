#include "strategies/serial/serial.h"

#include <cmath>

#include "core/check.h"
#include "model/layers.h"

namespace lss {

namespace {

class SerialStrategy final : public Strategy {
 public:
  explicit SerialStrategy(StrategyContext ctx)
      : Strategy(ctx), store_(ctx.backend, ctx.cfg, param_specs_for(0)) {
    plan_shards();
  }

  std::string name() const override { return "serial"; }
  ParamStore& params() override { return store_; }
  std::vector<ParamSpec> param_specs_for(int) const override { return model_param_specs(ctx_.cfg); }
  CommModel expected_comm() const override { return {}; }
  nlohmann::json options_json() const override { return nlohmann::json::object(); }
  BoundModel bound_model() const override {
    BoundModel m;
    const int64_t N = ctx_.cfg.T * ctx_.cfg.B, C = ctx_.cfg.C;
    m.layer_linears = {{N, C, 3 * C}, {N, C, C, true}, {N, C, 4 * C, false, true}, {N, 4 * C, C, true, false, true}};
    m.layer_attention = {attention_shape(ctx_.cfg.B, ctx_.cfg.H, ctx_.cfg.T, ctx_.cfg.T, 0)};
    return m;
  }

  void forward(int64_t step, View loss_sum) override {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t T = cfg.T, B = cfg.B, C = cfg.C, N = T * B;
    upload_batch(step, 0, B, {{0, T}}, tokens_, targets_);

    layers_.resize(cfg.L);
    resid0_ = be.alloc(cfg.dtype, N * C);
    be.embedding_forward(resid0_.view(), tokens_.view(), store_.param("wte"),
                         store_.param("wpe").slice(0, T * C), T, B, C);
    View h = resid0_.view();
    for (int64_t l = 0; l < cfg.L; ++l) {
      Layer& a = layers_[l];
      attention_forward(layer_params(store_, l), h, a);
      a.h_out = be.alloc(cfg.dtype, N * C);
      mlp_forward(be, cfg, layer_params(store_, l), a.h_mid.view(), a.h_out.view(), a.mlp, N);
      h = a.h_out.view();
    }
    head_forward(be, cfg, store_, h, targets_.view(), head_, N, 1.0 / static_cast<double>(N), loss_sum);
  }

  void backward() override {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t T = cfg.T, B = cfg.B, C = cfg.C, N = T * B;
    Buffer dh = be.alloc(cfg.dtype, N * C);  // (N, C) gradient of the residual stream
    head_backward(be, cfg, store_, layers_.empty() ? resid0_.view() : layers_.back().h_out.view(), dh.view(),
                  head_, N);
    // The buckets' hooks: on one rank nothing is summed, but with --optimizer-in-backward each
    // bucket's parameters step there, beside the backward still to come.
    head_gradients_ready(store_);
    for (int64_t l = cfg.L - 1; l >= 0; --l) {
      Layer& a = layers_[l];
      a.h_out.reset();
      mlp_backward(be, cfg, layer_params(store_, l), layer_grads(store_, l), a.h_mid.view(), dh.view(), a.mlp, N);
      mlp_gradients_ready(store_, l);
      attention_backward(layer_params(store_, l), layer_grads(store_, l), l == 0 ? resid0_.view() : layers_[l - 1].h_out.view(),
                         dh.view(), a);
      attention_gradients_ready(store_, l);
    }
    be.embedding_backward(store_.grad("wte"), store_.grad("wpe").slice(0, T * C), dh.view(), tokens_.view(), T, B, C);
    reduce_gradients(store_);
    layers_.clear();
    resid0_.reset();
    tokens_.reset();
    targets_.reset();
  }

 private:
  struct Layer {
    Buffer ln_out;        // (N, C) LN1 output
    Buffer mean, rstd;    // (N)
    Buffer qkv;           // (N, 3C): row n = [q | k | v] of token n
    Buffer attn_out;      // (N, C)
    Buffer lse;           // (B, H, T)
    Buffer h_mid;         // (N, C) residual after attention
    MlpActivations mlp;
    Buffer h_out;         // (N, C) residual after the block
  };

  AttentionArgs attention_args(const Layer& a) const {
    return packed_qkv_attention(ctx_.cfg, ctx_.cfg.B, ctx_.cfg.H, a.qkv.ptr(), a.attn_out.ptr(), a.lse.ptr());
  }

  void attention_forward(const LayerTensors& w, View h, Layer& a) {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C, N = cfg.T * cfg.B;
    const DType st = stat_dtype(cfg.dtype);
    a.ln_out = be.alloc(cfg.dtype, N * C);
    a.mean = be.alloc(st, N);
    a.rstd = be.alloc(st, N);
    a.qkv = be.alloc(cfg.dtype, N * 3 * C);
    a.attn_out = be.alloc(cfg.dtype, N * C);
    a.lse = be.alloc(st, cfg.B * cfg.H * cfg.T);
    a.h_mid = be.alloc(cfg.dtype, N * C);
    be.layernorm_forward(a.ln_out.view(), a.mean.view(), a.rstd.view(), h, w.ln1_w, w.ln1_b, N, C, cfg.ln_eps);
    linear_forward(be, a.qkv.view(), a.ln_out.view(), w.attn_w, w.attn_b, N, C, 3 * C);
    be.attention_forward(attention_args(a));
    linear_forward(be, a.h_mid.view(), a.attn_out.view(), w.proj_w, w.proj_b, N, C, C, h);
  }

  // dh: gradient w.r.t. h_mid on entry, w.r.t. the block input h on exit.
  void attention_backward(const LayerTensors& w, const LayerTensors& g, View h, View dh, Layer& a) {
    Backend& be = ctx_.backend;
    const ModelConfig& cfg = ctx_.cfg;
    const int64_t C = cfg.C, N = cfg.T * cfg.B;
    a.h_mid.reset();
    Buffer d_attn = be.alloc(cfg.dtype, N * C);   // (N, C)
    linear_backward(be, d_attn.view(), 0.0, g.proj_w, g.proj_b, dh, a.attn_out.view(), w.proj_w, N, C, C);
    Buffer dqkv = be.alloc(cfg.dtype, N * 3 * C);  // (N, 3C), laid out as qkv
    AttentionArgs args = attention_args(a);
    set_packed_qkv_grads(args, d_attn.ptr(), dqkv.ptr());
    be.attention_backward(args);
    a.qkv.reset();
    a.attn_out.reset();
    a.lse.reset();
    Buffer d_ln = std::move(d_attn);  // (N, C), reused: d_attn is dead after attention backward
    linear_backward(be, d_ln.view(), 0.0, g.attn_w, g.attn_b, dqkv.view(), a.ln_out.view(), w.attn_w, N, C, 3 * C);
    be.layernorm_backward(dh, g.ln1_w, g.ln1_b, d_ln.view(), h, a.mean.view(), a.rstd.view(), w.ln1_w, N, C);
  }

  ParamStore store_;
  std::vector<Layer> layers_;
  Buffer resid0_;            // (N, C) embedding output
  Buffer tokens_, targets_;  // (N) int32
  HeadActivations head_;
};

}  // namespace

std::unique_ptr<Strategy> make_serial_strategy(StrategyContext ctx) {
  LSS_REQUIRE_INPUT(ctx.grid.world == 1, "--strategy serial runs on one rank; the launcher started " +
                                             std::to_string(ctx.grid.world) + " (use lss or megatron_sp)");
  return std::make_unique<SerialStrategy>(ctx);
}

}  // namespace lss
