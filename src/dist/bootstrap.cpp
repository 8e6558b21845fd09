// Launch detection from the environment, the TCP and file exchanges of the NCCL unique id, and the choice of
// communicator.
#include "dist/bootstrap.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/errors.h"
#include "core/file_io.h"
#include "dist/mpi_communicator.h"
#include "dist/nccl_communicator.h"

namespace l3c {

const char* launcher_name(Launcher launcher) {
  switch (launcher) {
    case Launcher::None: return "none";
    case Launcher::OpenMpi: return "Open MPI";
    case Launcher::Slurm: return "SLURM";
    case Launcher::Torchrun: return "torchrun-style";
  }
  return "?";
}

const char* process_environment(const char* name) { return std::getenv(name); }

namespace {

using clock = std::chrono::steady_clock;

int env_int(const Environment& env, const char* name, int64_t low, int64_t high) {
  const char* text = env(name);
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || errno != 0)
    fail("environment: {}={}: expected an integer", name, text);
  if (value < low || value > high) fail("environment: {}={}: must be in [{}, {}]", name, text, low, high);
  return static_cast<int>(value);
}

double seconds_since(clock::time_point start) { return std::chrono::duration<double>(clock::now() - start).count(); }

// Sends or receives exactly `n` bytes before `deadline`; false on a closed connection, an error or the deadline.
bool transfer(int fd, char* data, size_t n, bool send_bytes, clock::time_point deadline) {
  size_t done = 0;
  while (done < n) {
    const int left_ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count());
    if (left_ms <= 0) return false;
    pollfd p{fd, static_cast<short>(send_bytes ? POLLOUT : POLLIN), 0};
    if (::poll(&p, 1, left_ms) <= 0) return false;
    const ssize_t k = send_bytes ? ::send(fd, data + done, n - done, MSG_NOSIGNAL) : ::recv(fd, data + done, n - done, 0);
    if (k <= 0) return false;
    done += static_cast<size_t>(k);
  }
  return true;
}

class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() { if (fd_ >= 0) ::close(fd_); }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

// A header that tells a bootstrap connection from a stray one.
constexpr uint32_t kMagic = 0x6c33634e;  // "l3cN"

void serve_tcp(const LaunchInfo& launch, const std::vector<char>& bytes, double timeout_seconds) {
  Socket server(::socket(AF_INET, SOCK_STREAM, 0));
  if (server.fd() < 0) fail("bootstrap: rank 0 cannot open a socket: {}", std::strerror(errno));
  const int yes = 1;
  ::setsockopt(server.fd(), SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  address.sin_port = htons(static_cast<uint16_t>(launch.master_port));
  if (::bind(server.fd(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0)
    fail("bootstrap: rank 0 cannot listen on MASTER_PORT {}: {}{}", launch.master_port, std::strerror(errno),
         errno == EADDRINUSE ? " (the port is in use: another job or an earlier run; choose another MASTER_PORT)" : "");
  if (::listen(server.fd(), launch.size) != 0) fail("bootstrap: listen on port {}: {}", launch.master_port, std::strerror(errno));

  const auto start = clock::now();
  const auto deadline = start + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(timeout_seconds));
  std::vector<bool> served(static_cast<size_t>(launch.size), false);
  served[0] = true;
  int remaining = launch.size - 1;
  while (remaining > 0) {
    const int left_ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count());
    pollfd p{server.fd(), POLLIN, 0};
    if (left_ms <= 0 || ::poll(&p, 1, left_ms) <= 0) {
      std::string missing;
      for (int r = 0; r < launch.size; ++r)
        if (!served[static_cast<size_t>(r)]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      fail("bootstrap: rank 0 waited {:.0f} s on port {} and ranks {} never connected (dist.timeout = {} s): were they "
           "started, with MASTER_ADDR pointing at this machine?", seconds_since(start), launch.master_port, missing,
           timeout_seconds);
    }
    Socket peer(::accept(server.fd(), nullptr, nullptr));
    if (peer.fd() < 0) continue;
    uint32_t hello[2] = {0, 0};  // magic, rank
    if (!transfer(peer.fd(), reinterpret_cast<char*>(hello), sizeof hello, false, deadline) || hello[0] != kMagic ||
        hello[1] == 0 || hello[1] >= static_cast<uint32_t>(launch.size) || served[hello[1]])
      continue;  // not one of ours, or a duplicate
    const uint64_t length = bytes.size();
    if (!transfer(peer.fd(), const_cast<char*>(reinterpret_cast<const char*>(&length)), sizeof length, true, deadline) ||
        !transfer(peer.fd(), const_cast<char*>(bytes.data()), bytes.size(), true, deadline))
      continue;
    served[hello[1]] = true;
    --remaining;
  }
}

void fetch_tcp(const LaunchInfo& launch, std::vector<char>& bytes, double timeout_seconds) {
  if (launch.master_addr.empty()) fail("bootstrap: the TCP bootstrap needs MASTER_ADDR (rank 0's host)");
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(launch.master_port);
  if (const int code = ::getaddrinfo(launch.master_addr.c_str(), port.c_str(), &hints, &found); code != 0)
    fail("bootstrap: MASTER_ADDR {}: {}", launch.master_addr, ::gai_strerror(code));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> address(found, ::freeaddrinfo);

  const auto start = clock::now();
  const auto deadline = start + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(timeout_seconds));
  std::string last_error = "no attempt";
  int attempts = 0;
  while (clock::now() < deadline) {
    ++attempts;
    Socket s(::socket(AF_INET, SOCK_STREAM, 0));
    if (::connect(s.fd(), address->ai_addr, address->ai_addrlen) == 0) {
      const uint32_t hello[2] = {kMagic, static_cast<uint32_t>(launch.rank)};
      uint64_t length = 0;
      if (transfer(s.fd(), const_cast<char*>(reinterpret_cast<const char*>(hello)), sizeof hello, true, deadline) &&
          transfer(s.fd(), reinterpret_cast<char*>(&length), sizeof length, false, deadline) && length < (1u << 20)) {
        bytes.assign(length, 0);
        if (transfer(s.fd(), bytes.data(), length, false, deadline)) return;
      }
      last_error = "the connection closed early";
    } else {
      last_error = std::strerror(errno);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // rank 0 may not listen yet: retry
  }
  fail("bootstrap: rank {} could not get the NCCL id from rank 0 at {}:{} within {:.0f} s ({} attempts, last: {}); is "
       "rank 0 running, and MASTER_ADDR/MASTER_PORT right? (dist.timeout = {} s)", launch.rank, launch.master_addr,
       launch.master_port, seconds_since(start), attempts, last_error, timeout_seconds);
}

}  // namespace

LaunchInfo detect_launch(const Environment& env) {
  LaunchInfo info;
  auto has = [&](const char* name) { return env(name) != nullptr && *env(name) != '\0'; };
  const int64_t kMaxRanks = 1 << 20;
  if (has("OMPI_COMM_WORLD_SIZE") || has("OMPI_COMM_WORLD_RANK")) {
    if (!has("OMPI_COMM_WORLD_SIZE") || !has("OMPI_COMM_WORLD_RANK"))
      fail("environment: OMPI_COMM_WORLD_RANK and OMPI_COMM_WORLD_SIZE must both be set (start the ranks with mpirun)");
    info.launcher = Launcher::OpenMpi;
    info.size = env_int(env, "OMPI_COMM_WORLD_SIZE", 1, kMaxRanks);
    info.rank = env_int(env, "OMPI_COMM_WORLD_RANK", 0, kMaxRanks);
    info.local_rank = has("OMPI_COMM_WORLD_LOCAL_RANK") ? env_int(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0, kMaxRanks) : 0;
  } else if (has("SLURM_PROCID") && (has("SLURM_STEP_NUM_TASKS") || has("SLURM_NTASKS"))) {
    info.launcher = Launcher::Slurm;
    const char* size_name = has("SLURM_STEP_NUM_TASKS") ? "SLURM_STEP_NUM_TASKS" : "SLURM_NTASKS";
    info.size = env_int(env, size_name, 1, kMaxRanks);
    info.rank = env_int(env, "SLURM_PROCID", 0, kMaxRanks);
    info.local_rank = has("SLURM_LOCALID") ? env_int(env, "SLURM_LOCALID", 0, kMaxRanks) : 0;
    if (has("SLURM_JOB_ID")) info.job_id = fmt::format("slurm_{}_{}", env("SLURM_JOB_ID"), has("SLURM_STEP_ID") ? env("SLURM_STEP_ID") : "0");
  } else if (has("RANK") || has("WORLD_SIZE")) {
    if (!has("RANK") || !has("WORLD_SIZE"))
      fail("environment: {} is set but {} is not: a torchrun-style launch sets RANK, WORLD_SIZE, LOCAL_RANK, "
           "MASTER_ADDR and MASTER_PORT (unset both for a single process)", has("RANK") ? "RANK" : "WORLD_SIZE",
           has("RANK") ? "WORLD_SIZE" : "RANK");
    info.launcher = Launcher::Torchrun;
    info.size = env_int(env, "WORLD_SIZE", 1, kMaxRanks);
    info.rank = env_int(env, "RANK", 0, kMaxRanks);
    info.local_rank = has("LOCAL_RANK") ? env_int(env, "LOCAL_RANK", 0, kMaxRanks) : 0;
    if (has("TORCHELASTIC_RUN_ID")) info.job_id = std::string("torchrun_") + env("TORCHELASTIC_RUN_ID");
  }
  if (info.rank >= info.size)
    fail("environment: rank {} is out of range for a world of {} ranks ({} launch)", info.rank, info.size,
         launcher_name(info.launcher));
  if (has("MASTER_ADDR")) info.master_addr = env("MASTER_ADDR");
  if (has("MASTER_PORT")) info.master_port = env_int(env, "MASTER_PORT", 1, 65535);
  if (has("L3C_JOB_ID")) info.job_id = env("L3C_JOB_ID");
  if (info.job_id.empty() && info.master_port > 0) info.job_id = fmt::format("port_{}", info.master_port);
  return info;
}

void exchange_bytes_tcp(const LaunchInfo& launch, std::vector<char>& bytes, double timeout_seconds) {
  if (launch.size == 1) return;
  if (launch.master_port <= 0)
    fail("bootstrap: the TCP bootstrap needs MASTER_PORT (and MASTER_ADDR: rank 0's host) in the environment");
  if (launch.rank == 0) serve_tcp(launch, bytes, timeout_seconds);
  else fetch_tcp(launch, bytes, timeout_seconds);
}

void exchange_bytes_file(const LaunchInfo& launch, const std::string& dir, std::vector<char>& bytes,
                         double timeout_seconds) {
  namespace fs = std::filesystem;
  if (launch.size == 1) return;
  if (launch.job_id.empty())
    fail("bootstrap: the file bootstrap names its file after the job: set L3C_JOB_ID (the same on every rank)");
  const fs::path path = fs::path(dir) / ("l3c_bootstrap_" + launch.job_id + ".bin");
  if (launch.rank == 0) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    write_file_atomic(path.string(), std::string_view(bytes.data(), bytes.size()));
    return;
  }
  const auto start = clock::now();
  while (!fs::exists(path)) {
    if (seconds_since(start) > timeout_seconds)
      fail("bootstrap: rank {} waited {:.0f} s for {} from rank 0 (dist.timeout = {} s): is rank 0 running, and is "
           "dist.shared_dir a folder every rank sees?", launch.rank, seconds_since(start), path.string(),
           timeout_seconds);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const std::string text = read_file_bytes(path.string());
  bytes.assign(text.begin(), text.end());
}

std::unique_ptr<Communicator> make_communicator(const LaunchInfo& launch, const DistConfig& dist, Device device,
                                                const std::string& run_dir) {
  if (launch.size == 1) return std::make_unique<LocalCommunicator>();
  const bool mpi_launch = launch.launcher == Launcher::OpenMpi || launch.launcher == Launcher::Slurm;
  if (device == Device::CPU) {
    if (!mpi_launch)
      fail("{} ranks from a {} launch on the CPU: CPU ranks talk through MPI; start them with mpirun -np {} or srun "
           "(the torchrun-style variables bootstrap NCCL, for train.device cuda)", launch.size,
           launcher_name(launch.launcher), launch.size);
    return make_mpi_communicator(launch.rank, launch.size, launch.local_rank, dist.timeout);
  }
  // The GPU: NCCL, with the unique id from rank 0 through MPI, TCP or a file.
  NcclBootstrap via = dist.nccl_bootstrap;
  // auto: MPI under mpirun; TCP when rank 0's address is given (srun may start tasks without MPI); MPI under srun
  // otherwise; else the file in a shared folder.
  if (via == NcclBootstrap::Auto) {
    if (launch.launcher == Launcher::OpenMpi && built_with_mpi()) via = NcclBootstrap::Mpi;
    else if (launch.master_port > 0) via = NcclBootstrap::Tcp;
    else if (launch.launcher == Launcher::Slurm && built_with_mpi()) via = NcclBootstrap::Mpi;
    else via = NcclBootstrap::File;
  }
  std::unique_ptr<Communicator> mpi;  // kept up while NCCL runs: MPI_Finalize at the end
  std::function<void(std::vector<char>&)> share;
  if (via == NcclBootstrap::Mpi) {
    mpi = make_mpi_communicator(launch.rank, launch.size, launch.local_rank, dist.timeout);
    share = [](std::vector<char>& bytes) {
      std::vector<char> length(sizeof(uint64_t));
      uint64_t n = bytes.size();
      std::memcpy(length.data(), &n, sizeof n);
      mpi_broadcast_bytes(length, 0);
      std::memcpy(&n, length.data(), sizeof n);
      bytes.resize(n);
      mpi_broadcast_bytes(bytes, 0);
    };
  } else if (via == NcclBootstrap::Tcp) {
    share = [&](std::vector<char>& bytes) { exchange_bytes_tcp(launch, bytes, dist.timeout); };
  } else {
    const std::string dir = dist.shared_dir.empty() ? run_dir : dist.shared_dir;
    share = [&, dir](std::vector<char>& bytes) { exchange_bytes_file(launch, dir, bytes, dist.timeout); };
  }
  spdlog::info("dist: rank {} of {} (local rank {}), {} launch, NCCL id by {}", launch.rank, launch.size,
               launch.local_rank, launcher_name(launch.launcher), choice_name(via));
  return make_nccl_communicator(launch, dist.timeout, share, std::move(mpi));
}

}  // namespace l3c
