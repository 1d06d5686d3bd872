#include "model/config.h"

#include "core/check.h"

namespace lss {

namespace {
void positive(int64_t v, const char* option) {
  LSS_REQUIRE_INPUT(v > 0, std::string(option) + " " + std::to_string(v) + ": must be positive");
}
}  // namespace

void ModelConfig::validate() const {
  positive(L, "--layers");
  positive(C, "--width");
  positive(H, "--heads");
  positive(T, "--seq");
  positive(T_max, "--max-seq");
  positive(B, "--batch");
  LSS_REQUIRE_INPUT(C % H == 0, "--width " + std::to_string(C) + " does not divide by --heads " +
                                    std::to_string(H) + " (the head size D = C/H must be whole)");
  LSS_REQUIRE_INPUT(T <= T_max, "--seq " + std::to_string(T) + " exceeds the positional table (--max-seq " +
                                    std::to_string(T_max) + ")");
  LSS_REQUIRE_INPUT(init_std > 0, "init std must be positive");
}

}  // namespace lss
