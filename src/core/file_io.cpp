// Reading whole files and durable file writes.
#include "core/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/errors.h"
#include "core/sha256.h"

namespace l3c {

void write_file_atomic(const std::string& path, std::string_view contents) {
  const std::string temp = path + ".tmp";
  FILE* f = std::fopen(temp.c_str(), "wb");
  if (f == nullptr) fail("{}: cannot write: {}", path, std::strerror(errno));
  bool ok = std::fwrite(contents.data(), 1, contents.size(), f) == contents.size();
  ok = (std::fflush(f) == 0) && ok;
  ok = (::fsync(::fileno(f)) == 0) && ok;
  int saved_errno = errno;
  ok = (std::fclose(f) == 0) && ok;
  if (ok && std::rename(temp.c_str(), path.c_str()) != 0) {
    ok = false;
    saved_errno = errno;
  }
  if (!ok) {
    std::remove(temp.c_str());
    fail("{}: writing failed: {}", path, std::strerror(saved_errno != 0 ? saved_errno : EIO));
  }
}

std::string read_file_bytes(const std::string& path) {
  // A device or a FIFO could be read forever (/dev/zero) or block: only regular files are read whole.
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec))
    fail("{}: not a regular file", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open for reading", path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("{}: read error", path);
  return text;
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) fail("{}: cannot open folder: {}", dir, std::strerror(errno));
  const int rc = ::fsync(fd);
  const int saved_errno = errno;
  ::close(fd);
  if (rc != 0) fail("{}: fsync failed: {}", dir, std::strerror(saved_errno));
}

WrittenFile write_file_durable(const std::string& path, const std::vector<std::string_view>& pieces) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot create: {}", path, std::strerror(errno));
  WrittenFile written;
  Sha256 hash;
  int error = 0;
  for (std::string_view piece : pieces) {
    // Hash and write in blocks, so the block just hashed is still in cache when it is written.
    constexpr size_t kBlock = size_t{1} << 20;
    for (size_t begin = 0; begin < piece.size() && error == 0; begin += kBlock) {
      const size_t size = std::min(kBlock, piece.size() - begin);
      hash.update(piece.data() + begin, size);
      size_t done = 0;
      while (done < size) {
        const ssize_t n = ::write(fd, piece.data() + begin + done, size - done);
        if (n < 0) {
          if (errno == EINTR) continue;
          error = errno;
          break;
        }
        done += static_cast<size_t>(n);
      }
      written.bytes += done;
    }
    if (error != 0) break;
  }
  if (error == 0 && ::fsync(fd) != 0) error = errno;
  if (::close(fd) != 0 && error == 0) error = errno;
  if (error != 0) {
    ::unlink(path.c_str());
    fail("{}: writing failed after {} bytes: {}", path, written.bytes, std::strerror(error));
  }
  written.sha256 = hash.hex_digest();
  return written;
}

}  // namespace l3c
