// Internal interface of the CUDA backend: the kernels of every operation but GEMM (gemm.h) and
// attention (flash_attention.h, cudnn_attention.h), see Backend in core/backend.h for the
// contracts. The entry points check dtypes and sizes (UsageError for fp64, which the CUDA backend
// does not compute in; fatal for anything else, which can only be a programming error) and
// enqueue their kernels on the context's stream without synchronizing.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/backend.h"

namespace lss::cuda {

// What the operations need from the backend: its stream, the SM count (to size the grids of the
// reductions, whose partial-sum layout depends on the grid: results are deterministic for a given
// device and shape) and the backend itself, whose caching allocator provides scratch memory.
// Scratch buffers are freed when an operation returns, while its kernels may still run: that is
// safe because every kernel of the backend is ordered on the one stream.
struct OpContext {
  cudaStream_t stream = nullptr;
  int num_sms = 1;
  Backend* backend = nullptr;

  // Device scratch of at least `bytes` bytes (an i32 buffer of the backend).
  Buffer scratch(size_t bytes) const;
};

// Throws UsageError for fp64 and fails for non-float dtypes: the dtypes of compute operations.
void require_compute_dtype(DType t, const char* op);

// dst (n) = src (n) converted, between any two of f32, f64, bf16, i32 (device memory).
void convert(const OpContext& ctx, View dst, View src);
// The same conversion on host memory (the host side of copy_from_host / copy_to_host), with the
// same rounding as the device (bf16: round to nearest even; to i32: truncation).
void convert_host(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n);

void axpy(const OpContext& ctx, View y, View x, double alpha);
void add(const OpContext& ctx, View out, View a, View b);
void bias_grad(const OpContext& ctx, View db, View dy, int64_t rows, int64_t n);
void embedding_forward(const OpContext& ctx, View out, View tokens, View wte, View wpe_rows,
                       int64_t Tl, int64_t B, int64_t C);
void embedding_backward(const OpContext& ctx, View dwte, View dwpe_rows, View dout, View tokens,
                        int64_t Tl, int64_t B, int64_t C);
void layernorm_forward(const OpContext& ctx, View out, View mean, View rstd, View x, View weight,
                       View bias, int64_t N, int64_t C, double eps);
void layernorm_backward(const OpContext& ctx, View dx, View dweight, View dbias, View dout, View x,
                        View mean, View rstd, View weight, int64_t N, int64_t C);
void gelu_forward(const OpContext& ctx, View out, View in);
void gelu_backward(const OpContext& ctx, View din, View dout, View in);
// The loss sum goes to loss_sum (one fp64 on the device).
void cross_entropy_fused(const OpContext& ctx, View logits, View targets, View loss_sum, int64_t N, int64_t V,
                         double grad_scale);
void adamw(const OpContext& ctx, View param, View grad, View m, View v, const Backend::AdamW& hp);
// Backend::attention_merge (bf16 or fp32 outputs, fp32 lse).
void attention_merge(const OpContext& ctx, const AttentionMergeArgs& a);

// For GEMM: c (m x n, row stride ldc, dtype c_dtype) = beta * c + bias (n, c_dtype, may be null)
// broadcast over rows; beta = 0 overwrites (NaN in c does not survive). Covers k = 0 and bias
// epilogues cuBLASLt does not take.
void scale_add_bias(cudaStream_t stream, void* c, DType c_dtype, int64_t m, int64_t n, int64_t ldc,
                    double beta, const void* bias);

// For GEMM: the whole GemmArgs contract in a plain tiled kernel (fp32 accumulation), for the
// shapes and alignments cuBLASLt has no algorithm for. Slow; correct for every valid argument.
void gemm_fallback(cudaStream_t stream, const GemmArgs& g);

}  // namespace lss::cuda
