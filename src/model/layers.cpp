#include "model/layers.h"

#include <cmath>
#include <string>

#include "core/check.h"

namespace lss {

namespace {
LayerTensors layer_views(const ParamStore& store, int64_t l, bool grads) {
  const std::string p = "h." + std::to_string(l) + ".";
  auto get = [&](const char* n) { return grads ? store.grad(p + n) : store.param(p + n); };
  return {get("ln_1.weight"),       get("ln_1.bias"),        get("attn.c_attn.weight"),
          get("attn.c_attn.bias"),  get("attn.c_proj.weight"), get("attn.c_proj.bias"),
          get("ln_2.weight"),       get("ln_2.bias"),        get("mlp.c_fc.weight"),
          get("mlp.c_fc.bias"),     get("mlp.c_proj.weight"), get("mlp.c_proj.bias")};
}
}  // namespace

LayerTensors layer_params(const ParamStore& store, int64_t l) { return layer_views(store, l, false); }
LayerTensors layer_grads(const ParamStore& store, int64_t l) { return layer_views(store, l, true); }

namespace {
GemmArgs linear_forward_args(View y, View x, View W, View b, int64_t N, int64_t in, int64_t out) {
  GemmArgs g;
  g.dtype = x.dtype;
  g.c_dtype = y.dtype;
  g.trans_a = false;
  g.trans_b = true;
  g.m = N;
  g.n = out;
  g.k = in;
  g.a = x.ptr;
  g.lda = in;
  g.b = W.ptr;
  g.ldb = in;
  g.c = y.ptr;
  g.ldc = out;
  g.bias = b.numel ? b.ptr : nullptr;
  return g;
}

// A fusion's extra operand must cover the GEMM's (rows, cols) matrix.
void check_operand(const View& v, int64_t rows, int64_t cols, const char* what) {
  LSS_CHECK(v.numel == rows * cols, std::string(what) + " of " + std::to_string(v.numel) + " elements for a (" +
                                        std::to_string(rows) + ", " + std::to_string(cols) + ") matrix");
}
}  // namespace

void linear_forward(Backend& be, View y, View x, View W, View b, int64_t N, int64_t in, int64_t out, View residual) {
  GemmArgs g = linear_forward_args(y, x, W, b, N, in, out);
  if (residual.numel) {
    check_operand(residual, N, out, "linear_forward: residual");
    g.c_in = residual.ptr;
    g.beta = 1.0;
  }
  be.gemm(g);
}

void linear_gelu_forward(Backend& be, View act, View pre, View x, View W, View b, int64_t N, int64_t in,
                         int64_t out) {
  check_operand(pre, N, out, "linear_gelu_forward: pre-activation");
  GemmArgs g = linear_forward_args(act, x, W, b, N, in, out);
  g.epilogue = GemmEpilogue::gelu;
  g.aux = pre.ptr;
  be.gemm(g);
}

void linear_backward(Backend& be, View dx, double dx_beta, View dW, View db, View dy, View x, View W,
                     int64_t N, int64_t in, int64_t out, View gelu_pre) {
  if (dW.numel) {
    GemmArgs gw;  // dW (out, in) += dy^T (out x N) x (N x in)
    gw.dtype = dy.dtype;
    gw.c_dtype = dW.dtype;
    gw.trans_a = true;
    gw.m = out;
    gw.n = in;
    gw.k = N;
    gw.a = dy.ptr;
    gw.lda = out;
    gw.b = x.ptr;
    gw.ldb = in;
    gw.c = dW.ptr;
    gw.ldc = in;
    gw.beta = 1.0;
    be.gemm(gw);
  }
  if (db.numel) be.bias_grad(db, dy, N, out);
  if (dx.numel) {
    GemmArgs gx;  // dx (N, in) = dy (N x out) W (out x in)
    gx.dtype = dy.dtype;
    gx.c_dtype = dx.dtype;
    gx.m = N;
    gx.n = in;
    gx.k = out;
    gx.a = dy.ptr;
    gx.lda = out;
    gx.b = W.ptr;
    gx.ldb = in;
    gx.c = dx.ptr;
    gx.ldc = in;
    gx.beta = dx_beta;
    if (gelu_pre.numel) {
      check_operand(gelu_pre, N, in, "linear_backward: gelu_pre");
      LSS_CHECK(dx_beta == 0.0, "linear_backward: gelu_pre with dx_beta " + std::to_string(dx_beta) + " (must be 0)");
      gx.epilogue = GemmEpilogue::gelu_backward;
      gx.aux = gelu_pre.ptr;
    }
    be.gemm(gx);
  }
}

AttentionArgs packed_qkv_attention(const ModelConfig& cfg, int64_t B, int64_t H, void* qkv, void* out, void* lse) {
  const int64_t W = H * cfg.D();
  AttentionArgs args;
  args.dtype = cfg.dtype;
  args.B = B;
  args.H = H;
  args.D = cfg.D();
  args.Tq = args.Tk = cfg.T;
  args.causal = cfg.causal;
  args.scale = 1.0 / std::sqrt(static_cast<double>(cfg.D()));
  auto* p = static_cast<char*>(qkv);
  const int64_t es = static_cast<int64_t>(dtype_size(cfg.dtype));
  args.q = {p, 3 * W, B * 3 * W};
  args.k = {p + W * es, 3 * W, B * 3 * W};
  args.v = {p + 2 * W * es, 3 * W, B * 3 * W};
  args.out = {out, W, B * W};
  args.lse = lse;
  return args;
}

void set_packed_qkv_grads(AttentionArgs& args, void* dout, void* dqkv) {
  const int64_t W = args.H * args.D, B = args.B;
  auto* d = static_cast<char*>(dqkv);
  const int64_t es = static_cast<int64_t>(dtype_size(args.dtype));
  args.dout = {dout, W, B * W};
  args.dq = {d, 3 * W, B * 3 * W};
  args.dk = {d + W * es, 3 * W, B * 3 * W};
  args.dv = {d + 2 * W * es, 3 * W, B * 3 * W};
}

void mlp_forward(Backend& be, const ModelConfig& cfg, const LayerTensors& w, View h_in, View h_out,
                 MlpActivations& a, int64_t N) {
  mlp_allocate(be, cfg, a, N);
  mlp_forward_rows(be, cfg, w, h_in, h_out, a, 0, N);
}

void mlp_allocate(Backend& be, const ModelConfig& cfg, MlpActivations& a, int64_t N) {
  const int64_t C = cfg.C;
  const DType st = stat_dtype(cfg.dtype);
  a.ln_out = be.alloc(cfg.dtype, N * C);
  a.mean = be.alloc(st, N);
  a.rstd = be.alloc(st, N);
  a.fc = be.alloc(cfg.dtype, N * 4 * C);
  a.act = be.alloc(cfg.dtype, N * 4 * C);
}

void mlp_forward_rows(Backend& be, const ModelConfig& cfg, const LayerTensors& w, View h_in, View h_out,
                      MlpActivations& a, int64_t row0, int64_t rows) {
  const int64_t C = cfg.C;
  const View in = h_in.slice(row0 * C, rows * C), out = h_out.slice(row0 * C, rows * C);
  const View ln = a.ln_out.view().slice(row0 * C, rows * C);
  const View fc = a.fc.view().slice(row0 * 4 * C, rows * 4 * C), act = a.act.view().slice(row0 * 4 * C, rows * 4 * C);
  be.layernorm_forward(ln, a.mean.view().slice(row0, rows), a.rstd.view().slice(row0, rows), in, w.ln2_w, w.ln2_b,
                       rows, C, cfg.ln_eps);
  linear_gelu_forward(be, act, fc, ln, w.fc_w, w.fc_b, rows, C, 4 * C);
  linear_forward(be, out, act, w.fc2_w, w.fc2_b, rows, 4 * C, C, in);
}

void mlp_backward(Backend& be, const ModelConfig& cfg, const LayerTensors& w, const LayerTensors& g,
                  View h_in, View dh, MlpActivations& a, int64_t N) {
  const int64_t C = cfg.C;
  // The gradient w.r.t. the pre-activation, through gelu in the data-gradient GEMM's epilogue.
  Buffer d_act = be.alloc(cfg.dtype, N * 4 * C);  // (N, 4C)
  linear_backward(be, d_act.view(), 0.0, g.fc2_w, g.fc2_b, dh, a.act.view(), w.fc2_w, N, 4 * C, C, a.fc.view());
  a.act.reset();
  a.fc.reset();
  Buffer d_ln = be.alloc(cfg.dtype, N * C);  // (N, C)
  linear_backward(be, d_ln.view(), 0.0, g.fc_w, g.fc_b, d_act.view(), a.ln_out.view(), w.fc_w, N, C, 4 * C);
  d_act.reset();
  be.layernorm_backward(dh, g.ln2_w, g.ln2_b, d_ln.view(), h_in, a.mean.view(), a.rstd.view(), w.ln2_w, N, C);
  a = MlpActivations{};
}

void head_forward(Backend& be, const ModelConfig& cfg, const ParamStore& store, View h, View targets,
                  HeadActivations& a, int64_t N, double grad_scale, View loss_sum) {
  const int64_t C = cfg.C, V = cfg.V;
  const DType st = stat_dtype(cfg.dtype);
  a.ln_out = be.alloc(cfg.dtype, N * C);
  a.mean = be.alloc(st, N);
  a.rstd = be.alloc(st, N);
  a.dlogits = be.alloc(cfg.dtype, N * V);
  be.layernorm_forward(a.ln_out.view(), a.mean.view(), a.rstd.view(), h, store.param("ln_f.weight"),
                       store.param("ln_f.bias"), N, C, cfg.ln_eps);
  linear_forward(be, a.dlogits.view(), a.ln_out.view(), store.param("lm_head.weight"), View{}, N, C, V);
  be.cross_entropy_fused(a.dlogits.view(), targets, loss_sum, N, V, grad_scale);
}

void head_backward(Backend& be, const ModelConfig& cfg, const ParamStore& store, View h, View dh,
                   HeadActivations& a, int64_t N) {
  const int64_t C = cfg.C, V = cfg.V;
  Buffer d_ln = be.alloc(cfg.dtype, N * C);  // (N, C)
  linear_backward(be, d_ln.view(), 0.0, store.grad("lm_head.weight"), View{}, a.dlogits.view(), a.ln_out.view(),
                  store.param("lm_head.weight"), N, C, V);
  be.fill_zero(dh);
  be.layernorm_backward(dh, store.grad("ln_f.weight"), store.grad("ln_f.bias"), d_ln.view(), h, a.mean.view(),
                        a.rstd.view(), store.param("ln_f.weight"), N, C);
  a = HeadActivations{};
}

}  // namespace lss
