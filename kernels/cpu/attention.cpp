// Attention on the CPU the way flash-attention does it: query blocks against key blocks with an
// online softmax, so no Tq x Tk score matrix ever exists (scratch is O(block^2 + block*D) per
// thread). The block GEMMs go through OpenBLAS with the operands' own strides (no packing); the
// softmax parts use the SIMD row primitives of kernels.h. Causal blocks that are fully masked
// are never visited.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/kernels.h"

namespace lss::cpu {
namespace {

// Rows per query block and per key block. 64 keeps S, P and dP (64 x 64) plus the D-wide
// accumulators in L1/L2 for D <= 128, and is large enough for the BLAS to run near peak.
constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 64;

// Typed pointer to the (b, t, h, 0) element of a strided operand.
template <class T>
struct Operand {
  T* ptr;
  int64_t batch_stride, row_stride, D;
  T* at(int64_t b, int64_t t, int64_t h) const {
    return ptr + b * batch_stride + t * row_stride + h * D;
  }
};

template <class T>
Operand<T> typed(const AttnOperand& o, int64_t D) {
  return {static_cast<T*>(o.ptr), o.batch_stride, o.row_stride, D};
}

// Number of keys of the block starting at key k0 (nk keys) that query row q (global position
// qpos) sees: all of them without causal masking, else those with j <= qpos.
inline int64_t visible_keys(bool causal, int64_t qpos, int64_t k0, int64_t nk) {
  if (!causal) return nk;
  return std::clamp<int64_t>(qpos - k0 + 1, 0, nk);
}

// One past the last key any of the query rows [q0, q0 + nq) sees.
inline int64_t key_end(const AttentionArgs& a, int64_t q0, int64_t nq) {
  return a.causal ? std::min(a.Tk, a.q_offset + q0 + nq) : a.Tk;
}

// dst (cols, rows; ld_dst) = src (rows, cols; ld_src)^T
template <class T>
void transpose(const T* src, int64_t ld_src, int64_t rows, int64_t cols, T* dst, int64_t ld_dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
}

template <class T>
void forward_t(const AttentionArgs& a, int threads) {
  const int64_t D = a.D, H = a.H;
  const auto q = typed<const T>(a.q, D), k = typed<const T>(a.k, D), v = typed<const T>(a.v, D);
  const auto out = typed<T>(a.out, D);
  T* lse = static_cast<T*>(a.lse);  // (B, H, Tq)
  const T scale = static_cast<T>(a.scale);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const int64_t q_blocks = (a.Tq + kBlockQ - 1) / kBlockQ;
  const int64_t tasks = a.B * H * q_blocks;
  const int nt = static_cast<int>(std::min<int64_t>(threads, tasks));
  BlasSingleThread blas_guard(threads);

  // Query blocks are independent in the forward pass, so they are the unit of work: with causal
  // masking later blocks cost more, hence the dynamic schedule.
#pragma omp parallel num_threads(std::max(nt, 1))
  {
    std::vector<T> s_buf(kBlockQ * kBlockK);        // (BQ, BK) scores, then probabilities
    std::vector<T> o_buf(kBlockQ * D);              // (BQ, D) unnormalised output
    std::vector<T> m_buf(kBlockQ), l_buf(kBlockQ);  // running max and sum per query row
    T* S = s_buf.data();
    T* O = o_buf.data();
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t qb = task % q_blocks, bh = task / q_blocks;
      const int64_t b = bh / H, h = bh % H;
      const int64_t q0 = qb * kBlockQ, nq = std::min(kBlockQ, a.Tq - q0);
      const int64_t kend = key_end(a, q0, nq);
      std::fill(O, O + nq * D, T(0));
      std::fill(m_buf.begin(), m_buf.end(), neg_inf);
      std::fill(l_buf.begin(), l_buf.end(), T(0));
      const T* qp = q.at(b, q0, h);
      for (int64_t k0 = 0; k0 < kend; k0 += kBlockK) {
        const int64_t nk = std::min(kBlockK, kend - k0);
        // S (nq, nk) = scale * Q K^T
        blas_gemm(false, true, nq, nk, D, scale, qp, q.row_stride, k.at(b, k0, h), k.row_stride,
                  T(0), S, kBlockK);
        for (int64_t i = 0; i < nq; ++i) {
          T* s = S + i * kBlockK;
          const int64_t vis = visible_keys(a.causal, a.q_offset + q0 + i, k0, nk);
          std::fill(s + vis, s + nk, T(0));
          if (vis == 0) continue;
          const T m_new = std::max(m_buf[i], row_max(s, vis));
          const T sum = exp_shift_sum(s, vis, m_new);
          if (m_new != m_buf[i]) {
            // The running max grew: rescale what was accumulated against the old max.
            const T alpha = fast_exp(m_buf[i] - m_new);
            T* o = O + i * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) o[d] *= alpha;
            l_buf[i] *= alpha;
            m_buf[i] = m_new;
          }
          l_buf[i] += sum;
        }
        // O (nq, D) += P V
        blas_gemm(false, false, nq, D, nk, T(1), S, kBlockK, v.at(b, k0, h), v.row_stride, T(1), O,
                  D);
      }
      for (int64_t i = 0; i < nq; ++i) {
        T* o = out.at(b, q0 + i, h);
        const T* acc = O + i * D;
        T* l = lse + (b * H + h) * a.Tq + q0 + i;
        if (l_buf[i] == T(0)) {
          // No visible key (only when Tk = 0): empty sum, zero output.
          std::fill(o, o + D, T(0));
          *l = neg_inf;
          continue;
        }
        const T inv = T(1) / l_buf[i];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] = acc[d] * inv;
        *l = m_buf[i] + std::log(l_buf[i]);
      }
    }
  }
}

template <class T>
void backward_t(const AttentionArgs& a, int threads) {
  const int64_t D = a.D, H = a.H, Tq = a.Tq, Tk = a.Tk;
  const auto q = typed<const T>(a.q, D), k = typed<const T>(a.k, D), v = typed<const T>(a.v, D);
  const auto out = typed<const T>(a.out, D), dout = typed<const T>(a.dout, D);
  const auto dq = typed<T>(a.dq, D), dk = typed<T>(a.dk, D), dv = typed<T>(a.dv, D);
  const T* lse = static_cast<const T*>(a.lse);  // (B, H, Tq)
  const T scale = static_cast<T>(a.scale);
  const int64_t tasks = a.B * H;
  const int nt = static_cast<int>(std::min<int64_t>(threads, tasks));
  BlasSingleThread blas_guard(threads);

  // One (b, h) per task: dq rows of a head are accumulated over all key blocks, so splitting a
  // head across threads would race on them.
#pragma omp parallel num_threads(std::max(nt, 1))
  {
    std::vector<T> p_buf(kBlockQ * kBlockK);   // (BQ, BK) probabilities P
    std::vector<T> dp_buf(kBlockQ * kBlockK);  // (BQ, BK) dP, then dS
    std::vector<T> dk_buf(kBlockK * D);        // (BK, D) dK of the current key block
    std::vector<T> dv_buf(kBlockK * D);        // (BK, D) dV of the current key block
    std::vector<T> kt_buf(D * kBlockK);        // (D, BK) K^T of the current key block
    std::vector<T> vt_buf(D * kBlockK);        // (D, BK) V^T of the current key block
    std::vector<T> delta(Tq);                  // (Tq) rowsum(dO * O)
    T* P = p_buf.data();
    T* dP = dp_buf.data();
    T* dK = dk_buf.data();
    T* dV = dv_buf.data();
    T* Kt = kt_buf.data();
    T* Vt = vt_buf.data();
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < tasks; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const T* lse_bh = lse + bh * Tq;
      for (int64_t i = 0; i < Tq; ++i) {
        const T* o = out.at(b, i, h);
        const T* g = dout.at(b, i, h);
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < D; ++d) s += o[d] * g[d];
        delta[i] = s;
        std::fill(dq.at(b, i, h), dq.at(b, i, h) + D, T(0));
      }
      for (int64_t k0 = 0; k0 < Tk; k0 += kBlockK) {
        const int64_t nk = std::min(kBlockK, Tk - k0);
        std::fill(dK, dK + nk * D, T(0));
        std::fill(dV, dV + nk * D, T(0));
        const T* kp = k.at(b, k0, h);
        const T* vp = v.at(b, k0, h);
        // K^T and V^T once per key block, for all its query blocks: the BLAS runs the
        // Q K^T and dO V^T products markedly faster with an untransposed right operand.
        transpose(kp, k.row_stride, nk, D, Kt, kBlockK);
        transpose(vp, v.row_stride, nk, D, Vt, kBlockK);
        // The first query that sees key k0 is at q_offset + i = k0; earlier query blocks are
        // fully masked for this key block.
        const int64_t q_first = a.causal ? std::max<int64_t>(0, k0 - a.q_offset) : 0;
        for (int64_t q0 = q_first / kBlockQ * kBlockQ; q0 < Tq; q0 += kBlockQ) {
          const int64_t nq = std::min(kBlockQ, Tq - q0);
          const T* qp = q.at(b, q0, h);
          const T* gp = dout.at(b, q0, h);
          // P (nq, nk) = exp(scale * Q K^T - lse), masked entries 0
          blas_gemm(false, false, nq, nk, D, scale, qp, q.row_stride, Kt, kBlockK, T(0), P,
                    kBlockK);
          for (int64_t i = 0; i < nq; ++i) {
            T* p = P + i * kBlockK;
            const int64_t vis = visible_keys(a.causal, a.q_offset + q0 + i, k0, nk);
            exp_shift_sum(p, vis, lse_bh[q0 + i]);
            std::fill(p + vis, p + nk, T(0));
          }
          // dV (nk, D) += P^T dO
          blas_gemm(true, false, nk, D, nq, T(1), P, kBlockK, gp, dout.row_stride, T(1), dV, D);
          // dP (nq, nk) = dO V^T
          blas_gemm(false, false, nq, nk, D, T(1), gp, dout.row_stride, Vt, kBlockK, T(0), dP,
                    kBlockK);
          // dS = P * (dP - Delta), in place of dP
          for (int64_t i = 0; i < nq; ++i) {
            const T* p = P + i * kBlockK;
            T* ds = dP + i * kBlockK;
            const T di = delta[q0 + i];
#pragma omp simd
            for (int64_t j = 0; j < nk; ++j) ds[j] = p[j] * (ds[j] - di);
          }
          // dQ (nq, D) += scale * dS K
          blas_gemm(false, false, nq, D, nk, scale, dP, kBlockK, kp, k.row_stride, T(1),
                    dq.at(b, q0, h), dq.row_stride);
          // dK (nk, D) += scale * dS^T Q
          blas_gemm(true, false, nk, D, nq, scale, dP, kBlockK, qp, q.row_stride, T(1), dK, D);
        }
        for (int64_t j = 0; j < nk; ++j) {
          std::copy(dK + j * D, dK + (j + 1) * D, dk.at(b, k0 + j, h));
          std::copy(dV + j * D, dV + (j + 1) * D, dv.at(b, k0 + j, h));
        }
      }
    }
  }
}

void check_args(const AttentionArgs& a, bool backward) {
  const char* op = backward ? "attention_backward" : "attention_forward";
  LSS_CHECK(a.B >= 0 && a.H >= 0 && a.D > 0 && a.Tq >= 0 && a.Tk >= 0 && a.q_offset >= 0,
            std::string(op) + ": bad shape B=" + std::to_string(a.B) + " H=" + std::to_string(a.H) +
                " D=" + std::to_string(a.D) + " Tq=" + std::to_string(a.Tq) +
                " Tk=" + std::to_string(a.Tk) + " q_offset=" + std::to_string(a.q_offset));
  const int64_t HD = a.H * a.D;
  auto check_operand = [&](const AttnOperand& o, const char* what) {
    LSS_CHECK(o.ptr != nullptr && o.row_stride >= HD && o.batch_stride >= 0,
              std::string(op) + ": operand " + what + " is null or has row_stride " +
                  std::to_string(o.row_stride) + " < H*D = " + std::to_string(HD));
  };
  check_operand(a.q, "q");
  check_operand(a.k, "k");
  check_operand(a.v, "v");
  check_operand(a.out, "out");
  LSS_CHECK(a.lse != nullptr, std::string(op) + ": lse is null");
  if (backward) {
    check_operand(a.dout, "dout");
    check_operand(a.dq, "dq");
    check_operand(a.dk, "dk");
    check_operand(a.dv, "dv");
  }
}

}  // namespace

void attention_forward(const AttentionArgs& a, int threads) {
  dispatch_float(a.dtype, "attention_forward", [&](auto tag) {
    check_args(a, false);
    forward_t<decltype(tag)>(a, threads);
  });
}

void attention_backward(const AttentionArgs& a, int threads) {
  dispatch_float(a.dtype, "attention_backward", [&](auto tag) {
    check_args(a, true);
    backward_t<decltype(tag)>(a, threads);
  });
}

void attention_merge(const AttentionMergeArgs& a, int threads) {
  check_attention_merge(a);
  dispatch_float(a.dtype, "attention_merge", [&](auto tag) {
    using T = decltype(tag);
    const auto out = typed<T>(a.out, a.D);
    const auto part = typed<const T>(a.part, a.D);
    T* lse = static_cast<T*>(a.lse);
    const T* part_lse = static_cast<const T*>(a.part_lse);
    const int64_t rows = a.B * a.H;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t bh = 0; bh < rows; ++bh) {
      const int64_t b = bh / a.H, h = bh % a.H;
      for (int64_t t = 0; t < a.Tq; ++t) {
        T& l = lse[bh * a.Tq + t];
        const T lp = part_lse[bh * a.Tq + t];
        const T m = std::max(l, lp);
        if (m == -std::numeric_limits<T>::infinity()) continue;  // no key in either part
        const T wa = std::exp(l - m), wb = std::exp(lp - m), sum = wa + wb;
        T* o = out.at(b, t, h);
        const T* p = part.at(b, t, h);
        for (int64_t d = 0; d < a.D; ++d) o[d] = (o[d] * wa + p[d] * wb) / sum;
        l = m + std::log(sum);
      }
    }
  });
}

}  // namespace lss::cpu
