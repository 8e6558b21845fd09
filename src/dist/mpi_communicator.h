// The MPI communicator: collectives on host buffers through MPI (Open MPI on Debian; CMake option L3C_MPI,
// on when MPI is found). Created once per process (MPI is initialised here and finalised by the destructor);
// every collective runs under a CollectiveWatchdog, so a peer that died or hangs ends this rank within
// dist.timeout with an error instead of a silent wait.
#pragma once
#include <memory>

#include "dist/communicator.h"

namespace l3c {

// Whether this build has MPI.
bool built_with_mpi();

// Initialises MPI (thread level "funneled": only the main thread calls MPI) and joins MPI_COMM_WORLD. The rank
// and size MPI reports must equal the launcher's (`expected_rank`, `expected_size`), else a UserError that says
// how to launch. A UserError without MPI in the build.
std::unique_ptr<Communicator> make_mpi_communicator(int expected_rank, int expected_size, int local_rank,
                                                    double timeout_seconds);

// The unique-id bytes of rank `root` to every rank over MPI_COMM_WORLD (MPI must be initialised: an
// MpiCommunicator exists); for the NCCL bootstrap.
void mpi_broadcast_bytes(std::vector<char>& bytes, int root);

}  // namespace l3c
