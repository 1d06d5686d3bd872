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
#include <string>

#include "kernels/cuda/block_order.h"
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
  int head_group = 1;  // heads per group of the wgmma kernels' block order (block_of_cta)
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

// ---------------------------------------------------------------------------------------------
// Fragment-level steps both bf16 generations share. A thread holds, of a 16-row slice of a tile,
// rows g and g+8 (g = lane / 4) and in each 8-column n-tile n the columns 2t, 2t+1 (t = lane % 4):
// x[n][0..1] in row g, x[n][2..3] in row g+8 (mma.sync's c-fragments, wgmma's accumulators).
// ---------------------------------------------------------------------------------------------

// The forward's masking of one score tile (keys k0 .. k0 + kTileN of rows g and g + 8, whose
// positions are row_pos): keys past Tk and, causal, keys after a row's position get -inf.
template <int kTileN>
__device__ __forceinline__ void mask_scores(float (&s)[kTileN / 8][4], const Params& p, int k0, int tq,
                                            const int (&row_pos)[2]) {
#pragma unroll
  for (int n = 0; n < kTileN / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = k0 + 8 * n + 2 * tq + (e & 1);
      if (key >= p.Tk || (p.causal && key > row_pos[e >> 1])) s[n][e] = -kInf;
    }
}

// How far (base 2) a row's scores may rise above the max its probabilities are taken against
// before that max moves (FlashAttention-4's rule): until then the probabilities exp2(x - m) stay
// at most 2^kMaxLag, far inside bf16's and fp32's range, and the output and sum keep their scale
// (alpha = 1), so the forward skips their rescaling. A row's max is mostly reached within its
// first few key tiles; later tiles raise it by little, and each such rise cost a full rescale.
constexpr float kMaxLag = 8.f;

// Online softmax over one key tile of kTileN columns, the scores' part: s holds the raw scores
// and becomes the unnormalised probabilities exp2(scale_log2 * s - m); the reference max m (base-2
// scaled units) moves to the tile's max where that exceeds it by more than kMaxLag, and the partial
// row sums l with it; alpha receives the factor by which the output accumulator is to be rescaled
// (exactly 1 where m stayed; rescale_rows), which a caller may apply later, once products still
// accumulating into it have completed. A row is spread over the 4 threads of a quad, so the max
// needs two shuffles; the sum stays per thread until store_o_lse.
template <int kTileN>
__device__ __forceinline__ void softmax_scores_tile(float (&s)[kTileN / 8][4], float (&m)[2],
                                                    float (&l)[2], float (&alpha)[2], float scale_log2) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -kInf;
#pragma unroll
    for (int n = 0; n < kTileN / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_tile = mx * scale_log2;
    // -inf + kMaxLag is -inf: a row's first visible key always moves it.
    const bool move = m_tile > m[r] + kMaxLag;
    const float m_new = move ? m_tile : m[r];
    // A row with no visible key so far keeps m = -inf; shifting by 0 then gives exp2(-inf) = 0
    // instead of exp2(-inf - -inf) = NaN.
    const float m_use = m_new == -kInf ? 0.f : m_new;
    alpha[r] = move ? fast_exp2(m[r] - m_use) : 1.f;
    m[r] = m_new;
    l[r] *= alpha[r];
#pragma unroll
    for (int n = 0; n < kTileN / 8; ++n)
#pragma unroll
      for (int e = 2 * r; e < 2 * r + 2; ++e) {
        const float x = fmaf(s[n][e], scale_log2, -m_use);
        s[n][e] = fast_exp2(x);
        l[r] += s[n][e];
      }
  }
}

// Rows g and g + 8 of an accumulator times alpha[0] and alpha[1]; skipped where no row of the warp
// moved its max (all alphas 1), a warp-uniform branch.
template <int N>
__device__ __forceinline__ void rescale_rows(float (&o)[N][4], const float (&alpha)[2]) {
  if (!__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) return;
#pragma unroll
  for (int n = 0; n < N; ++n) {
    o[n][0] *= alpha[0];
    o[n][1] *= alpha[0];
    o[n][2] *= alpha[1];
    o[n][3] *= alpha[1];
  }
}

// The whole online softmax step of one key tile: the scores' part, then o rescaled at once.
template <int kTileN, int D>
__device__ __forceinline__ void online_softmax_tile(float (&s)[kTileN / 8][4], float (&o)[D / 8][4],
                                                    float (&m)[2], float (&l)[2], float scale_log2) {
  float alpha[2];
  softmax_scores_tile<kTileN>(s, m, l, alpha, scale_log2);
  rescale_rows(o, alpha);
}

// The forward's end for query rows `row` and row + 8 (local indices): O / rowsum as bf16 and the
// natural-log lse; rows at or past Tq are skipped.
template <int D>
__device__ __forceinline__ void store_o_lse(const float (&o)[D / 8][4], const float (&m)[2],
                                            const float (&l)[2], int row, int tq, const Params& p,
                                            int b, int h) {
  bf16* og = head_ptr<bf16, D>(p.out, b, h);
  float* lse = p.lse + (static_cast<int64_t>(b) * p.H + h) * p.Tq;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = l[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int i = row + 8 * r;
    if (i >= p.Tq) continue;
    // sum == 0 only without any key (Tk == 0): empty softmax, zero output, lse = -inf.
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    bf16* orow = og + static_cast<int64_t>(i) * p.out.rs;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<uint32_t*>(orow + 8 * n + 2 * tq) =
          pack_bf16(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    if (tq == 0) lse[i] = sum > 0.f ? (m[r] + __log2f(sum)) * kLn2 : -kInf;
  }
}

// The backward's query blocks of kBlockM rows that see at least one key of the key block at k0:
// blocks [first, count) of the count blocks covering Tq. With causal masking the first query
// seeing key k0 is k0 - q_offset; without it every query does.
struct QueryBlocks {
  int first, count;
  __device__ int num() const { return first < count ? count - first : 0; }
};
template <int kBlockM>
__device__ __forceinline__ QueryBlocks query_blocks_for_keys(const Params& p, int k0) {
  const int q_first = p.causal ? max(0, k0 - p.q_offset) : 0;
  return {q_first / kBlockM, (p.Tq + kBlockM - 1) / kBlockM};
}

// lse and Delta of query rows [qb0, qb0 + kBlockM) into shared memory with cp.async, one thread
// (of the first 2 * kBlockM) per value; rows at or past Tq are zero-filled.
template <int kBlockM>
__device__ __forceinline__ void load_row_stats(float* lse_s, float* delta_s, const float* lse_g,
                                               const float* delta_g, int qb0, int Tq) {
  const int t = threadIdx.x;
  if (t < 2 * kBlockM) {
    const int i = qb0 + (t % kBlockM);
    const bool valid = i < Tq;
    const float* src = t < kBlockM ? lse_g : delta_g;
    float* dst = (t < kBlockM ? lse_s : delta_s) + (t % kBlockM);
    cp_async_4(smem_addr(dst), valid ? src + i : src, valid);
  }
}

// The backward's end for keys key_r[0..1] (global indices into Tk): dK (times the softmax scale)
// and dV as bf16; keys at or past Tk are skipped.
template <int D>
__device__ __forceinline__ void store_dk_dv(const float (&dk)[D / 8][4], const float (&dv)[D / 8][4],
                                            const int (&key_r)[2], int tq, const Params& p, int b,
                                            int h) {
  bf16* dkg = head_ptr<bf16, D>(p.dk, b, h);
  bf16* dvg = head_ptr<bf16, D>(p.dv, b, h);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (key_r[r] >= p.Tk) continue;
    bf16* dkrow = dkg + static_cast<int64_t>(key_r[r]) * p.dk.rs;
    bf16* dvrow = dvg + static_cast<int64_t>(key_r[r]) * p.dv.rs;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(dkrow + 8 * n + 2 * tq) =
          pack_bf16(dk[n][2 * r] * p.scale, dk[n][2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(dvrow + 8 * n + 2 * tq) =
          pack_bf16(dv[n][2 * r], dv[n][2 * r + 1]);
    }
  }
}

// Launches `kernel` with `smem` bytes of dynamic shared memory and the arguments `args`, raising
// the kernel's limit past the 48 KB default once per device.
template <auto Kernel, class... Args>
void launch_args(dim3 grid, int threads, size_t smem, cudaStream_t stream, int device,
                 const Args&... args) {
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
  Kernel<<<grid, threads, smem, stream>>>(args...);
  LSS_CUDA_CHECK_LAUNCH();
}

template <auto Kernel>
void launch(dim3 grid, int threads, size_t smem, cudaStream_t stream, const Params& p, int device) {
  launch_args<Kernel>(grid, threads, smem, stream, device, p);
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// block_of_cta_index (block_order.h) for this CTA.
__device__ __forceinline__ BlockOfCta block_of_cta(const Params& p, int n_blocks, bool reverse) {
  return block_of_cta_index(static_cast<int>(blockIdx.x), n_blocks, p.H, p.head_group, reverse);
}
// The grid of block_of_cta: (blocks x H, 1, B).
inline dim3 block_order_grid(const Params& p, int64_t n_blocks) {
  const int64_t ctas = n_blocks * p.H;
  LSS_CHECK(ctas <= 0x7fffffff, "flash attention: " + std::to_string(n_blocks) + " blocks x " +
                                    std::to_string(p.H) + " heads exceed the grid's x limit");
  return dim3(static_cast<unsigned>(ctas), 1, static_cast<unsigned>(p.B));
}

}  // namespace lss::cuda::flash_detail
