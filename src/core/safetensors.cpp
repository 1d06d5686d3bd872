#include "core/safetensors.h"

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "core/fileio.h"

namespace lss {

namespace {
size_t element_size(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "F64") return 8;
  throw std::runtime_error("safetensors: unsupported dtype " + dtype);
}
int64_t product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
}  // namespace

int64_t SafeTensor::numel() const { return product(shape); }

std::vector<double> SafeTensor::values() const {
  const int64_t n = numel();
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == "F32") {
      float f;
      std::memcpy(&f, data.data() + 4 * i, 4);
      out[i] = f;
    } else if (dtype == "F64") {
      std::memcpy(&out[i], data.data() + 8 * i, 8);
    } else if (dtype == "I32") {
      int32_t v;
      std::memcpy(&v, data.data() + 4 * i, 4);
      out[i] = v;
    } else {
      throw std::runtime_error("safetensors: unsupported dtype " + dtype);
    }
  }
  return out;
}

SafeTensor make_f32_tensor(const std::vector<double>& values, std::vector<int64_t> shape) {
  SafeTensor t;
  t.dtype = "F32";
  t.shape = std::move(shape);
  if (product(t.shape) != static_cast<int64_t>(values.size()))
    throw std::runtime_error("safetensors: shape does not match the value count");
  t.data.resize(values.size() * 4);
  for (size_t i = 0; i < values.size(); ++i) {
    const float f = static_cast<float>(values[i]);
    std::memcpy(t.data.data() + 4 * i, &f, 4);
  }
  return t;
}

SafeTensor make_i32_tensor(const std::vector<int32_t>& values, std::vector<int64_t> shape) {
  SafeTensor t;
  t.dtype = "I32";
  t.shape = std::move(shape);
  if (product(t.shape) != static_cast<int64_t>(values.size()))
    throw std::runtime_error("safetensors: shape does not match the value count");
  t.data.resize(values.size() * 4);
  std::memcpy(t.data.data(), values.data(), t.data.size());
  return t;
}

void write_safetensors(const std::string& path, const SafeTensorFile& file) {
  nlohmann::ordered_json header;
  if (!file.metadata.empty()) header["__metadata__"] = file.metadata;
  size_t offset = 0;
  for (const auto& [name, t] : file.tensors) {
    const size_t bytes = static_cast<size_t>(t.numel()) * element_size(t.dtype);
    if (bytes != t.data.size())
      throw std::runtime_error("safetensors: tensor " + name + " has the wrong byte count");
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string head = header.dump();
  // The data section starts 8-byte aligned; the format allows trailing spaces in the header.
  while ((8 + head.size()) % 8 != 0) head.push_back(' ');
  std::string out;
  out.reserve(8 + head.size() + offset);
  const uint64_t n = head.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += head;
  for (const auto& [name, t] : file.tensors)
    out.append(reinterpret_cast<const char*>(t.data.data()), t.data.size());
  write_file_atomic_no_overwrite(path, out);
}

SafeTensorFile read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  unsigned char len_bytes[8];
  if (!in.read(reinterpret_cast<char*>(len_bytes), 8))
    throw std::runtime_error(path + ": too short for a safetensors file");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len_bytes[i]) << (8 * i);
  if (n > (1ULL << 30)) throw std::runtime_error(path + ": implausible header length");
  std::string head(n, '\0');
  if (!in.read(head.data(), static_cast<std::streamsize>(n)))
    throw std::runtime_error(path + ": truncated header");
  const std::vector<char> body((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(head);
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": malformed header: " + e.what());
  }
  SafeTensorFile file;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      for (const auto& [k, v] : entry.items()) file.metadata[k] = v.get<std::string>();
      continue;
    }
    SafeTensor t;
    t.dtype = entry.at("dtype").get<std::string>();
    t.shape = entry.at("shape").get<std::vector<int64_t>>();
    const auto offsets = entry.at("data_offsets").get<std::vector<size_t>>();
    if (offsets.size() != 2 || offsets[1] < offsets[0] || offsets[1] > body.size() ||
        offsets[1] - offsets[0] != static_cast<size_t>(t.numel()) * element_size(t.dtype))
      throw std::runtime_error(path + ": bad data_offsets for " + name);
    t.data.assign(body.begin() + static_cast<std::ptrdiff_t>(offsets[0]),
                  body.begin() + static_cast<std::ptrdiff_t>(offsets[1]));
    file.tensors.emplace(name, std::move(t));
  }
  return file;
}

}  // namespace lss
