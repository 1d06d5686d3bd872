#include "app/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace lss {

FlopCount model_flops(const ModelConfig& cfg) {
  const double B = static_cast<double>(cfg.B), T = static_cast<double>(cfg.T), C = static_cast<double>(cfg.C);
  const double L = static_cast<double>(cfg.L), V = static_cast<double>(cfg.V);
  const double dense = 24.0 * B * T * C * C;
  const double attention = 4.0 * B * T * T * C * (cfg.causal ? 0.5 : 1.0);
  FlopCount f;
  f.blocks_gemm_forward = L * dense;
  f.head_forward = 2.0 * B * T * C * V;
  f.forward = L * (dense + attention) + f.head_forward;
  f.step = 3.0 * f.forward;
  f.convention = std::string("model FLOPs, 3 x forward; forward = L*(24*B*T*C^2 + 4*B*T^2*C") +
                 (cfg.causal ? " * 1/2 (causal)" : "") + ") + 2*B*T*C*V; recomputation not counted";
  return f;
}

double norm_rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    // A NaN would compare false with every bound and every running maximum: call it infinite.
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return std::numeric_limits<double>::infinity();
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

double percentile(std::vector<double> v, double pct) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const double pos = pct / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

}  // namespace lss
