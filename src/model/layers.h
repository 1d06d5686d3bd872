// Model pieces shared by the strategies: linear layers, the embedding, the MLP sub-block of a
// rank that holds whole rows (serial, lss), and the head (final LayerNorm, LM head,
// cross-entropy). All activations are (N, width) row-major with N = T_local*B rows, row t*B + b.
#pragma once
#include "core/backend.h"
#include "model/config.h"
#include "model/params.h"

namespace lss {

// Views of one transformer block's tensors (parameters or their gradients), as stored locally.
struct LayerTensors {
  View ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fc2_w, fc2_b;
};
LayerTensors layer_params(const ParamStore& store, int64_t l);
LayerTensors layer_grads(const ParamStore& store, int64_t l);

// y (N, out) = x (N, in) W^T + b [+ residual (N, out)], W (out, in); b and residual may be
// empty (numel 0). The residual is added by the GEMM (its beta term): no separate add pass.
void linear_forward(Backend& be, View y, View x, View W, View b, int64_t N, int64_t in, int64_t out,
                    View residual = {});
// act (N, out) = gelu_tanh(pre), pre (N, out) = x (N, in) W^T + b: the MLP's first layer with
// its activation in the GEMM's epilogue; pre is kept for backward.
void linear_gelu_forward(Backend& be, View act, View pre, View x, View W, View b, int64_t N, int64_t in,
                         int64_t out);
// dW (out, in) += dy^T x (skipped if dW is empty); db (out) += column sums of dy (skipped if
// empty); dx (N, in) = dy W + dx_beta * dx (skipped if dx is empty), or, given gelu_pre (N, in)
// (dx_beta 0), dx = (dy W) * gelu_tanh'(gelu_pre): the gradient through the activation that
// produced x, in the GEMM's epilogue. The data gradient alone and the weight gradient alone let
// a strategy overlap a collective between them.
void linear_backward(Backend& be, View dx, double dx_beta, View dW, View db, View dy, View x, View W,
                     int64_t N, int64_t in, int64_t out, View gelu_pre = {});

// Attention over a packed (T*B, 3W) buffer whose row t*B + b holds [q | k | v] of H heads of
// width W = H*D each (serial: W = C; megatron_sp: the H/P heads of a tensor rank), writing
// out (T*B, W) and lse (B, H, T); all T queries against all T keys.
AttentionArgs packed_qkv_attention(const ModelConfig& cfg, int64_t B, int64_t H, void* qkv, void* out, void* lse);
// Adds the backward operands: dout (T*B, W), and dqkv (T*B, 3W) laid out as qkv.
void set_packed_qkv_grads(AttentionArgs& args, void* dout, void* dqkv);

// Saved activations of the MLP sub-block h_out = h_in + W2 gelu(W1 LN2(h_in) + b1) + b2.
struct MlpActivations {
  Buffer ln_out;     // (N, C)
  Buffer mean, rstd; // (N)
  Buffer fc;         // (N, 4C) pre-activation
  Buffer act;        // (N, 4C) gelu(fc)
};
void mlp_forward(Backend& be, const ModelConfig& cfg, const LayerTensors& w, View h_in, View h_out,
                 MlpActivations& acts, int64_t N);
// mlp_forward in parts: the activations of all N rows, then rows [row0, row0 + rows) of h_in (N, C)
// into the same rows of h_out and of the activations (a strategy that pipelines parts of its rows).
void mlp_allocate(Backend& be, const ModelConfig& cfg, MlpActivations& acts, int64_t N);
void mlp_forward_rows(Backend& be, const ModelConfig& cfg, const LayerTensors& w, View h_in, View h_out,
                      MlpActivations& acts, int64_t row0, int64_t rows);
// dh (N, C): on entry the gradient w.r.t. h_out, on exit w.r.t. h_in. Frees `acts`.
void mlp_backward(Backend& be, const ModelConfig& cfg, const LayerTensors& w, const LayerTensors& g,
                  View h_in, View dh, MlpActivations& acts, int64_t N);

// Saved activations of the head: final LayerNorm, LM head, softmax cross-entropy.
struct HeadActivations {
  Buffer ln_out;      // (N, C)
  Buffer mean, rstd;  // (N)
  Buffer dlogits;     // (N, V): the logits, overwritten with their gradient by the fused loss
};
// Writes the sum over the N rows of -log p(target) into loss_sum (one fp64 on the device); the
// loss gradient is scaled by grad_scale (1 / number of predicted tokens over all ranks, so that
// summing gradients gives the mean).
void head_forward(Backend& be, const ModelConfig& cfg, const ParamStore& store, View h, View targets,
                  HeadActivations& acts, int64_t N, double grad_scale, View loss_sum);
// dh (N, C) = gradient w.r.t. the final residual stream (overwritten). Frees `acts`.
void head_backward(Backend& be, const ModelConfig& cfg, const ParamStore& store, View h, View dh,
                   HeadActivations& acts, int64_t N);

}  // namespace lss
