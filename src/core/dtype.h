#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace lss {

// Element types a buffer can hold. bf16 is for the CUDA backend; i32 holds token ids.
enum class DType : uint8_t { f32, f64, bf16, i32 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::i32: return 4;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "fp32";
    case DType::f64: return "fp64";
    case DType::bf16: return "bf16";
    case DType::i32: return "int32";
  }
  return "?";
}

// Type of per-row statistics (LayerNorm mean/rstd, attention log-sum-exp): fp64 runs keep them
// in fp64 so that the fp64 path is exact to ~1e-12; everything else keeps them in fp32.
inline DType stat_dtype(DType compute) { return compute == DType::f64 ? DType::f64 : DType::f32; }

// Type of master weights, gradients and optimizer state for a compute dtype: bf16 training keeps
// them in fp32; fp32 and fp64 keep everything in their own type.
inline DType master_dtype(DType compute) { return compute == DType::bf16 ? DType::f32 : compute; }

// Parses "fp32" | "fp64" | "bf16"; throws UsageError naming the option and the bad value.
DType parse_dtype(const std::string& s, const std::string& option = "--dtype");

}  // namespace lss
