// The safetensors file format (read and write): an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}, "__metadata__": {string: string}}, then the raw tensor bytes.
// Files written here load with the Python `safetensors` package and with `l3c eval`.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace l3c {

struct NamedTensor {
  std::string name;
  Tensor tensor;  // host memory; F32, F64, BF16 or I32
};

// The bytes that precede the tensor data: the 8-byte header length and the JSON header (padded so that
// the data starts 8-byte aligned). The tensors' bytes follow in the order given.
std::string safetensors_header(const std::vector<NamedTensor>& tensors,
                               const std::map<std::string, std::string>& metadata = {});

// Writes atomically (temporary file, fsync, rename). UserError naming the path on failure.
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// How SafetensorsFile holds the bytes: read into memory, or mapped read-only (pages are read when touched, so
// a tensor nobody reads never enters memory: inference serves L3 tables from the file this way).
enum class FileAccess { Read, Map };

// A whole file, read into memory or mapped; tensors are views into it (read-only when mapped).
class SafetensorsFile {
 public:
  // Validates header, offsets and size.
  explicit SafetensorsFile(const std::string& path, FileAccess access = FileAccess::Read);

  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  const Tensor& get(const std::string& name) const;  // UserError naming file and tensor if absent
  const std::map<std::string, Tensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::byte> bytes_;                   // FileAccess::Read
  std::shared_ptr<const std::byte> mapping_;       // FileAccess::Map: the whole file, unmapped on destruction
  std::map<std::string, Tensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace l3c
