// Attention through cuDNN's fused scaled-dot-product attention (cudnn-frontend graph API), for the
// AttentionArgs contract of core/backend.h. Graphs are built once per shape and cached.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

#include "core/backend.h"

namespace lss::cuda {

class CudnnAttention {
 public:
  explicit CudnnAttention(cudaStream_t stream);
  ~CudnnAttention();
  // True when cuDNN takes this shape on this GPU (builds and caches the graphs to find out).
  bool supported(const AttentionArgs& args);
  // Workspace bytes of forward / backward for this shape.
  size_t forward_workspace(const AttentionArgs& args);
  size_t backward_workspace(const AttentionArgs& args);
  void forward(const AttentionArgs& args, void* workspace);
  void backward(const AttentionArgs& args, void* workspace);
  // cuDNN version the process loaded (cudnnGetVersion()).
  static int loaded_version();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lss::cuda
