// CUDA kernels of every backend operation but GEMM and attention (the contracts are in
// core/backend.h, the entry points in ops.h). Activations are fp32 or bf16, parameter gradients
// and optimizer state fp32; all arithmetic is fp32 (the loss sum: fp64). Memory-bound kernels load
// 16 bytes per thread where the pointers and the row length allow and fall back to scalar code
// otherwise. Reductions never use floating-point atomics: partial sums are written per block and
// summed in a fixed order, so every result is deterministic for a given device and shape.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cub/device/device_radix_sort.cuh>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops.h"

namespace lss::cuda {

using bf16 = __nv_bfloat16;

Buffer OpContext::scratch(size_t bytes) const {
  return backend->alloc(DType::i32, static_cast<int64_t>((bytes + 3) / 4));
}

void require_compute_dtype(DType t, const char* op) {
  if (t == DType::f64)
    throw UsageError("cuda backend: fp64 is not supported; use --dtype fp32 or bf16");
  LSS_CHECK(t == DType::f32 || t == DType::bf16,
            std::string(op) + ": dtype " + dtype_name(t) + " is not a floating-point type");
}

namespace {

// ---- element types and conversions ----

// dst = src converted; bf16 rounds to nearest even, conversions to int32 truncate (as
// static_cast on the CPU backend). Host and device.
template <class D, class S>
__host__ __device__ __forceinline__ D cvt(S x) {
  if constexpr (std::is_same_v<D, S>) {
    return x;
  } else if constexpr (std::is_same_v<S, bf16>) {
    return static_cast<D>(__bfloat162float(x));
  } else if constexpr (std::is_same_v<D, bf16>) {
    if constexpr (std::is_same_v<S, double>)
      return __double2bfloat16(x);
    else if constexpr (std::is_same_v<S, int32_t>)
      return __int2bfloat16_rn(x);
    else
      return __float2bfloat16_rn(x);
  } else {
    return static_cast<D>(x);
  }
}

template <class T>
__device__ __forceinline__ float f32(T x) {
  return cvt<float>(x);
}

// N consecutive elements, loaded and stored as one access (N * sizeof(T) <= 16 bytes, a power of
// two). The pointer must be aligned to the vector size.
template <class T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <int N, class T>
__device__ __forceinline__ Vec<T, N> load(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <int N, class T>
__device__ __forceinline__ void store(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

// 16 bytes of elements as four 32-bit words. The compiler gives each element of a bf16 Vec a
// register of its own; this takes one per two, which lets kernels hold whole rows in registers.
__device__ __forceinline__ uint4 load16(const void* p) { return *static_cast<const uint4*>(p); }

// Element k of the 16 / sizeof(T) elements of T in u, as fp32 (exact: bf16 is the top half of an
// fp32).
template <class T>
__device__ __forceinline__ float unpack(const uint4& u, int k) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "unpack takes fp32 or bf16");
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
  if constexpr (std::is_same_v<T, bf16>)
    return __uint_as_float(k % 2 == 0 ? w[k / 2] << 16 : w[k / 2] & 0xffff0000u);
  else
    return __uint_as_float(w[k]);
}

// Hides u's value from the compiler at this point, so that values computed from it earlier are
// recomputed later instead of kept: across a phase of a kernel that holds rows in registers only
// the packed words stay live (bf16: 4 registers, not the 8 of their fp32 conversion).
__device__ __forceinline__ void keep_packed(uint4& u) {
  asm volatile("" : "+r"(u.x), "+r"(u.y), "+r"(u.z), "+r"(u.w));
}

// Elements per 16-byte access of the widest of the types.
template <class... T>
constexpr int kVec = static_cast<int>(16 / std::max({sizeof(T)...}));

// True when every pointer is aligned for VEC-element accesses of its own type.
template <int VEC, class... P>
bool aligned_for(const P*... p) {
  return ((reinterpret_cast<uintptr_t>(p) % (VEC * sizeof(P)) == 0) && ...);
}

// Calls f(float{}) or f(bf16{}) for a compute dtype.
template <class F>
void dispatch_compute(DType t, const char* op, F&& f) {
  require_compute_dtype(t, op);
  if (t == DType::bf16) return f(bf16{});
  return f(float{});
}

// Calls f with a value of the element type of any dtype.
template <class F>
void dispatch_any(DType t, F&& f) {
  switch (t) {
    case DType::f32:
      return f(float{});
    case DType::f64:
      return f(double{});
    case DType::bf16:
      return f(bf16{});
    case DType::i32:
      return f(int32_t{});
  }
  LSS_CHECK(false, "unknown dtype " + std::to_string(static_cast<int>(t)));
}

// Fails unless v holds dtype t and at least `numel` elements.
void check_view(const View& v, DType t, int64_t numel, const char* op, const char* what) {
  LSS_CHECK(v.dtype == t, std::string(op) + ": " + what + " has dtype " + dtype_name(v.dtype) +
                              ", expected " + dtype_name(t));
  LSS_CHECK(v.numel >= numel && (v.ptr != nullptr || numel == 0),
            std::string(op) + ": " + what + " has " + std::to_string(v.numel) +
                " elements, needs " + std::to_string(numel));
}

// Fails unless v holds a compute dtype (fp64: UsageError) and at least `numel` elements.
void check_compute_view(const View& v, int64_t numel, const char* op, const char* what) {
  require_compute_dtype(v.dtype, op);
  check_view(v, v.dtype, numel, op, what);
}

// Out-of-range token ids would read or write outside the tables: stop the kernel (the error
// surfaces as cudaErrorLaunchFailure at the next checked call) after saying why.
__device__ __forceinline__ void check_token(int32_t tok, int64_t V, int64_t row, const char* op) {
  if (tok < 0 || tok >= V) {
    printf("%s: token %d at row %lld outside the vocabulary of %lld\n", op, tok,
           static_cast<long long>(row), static_cast<long long>(V));
    __trap();
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

constexpr int kThreads = 256;

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads of a block that walks one row of `vectors` vectors: a multiple of the warp size, at
// most max_threads (longer rows loop).
int row_threads(int64_t vectors, int max_threads = kThreads) {
  return static_cast<int>(std::clamp<int64_t>(ceil_div(vectors, 32) * 32, 32, max_threads));
}

// ---- elementwise operations ----
// An Op has apply<N>(i), which handles elements [i, i + N) with N-element accesses.

template <int VEC, class Op>
__device__ __forceinline__ void elementwise_loop(const Op& op, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = n / VEC;
  for (int64_t i = tid; i < nvec; i += stride) op.template apply<VEC>(i * VEC);
  if constexpr (VEC > 1)
    for (int64_t i = nvec * VEC + tid; i < n; i += stride) op.template apply<1>(i);
}

template <int VEC, class Op>
__global__ void elementwise_kernel(Op op, int64_t n) {
  elementwise_loop<VEC>(op, n);
}

// For an Op with a table that its threads index at run time (AdamW's decay runs): a by-value
// parameter indexed so would be copied to each thread's local memory; __grid_constant__ reads it
// where it is.
template <int VEC, class Op>
__global__ void elementwise_table_kernel(const __grid_constant__ Op op, int64_t n) {
  elementwise_loop<VEC>(op, n);
}

// Runs op over n elements, with VEC-element accesses when `vector_ok` (all pointers aligned).
template <int VEC, bool kTable = false, class Op>
void launch_elementwise(const OpContext& ctx, const Op& op, int64_t n, bool vector_ok) {
  if (n == 0) return;
  const int vec = vector_ok ? VEC : 1;
  // A grid-stride loop over at most 32 blocks per SM: enough to saturate HBM, and no block
  // count limits for large n.
  const int64_t blocks =
      std::clamp<int64_t>(ceil_div(ceil_div(n, vec), kThreads), 1, int64_t{32} * ctx.num_sms);
  const auto grid = static_cast<unsigned>(blocks);
  if constexpr (kTable) {
    if (vector_ok)
      elementwise_table_kernel<VEC><<<grid, kThreads, 0, ctx.stream>>>(op, n);
    else
      elementwise_table_kernel<1><<<grid, kThreads, 0, ctx.stream>>>(op, n);
  } else {
    if (vector_ok)
      elementwise_kernel<VEC><<<grid, kThreads, 0, ctx.stream>>>(op, n);
    else
      elementwise_kernel<1><<<grid, kThreads, 0, ctx.stream>>>(op, n);
  }
  LSS_CUDA_CHECK_LAUNCH();
}

template <class D, class S>
struct CastOp {
  D* dst;
  const S* src;
  template <int N>
  __device__ void apply(int64_t i) const {
    const auto s = load<N>(src + i);
    Vec<D, N> d;
#pragma unroll
    for (int k = 0; k < N; ++k) d.v[k] = cvt<D>(s.v[k]);
    store(dst + i, d);
  }
};

template <class Y, class X>
struct AxpyOp {
  Y* y;
  const X* x;
  float alpha;
  template <int N>
  __device__ void apply(int64_t i) const {
    auto yv = load<N>(y + i);
    const auto xv = load<N>(x + i);
#pragma unroll
    for (int k = 0; k < N; ++k) yv.v[k] = cvt<Y>(f32(yv.v[k]) + alpha * f32(xv.v[k]));
    store(y + i, yv);
  }
};

template <class T>
struct AddOp {
  T* out;
  const T* a;
  const T* b;
  template <int N>
  __device__ void apply(int64_t i) const {
    const auto av = load<N>(a + i), bv = load<N>(b + i);
    Vec<T, N> o;
#pragma unroll
    for (int k = 0; k < N; ++k) o.v[k] = cvt<T>(f32(av.v[k]) + f32(bv.v[k]));
    store(out + i, o);
  }
};

// gelu_tanh(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), as the CPU backend
// computes it: with s = 0.5 (1 + tanh(u)) = 1 / (1 + e^(-2u)) and 1 - tanh^2(u) = 4 s (1 - s),
// 1 - s = e^(-2u) s, both directions follow from one exp without cancellation. -2u is capped at
// 80 so that e^(-2u) stays finite (|gelu| < 1e-30 there).
constexpr float kGeluK0 = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluK1 = 0.044715f;
constexpr float kGeluExpMax = 80.0f;

__device__ __forceinline__ float gelu(float x) {
  const float u = kGeluK0 * (x + kGeluK1 * x * x * x);
  return x / (1.0f + expf(fminf(-2.0f * u, kGeluExpMax)));
}

__device__ __forceinline__ float gelu_grad(float x) {
  const float u = kGeluK0 * (x + kGeluK1 * x * x * x);
  const float e = expf(fminf(-2.0f * u, kGeluExpMax));
  const float s = 1.0f / (1.0f + e);
  const float du = kGeluK0 * (1.0f + 3.0f * kGeluK1 * x * x);
  return s + 2.0f * x * s * (e * s) * du;
}

template <class T>
struct GeluForwardOp {
  T* out;  // may alias in: each element is read before it is written, by the same thread
  const T* in;
  template <int N>
  __device__ void apply(int64_t i) const {
    auto v = load<N>(in + i);
#pragma unroll
    for (int k = 0; k < N; ++k) v.v[k] = cvt<T>(gelu(f32(v.v[k])));
    store(out + i, v);
  }
};

template <class T>
struct GeluBackwardOp {
  T* din;  // may alias dout
  const T* dout;
  const T* in;
  template <int N>
  __device__ void apply(int64_t i) const {
    auto g = load<N>(dout + i);
    const auto x = load<N>(in + i);
#pragma unroll
    for (int k = 0; k < N; ++k) g.v[k] = cvt<T>(f32(g.v[k]) * gelu_grad(f32(x.v[k])));
    store(din + i, g);
  }
};

// AdamW's per-call constants in fp32, from the double hyperparameters as the CPU backend forms
// them (1 - beta from the doubles: 1 - 0.999f is off by 5e-5 relative).
struct AdamWConsts {
  float b1, b2, omb1, omb2, c1, c2, lr, eps;
};

// The weight decay of a launch's elements: runs r = 0, 1, ... of elements [end[r - 1], end[r])
// (end[-1] = 0) decay with wd[r]. One launch steps a model's tensors laid end to end (AdamW's
// decay_runs), where one launch per tensor was 53 launches for 4 layers, most of them of a few
// thousand elements.
constexpr int kAdamWMaxRuns = 64;
struct AdamWRuns {
  int count;
  int64_t end[kAdamWMaxRuns];
  float wd[kAdamWMaxRuns];
};

template <class P>
struct AdamWOp {
  float* p;
  const float* g;
  float* m;
  float* v;
  P* copy;  // null: no working copy
  AdamWConsts k;
  AdamWRuns runs;
  // The run holding element i (runs.end is increasing, its last entry the launch's n).
  __device__ int run_of(int64_t i) const {
    int lo = 0, hi = runs.count - 1;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (runs.end[mid] > i)
        hi = mid;
      else
        lo = mid + 1;
    }
    return lo;
  }
  template <int N>
  __device__ void apply(int64_t i) const {
    auto pv = load<N>(p + i), mv = load<N>(m + i), vv = load<N>(v + i);
    const auto gv = load<N>(g + i);
    const int r = run_of(i);
    const bool one_run = i + N <= runs.end[r];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float gj = gv.v[j];
      const float wd = one_run ? runs.wd[r] : runs.wd[run_of(i + j)];
      mv.v[j] = k.b1 * mv.v[j] + k.omb1 * gj;
      vv.v[j] = k.b2 * vv.v[j] + k.omb2 * gj * gj;
      pv.v[j] -= k.lr * ((mv.v[j] * k.c1) / (sqrtf(vv.v[j] * k.c2) + k.eps) + wd * pv.v[j]);
    }
    store(p + i, pv);
    store(m + i, mv);
    store(v + i, vv);
    if (copy != nullptr) {
      Vec<P, N> c;
#pragma unroll
      for (int j = 0; j < N; ++j) c.v[j] = cvt<P>(pv.v[j]);
      store(copy + i, c);
    }
  }
};

// ---- column sums (bias gradient, LayerNorm weight gradients) ----
// Stage 1: block (kColX, kColY) sums a chunk of rows of kColX * VEC columns into one partial row;
// stage 2 sums the partial rows of a column in chunk order and accumulates into the output.

constexpr int kColX = 32, kColY = 8;

// partial (chunks, n): partial[chunk][c] = sum of dy[r][c] over the chunk's rows.
template <class T, int VEC>
__global__ void column_partial_kernel(float* partial, const T* dy, int64_t rows, int64_t n,
                                      int64_t rows_per_chunk) {
  __shared__ float red[kColY][VEC][kColX];  // per row lane; [k][x] keeps the stores conflict-free
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * kColX + tx) * VEC;
  const int64_t r_begin = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r_end = min(rows, r_begin + rows_per_chunk);
  // VEC > 1 only when n % VEC == 0: a vector is either inside the row or past its end.
  const bool in_range = c0 < n;
  float acc[VEC] = {};
  if (in_range) {
#pragma unroll 4
    for (int64_t r = r_begin + ty; r < r_end; r += kColY) {
      const auto v = load<VEC>(dy + r * n + c0);
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += f32(v.v[k]);
    }
  }
#pragma unroll
  for (int k = 0; k < VEC; ++k) red[ty][k][tx] = acc[k];
  __syncthreads();
  if (ty == 0 && in_range) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      float s = red[0][k][tx];
      for (int y = 1; y < kColY; ++y) s += red[y][k][tx];
      partial[static_cast<int64_t>(blockIdx.y) * n + c0 + k] = s;
    }
  }
}

// out_y[c] += sum over chunks of partial[chunk * chunk_stride + y * n + c], y = blockIdx.y: each
// chunk's partial row may hold several n-column sums side by side (LayerNorm's dweight, dbias),
// finished by one launch. Block (kColX, kFinY): lane y sums chunks y, y + kFinY, ... of column c,
// then lane 0 adds the kFinY sums in lane order, so the result does not depend on timing. One
// thread per column would walk all chunks alone: at LayerNorm backward's ~4 chunks per SM that
// serial walk took longer than the kernel it finishes.
constexpr int kFinY = 16;

template <class G>
__global__ void column_finalize_kernel(G* out0, G* out1, const float* partial, int64_t chunks,
                                       int64_t n, int64_t chunk_stride) {
  __shared__ float red[kFinY][kColX];
  G* out = blockIdx.y == 0 ? out0 : out1;
  partial += static_cast<int64_t>(blockIdx.y) * n;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColX + tx;
  float s = 0.0f;
  if (c < n) {
#pragma unroll 4
    for (int64_t ch = ty; ch < chunks; ch += kFinY) s += partial[ch * chunk_stride + c];
  }
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && c < n) {
    float total = red[0][tx];
#pragma unroll
    for (int y = 1; y < kFinY; ++y) total += red[y][tx];
    out[c] = cvt<G>(f32(out[c]) + total);
  }
}

// out0 (n) and, unless null, out1 (n) += their column sums of partial (see the kernel).
template <class G>
void launch_column_finalize(const OpContext& ctx, G* out0, G* out1, const float* partial,
                            int64_t chunks, int64_t n, int64_t chunk_stride) {
  const dim3 grid(static_cast<unsigned>(ceil_div(n, int64_t{kColX})), out1 == nullptr ? 1 : 2);
  column_finalize_kernel<G><<<grid, dim3(kColX, kFinY), 0, ctx.stream>>>(out0, out1, partial,
                                                                          chunks, n, chunk_stride);
  LSS_CUDA_CHECK_LAUNCH();
}

template <class G, class T>
void bias_grad_t(const OpContext& ctx, G* db, const T* dy, int64_t rows, int64_t n) {
  constexpr int VEC = kVec<T>;
  const bool vec = n % VEC == 0 && aligned_for<VEC>(dy);
  const int v = vec ? VEC : 1;
  const int64_t col_blocks = ceil_div(n, int64_t{kColX} * v);
  // About 4 blocks per SM in all, with at least 64 rows per chunk.
  const int64_t chunks_wanted = std::clamp<int64_t>(ceil_div(int64_t{4} * ctx.num_sms, col_blocks),
                                                    1, std::max<int64_t>(1, rows / 64));
  const int64_t rows_per_chunk = std::max<int64_t>(1, ceil_div(rows, chunks_wanted));
  const int64_t chunks = ceil_div(rows, rows_per_chunk);
  Buffer partial = ctx.scratch(static_cast<size_t>(chunks * n) * sizeof(float));  // (chunks, n)
  float* pp = partial.view().as<float>();
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(chunks));
  const dim3 block(kColX, kColY);
  if (vec)
    column_partial_kernel<T, VEC><<<grid, block, 0, ctx.stream>>>(pp, dy, rows, n, rows_per_chunk);
  else
    column_partial_kernel<T, 1><<<grid, block, 0, ctx.stream>>>(pp, dy, rows, n, rows_per_chunk);
  LSS_CUDA_CHECK_LAUNCH();
  launch_column_finalize(ctx, db, static_cast<G*>(nullptr), pp, chunks, n, n);
}

// ---- embedding ----

// One block per row n: out[n] = wte[tokens[n]] + wpe_rows[n / B].
template <class T, int VEC>
__global__ void embedding_forward_kernel(T* out, const int32_t* tokens, const T* wte, const T* wpe,
                                         int64_t B, int64_t C, int64_t V) {
  const int64_t r = blockIdx.x;
  const int32_t tok = tokens[r];
  check_token(tok, V, r, "embedding_forward");
  const T* e = wte + static_cast<int64_t>(tok) * C;
  const T* p = wpe + (r / B) * C;
  T* o = out + r * C;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < C; c += int64_t{blockDim.x} * VEC) {
    const auto ev = load<VEC>(e + c), pv = load<VEC>(p + c);
    Vec<T, VEC> ov;
#pragma unroll
    for (int k = 0; k < VEC; ++k) ov.v[k] = cvt<T>(f32(ev.v[k]) + f32(pv.v[k]));
    store(o + c, ov);
  }
}

// One block per position t: dwpe[t] += sum over b of dout[t*B + b], b in order.
template <class T, int VEC>
__global__ void embedding_wpe_backward_kernel(float* dwpe, const T* dout, int64_t B, int64_t C) {
  const int64_t t = blockIdx.x;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < C; c += int64_t{blockDim.x} * VEC) {
    float acc[VEC] = {};
    for (int64_t b = 0; b < B; ++b) {
      const auto g = load<VEC>(dout + (t * B + b) * C + c);
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += f32(g.v[k]);
    }
    auto d = load<VEC>(dwpe + t * C + c);
#pragma unroll
    for (int k = 0; k < VEC; ++k) d.v[k] += acc[k];
    store(dwpe + t * C + c, d);
  }
}

__global__ void iota_kernel(int32_t* v, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) v[i] = static_cast<int32_t>(i);
}

// One block per position i of the rows sorted by token (stable: rows ascending within a token).
// The block at the first row of a token sums that token's rows in row order and adds the sum to
// its dwte row; the others return. Each dwte row has one writer: no atomics, a fixed order.
template <class T, int VEC>
__global__ void embedding_wte_backward_kernel(float* dwte, const T* dout,
                                              const int32_t* sorted_tokens,
                                              const int32_t* sorted_rows, int64_t N, int64_t C,
                                              int64_t V) {
  const int64_t i = blockIdx.x;
  const int32_t tok = sorted_tokens[i];
  if (i > 0 && sorted_tokens[i - 1] == tok) return;
  check_token(tok, V, sorted_rows[i], "embedding_backward");
  int64_t end = i + 1;
  while (end < N && sorted_tokens[end] == tok) ++end;
  float* d = dwte + static_cast<int64_t>(tok) * C;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < C; c += int64_t{blockDim.x} * VEC) {
    float acc[VEC] = {};
    for (int64_t j = i; j < end; ++j) {
      const auto g = load<VEC>(dout + static_cast<int64_t>(sorted_rows[j]) * C + c);
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += f32(g.v[k]);
    }
    auto dv = load<VEC>(d + c);
#pragma unroll
    for (int k = 0; k < VEC; ++k) dv.v[k] += acc[k];
    store(d + c, dv);
  }
}

// Bytes of `n` elements of T rounded up to 256, so that consecutive carved scratch arrays stay
// aligned.
template <class T>
size_t carve_bytes(int64_t n) {
  return (static_cast<size_t>(n) * sizeof(T) + 255) / 256 * 256;
}

template <class T>
void embedding_backward_t(const OpContext& ctx, float* dwte, float* dwpe, const T* dout,
                          const int32_t* tokens, int64_t Tl, int64_t B, int64_t C, int64_t V) {
  const int64_t N = Tl * B;
  if (N == 0) return;
  constexpr int VEC = kVec<T>;
  const bool vec = C % VEC == 0 && aligned_for<VEC>(dout) && aligned_for<VEC>(dwte, dwpe);
  const int threads = row_threads(ceil_div(C, vec ? VEC : 1));

  if (vec)
    embedding_wpe_backward_kernel<T, VEC>
        <<<static_cast<unsigned>(Tl), threads, 0, ctx.stream>>>(dwpe, dout, B, C);
  else
    embedding_wpe_backward_kernel<T, 1>
        <<<static_cast<unsigned>(Tl), threads, 0, ctx.stream>>>(dwpe, dout, B, C);
  LSS_CUDA_CHECK_LAUNCH();

  // Group the rows by token: a stable radix sort of (token, row) pairs on the bits V needs.
  LSS_CHECK(N <= INT32_MAX, "embedding_backward: " + std::to_string(N) + " rows exceed int32");
  const int n = static_cast<int>(N);
  int end_bit = 1;  // bits of the largest token id, V - 1
  while (end_bit < 31 && (int64_t{1} << end_bit) < V) ++end_bit;
  size_t sort_bytes = 0;
  LSS_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, tokens, static_cast<int32_t*>(nullptr),
                                      static_cast<const int32_t*>(nullptr),
                                      static_cast<int32_t*>(nullptr), n, 0, end_bit, ctx.stream));
  const size_t ids = carve_bytes<int32_t>(N);
  Buffer scratch = ctx.scratch(3 * ids + sort_bytes);
  char* base = static_cast<char*>(scratch.ptr());
  int32_t* sorted_tokens = reinterpret_cast<int32_t*>(base);          // (N)
  int32_t* rows = reinterpret_cast<int32_t*>(base + ids);             // (N) 0..N-1
  int32_t* sorted_rows = reinterpret_cast<int32_t*>(base + 2 * ids);  // (N)
  void* sort_temp = base + 3 * ids;
  iota_kernel<<<static_cast<unsigned>(ceil_div(N, kThreads)), kThreads, 0, ctx.stream>>>(rows, N);
  LSS_CUDA_CHECK_LAUNCH();
  LSS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp, sort_bytes, tokens, sorted_tokens, rows,
                                                 sorted_rows, n, 0, end_bit, ctx.stream));
  if (vec)
    embedding_wte_backward_kernel<T, VEC><<<static_cast<unsigned>(N), threads, 0, ctx.stream>>>(
        dwte, dout, sorted_tokens, sorted_rows, N, C, V);
  else
    embedding_wte_backward_kernel<T, 1><<<static_cast<unsigned>(N), threads, 0, ctx.stream>>>(
        dwte, dout, sorted_tokens, sorted_rows, N, C, V);
  LSS_CUDA_CHECK_LAUNCH();
}

// ---- LayerNorm ----

constexpr int kLnWarps = kThreads / 32;  // rows per block (forward) and per round (backward)

// The general forward, for rows too long for layernorm_forward_rows_kernel or not in 16-byte
// vectors. One warp per row; the row is read three times (sum, centred sum of squares, output),
// the last two from cache. Two passes for the variance, as on the CPU: no cancellation.
template <class T, int VEC>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, const T* x, const T* w,
                                         const T* b, int64_t N, int64_t C, float eps) {
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kLnWarps + threadIdx.x / 32;
  if (r >= N) return;
  const T* xr = x + r * C;
  float sum = 0.0f;
  for (int64_t c = int64_t{lane} * VEC; c < C; c += 32 * VEC) {
    const auto v = load<VEC>(xr + c);
#pragma unroll
    for (int k = 0; k < VEC; ++k) sum += f32(v.v[k]);
  }
  const float mu = warp_sum(sum) / static_cast<float>(C);
  float sq = 0.0f;
  for (int64_t c = int64_t{lane} * VEC; c < C; c += 32 * VEC) {
    const auto v = load<VEC>(xr + c);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float d = f32(v.v[k]) - mu;
      sq += d * d;
    }
  }
  const float rs = 1.0f / sqrtf(warp_sum(sq) / static_cast<float>(C) + eps);
  T* o = out + r * C;
  for (int64_t c = int64_t{lane} * VEC; c < C; c += 32 * VEC) {
    const auto v = load<VEC>(xr + c), wv = load<VEC>(w + c), bv = load<VEC>(b + c);
    Vec<T, VEC> ov;
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      ov.v[k] = cvt<T>((f32(v.v[k]) - mu) * rs * f32(wv.v[k]) + f32(bv.v[k]));
    store(o + c, ov);
  }
  if (lane == 0) {
    mean[r] = mu;
    rstd[r] = rs;
  }
}

// The general backward, for rows too long for layernorm_backward_rows_kernel or not in 16-byte
// vectors. dx += rs (g w - mean(g w) - xhat mean(g w xhat)); dweight += sum g xhat; dbias += sum g.
// Blocks take rounds of kLnWarps rows (round q, q + gridDim.x, ...). In a round each warp first
// reduces one row's two means; then every thread walks its own columns over the round's rows in
// order, updating dx and its columns of the block's dweight/dbias sums in shared memory (owned by
// that thread: no atomics). The block's sums go to partial (gridDim.x, 2, C), summed over blocks
// in order afterwards. The rows of a round are re-read from cache in the column pass.
template <class T, int VEC>
__global__ void layernorm_backward_kernel(T* dx, float* partial, const T* dout, const T* x,
                                          const float* mean, const float* rstd, const T* w,
                                          int64_t N, int64_t C) {
  extern __shared__ float acc[];  // (2, C): this block's dweight, dbias sums
  __shared__ float s_m1[kLnWarps], s_m2[kLnWarps], s_mu[kLnWarps], s_rs[kLnWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t col_step = int64_t{blockDim.x} * VEC;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < C; c += col_step)
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[c + k] = acc[C + c + k] = 0.0f;

  for (int64_t r0 = static_cast<int64_t>(blockIdx.x) * kLnWarps; r0 < N;
       r0 += static_cast<int64_t>(gridDim.x) * kLnWarps) {
    const int64_t r = r0 + warp;
    if (r < N) {
      const float mu = mean[r], rs = rstd[r];
      float s1 = 0.0f, s2 = 0.0f;
#pragma unroll 4
      for (int64_t c = int64_t{lane} * VEC; c < C; c += 32 * VEC) {
        const auto g = load<VEC>(dout + r * C + c), xv = load<VEC>(x + r * C + c),
                   wv = load<VEC>(w + c);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float xhat = (f32(xv.v[k]) - mu) * rs;
          const float dxhat = f32(g.v[k]) * f32(wv.v[k]);
          s1 += dxhat;
          s2 += dxhat * xhat;
        }
      }
      s1 = warp_sum(s1);
      s2 = warp_sum(s2);
      if (lane == 0) {
        s_m1[warp] = s1 / static_cast<float>(C);
        s_m2[warp] = s2 / static_cast<float>(C);
        s_mu[warp] = mu;
        s_rs[warp] = rs;
      }
    }
    __syncthreads();
    const int rows = static_cast<int>(min(int64_t{kLnWarps}, N - r0));
    for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < C; c += col_step) {
      const auto wv = load<VEC>(w + c);
      float dw[VEC], db[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        dw[k] = acc[c + k];
        db[k] = acc[C + c + k];
      }
      const auto update = [&](int j, const Vec<T, VEC>& g, const Vec<T, VEC>& xv, Vec<T, VEC>& d) {
        const float mu = s_mu[j], rs = s_rs[j], m1 = s_m1[j], m2 = s_m2[j];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float gk = f32(g.v[k]);
          const float xhat = (f32(xv.v[k]) - mu) * rs;
          d.v[k] = cvt<T>(f32(d.v[k]) + rs * (gk * f32(wv.v[k]) - m1 - xhat * m2));
          dw[k] += gk * xhat;
          db[k] += gk;
        }
        store(dx + (r0 + j) * C + c, d);
      };
      if (rows == kLnWarps) {
        // All of the round's loads before any store: dx aliases neither dout nor x, but the compiler
        // cannot know, and a load after each store left one row's DRAM latency per row exposed.
        Vec<T, VEC> g[kLnWarps], xv[kLnWarps], d[kLnWarps];
#pragma unroll
        for (int j = 0; j < kLnWarps; ++j) {
          const int64_t off = (r0 + j) * C + c;
          g[j] = load<VEC>(dout + off);
          xv[j] = load<VEC>(x + off);
          d[j] = load<VEC>(dx + off);
        }
#pragma unroll
        for (int j = 0; j < kLnWarps; ++j) update(j, g[j], xv[j], d[j]);
      } else {
        for (int j = 0; j < rows; ++j) {
          const int64_t off = (r0 + j) * C + c;
          auto d = load<VEC>(dx + off);
          update(j, load<VEC>(dout + off), load<VEC>(x + off), d);
        }
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        acc[c + k] = dw[k];
        acc[C + c + k] = db[k];
      }
    }
    __syncthreads();  // the round's statistics are overwritten next round
  }
  float* out = partial + static_cast<int64_t>(blockIdx.x) * 2 * C;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < C; c += col_step)
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      out[c + k] = acc[c + k];
      out[C + c + k] = acc[C + c + k];
    }
}

template <class T, int VEC>
void launch_layernorm_backward(const OpContext& ctx, T* dx, const T* dout, const T* x,
                               const float* mean, const float* rstd, const T* w, int64_t N,
                               int64_t C, Buffer& partial_buf, int64_t& blocks) {
  const auto kernel = layernorm_backward_kernel<T, VEC>;
  const size_t smem = static_cast<size_t>(2 * C) * sizeof(float);
  int device = 0, max_smem = 0;
  LSS_CUDA_CHECK(cudaGetDevice(&device));
  LSS_CUDA_CHECK(
      cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  LSS_REQUIRE_INPUT(smem + 4 * kLnWarps * sizeof(float) <= static_cast<size_t>(max_smem),
                    "cuda backend: layernorm_backward for C = " + std::to_string(C) +
                        " needs more shared memory than the device has");
  if (smem > 48 * 1024)
    LSS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  int per_sm = 0;
  LSS_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  // At most 4 blocks per SM: more would add partial sums to reduce without adding bandwidth.
  blocks = std::clamp<int64_t>(int64_t{ctx.num_sms} * std::clamp(per_sm, 1, 4), 1,
                               ceil_div(N, kLnWarps));
  partial_buf = ctx.scratch(static_cast<size_t>(blocks * 2 * C) * sizeof(float));  // (blocks, 2, C)
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, ctx.stream>>>(
      dx, partial_buf.view().as<float>(), dout, x, mean, rstd, w, N, C);
  LSS_CUDA_CHECK_LAUNCH();
}

// Forward with the row in registers, for rows of at most 32 * kLnLaneVecs 16-byte vectors
// (4 KiB: C <= 2048 bf16, 1024 fp32). One warp per row issues all of the row's loads before any
// arithmetic, so each warp keeps its whole row in flight and x is read once; the three passes
// then run on registers. Two passes for the variance, as on the CPU: no cancellation.
constexpr int kLnLaneVecs = 8;  // vectors of the row per lane

template <class T>
__global__ void __launch_bounds__(kThreads)
    layernorm_forward_rows_kernel(T* out, float* mean, float* rstd, const T* x, const T* w,
                                  const T* b, int64_t N, int64_t C, float eps) {
  constexpr int VEC = kVec<T>;
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kLnWarps + threadIdx.x / 32;
  if (r >= N) return;
  const T* xr = x + r * C;
  // Lane l holds vectors l, l + 32, ...: each load instruction of the warp reads 512 contiguous
  // bytes. VEC divides C: a vector is inside the row or past its end.
  const auto col = [&](int i) { return (int64_t{i} * 32 + lane) * VEC; };
  uint4 xv[kLnLaneVecs];  // (kLnLaneVecs, VEC) this lane's part of the row, packed
#pragma unroll
  for (int i = 0; i < kLnLaneVecs; ++i) xv[i] = col(i) < C ? load16(xr + col(i)) : uint4{};
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kLnLaneVecs; ++i)
#pragma unroll
    for (int k = 0; k < VEC; ++k) sum += unpack<T>(xv[i], k);  // zeros past C
  const float mu = warp_sum(sum) / static_cast<float>(C);
  float sq = 0.0f;
#pragma unroll
  for (int i = 0; i < kLnLaneVecs; ++i) {
    keep_packed(xv[i]);
    if (col(i) < C)
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float d = unpack<T>(xv[i], k) - mu;
        sq += d * d;
      }
  }
  const float rs = 1.0f / sqrtf(warp_sum(sq) / static_cast<float>(C) + eps);
  T* o = out + r * C;
#pragma unroll
  for (int i = 0; i < kLnLaneVecs; ++i) {
    keep_packed(xv[i]);
    if (col(i) < C) {
      const uint4 wv = load16(w + col(i)), bv = load16(b + col(i));
      Vec<T, VEC> ov;
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        ov.v[k] = cvt<T>((unpack<T>(xv[i], k) - mu) * rs * unpack<T>(wv, k) + unpack<T>(bv, k));
      store(o + col(i), ov);
    }
  }
  if (lane == 0) {
    mean[r] = mu;
    rstd[r] = rs;
  }
}

// Sums each of the N values v over the warp (N a power of two, at most 32) in N - 1 + log2(32 / N)
// shuffles, where N warp_sums take 5 N: each step halves the values a lane holds, the lane
// keeping one half plus its partner's copy of that half. Returns value lane / (32 / N)'s sum.
template <int N>
__device__ __forceinline__ float warp_sum_each(float (&v)[N]) {
  static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "N must be a power of two <= 32");
#pragma unroll
  for (int n = N, o = 16; n > 1; n /= 2, o /= 2) {
    const bool upper = threadIdx.x & o;
#pragma unroll
    for (int i = 0; i < n / 2; ++i) {
      const float keep = upper ? v[i + n / 2] : v[i], give = upper ? v[i] : v[i + n / 2];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, give, o);
    }
  }
#pragma unroll
  for (int o = 16 / N; o > 0; o /= 2) v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
  return v[0];
}

// Backward with rows in registers, for rows of at most kLnBwdMaxThreads 16-byte vectors (C <=
// 4096 bf16, 2048 fp32). Thread t owns columns [t VEC, t VEC + VEC) of every row. Block b takes
// the rows [N b / blocks, N (b + 1) / blocks) in groups of kLnBwdRows: each thread loads its
// vectors of dout, x and dx of the group's rows at once (3 kLnBwdRows 16-byte loads in flight),
// the block reduces each row's two sums (warp shuffles, then the warps' sums through shared
// memory, added by a butterfly that gives every lane the same bits), and each thread updates dx
// and adds to its columns' dweight, dbias sums in registers. Every input byte is read once, and
// the block's sums go to partial (blocks, 2, C) once at the end; the partition and all orders are
// fixed, so results do not depend on timing. On an H200 at N = 16384, C = 2048 bf16, the per-row
// reductions and arithmetic rather than loads in flight limit it: 2-row groups, 8-byte vectors
// (twice the warps) and a cp.async ring in shared memory each measured slower.
constexpr int kLnBwdRows = 4;
constexpr int kLnBwdMaxThreads = 512;
constexpr int kLnBwdMaxWarps = kLnBwdMaxThreads / 32;
static_assert(2 * kLnBwdMaxWarps == 32, "a warp adds both sums of all warps, a lane per sum");

template <class T>
__global__ void __launch_bounds__(kLnBwdMaxThreads)
    layernorm_backward_rows_kernel(T* dx, float* partial, const T* dout, const T* x,
                                   const float* mean, const float* rstd, const T* w, int64_t N,
                                   int64_t C) {
  constexpr int VEC = kVec<T>;
  // (2, kLnBwdRows, 2, kLnBwdMaxWarps): each warp's (sum g w, sum g w (x - mean)) of each row of
  // a group; two buffers, alternating by group, so one barrier per group separates writes from
  // earlier reads.
  __shared__ float red[2][kLnBwdRows][2 * kLnBwdMaxWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t c = static_cast<int64_t>(threadIdx.x) * VEC;
  const bool owns = c < C;  // VEC divides C: a vector is inside the row or past its end
  const int64_t r_begin = N * blockIdx.x / gridDim.x, r_end = N * (blockIdx.x + 1) / gridDim.x;
  const float inv_c = 1.0f / static_cast<float>(C);
  float dw[VEC] = {}, db[VEC] = {};  // this thread's columns' dweight, dbias sums
  const uint4 wv = owns ? load16(w + c) : uint4{};
  int buf = 0;
  // The rows r0, r0 + 1, ... of a group; all kLnBwdRows of them are in range when `full` (every
  // group but a block's last), else rows past r_end read as zeros, which add nothing to the sums.
  const auto group = [&](int64_t r0, auto full) {
    constexpr bool kFull = decltype(full)::value;
    const T* g_rows = dout + r0 * C + c;
    const T* x_rows = x + r0 * C + c;
    T* d_rows = dx + r0 * C + c;
    uint4 g[kLnBwdRows], xv[kLnBwdRows], d[kLnBwdRows];  // (kLnBwdRows, VEC) each, packed
    float mu[kLnBwdRows], rs[kLnBwdRows];
#pragma unroll
    for (int j = 0; j < kLnBwdRows; ++j) {
      const bool in = kFull || r0 + j < r_end;
      g[j] = in && owns ? load16(g_rows + j * C) : uint4{};
      xv[j] = in && owns ? load16(x_rows + j * C) : uint4{};
      d[j] = in && owns ? load16(d_rows + j * C) : uint4{};
      mu[j] = in ? mean[r0 + j] : 0.0f;
      rs[j] = in ? rstd[r0 + j] : 0.0f;
    }
    float sums[2 * kLnBwdRows];  // (kLnBwdRows, 2): this thread's sum g w, sum g w (x - mean)
#pragma unroll
    for (int j = 0; j < kLnBwdRows; ++j) {
      float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float dxhat = unpack<T>(g[j], k) * unpack<T>(wv, k);
        s1 += dxhat;
        s2 += dxhat * (unpack<T>(xv[j], k) - mu[j]);
      }
      sums[2 * j] = s1;
      sums[2 * j + 1] = s2;
    }
    constexpr int kLanesPerSum = 32 / (2 * kLnBwdRows);
    const float warp_total = warp_sum_each(sums);
    if (lane % kLanesPerSum == 0) {
      const int i = lane / kLanesPerSum;  // sum i % 2 of row i / 2
      red[buf][i / 2][(i % 2) * kLnBwdMaxWarps + warp] = warp_total;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kLnBwdRows; ++j) {
      keep_packed(g[j]);
      keep_packed(xv[j]);
      // Lanes 0-15 add the warps' sums g w, lanes 16-31 their sums g w (x - mean).
      float t = lane % kLnBwdMaxWarps < warps ? red[buf][j][lane] : 0.0f;
#pragma unroll
      for (int o = kLnBwdMaxWarps / 2; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
      const float other = __shfl_xor_sync(0xffffffffu, t, kLnBwdMaxWarps);
      const bool first_half = lane < kLnBwdMaxWarps;
      const float m1 = (first_half ? t : other) * inv_c;
      const float m2 = (first_half ? other : t) * inv_c * rs[j];  // mean(g w xhat)
      if ((kFull || r0 + j < r_end) && owns) {
        Vec<T, VEC> dv;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float gk = unpack<T>(g[j], k);
          const float xhat = (unpack<T>(xv[j], k) - mu[j]) * rs[j];
          dv.v[k] = cvt<T>(unpack<T>(d[j], k) + rs[j] * (gk * unpack<T>(wv, k) - m1 - xhat * m2));
          dw[k] += gk * xhat;
          db[k] += gk;
        }
        store(d_rows + j * C, dv);
      }
    }
    buf ^= 1;
  };
  int64_t r0 = r_begin;
  for (; r0 + kLnBwdRows <= r_end; r0 += kLnBwdRows) group(r0, std::true_type{});
  if (r0 < r_end) group(r0, std::false_type{});
  if (owns) {
    float* out = partial + static_cast<int64_t>(blockIdx.x) * 2 * C;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      out[c + k] = dw[k];
      out[C + c + k] = db[k];
    }
  }
}

template <class T>
void launch_layernorm_backward_rows(const OpContext& ctx, T* dx, const T* dout, const T* x,
                                    const float* mean, const float* rstd, const T* w, int64_t N,
                                    int64_t C, Buffer& partial_buf, int64_t& blocks) {
  const auto kernel = layernorm_backward_rows_kernel<T>;
  const int threads = row_threads(C / kVec<T>, kLnBwdMaxThreads);
  int per_sm = 0;
  LSS_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0));
  // All blocks resident at once, each with at least one group of rows.
  blocks = std::clamp<int64_t>(int64_t{ctx.num_sms} * std::max(per_sm, 1), 1,
                               ceil_div(N, kLnBwdRows));
  partial_buf = ctx.scratch(static_cast<size_t>(blocks * 2 * C) * sizeof(float));  // (blocks, 2, C)
  kernel<<<static_cast<unsigned>(blocks), threads, 0, ctx.stream>>>(
      dx, partial_buf.view().as<float>(), dout, x, mean, rstd, w, N, C);
  LSS_CUDA_CHECK_LAUNCH();
}

// ---- cross-entropy ----

constexpr int kCeThreads = 512;

// Running (max, sum of exp(x - max)) of a softmax denominator; combining two is exact up to
// rounding, so the per-thread order does not matter beyond it.
struct MaxSum {
  float m = -INFINITY;
  float s = 0.0f;
  __device__ void add(float x) {
    if (x > m) {
      s = s * expf(m - x) + 1.0f;
      m = x;
    } else if (x != -INFINITY) {
      s += expf(x - m);
    }
  }
  __device__ void merge(float m2, float s2) {
    const float mx = fmaxf(m, m2);
    if (mx == -INFINITY) return;
    s = s * expf(m - mx) + s2 * expf(m2 - mx);
    m = mx;
  }
};

// The gradient of one logit: (softmax - onehot) * scale.
__device__ __forceinline__ float ce_grad(float x, int64_t c, int32_t target, float mx, float f,
                                         float scale) {
  const float p = expf(x - mx) * f;
  return c == target ? p - scale : p;
}

// One block per row: the row's max and sum in one pass (online), then the gradient
// (softmax - onehot) * scale in a second pass, in place; row_loss[r] = log(sum) + max - x[target].
// Rows start at any element (V is often odd): each pass walks a scalar head up to the first
// 16-byte boundary, 16-byte vectors, and a scalar tail.
template <class T>
__global__ void __launch_bounds__(kCeThreads)
    cross_entropy_kernel(T* logits, double* row_loss, const int32_t* targets, int64_t V,
                         float scale) {
  constexpr int VEC = kVec<T>;
  __shared__ float s_m[kCeThreads / 32], s_s[kCeThreads / 32];
  __shared__ float s_xt, s_max, s_sum;
  const int64_t r = blockIdx.x;
  T* x = logits + r * V;
  const int32_t t = targets[r];
  check_token(t, V, r, "cross_entropy_fused");
  const int64_t head =
      min(V, static_cast<int64_t>((16 - reinterpret_cast<uintptr_t>(x) % 16) % 16 / sizeof(T)));
  const int64_t vectors = (V - head) / VEC;
  const int64_t tail = head + vectors * VEC;
  const int64_t tid = threadIdx.x;
  if (tid == 0) s_xt = f32(x[t]);  // read before the second pass overwrites it
  MaxSum ms;
  for (int64_t c = tid; c < head; c += kCeThreads) ms.add(f32(x[c]));
  for (int64_t i = tid; i < vectors; i += kCeThreads) {
    const auto v = load<VEC>(x + head + i * VEC);
#pragma unroll
    for (int k = 0; k < VEC; ++k) ms.add(f32(v.v[k]));
  }
  for (int64_t c = tail + tid; c < V; c += kCeThreads) ms.add(f32(x[c]));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    ms.merge(__shfl_xor_sync(0xffffffffu, ms.m, o), __shfl_xor_sync(0xffffffffu, ms.s, o));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    s_m[warp] = ms.m;
    s_s[warp] = ms.s;
  }
  __syncthreads();
  if (tid == 0) {
    MaxSum total;
    for (int i = 0; i < kCeThreads / 32; ++i) total.merge(s_m[i], s_s[i]);
    s_max = total.m;
    s_sum = total.s;
  }
  __syncthreads();
  const float mx = s_max, sum = s_sum;
  const float f = scale / sum;
  for (int64_t c = tid; c < head; c += kCeThreads)
    x[c] = cvt<T>(ce_grad(f32(x[c]), c, t, mx, f, scale));
  for (int64_t i = tid; i < vectors; i += kCeThreads) {
    const int64_t c = head + i * VEC;
    auto v = load<VEC>(x + c);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v.v[k] = cvt<T>(ce_grad(f32(v.v[k]), c + k, t, mx, f, scale));
    store(x + c, v);
  }
  for (int64_t c = tail + tid; c < V; c += kCeThreads)
    x[c] = cvt<T>(ce_grad(f32(x[c]), c, t, mx, f, scale));
  if (tid == 0)
    row_loss[r] =
        log(static_cast<double>(sum)) + static_cast<double>(mx) - static_cast<double>(s_xt);
}

constexpr int kSumThreads = 1024;

// out[0] = sum of v (n), in a fixed order: one block.
__global__ void __launch_bounds__(kSumThreads) sum_kernel(double* out, const double* v, int64_t n) {
  __shared__ double s[kSumThreads];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) acc += v[i];
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int w = kSumThreads / 2; w > 0; w >>= 1) {
    if (static_cast<int>(threadIdx.x) < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = s[0];
}

// ---- GEMM helper ----

template <class T>
__global__ void scale_add_bias_kernel(T* c, const T* bias, int64_t m, int64_t n, int64_t ldc,
                                      float beta) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < m * n;
       idx += stride) {
    const int64_t i = idx / n, j = idx % n;
    T* p = c + i * ldc + j;
    float v = beta == 0.0f ? 0.0f : beta * f32(*p);
    if (bias != nullptr) v += f32(bias[j]);
    *p = cvt<T>(v);
  }
}

constexpr int kGemmTile = 16;

// C = alpha op(A) op(B) + beta C [+ bias], one kGemmTile x kGemmTile tile of C per block, the
// k dimension in tiles staged through shared memory. Rows of C along grid x (no 65535 limit).
template <class T, class TC>
__global__ void gemm_fallback_kernel(const T* a, const T* b, TC* c, const TC* bias, int64_t m,
                                     int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
                                     bool trans_a, bool trans_b, float alpha, float beta) {
  __shared__ float as[kGemmTile][kGemmTile + 1];  // op(A) rows x k; +1 avoids bank conflicts
  __shared__ float bs[kGemmTile][kGemmTile + 1];  // k x op(B) columns
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kGemmTile;
  const int64_t col0 = static_cast<int64_t>(blockIdx.y) * kGemmTile;
  float acc = 0.0f;
  for (int64_t k0 = 0; k0 < k; k0 += kGemmTile) {
    // as[ty][tx] = op(A)[row0 + ty][k0 + tx]; bs[ty][tx] = op(B)[k0 + ty][col0 + tx]
    const int64_t ar = row0 + ty, ak = k0 + tx;
    as[ty][tx] = ar < m && ak < k ? f32(trans_a ? a[ak * lda + ar] : a[ar * lda + ak]) : 0.0f;
    const int64_t bk = k0 + ty, bc = col0 + tx;
    bs[ty][tx] = bk < k && bc < n ? f32(trans_b ? b[bc * ldb + bk] : b[bk * ldb + bc]) : 0.0f;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kGemmTile; ++j) acc += as[ty][j] * bs[j][tx];
    __syncthreads();
  }
  const int64_t r = row0 + ty, col = col0 + tx;
  if (r >= m || col >= n) return;
  TC* p = c + r * ldc + col;
  float v = alpha * acc + (beta == 0.0f ? 0.0f : beta * f32(*p));
  if (bias != nullptr) v += f32(bias[col]);
  *p = cvt<TC>(v);
}

}  // namespace

// ---- entry points ----

void convert(const OpContext& ctx, View dst, View src) {
  LSS_CHECK(dst.numel == src.numel,
            std::string("copy: ") + dtype_name(src.dtype) + "[" + std::to_string(src.numel) +
                "] into " + dtype_name(dst.dtype) + "[" + std::to_string(dst.numel) + "]");
  if (dst.numel == 0) return;
  if (dst.dtype == src.dtype) {
    if (dst.ptr != src.ptr)
      LSS_CUDA_CHECK(
          cudaMemcpyAsync(dst.ptr, src.ptr, dst.bytes(), cudaMemcpyDeviceToDevice, ctx.stream));
    return;
  }
  dispatch_any(dst.dtype, [&](auto d) {
    dispatch_any(src.dtype, [&](auto s) {
      using D = decltype(d);
      using S = decltype(s);
      constexpr int VEC = kVec<D, S>;
      const CastOp<D, S> op{dst.as<D>(), src.as<S>()};
      launch_elementwise<VEC>(ctx, op, dst.numel, aligned_for<VEC>(op.dst, op.src));
    });
  });
}

void convert_host(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n) {
  dispatch_any(dst_dtype, [&](auto d) {
    dispatch_any(src_dtype, [&](auto s) {
      using D = decltype(d);
      using S = decltype(s);
      D* pd = static_cast<D*>(dst);
      const S* ps = static_cast<const S*>(src);
      for (int64_t i = 0; i < n; ++i) pd[i] = cvt<D>(ps[i]);
    });
  });
}

void axpy(const OpContext& ctx, View y, View x, double alpha) {
  check_compute_view(y, y.numel, "axpy", "y");
  check_compute_view(x, y.numel, "axpy", "x");
  dispatch_compute(y.dtype, "axpy", [&](auto yt) {
    dispatch_compute(x.dtype, "axpy", [&](auto xt) {
      using Y = decltype(yt);
      using X = decltype(xt);
      constexpr int VEC = kVec<Y, X>;
      const AxpyOp<Y, X> op{y.as<Y>(), x.as<X>(), static_cast<float>(alpha)};
      launch_elementwise<VEC>(ctx, op, y.numel, aligned_for<VEC>(op.y, op.x));
    });
  });
}

void add(const OpContext& ctx, View out, View a, View b) {
  dispatch_compute(out.dtype, "add", [&](auto tag) {
    using T = decltype(tag);
    check_view(a, out.dtype, out.numel, "add", "a");
    check_view(b, out.dtype, out.numel, "add", "b");
    constexpr int VEC = kVec<T>;
    const AddOp<T> op{out.as<T>(), a.as<T>(), b.as<T>()};
    launch_elementwise<VEC>(ctx, op, out.numel, aligned_for<VEC>(op.out, op.a, op.b));
  });
}

void bias_grad(const OpContext& ctx, View db, View dy, int64_t rows, int64_t n) {
  check_compute_view(db, n, "bias_grad", "db");
  check_compute_view(dy, rows * n, "bias_grad", "dy");
  if (rows == 0 || n == 0) return;
  dispatch_compute(db.dtype, "bias_grad", [&](auto gt) {
    dispatch_compute(dy.dtype, "bias_grad", [&](auto tt) {
      using G = decltype(gt);
      using T = decltype(tt);
      bias_grad_t<G, T>(ctx, db.as<G>(), dy.as<T>(), rows, n);
    });
  });
}

void embedding_forward(const OpContext& ctx, View out, View tokens, View wte, View wpe_rows,
                       int64_t Tl, int64_t B, int64_t C) {
  dispatch_compute(out.dtype, "embedding_forward", [&](auto tag) {
    using T = decltype(tag);
    LSS_CHECK(C > 0 && wte.numel % C == 0, "embedding_forward: wte is not (V, C)");
    const int64_t N = Tl * B, V = wte.numel / C;
    check_view(out, out.dtype, N * C, "embedding_forward", "out");
    check_view(tokens, DType::i32, N, "embedding_forward", "tokens");
    check_view(wte, out.dtype, C, "embedding_forward", "wte");
    check_view(wpe_rows, out.dtype, Tl * C, "embedding_forward", "wpe_rows");
    if (N == 0) return;
    constexpr int VEC = kVec<T>;
    T* po = out.as<T>();                        // (N, C)
    const T* pwte = wte.as<T>();                // (V, C)
    const T* pwpe = wpe_rows.as<T>();           // (Tl, C)
    const int32_t* tok = tokens.as<int32_t>();  // (N)
    const bool vec = C % VEC == 0 && aligned_for<VEC>(po, pwte, pwpe);
    const int threads = row_threads(ceil_div(C, vec ? VEC : 1));
    if (vec)
      embedding_forward_kernel<T, VEC>
          <<<static_cast<unsigned>(N), threads, 0, ctx.stream>>>(po, tok, pwte, pwpe, B, C, V);
    else
      embedding_forward_kernel<T, 1>
          <<<static_cast<unsigned>(N), threads, 0, ctx.stream>>>(po, tok, pwte, pwpe, B, C, V);
    LSS_CUDA_CHECK_LAUNCH();
  });
}

void embedding_backward(const OpContext& ctx, View dwte, View dwpe_rows, View dout, View tokens,
                        int64_t Tl, int64_t B, int64_t C) {
  require_compute_dtype(dwte.dtype, "embedding_backward");
  // The tables' gradients have the master dtype, fp32 for both compute dtypes.
  LSS_CHECK(dwte.dtype == DType::f32, std::string("embedding_backward: dwte has dtype ") +
                                          dtype_name(dwte.dtype) + ", expected fp32");
  LSS_CHECK(C > 0 && dwte.numel % C == 0, "embedding_backward: dwte is not (V, C)");
  const int64_t N = Tl * B, V = dwte.numel / C;
  check_view(dwpe_rows, DType::f32, Tl * C, "embedding_backward", "dwpe_rows");
  check_compute_view(dout, N * C, "embedding_backward", "dout");
  check_view(tokens, DType::i32, N, "embedding_backward", "tokens");
  dispatch_compute(dout.dtype, "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    embedding_backward_t<T>(ctx, dwte.as<float>(), dwpe_rows.as<float>(), dout.as<T>(),
                            tokens.as<int32_t>(), Tl, B, C, V);
  });
}

void layernorm_forward(const OpContext& ctx, View out, View mean, View rstd, View x, View weight,
                       View bias, int64_t N, int64_t C, double eps) {
  dispatch_compute(out.dtype, "layernorm_forward", [&](auto tag) {
    using T = decltype(tag);
    check_view(out, out.dtype, N * C, "layernorm_forward", "out");
    check_view(mean, DType::f32, N, "layernorm_forward", "mean");
    check_view(rstd, DType::f32, N, "layernorm_forward", "rstd");
    check_view(x, out.dtype, N * C, "layernorm_forward", "x");
    check_view(weight, out.dtype, C, "layernorm_forward", "weight");
    check_view(bias, out.dtype, C, "layernorm_forward", "bias");
    if (N == 0 || C == 0) return;
    constexpr int VEC = kVec<T>;
    T* po = out.as<T>();              // (N, C)
    float* pmean = mean.as<float>();  // (N)
    float* prstd = rstd.as<float>();  // (N)
    const T* px = x.as<T>();          // (N, C)
    const T* pw = weight.as<T>();     // (C)
    const T* pb = bias.as<T>();       // (C)
    const unsigned blocks = static_cast<unsigned>(ceil_div(N, kLnWarps));
    const float e = static_cast<float>(eps);
    const bool vec = C % VEC == 0 && aligned_for<VEC>(po, px, pw, pb);
    if (vec && C <= int64_t{32} * kLnLaneVecs * VEC)
      layernorm_forward_rows_kernel<T>
          <<<blocks, kThreads, 0, ctx.stream>>>(po, pmean, prstd, px, pw, pb, N, C, e);
    else if (vec)
      layernorm_forward_kernel<T, VEC>
          <<<blocks, kThreads, 0, ctx.stream>>>(po, pmean, prstd, px, pw, pb, N, C, e);
    else
      layernorm_forward_kernel<T, 1>
          <<<blocks, kThreads, 0, ctx.stream>>>(po, pmean, prstd, px, pw, pb, N, C, e);
    LSS_CUDA_CHECK_LAUNCH();
  });
}

void layernorm_backward(const OpContext& ctx, View dx, View dweight, View dbias, View dout, View x,
                        View mean, View rstd, View weight, int64_t N, int64_t C) {
  check_compute_view(dweight, C, "layernorm_backward", "dweight");
  check_view(dbias, dweight.dtype, C, "layernorm_backward", "dbias");
  dispatch_compute(dx.dtype, "layernorm_backward", [&](auto tag) {
    using T = decltype(tag);
    check_view(dx, dx.dtype, N * C, "layernorm_backward", "dx");
    check_view(dout, dx.dtype, N * C, "layernorm_backward", "dout");
    check_view(x, dx.dtype, N * C, "layernorm_backward", "x");
    check_view(mean, DType::f32, N, "layernorm_backward", "mean");
    check_view(rstd, DType::f32, N, "layernorm_backward", "rstd");
    check_view(weight, dx.dtype, C, "layernorm_backward", "weight");
    if (N == 0 || C == 0) return;
    T* pdx = dx.as<T>();                    // (N, C)
    const T* pdo = dout.as<T>();            // (N, C)
    const T* px = x.as<T>();                // (N, C)
    const float* pmean = mean.as<float>();  // (N)
    const float* prstd = rstd.as<float>();  // (N)
    const T* pw = weight.as<T>();           // (C)
    // The register path: one thread per 16-byte vector of the row.
    constexpr int ROWS_VEC = kVec<T>;
    // The general path: 4 elements per access for both dtypes: C / 4 threads cover a row of
    // C = 1024 with one 256-thread block in the column pass, where 16-byte bf16 accesses would
    // idle half of it.
    constexpr int VEC = 4;
    Buffer partial;  // (blocks, 2, C) per-block dweight, dbias sums
    int64_t blocks = 0;
    if (C % ROWS_VEC == 0 && C / ROWS_VEC <= kLnBwdMaxThreads &&
        aligned_for<ROWS_VEC>(pdx, pdo, px, pw))
      launch_layernorm_backward_rows<T>(ctx, pdx, pdo, px, pmean, prstd, pw, N, C, partial, blocks);
    else if (C % VEC == 0 && aligned_for<VEC>(pdx, pdo, px, pw))
      launch_layernorm_backward<T, VEC>(ctx, pdx, pdo, px, pmean, prstd, pw, N, C, partial, blocks);
    else
      launch_layernorm_backward<T, 1>(ctx, pdx, pdo, px, pmean, prstd, pw, N, C, partial, blocks);
    const float* pp = partial.view().as<float>();
    dispatch_compute(dweight.dtype, "layernorm_backward", [&](auto gtag) {
      using G = decltype(gtag);
      launch_column_finalize(ctx, dweight.as<G>(), dbias.as<G>(), pp, blocks, C, 2 * C);
    });
  });
}

void gelu_forward(const OpContext& ctx, View out, View in) {
  dispatch_compute(out.dtype, "gelu_forward", [&](auto tag) {
    using T = decltype(tag);
    check_view(in, out.dtype, out.numel, "gelu_forward", "in");
    constexpr int VEC = kVec<T>;
    const GeluForwardOp<T> op{out.as<T>(), in.as<T>()};
    launch_elementwise<VEC>(ctx, op, out.numel, aligned_for<VEC>(op.out, op.in));
  });
}

void gelu_backward(const OpContext& ctx, View din, View dout, View in) {
  dispatch_compute(din.dtype, "gelu_backward", [&](auto tag) {
    using T = decltype(tag);
    check_view(dout, din.dtype, din.numel, "gelu_backward", "dout");
    check_view(in, din.dtype, din.numel, "gelu_backward", "in");
    constexpr int VEC = kVec<T>;
    const GeluBackwardOp<T> op{din.as<T>(), dout.as<T>(), in.as<T>()};
    launch_elementwise<VEC>(ctx, op, din.numel, aligned_for<VEC>(op.din, op.dout, op.in));
  });
}

void cross_entropy_fused(const OpContext& ctx, View logits, View targets, View loss_sum, int64_t N, int64_t V,
                         double grad_scale) {
  dispatch_compute(logits.dtype, "cross_entropy_fused", [&](auto tag) {
    using T = decltype(tag);
    LSS_CHECK(V > 0, "cross_entropy_fused: empty vocabulary");
    check_view(logits, logits.dtype, N * V, "cross_entropy_fused", "logits");
    check_view(targets, DType::i32, N, "cross_entropy_fused", "targets");
    check_view(loss_sum, DType::f64, 1, "cross_entropy_fused", "loss_sum");
    T* pl = logits.as<T>();                      // (N, V)
    const int32_t* tgt = targets.as<int32_t>();  // (N)
    // N = 0 leaves the kernels nothing to do but the sum kernel's zero.
    Buffer scratch = ctx.scratch(carve_bytes<double>(std::max<int64_t>(N, 1)));
    double* row_loss = scratch.view().as<double>();  // (N)
    if (N > 0) {
      cross_entropy_kernel<T><<<static_cast<unsigned>(N), kCeThreads, 0, ctx.stream>>>(
          pl, row_loss, tgt, V, static_cast<float>(grad_scale));
      LSS_CUDA_CHECK_LAUNCH();
    }
    sum_kernel<<<1, kSumThreads, 0, ctx.stream>>>(loss_sum.as<double>(), row_loss, N);
    LSS_CUDA_CHECK_LAUNCH();
  });
}

void adamw(const OpContext& ctx, View param, View grad, View m, View v, const Backend::AdamW& hp) {
  require_compute_dtype(param.dtype, "adamw");
  // Masters and optimizer state are fp32 for both compute dtypes.
  LSS_CHECK(param.dtype == DType::f32,
            std::string("adamw: param has dtype ") + dtype_name(param.dtype) + ", expected fp32");
  LSS_CHECK(hp.step >= 1, "adamw: step " + std::to_string(hp.step) + " is not 1-based");
  check_view(grad, DType::f32, param.numel, "adamw", "grad");
  check_view(m, DType::f32, param.numel, "adamw", "m");
  check_view(v, DType::f32, param.numel, "adamw", "v");
  const View& copy = hp.param_copy;
  if (copy.numel > 0)
    LSS_CHECK(copy.numel == param.numel && copy.ptr != nullptr,
              "adamw: param_copy has " + std::to_string(copy.numel) + " elements, param " +
                  std::to_string(param.numel));
  const double t = static_cast<double>(hp.step);
  const AdamWConsts k{static_cast<float>(hp.beta1),
                      static_cast<float>(hp.beta2),
                      static_cast<float>(1.0 - hp.beta1),
                      static_cast<float>(1.0 - hp.beta2),
                      static_cast<float>(1.0 / (1.0 - std::pow(hp.beta1, t))),
                      static_cast<float>(1.0 / (1.0 - std::pow(hp.beta2, t))),
                      static_cast<float>(hp.lr),
                      static_cast<float>(hp.eps)};
  check_decay_runs(hp, param.numel);
  const std::vector<Backend::DecayRun> runs =
      hp.decay_runs.empty() ? std::vector<Backend::DecayRun>{{param.numel, hp.weight_decay}} : hp.decay_runs;
  const DType copy_dtype = copy.numel > 0 ? copy.dtype : DType::f32;
  dispatch_compute(copy_dtype, "adamw", [&](auto tag) {
    using P = decltype(tag);
    constexpr int VEC = 4;  // 16-byte fp32 accesses
    // One launch per kAdamWMaxRuns runs: ParamStore::adamw_step makes a layer's 12 tensors 8 runs,
    // so a launch covers 7 layers and the embeddings (the serial step's 4 layers: one launch).
    int64_t at = 0;
    for (size_t first = 0; first < runs.size(); first += kAdamWMaxRuns) {
      AdamWOp<P> op{param.as<float>() + at,
                    grad.as<float>() + at,
                    m.as<float>() + at,
                    v.as<float>() + at,
                    copy.numel > 0 ? copy.as<P>() + at : nullptr,
                    k,
                    {}};
      int64_t n = 0;
      for (size_t r = first; r < std::min(runs.size(), first + kAdamWMaxRuns); ++r) {
        n += runs[r].numel;
        op.runs.end[op.runs.count] = n;
        op.runs.wd[op.runs.count] = static_cast<float>(runs[r].weight_decay);
        ++op.runs.count;
      }
      launch_elementwise<VEC, true>(ctx, op, n,
                                    aligned_for<VEC>(op.p, op.g, op.m, op.v) &&
                                        (op.copy == nullptr || aligned_for<VEC>(op.copy)));
      at += n;
    }
  });
}

void scale_add_bias(cudaStream_t stream, void* c, DType c_dtype, int64_t m, int64_t n, int64_t ldc,
                    double beta, const void* bias) {
  if (m == 0 || n == 0) return;
  dispatch_compute(c_dtype, "gemm", [&](auto tag) {
    using T = decltype(tag);
    const int64_t blocks = std::clamp<int64_t>(ceil_div(m * n, kThreads), 1, 65535);
    scale_add_bias_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<T*>(c), static_cast<const T*>(bias), m, n, ldc, static_cast<float>(beta));
    LSS_CUDA_CHECK_LAUNCH();
  });
}

void gemm_fallback(cudaStream_t stream, const GemmArgs& g) {
  if (g.m == 0 || g.n == 0) return;
  LSS_CHECK(ceil_div(g.n, kGemmTile) <= 65535,
            "gemm: fallback kernel for n = " + std::to_string(g.n) + " columns");
  dispatch_compute(g.dtype, "gemm", [&](auto ttag) {
    dispatch_compute(g.c_dtype, "gemm", [&](auto ctag) {
      using T = decltype(ttag);
      using TC = decltype(ctag);
      const dim3 grid(static_cast<unsigned>(ceil_div(g.m, kGemmTile)),
                      static_cast<unsigned>(ceil_div(g.n, kGemmTile)));
      gemm_fallback_kernel<T, TC><<<grid, dim3(kGemmTile, kGemmTile), 0, stream>>>(
          static_cast<const T*>(g.a), static_cast<const T*>(g.b), static_cast<TC*>(g.c),
          static_cast<const TC*>(g.bias), g.m, g.n, g.k, g.lda, g.ldb, g.ldc, g.trans_a, g.trans_b,
          static_cast<float>(g.alpha), static_cast<float>(g.beta));
      LSS_CUDA_CHECK_LAUNCH();
    });
  });
}

// The two parts' weights of a row from their lse: out = (out wa + part wb) inv, lse = m + log(wa + wb).
struct MergeWeights {
  float m, wa, wb, inv;
};
__device__ __forceinline__ MergeWeights merge_weights(float lse, float part_lse) {
  const float m = fmaxf(lse, part_lse);
  const float wa = expf(lse - m), wb = expf(part_lse - m);
  return {m, wa, wb, 1.0f / (wa + wb)};
}

// One warp per (b, t, h) row of D elements: the two parts' weights from their lse, then the
// row rescaled and summed; fp32 arithmetic. For shapes the vector kernel below does not take.
template <class T>
__global__ void attention_merge_kernel(AttentionMergeArgs a) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= a.B * a.H * a.Tq) return;
  const int64_t h = row % a.H, t = (row / a.H) % a.Tq, b = row / (a.H * a.Tq);
  float* lse = static_cast<float*>(a.lse) + (b * a.H + h) * a.Tq + t;
  const MergeWeights w = merge_weights(*lse, static_cast<const float*>(a.part_lse)[(b * a.H + h) * a.Tq + t]);
  if (w.m == -INFINITY) return;  // no key in either part
  T* o = static_cast<T*>(a.out.ptr) + b * a.out.batch_stride + t * a.out.row_stride + h * a.D;
  const T* p = static_cast<const T*>(a.part.ptr) + b * a.part.batch_stride + t * a.part.row_stride + h * a.D;
  for (int64_t d = lane; d < a.D; d += 32) o[d] = cvt<T>((f32(o[d]) * w.wa + f32(p[d]) * w.wb) * w.inv);
  __syncwarp();
  if (lane == 0) *lse = w.m + logf(w.wa + w.wb);
}

// One thread per VEC consecutive elements (16 bytes) of a (b, t, h) row, a row's D / VEC threads
// within one warp: each loads its 16 bytes of both parts at once and stores one result. The warp
// kernel above steps through a row 32 elements (64 bytes of bf16) at a time, each step's loads
// behind the last step's store (out and part may alias, as far as the compiler knows), so few
// bytes are in flight: at lss's split blocks (8K rows x 16 heads x 128, bf16) it took 0.55 ms a
// call, ~180 GB/s, and this kernel 0.036 ms, ~2.8 TB/s (H200; a copy of the rows runs at ~4 TB/s).
template <class T, int VEC>
__global__ void attention_merge_vec_kernel(AttentionMergeArgs a) {
  const int64_t vecs_per_row = a.D / VEC;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.B * a.H * a.Tq * vecs_per_row) return;
  const int64_t row = i / vecs_per_row, d = (i % vecs_per_row) * VEC;
  const int64_t h = row % a.H, t = (row / a.H) % a.Tq, b = row / (a.H * a.Tq);
  float* lse = static_cast<float*>(a.lse) + (b * a.H + h) * a.Tq + t;
  T* o = static_cast<T*>(a.out.ptr) + b * a.out.batch_stride + t * a.out.row_stride + h * a.D + d;
  const T* p = static_cast<const T*>(a.part.ptr) + b * a.part.batch_stride + t * a.part.row_stride + h * a.D + d;
  // All four loads issued before any result is needed (the rows' values are read even where the
  // weights then leave them as they are).
  const Vec<T, VEC> ov = load<VEC>(o), pv = load<VEC>(p);
  const MergeWeights w = merge_weights(*lse, static_cast<const float*>(a.part_lse)[(b * a.H + h) * a.Tq + t]);
  if (w.m == -INFINITY) return;  // no key in either part: the whole row returns here
  Vec<T, VEC> r;
#pragma unroll
  for (int k = 0; k < VEC; ++k) r.v[k] = cvt<T>((f32(ov.v[k]) * w.wa + f32(pv.v[k]) * w.wb) * w.inv);
  store<VEC>(o, r);
  // Every thread of the row has read lse before its first thread overwrites it. Only the row's
  // lanes meet here: a row's threads all take the same path, while its warp's other rows may have
  // returned (no key, or past the last row).
  const int row_lanes = static_cast<int>(vecs_per_row), lane = threadIdx.x % 32;
  const unsigned row_mask = (row_lanes == 32 ? ~0u : (1u << row_lanes) - 1u) << (lane / row_lanes * row_lanes);
  __syncwarp(row_mask);
  if (d == 0) *lse = w.m + logf(w.wa + w.wb);
}

void attention_merge(const OpContext& ctx, const AttentionMergeArgs& a) {
  check_attention_merge(a);
  const int64_t rows = a.B * a.H * a.Tq;
  if (rows == 0) return;
  dispatch_compute(a.dtype, "attention_merge", [&](auto tag) {
    using T = decltype(tag);
    constexpr int VEC = kVec<T>;
    const int64_t vecs_per_row = a.D / VEC;
    // The vector kernel needs 16-byte aligned rows and a row's threads inside one warp.
    const bool vec = a.D % VEC == 0 && 32 % vecs_per_row == 0 && a.out.row_stride % VEC == 0 &&
                     a.out.batch_stride % VEC == 0 && a.part.row_stride % VEC == 0 &&
                     a.part.batch_stride % VEC == 0 &&
                     aligned_for<VEC>(static_cast<const T*>(a.out.ptr), static_cast<const T*>(a.part.ptr));
    if (vec) {
      constexpr int kThreads = 256;
      attention_merge_vec_kernel<T, VEC>
          <<<static_cast<unsigned>(ceil_div(rows * vecs_per_row, int64_t{kThreads})), kThreads, 0, ctx.stream>>>(a);
    } else {
      constexpr int kWarps = 8;
      attention_merge_kernel<T><<<static_cast<unsigned>(ceil_div(rows, int64_t{kWarps})), 32 * kWarps, 0, ctx.stream>>>(a);
    }
    LSS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace lss::cuda
