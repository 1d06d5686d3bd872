#include "bench/bench_common.h"

#include <cstring>

#include "core/check.h"

namespace lss::bench {

Settings parse_settings(int* argc, char** argv) {
  Settings s;
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* prefix) { return a.substr(std::strlen(prefix)); };
    if (a.rfind("--backend=", 0) == 0) s.backend = value("--backend=");
    else if (a.rfind("--attention=", 0) == 0) s.attention = value("--attention=");
    else if (a.rfind("--dtype=", 0) == 0) s.dtype = value("--dtype=");
    else if (a.rfind("--threads=", 0) == 0) s.threads = std::stoi(value("--threads="));
    else if (a == "--large") s.large = true;
    else argv[out++] = argv[i];
  }
  *argc = out;
  return s;
}

DType bench_dtype(const Settings& s) {
  if (!s.dtype.empty()) return parse_dtype(s.dtype);
  return s.backend == "cuda" ? DType::bf16 : DType::f32;
}

Buffer random_buffer(Backend& be, DType dtype, int64_t n, uint64_t seed, double scale) {
  std::vector<double> host(static_cast<size_t>(n));
  const uint64_t key = stream_key(seed, "bench");
  // A pure function of the index: the threads split the work without changing any value. Serial,
  // the model-sized operands (up to 134M elements each) took most of a benchmark's wall time.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) host[i] = scale * (2.0 * uniform01(key, static_cast<uint64_t>(i)) - 1.0);
  Buffer b = be.alloc(dtype, n);
  be.copy_from_host(b.view(), host.data(), DType::f64);
  return b;
}

}  // namespace lss::bench
