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
void sm90_forward(const Params& p, int D, cudaStream_t stream, int device);
// The dK/dV/dQ kernel: expects Delta and the zeroed dQ workspace (bwd_preprocess_kernel) and
// leaves the dQ conversion to the caller.
void sm90_backward(const Params& p, int D, cudaStream_t stream, int device);

}  // namespace lss::cuda::flash_detail
