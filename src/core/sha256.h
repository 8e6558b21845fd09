// SHA-256 (FIPS 180-4), incremental: for checksums of inputs, tokenizer files and manifests.
// Plain C++ (about 200-300 MB/s on one core), or the x86 SHA extensions where the build targets a CPU that
// has them (-march=native; about 1.5 GB/s).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace l3c {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t bytes);
  void update(std::string_view text) { update(text.data(), text.size()); }
  // The digest as 64 lowercase hex digits; the object is spent afterwards.
  std::string hex_digest();

 private:
  void compress(const uint8_t* block);                       // the portable rounds
  void compress_blocks(const uint8_t* data, size_t blocks);  // SHA-NI where compiled in, else compress()
  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// The hex digest of a string.
std::string sha256_hex(std::string_view text);

// The hex digest of a file's contents; UserError naming the file when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace l3c
