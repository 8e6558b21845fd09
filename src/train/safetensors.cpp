// safetensors reading and writing.
#include "train/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/errors.h"

namespace l3c {

namespace {
const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
  }
  return "?";
}

bool parse_dtype(const std::string& s, DType& out) {
  if (s == "F32") out = DType::F32;
  else if (s == "F64") out = DType::F64;
  else if (s == "BF16") out = DType::BF16;
  else if (s == "I32") out = DType::I32;
  else return false;
  return true;
}
}  // namespace

std::string safetensors_header(const std::vector<NamedTensor>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const NamedTensor& t : tensors) {
    std::vector<int64_t> shape(t.tensor.shape.begin(), t.tensor.shape.begin() + t.tensor.ndim);
    header[t.name] = {{"dtype", safetensors_dtype(t.tensor.dtype)}, {"shape", shape},
                      {"data_offsets", {offset, offset + t.tensor.bytes()}}};
    offset += t.tensor.bytes();
  }
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');  // the data starts 8-byte aligned
  const uint64_t header_len = text.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &header_len, 8);  // little-endian on every platform l3c builds for
  return out + text;
}

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string header = safetensors_header(tensors, metadata);
  const std::string temp = path + ".tmp";
  FILE* f = std::fopen(temp.c_str(), "wb");
  if (f == nullptr) fail("{}: cannot write: {}", path, std::strerror(errno));
  bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
  for (const NamedTensor& t : tensors)
    ok = ok && std::fwrite(t.tensor.data, 1, t.tensor.bytes(), f) == t.tensor.bytes();
  ok = (std::fflush(f) == 0) && ok;
  ok = (::fsync(::fileno(f)) == 0) && ok;
  const int saved_errno = errno;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(ok ? errno : saved_errno);
    std::remove(temp.c_str());
    fail("{}: writing failed ({}); nothing was replaced", path, reason);
  }
}

SafetensorsFile::SafetensorsFile(const std::string& path, FileAccess access) : path_(path) {
  size_t size = 0;
  const std::byte* base = nullptr;
  if (access == FileAccess::Map) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) fail("{}: cannot open: {}", path, std::strerror(errno));
    struct stat info {};
    if (::fstat(fd, &info) != 0) {
      ::close(fd);
      fail("{}: cannot stat: {}", path, std::strerror(errno));
    }
    size = static_cast<size_t>(info.st_size);
    void* mapped = size > 0 ? ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0) : nullptr;
    ::close(fd);
    if (mapped == MAP_FAILED) fail("{}: cannot map: {}", path, std::strerror(errno));
    mapping_ = std::shared_ptr<const std::byte>(static_cast<const std::byte*>(mapped),
                                                [size](const std::byte* p) {
                                                  if (p != nullptr) ::munmap(const_cast<std::byte*>(p), size);
                                                });
    base = mapping_.get();
  } else {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) fail("{}: cannot open", path);
    size = static_cast<size_t>(in.tellg());
    in.seekg(0);
    bytes_.resize(size);
    if (size > 0 && !in.read(reinterpret_cast<char*>(bytes_.data()), static_cast<std::streamsize>(size)))
      fail("{}: read error", path);
    base = bytes_.data();
  }
  if (size < 8) fail("{}: not a safetensors file: {} bytes", path, size);
  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);
  if (header_len > size - 8) fail("{}: truncated safetensors file: header of {} bytes in a {}-byte file", path, header_len, size);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(base) + 8,
                                   reinterpret_cast<const char*>(base) + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: corrupt safetensors header: {}", path, e.what());
  }
  if (!header.is_object()) fail("{}: corrupt safetensors header: not an object", path);
  const size_t data_start = 8 + header_len;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      for (auto& [k, v] : entry.items())
        if (v.is_string()) metadata_[k] = v.get<std::string>();
      continue;
    }
    try {
      DType dtype;
      if (!parse_dtype(entry.at("dtype").get<std::string>(), dtype))
        fail("{}: tensor {}: unsupported dtype {}", path, name, entry.at("dtype").dump());
      const auto shape = entry.at("shape").get<std::vector<int64_t>>();
      const auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
      if (shape.size() > static_cast<size_t>(Tensor::kMaxDims) || offsets.size() != 2 || offsets[1] < offsets[0])
        fail("{}: tensor {}: bad shape or offsets", path, name);
      Tensor t(nullptr, dtype, {1});
      t.ndim = static_cast<int>(shape.size());
      for (int i = 0; i < t.ndim; ++i) t.shape[i] = shape[i];
      if (offsets[1] - offsets[0] != t.bytes())
        fail("{}: tensor {}: {} bytes for shape {}", path, name, offsets[1] - offsets[0], t.shape_string());
      if (data_start + offsets[1] > size)
        fail("{}: truncated safetensors file: tensor {} ends at byte {} of a {}-byte file", path, name,
             data_start + offsets[1], size);
      t.data = const_cast<std::byte*>(base) + data_start + offsets[0];
      tensors_[name] = t;
    } catch (const nlohmann::json::exception& e) {
      fail("{}: tensor {}: corrupt header entry: {}", path, name, e.what());
    }
  }
}

const Tensor& SafetensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail("{}: no tensor named {}", path_, name);
  return it->second;
}

}  // namespace l3c
