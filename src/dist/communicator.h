// The communicator contract of data parallelism: the ranks of a job, and collectives over flat buffers.
//
// Three implementations sit behind it: LocalCommunicator (world size 1, no dependency; every collective is the
// identity), MpiCommunicator (host buffers, Open MPI; src/dist/mpi_communicator.h) and NcclCommunicator (GPU
// buffers; src/dist/nccl_communicator.h). make_communicator (src/dist/bootstrap.h) picks one from the launcher's
// environment. The model and the ops know nothing of ranks: the trainer owns the communicator.
//
// Every collective is called by all ranks in the same order with buffers of the same size and dtype. A
// collective that waits longer than the watchdog's timeout for the other ranks ends the process with an error
// (CollectiveWatchdog): a peer that died or hangs never leaves the others waiting silently.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/choice.h"
#include "core/tensor.h"

namespace l3c {

enum class ReduceOp : uint8_t { Sum, Average, Max };

enum class CommBackend : uint8_t { Local, Mpi, Nccl };
template <> struct ChoiceNames<CommBackend> {
  static constexpr std::array<std::string_view, 3> names = {"local", "mpi", "nccl"};
};

// What the collectives of a communicator moved: payload bytes (the buffer each rank passed in, as an all-reduce
// of n bytes is counted n whatever its algorithm), calls, and the time spent in them.
struct CommStats {
  uint64_t bytes = 0;
  uint64_t calls = 0;
  double seconds = 0.0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual CommBackend backend() const = 0;
  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  bool is_root() const { return rank_ == 0; }
  // Where the buffers of the collectives live: the host (Local, MPI) or the GPU (NCCL).
  virtual Device buffer_device() const = 0;

  // In place: every rank ends with the elementwise sum (or mean, or max) over ranks of `buffer`.
  void all_reduce(Tensor buffer, ReduceOp op = ReduceOp::Sum);
  // input (size * n): rank r receives in output (n) the reduction over ranks of input's r-th chunk.
  void reduce_scatter(Tensor input, Tensor output, ReduceOp op = ReduceOp::Sum);
  // input (n) of every rank -> output (size * n), rank r's input at chunk r. The input may be this rank's chunk
  // of the output (in place).
  void all_gather(Tensor input, Tensor output);
  // root's buffer to every rank, in place.
  void broadcast(Tensor buffer, int root = 0);
  void barrier();

  const CommStats& stats() const { return stats_; }

 protected:
  Communicator(int rank, int size, int local_rank) : rank_(rank), size_(size), local_rank_(local_rank) {}
  virtual void do_all_reduce(Tensor buffer, ReduceOp op) = 0;
  virtual void do_reduce_scatter(Tensor input, Tensor output, ReduceOp op) = 0;
  virtual void do_all_gather(Tensor input, Tensor output) = 0;
  virtual void do_broadcast(Tensor buffer, int root) = 0;
  virtual void do_barrier() = 0;

 private:
  template <typename F> void timed(size_t bytes, F&& f);
  int rank_, size_, local_rank_;
  CommStats stats_;
};

// World size 1: every collective leaves its buffer as it is (reduce-scatter and all-gather copy).
class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator() : Communicator(0, 1, 0) {}
  CommBackend backend() const override { return CommBackend::Local; }
  Device buffer_device() const override { return Device::CPU; }

 private:
  void do_all_reduce(Tensor, ReduceOp) override {}
  void do_reduce_scatter(Tensor input, Tensor output, ReduceOp op) override;
  void do_all_gather(Tensor input, Tensor output) override;
  void do_broadcast(Tensor, int) override {}
  void do_barrier() override {}
};

// ---- helpers over the contract ------------------------------------------------------------------------
// All-reduce of a host buffer, through a staging copy on the communicator's device when that is the GPU.
void all_reduce_host(Communicator& comm, Tensor host, ReduceOp op = ReduceOp::Sum);
// Reductions of a few host numbers (losses, norms, flags), through a buffer on the communicator's device.
std::vector<double> all_reduce_values(Communicator& comm, std::vector<double> values, ReduceOp op = ReduceOp::Sum);
double all_reduce_value(Communicator& comm, double value, ReduceOp op = ReduceOp::Sum);
// root's string on every rank.
std::string broadcast_string(Communicator& comm, const std::string& text, int root = 0);

// Ends the process when a collective waits longer than `timeout` for the other ranks: a background thread
// watches the collective in flight and, past the timeout, logs one error naming this rank, the collective and
// how long it waited, then calls `abort` (MPI_Abort, which ends every rank of the job, or _exit).
class CollectiveWatchdog {
 public:
  CollectiveWatchdog(int rank, double timeout_seconds, std::function<void(const std::string&)> abort);
  ~CollectiveWatchdog();
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;

  // Marks a collective as in flight until the returned guard is destroyed.
  class Guard {
   public:
    Guard(CollectiveWatchdog& w, const char* what);
    ~Guard();

   private:
    CollectiveWatchdog& watchdog_;
  };

 private:
  void watch();
  const int rank_;
  const double timeout_seconds_;
  std::function<void(const std::string&)> abort_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  const char* in_flight_ = nullptr;  // the collective in flight, or null
  uint64_t sequence_ = 0;            // collectives started so far
  std::chrono::steady_clock::time_point started_;
  std::thread thread_;
};

}  // namespace l3c
