// The run folder's lock (flock on RUN/l3c.lock).
#include "train/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include "core/errors.h"

namespace l3c {

namespace {
// What the lock file says about its holder ("pid 1234 on host, since ..."), trimmed; "" when it is empty.
std::string holder_of(int fd) {
  char text[256] = {};
  const ssize_t n = ::pread(fd, text, sizeof text - 1, 0);
  std::string holder(text, n > 0 ? static_cast<size_t>(n) : 0);
  holder.erase(holder.find_last_not_of(" \n") + 1);
  return holder;
}
}  // namespace

RunLock::RunLock(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("run.dir {}: cannot create the folder: {}", dir, ec.message());
  const std::string path = (fs::path(dir) / kFileName).string();
  // O_RDWR: NFS emulates flock with POSIX locks, which need a file open for writing.
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("run.dir {}: cannot create the lock file {}: {}", dir, path, std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    std::string holder = holder_of(fd_);
    // The holder writes its pid right after taking the lock: give it a moment when the file is still empty.
    for (int i = 0; i < 20 && holder.empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      holder = holder_of(fd_);
    }
    ::close(fd_);
    fd_ = -1;
    if (error != EWOULDBLOCK)
      fail("run.dir {}: cannot lock {}: {}", dir, path, std::strerror(error));
    fail("run.dir {} is in use by another l3c train ({}); two trainers on one folder would delete each other's "
         "checkpoints. Wait for it to end, stop it (SIGTERM writes a checkpoint), or choose another folder with --set "
         "run.dir=...", dir, holder.empty() ? "its pid is not written yet" : holder);
  }
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  const std::string holder =
      fmt::format("pid {} on {}, since {:%Y-%m-%d %H:%M:%S}\n", ::getpid(), host,
                  fmt::localtime(std::chrono::system_clock::to_time_t(std::chrono::system_clock::now())));
  // Best effort: the lock itself is what protects the folder, the text only names the holder.
  [[maybe_unused]] const int truncated = ::ftruncate(fd_, 0);
  [[maybe_unused]] const ssize_t written = ::pwrite(fd_, holder.data(), holder.size(), 0);
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

}  // namespace l3c
