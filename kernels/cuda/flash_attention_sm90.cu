// Flash attention for Hopper (sm_90a): the FlashAttention-2/3 arithmetic of flash_attention.cu
// on warpgroup MMAs (wgmma), which read their operands from shared memory themselves instead of
// every warp pulling its own copy through ldmatrix: the mma.sync kernels are bound by that shared
// memory traffic on H100/H200 (~270 TFLOP/s), wgmma is not.
//
// Shared tiles: R rows x D bf16 columns stored as D/64 column blocks of R x 64 (one 128-byte row
// each), the 16-byte chunk c of row r at chunk position c ^ (r % 8): the 128-byte swizzle of the
// wgmma operand layouts, which TMA writes itself. One such tile is a K-major operand when its columns are the
// reduction dimension (Q, K for S = Q K^T) and an MN-major one when its rows are (V for O = P V),
// so every operand is loaded the same way.
//
//   forward : one CTA per (query block, head, batch): a producer thread streams 128-key K/V
//             tiles with TMA (three stages, mbarriers) to consumer warpgroups of 64 query rows
//             (two at D = 128, three at D = 64), which take turns on the tensor cores: S = Q K^T
//             from shared memory, the online softmax in registers, O += P V with P from registers
//             (the previous tile's, beside this tile's softmax). The producer thread's warpgroup
//             hands its registers to the consumers.
//   backward: one CTA per (128-key block, head, batch): a producer warpgroup streams 64-query
//             blocks of Q and dO with TMA (two stages) to two consumer warpgroups of 64 keys each:
//             S^T = K Q^T and dP^T = V dO^T from shared memory, dV += P^T dO and dK += dS^T Q with
//             P^T and dS^T from registers, dQ = dS K from the dS^T tile (written with stmatrix),
//             added to the fp32 workspace from registers (D = 128) or through a shared tile that
//             the producer's second warp adds with one bulk reduction (D = 64). At D = 128 the
//             warpgroups take turns on the tensor cores as the forward's do, and dQ lags a block.
// The fragment layouts of wgmma's register operands match mma.sync's (per warp: rows g and g+8
// of its 16, columns 2t, 2t+1 of each 8-column block), so both generations share the softmax
// and store code (flash_attention_common.cuh).
#include "kernels/cuda/flash_attention_sm90.h"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include "core/check.h"
#include "kernels/cuda/flash_attention_common.cuh"

namespace lss::cuda::flash_detail {
namespace {

// The kernel bodies exist only in the sm_90a code (wgmma is not in the portable sm_90 set); the
// host side dispatches here only when that code was built (LSS_FLASH_SM90A) and the GPU is 9.0.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LSS_SM90A_BODY 1
#endif

// wgmma shared-memory matrix descriptor with the 128-byte swizzle: start address, leading and
// stride byte offsets (all in 16-byte units). K-major: the stride offset steps 8 rows (1024 bytes
// here), the leading one is unused. MN-major: the stride offset steps 8 rows of K (1024), the
// leading one steps to the next 64-column block (the tile's block size).
// Built as the tile's descriptor plus bytes / 16 (bytes a multiple of 16): shared-window addresses
// are below 256 KB, so the 14-bit start field needs no mask, and each k-step's or row block's
// descriptor is one add to its tile's, where masking and shifting tile + bytes rebuilt all of it for
// every wgmma (forward +3-7%, forward+backward +1-2%; results/h200-x1/20261129T1405-flash-bwd-descriptors
// and 20261129T1530-flash-bwd-desc-d128).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t tile, uint32_t bytes, uint32_t lead_bytes,
                                               uint32_t stride_bytes) {
  const uint32_t lo = (tile >> 4) + ((lead_bytes >> 4) << 16) + (bytes >> 4);
  return static_cast<uint64_t>(lo) | (static_cast<uint64_t>(stride_bytes >> 4) << 32) | (uint64_t{1} << 62);
}

// K-major operand: rows [row0, row0 + 64 or N) of a tile of kRows rows, reduction step kk (16
// columns of the D).
template <int kRows>
__device__ __forceinline__ uint64_t desc_k_major(uint32_t tile, int row0, int kk) {
  return sw128_desc(tile, (kk >> 2) * (kRows * 128) + row0 * 128 + (kk & 3) * 32, 16, 1024);
}

// MN-major operand: reduction rows [16 kk, 16 kk + 16) of a tile of kRows rows, its columns from
// 64-column block `block` on.
template <int kRows>
__device__ __forceinline__ uint64_t desc_mn_major(uint32_t tile, int kk, int block = 0) {
  return sw128_desc(tile, block * (kRows * 128) + kk * 2048, kRows * 128, 1024);
}

// x as a value the compiler sees warp-uniform but cannot hoist out of the loop it is called in.
__device__ __forceinline__ uint32_t uniform_here(uint32_t x) {
  asm volatile("" : "+r"(x));
  return __shfl_sync(0xffffffffu, x, 0);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Generic-proxy writes to shared memory (cp.async, st.shared) made visible to the async proxy
// that wgmma reads through; before the barrier that publishes them.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// mbarrier (shared memory, 8 bytes): init with an arrival count; arrive; wait for the phase with
// the given parity to complete.
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(bar)
               : "memory");
}
// One arrival that also announces `bytes` of asynchronous copies completing on this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile(
      "{\n.reg .b64 state;\nmbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n" ::"r"(bar),
      "r"(bytes)
      : "memory");
}
// TMA: the box at coordinates (c0 innermost .. c3) of a 4-D tensor map into shared memory at
// `dst`, completing `bar`'s transaction count.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2,
                                            int c3, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
      "%4, %5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
  asm volatile(
      "{\n.reg .pred done;\nwait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// Named barriers between consumer warpgroups (ids from 1; 0 is __syncthreads): 128 threads
// sync, another warpgroup's 128 arrive.
__device__ __forceinline__ void named_sync(int id) {
  asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ void named_arrive(int id) {
  asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory");
}
// Keeps the compiler from moving accesses of accumulator registers across a wgmma issue or wait.
template <int N>
__device__ __forceinline__ void reg_fence(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}
template <int N>
__device__ __forceinline__ void reg_fence(uint32_t (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(d[i][e])::"memory");
}

// m64nNk16 bf16 -> fp32 warpgroup MMAs. ss: A and B from shared memory (descriptors), rs: A from
// registers (the mma.sync a-fragment layout per warp). kTrans*: 0 K-major, 1 MN-major.
// accumulate == 0 overwrites d. The accumulator d[n][e] is element e of n-tile n (8 columns),
// as mma.sync's c-fragments: the register order wgmma defines.
template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b,
                                              int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, "
      "%6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
      "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, "
      "%36;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]),
        "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]),
        "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]),
        "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]),
        "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]),
        "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]),
        "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(kTransA), "n"(kTransB));
}

template <int kTransB>
__device__ __forceinline__ void wgmma_rs_n64(float (&d)[8][4], const uint32_t (&a)[4],
                                              uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, "
      "%6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
      "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, "
      "p, 1, 1, %38;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]),
        "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]),
        "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]),
        "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]),
        "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]),
        "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]),
        "+f"(d[7][2]), "+f"(d[7][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate), "n"(kTransB));
}

template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[16][4], uint64_t desc_a, uint64_t desc_b,
                                              int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, "
      "%5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "
      "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "
      "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, "
      "%51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, "
      "p, 1, 1, %67, %68;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]),
        "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]),
        "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]),
        "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]),
        "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]),
        "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]),
        "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]),
        "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]),
        "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]),
        "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]),
        "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]),
        "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]),
        "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(kTransA), "n"(kTransB));
}

template <int kTransB>
__device__ __forceinline__ void wgmma_rs_n128(float (&d)[16][4], const uint32_t (&a)[4],
                                              uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, "
      "%5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "
      "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "
      "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, "
      "%51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, "
      "%66, %67}, %68, p, 1, 1, %70;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]),
        "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]),
        "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]),
        "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]),
        "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]),
        "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]),
        "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]),
        "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]),
        "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]),
        "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]),
        "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]),
        "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]),
        "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate), "n"(kTransB));
}

template <int N, int kTransB>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4],
                                         uint64_t desc_b) {
  if constexpr (N == 64)
    wgmma_rs_n64<kTransB>(d, a, desc_b, 1);
  else
    wgmma_rs_n128<kTransB>(d, a, desc_b, 1);
}

template <int N>
__device__ __forceinline__ void zero(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) d[i][0] = d[i][1] = d[i][2] = d[i][3] = 0.f;
}

// Register budgets per warpgroup (the CTA's 64K registers: 24 x 128 + 240 x 256 fit).
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// ---------------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------------

template <int D, int kStages_, int kConsumerWGs_>
struct FwdSm90 {
  // kConsumerWGs consumer warpgroups of 64 query rows and a producer warpgroup after them, whose
  // first warp issues the copies. The producer keeps 24 registers a thread, so that setmaxnreg can
  // give the rest to the consumers (240 each with two, 160 with three, where 288 threads of two
  // consumers and one producer warp would have 168).
  static constexpr int kConsumerWGs = kConsumerWGs_;
  static constexpr int kProducerWarp = 4 * kConsumerWGs;
  static constexpr int kThreads = 128 * (kConsumerWGs + 1);
  static constexpr int kProducerRegs = 24, kConsumerRegs = (512 - kProducerRegs) / kConsumerWGs / 8 * 8;
  static constexpr int kBlockM = 64 * kConsumerWGs, kBlockN = 128;
  static constexpr int kD = D, kStages = kStages_;
  static constexpr int kTileQ = kBlockM * D * 2, kTileKV = kBlockN * D * 2;  // bytes
  // Q, kStages stages of (K, V), then the stages' full and empty mbarriers; 1 KB to align the
  // base to the swizzle's 1024-byte period.
  static constexpr int kOffBars = kTileQ + 2 * kStages * kTileKV;
  static constexpr size_t kSmemBytes = kOffBars + 2 * kStages * 8 + 1024;
  static_assert(D % 64 == 0, "64-column swizzle blocks");
};

// The forward's configurations. Both use FlashAttention-3's intra-warpgroup overlap (three K/V
// stages, so that the stage the last P V frees is not the next one to load) and a producer
// warpgroup. D = 128: S, P and O of 128 columns need more than the 168 registers of 288 threads
// (ptxas serialises the products, C7512), so the producer gives its registers to two consumers
// (240 each): +6-8% at T = 16K-64K (531-550 -> 568-590 TFLOP/s). D = 64: three consumers (192
// query rows, 160 registers each), so that two warpgroups' products cover each one's softmax:
// +10-16% forward at T = 16K-64K over two consumers with a sixth of the exponentials on the FMA
// pipe (409-420 -> 449-486 TFLOP/s), 3% slower at 4K causal; without the producer warpgroup
// three consumers spill (PERFORMANCE.md, fifteenth, sixteenth and eighteenth sessions).
using FwdD64 = FwdSm90<64, 3, 3>;
using FwdD128 = FwdSm90<128, 3, 2>;

// TMA descriptors of Q, K and V as 4-D tensors (D, H, T, B), boxes of 64 columns x 1 head x 128
// rows x 1 sequence in the 128-byte swizzle: one box is one 64-column block of a shared tile.
struct FwdMaps {
  CUtensorMap q, k, v;
};

// FlashAttention-3's schedule: one producer thread issues the TMA copies of Q and of each K/V
// tile into kStages stages and the copies complete the stage's "full" mbarrier; each consumer warp
// releases a stage on its "empty" mbarrier once its last product reading it has completed. The
// consumer warpgroups take turns on the tensor cores (named barriers, "ping-pong"): one issues
// its S = Q K^T while the others run their softmax, so that the exponentials of one overlap the
// others' matrix products.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    flash_fwd_sm90_kernel(const Params p, const __grid_constant__ FwdMaps maps) {
#ifdef LSS_SM90A_BODY
  constexpr int D = Cfg::kD, kStages = Cfg::kStages;
  constexpr int kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t q_tile = (smem_addr(smem_raw) + 1023u) & ~1023u;
  auto k_tile = [q_tile](int s) { return q_tile + Cfg::kTileQ + s * 2 * Cfg::kTileKV; };
  auto v_tile = [q_tile](int s) { return q_tile + Cfg::kTileQ + (s * 2 + 1) * Cfg::kTileKV; };
  auto full_bar = [q_tile](int s) { return q_tile + Cfg::kOffBars + 8 * s; };
  auto empty_bar = [q_tile](int s) { return q_tile + Cfg::kOffBars + 8 * (kStages + s); };

  const int warp_all = threadIdx.x / 32, lane = threadIdx.x % 32;
  const BlockOfCta cta = block_of_cta(p, (p.Tq + kBlockM - 1) / kBlockM, p.causal);
  const int q0 = cta.block * kBlockM, h = cta.head, b = blockIdx.z;
  const int kend = p.causal ? min(p.Tk, p.q_offset + q0 + kBlockM) : p.Tk;
  const int n_tiles = (kend + kBlockN - 1) / kBlockN;

  if (threadIdx.x == 0) {
#pragma unroll
    for (int st = 0; st < kStages; ++st) {
      mbar_init(full_bar(st), 1);
      mbar_init(empty_bar(st), 4 * Cfg::kConsumerWGs);  // one arrival per consumer warp
    }
    // The initialised barriers visible to the async proxy (the TMA unit completes them).
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (warp_all >= Cfg::kProducerWarp) {
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (warp_all == Cfg::kProducerWarp && lane == 0) {
      for (int j = 0; j < n_tiles; ++j) {
        const int st = j % kStages;
        if (j >= kStages) mbar_wait(empty_bar(st), (j / kStages - 1) & 1);  // consumers left tile j - kStages
        mbar_arrive_expect_tx(full_bar(st), 2 * Cfg::kTileKV + (j == 0 ? Cfg::kTileQ : 0));
        if (j == 0)
#pragma unroll
          for (int blk = 0; blk < D / 64; ++blk)
            tma_load_4d(q_tile + blk * kBlockM * 128, &maps.q, 64 * blk, h, q0, b, full_bar(0));
#pragma unroll
        for (int blk = 0; blk < D / 64; ++blk) {
          tma_load_4d(k_tile(st) + blk * kBlockN * 128, &maps.k, 64 * blk, h, j * kBlockN, b,
                      full_bar(st));
          tma_load_4d(v_tile(st) + blk * kBlockN * 128, &maps.v, 64 * blk, h, j * kBlockN, b,
                      full_bar(st));
        }
      }
    }
    return;
  }
  setmaxnreg_inc<Cfg::kConsumerRegs>();

  // Warp-uniform to the compiler (as in the backward), so that the Q row block's descriptors live
  // in uniform registers (D = 128: 2920 -> 2744 instructions, R2UR 180 -> 10; forward +3-7%).
  const int wg = __shfl_sync(0xffffffffu, warp_all / 4, 0), warp = warp_all % 4;
  const int g = lane >> 2, tq = lane & 3;
  float o[D / 8][4];  // O (64 x D) of this warpgroup, unnormalised
  zero(o);
  float m[2] = {-kInf, -kInf}, l[2] = {0.f, 0.f};  // rows g, g+8: running max (base 2), sum
  const int row0 = q0 + 64 * wg + 16 * warp + g;
  const int row_pos[2] = {p.q_offset + row0, p.q_offset + row0 + 8};
  // P (64 x BN) as a-fragments for O += P V, straight from the S accumulators: the previous
  // tile's, whose product runs beside this tile's softmax.
  uint32_t pa[kBlockN / 16][4];
  float s[kBlockN / 8][4];  // S (64 x BN) of the current tile
  auto issue_s = [&](int st) {
    zero(s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma_ss_n128<0, 0>(s, desc_k_major<kBlockM>(q_tile, 64 * wg, kk),
                          desc_k_major<kBlockN>(k_tile(st), 0, kk), kk > 0);
    wgmma_commit();
  };
  auto issue_pv = [&](int st) {
#pragma unroll
    for (int kj = 0; kj < kBlockN / 16; ++kj)
      wgmma_rs<D, 1>(o, pa[kj], desc_mn_major<kBlockN>(v_tile(st), kj));
    wgmma_commit();
  };
  auto to_pa = [&] {
#pragma unroll
    for (int kj = 0; kj < kBlockN / 16; ++kj) c_to_a(pa[kj], s[2 * kj], s[2 * kj + 1]);
  };
  // The P V products of stage st completed: o and pa are free, and this warp is done with the
  // stage (lane 0 arrives once every lane's products have completed).
  auto finish_pv = [&](int st) {
    wgmma_wait<0>();
    reg_fence(o);
    reg_fence(pa);
    __syncwarp();
    if (lane == 0) mbar_arrive(empty_bar(st));
  };
  // Tiles from first_masked on have keys past Tk or, causal, after this warpgroup's first row.
  const int row_first = p.q_offset + q0 + 64 * wg;
  int first_masked = p.Tk / kBlockN;
  if (p.causal) first_masked = min(first_masked, row_first + 1 >= 0 ? (row_first + 1) / kBlockN : 0);
  // The softmax's scores part of tile j, masked first where its keys need it.
  auto scores = [&](int j, auto masked, float (&alpha)[2]) {
    if constexpr (decltype(masked)::value) mask_scores<kBlockN>(s, p, j * kBlockN, tq, row_pos);
    softmax_scores_tile<kBlockN>(s, m, l, alpha, p.scale_log2);
  };

  // Turns on the tensor cores, round robin: warpgroup w waits on barrier 1 + w, the one before it
  // arrives on it once it has issued its products. The first turn is warpgroup 0's.
  constexpr int kWGs = Cfg::kConsumerWGs;
  // The next warpgroup's barrier. Two warpgroups compute it where they arrive, three hold it in
  // a register: each form keeps its configuration's SASS the one measured (ptxas schedules the
  // D = 128 kernel differently with the register).
  const int next_wg_turn = 1 + (wg + 1) % kWGs;
  auto next_turn = [&] {
    if constexpr (kWGs == 2)
      return 2 - wg;
    else
      return next_wg_turn;
  };
  if (wg == kWGs - 1 && n_tiles > 0) named_arrive(1);
  // FlashAttention-3's intra-warpgroup overlap: a turn issues this tile's S and the previous
  // tile's O += P V, so that the latter runs while this warpgroup works on this tile's softmax.
  // ptxas keeps asynchronous products in flight only where no branch lies between their issue
  // and their wait (else it serialises every one: C7520), so the first tile is peeled and the
  // unmasked and masked tiles run in two loops with no branch inside.
  if (n_tiles > 0) {
    mbar_wait(full_bar(0), 0);
    named_sync(1 + wg);
    issue_s(0);
    if (wg < kWGs - 1 || n_tiles > 1) named_arrive(next_turn());
    wgmma_wait<0>();
    reg_fence(s);
    if (first_masked == 0) mask_scores<kBlockN>(s, p, 0, tq, row_pos);
    float alpha[2];
    softmax_scores_tile<kBlockN>(s, m, l, alpha, p.scale_log2);
    to_pa();
  }
  auto turn = [&](int j, auto masked) {
    const int st = j % kStages, prev = (j - 1) % kStages;
    mbar_wait(full_bar(st), (j / kStages) & 1);
    named_sync(1 + wg);
    issue_s(st);
    issue_pv(prev);
    if (wg < kWGs - 1 || j + 1 < n_tiles) named_arrive(next_turn());
    wgmma_wait<1>();  // S done; the previous P V may still run
    reg_fence(s);
    float alpha[2];
    scores(j, masked, alpha);
    finish_pv(prev);
    rescale_rows(o, alpha);
    to_pa();
  };
  const int unmasked_end = max(1, min(first_masked, n_tiles));
  for (int j = 1; j < unmasked_end; ++j) turn(j, std::false_type{});
  for (int j = unmasked_end; j < n_tiles; ++j) turn(j, std::true_type{});
  // The last tile's P V, outside the turns: the other warpgroup has no product left to follow.
  if (n_tiles > 0) {
    wgmma_fence();
    issue_pv((n_tiles - 1) % kStages);
    finish_pv((n_tiles - 1) % kStages);
  }

  store_o_lse<D>(o, m, l, row0, tq, p, b, h);
#endif
}

// ---------------------------------------------------------------------------------------------
// backward (after the preprocess kernel of flash_attention.cu)
// ---------------------------------------------------------------------------------------------

// The backward's fp32 dQ workspace is not (Tq, D) rows here but one 64-query tile after the
// other, each in the order the consumer warps hold it, so that a tile leaves shared memory in
// one bulk reduction and the warps' stores into it are 16-byte and free of bank conflicts:
// tile (B, H, Tq / 64 rounded up), then dQ warp w (D / 64 x 4: 64 columns by 16 rows each), then
// n-tile j of the warp's accumulator (8 columns), then lane, then the lane's 4 values of that
// n-tile (rows g and g + 8, columns 2t and 2t + 1). dq_convert_sm90_kernel reads it back.
template <int D>
struct DqTile {
  static constexpr int kRows = 64;
  static constexpr int kFloats = kRows * D;
};

template <int D>
struct BwdSm90 {
  // One producer warpgroup (warp 0: TMA copies of Q and dO and the row statistics; warp 1: the
  // bulk dQ reductions unless kDqFromRegisters; warps 2-3 idle) and two consumer warpgroups of 64
  // keys each.
  static constexpr int kThreads = 384, kBlockN = 128, kBlockM = DqTile<D>::kRows;
  // At D = 128 the consumer warpgroups take turns on the tensor cores (S^T/dP^T, then
  // dQ/dK/dV), so that one's softmax and dS^T run beside the other's products, and each computes
  // its 64 columns of the previous block's dQ in its second turn, when both halves of that
  // block's dS^T tile are written: the barrier that made both wait for the current block's tile
  // is gone. +2-3% forward+backward against the barrier schedule, which issued dQ after that
  // barrier and before dK/dV (results/h200-x1/20261129T1200-flash-bwd-turns). At D = 64 only the
  // first warpgroup computes dQ, and keeps the barrier schedule with dK/dV issued before it
  // (1.5% faster than dQ first there, results/h200-x1/20261129T0430-flash-bwd-dq-first).
  static constexpr bool kTurns = D == 128;
  // dS^T tiles: with turns a tile written in block it is read by both warpgroups' dQ products in
  // block it + 1, and the first warpgroup may write its rows of block it + 2 before the second
  // has waited for those products, so a third tile; without turns the barrier of block it + 1
  // orders the reads before block it + 2's writes.
  static constexpr int kDsTiles = kTurns ? 3 : 2;
  // At D = 128 each consumer warp adds its dQ to the workspace from registers (16-byte
  // reductions) instead of through the shared tile and the dQ warp's bulk reduction: the tile's
  // store, proxy fence and the bulk copy's read were 64 KB of shared-memory traffic per block
  // beside the products' operands (+0.7-1.2% forward+backward with the stmatrix store of dS^T).
  // At D = 64 the first warpgroup alone computes dQ, and adding it from registers lengthened that
  // warpgroup's block (-2%) (results/h200-x1/20261129T0550-flash-bwd-stmatrix-red).
  static constexpr bool kDqFromRegisters = D == 128;
  static constexpr int kDqWarps = 4 * (D / 64);  // warps computing dQ (64 columns each 4 warps)
  static constexpr int kTileKV = kBlockN * D * 2, kTileQ = kBlockM * D * 2;  // bytes
  static constexpr int kTileDs = kBlockN * kBlockM * 2;  // dS^T: 128 keys x 64 queries, bf16
  static constexpr int kTileDq = kDqFromRegisters ? 0 : DqTile<D>::kFloats * 4;
  // K, V, Q[2], dO[2], dS^T[kDsTiles], dQ (unless kDqFromRegisters), fp32 lse·log2(e)[2][BM] and
  // delta[2][BM], then the mbarriers (K/V full, Q/dO full[2] and empty[2], dQ full and empty);
  // 1 KB of alignment slack.
  static constexpr int kOffV = kTileKV, kOffQ = 2 * kTileKV, kOffDo = kOffQ + 2 * kTileQ;
  static constexpr int kOffDs = kOffDo + 2 * kTileQ, kOffDq = kOffDs + kDsTiles * kTileDs;
  static constexpr int kOffLse = kOffDq + kTileDq, kOffDelta = kOffLse + 2 * kBlockM * 4;
  static constexpr int kOffBars = kOffDelta + 2 * kBlockM * 4;
  static constexpr size_t kSmemBytes = kOffBars + 7 * 8 + 1024;
  static_assert(D % 64 == 0, "64-column swizzle blocks");
};

// TMA descriptors of the backward: Q and dO with 64-row boxes, K and V with 128-row boxes.
struct BwdMaps {
  CUtensorMap q, dout, k, v;
};

// Bulk (TMA-engine) reduction of `bytes` contiguous fp32 from shared into global memory, in
// this thread's bulk group.
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
               "r"(src), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// kRead: until the sources were read (shared memory may be rewritten); else until complete.
template <bool kRead>
__device__ __forceinline__ void bulk_wait() {
  if constexpr (kRead)
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
  else
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

// FlashAttention-3's backward schedule. One CTA per (128-key block, head, batch). The producer
// streams 64-query blocks of Q and dO with TMA into two stages (full/empty mbarriers) with the
// block's lse and Delta; each consumer warpgroup holds dK and dV of its 64 keys in registers and
// per query block computes S^T = K Q^T and dP^T = V dO^T, P^T and dS^T, dV += P^T dO and
// dK += dS^T Q (P^T, dS^T from registers), and dQ = dS K (64 columns each) from the dS^T tile that
// both write, added to the workspace from registers or through the shared tile and the dQ warp's
// bulk reduction while the consumers go on (kDqFromRegisters). With kTurns the warpgroups take
// turns and dQ lags one block; without, both meet at a barrier once the tile is complete.
template <int D>
__global__ void __launch_bounds__(384, 1)
    flash_bwd_sm90_kernel(const Params p, const __grid_constant__ BwdMaps maps) {
#ifdef LSS_SM90A_BODY
  using Cfg = BwdSm90<D>;
  constexpr int kBlockN = Cfg::kBlockN, kBlockM = Cfg::kBlockM;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  unsigned char* const base_ptr = smem_raw + (base - smem_addr(smem_raw));
  const uint32_t k_tile = base, v_tile = base + Cfg::kOffV, dq_tile = base + Cfg::kOffDq;
  auto q_tile = [base](int s) { return base + Cfg::kOffQ + s * Cfg::kTileQ; };
  auto do_tile = [base](int s) { return base + Cfg::kOffDo + s * Cfg::kTileQ; };
  auto ds_tile = [base](int s) { return base + Cfg::kOffDs + s * Cfg::kTileDs; };
  float* const lse_s = reinterpret_cast<float*>(base_ptr + Cfg::kOffLse);      // [2][BM], ·log2(e)
  float* const delta_s = reinterpret_cast<float*>(base_ptr + Cfg::kOffDelta);  // [2][BM]
  float* const dq_s = reinterpret_cast<float*>(base_ptr + Cfg::kOffDq);        // DqTile<D>
  const uint32_t kv_bar = base + Cfg::kOffBars;
  auto full_bar = [base](int s) { return base + Cfg::kOffBars + 8 + 8 * s; };
  auto empty_bar = [base](int s) { return base + Cfg::kOffBars + 24 + 8 * s; };
  const uint32_t dq_full_bar = base + Cfg::kOffBars + 40, dq_empty_bar = base + Cfg::kOffBars + 48;

  const int lane = threadIdx.x % 32;
  const BlockOfCta cta = block_of_cta(p, (p.Tk + kBlockN - 1) / kBlockN, false);
  const int k0 = cta.block * kBlockN, h = cta.head, b = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(b) * p.H + h;
  const QueryBlocks blocks = query_blocks_for_keys<kBlockM>(p, k0);
  const int m_first = blocks.first, m_count = blocks.count, num = blocks.num();
  float* const dq_acc = p.dq_accum + (bh * m_count + m_first) * DqTile<D>::kFloats;

  if (threadIdx.x == 0) {
    mbar_init(kv_bar, 1);
    mbar_init(full_bar(0), 33);  // the TMA transaction's arrival and the producer warp's lanes
    mbar_init(full_bar(1), 33);
    mbar_init(empty_bar(0), 8);  // one arrival per consumer warp
    mbar_init(empty_bar(1), 8);
    mbar_init(dq_full_bar, Cfg::kDqWarps);
    mbar_init(dq_empty_bar, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (threadIdx.x < 128) {
    setmaxnreg_dec<24>();
    const int warp = threadIdx.x / 32;
    if (warp == 0) {
      const float* lse_g = p.lse + bh * p.Tq;
      const float* delta_g = p.delta + bh * p.Tq;
      if (num > 0 && lane == 0) {
        mbar_arrive_expect_tx(kv_bar, 2 * Cfg::kTileKV);
#pragma unroll
        for (int blk = 0; blk < D / 64; ++blk) {
          tma_load_4d(k_tile + blk * kBlockN * 128, &maps.k, 64 * blk, h, k0, b, kv_bar);
          tma_load_4d(v_tile + blk * kBlockN * 128, &maps.v, 64 * blk, h, k0, b, kv_bar);
        }
      }
      for (int it = 0; it < num; ++it) {
        const int st = it & 1, qb0 = (m_first + it) * kBlockM;
        if (it >= 2) mbar_wait(empty_bar(st), ((it >> 1) - 1) & 1);  // consumers left block it-2
        if (lane == 0) {
          mbar_arrive_expect_tx(full_bar(st), 2 * Cfg::kTileQ);
#pragma unroll
          for (int blk = 0; blk < D / 64; ++blk) {
            tma_load_4d(q_tile(st) + blk * kBlockM * 128, &maps.q, 64 * blk, h, qb0, b, full_bar(st));
            tma_load_4d(do_tile(st) + blk * kBlockM * 128, &maps.dout, 64 * blk, h, qb0, b, full_bar(st));
          }
        }
        // Rows past Tq get finite statistics: their scores are masked to -inf, and exp2 of
        // -inf minus a finite value is the 0 they must contribute.
#pragma unroll
        for (int i = lane; i < kBlockM; i += 32) {
          const bool valid = qb0 + i < p.Tq;
          lse_s[st * kBlockM + i] = valid ? lse_g[qb0 + i] * kLog2e : 0.f;
          delta_s[st * kBlockM + i] = valid ? delta_g[qb0 + i] : 0.f;
        }
        mbar_arrive(full_bar(st));
      }
    } else if (warp == 1 && lane == 0 && !Cfg::kDqFromRegisters) {
      for (int it = 0; it < num; ++it) {
        mbar_wait(dq_full_bar, it & 1);
        bulk_reduce_add_f32(dq_acc + static_cast<int64_t>(it) * DqTile<D>::kFloats, dq_tile, Cfg::kTileDq);
        bulk_commit();
        bulk_wait<true>();
        mbar_arrive(dq_empty_bar);
      }
      bulk_wait<false>();
    }
    return;
  }

  setmaxnreg_inc<240>();
  // The consumer warpgroup 0/1, through a shuffle so that the compiler sees it warp-uniform: the
  // wgmma descriptors that depend on it then live in uniform registers, where before every one
  // was built in ordinary registers and moved over (48 R2UR a block; the loop 759 -> 705
  // instructions at D = 128, forward+backward +1.5-2.3%).
  const int wg = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x / 128) - 1, 0);
  const int warp = (threadIdx.x / 32) % 4;
  const int g = lane >> 2, tq = lane & 3;
  float dk[D / 8][4], dv[D / 8][4];  // this warpgroup's 64 keys x D
  zero(dk);
  zero(dv);
  const int key0 = k0 + 64 * wg + 16 * warp + g;
  const int key_r[2] = {key0, key0 + 8};
  // dQ (64 queries x D) is split over the warpgroups by 64-column blocks; with D = 64 the first
  // warpgroup computes it alone.
  const bool dq_here = wg < D / 64;
  if (num > 0) mbar_wait(kv_bar, 0);

  float dq[8][4];  // dQ (64 queries x this warpgroup's 64 columns)
  // dQ (64 queries x 64 columns) = dS (64 x BN, the dS^T tile) K (BN x 64 of D), one group.
  auto issue_dq = [&](int tile) {
    const uint32_t k_blk = D == 128 ? uniform_here(k_tile) : k_tile;
    zero(dq);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk)
      wgmma_ss_n64<1, 1>(dq, desc_mn_major<kBlockN>(ds_tile(tile), kk),
                         desc_mn_major<kBlockN>(k_blk, kk, wg), kk > 0);
    wgmma_commit();
  };
  // dQ of block j, its product complete, into the workspace (unscaled: dq_convert_sm90_kernel
  // applies the softmax scale once, which saved a multiply per element and block here): from
  // registers, or into the shared tile once the dQ warp has read the previous one.
  auto store_dq = [&](int j) {
    reg_fence(dq);
    if constexpr (Cfg::kDqFromRegisters) {
      float4* dst = reinterpret_cast<float4*>(dq_acc + static_cast<int64_t>(j) * DqTile<D>::kFloats) +
                    (4 * wg + warp) * 8 * 32 + lane;
#pragma unroll
      for (int n = 0; n < 8; ++n)
        atomicAdd(dst + n * 32, make_float4(dq[n][0], dq[n][1], dq[n][2], dq[n][3]));
    } else {
      if (j > 0) mbar_wait(dq_empty_bar, (j - 1) & 1);
      float4* dst = reinterpret_cast<float4*>(dq_s) + (4 * wg + warp) * 8 * 32 + lane;
#pragma unroll
      for (int n = 0; n < 8; ++n)
        dst[n * 32] = make_float4(dq[n][0], dq[n][1], dq[n][2], dq[n][3]);
      fence_proxy_async();
      __syncwarp();
      if (lane == 0) mbar_arrive(dq_full_bar);
    }
  };

  // Query block it: S^T, dP^T, P^T and dS^T, dK/dV's products (and dQ's: block it's, or with
  // turns block it - 1's when has_dq), then the Q/dO stage released.
  auto block = [&](const int it, auto has_dq) {
    const int mb = m_first + it, qb0 = mb * kBlockM, st = it & 1;
    const int ds_st = Cfg::kTurns ? it % 3 : st;  // this block's dS^T tile
    // At D = 128 the K/V descriptors built anew each block: hoisted out of the loop, the tile-plus-
    // offset ones took more uniform registers than there are, and ptxas spilled.
    const uint32_t k_blk = D == 128 ? uniform_here(k_tile) : k_tile;
    const uint32_t v_blk = D == 128 ? uniform_here(v_tile) : v_tile;
    mbar_wait(full_bar(st), (it >> 1) & 1);
    const float* lse_t = lse_s + st * kBlockM;
    const float* delta_t = delta_s + st * kBlockM;

    // S^T (64 keys x 64 queries) = K Q^T and dP^T = V dO^T, in two groups so that P^T is
    // computed while dP^T is still in the tensor cores.
    float s[kBlockM / 8][4], dp[kBlockM / 8][4];
    zero(s);
    zero(dp);
    if constexpr (Cfg::kTurns) named_sync(1 + wg);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma_ss_n64<0, 0>(s, desc_k_major<kBlockN>(k_blk, 64 * wg, kk),
                         desc_k_major<kBlockM>(q_tile(st), 0, kk), kk > 0);
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma_ss_n64<0, 0>(dp, desc_k_major<kBlockN>(v_blk, 64 * wg, kk),
                         desc_k_major<kBlockM>(do_tile(st), 0, kk), kk > 0);
    wgmma_commit();
    if constexpr (Cfg::kTurns) named_arrive(2 - wg);
    wgmma_wait<1>();
    reg_fence(s);

    const bool need_mask = qb0 + kBlockM > p.Tq || k0 + kBlockN > p.Tk ||
                           (p.causal && k0 + 64 * wg + 63 > p.q_offset + qb0);
    if (need_mask) {
#pragma unroll
      for (int n = 0; n < kBlockM / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = qb0 + 8 * n + 2 * tq + (e & 1), key = key_r[e >> 1];
          if (qi >= p.Tq || key >= p.Tk || (p.causal && key > p.q_offset + qi))
            s[n][e] = -kInf;
        }
    }
    // P^T = exp(scale S^T - lse[query]) as bf16 a-fragments (k = queries): n-tile n holds queries
    // 8n..8n+7, registers {0,1} (n even) or {2,3} (n odd) of k-step n/2.
    uint32_t pa[kBlockM / 16][4];
#pragma unroll
    for (int n = 0; n < kBlockM / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int ql = 8 * n + 2 * tq + (e & 1);
        s[n][e] = fast_exp2(fmaf(s[n][e], p.scale_log2, -lse_t[ql]));
      }
      pa[n / 2][(n & 1) * 2] = pack_bf16(s[n][0], s[n][1]);
      pa[n / 2][(n & 1) * 2 + 1] = pack_bf16(s[n][2], s[n][3]);
    }
    wgmma_wait<0>();
    reg_fence(dp);

    // dS^T = P^T * (dP^T - Delta[query]) with the fp32 P^T (unpacking dV's bf16 one took 32
    // instructions more per thread); a-fragments for dK, and the swizzled dS^T tile (rows = keys,
    // MN-major for dQ's A) for dQ. Without turns, tile st was last read by the dQ products of
    // block it - 2, which both warpgroups finished before the barrier of it - 1; with turns, see
    // BwdSm90::kDsTiles.
    uint32_t dsa[kBlockM / 16][4];
#pragma unroll
    for (int n = 0; n < kBlockM / 8; ++n) {
      const int kq = n / 2, hi = (n & 1) * 2;
      const float d0 = delta_t[8 * n + 2 * tq], d1 = delta_t[8 * n + 2 * tq + 1];
#pragma unroll
      for (int half = 0; half < 2; ++half)
        dsa[kq][hi + half] = pack_bf16(s[n][2 * half] * (dp[n][2 * half] - d0),
                                       s[n][2 * half + 1] * (dp[n][2 * half + 1] - d1));
    }
    // Into the tile with stmatrix, whose 8 x 8 fragments are the accumulators' (four matrices an
    // instruction where st.shared took one 4-byte pair: +3% forward+backward). Matrix i of k-step
    // kq is n-tile 2 kq + i / 2, key rows 8 (i % 2) on; lane l addresses row l % 8 of matrix l / 8,
    // one swizzled 16-byte chunk.
    {
      const int mi = lane >> 3, r = 64 * wg + 16 * warp + 8 * (mi & 1) + (lane & 7);
#pragma unroll
      for (int kq = 0; kq < kBlockM / 16; ++kq) {
        const int n = 2 * kq + (mi >> 1);
        const uint32_t addr = ds_tile(ds_st) + r * 128 + ((n ^ (r & 7)) << 4);
        asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr),
                     "r"(dsa[kq][0]), "r"(dsa[kq][1]), "r"(dsa[kq][2]), "r"(dsa[kq][3])
                     : "memory");
      }
    }
    fence_proxy_async();

    // dV (64 x D) += P^T (64 x BM) dO (BM x D); dK (64 x D) += dS^T (64 x BM) Q (BM x D), the
    // softmax scale applied at the end.
    auto issue_dk_dv = [&] {
      wgmma_fence();
#pragma unroll
      for (int kq = 0; kq < kBlockM / 16; ++kq)
        wgmma_rs<D, 1>(dv, pa[kq], desc_mn_major<kBlockM>(do_tile(st), kq));
#pragma unroll
      for (int kq = 0; kq < kBlockM / 16; ++kq)
        wgmma_rs<D, 1>(dk, dsa[kq], desc_mn_major<kBlockM>(q_tile(st), kq));
      wgmma_commit();
    };
    if constexpr (Cfg::kTurns) {
      // This warpgroup's second turn: the previous block's dQ (both halves of its dS^T tile were
      // written before the other warpgroup's last turn), then dK/dV; dQ is stored while they run.
      named_sync(1 + wg);
      if constexpr (decltype(has_dq)::value) issue_dq(ds_st == 0 ? 2 : ds_st - 1);
      issue_dk_dv();
      named_arrive(2 - wg);
      if constexpr (decltype(has_dq)::value) {
        wgmma_wait<1>();  // dQ's product done (dK/dV's may still run)
        store_dq(it - 1);
      }
    } else {
      issue_dk_dv();
      named_sync(1);  // the dS^T tile is complete (both warpgroups' keys)
      if (dq_here) {
        issue_dq(st);
        wgmma_wait<0>();
        store_dq(it);
      }
    }
    wgmma_wait<0>();
    reg_fence(dv);
    reg_fence(dk);
    reg_fence(pa);
    reg_fence(dsa);
    __syncwarp();
    if (lane == 0) mbar_arrive(empty_bar(st));  // this warp is done with Q/dO stage st
  };

  if constexpr (Cfg::kTurns) {
    // Turns on the tensor cores as the forward's: warpgroup w waits on barrier 1 + w, the other
    // arrives on it once it has issued its products; two turns a block (S^T/dP^T, then
    // dQ/dK/dV). The first block has no dQ to issue, and the last block's dQ takes a turn of its
    // own after the loop; both are peeled so that no branch lies between a product's issue and
    // its wait (ptxas would serialise the products).
    if (wg == 1 && num > 0) named_arrive(1);
    if (num > 0) block(0, std::false_type{});
    for (int it = 1; it < num; ++it) block(it, std::true_type{});
    if (num > 0) {
      named_sync(1 + wg);
      if (wg == 0) named_arrive(2);
      issue_dq((num - 1) % 3);
      wgmma_wait<0>();
      store_dq(num - 1);
    }
  } else {
    for (int it = 0; it < num; ++it) block(it, std::false_type{});
  }
  store_dk_dv<D>(dk, dv, key_r, tq, p, b, h);
#endif
}

// dq (B, Tq, H, D; strided bf16) = the DqTile-ordered fp32 workspace. One thread per 8 columns of
// rows g and g + 8 of one dQ warp's 16: the four lanes holding them are 64 contiguous bytes.
__device__ __forceinline__ float4 scaled(float4 v, float k) { return make_float4(v.x * k, v.y * k, v.z * k, v.w * k); }

template <int D>
__global__ void dq_convert_sm90_kernel(const Params p) {
  const int m_count = (p.Tq + 63) / 64;
  const int64_t total = static_cast<int64_t>(p.B) * p.H * m_count * (D / 16) * 8 * 8;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < total;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // c = ((tile * dq warps + w) * 8 + g) * 8 + j: consecutive threads write one row's columns.
    const int j = static_cast<int>(c % 8), g = static_cast<int>(c / 8 % 8);
    const int w = static_cast<int>(c / 64 % (D / 16));
    const int64_t tile = c / 64 / (D / 16);
    const int mb = static_cast<int>(tile % m_count);
    const int64_t bh = tile / m_count;
    const int h = static_cast<int>(bh % p.H), b = static_cast<int>(bh / p.H);
    const float4* src = reinterpret_cast<const float4*>(p.dq_accum + tile * DqTile<D>::kFloats) +
                        (w * 8 + j) * 32 + g * 4;
    // column pairs 0-3; the softmax scale applied here once, not at every block's addition
    const float4 t0 = scaled(src[0], p.scale), t1 = scaled(src[1], p.scale), t2 = scaled(src[2], p.scale),
                 t3 = scaled(src[3], p.scale);
    const int row = mb * 64 + (w % 4) * 16 + g, col = (w / 4) * 64 + 8 * j;
    bf16* dst = head_ptr<bf16, D>(p.dq, b, h) + col;
    if (row < p.Tq)
      *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(row) * p.dq.rs) =
          make_uint4(pack_bf16(t0.x, t0.y), pack_bf16(t1.x, t1.y), pack_bf16(t2.x, t2.y), pack_bf16(t3.x, t3.y));
    if (row + 8 < p.Tq)
      *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(row + 8) * p.dq.rs) =
          make_uint4(pack_bf16(t0.z, t0.w), pack_bf16(t1.z, t1.w), pack_bf16(t2.z, t2.w), pack_bf16(t3.z, t3.w));
  }
}
}  // namespace

bool sm90_kernels_built() {
#ifdef LSS_FLASH_SM90A
  return true;
#else
  return false;
#endif
}

bool sm90_head_dim_ok(int D) { return D == 64 || D == 128; }

size_t sm90_smem_bytes(int D) {
  return D == 64 ? std::max(FwdD64::kSmemBytes, BwdSm90<64>::kSmemBytes)
                 : std::max(FwdD128::kSmemBytes, BwdSm90<128>::kSmemBytes);
}

// cuTensorMapEncodeTiled through the runtime's driver entry point (no link against libcuda).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status{};
    LSS_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000,
                                                    cudaEnableDefault, &status));
    LSS_CHECK(status == cudaDriverEntryPointSuccess && ptr != nullptr,
                "flash attention: the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// The (D, H, T, B) view of one operand (rows of T elements apart by rs, sequences by bs), boxes
// of 64 x 1 x rows x 1 in the 128-byte swizzle. T is at least 1 (an empty operand is never read).
CUtensorMap tensor_map(const Tensor& t, int D, int H, int T, int B, int rows) {
  CUtensorMap map;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(H),
                              static_cast<cuuint64_t>(std::max(T, 1)), static_cast<cuuint64_t>(B)};
  // With one sequence its stride is never used but must still be a multiple of 16 bytes.
  const int64_t batch_stride = B > 1 ? t.bs : std::max(T, 1) * t.rs;
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(D) * 2, static_cast<cuuint64_t>(t.rs) * 2,
                                 static_cast<cuuint64_t>(batch_stride) * 2};
  const cuuint32_t box[4] = {64, 1, static_cast<cuuint32_t>(rows), 1};
  const cuuint32_t unit[4] = {1, 1, 1, 1};
  const CUresult r = tensor_map_encoder()(
      &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, t.ptr, dims, strides, box, unit,
      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  LSS_CHECK(r == CUDA_SUCCESS, "flash attention: cuTensorMapEncodeTiled failed with CUresult " +
                                     std::to_string(static_cast<int>(r)));
  return map;
}

// p with the head group for n_blocks blocks a head (head_group_size), and the grid of its block
// order: the forward's and the backward's launches.
std::pair<Params, dim3> block_order(const Params& p, int64_t n_blocks, int multiprocessors) {
  Params ordered = p;
  ordered.head_group = head_group_size(n_blocks, p.H, p.causal, multiprocessors);
  return {ordered, block_order_grid(ordered, n_blocks)};
}

void sm90_forward(const Params& p, int D, cudaStream_t stream, int device, int multiprocessors) {
  auto run = [&](auto cfg) {
    using Cfg = decltype(cfg);
    constexpr int kD = Cfg::kD;
    FwdMaps maps;
    maps.q = tensor_map(p.q, kD, p.H, p.Tq, p.B, Cfg::kBlockM);
    maps.k = tensor_map(p.k, kD, p.H, p.Tk, p.B, Cfg::kBlockN);
    maps.v = tensor_map(p.v, kD, p.H, p.Tk, p.B, Cfg::kBlockN);
    const auto [ordered, grid] = block_order(p, cdiv(p.Tq, Cfg::kBlockM), multiprocessors);
    launch_args<flash_fwd_sm90_kernel<Cfg>>(grid, Cfg::kThreads, Cfg::kSmemBytes, stream, device,
                                            ordered, maps);
  };
  if (D == 64)
    run(FwdD64{});
  else
    run(FwdD128{});
}

void sm90_backward(const Params& p, int D, cudaStream_t stream, int device, int multiprocessors) {
  auto run = [&](auto d) {
    constexpr int kD = decltype(d)::value;
    using Cfg = BwdSm90<kD>;
    const int64_t tiles = static_cast<int64_t>(p.B) * p.H * cdiv(p.Tq, DqTile<kD>::kRows);
    LSS_CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, tiles * DqTile<kD>::kFloats * sizeof(float), stream));
    BwdMaps maps;
    maps.q = tensor_map(p.q, kD, p.H, p.Tq, p.B, Cfg::kBlockM);
    maps.dout = tensor_map(p.dout, kD, p.H, p.Tq, p.B, Cfg::kBlockM);
    maps.k = tensor_map(p.k, kD, p.H, p.Tk, p.B, Cfg::kBlockN);
    maps.v = tensor_map(p.v, kD, p.H, p.Tk, p.B, Cfg::kBlockN);
    const auto [ordered, grid] = block_order(p, cdiv(p.Tk, Cfg::kBlockN), multiprocessors);
    launch_args<flash_bwd_sm90_kernel<kD>>(grid, Cfg::kThreads, Cfg::kSmemBytes, stream, device,
                                           ordered, maps);
    const int64_t threads = tiles * (kD / 16) * 64;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(cdiv(threads, 256), 65536));
    launch<dq_convert_sm90_kernel<kD>>(dim3(blocks), 256, 0, stream, p, device);
  };
  if (D == 64)
    run(std::integral_constant<int, 64>{});
  else
    run(std::integral_constant<int, 128>{});
}

}  // namespace lss::cuda::flash_detail
