// safetensors files: 8-byte little-endian header length, a JSON header mapping each tensor name
// to {dtype, shape, data_offsets}, then the raw little-endian data. Readable by the
// `safetensors` Python package, PyTorch and JAX.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lss {

struct SafeTensor {
  std::string dtype;            // "F32", "F64" or "I32"
  std::vector<int64_t> shape;
  std::vector<unsigned char> data;  // raw little-endian bytes

  int64_t numel() const;
  // Values converted to double (F32, F64, I32).
  std::vector<double> values() const;
};

struct SafeTensorFile {
  std::map<std::string, std::string> metadata;  // "__metadata__": string -> string
  std::map<std::string, SafeTensor> tensors;
};

SafeTensor make_f32_tensor(const std::vector<double>& values, std::vector<int64_t> shape);
SafeTensor make_i32_tensor(const std::vector<int32_t>& values, std::vector<int64_t> shape);

// Writes atomically (temporary file, then a no-overwrite link): throws std::runtime_error if
// `path` exists or cannot be written.
void write_safetensors(const std::string& path, const SafeTensorFile& file);
// Throws std::runtime_error naming the file on a missing file or a malformed header.
SafeTensorFile read_safetensors(const std::string& path);

}  // namespace lss
