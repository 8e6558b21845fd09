// safetensors reading and writing.
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <span>

#include <nlohmann/json.hpp>

#include "core/checked.h"
#include "core/errors.h"
#include "core/json_input.h"
#include "core/limits.h"

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
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path);
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  // Read whole into memory with pread (a file changed meanwhile is a read error, not a crash), or mapped read-only
  // (FileAccess::Map: the L3 tables of a model larger than memory are read in place).
  auto read_all = [&]() {
    bytes_.resize(size);
    uint64_t done = 0;
    while (done < size) {
      const ssize_t n = ::pread(fd, bytes_.data() + done, size - done, static_cast<off_t>(done));
      if (n <= 0) {
        const int error = n < 0 ? errno : 0;
        ::close(fd);
        fail("{}: read error: {}", path, error ? std::strerror(error) : "the file shrank while it was read");
      }
      done += static_cast<uint64_t>(n);
    }
  };
  const std::byte* base = nullptr;
  if (access == FileAccess::Map && size >= 8) {
    void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (mapped == MAP_FAILED) {
      const int error = errno;
      ::close(fd);
      fail("{}: cannot map: {}", path, std::strerror(error));
    }
    mapping_ = std::shared_ptr<const std::byte>(static_cast<const std::byte*>(mapped), [size](const std::byte* p) {
      if (p != nullptr) ::munmap(const_cast<std::byte*>(p), size);
    });
    base = mapping_.get();
  } else {
    read_all();
    base = bytes_.data();
  }
  if (size < 8) {
    ::close(fd);
    fail("{}: not a safetensors file: {} bytes", path, size);
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);
  if (header_len > limits::kMaxSafetensorsHeader) {
    ::close(fd);
    fail("{}: not a safetensors file: a header of {} bytes (at most {})", path, header_len, limits::kMaxSafetensorsHeader);
  }
  if (header_len > size - 8) {
    ::close(fd);
    fail("{}: truncated safetensors file: header of {} bytes in a {}-byte file", path, header_len, size);
  }
  const uint64_t data_start = 8 + header_len;
  // A header not padded to 8 bytes: the data moves down to an 8-byte boundary, so that every tensor whose offset is
  // a multiple of its element size is aligned in memory. A mapped file is read into memory for that.
  const uint64_t aligned_start = data_start / 8 * 8;
  if (aligned_start != data_start && mapping_) {
    read_all();
    mapping_.reset();
    base = bytes_.data();
  }
  ::close(fd);
  const nlohmann::json header = parse_json(
      std::string_view(reinterpret_cast<const char*>(base) + 8, header_len), path + " (corrupt safetensors header)");
  if (!header.is_object()) fail("{}: corrupt safetensors header: not an object", path);
  if (aligned_start != data_start)  // the header's bytes are parsed already
    std::memmove(bytes_.data() + aligned_start, bytes_.data() + data_start, size - data_start);
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail("{}: corrupt safetensors header: __metadata__ is not an object", path);
      for (auto& [k, v] : entry.items())
        if (v.is_string()) metadata_[k] = v.get<std::string>();
      continue;
    }
    // Every number is checked before use: offsets whose sum wraps around, a negative or fractional dimension
    // or a shape whose byte count overflows would otherwise point a tensor outside the file.
    const std::string what = fmt::format("{}: tensor {}", path, name);
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
      fail("{}: corrupt header entry: expected {{\"dtype\", \"shape\", \"data_offsets\"}}", what);
    const nlohmann::json& dtype_json = entry["dtype"];
    DType dtype;
    if (!dtype_json.is_string() || !parse_dtype(dtype_json.get<std::string>(), dtype))
      fail("{}: unsupported dtype {} (l3c reads F32, F64, BF16 and I32)", what, dtype_json.dump());
    const nlohmann::json& shape = entry["shape"];
    if (!shape.is_array() || shape.size() > static_cast<size_t>(Tensor::kMaxDims))
      fail("{}: shape must be a list of at most {} dimensions, got {}", what, Tensor::kMaxDims, shape.dump());
    Tensor t(nullptr, dtype, {1});
    t.ndim = static_cast<int>(shape.size());
    for (int i = 0; i < t.ndim; ++i) {
      if (!shape[i].is_number_integer() || (!shape[i].is_number_unsigned() && shape[i].get<int64_t>() < 0) ||
          shape[i].get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail("{}: shape {}: dimension {} must be a non-negative integer, got {}", what, shape.dump(), i, shape[i].dump());
      t.shape[i] = shape[i].get<int64_t>();
    }
    const int64_t numel = checked_numel(std::span(t.shape.data(), static_cast<size_t>(t.ndim)), what + ": shape");
    const uint64_t bytes = checked_mul<uint64_t>(static_cast<uint64_t>(numel), dtype_size(dtype), what + ": bytes");
    const nlohmann::json& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned())
      fail("{}: data_offsets must be two non-negative integers [begin, end], got {}", what, offsets.dump());
    const uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    if (end < begin) fail("{}: data_offsets [{}, {}] end before they begin", what, begin, end);
    if (end - begin != bytes)
      fail("{}: data_offsets [{}, {}] hold {} bytes, but shape {} {} needs {}", what, begin, end, end - begin,
           t.shape_string(), dtype_name(dtype), bytes);
    const uint64_t file_end = checked_add(data_start, end, what + ": data_offsets");
    if (file_end > size)
      fail("{}: truncated safetensors file: tensor {} ends at byte {} of a {}-byte file", path, name, file_end, size);
    if (begin % dtype_size(dtype) != 0)
      fail("{}: data_offsets begin at {}, not a multiple of its {}-byte elements", what, begin, dtype_size(dtype));
    t.data = const_cast<std::byte*>(base) + aligned_start + begin;
    tensors_[name] = t;
  }
}

const Tensor& SafetensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail("{}: no tensor named {}", path_, name);
  return it->second;
}

}  // namespace l3c
