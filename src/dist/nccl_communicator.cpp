// NcclCommunicator: the communicator contract over NCCL on GPU buffers (f32, f64, bf16, i32). Collectives are
// enqueued on a communication stream after the compute stream's work (an event orders them) and the host waits
// for them under the watchdog, polling, so a peer that died or hangs ends this rank within dist.timeout (the
// communicator is aborted first). Without NCCL in the build (L3C_WITH_NCCL unset) only the factory exists, and
// it refuses with what to do.
#include "dist/nccl_communicator.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/errors.h"

#ifdef L3C_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace l3c {

#ifdef L3C_WITH_NCCL

bool built_with_nccl() { return true; }

namespace {

void check_cuda(cudaError_t code, const char* what) {
  if (code != cudaSuccess) throw InternalError(fmt::format("{} failed: {}", what, cudaGetErrorString(code)));
}
void check_nccl(ncclResult_t code, const char* what) {
  if (code != ncclSuccess) throw InternalError(fmt::format("{} failed: {}", what, ncclGetErrorString(code)));
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    case DType::I32: return ncclInt32;
  }
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Average: return ncclAvg;
    case ReduceOp::Max: return ncclMax;
  }
  return ncclSum;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const LaunchInfo& launch, double timeout_seconds, const ncclUniqueId& id,
                   std::unique_ptr<Communicator> companion)
      : Communicator(launch.rank, launch.size, launch.local_rank),
        timeout_seconds_(timeout_seconds),
        companion_(std::move(companion)) {
    int devices = 0;
    check_cuda(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
    if (devices == 0) fail("dist: rank {} sees no GPU", launch.rank);
    check_cuda(cudaSetDevice(launch.local_rank % devices), "cudaSetDevice");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check_cuda(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate");
    check_nccl(ncclCommInitRank(&comm_, launch.size, id, launch.rank), "ncclCommInitRank");
  }
  ~NcclCommunicator() override {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
    cudaEventDestroy(ready_);
    cudaStreamDestroy(stream_);
  }
  CommBackend backend() const override { return CommBackend::Nccl; }
  Device buffer_device() const override { return Device::CUDA; }

 private:
  // The communication stream waits for the work queued so far on the compute stream (the legacy default stream).
  void after_compute() {
    check_cuda(cudaEventRecord(ready_, 0), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent");
  }
  // Waits for the communication stream, polling, within the timeout; past it the communicator is aborted and
  // the process ends with an error naming this rank (the launcher ends the others).
  void finish(const char* what) {
    const auto start = std::chrono::steady_clock::now();
    while (true) {
      const cudaError_t state = cudaStreamQuery(stream_);
      if (state == cudaSuccess) return;
      if (state != cudaErrorNotReady) check_cuda(state, what);
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      check_nccl(async, what);
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (waited > timeout_seconds_) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        std::fprintf(stderr, "error: rank %d: NCCL %s waited %.0f s for the other ranks: a peer died or hangs; ending "
                     "the job (dist.timeout = %g s)\n", rank(), what, waited, timeout_seconds_);
        std::fflush(stderr);
        ::_exit(2);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  void do_all_reduce(Tensor buffer, ReduceOp op) override {
    after_compute();
    check_nccl(ncclAllReduce(buffer.data, buffer.data, static_cast<size_t>(buffer.numel()), nccl_type(buffer.dtype),
                             nccl_op(op), comm_, stream_), "ncclAllReduce");
    finish("all_reduce");
  }
  void do_reduce_scatter(Tensor input, Tensor output, ReduceOp op) override {
    after_compute();
    check_nccl(ncclReduceScatter(input.data, output.data, static_cast<size_t>(output.numel()), nccl_type(input.dtype),
                                 nccl_op(op), comm_, stream_), "ncclReduceScatter");
    finish("reduce_scatter");
  }
  void do_all_gather(Tensor input, Tensor output) override {
    after_compute();
    check_nccl(ncclAllGather(input.data, output.data, static_cast<size_t>(input.numel()), nccl_type(input.dtype),
                             comm_, stream_), "ncclAllGather");
    finish("all_gather");
  }
  void do_broadcast(Tensor buffer, int root) override {
    after_compute();
    check_nccl(ncclBroadcast(buffer.data, buffer.data, static_cast<size_t>(buffer.numel()), nccl_type(buffer.dtype),
                             root, comm_, stream_), "ncclBroadcast");
    finish("broadcast");
  }
  void do_barrier() override {
    // NCCL has no barrier: an all-reduce of one value is one.
    if (barrier_value_ == nullptr) check_cuda(cudaMalloc(&barrier_value_, sizeof(float)), "cudaMalloc");
    after_compute();
    check_nccl(ncclAllReduce(barrier_value_, barrier_value_, 1, ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce");
    finish("barrier");
  }

  double timeout_seconds_;
  std::unique_ptr<Communicator> companion_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  void* barrier_value_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const LaunchInfo& launch, double timeout_seconds,
                                                     const std::function<void(std::vector<char>&)>& share_unique_id,
                                                     std::unique_ptr<Communicator> companion) {
  ncclUniqueId id{};
  std::vector<char> bytes;
  if (launch.rank == 0) {
    check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    bytes.assign(id.internal, id.internal + sizeof id.internal);
  }
  share_unique_id(bytes);
  if (bytes.size() != sizeof id.internal)
    fail("bootstrap: rank {} received {} bytes of NCCL id, expected {}", launch.rank, bytes.size(), sizeof id.internal);
  std::copy(bytes.begin(), bytes.end(), id.internal);
  return std::make_unique<NcclCommunicator>(launch, timeout_seconds, id, std::move(companion));
}

#else

bool built_with_nccl() { return false; }

std::unique_ptr<Communicator> make_nccl_communicator(const LaunchInfo& launch, double,
                                                     const std::function<void(std::vector<char>&)>&,
                                                     std::unique_ptr<Communicator>) {
  fail("{} GPU ranks need NCCL, and this l3c was built without it (install NCCL with the CUDA toolkit and rebuild); "
       "or train on the CPU with --device cpu under mpirun", launch.size);
}

#endif

}  // namespace l3c
