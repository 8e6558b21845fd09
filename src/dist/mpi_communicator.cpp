// MpiCommunicator: the communicator contract over MPI_COMM_WORLD on host buffers (f32, f64, i32). Without MPI in
// the build (L3C_WITH_MPI unset) only the factory exists, and it refuses with what to do.
#include "dist/mpi_communicator.h"

#include <unistd.h>

#include <climits>
#include <cstdio>

#include "core/errors.h"
#include "kernels/ops.h"

#ifdef L3C_WITH_MPI
#include <mpi.h>
#endif

namespace l3c {

#ifdef L3C_WITH_MPI

bool built_with_mpi() { return true; }

namespace {

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT;
    case DType::BF16: break;
  }
  throw InternalError("MPI collectives take f32, f64 or i32 buffers, not bf16");
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::Max ? MPI_MAX : MPI_SUM; }

void check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw InternalError(fmt::format("{} failed: {}", what, std::string(text, static_cast<size_t>(length))));
}

// The watchdog's way out: one error line, then exit 2; the launcher (mpirun, srun) ends the other ranks.
void exit_with(const std::string& message) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  std::fflush(stderr);
  ::_exit(2);
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(int rank, int size, int local_rank, double timeout_seconds)
      : Communicator(rank, size, local_rank), watchdog_(rank, timeout_seconds, exit_with) {}
  ~MpiCommunicator() override {
    // Leaving through an exception (one rank's error) skips MPI_Finalize, which would wait for ranks that will
    // never come; the launcher sees the non-zero exit and ends the job.
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && std::uncaught_exceptions() == 0) MPI_Finalize();
  }
  CommBackend backend() const override { return CommBackend::Mpi; }
  Device buffer_device() const override { return Device::CPU; }

 private:
  // Counts are ints in MPI: long buffers go in chunks.
  static constexpr int64_t kChunk = int64_t{1} << 30;

  void do_all_reduce(Tensor buffer, ReduceOp op) override {
    CollectiveWatchdog::Guard guard(watchdog_, "all_reduce");
    const size_t element = dtype_size(buffer.dtype);
    for (int64_t begin = 0; begin < buffer.numel(); begin += kChunk) {
      const int count = static_cast<int>(std::min(kChunk, buffer.numel() - begin));
      check(MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(buffer.data) + begin * element, count,
                          mpi_type(buffer.dtype), mpi_op(op), MPI_COMM_WORLD), "MPI_Allreduce");
    }
    if (op == ReduceOp::Average) ops::scale_inplace(buffer, 1.0 / size());
  }
  void do_reduce_scatter(Tensor input, Tensor output, ReduceOp op) override {
    CollectiveWatchdog::Guard guard(watchdog_, "reduce_scatter");
    L3C_CHECK(output.numel() < INT_MAX, "reduce_scatter: {} elements per rank, more than MPI counts", output.numel());
    check(MPI_Reduce_scatter_block(input.data, output.data, static_cast<int>(output.numel()), mpi_type(input.dtype),
                                   mpi_op(op), MPI_COMM_WORLD), "MPI_Reduce_scatter_block");
    if (op == ReduceOp::Average) ops::scale_inplace(output, 1.0 / size());
  }
  void do_all_gather(Tensor input, Tensor output) override {
    CollectiveWatchdog::Guard guard(watchdog_, "all_gather");
    L3C_CHECK(input.numel() < INT_MAX, "all_gather: {} elements per rank, more than MPI counts", input.numel());
    // In place when the input is this rank's chunk of the output.
    const bool in_place = input.data == static_cast<char*>(output.data) + rank() * input.bytes();
    check(MPI_Allgather(in_place ? MPI_IN_PLACE : input.data, static_cast<int>(input.numel()), mpi_type(input.dtype), output.data,
                        static_cast<int>(input.numel()), mpi_type(input.dtype), MPI_COMM_WORLD), "MPI_Allgather");
  }
  void do_broadcast(Tensor buffer, int root) override {
    CollectiveWatchdog::Guard guard(watchdog_, "broadcast");
    const size_t element = dtype_size(buffer.dtype);
    for (int64_t begin = 0; begin < buffer.numel(); begin += kChunk) {
      const int count = static_cast<int>(std::min(kChunk, buffer.numel() - begin));
      check(MPI_Bcast(static_cast<char*>(buffer.data) + begin * element, count, mpi_type(buffer.dtype), root,
                      MPI_COMM_WORLD), "MPI_Bcast");
    }
  }
  void do_barrier() override {
    CollectiveWatchdog::Guard guard(watchdog_, "barrier");
    check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  }

  CollectiveWatchdog watchdog_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(int expected_rank, int expected_size, int local_rank,
                                                    double timeout_seconds) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  }
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (rank != expected_rank || size != expected_size)
    fail("MPI sees rank {} of {}, but the launcher's environment says rank {} of {}: start every rank with one "
         "launcher (mpirun -np N, or srun with --mpi=pmix so that MPI knows the job)",
         rank, size, expected_rank, expected_size);
  return std::make_unique<MpiCommunicator>(rank, size, local_rank, timeout_seconds);
}

void mpi_broadcast_bytes(std::vector<char>& bytes, int root) {
  check(MPI_Bcast(bytes.data(), static_cast<int>(bytes.size()), MPI_CHAR, root, MPI_COMM_WORLD), "MPI_Bcast");
}

#else

bool built_with_mpi() { return false; }

std::unique_ptr<Communicator> make_mpi_communicator(int, int expected_size, int, double) {
  fail("{} ranks on the CPU need MPI, and this l3c was built without it (install libopenmpi-dev and rebuild: CMake "
       "option L3C_MPI)", expected_size);
}

void mpi_broadcast_bytes(std::vector<char>&, int) { fail("this l3c was built without MPI"); }

#endif

}  // namespace l3c
