// The project's own flash-attention forward and backward (tiled, online softmax, nothing of size
// Tq x Tk in memory), for the AttentionArgs contract of core/backend.h: strided Q/K/V/O, causal
// with a query offset (query i at global position q_offset + i sees key j iff j <= q_offset + i),
// bf16 or fp32 operands, fp32 lse. Runs on sm_70 and newer. bf16 runs on tensor cores: wgmma
// kernels (flash_attention_sm90.cu) on compute capability 9.0 when built for sm_90a and D is 64
// or 128, mma.sync kernels (sm_80+) otherwise.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "core/backend.h"

namespace lss::cuda {

// Which bf16 kernel generation runs: automatic (wgmma where it can, else mma.sync) or one forced,
// for the tests and benchmarks that compare them; forcing wgmma where it cannot run is a usage
// error at the next call. Process-wide.
enum class FlashKernels { automatic, mma_sync, wgmma };
void set_flash_kernels(FlashKernels kernels);
// Whether the wgmma kernels can run on the current device for head dim D.
bool flash_wgmma_available(int64_t D);

// True when the kernel handles this shape (head dim, dtype).
bool flash_attention_supported(const AttentionArgs& args);
// True where --attention auto takes these kernels over cuDNN: bf16 at D = 64 and 128 on the
// wgmma kernels (process-wide kernel choice automatic or wgmma). On an H200, D = 128
// forward+backward runs 4-6% faster than cuDNN 9.14 from T = 16K (20% at 4K causal), and the
// serial step 1.4% (16K) and 2.6% (64K) faster; D = 64 forward+backward 1-4% faster from 16K (3%
// slower at 4K unmasked; its forward alone was 6-8% slower when last timed), and the serial step
// (L4 C2048 H32) 2.1-2.7% faster at 16K and 3.4% at 64K
// (results/h200-x1/20261129T0550-flash-bwd-stmatrix-red,
// results/h200-x1/20261129T1200-flash-bwd-turns).
bool flash_attention_preferred(const AttentionArgs& args);
void flash_attention_forward(const AttentionArgs& args, cudaStream_t stream);
// Bytes of device scratch memory the backward needs (fp32 dQ accumulators, row sums).
size_t flash_attention_backward_workspace(const AttentionArgs& args);
// Overwrites dq, dk, dv. `workspace` holds flash_attention_backward_workspace(args) bytes.
void flash_attention_backward(const AttentionArgs& args, void* workspace, cudaStream_t stream);

}  // namespace lss::cuda
