// The communicator contract's shared parts: argument checks and statistics around every collective, the local
// (world size 1) communicator, helpers for host values, and the watchdog that ends a collective that hangs.
#include "dist/communicator.h"

#include <unistd.h>

#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/errors.h"
#include "kernels/ops.h"
#include "model/params.h"

namespace l3c {

template <typename F>
void Communicator::timed(size_t bytes, F&& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats_.bytes += bytes;
  ++stats_.calls;
}

void Communicator::all_reduce(Tensor buffer, ReduceOp op) {
  L3C_CHECK(buffer.device == buffer_device(), "all_reduce: a {} buffer for the {} communicator",
            buffer.device == Device::CPU ? "host" : "GPU", choice_name(backend()));
  if (buffer.numel() == 0) return;
  timed(buffer.bytes(), [&] { do_all_reduce(buffer, op); });
}

void Communicator::reduce_scatter(Tensor input, Tensor output, ReduceOp op) {
  L3C_CHECK(input.numel() == output.numel() * size_ && input.dtype == output.dtype,
            "reduce_scatter: input {} for {} ranks and output {}", input.shape_string(), size_, output.shape_string());
  L3C_CHECK(input.device == buffer_device() && output.device == buffer_device(), "reduce_scatter: buffers on the wrong device");
  if (output.numel() == 0) return;
  timed(input.bytes(), [&] { do_reduce_scatter(input, output, op); });
}

void Communicator::all_gather(Tensor input, Tensor output) {
  L3C_CHECK(output.numel() == input.numel() * size_ && input.dtype == output.dtype,
            "all_gather: input {} for {} ranks and output {}", input.shape_string(), size_, output.shape_string());
  L3C_CHECK(input.device == buffer_device() && output.device == buffer_device(), "all_gather: buffers on the wrong device");
  if (input.numel() == 0) return;
  timed(output.bytes(), [&] { do_all_gather(input, output); });
}

void Communicator::broadcast(Tensor buffer, int root) {
  L3C_CHECK(root >= 0 && root < size_, "broadcast: root {} of {} ranks", root, size_);
  L3C_CHECK(buffer.device == buffer_device(), "broadcast: a buffer on the wrong device");
  if (buffer.numel() == 0) return;
  timed(buffer.bytes(), [&] { do_broadcast(buffer, root); });
}

void Communicator::barrier() {
  timed(0, [&] { do_barrier(); });
}

void LocalCommunicator::do_reduce_scatter(Tensor input, Tensor output, ReduceOp) { ops::copy(output, input); }
void LocalCommunicator::do_all_gather(Tensor input, Tensor output) {
  if (input.data != output.data) ops::copy(output, input);
}

void all_reduce_host(Communicator& comm, Tensor host, ReduceOp op) {
  if (comm.size() == 1 || host.numel() == 0) return;
  if (comm.buffer_device() == Device::CPU) {
    comm.all_reduce(host, op);
    return;
  }
  FlatBuffer device(host.numel(), host.dtype, comm.buffer_device());
  ops::copy(device.all(), host);
  comm.all_reduce(device.all(), op);
  ops::copy(host, device.all());
}

std::vector<double> all_reduce_values(Communicator& comm, std::vector<double> values, ReduceOp op) {
  all_reduce_host(comm, Tensor(values.data(), DType::F64, {static_cast<int64_t>(values.size())}), op);
  return values;
}

double all_reduce_value(Communicator& comm, double value, ReduceOp op) {
  return all_reduce_values(comm, {value}, op)[0];
}

std::string broadcast_string(Communicator& comm, const std::string& text, int root) {
  if (comm.size() == 1) return text;
  // The length first, then the bytes packed into i32 words (the contract's buffers are typed).
  const double length = all_reduce_value(comm, comm.rank() == root ? static_cast<double>(text.size()) : 0.0);
  const int64_t words = (static_cast<int64_t>(length) + 3) / 4;
  std::vector<int32_t> packed(static_cast<size_t>(std::max<int64_t>(words, 1)), 0);
  if (comm.rank() == root) std::memcpy(packed.data(), text.data(), text.size());
  Tensor host(packed.data(), DType::I32, {words});
  if (comm.buffer_device() == Device::CPU) {
    comm.broadcast(host, root);
  } else {
    FlatBuffer device(words, DType::I32, comm.buffer_device());
    ops::copy(device.all(), host);
    comm.broadcast(device.all(), root);
    ops::copy(host, device.all());
  }
  return std::string(reinterpret_cast<const char*>(packed.data()), static_cast<size_t>(length));
}

// ---- watchdog -------------------------------------------------------------------------------------------

CollectiveWatchdog::CollectiveWatchdog(int rank, double timeout_seconds, std::function<void(const std::string&)> abort)
    : rank_(rank), timeout_seconds_(timeout_seconds), abort_(std::move(abort)), thread_([this] { watch(); }) {}

CollectiveWatchdog::~CollectiveWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

CollectiveWatchdog::Guard::Guard(CollectiveWatchdog& w, const char* what) : watchdog_(w) {
  std::lock_guard<std::mutex> lock(w.mutex_);
  w.in_flight_ = what;
  w.started_ = std::chrono::steady_clock::now();
  ++w.sequence_;
}

CollectiveWatchdog::Guard::~Guard() {
  std::lock_guard<std::mutex> lock(watchdog_.mutex_);
  watchdog_.in_flight_ = nullptr;
}

void CollectiveWatchdog::watch() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, std::chrono::milliseconds(100));
    if (stop_ || in_flight_ == nullptr) continue;
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    if (waited < timeout_seconds_) continue;
    const std::string message = fmt::format(
        "rank {}: {} (collective #{}) waited {:.0f} s for the other ranks: a peer died or hangs; ending the job "
        "(dist.timeout = {} s; the launcher's log names a rank that exited)",
        rank_, in_flight_, sequence_, waited, timeout_seconds_);
    abort_(message);
    return;
  }
}

}  // namespace l3c
