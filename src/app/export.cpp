#include "app/export.h"

#include "core/safetensors.h"
#include "lss_git_commit.h"

namespace lss {

void export_step(Session& session, int64_t step, const std::string& path) {
  auto params = session.gather_full(false);
  auto grads = session.gather_full(true);
  if (session.grid().rank != 0) return;
  const ModelConfig& cfg = session.config().model;
  SafeTensorFile file;
  file.metadata["format"] = "pt";
  file.metadata["producer"] = "lssbench " LSS_VERSION " (" LSS_GIT_COMMIT ")";
  file.metadata["strategy"] = session.config().strategy;
  file.metadata["step"] = std::to_string(step);
  const auto shapes = session.full_shapes();
  for (auto& [name, values] : params) file.tensors[name] = make_f32_tensor(values, shapes.at(name));
  for (auto& [name, values] : grads) file.tensors["grad." + name] = make_f32_tensor(values, shapes.at(name));
  const int64_t B = cfg.B, T = cfg.T;
  std::vector<int32_t> in_tb(B * T), tg_tb(B * T), in_bt(B * T), tg_bt(B * T);
  session.data().fill(step, 0, B, 0, T, in_tb.data(), tg_tb.data());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      in_bt[b * T + t] = in_tb[t * B + b];
      tg_bt[b * T + t] = tg_tb[t * B + b];
    }
  file.tensors["inputs"] = make_i32_tensor(in_bt, {B, T});
  file.tensors["targets"] = make_i32_tensor(tg_bt, {B, T});
  write_safetensors(path, file);
}

}  // namespace lss
