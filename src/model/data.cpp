#include "model/data.h"

#include <fstream>
#include <iterator>

#include "core/check.h"
#include "core/init.h"

namespace lss {

DataSource::DataSource(const ModelConfig& cfg, const std::string& path)
    : T_(cfg.T), B_(cfg.B), V_(cfg.V), key_(stream_key(cfg.seed, "data")), path_(path) {
  if (path.empty()) return;
  std::ifstream in(path, std::ios::binary);
  LSS_REQUIRE_INPUT(in.good(), "--data " + path + ": cannot be opened for reading");
  bytes_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  LSS_REQUIRE_INPUT(!in.bad(), "--data " + path + ": read error");
  LSS_REQUIRE_INPUT(static_cast<int64_t>(bytes_.size()) > T_,
                    "--data " + path + ": " + std::to_string(bytes_.size()) +
                        " bytes, fewer than one sequence of --seq " + std::to_string(T_) + " + 1");
}

int32_t DataSource::token(int64_t seq, int64_t pos) const {
  if (bytes_.empty())
    return static_cast<int32_t>(hash_u64(key_, static_cast<uint64_t>(seq * (T_ + 1) + pos)) % static_cast<uint64_t>(V_));
  const int64_t span = static_cast<int64_t>(bytes_.size()) - T_;  // valid start offsets
  const int64_t start = (seq * T_) % span;
  return bytes_[static_cast<size_t>(start + pos)];
}

void DataSource::fill(int64_t step, int64_t b0, int64_t nb, int64_t t0, int64_t nt, int32_t* inputs,
                      int32_t* targets) const {
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t seq = step * B_ + b0 + b;
      inputs[t * nb + b] = token(seq, t0 + t);
      targets[t * nb + b] = token(seq, t0 + t + 1);
    }
}

std::string DataSource::describe() const {
  if (bytes_.empty()) return "synthetic (uniform bytes)";
  return path_ + " (" + std::to_string(bytes_.size()) + " bytes)";
}

}  // namespace lss
