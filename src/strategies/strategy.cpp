#include "strategies/strategy.h"

namespace lss {

void expect_calls(CommModel& model, const std::string& group, int group_size, CollKind k, int64_t calls,
                  int64_t bytes) {
  if (group_size <= 1 || calls == 0) return;
  auto& c = model[group];
  c.calls[static_cast<int>(k)] += calls;
  c.bytes[static_cast<int>(k)] += calls * bytes;
}

void Strategy::reduce_gradients(ParamStore& store) {
  ctx_.grid.seq->all_reduce(store.all_grads().slice(0, store.seq_reduced_numel()));
  ctx_.grid.data->all_reduce(store.all_grads());
}

void Strategy::upload_batch(int64_t step, int64_t b0, int64_t nb, const std::vector<RowRange>& ranges, Buffer& tokens,
                            Buffer& targets) {
  int64_t nt = 0;
  for (const auto& r : ranges) nt += r.count;
  std::vector<int32_t> in(static_cast<size_t>(nb * nt)), tg(static_cast<size_t>(nb * nt));
  int64_t row = 0;
  for (const auto& r : ranges) {
    ctx_.data.fill(step, b0, nb, r.start, r.count, in.data() + row * nb, tg.data() + row * nb);
    row += r.count;
  }
  tokens = ctx_.backend.alloc(DType::i32, nb * nt);
  targets = ctx_.backend.alloc(DType::i32, nb * nt);
  ctx_.backend.copy_from_host(tokens.view(), in.data(), DType::i32);
  ctx_.backend.copy_from_host(targets.view(), tg.data(), DType::i32);
}

}  // namespace lss
