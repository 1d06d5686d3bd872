// Shared set-up of the micro-benchmarks: the backend under test from --backend (cpu | cuda)
// and --attention, parsed before Google Benchmark sees the arguments; random buffers.
#pragma once
#include <benchmark/benchmark.h>

#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/init.h"

namespace lss::bench {

struct Settings {
  std::string backend = "cpu";
  std::string attention = "auto";
  std::string dtype;  // default: fp32 on cpu, bf16 on cuda
  int threads = 1;
  bool large = false;  // GPU-sized shapes (--large); the defaults suit a CI CPU
};

// Removes --backend=, --attention=, --dtype=, --threads=, --large from argv.
Settings parse_settings(int* argc, char** argv);
DType bench_dtype(const Settings& s);

// A buffer of n elements of `dtype` filled with uniform values in [-scale, scale).
Buffer random_buffer(Backend& be, DType dtype, int64_t n, uint64_t seed, double scale = 1.0);

}  // namespace lss::bench
