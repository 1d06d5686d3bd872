// Metric definitions (the README's Metrics section states the same formulas).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace lss {

// Model FLOPs of one training step (forward + backward = 3 x forward; recomputation not
// counted). Forward: per layer 24*B*T*C^2 (QKV, out-projection, MLP) + attention 4*B*T^2*C,
// halved for causal masks; LM head 2*B*T*C*V.
struct FlopCount {
  double forward = 0, step = 0;
  // Forward parts: the blocks' dense GEMMs (L·24·B·T·C²) and the LM head (2·B·T·C·V).
  double blocks_gemm_forward = 0, head_forward = 0;
  std::string convention;
};
FlopCount model_flops(const ModelConfig& cfg);

// Normwise relative error ||a - b|| / ||b|| (||a - b|| when b is zero); infinite when either
// holds a NaN or an infinity.
double norm_rel_error(const std::vector<double>& a, const std::vector<double>& b);

// Percentile (0..100) of the values by linear interpolation between closest ranks.
double percentile(std::vector<double> values, double pct);

}  // namespace lss
