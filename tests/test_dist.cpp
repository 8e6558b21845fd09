// src/dist: the launch read from each launcher's environment and its bad states, the local communicator, the
// TCP and file exchanges of the NCCL id (threads as ranks: bytes arrive, a port in use, timeouts), the MPI
// communicator's collectives on 3 processes (mpirun), and a hung rank ending the others within the timeout.
#include <catch2/catch.hpp>

#include "test_util.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <thread>

#include "dist/bootstrap.h"
#include "dist/mpi_communicator.h"
#include "dist/nccl_communicator.h"

using namespace l3c;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
// The message of the UserError that f throws, or "(no error)": the tcp tests call it on threads of their own, where a
// failing Catch assertion would end the process.
std::string user_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "(no error)";
}

Environment env_of(const std::map<std::string, std::string>& values) {
  return [values](const char* name) -> const char* {
    const auto it = values.find(name);
    return it == values.end() ? nullptr : it->second.c_str();
  };
}

// A TCP port free at the moment of the call.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t length = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &length);
  ::close(fd);
  return ntohs(a.sin_port);
}

LaunchInfo torchrun(int rank, int size, int port) {
  return detect_launch(env_of({{"RANK", std::to_string(rank)}, {"WORLD_SIZE", std::to_string(size)},
                               {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", std::to_string(port)}}));
}

const std::string kBuild = L3C_BINARY_DIR;

std::string mpirun(int ranks) {
#ifdef L3C_MPIEXEC
  return std::string(L3C_MPIEXEC) + " --allow-run-as-root --oversubscribe -np " + std::to_string(ranks) +
         " -x OMP_NUM_THREADS=1 ";
#else
  return "";
#endif
}

}  // namespace

TEST_CASE("launch: each launcher's environment gives rank, size and local rank", "[dist]") {
  const LaunchInfo none = detect_launch(env_of({}));
  CHECK((none.launcher == Launcher::None && none.rank == 0 && none.size == 1));
  const LaunchInfo ompi = detect_launch(env_of({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                                                {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}}));
  CHECK((ompi.launcher == Launcher::OpenMpi && ompi.rank == 3 && ompi.size == 4 && ompi.local_rank == 1));
  const LaunchInfo slurm = detect_launch(env_of({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"},
                                                 {"SLURM_STEP_NUM_TASKS", "8"}, {"SLURM_LOCALID", "2"},
                                                 {"SLURM_JOB_ID", "77"}}));
  CHECK((slurm.launcher == Launcher::Slurm && slurm.rank == 5 && slurm.size == 8 && slurm.local_rank == 2));
  CHECK(slurm.job_id == "slurm_77_0");
  const LaunchInfo torch = detect_launch(env_of({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"},
                                                 {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "29500"}}));
  CHECK((torch.launcher == Launcher::Torchrun && torch.rank == 1 && torch.size == 2 && torch.local_rank == 1));
  CHECK((torch.master_addr == "node0" && torch.master_port == 29500 && torch.job_id == "port_29500"));
  // Open MPI wins over the SLURM variables mpirun inherits inside an allocation.
  CHECK(detect_launch(env_of({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"SLURM_PROCID", "0"},
                              {"SLURM_NTASKS", "1"}})).launcher == Launcher::OpenMpi);
}

TEST_CASE("launch: states no launcher produces are refused with the variable named", "[dist]") {
  CHECK_THAT(user_error([] { detect_launch(env_of({{"RANK", "0"}})); }),
             Contains("RANK is set but WORLD_SIZE is not"));
  CHECK_THAT(user_error([] { detect_launch(env_of({{"WORLD_SIZE", "2"}})); }),
             Contains("WORLD_SIZE is set but RANK is not"));
  CHECK_THAT(user_error([] { detect_launch(env_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}})); }),
             Contains("rank 2 is out of range for a world of 2 ranks"));
  CHECK_THAT(user_error([] { detect_launch(env_of({{"RANK", "one"}, {"WORLD_SIZE", "2"}})); }),
             Contains("RANK=one: expected an integer"));
  CHECK_THAT(user_error([] { detect_launch(env_of({{"RANK", "0"}, {"WORLD_SIZE", "0"}})); }),
             Contains("WORLD_SIZE=0: must be in [1,"));
  CHECK_THAT(user_error([] { detect_launch(env_of({{"MASTER_PORT", "70000"}})); }),
             Contains("MASTER_PORT=70000: must be in [1, 65535]"));
}

TEST_CASE("local communicator: world size 1, collectives leave the values", "[dist]") {
  LocalCommunicator comm;
  std::vector<float> a = {1, 2, 3}, b(3);
  comm.all_reduce(Tensor(a.data(), DType::F32, {3}), ReduceOp::Average);
  comm.reduce_scatter(Tensor(a.data(), DType::F32, {3}), Tensor(b.data(), DType::F32, {3}));
  CHECK((a == std::vector<float>{1, 2, 3} && b == a));
  comm.all_gather(Tensor(a.data(), DType::F32, {3}), Tensor(a.data(), DType::F32, {3}));  // in place
  CHECK(a == std::vector<float>{1, 2, 3});
  CHECK(all_reduce_value(comm, 2.5) == 2.5);
  CHECK(broadcast_string(comm, "x") == "x");
  CHECK((comm.rank() == 0 && comm.size() == 1 && comm.stats().calls == 3));
  CHECK_THAT(user_error([] { make_communicator(torchrun(0, 2, 1234), DistConfig{}, Device::CPU, "."); }),
             Contains("CPU ranks talk through MPI"));
}

TEST_CASE("bootstrap tcp: rank 0's bytes reach every rank", "[dist]") {
  const int port = free_port(), ranks = 3;
  const std::vector<char> id = {'n', 'c', 'c', 'l', '\0', 'i', 'd'};
  std::vector<std::vector<char>> got(ranks);
  got[0] = id;
  std::vector<std::string> errors(ranks);
  std::vector<std::thread> threads;
  for (int r = ranks - 1; r >= 0; --r)  // the others start first: they retry until rank 0 listens
    threads.emplace_back([&, r] { errors[r] = user_error([&] { exchange_bytes_tcp(torchrun(r, ranks, port), got[r], 10); }); });
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < ranks; ++r) {
    INFO("rank " << r << ": " << errors[r]);
    CHECK(errors[r] == "(no error)");
    CHECK(got[r] == id);
  }
}

TEST_CASE("bootstrap tcp: a port in use, a missing rank and an absent rank 0 each end with a clear error", "[dist]") {
  // A port in use: another socket listens there.
  const int busy = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  REQUIRE(::bind(busy, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  ::listen(busy, 1);
  socklen_t length = sizeof a;
  ::getsockname(busy, reinterpret_cast<sockaddr*>(&a), &length);
  const int busy_port = ntohs(a.sin_port);
  std::vector<char> bytes = {'x'};
  CHECK_THAT(user_error([&] { exchange_bytes_tcp(torchrun(0, 2, busy_port), bytes, 1); }),
             Contains("the port is in use"));
  ::close(busy);
  // Rank 0 alone: rank 1 never connects.
  const int port = free_port();
  const auto start = std::chrono::steady_clock::now();
  CHECK_THAT(user_error([&] { exchange_bytes_tcp(torchrun(0, 2, port), bytes, 0.5); }),
             Contains("ranks 1 never connected"));
  // Rank 1 alone: nobody listens.
  CHECK_THAT(user_error([&] { exchange_bytes_tcp(torchrun(1, 2, port), bytes, 0.5); }),
             Contains("rank 1 could not get the NCCL id from rank 0 at 127.0.0.1:" + std::to_string(port)));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
}

TEST_CASE("bootstrap file: rank 0 writes the bytes atomically, the others wait for them within the timeout", "[dist]") {
  const fs::path dir = fs::temp_directory_path() / ("l3c_test_dist_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  auto launch = [](int rank) {
    return detect_launch(env_of({{"RANK", std::to_string(rank)}, {"WORLD_SIZE", "2"}, {"L3C_JOB_ID", "job7"}}));
  };
  std::vector<char> rank1;
  CHECK_THAT(user_error([&] { exchange_bytes_file(launch(1), dir.string(), rank1, 0.3); }),
             Contains("rank 1 waited 0 s for " + (dir / "l3c_bootstrap_job7.bin").string()));
  std::thread reader([&] { exchange_bytes_file(launch(1), dir.string(), rank1, 10); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::vector<char> rank0 = {'i', 'd', '\0', '!'};
  exchange_bytes_file(launch(0), dir.string(), rank0, 10);
  reader.join();
  CHECK(rank1 == rank0);
  fs::remove_all(dir);
}

TEST_CASE("mpi communicator: every collective on 3 processes", "[dist][mpi]") {
  if (!built_with_mpi()) {
    WARN("this build has no MPI: skipped");
    return;
  }
  const test::CommandResult r = test::run_command(mpirun(3) + kBuild + "/dist_worker 2>&1");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  for (int rank = 0; rank < 3; ++rank) CHECK_THAT(r.output, Contains("rank " + std::to_string(rank) + " of 3: ok"));
}

TEST_CASE("mpi communicator: a rank that hangs ends the others within dist.timeout, naming the rank that waited", "[dist][mpi]") {
  if (!built_with_mpi()) {
    WARN("this build has no MPI: skipped");
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  const test::CommandResult r = test::run_command(mpirun(2) + kBuild + "/dist_worker hang 1.5 2>&1");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(r.output);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("error: rank 0: all_reduce (collective #1) waited 2 s for the other ranks"));
  CHECK(seconds < 20);
}

TEST_CASE("nccl communicator: built with the CUDA backend when NCCL is found, refused with a reason otherwise", "[dist][nccl]") {
  if (!built_with_nccl()) {
    CHECK_THAT(user_error([] { make_nccl_communicator(torchrun(0, 2, 1234), 1.0, [](std::vector<char>&) {}); }),
               Contains("built without it"));
    return;
  }
  // The GPU check of the NCCL path is tests/test_nccl.cpp (label cuda: skipped without a GPU).
  SUCCEED("NCCL is built in");
}
