// The run folder's lock: one trainer per run folder. Two trainers on one folder would each prune and move aside the
// other's checkpoints and interleave their metrics, so `l3c train` holds an exclusive advisory lock (flock) on
// RUN/l3c.lock from before it reads or changes anything in the folder until it ends. The kernel releases the lock
// when the process ends, however it ends (SIGKILL included), so a stale lock file never blocks a later run; the file
// itself stays and holds the pid, host and start time of the last trainer that took it.
#pragma once
#include <string>

namespace l3c {

class RunLock {
 public:
  static constexpr const char* kFileName = "l3c.lock";

  // Creates `dir` when it does not exist, then takes the lock and writes this process's pid, host and start time
  // into the lock file. A UserError when another process holds it (naming its pid and how to proceed) or when the
  // folder or the file cannot be created (naming the system's reason).
  explicit RunLock(const std::string& dir);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace l3c
