// Step export: the parameters before the update, their gradients ("grad." + name) and the
// step's inputs and targets (B, T, int32), as a safetensors file in DESIGN.md's names and
// torch.nn.Linear shapes, so a step can be checked against PyTorch or JAX.
#pragma once
#include <string>

#include "app/session.h"

namespace lss {

// Collective over the session's grid; rank 0 writes `path` (never overwriting).
void export_step(Session& session, int64_t step, const std::string& path);

}  // namespace lss
