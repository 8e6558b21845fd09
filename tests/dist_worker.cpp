// A program run by `mpirun -np N` from tests/test_dist.cpp: checks every collective of the MPI communicator
// against the values each rank can compute alone, and prints "ok" (exit 0) or what differed (exit 1).
// `dist_worker hang TIMEOUT`: rank 1 never joins the first all-reduce, so the others' watchdog must end them.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "dist/bootstrap.h"
#include "dist/mpi_communicator.h"

using namespace l3c;

namespace {

int failures = 0;

void expect(bool ok, const std::string& what, int rank) {
  if (ok) return;
  std::fprintf(stderr, "rank %d: %s\n", rank, what.c_str());
  ++failures;
}

// Values rank r contributes at element i.
double value(int rank, int64_t i) { return rank * 100.0 + static_cast<double>(i) * 0.5; }

template <typename T>
void check_collectives(Communicator& comm, DType dtype) {
  const int R = comm.size(), r = comm.rank();
  const int64_t n = 7;  // per rank
  std::vector<T> a(static_cast<size_t>(n * R));
  for (int64_t i = 0; i < n * R; ++i) a[i] = static_cast<T>(value(r, i));
  // all-reduce: sum, average, max
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Average, ReduceOp::Max}) {
    if (op == ReduceOp::Average && dtype == DType::I32) continue;
    std::vector<T> b = a;
    comm.all_reduce(Tensor(b.data(), dtype, {n * R}), op);
    for (int64_t i = 0; i < n * R; ++i) {
      double expected = 0;
      for (int q = 0; q < R; ++q) expected += static_cast<T>(value(q, i));
      if (op == ReduceOp::Average) expected /= R;
      if (op == ReduceOp::Max) expected = static_cast<T>(value(R - 1, i));
      expect(std::abs(static_cast<double>(b[i]) - expected) < 1e-4, "all_reduce element " + std::to_string(i), r);
    }
  }
  // reduce-scatter: chunk r of the sum
  std::vector<T> chunk(static_cast<size_t>(n));
  comm.reduce_scatter(Tensor(a.data(), dtype, {n * R}), Tensor(chunk.data(), dtype, {n}));
  for (int64_t i = 0; i < n; ++i) {
    double expected = 0;
    for (int q = 0; q < R; ++q) expected += static_cast<T>(value(q, r * n + i));
    expect(std::abs(static_cast<double>(chunk[i]) - expected) < 1e-4, "reduce_scatter element " + std::to_string(i), r);
  }
  // all-gather, from a separate buffer and in place
  for (bool in_place : {false, true}) {
    std::vector<T> mine(static_cast<size_t>(n)), all(static_cast<size_t>(n * R), T(-1));
    for (int64_t i = 0; i < n; ++i) mine[i] = static_cast<T>(value(r, i));
    if (in_place) std::memcpy(all.data() + r * n, mine.data(), n * sizeof(T));
    comm.all_gather(Tensor(in_place ? all.data() + r * n : mine.data(), dtype, {n}), Tensor(all.data(), dtype, {n * R}));
    for (int q = 0; q < R; ++q)
      for (int64_t i = 0; i < n; ++i)
        expect(all[q * n + i] == static_cast<T>(value(q, i)), "all_gather chunk " + std::to_string(q), r);
  }
  // broadcast from the last rank
  std::vector<T> b = a;
  comm.broadcast(Tensor(b.data(), dtype, {n * R}), R - 1);
  for (int64_t i = 0; i < n * R; ++i) expect(b[i] == static_cast<T>(value(R - 1, i)), "broadcast", r);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const LaunchInfo launch = detect_launch();
    const bool hang = argc > 1 && std::string(argv[1]) == "hang";
    const double timeout = argc > 2 ? std::atof(argv[2]) : 60.0;
    auto comm = make_mpi_communicator(launch.rank, launch.size, launch.local_rank, timeout);
    if (hang) {
      if (comm->rank() == 1) std::this_thread::sleep_for(std::chrono::hours(1));
      std::vector<float> x(4, 1.0f);
      comm->all_reduce(Tensor(x.data(), DType::F32, {4}));
      return 0;  // not reached on ranks other than 1: the watchdog ends them
    }
    check_collectives<float>(*comm, DType::F32);
    check_collectives<double>(*comm, DType::F64);
    check_collectives<int32_t>(*comm, DType::I32);
    const std::string text = broadcast_string(*comm, comm->rank() == 0 ? "from rank 0: \xce\xbb" : "");
    expect(text == "from rank 0: \xce\xbb", "broadcast_string: " + text, comm->rank());
    const double sum = all_reduce_value(*comm, comm->rank() + 1.0);
    expect(sum == comm->size() * (comm->size() + 1) / 2.0, "all_reduce_value", comm->rank());
    comm->barrier();
    expect(comm->stats().calls > 0 && comm->stats().bytes > 0, "stats count the collectives", comm->rank());
    std::printf("rank %d of %d: %s\n", comm->rank(), comm->size(), failures == 0 ? "ok" : "FAILED");
    return failures == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
