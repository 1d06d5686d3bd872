// The model and run configuration shared by every strategy.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "core/dtype.h"

namespace lss {

// The GPT-style model of DESIGN.md. Letters: L layers, C width, H heads, D = C/H, V vocabulary,
// T tokens per sequence, T_max rows of the positional table, B sequences per step (global).
struct ModelConfig {
  int64_t L = 2, C = 64, H = 4, V = 256;
  int64_t T = 128, T_max = 128;
  int64_t B = 1;
  bool causal = true;
  DType dtype = DType::f32;
  uint64_t seed = 1234;
  double init_std = 0.02;  // N(0, init_std) for weights; output projections scaled by 1/sqrt(2L)
  double ln_eps = 1e-5;

  int64_t D() const { return C / H; }
  // Throws UsageError naming the bad value.
  void validate() const;
};

struct OptimizerConfig {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

// Options that change how a strategy distributes work (not what it computes).
struct StrategyOptions {
  // lss: keep the gathered [K|V] of each layer for backward (false: drop and re-gather).
  bool keep_kv = false;
  // lss: balanced (zigzag) segment order for causal masks: rank p holds chunks p and 2P-1-p of
  // T/(2P) tokens, so every rank does the same attention work (false: one contiguous segment).
  bool zigzag = false;
  // lss, causal: each segment's attention as a square causal block on its own keys, which runs
  // while the K/V all-gather is in flight (in backward: while the dK/dV reduce-scatter is), plus
  // a non-causal block on the keys before it, merged by log-sum-exp (false: one call per segment
  // with a query offset, after the gather). On by default: 7.5% faster at T = 64K on 4 x H200
  // (PERFORMANCE.md).
  bool split_causal = true;
  // lss, zigzag, split_causal: forward all-gathers the ranks' front chunks' [K|V] and their back
  // chunks' in two gathers of half the size and interleaves the two chunks' blocks across layers,
  // so that each gather runs beside the other chunk's compute (false: one fused gather per layer,
  // beside the Q projection and the diagonal blocks only). Backward works in the same layout
  // (two half gathers, two half reduce-scatters, no reorder copy), except with recompute.
  bool chunk_pipeline = false;
  // lss, zigzag: backward's dK/dV reduce-scatter sums straight from token order into each rank's
  // segments (Communicator::reduce_scatter_placed: on NCCL one group of ncclReduce calls, one a segment),
  // instead of a copy of [dK|dV] into rank order and a reduce-scatter. Where the gathers are
  // placed (not with --copy-engine-gathers) and backward has a fused scatter (not the pipeline's
  // halves, which need no copy). Off by default until measured on 4 GPUs (on 2 × H200: −1.4% at
  // T = 16K, within the spread at 64K; PERFORMANCE.md, fourteenth session).
  bool placed_reduce_scatter = false;
  // lss, zigzag, split_causal: the back chunk's block on the rank's own front chunk (its keys are
  // local) runs in forward beside the K/V all-gather and in backward beside the dK/dV
  // reduce-scatter, instead of inside the back chunk's preceding block after the gather (before
  // the reduce-scatter). That preceding block becomes the keys before the front chunk and those
  // between the chunks (two calls; one on ranks 0 and P-1); rank P-1's chunks stay two segments.
  // Every rank then runs its two diagonal blocks and the square cross block beside each gather
  // (the score tiles rank P-1's merged causal block had) and the cross block's backward beside
  // each reduce-scatter. Off by default until measured on 4 GPUs (not with --chunk-pipeline).
  bool local_cross_block = false;
  // lss, zigzag: the fused [K|V] gathers (and --placed-reduce-scatter) are placed only from this
  // many gathered bytes (T x Bl x 2C elements of the activations' size) on; below, the gather
  // lands rank-major and one copy puts it in token order. On 2 x H200 NCCL's grouped broadcasts
  // took 208-296 us from 256 KiB to 4 MiB against the all-gather's 24-40 us (a copy of 4 MiB:
  // ~3 us), 82 against 68 us at 16 MiB, and were within 5% from 64 MiB on, where the copy costs
  // more (PERFORMANCE.md, fifteenth session). The sweeps' points gather 64 MiB or more.
  int64_t placed_gather_min_bytes = int64_t{16} << 20;
  // lss, megatron_sp: activation checkpointing: keep only each block's output in forward,
  // recompute the block (its gathers included) in backward.
  bool recompute = false;
  // megatron_sp: re-gather the LayerNorm outputs in backward instead of keeping the gathered ones.
  bool regather_ln = true;
  // megatron_sp: each row-parallel layer's forward GEMM runs in this many chunks of every rank's
  // rows, and each chunk's reduce-scatter runs beside the next chunk's GEMM, as Transformer
  // Engine's pipelined reduce-scatter overlap does (1: one reduce-scatter after the whole GEMM).
  // 0: the most of 4 and 2 that divides a rank's T/P x B/R rows into chunks of at least 4096
  // rows, else 1: on 2 x H200 4 chunks of 4096 and 8192 rows gained 0.3-0.5% at T = 32K and
  // 64K, 2 chunks of 2048 rows lost 0.5% at 8K (PERFORMANCE.md, thirty-first session).
  int64_t scatter_chunks = 0;
  // The optimizer sharded over the sequence group (ZeRO-1, as Megatron-LM's distributed optimizer
  // over data parallelism): the gradients the group sums are reduce-scattered instead of
  // all-reduced, each rank steps and keeps AdamW moments for its 1/P of them, and the forward
  // all-gathers the updated parameters bucket by bucket, one ahead of their use.
  bool distributed_optimizer = false;
  // The optimizer in backward: a bucket of parameters whose gradients need no sum (one rank:
  // P = R = 1) steps as soon as backward has finished them, on the backend's side lane beside the
  // rest of backward, instead of in the optimizer phase after it. AdamW is elementwise, so no value
  // changes. With sums to wait for, buckets step in the optimizer phase as before. Off by default:
  // on an H200 at its power cap the serial step at T = 16K gained 0.2-0.5%, within the spread, as
  // backward grew by what the optimizer phase lost (PERFORMANCE.md, fourteenth session).
  bool optimizer_in_backward = false;
  // The dtype in which the sequence and data groups sum the gradients; empty: the master dtype.
  // Narrower (bf16 for a bf16 model's fp32 gradients, as Megatron-LM's --grad-reduce-in-bf16;
  // fp32 for an fp64 model's): each bucket's gradients are rounded into a copy of the flat
  // gradient in this dtype, the collectives sum the copy (fewer bytes), and the sums this rank
  // steps are widened back into the gradients before AdamW. Each gradient is rounded once more
  // (bf16: to 8 significant bits) before the optimizer, which normalises it anyway. Costs the copy
  // (2 bytes per parameter in bf16) and two casts per step; nothing where nothing is summed
  // (P = R = 1).
  std::optional<DType> grad_reduce_dtype;
  // Overlap collectives with compute (asynchronous collectives on a communication stream, and
  // gradient all-reduces per layer during backward); false runs each one where it is needed.
  bool overlap = true;
};

}  // namespace lss
