// The Hopper (sm_90a, wgmma) generation of the flash-attention kernels; flash_attention.cu picks
// it over the mma.sync kernels where it was built and the GPU runs it. Internal to those files.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/cuda/flash_attention_common.cuh"

namespace lss::cuda::flash_detail {

// Whether this build has the sm_90a code (CMAKE_CUDA_ARCHITECTURES with 90a).
bool sm90_kernels_built();
bool sm90_head_dim_ok(int D);
// Dynamic shared memory the forward and backward kernels need, the larger of the two.
size_t sm90_smem_bytes(int D);
// The dQ workspace floats sm90_backward uses: 64-query tiles.
inline size_t dq_accum_sm90_floats(int64_t B, int64_t H, int64_t Tq, int64_t D) {
  return static_cast<size_t>(B * H * ((Tq + 63) / 64) * 64 * D);
}
// `multiprocessors`: the device's SM count, which sizes the block order's head groups.
void sm90_forward(const Params& p, int D, cudaStream_t stream, int device, int multiprocessors);
// dK, dV and dQ: expects Delta (bwd_preprocess_kernel); zeroes and converts its own dQ workspace
// (p.dq_accum, dq_accum_sm90_floats() floats, not in the (Tq, D) row order of the mma.sync path).
void sm90_backward(const Params& p, int D, cudaStream_t stream, int device, int multiprocessors);

}  // namespace lss::cuda::flash_detail
