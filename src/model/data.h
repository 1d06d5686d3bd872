// Token batches. Sequence g of step s is global sequence index s*B + b; its token at position t
// (0..T, the last one only as a target) is a pure function of (seed, g, t) for synthetic data,
// or byte (g*T + t) mod (file size - T) of a file (raw bytes, as enwik8 is used), so any rank
// makes exactly its own window of the batch.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace lss {

class DataSource {
 public:
  // Synthetic tokens when `path` is empty; otherwise the file's bytes (throws UsageError naming
  // the path when it cannot be read or is shorter than T + 1 bytes).
  DataSource(const ModelConfig& cfg, const std::string& path);

  // inputs/targets (nt, nb) T-major: element [t*nb + b] is position t0+t of sequence b0+b of
  // step `step`; targets are the inputs shifted by one position.
  void fill(int64_t step, int64_t b0, int64_t nb, int64_t t0, int64_t nt, int32_t* inputs,
            int32_t* targets) const;
  std::string describe() const;

 private:
  int32_t token(int64_t seq, int64_t pos) const;
  int64_t T_, B_, V_;
  uint64_t key_;
  std::string path_;
  std::vector<unsigned char> bytes_;
};

}  // namespace lss
