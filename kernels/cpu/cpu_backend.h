// The CPU backend: fp32 and fp64 kernels (OpenBLAS GEMMs, blocked online-softmax attention).
#pragma once
#include <memory>

#include "core/backend.h"

namespace lss {

// num_threads: threads for OpenBLAS and the backend's own parallel loops (>= 1).
std::unique_ptr<Backend> make_cpu_backend(int num_threads);

}  // namespace lss
