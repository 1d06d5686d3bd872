// Pieces shared by the two bf16 kernel generations of the flash attention (flash_attention.cu:
// mma.sync for sm_80+; flash_attention_sm90.cu: wgmma for sm_90a): the kernel parameters, the
// copy and conversion helpers, and the launcher. Internal to those two files.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/cuda/cuda_check.h"

namespace lss::cuda::flash_detail {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kInf = std::numeric_limits<float>::infinity();

// One (B, T, H*D) operand: element (b, t, h, d) at ptr + b*bs + t*rs + h*D + d (elements).
struct Tensor {
  void* ptr;
  int64_t bs, rs;
};

struct Params {
  Tensor q, k, v, out, dout, dq, dk, dv;
  float* lse;       // (B, H, Tq), natural-log units
  float* delta;     // (B, H, Tq) backward workspace: rowsum(dO * O)
  float* dq_accum;  // (B, H, Tq, D) backward workspace of the bf16 path
  int B, H, Tq, Tk, q_offset;
  bool causal;
  float scale;       // softmax scale
  float scale_log2;  // scale * log2(e): the bf16 path works in base 2 (ex2 is one instruction)
};

// Pointer to element (b, 0, h, 0) of an operand.
template <class T, int D>
__device__ __forceinline__ T* head_ptr(const Tensor& o, int b, int h) {
  return static_cast<T*>(o.ptr) + static_cast<int64_t>(b) * o.bs + static_cast<int64_t>(h) * D;
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; with valid == false the destination is zero-filled instead
// (src-size 0 reads nothing), which is how tiles are padded past the end of a sequence.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 4 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats as a bf16 pair, `lo` in the low half (the lower column index).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  return u;
}

// The a-fragment of k-step kk (16 columns) from c-fragments of n-tiles 2kk and 2kk+1.
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4],
                                       const float (&c1)[4]) {
  a[0] = pack_bf16(c0[0], c0[1]);
  a[1] = pack_bf16(c0[2], c0[3]);
  a[2] = pack_bf16(c1[0], c1[1]);
  a[3] = pack_bf16(c1[2], c1[3]);
}

// Launches `kernel` with `smem` bytes of dynamic shared memory, raising the kernel's limit past
// the 48 KB default once per device.
template <auto Kernel>
void launch(dim3 grid, int threads, size_t smem, cudaStream_t stream, const Params& p, int device) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if (smem > 48 * 1024) {
    static std::atomic<uint64_t> configured{0};  // bit per device ordinal
    const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
    if (bit == 0 || (configured.load() & bit) == 0) {
      LSS_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
      configured.fetch_or(bit);
    }
  }
  Kernel<<<grid, threads, smem, stream>>>(p);
  LSS_CUDA_CHECK_LAUNCH();
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace lss::cuda::flash_detail
