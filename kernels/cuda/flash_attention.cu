// Flash attention (FlashAttention-2 scheme) for the AttentionArgs contract of core/backend.h.
//
// bf16 (sm_80+, tensor cores): mma.sync m16n8k16 with fp32 accumulation, operands staged in
// shared memory by cp.async and fed to the tensor cores by ldmatrix.
//   forward : one CTA per (128-query block, head, batch); each warp owns 16 query rows, keeps
//             its Q fragments and its O accumulator in registers and streams 64-key K/V tiles
//             (double-buffered) through an online softmax in fp32. Writes O and lse.
//   backward: Delta = rowsum(dO * O) and a zeroed fp32 dQ accumulator (preprocess kernel); one
//             CTA per (128-key block, head, batch) loops over 64-query blocks (double-buffered),
//             each warp owning 16 keys whose dK and dV stay in registers; dQ is reduced across
//             key blocks with fp32 atomics into the workspace and converted to bf16 at the end.
// fp32 (any arch, CUDA cores): the verification path. Same tiling ideas with scalar FMAs and a
//   warp per 8 rows; the backward computes dQ in its own kernel (no atomics, deterministic).
//
// Causal masking with the query offset: query i (global position q_offset + i) sees key j iff
// j <= q_offset + i. Tiles with no visible (query, key) pair are never visited, tiles where every
// pair is visible skip the mask; only tiles crossing the diagonal or the sequence ends pay for it.
#include "kernels/cuda/flash_attention.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <type_traits>

#include "core/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_attention_common.cuh"
#include "kernels/cuda/flash_attention_sm90.h"

namespace lss::cuda {
namespace {

using namespace flash_detail;

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <class T>
__device__ __forceinline__ float to_float(T x) {
  if constexpr (std::is_same_v<T, bf16>)
    return __bfloat162float(x);
  else
    return x;
}

// =============================================================================================
// bf16 tensor-core building blocks (sm_80+)
// =============================================================================================

// Four 8x8 b16 matrices; lane l supplies the row address of matrix l/8, row l%8. Register i
// receives, of matrix i, row lane/4, columns 2*(lane%4) and +1 (transposed with _t).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c (16x8, fp32) += a (16x16, row-major bf16) * b (16x8, column-major bf16).
// Fragments (g = lane/4, t = lane%4): a regs {(g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8,
// 2t+8..)}; b regs {(k 2t..2t+1, n g), (k 2t+8.., n g)}; c {(g, 2t), (g, 2t+1), (g+8, 2t),
// (g+8, 2t+1)}. The c layout of two adjacent n-tiles is the a layout of one k-step, which is
// how P and dS go from one product to the next without touching shared memory.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Row pitch of the shared tiles: D + 8 elements, so that the eight 16-byte row segments one
// ldmatrix reads fall into distinct banks (rows of D bf16 alone are multiples of 64 bytes).
template <int D>
constexpr int kPitch = D + 8;

// Copies rows [row0, row0 + kRows) of a head slice (row stride rs elements) into a shared tile of
// pitch kPitch<D>; rows at or past `limit` are zero-filled.
template <int D, int kRows, int kThreads>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* src, int64_t rs, int row0,
                                          int limit) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kTotal = kRows * kChunks;
#pragma unroll
  for (int it = 0; it < (kTotal + kThreads - 1) / kThreads; ++it) {
    const int c = it * kThreads + static_cast<int>(threadIdx.x);
    if (kTotal % kThreads != 0 && c >= kTotal) break;
    const int r = c / kChunks, ch = c % kChunks;
    const bool valid = row0 + r < limit;
    const bf16* g = valid ? src + static_cast<int64_t>(row0 + r) * rs + ch * 8 : src;
    cp_async_16(smem_addr(tile + r * kPitch<D> + ch * 8), g, valid);
  }
}

// ldmatrix lane addresses inside a 16x16 block at (row0, col0) of a tile with pitch `pitch`.
// "a" order: registers {rows 0-7 cols 0-7, rows 8-15 cols 0-7, rows 0-7 cols 8-15, rows 8-15
// cols 8-15}: the a-fragment of a row-major 16x16 operand, or with .trans the b-fragments of
// n-tiles (col0, col0+8) of a k-major operand (rows = k).
__device__ __forceinline__ uint32_t addr_a(const bf16* tile, int pitch, int row0, int col0,
                                           int lane) {
  return smem_addr(tile + (row0 + (lane & 15)) * pitch + col0 + (lane >> 4) * 8);
}
// "b" order: {rows 0-7 cols 0-7, rows 0-7 cols 8-15, rows 8-15 cols 0-7, rows 8-15 cols 8-15}:
// the b-fragments of n-tiles (row0, row0+8) of an n-major operand (rows = n, cols = k), or with
// .trans the a-fragment of a k-major operand (rows = k, cols = m).
__device__ __forceinline__ uint32_t addr_b(const bf16* tile, int pitch, int row0, int col0,
                                           int lane) {
  return smem_addr(tile + (row0 + (lane & 7) + ((lane >> 4) << 3)) * pitch + col0 +
                   ((lane >> 3) & 1) * 8);
}

// ---------------------------------------------------------------------------------------------
// bf16 forward
// ---------------------------------------------------------------------------------------------

template <int D, int kWarps, int kBlockN>
struct FwdBf16 {
  static constexpr int kNumWarps = kWarps, kTileN = kBlockN;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockM = 16 * kWarps;
  static constexpr int kStageRows = 2 * kBlockN;  // K tile then V tile
  // The Q tile is only needed until its fragments are in registers, so it borrows the second
  // K/V stage: shared memory is one stage plus max(Q, one stage).
  static constexpr int kQRows = kBlockM > kStageRows ? kBlockM : kStageRows;
  static constexpr size_t kSmemBytes =
      static_cast<size_t>(kStageRows + kQRows) * kPitch<D> * sizeof(bf16);
  static_assert(D % 16 == 0 && kBlockN % 16 == 0, "mma tiles are 16 wide");
};

template <int D, int kWarps, int kBlockN>
__global__ void __launch_bounds__(32 * kWarps, 1) flash_fwd_bf16_kernel(const Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Cfg = FwdBf16<D, kWarps, kBlockN>;
  constexpr int kBlockM = Cfg::kBlockM, P = kPitch<D>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* const smem = reinterpret_cast<bf16*>(smem_raw);
  // K/V stage s (K rows then V rows) at smem + s * kStageRows * P.
  auto stage = [smem](int s) { return smem + s * Cfg::kStageRows * P; };
  bf16* q_tile = stage(1);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, tq = lane & 3;
  // Grid (H, query blocks, B), heads fastest: causal query blocks late in the sequence see the
  // most keys, so they are launched first, for all heads, and the light ones fill the tail.
  const int mb = p.causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;
  const int q0 = mb * kBlockM, h = blockIdx.x, b = blockIdx.z;
  const bf16* qg = head_ptr<const bf16, D>(p.q, b, h);
  const bf16* kg = head_ptr<const bf16, D>(p.k, b, h);
  const bf16* vg = head_ptr<const bf16, D>(p.v, b, h);

  // One past the last key the block's last row sees.
  const int kend = p.causal ? min(p.Tk, p.q_offset + q0 + kBlockM) : p.Tk;
  const int n_tiles = (kend + kBlockN - 1) / kBlockN;

  load_tile<D, kBlockM, Cfg::kThreads>(q_tile, qg, p.q.rs, q0, p.Tq);
  if (n_tiles > 0) {
    load_tile<D, kBlockN, Cfg::kThreads>(stage(0), kg, p.k.rs, 0, p.Tk);
    load_tile<D, kBlockN, Cfg::kThreads>(stage(0) + kBlockN * P, vg, p.v.rs, 0, p.Tk);
  }
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  // Q (16 x D) of this warp, as a-fragments of the D/16 k-steps of S = Q K^T.
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) ldsm_x4(qf[kk], addr_a(q_tile, P, 16 * warp, 16 * kk, lane));
  __syncthreads();  // the Q tile's space is the second K/V stage

  float o[D / 8][4];  // O (16 x D) accumulator, unnormalised
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  // Running max (base-2 scaled units) and this thread's partial row sum, rows g and g+8.
  float m[2] = {-kInf, -kInf}, l[2] = {0.f, 0.f};
  const int row_pos[2] = {p.q_offset + q0 + 16 * warp + g, p.q_offset + q0 + 16 * warp + g + 8};

  for (int j = 0; j < n_tiles; ++j) {
    if (j > 0) {
      cp_async_wait_all();
      __syncthreads();  // tile j landed; every warp is done with tile j-1's stage
    }
    if (j + 1 < n_tiles) {
      bf16* nxt = stage((j + 1) & 1);
      load_tile<D, kBlockN, Cfg::kThreads>(nxt, kg, p.k.rs, (j + 1) * kBlockN, p.Tk);
      load_tile<D, kBlockN, Cfg::kThreads>(nxt + kBlockN * P, vg, p.v.rs, (j + 1) * kBlockN, p.Tk);
      cp_async_commit();
    }
    const bf16* ks = stage(j & 1);
    const bf16* vs = ks + kBlockN * P;
    const int k0 = j * kBlockN;

    // S (16 x BN) = Q K^T
    float s[kBlockN / 8][4];
#pragma unroll
    for (int n = 0; n < kBlockN / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
      for (int np = 0; np < kBlockN / 16; ++np) {
        uint32_t kb[4];
        ldsm_x4(kb, addr_b(ks, P, 16 * np, 16 * kk, lane));
        mma_bf16(s[2 * np], qf[kk], kb[0], kb[1]);
        mma_bf16(s[2 * np + 1], qf[kk], kb[2], kb[3]);
      }

    // Keys past the end, and (causal) keys after a row's position, get -inf. Needed only when
    // the tile reaches past Tk or its last key lies after the block's first query.
    if (k0 + kBlockN > p.Tk || (p.causal && k0 + kBlockN - 1 > p.q_offset + q0))
      mask_scores<kBlockN>(s, p, k0, tq, row_pos);

    online_softmax_tile<kBlockN, D>(s, o, m, l, p.scale_log2);

    // O (16 x D) += P (16 x BN) V (BN x D), P straight from the S accumulators.
#pragma unroll
    for (int kj = 0; kj < kBlockN / 16; ++kj) {
      uint32_t pa[4];
      c_to_a(pa, s[2 * kj], s[2 * kj + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vb[4];
        ldsm_x4_t(vb, addr_a(vs, P, 16 * kj, 16 * dp, lane));
        mma_bf16(o[2 * dp], pa, vb[0], vb[1]);
        mma_bf16(o[2 * dp + 1], pa, vb[2], vb[3]);
      }
    }
  }

  store_o_lse<D>(o, m, l, q0 + 16 * warp + g, tq, p, b, h);
#endif
}

// ---------------------------------------------------------------------------------------------
// bf16 backward
// ---------------------------------------------------------------------------------------------

// kStages: 2 double-buffers the Q/dO/lse/Delta blocks (the next block loads while the current
// one is computed), 1 is the fallback for GPUs with less shared memory per block.
template <int D, int kWarps, int kStages>
struct BwdBf16 {
  static constexpr int kNumWarps = kWarps, kNumStages = kStages;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockN = 16 * kWarps;  // keys per CTA, 16 per warp
  static constexpr int kBlockM = 64;           // queries per inner iteration
  static constexpr int kPitchS = kBlockM + 8;  // dS^T tile pitch (same bank argument as kPitch)
  // dQ = dS K is split over warps as (kBlockM/16 row tiles) x kDqParts column slices; a warp
  // walks its slice in passes of at most 64 columns (32 accumulator registers).
  static constexpr int kDqParts = kWarps / (kBlockM / 16);
  static constexpr int kDqCols = D / kDqParts;
  static constexpr int kDqPassCols = kDqCols < 64 ? kDqCols : 64;
  // Shared layout (bf16 elements): K, V (BN x pitch each), Q[stages], dO[stages] (BM x pitch),
  // dS^T (BN x pitchS); then fp32 lse[stages][BM], delta[stages][BM].
  static constexpr int kOffV = kBlockN * kPitch<D>;
  static constexpr int kOffQ = 2 * kBlockN * kPitch<D>;
  static constexpr int kOffDo = kOffQ + kStages * kBlockM * kPitch<D>;
  static constexpr int kOffDs = kOffDo + kStages * kBlockM * kPitch<D>;
  static constexpr int kBf16Elems = kOffDs + kBlockN * kPitchS;
  static constexpr size_t kSmemBytes =
      kBf16Elems * sizeof(bf16) + 2 * kStages * kBlockM * sizeof(float);
  static_assert(kDqParts >= 1 && kDqCols % 16 == 0 && kDqCols % kDqPassCols == 0, "dQ warp split");
  static_assert(kThreads >= 2 * kBlockM, "lse and Delta are loaded by one thread per row");
  static_assert((kBf16Elems * sizeof(bf16)) % 16 == 0, "fp32 arrays stay aligned");
};

template <int D, int kWarps, int kStages>
__global__ void __launch_bounds__(32 * kWarps, 1) flash_bwd_bf16_kernel(const Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Cfg = BwdBf16<D, kWarps, kStages>;
  constexpr int kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, P = kPitch<D>;
  constexpr int PS = Cfg::kPitchS;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  bf16* k_tile = smem;
  bf16* v_tile = smem + Cfg::kOffV;
  bf16* ds_tile = smem + Cfg::kOffDs;                               // dS^T (BN keys x BM queries)
  float* lse_s = reinterpret_cast<float*>(smem + Cfg::kBf16Elems);  // [stages][BM]
  float* delta_s = lse_s + kStages * kBlockM;                       // [stages][BM]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, tq = lane & 3;
  // Grid (H, key blocks, B), heads fastest: with causal masking the first key blocks see the
  // most queries, so they are launched first, for all heads, and the light ones fill the tail.
  const int k0 = blockIdx.y * kBlockN, h = blockIdx.x, b = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(b) * p.H + h;
  const bf16* qg = head_ptr<const bf16, D>(p.q, b, h);
  const bf16* dog = head_ptr<const bf16, D>(p.dout, b, h);
  const float* lse_g = p.lse + bh * p.Tq;
  const float* delta_g = p.delta + bh * p.Tq;

  const QueryBlocks blocks = query_blocks_for_keys<kBlockM>(p, k0);
  const int m_first = blocks.first, num = blocks.num();

  auto load_q_block = [&](int mb, int st) {
    const int qb0 = mb * kBlockM;
    load_tile<D, kBlockM, Cfg::kThreads>(smem + Cfg::kOffQ + st * kBlockM * P, qg, p.q.rs, qb0,
                                         p.Tq);
    load_tile<D, kBlockM, Cfg::kThreads>(smem + Cfg::kOffDo + st * kBlockM * P, dog, p.dout.rs, qb0,
                                         p.Tq);
    load_row_stats<kBlockM>(lse_s + st * kBlockM, delta_s + st * kBlockM, lse_g, delta_g, qb0, p.Tq);
  };

  load_tile<D, kBlockN, Cfg::kThreads>(k_tile, head_ptr<const bf16, D>(p.k, b, h), p.k.rs, k0,
                                       p.Tk);
  load_tile<D, kBlockN, Cfg::kThreads>(v_tile, head_ptr<const bf16, D>(p.v, b, h), p.v.rs, k0,
                                       p.Tk);
  if (num > 0) load_q_block(m_first, 0);
  cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];  // this warp's 16 keys x D
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;
  const int key_r[2] = {k0 + 16 * warp + g, k0 + 16 * warp + g + 8};
  // dQ slice of this warp: rows 16*dq_mt.., columns dq_c0..
  const int dq_mt = warp % (kBlockM / 16), dq_c0 = (warp / (kBlockM / 16)) * Cfg::kDqCols;
  float* dq_acc = p.dq_accum + bh * p.Tq * D;

  for (int it = 0; it < num; ++it) {
    const int mb = m_first + it, qb0 = mb * kBlockM;
    const int st = kStages == 2 ? (it & 1) : 0;
    cp_async_wait_all();
    __syncthreads();  // block `it` landed; every warp is done with the previous iteration
    if (kStages == 2 && it + 1 < num) {
      load_q_block(mb + 1, st ^ 1);
      cp_async_commit();
    }
    const bf16* q_tile = smem + Cfg::kOffQ + st * kBlockM * P;
    const bf16* do_tile = smem + Cfg::kOffDo + st * kBlockM * P;
    const float* lse_t = lse_s + st * kBlockM;
    const float* delta_t = delta_s + st * kBlockM;

    // The five products of one (key block, query block) step, in an order that keeps few
    // accumulators alive at once: S^T -> P^T (bf16 fragments) -> dV, then dP^T -> dS^T -> dK.
    const bool need_mask = qb0 + kBlockM > p.Tq || k0 + kBlockN > p.Tk ||
                           (p.causal && k0 + kBlockN - 1 > p.q_offset + qb0);

    // S^T (16 keys x BM queries) = K Q^T
    float acc[kBlockM / 8][4];
#pragma unroll
    for (int n = 0; n < kBlockM / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ka[4];
      ldsm_x4(ka, addr_a(k_tile, P, 16 * warp, 16 * kk, lane));
#pragma unroll
      for (int np = 0; np < kBlockM / 16; ++np) {
        uint32_t qb[4];
        ldsm_x4(qb, addr_b(q_tile, P, 16 * np, 16 * kk, lane));
        mma_bf16(acc[2 * np], ka, qb[0], qb[1]);
        mma_bf16(acc[2 * np + 1], ka, qb[2], qb[3]);
      }
    }

    // P^T = exp(scale * S^T - lse[query]), zero for queries past Tq, keys past Tk and (causal)
    // keys after the query's position; kept as bf16 a-fragments (k = queries). n-tile n holds
    // queries 8n..8n+7: registers {0,1} (n even) or {2,3} (n odd) of k-step n/2.
    if (need_mask) {
#pragma unroll
      for (int n = 0; n < kBlockM / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = qb0 + 8 * n + 2 * tq + (e & 1), key = key_r[e >> 1];
          if (qi >= p.Tq || key >= p.Tk || (p.causal && key > p.q_offset + qi)) acc[n][e] = -kInf;
        }
    }
    uint32_t pa[kBlockM / 16][4];
#pragma unroll
    for (int n = 0; n < kBlockM / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        // A masked score of -inf gives exp2(-inf) = 0 (lse is finite for every query with a
        // visible key, and zero-filled for queries past Tq).
        const int ql = 8 * n + 2 * tq + (e & 1);
        acc[n][e] = fast_exp2(fmaf(acc[n][e], p.scale_log2, -lse_t[ql] * kLog2e));
      }
      pa[n / 2][(n & 1) * 2] = pack_bf16(acc[n][0], acc[n][1]);
      pa[n / 2][(n & 1) * 2 + 1] = pack_bf16(acc[n][2], acc[n][3]);
    }

    // dV (16 x D) += P^T (16 x BM) dO (BM x D)
#pragma unroll
    for (int kq = 0; kq < kBlockM / 16; ++kq) {
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t ob[4];
        ldsm_x4_t(ob, addr_a(do_tile, P, 16 * kq, 16 * dn, lane));
        mma_bf16(dv[2 * dn], pa[kq], ob[0], ob[1]);
        mma_bf16(dv[2 * dn + 1], pa[kq], ob[2], ob[3]);
      }
    }

    // dP^T (16 keys x BM queries) = V dO^T
#pragma unroll
    for (int n = 0; n < kBlockM / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t va[4];
      ldsm_x4(va, addr_a(v_tile, P, 16 * warp, 16 * kk, lane));
#pragma unroll
      for (int np = 0; np < kBlockM / 16; ++np) {
        uint32_t ob[4];
        ldsm_x4(ob, addr_b(do_tile, P, 16 * np, 16 * kk, lane));
        mma_bf16(acc[2 * np], va, ob[0], ob[1]);
        mma_bf16(acc[2 * np + 1], va, ob[2], ob[3]);
      }
    }

    // dS^T = P^T * (dP^T - Delta[query]), with the bf16 P^T that dV used (dS^T is rounded to
    // bf16 next anyway). To a-fragments for dK, and to shared memory for dQ, which sums over
    // the keys of all warps.
    uint32_t dsa[kBlockM / 16][4];
#pragma unroll
    for (int n = 0; n < kBlockM / 8; ++n) {
      const int kq = n / 2, hi = (n & 1) * 2;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const uint32_t pp = pa[kq][hi + half];
        const float p0 = __uint_as_float(pp << 16), p1 = __uint_as_float(pp & 0xffff0000u);
        const float d0 = delta_t[8 * n + 2 * tq], d1 = delta_t[8 * n + 2 * tq + 1];
        dsa[kq][hi + half] =
            pack_bf16(p0 * (acc[n][2 * half] - d0), p1 * (acc[n][2 * half + 1] - d1));
      }
      bf16* ds_row = ds_tile + (16 * warp + g) * PS + 8 * n + 2 * tq;
      *reinterpret_cast<uint32_t*>(ds_row) = dsa[kq][hi];
      *reinterpret_cast<uint32_t*>(ds_row + 8 * PS) = dsa[kq][hi + 1];
    }

    // dK (16 x D) += dS^T (16 x BM) Q (BM x D); the softmax scale is applied at the end.
#pragma unroll
    for (int kq = 0; kq < kBlockM / 16; ++kq) {
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t qb[4];
        ldsm_x4_t(qb, addr_a(q_tile, P, 16 * kq, 16 * dn, lane));
        mma_bf16(dk[2 * dn], dsa[kq], qb[0], qb[1]);
        mma_bf16(dk[2 * dn + 1], dsa[kq], qb[2], qb[3]);
      }
    }
    // dS^T complete; also every warp is done with this block's Q, dO, lse and Delta, so the
    // single-stage configuration can load the next block now, overlapping the dQ product.
    __syncthreads();
    if (kStages == 1 && it + 1 < num) {
      load_q_block(mb + 1, 0);
      cp_async_commit();
    }

    // dQ (BM x D) += dS (BM x BN) K (BN x D), this warp's 16 x kDqCols slice, into the fp32
    // accumulator shared by all key blocks.
#pragma unroll
    for (int c0 = dq_c0; c0 < dq_c0 + Cfg::kDqCols; c0 += Cfg::kDqPassCols) {
      float dq[Cfg::kDqPassCols / 8][4];
#pragma unroll
      for (int n = 0; n < Cfg::kDqPassCols / 8; ++n)
        dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t sa[4];  // dS (16 queries x 16 keys) from the dS^T tile
        ldsm_x4_t(sa, addr_b(ds_tile, PS, 16 * kk, 16 * dq_mt, lane));
#pragma unroll
        for (int dn = 0; dn < Cfg::kDqPassCols / 16; ++dn) {
          uint32_t kb[4];
          ldsm_x4_t(kb, addr_a(k_tile, P, 16 * kk, c0 + 16 * dn, lane));
          mma_bf16(dq[2 * dn], sa, kb[0], kb[1]);
          mma_bf16(dq[2 * dn + 1], sa, kb[2], kb[3]);
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = qb0 + 16 * dq_mt + g + 8 * r;
        if (row >= p.Tq) continue;
        float* dst = dq_acc + static_cast<int64_t>(row) * D + c0 + 2 * tq;
#pragma unroll
        for (int n = 0; n < Cfg::kDqPassCols / 8; ++n) {
#if __CUDA_ARCH__ >= 900
          atomicAdd(reinterpret_cast<float2*>(dst + 8 * n),
                    make_float2(dq[n][2 * r] * p.scale, dq[n][2 * r + 1] * p.scale));
#else
          atomicAdd(dst + 8 * n, dq[n][2 * r] * p.scale);
          atomicAdd(dst + 8 * n + 1, dq[n][2 * r + 1] * p.scale);
#endif
        }
      }
    }
  }

  cp_async_wait_all();  // without query blocks, the K/V copies were never waited for

  // dK, dV of keys < Tk (zero for keys no query sees: the loop never ran or P was 0).
  store_dk_dv<D>(dk, dv, key_r, tq, p, b, h);
#endif
}

// dq (B, Tq, H, D; strided bf16) = dq_accum (B, H, Tq, D; fp32), 8 elements per thread.
template <int D>
__global__ void dq_convert_kernel(const Params p) {
  constexpr int kChunks = D / 8;
  const int64_t total = static_cast<int64_t>(p.B) * p.H * p.Tq * kChunks;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < total;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int ch = static_cast<int>(c % kChunks);
    const int64_t row = c / kChunks;  // (b*H + h)*Tq + i
    const int i = static_cast<int>(row % p.Tq);
    const int64_t bh = row / p.Tq;
    const int h = static_cast<int>(bh % p.H), b = static_cast<int>(bh / p.H);
    const float4* src = reinterpret_cast<const float4*>(p.dq_accum + row * D + ch * 8);
    const float4 x = src[0], y = src[1];
    uint4 out;
    out.x = pack_bf16(x.x, x.y);
    out.y = pack_bf16(x.z, x.w);
    out.z = pack_bf16(y.x, y.y);
    out.w = pack_bf16(y.z, y.w);
    bf16* dst = head_ptr<bf16, D>(p.dq, b, h) + static_cast<int64_t>(i) * p.dq.rs + ch * 8;
    *reinterpret_cast<uint4*>(dst) = out;
  }
}

// =============================================================================================
// Backward preprocessing (both dtypes): Delta = rowsum(dO * O) in fp32; zeroes the fp32 dQ
// accumulator when there is one. One warp per (b, h, i) row.
// =============================================================================================

template <class T, int D>
__global__ void bwd_preprocess_kernel(const Params p) {
  constexpr int kWarps = 8;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.Tq;
  if (row >= rows) return;
  const int i = static_cast<int>(row % p.Tq);
  const int64_t bh = row / p.Tq;
  const int h = static_cast<int>(bh % p.H), b = static_cast<int>(bh / p.H);
  const T* o = head_ptr<const T, D>(p.out, b, h) + static_cast<int64_t>(i) * p.out.rs;
  const T* g = head_ptr<const T, D>(p.dout, b, h) + static_cast<int64_t>(i) * p.dout.rs;
  float sum = 0.f;
#pragma unroll
  for (int d = lane; d < D; d += 32) sum += to_float(o[d]) * to_float(g[d]);
  sum = warp_sum(sum);
  if (lane == 0) p.delta[row] = sum;
  if (p.dq_accum != nullptr) {
#pragma unroll
    for (int d = lane; d < D; d += 32) p.dq_accum[row * D + d] = 0.f;
  }
}

// =============================================================================================
// fp32 path (CUDA cores, any arch): a CTA of 4 warps handles 32 rows, each warp 8 of them;
// tiles of 32 rows of the other side are streamed through shared memory. For scores a lane
// owns one key (or query) of the tile; for the D-wide accumulators a lane owns the columns
// lane + 32e. Row pitches of D + 1 where a lane walks its own row keep the banks distinct.
// =============================================================================================

constexpr int kF32Warps = 4;
constexpr int kF32Threads = 32 * kF32Warps;
constexpr int kF32RowsPerWarp = 8;
constexpr int kF32Rows = kF32Warps * kF32RowsPerWarp;  // rows per CTA and per streamed tile

// dst[r * pitch + c] = src row (row0 + r), column c, for r < 32; zero past `limit`.
template <int D>
__device__ __forceinline__ void load_tile_f32(float* dst, int pitch, const float* src, int64_t rs,
                                              int row0, int limit) {
  for (int idx = threadIdx.x; idx < kF32Rows * D; idx += kF32Threads) {
    const int r = idx / D, c = idx % D;
    dst[r * pitch + c] = row0 + r < limit ? src[static_cast<int64_t>(row0 + r) * rs + c] : 0.f;
  }
}

template <int D>
__device__ __forceinline__ float dot(const float* a, const float* b) {
  float s = 0.f;
#pragma unroll 16
  for (int d = 0; d < D; ++d) s = fmaf(a[d], b[d], s);
  return s;
}

template <int D>
struct F32Smem {
  // forward: Q (32 x D), K (32 x D+1), V (32 x D), P per warp (8 x 32)
  static constexpr size_t kFwd =
      sizeof(float) * (kF32Rows * D + kF32Rows * (D + 1) + kF32Rows * D + kF32Rows * 32);
  // dK/dV: K, V (32 x D), Q, dO (32 x D+1), lse, Delta (32), P and dS per warp (8 x 32)
  static constexpr size_t kDkdv = sizeof(float) * (2 * kF32Rows * D + 2 * kF32Rows * (D + 1) +
                                                   2 * kF32Rows + 2 * kF32Rows * 32);
  // dQ: Q, dO (32 x D), K, V (32 x D+1), dS per warp (8 x 32)
  static constexpr size_t kDq =
      sizeof(float) * (2 * kF32Rows * D + 2 * kF32Rows * (D + 1) + kF32Rows * 32);
};

template <int D>
__global__ void __launch_bounds__(kF32Threads, 2) flash_fwd_f32_kernel(const Params p) {
  constexpr int DE = D / 32;
  extern __shared__ float fsm[];
  float* qs = fsm;                      // (32, D)
  float* ks = qs + kF32Rows * D;        // (32, D+1)
  float* vs = ks + kF32Rows * (D + 1);  // (32, D)
  float* ps = vs + kF32Rows * D;        // (4 warps, 8 rows, 32 keys)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int mb = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int q0 = mb * kF32Rows, h = blockIdx.y, b = blockIdx.z;
  float* pw = ps + warp * kF32RowsPerWarp * 32;

  load_tile_f32<D>(qs, D, head_ptr<const float, D>(p.q, b, h), p.q.rs, q0, p.Tq);
  const float* kg = head_ptr<const float, D>(p.k, b, h);
  const float* vg = head_ptr<const float, D>(p.v, b, h);
  const int kend = p.causal ? min(p.Tk, p.q_offset + q0 + kF32Rows) : p.Tk;

  float o[kF32RowsPerWarp][DE], m[kF32RowsPerWarp], l[kF32RowsPerWarp];
#pragma unroll
  for (int r = 0; r < kF32RowsPerWarp; ++r) {
    m[r] = -kInf;
    l[r] = 0.f;
#pragma unroll
    for (int e = 0; e < DE; ++e) o[r][e] = 0.f;
  }

  for (int k0 = 0; k0 < kend; k0 += kF32Rows) {
    __syncthreads();  // every warp is done with the previous tile
    load_tile_f32<D>(ks, D + 1, kg, p.k.rs, k0, p.Tk);
    load_tile_f32<D>(vs, D, vg, p.v.rs, k0, p.Tk);
    __syncthreads();
    const int key = k0 + lane;
#pragma unroll
    for (int r = 0; r < kF32RowsPerWarp; ++r) {
      const int row = kF32RowsPerWarp * warp + r;
      float s = dot<D>(qs + row * D, ks + lane * (D + 1)) * p.scale;
      if (key >= p.Tk || (p.causal && key > p.q_offset + q0 + row)) s = -kInf;
      const float m_new = fmaxf(m[r], warp_max(s));
      const float m_use = m_new == -kInf ? 0.f : m_new;  // see the bf16 kernel
      const float pv = expf(s - m_use);
      const float alpha = expf(m[r] - m_use);
      l[r] = l[r] * alpha + warp_sum(pv);
      m[r] = m_new;
#pragma unroll
      for (int e = 0; e < DE; ++e) o[r][e] *= alpha;
      pw[r * 32 + lane] = pv;
    }
    __syncwarp();
    for (int j = 0; j < kF32Rows; ++j) {
#pragma unroll
      for (int e = 0; e < DE; ++e) {
        const float vv = vs[j * D + lane + 32 * e];
#pragma unroll
        for (int r = 0; r < kF32RowsPerWarp; ++r) o[r][e] = fmaf(pw[r * 32 + j], vv, o[r][e]);
      }
    }
  }

  float* og = head_ptr<float, D>(p.out, b, h);
  float* lse = p.lse + (static_cast<int64_t>(b) * p.H + h) * p.Tq;
#pragma unroll
  for (int r = 0; r < kF32RowsPerWarp; ++r) {
    const int row = q0 + kF32RowsPerWarp * warp + r;
    if (row >= p.Tq) continue;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
#pragma unroll
    for (int e = 0; e < DE; ++e)
      og[static_cast<int64_t>(row) * p.out.rs + lane + 32 * e] = o[r][e] * inv;
    if (lane == 0) lse[row] = l[r] > 0.f ? m[r] + logf(l[r]) : -kInf;
  }
}

// dK, dV of a 32-key block, looping over the query tiles that see it.
template <int D>
__global__ void __launch_bounds__(kF32Threads, 2) flash_bwd_dkdv_f32_kernel(const Params p) {
  constexpr int DE = D / 32;
  extern __shared__ float fsm[];
  float* ks = fsm;                          // (32, D)
  float* vs = ks + kF32Rows * D;            // (32, D)
  float* qs = vs + kF32Rows * D;            // (32, D+1)
  float* dos = qs + kF32Rows * (D + 1);     // (32, D+1)
  float* lse_s = dos + kF32Rows * (D + 1);  // (32)
  float* delta_s = lse_s + kF32Rows;        // (32)
  float* ps = delta_s + kF32Rows;           // (4 warps, 8 keys, 32 queries)
  float* dss = ps + kF32Rows * 32;          // (4 warps, 8 keys, 32 queries)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int k0 = blockIdx.x * kF32Rows, h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(b) * p.H + h;
  float* pw = ps + warp * kF32RowsPerWarp * 32;
  float* dsw = dss + warp * kF32RowsPerWarp * 32;

  load_tile_f32<D>(ks, D, head_ptr<const float, D>(p.k, b, h), p.k.rs, k0, p.Tk);
  load_tile_f32<D>(vs, D, head_ptr<const float, D>(p.v, b, h), p.v.rs, k0, p.Tk);
  const float* qg = head_ptr<const float, D>(p.q, b, h);
  const float* dog = head_ptr<const float, D>(p.dout, b, h);

  float dk[kF32RowsPerWarp][DE], dv[kF32RowsPerWarp][DE];
#pragma unroll
  for (int r = 0; r < kF32RowsPerWarp; ++r)
#pragma unroll
    for (int e = 0; e < DE; ++e) dk[r][e] = dv[r][e] = 0.f;

  // The first query seeing key k0 is k0 - q_offset; earlier tiles are fully masked.
  const int q_first = p.causal ? max(0, k0 - p.q_offset) : 0;
  for (int qt0 = q_first / kF32Rows * kF32Rows; qt0 < p.Tq; qt0 += kF32Rows) {
    __syncthreads();  // every warp is done with the previous tile
    load_tile_f32<D>(qs, D + 1, qg, p.q.rs, qt0, p.Tq);
    load_tile_f32<D>(dos, D + 1, dog, p.dout.rs, qt0, p.Tq);
    if (threadIdx.x < kF32Rows) {
      const int i = qt0 + threadIdx.x;
      lse_s[threadIdx.x] = i < p.Tq ? p.lse[bh * p.Tq + i] : 0.f;
      delta_s[threadIdx.x] = i < p.Tq ? p.delta[bh * p.Tq + i] : 0.f;
    }
    __syncthreads();
    const int qi = qt0 + lane;
#pragma unroll
    for (int r = 0; r < kF32RowsPerWarp; ++r) {
      const int kr = kF32RowsPerWarp * warp + r, key = k0 + kr;
      const float s = dot<D>(ks + kr * D, qs + lane * (D + 1)) * p.scale;
      const bool visible = qi < p.Tq && key < p.Tk && (!p.causal || key <= p.q_offset + qi);
      const float pv = visible ? expf(s - lse_s[lane]) : 0.f;
      const float dpv = dot<D>(vs + kr * D, dos + lane * (D + 1));
      pw[r * 32 + lane] = pv;
      dsw[r * 32 + lane] = pv * (dpv - delta_s[lane]);
    }
    __syncwarp();
    for (int i = 0; i < kF32Rows; ++i) {
#pragma unroll
      for (int e = 0; e < DE; ++e) {
        const float gv = dos[i * (D + 1) + lane + 32 * e];
        const float qv = qs[i * (D + 1) + lane + 32 * e];
#pragma unroll
        for (int r = 0; r < kF32RowsPerWarp; ++r) {
          dv[r][e] = fmaf(pw[r * 32 + i], gv, dv[r][e]);
          dk[r][e] = fmaf(dsw[r * 32 + i], qv, dk[r][e]);
        }
      }
    }
  }

  float* dkg = head_ptr<float, D>(p.dk, b, h);
  float* dvg = head_ptr<float, D>(p.dv, b, h);
#pragma unroll
  for (int r = 0; r < kF32RowsPerWarp; ++r) {
    const int key = k0 + kF32RowsPerWarp * warp + r;
    if (key >= p.Tk) continue;
#pragma unroll
    for (int e = 0; e < DE; ++e) {
      dkg[static_cast<int64_t>(key) * p.dk.rs + lane + 32 * e] = dk[r][e] * p.scale;
      dvg[static_cast<int64_t>(key) * p.dv.rs + lane + 32 * e] = dv[r][e];
    }
  }
}

// dQ of a 32-query block, looping over the key tiles it sees (recomputing P and dP).
template <int D>
__global__ void __launch_bounds__(kF32Threads, 2) flash_bwd_dq_f32_kernel(const Params p) {
  constexpr int DE = D / 32;
  extern __shared__ float fsm[];
  float* qs = fsm;                       // (32, D)
  float* dos = qs + kF32Rows * D;        // (32, D)
  float* ks = dos + kF32Rows * D;        // (32, D+1)
  float* vs = ks + kF32Rows * (D + 1);   // (32, D+1)
  float* dss = vs + kF32Rows * (D + 1);  // (4 warps, 8 queries, 32 keys)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int mb = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int q0 = mb * kF32Rows, h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(b) * p.H + h;
  float* dsw = dss + warp * kF32RowsPerWarp * 32;

  load_tile_f32<D>(qs, D, head_ptr<const float, D>(p.q, b, h), p.q.rs, q0, p.Tq);
  load_tile_f32<D>(dos, D, head_ptr<const float, D>(p.dout, b, h), p.dout.rs, q0, p.Tq);
  const float* kg = head_ptr<const float, D>(p.k, b, h);
  const float* vg = head_ptr<const float, D>(p.v, b, h);
  float lse_r[kF32RowsPerWarp], delta_r[kF32RowsPerWarp], dq[kF32RowsPerWarp][DE];
#pragma unroll
  for (int r = 0; r < kF32RowsPerWarp; ++r) {
    const int row = q0 + kF32RowsPerWarp * warp + r;
    lse_r[r] = row < p.Tq ? p.lse[bh * p.Tq + row] : 0.f;
    delta_r[r] = row < p.Tq ? p.delta[bh * p.Tq + row] : 0.f;
#pragma unroll
    for (int e = 0; e < DE; ++e) dq[r][e] = 0.f;
  }
  const int kend = p.causal ? min(p.Tk, p.q_offset + q0 + kF32Rows) : p.Tk;

  for (int k0 = 0; k0 < kend; k0 += kF32Rows) {
    __syncthreads();  // every warp is done with the previous tile
    load_tile_f32<D>(ks, D + 1, kg, p.k.rs, k0, p.Tk);
    load_tile_f32<D>(vs, D + 1, vg, p.v.rs, k0, p.Tk);
    __syncthreads();
    const int key = k0 + lane;
#pragma unroll
    for (int r = 0; r < kF32RowsPerWarp; ++r) {
      const int qr = kF32RowsPerWarp * warp + r, qi = q0 + qr;
      const float s = dot<D>(qs + qr * D, ks + lane * (D + 1)) * p.scale;
      const bool visible = qi < p.Tq && key < p.Tk && (!p.causal || key <= p.q_offset + qi);
      const float pv = visible ? expf(s - lse_r[r]) : 0.f;
      const float dpv = dot<D>(dos + qr * D, vs + lane * (D + 1));
      dsw[r * 32 + lane] = pv * (dpv - delta_r[r]);
    }
    __syncwarp();
    for (int j = 0; j < kF32Rows; ++j) {
#pragma unroll
      for (int e = 0; e < DE; ++e) {
        const float kv = ks[j * (D + 1) + lane + 32 * e];
#pragma unroll
        for (int r = 0; r < kF32RowsPerWarp; ++r) dq[r][e] = fmaf(dsw[r * 32 + j], kv, dq[r][e]);
      }
    }
  }

  float* dqg = head_ptr<float, D>(p.dq, b, h);
#pragma unroll
  for (int r = 0; r < kF32RowsPerWarp; ++r) {
    const int row = q0 + kF32RowsPerWarp * warp + r;
    if (row >= p.Tq) continue;
#pragma unroll
    for (int e = 0; e < DE; ++e)
      dqg[static_cast<int64_t>(row) * p.dq.rs + lane + 32 * e] = dq[r][e] * p.scale;
  }
}

// =============================================================================================
// host side
// =============================================================================================

// bf16 configurations. Forward: 8 warps x 16 rows = 128-query blocks, 64-key tiles. Backward:
// 8 warps x 16 keys = 128-key blocks with double-buffered 64-query blocks where the GPU has the
// shared memory (A100, H100), else 4 warps (64 keys) single-buffered (e.g. sm_86/sm_89, ~99 KB).
template <int D>
using FwdCfg = FwdBf16<D, 8, 64>;
template <int D>
using BwdBigCfg = BwdBf16<D, 8, 2>;
template <int D>
using BwdSmallCfg = BwdBf16<D, 4, 1>;


struct DeviceInfo {
  int device = 0, cc_major = 0, cc_minor = 0;
  size_t max_smem = 0;  // opt-in dynamic shared memory per block
  int multiprocessors = 0;
};

// The current device's attributes, read once per device ordinal (every flash call asks).
DeviceInfo device_info() {
  constexpr int kMaxDevices = 64;
  static DeviceInfo cache[kMaxDevices];
  static std::once_flag read[kMaxDevices];
  int device = 0;
  LSS_CUDA_CHECK(cudaGetDevice(&device));
  const auto query = [device] {
    DeviceInfo info;
    info.device = device;
    LSS_CUDA_CHECK(cudaDeviceGetAttribute(&info.cc_major, cudaDevAttrComputeCapabilityMajor, device));
    LSS_CUDA_CHECK(cudaDeviceGetAttribute(&info.cc_minor, cudaDevAttrComputeCapabilityMinor, device));
    int smem = 0;
    LSS_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    info.max_smem = static_cast<size_t>(smem);
    LSS_CUDA_CHECK(cudaDeviceGetAttribute(&info.multiprocessors, cudaDevAttrMultiProcessorCount, device));
    return info;
  };
  if (device < 0 || device >= kMaxDevices) return query();
  std::call_once(read[device], [&] { cache[device] = query(); });
  return cache[device];
}

// Calls f(std::integral_constant<int, D>) for a supported head dim.
template <class F>
void dispatch_head_dim(int64_t D, F&& f) {
  switch (D) {
    case 32:
      f(std::integral_constant<int, 32>{});
      return;
    case 64:
      f(std::integral_constant<int, 64>{});
      return;
    case 128:
      f(std::integral_constant<int, 128>{});
      return;
    default:
      throw UsageError("flash attention: unsupported head dim " + std::to_string(D));
  }
}

bool head_dim_ok(int64_t D) { return D == 32 || D == 64 || D == 128; }

std::atomic<FlashKernels> g_flash_kernels{FlashKernels::automatic};

// Whether the bf16 path can run the wgmma kernels here: built for sm_90a, a 9.0 GPU (sm_90a code
// runs on nothing else), D 64 or 128, and the shared memory.
bool wgmma_possible(const DeviceInfo& dev, int64_t D) {
  return sm90_kernels_built() && dev.cc_major == 9 && dev.cc_minor == 0 &&
         sm90_head_dim_ok(static_cast<int>(D)) && sm90_smem_bytes(static_cast<int>(D)) <= dev.max_smem;
}

bool use_wgmma(const DeviceInfo& dev, int64_t D) {
  switch (g_flash_kernels.load()) {
    case FlashKernels::mma_sync:
      return false;
    case FlashKernels::wgmma:
      LSS_REQUIRE_INPUT(wgmma_possible(dev, D),
                        "flash attention: the wgmma kernels were requested but cannot run here "
                        "(they need a build for sm_90a, a compute capability 9.0 GPU and D = 64 "
                        "or 128; D = " + std::to_string(D) + ")");
      return true;
    case FlashKernels::automatic:
      break;
  }
  return wgmma_possible(dev, D);
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// cp.async moves 16-byte chunks of 8 bf16: every row of every head must start 16-byte aligned.
bool operand_aligned_bf16(const AttnOperand& o) {
  return o.ptr == nullptr || (aligned16(o.ptr) && o.batch_stride % 8 == 0 && o.row_stride % 8 == 0);
}

// Everything flash_attention_supported() checks except null operands.
std::string unsupported_reason(const AttentionArgs& a) {
  if (!head_dim_ok(a.D)) return "head dim " + std::to_string(a.D) + " (supported: 32, 64, 128)";
  constexpr int64_t kMaxLen = int64_t{1} << 30;  // int32 positions, with room for block padding
  if (a.Tq >= kMaxLen || a.Tk >= kMaxLen || a.q_offset >= kMaxLen || a.B > 65535 || a.H > 65535 ||
      cdiv(std::max(a.Tq, a.Tk), 64) > 65535)
    return "sizes out of range (Tq, Tk, q_offset < 2^30 and Tq, Tk < 4M; B, H <= 65535)";
  if (a.dtype != DType::f32 && a.dtype != DType::bf16)
    return std::string("dtype ") + dtype_name(a.dtype) + " (supported: fp32, bf16)";
  const DeviceInfo dev = device_info();
  size_t need = 0;
  if (a.dtype == DType::bf16) {
    if (dev.cc_major < 8) return "bf16 needs compute capability 8.0 or newer";
    for (const AttnOperand* o : {&a.q, &a.k, &a.v, &a.out, &a.dout, &a.dq, &a.dk, &a.dv})
      if (!operand_aligned_bf16(*o))
        return "bf16 operands need 16-byte aligned pointers and strides that are multiples of 8";
    dispatch_head_dim(a.D, [&](auto d) {
      constexpr int D = decltype(d)::value;
      need = std::max(FwdCfg<D>::kSmemBytes, BwdSmallCfg<D>::kSmemBytes);
    });
  } else {
    dispatch_head_dim(a.D, [&](auto d) {
      constexpr int D = decltype(d)::value;
      need = std::max({F32Smem<D>::kFwd, F32Smem<D>::kDkdv, F32Smem<D>::kDq});
    });
  }
  if (need > dev.max_smem) return "not enough shared memory per block on this GPU";
  return "";
}

void validate(const AttentionArgs& a, bool backward) {
  const char* op = backward ? "flash_attention_backward" : "flash_attention_forward";
  LSS_REQUIRE_INPUT(a.B >= 0 && a.H >= 0 && a.Tq >= 0 && a.Tk >= 0 && a.q_offset >= 0,
                    std::string(op) + ": negative size");
  // The row max is taken before scaling, which is only the max of the scaled scores for a
  // positive scale.
  LSS_REQUIRE_INPUT(a.scale > 0.0, std::string(op) + ": the softmax scale must be positive");
  const std::string why = unsupported_reason(a);
  LSS_REQUIRE_INPUT(why.empty(), std::string(op) + ": unsupported: " + why);
  const int64_t HD = a.H * a.D;
  auto check = [&](const AttnOperand& o, const char* what) {
    LSS_REQUIRE_INPUT(o.ptr != nullptr && o.row_stride >= HD && o.batch_stride >= 0,
                      std::string(op) + ": operand " + what + " is null or has row_stride < H*D");
  };
  check(a.q, "q");
  check(a.k, "k");
  check(a.v, "v");
  check(a.out, "out");
  LSS_REQUIRE_INPUT(a.lse != nullptr, std::string(op) + ": lse is null");
  if (backward) {
    check(a.dout, "dout");
    check(a.dq, "dq");
    check(a.dk, "dk");
    check(a.dv, "dv");
  }
}

Params make_params(const AttentionArgs& a) {
  auto t = [](const AttnOperand& o) { return Tensor{o.ptr, o.batch_stride, o.row_stride}; };
  Params p{};
  p.q = t(a.q);
  p.k = t(a.k);
  p.v = t(a.v);
  p.out = t(a.out);
  p.dout = t(a.dout);
  p.dq = t(a.dq);
  p.dk = t(a.dk);
  p.dv = t(a.dv);
  p.lse = static_cast<float*>(a.lse);
  p.B = static_cast<int>(a.B);
  p.H = static_cast<int>(a.H);
  p.Tq = static_cast<int>(a.Tq);
  p.Tk = static_cast<int>(a.Tk);
  p.q_offset = static_cast<int>(a.q_offset);
  p.causal = a.causal;
  p.scale = static_cast<float>(a.scale);
  p.scale_log2 = static_cast<float>(a.scale * 1.4426950408889634);
  return p;
}

template <int D, class Cfg>
void launch_bwd_bf16(const Params& p, cudaStream_t stream, int device) {
  const dim3 grid(p.H, static_cast<unsigned>(cdiv(p.Tk, Cfg::kBlockN)), p.B);
  launch<flash_bwd_bf16_kernel<D, Cfg::kNumWarps, Cfg::kNumStages>>(
      grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p, device);
}

// Workspace layout: [dq_accum fp32, bf16 only: (B, H, Tq, D) rows for the mma.sync kernels,
// 64-query tiles for the wgmma ones (Tq rounded up to 64)][delta (B, H, Tq) fp32]; the base must
// be 16-byte aligned (any allocator's blocks are).
size_t dq_accum_bytes(const AttentionArgs& a) {
  return a.dtype == DType::bf16 ? dq_accum_sm90_floats(a.B, a.H, a.Tq, a.D) * sizeof(float) : 0;
}

}  // namespace

void set_flash_kernels(FlashKernels kernels) { g_flash_kernels.store(kernels); }

bool flash_wgmma_available(int64_t D) { return wgmma_possible(device_info(), D); }

bool flash_attention_supported(const AttentionArgs& args) {
  return unsupported_reason(args).empty();
}

bool flash_attention_preferred(const AttentionArgs& args) {
  return args.dtype == DType::bf16 && (args.D == 128 || args.D == 64) &&
         g_flash_kernels.load() != FlashKernels::mma_sync && flash_wgmma_available(args.D) &&
         flash_attention_supported(args);
}

void flash_attention_forward(const AttentionArgs& a, cudaStream_t stream) {
  validate(a, false);
  if (a.B == 0 || a.H == 0 || a.Tq == 0) return;
  const Params p = make_params(a);
  const DeviceInfo dev = device_info();
  const int device = dev.device;
  dispatch_head_dim(a.D, [&](auto d) {
    constexpr int D = decltype(d)::value;
    if (a.dtype == DType::bf16 && use_wgmma(dev, D)) {
      sm90_forward(p, D, stream, dev.device, dev.multiprocessors);
    } else if (a.dtype == DType::bf16) {
      using Cfg = FwdCfg<D>;
      const dim3 grid(p.H, static_cast<unsigned>(cdiv(a.Tq, Cfg::kBlockM)), p.B);
      launch<flash_fwd_bf16_kernel<D, Cfg::kNumWarps, Cfg::kTileN>>(
          grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p, device);
    } else {
      const dim3 grid(static_cast<unsigned>(cdiv(a.Tq, kF32Rows)), p.H, p.B);
      launch<flash_fwd_f32_kernel<D>>(grid, kF32Threads, F32Smem<D>::kFwd, stream, p, device);
    }
  });
}

size_t flash_attention_backward_workspace(const AttentionArgs& args) {
  return dq_accum_bytes(args) + static_cast<size_t>(args.B * args.H * args.Tq) * sizeof(float);
}

void flash_attention_backward(const AttentionArgs& a, void* workspace, cudaStream_t stream) {
  validate(a, true);
  if (a.B == 0 || a.H == 0) return;
  LSS_REQUIRE_INPUT(workspace != nullptr || flash_attention_backward_workspace(a) == 0,
                    "flash_attention_backward: workspace is null");
  // The dQ accumulator is read as float4 (and updated with float2 atomics on sm_90).
  LSS_REQUIRE_INPUT(aligned16(workspace),
                    "flash_attention_backward: workspace is not 16-byte aligned");
  Params p = make_params(a);
  const size_t acc_bytes = dq_accum_bytes(a);
  p.dq_accum = acc_bytes > 0 ? static_cast<float*>(workspace) : nullptr;
  p.delta = reinterpret_cast<float*>(static_cast<char*>(workspace) + acc_bytes);
  const DeviceInfo dev = device_info();
  const int64_t rows = a.B * a.H * a.Tq;
  dispatch_head_dim(a.D, [&](auto d) {
    constexpr int D = decltype(d)::value;
    if (a.dtype == DType::bf16) {
      // Without queries the mma.sync kernel writes the zero dK/dV (the wgmma one would need a Q
      // tensor map).
      const bool wgmma = a.Tq > 0 && use_wgmma(dev, D);
      Params pre = p;
      if (wgmma) pre.dq_accum = nullptr;  // the wgmma backward zeroes its own dQ tiles
      launch<bwd_preprocess_kernel<bf16, D>>(dim3(static_cast<unsigned>(cdiv(rows, 8))), 256, 0,
                                             stream, pre, dev.device);
      if (wgmma) {
        sm90_backward(p, D, stream, dev.device, dev.multiprocessors);
        return;
      }
      if (BwdBigCfg<D>::kSmemBytes <= dev.max_smem)
        launch_bwd_bf16<D, BwdBigCfg<D>>(p, stream, dev.device);
      else
        launch_bwd_bf16<D, BwdSmallCfg<D>>(p, stream, dev.device);
      const int64_t chunks = rows * (D / 8);
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(cdiv(chunks, 256), 65536));
      launch<dq_convert_kernel<D>>(dim3(blocks), 256, 0, stream, p, dev.device);
    } else {
      launch<bwd_preprocess_kernel<float, D>>(dim3(static_cast<unsigned>(cdiv(rows, 8))), 256, 0,
                                              stream, p, dev.device);
      launch<flash_bwd_dkdv_f32_kernel<D>>(
          dim3(static_cast<unsigned>(cdiv(a.Tk, kF32Rows)), p.H, p.B), kF32Threads,
          F32Smem<D>::kDkdv, stream, p, dev.device);
      launch<flash_bwd_dq_f32_kernel<D>>(
          dim3(static_cast<unsigned>(cdiv(a.Tq, kF32Rows)), p.H, p.B), kF32Threads, F32Smem<D>::kDq,
          stream, p, dev.device);
    }
  });
}

}  // namespace lss::cuda
