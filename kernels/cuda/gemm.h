// GEMMs of the CUDA backend on cuBLASLt, for the row-major GemmArgs contract of core/backend.h:
// A/B bf16 with C bf16 or fp32, or everything fp32 (plain fp32 arithmetic, no TF32: the fp32 mode
// is the one verified against the CPU backend). Accumulation is fp32 in both cases.
#pragma once
#include <cuda_runtime.h>

#include <memory>

#include "core/backend.h"

namespace lss::cuda {

class Gemm {
 public:
  // Creates the cuBLASLt handle and a 32 MiB workspace on the current device.
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Enqueues C = epilogue(alpha op(A) op(B) + beta C_in [+ bias]) on `stream` and returns true;
  // returns false, enqueueing nothing, when cuBLASLt has no algorithm for the args' c_in or
  // epilogue (the caller then runs gemm_in_passes). The workspace is shared by every call: all
  // calls of one Gemm must be ordered on one stream. Throws UsageError for fp64 and for dtype
  // combinations other than the three above.
  bool run(const GemmArgs& args, cudaStream_t stream);
  // The SMs the calls after this may plan for (cuBLASLt's SM count target: a persistent kernel
  // then launches that many CTAs, not one per SM of the device); 0: every SM. For GEMMs that run
  // beside a collective whose kernels hold some SMs, so that no CTA waits for one of them.
  void set_sm_target(int sms);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lss::cuda
