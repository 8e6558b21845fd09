// The NCCL communicator: collectives on GPU buffers through NCCL, on a communication stream of its own. Built
// with the CUDA backend when NCCL is found (L3C_WITH_NCCL); without it the factory refuses with what to do. The
// rank takes the GPU of its local rank (modulo the GPUs visible), and the unique id comes from rank 0 through
// the bootstrap of src/dist/bootstrap.h.
#pragma once
#include <memory>

#include "core/config.h"
#include "dist/bootstrap.h"

namespace l3c {

bool built_with_nccl();

// `unique_id`: a function that, given rank 0's id bytes (empty on the other ranks), returns rank 0's bytes on
// every rank (the bootstrap's exchange). `companion`: the MPI communicator that carried the id, if any; the
// NCCL communicator keeps it (MPI is finalised after NCCL is torn down).
std::unique_ptr<Communicator> make_nccl_communicator(const LaunchInfo& launch, double timeout_seconds,
                                                     const std::function<void(std::vector<char>&)>& share_unique_id,
                                                     std::unique_ptr<Communicator> companion = nullptr);

}  // namespace l3c
