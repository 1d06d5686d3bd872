// The CUDA backend: bf16/fp32 kernels, cuBLASLt GEMMs, attention through cuDNN's fused SDPA or
// the project's own flash-attention kernel, and a caching allocator with peak accounting.
#pragma once
#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "core/backend.h"

namespace lss {

struct CudaBackendOptions {
  int device = 0;                  // CUDA device ordinal of this rank
  // "cudnn" | "flash" | "auto" (the own kernels where flash_attention_preferred, else cuDNN
  // where it takes the shape)
  std::string attention = "auto";
};

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options);

// The stream every operation of a CUDA backend is ordered on (NCCL collectives use it too).
cudaStream_t cuda_stream_of(Backend& backend);

// Attention forward calls a CUDA backend has run so far on each path: what --attention auto chose
// for the run's shapes, for the result JSON.
struct AttentionPathCalls {
  int64_t cudnn = 0, flash = 0;
};
AttentionPathCalls attention_path_calls(Backend& backend);

// Number of CUDA devices visible to this process (0 when there is no driver or device).
int cuda_device_count();

}  // namespace lss
