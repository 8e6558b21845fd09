// Token shard reading (pread) and writing.
#include "data/shard.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/errors.h"

namespace l3c {

namespace {
int64_t modification_ns(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}
}  // namespace

TokenShard::TokenShard(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) fail("{}: cannot open shard: {}", path, std::strerror(errno));
  try {
    check_header();
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

void TokenShard::check_header() {
  const std::string& path = path_;
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) fail("{}: not a regular file", path);
  file_bytes_ = static_cast<int64_t>(st.st_size);
  modified_ns_ = modification_ns(st);
  constexpr int64_t header_bytes = kShardHeaderInts * sizeof(int32_t);
  if (file_bytes_ < header_bytes)
    fail("{}: truncated shard: {} bytes, shorter than the {}-byte header", path, file_bytes_, header_bytes);
  int32_t header[kShardHeaderInts];
  if (::pread(fd_, header, header_bytes, 0) != header_bytes) fail("{}: cannot read the shard header", path);
  const int32_t magic = header[0], version = header[1];
  if (magic == kShardMagicU16 && version == kShardVersionU16) {
    wide_ = false;
  } else if (magic == kShardMagicU32 && version == kShardVersionU32) {
    wide_ = true;
  } else if (magic == kShardMagicU16 || magic == kShardMagicU32) {
    fail("{}: unsupported shard version {} for magic {}", path, version, magic);
  } else {
    fail("{}: not a token shard: bad magic {} (expected {} or {})", path, magic, kShardMagicU16, kShardMagicU32);
  }
  num_tokens_ = header[2];
  if (num_tokens_ < 0) fail("{}: corrupt shard: negative token count {} in the header", path, num_tokens_);
  const int64_t expected = header_bytes + num_tokens_ * (wide_ ? 4 : 2);  // < 2^34: no overflow
  if (file_bytes_ < expected)
    fail("{}: truncated shard: header says {} tokens ({} bytes) but the file has {} bytes", path, num_tokens_,
         expected, file_bytes_);
  if (file_bytes_ > expected)
    fail("{}: corrupt shard: header says {} tokens ({} bytes) but the file has {} bytes (the token count does not "
         "match the body)", path, num_tokens_, expected, file_bytes_);
}

TokenShard::~TokenShard() {
  if (fd_ >= 0) ::close(fd_);
}

TokenShard::TokenShard(TokenShard&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_), file_bytes_(other.file_bytes_), modified_ns_(other.modified_ns_),
      num_tokens_(other.num_tokens_), wide_(other.wide_) {
  other.fd_ = -1;
}

void TokenShard::check_unchanged() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) throw ShardChangedError(fmt::format("{}: cannot read its size: {}", path_, std::strerror(errno)));
  if (static_cast<int64_t>(st.st_size) != file_bytes_ || modification_ns(st) != modified_ns_)
    throw ShardChangedError(fmt::format(
        "{}: the shard changed while it was being read ({} bytes when opened, {} now{}); shards must not change under "
        "a running command (write new shards under new names)", path_, file_bytes_, static_cast<int64_t>(st.st_size),
        static_cast<int64_t>(st.st_size) == file_bytes_ ? ", rewritten in place" : ""));
}

void TokenShard::read(int64_t first, int64_t count, uint32_t* out) const {
  L3C_CHECK(first >= 0 && count >= 0 && first + count <= num_tokens_, "{}: tokens [{}, {}) of {}", path_, first,
            first + count, num_tokens_);
  const int64_t width = wide_ ? 4 : 2;
  auto* bytes = reinterpret_cast<char*>(out);
  const int64_t total = count * width;
  int64_t done = 0;
  while (done < total) {
    const ssize_t n = ::pread(fd_, bytes + done, static_cast<size_t>(total - done),
                              static_cast<off_t>(kShardHeaderInts * 4 + first * width + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      check_unchanged();  // a shorter file says so
      throw ShardChangedError(
          fmt::format("{}: cannot read tokens {} to {}: {}", path_, first, first + count,
                      n < 0 ? std::strerror(errno) : "unexpected end of file"));
    }
    done += n;
  }
  check_unchanged();
  if (!wide_) {  // widen in place, from the end, so that no uint16 is overwritten before it is read
    const auto* narrow = reinterpret_cast<const uint16_t*>(out);
    for (int64_t i = count - 1; i >= 0; --i) {
      const uint16_t t = narrow[i];
      out[i] = t;
    }
  }
}

std::vector<uint32_t> TokenShard::read(int64_t first, int64_t count) const {
  std::vector<uint32_t> tokens(static_cast<size_t>(count));
  read(first, count, tokens.data());
  return tokens;
}

void TokenShard::for_each_chunk(int64_t chunk, const std::function<void(int64_t, std::span<const uint32_t>)>& visit) const {
  std::vector<uint32_t> buffer(static_cast<size_t>(std::min(chunk, num_tokens_)));
  for (int64_t first = 0; first < num_tokens_; first += chunk) {
    const int64_t count = std::min(chunk, num_tokens_ - first);
    read(first, count, buffer.data());
    visit(first, std::span<const uint32_t>(buffer.data(), static_cast<size_t>(count)));
  }
}

std::pair<uint32_t, int64_t> TokenShard::max_token() const {
  uint32_t best = 0;
  int64_t where = 0;
  for_each_chunk(int64_t{1} << 20, [&](int64_t first, std::span<const uint32_t> tokens) {
    for (size_t i = 0; i < tokens.size(); ++i)
      if (tokens[i] > best) {
        best = tokens[i];
        where = first + static_cast<int64_t>(i);
      }
  });
  return {best, where};
}

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens) {
  const bool wide = std::any_of(tokens.begin(), tokens.end(), [](uint32_t t) { return t > 0xFFFF; });
  if (tokens.size() > static_cast<size_t>(INT32_MAX)) fail("{}: {} tokens do not fit one shard", path, tokens.size());
  std::vector<int32_t> header(kShardHeaderInts, 0);
  header[0] = wide ? kShardMagicU32 : kShardMagicU16;
  header[1] = wide ? kShardVersionU32 : kShardVersionU16;
  header[2] = static_cast<int32_t>(tokens.size());
  const std::string temp = path + ".tmp";
  FILE* f = std::fopen(temp.c_str(), "wb");
  if (f == nullptr) fail("{}: cannot write shard: {}", path, std::strerror(errno));
  bool ok = std::fwrite(header.data(), sizeof(int32_t), header.size(), f) == header.size();
  if (wide) {
    ok = ok && std::fwrite(tokens.data(), 4, tokens.size(), f) == tokens.size();
  } else {
    std::vector<uint16_t> narrow(tokens.begin(), tokens.end());
    ok = ok && std::fwrite(narrow.data(), 2, narrow.size(), f) == narrow.size();
  }
  ok = (std::fflush(f) == 0) && ok;
  ok = (::fsync(::fileno(f)) == 0) && ok;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    std::remove(temp.c_str());
    fail("{}: writing the shard failed: {}", path, reason);
  }
}

ShardWriter::ShardWriter(std::string path, bool wide) : path_(std::move(path)), temp_(path_ + ".tmp"), wide_(wide) {
  file_ = std::fopen(temp_.c_str(), "wb");
  if (file_ == nullptr) fail("{}: cannot write shard: {}", path_, std::strerror(errno));
  const std::vector<int32_t> header(kShardHeaderInts, 0);  // completed by finish()
  write_or_fail(header.data(), header.size() * sizeof(int32_t));
}

ShardWriter::~ShardWriter() {
  if (file_ != nullptr) std::fclose(file_);
  if (!published_) std::remove(temp_.c_str());
}

void ShardWriter::write_or_fail(const void* data, size_t bytes) {
  if (bytes > 0 && std::fwrite(data, 1, bytes, file_) != bytes)
    fail("{}: writing the shard failed: {}", path_, std::strerror(errno));
}

void ShardWriter::append(std::span<const uint32_t> tokens) {
  L3C_CHECK(!finished_, "{}: append after finish", path_);
  if (num_tokens_ + static_cast<int64_t>(tokens.size()) > INT32_MAX)
    fail("{}: more than {} tokens do not fit one shard", path_, INT32_MAX);
  if (wide_) {
    write_or_fail(tokens.data(), tokens.size() * 4);
  } else {
    narrow_.resize(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) {
      L3C_CHECK(tokens[i] <= 0xFFFF, "{}: token id {} in a uint16 shard", path_, tokens[i]);
      narrow_[i] = static_cast<uint16_t>(tokens[i]);
    }
    write_or_fail(narrow_.data(), narrow_.size() * 2);
  }
  num_tokens_ += static_cast<int64_t>(tokens.size());
}

void ShardWriter::finish() {
  if (finished_) return;
  const int32_t header[3] = {wide_ ? kShardMagicU32 : kShardMagicU16, wide_ ? kShardVersionU32 : kShardVersionU16,
                             static_cast<int32_t>(num_tokens_)};
  bool ok = std::fseek(file_, 0, SEEK_SET) == 0 && std::fwrite(header, sizeof(int32_t), 3, file_) == 3;
  ok = (std::fflush(file_) == 0) && ok;
  ok = (::fsync(::fileno(file_)) == 0) && ok;
  ok = (std::fclose(file_) == 0) && ok;
  file_ = nullptr;
  if (!ok) fail("{}: writing the shard failed: {}", path_, std::strerror(errno));
  finished_ = true;
}

void ShardWriter::publish() {
  finish();
  if (std::rename(temp_.c_str(), path_.c_str()) != 0)
    fail("{}: cannot rename the finished shard into place: {}", path_, std::strerror(errno));
  published_ = true;
}

std::vector<std::string> expand_shard_paths(const std::string& spec, const std::string& what) {
  namespace fs = std::filesystem;
  std::vector<std::string> paths;
  std::error_code ec;
  if (fs::is_directory(spec, ec)) {
    for (const auto& entry : fs::directory_iterator(spec))
      if (entry.is_regular_file() && entry.path().extension() == ".bin") paths.push_back(entry.path().string());
    if (paths.empty()) fail("{}: folder {} holds no .bin shards", what, spec);
  } else if (fs::exists(spec, ec)) {
    paths.push_back(spec);
  } else {
    glob_t matches{};
    if (::glob(spec.c_str(), 0, nullptr, &matches) == 0)
      for (size_t i = 0; i < matches.gl_pathc; ++i) paths.emplace_back(matches.gl_pathv[i]);
    ::globfree(&matches);
    if (paths.empty()) fail("{}: no shard file, folder or glob match for '{}'", what, spec);
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace l3c
