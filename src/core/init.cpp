#include "core/init.h"

#include <cmath>
#include <numbers>

namespace lss {

namespace {
// splitmix64 finaliser: a bijective mixer with full avalanche, so neighbouring indices give
// independent-looking values.
uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
}  // namespace

uint64_t stream_key(uint64_t seed, std::string_view name) {
  // FNV-1a over the name, then mixed with the seed.
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return mix(h ^ mix(seed));
}

uint64_t hash_u64(uint64_t key, uint64_t index) { return mix(key ^ mix(index)); }

double uniform01(uint64_t key, uint64_t index) {
  return static_cast<double>(hash_u64(key, index) >> 11) * 0x1.0p-53;
}

double normal(uint64_t key, uint64_t index) {
  // Two independent uniforms from the doubled index; u1 in (0, 1] so the log is finite.
  const double u1 = 1.0 - uniform01(key, 2 * index);
  const double u2 = uniform01(key, 2 * index + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

}  // namespace lss
