// Launch and bootstrap: who this process is in the job, read from the launcher's environment, and the
// communicator that follows from it.
//
// Launchers (the first that matches wins):
//   Open MPI (mpirun)   OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
//   SLURM (srun)        SLURM_PROCID, SLURM_STEP_NUM_TASKS (else SLURM_NTASKS), SLURM_LOCALID
//   torchrun-style      RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
//   none                one process: world size 1
// The communicator: world size 1 -> local; on the CPU -> MPI (the job must be launched so that MPI knows it);
// on the GPU -> NCCL, whose unique id travels from rank 0 by MPI broadcast under mpirun, else over TCP from
// rank 0 at MASTER_ADDR:MASTER_PORT when they are set, else by MPI under srun, else through a file in a shared
// folder (dist.shared_dir, default run.dir) named after the job (dist.nccl_bootstrap forces one). Every wait is
// bounded by dist.timeout.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "dist/communicator.h"

namespace l3c {

enum class Launcher : uint8_t { None, OpenMpi, Slurm, Torchrun };
const char* launcher_name(Launcher launcher);

struct LaunchInfo {
  Launcher launcher = Launcher::None;
  int rank = 0, size = 1, local_rank = 0;
  std::string master_addr;  // torchrun-style (optional elsewhere): where rank 0 listens for the TCP bootstrap
  int master_port = 0;
  std::string job_id;       // names the bootstrap file: L3C_JOB_ID, SLURM_JOB_ID, TORCHELASTIC_RUN_ID, or the port
};

// A getenv-like lookup (null when unset), so tests can pass their own environment.
using Environment = std::function<const char*(const char*)>;
const char* process_environment(const char* name);

// The launch this process belongs to. UserError for a state no launcher produces (RANK without WORLD_SIZE), a
// value that is not an integer, a rank outside [0, size), a port outside [1, 65535).
LaunchInfo detect_launch(const Environment& env = process_environment);

// Bytes of rank 0 (`bytes` on rank 0; replaced on the others) to every rank, for the NCCL unique id.
// TCP: rank 0 listens on `port` (all interfaces) and serves the other size - 1 ranks, which connect to
// addr:port, retrying until `timeout_seconds`. UserError naming the problem: the port in use, a rank that
// could not connect, ranks that never came.
void exchange_bytes_tcp(const LaunchInfo& launch, std::vector<char>& bytes, double timeout_seconds);
// File: rank 0 writes DIR/l3c_bootstrap_<job_id>.bin atomically; the others wait for it up to the timeout.
void exchange_bytes_file(const LaunchInfo& launch, const std::string& dir, std::vector<char>& bytes,
                         double timeout_seconds);

// The communicator for a run on `device` (Device::CUDA: NCCL buffers on the GPU of the local rank).
std::unique_ptr<Communicator> make_communicator(const LaunchInfo& launch, const DistConfig& dist, Device device,
                                                const std::string& run_dir);

}  // namespace l3c
