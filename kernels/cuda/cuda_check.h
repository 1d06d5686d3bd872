// Checked CUDA, cuBLAS(Lt), cuDNN and NCCL calls: a failure names rank, host, file:line and the
// call, then aborts every rank (core/check.h).
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "core/check.h"

#define LSS_CUDA_CHECK(call)                                                                         \
  do {                                                                                               \
    const cudaError_t lss_err_ = (call);                                                             \
    if (lss_err_ != cudaSuccess)                                                                     \
      ::lss::fatal_error(__FILE__, __LINE__, #call, std::string(cudaGetErrorName(lss_err_)) + ": " + \
                                                        cudaGetErrorString(lss_err_));               \
  } while (0)

// After a kernel launch: reports launch-configuration errors at the launch site.
#define LSS_CUDA_CHECK_LAUNCH() LSS_CUDA_CHECK(cudaGetLastError())

#define LSS_CUBLAS_CHECK(call)                                                                      \
  do {                                                                                              \
    const cublasStatus_t lss_st_ = (call);                                                          \
    if (lss_st_ != CUBLAS_STATUS_SUCCESS)                                                           \
      ::lss::fatal_error(__FILE__, __LINE__, #call, "cublas status " + std::to_string(int(lss_st_))); \
  } while (0)
