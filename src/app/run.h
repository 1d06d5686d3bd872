#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "app/session.h"
#include "core/options.h"

namespace lss {
// `lssbench run`: one configuration, one MPI job. Returns the process exit code.
int cmd_run(const std::vector<std::string>& args, const std::string& command_line);

// The options that describe one training configuration (model, optimizer, strategy and its
// options, backend, --sp), shared by `run` and `project`, and the configuration they give.
void add_step_options(OptionParser& p);
RunConfig step_config_from(const OptionParser& p);

// TFLOP/s of an n x n x n GEMM in `dtype` on random operands (median of 5 after 2 warm-up calls).
double measure_gemm_tflops(Backend& be, DType dtype, int64_t n);
}  // namespace lss
