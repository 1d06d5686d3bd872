#include "strategies/strategy.h"

namespace lss {

void expect_calls(CommModel& model, const std::string& group, int group_size, CollKind k, int64_t calls,
                  int64_t bytes) {
  if (group_size <= 1 || calls == 0) return;
  auto& c = model[group];
  c.calls[static_cast<int>(k)] += calls;
  c.bytes[static_cast<int>(k)] += calls * bytes;
}

}  // namespace lss
