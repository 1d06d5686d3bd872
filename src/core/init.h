// Deterministic values as pure functions of (seed, name, global index): any rank can make any
// shard of a parameter or an input and gets exactly the serial model's values.
#pragma once
#include <cstdint>
#include <string_view>

namespace lss {

// 64-bit stream key of (seed, name); combine with an index through the functions below.
uint64_t stream_key(uint64_t seed, std::string_view name);
// Uniform 64-bit value of (key, index).
uint64_t hash_u64(uint64_t key, uint64_t index);
// Uniform in [0, 1) with 53 random bits.
double uniform01(uint64_t key, uint64_t index);
// Standard normal (Box-Muller on two independent uniforms of the same index).
double normal(uint64_t key, uint64_t index);

}  // namespace lss
