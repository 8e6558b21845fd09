// The NCCL communicator on a GPU (label cuda: skipped without one, or without NCCL in the build): at world size
// 1 every collective on device buffers gives what the local communicator gives, and training steps through it
// match the local path.
#include <catch2/catch.hpp>

#include "cuda_test_util.h"

#include "core/config.h"
#include "dist/nccl_communicator.h"
#include "train/trainer.h"

using namespace l3c;
using namespace l3c::test;

namespace {

void require_nccl() {
  require_gpu();
  if (!built_with_nccl()) {
    std::printf("skipped: this build has no NCCL\n");
    std::exit(4);
  }
}

std::unique_ptr<Communicator> nccl_world_of_one() {
  LaunchInfo launch;  // rank 0 of 1
  return make_nccl_communicator(launch, 30.0, [](std::vector<char>&) {});
}

}  // namespace

TEST_CASE("nccl: collectives at world size 1 on device buffers equal the local communicator's", "[cuda][nccl]") {
  require_nccl();
  auto nccl = nccl_world_of_one();
  CHECK((nccl->backend() == CommBackend::Nccl && nccl->size() == 1 && nccl->buffer_device() == Device::CUDA));
  const TestTensor host = TestTensor::from_values(DType::F32, {6}, {1, -2, 3.5, 4, 0, 7});
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Average, ReduceOp::Max}) {
    DeviceTensor x(host);
    nccl->all_reduce(x, op);
    CHECK(x.host().values() == host.values());
  }
  DeviceTensor in(host), out(host.converted(DType::F32));
  nccl->reduce_scatter(in, out);
  CHECK(out.host().values() == host.values());
  nccl->all_gather(in, out);
  nccl->broadcast(out, 0);
  nccl->barrier();
  CHECK(out.host().values() == host.values());
  CHECK(all_reduce_value(*nccl, 3.25) == 3.25);
  CHECK(broadcast_string(*nccl, "id") == "id");
}

TEST_CASE("nccl: training steps through the NCCL communicator match the local path", "[cuda][nccl]") {
  require_nccl();
  Config config = load_config(source_dir() + "/configs/tiny/dense.json",
                              {"train.device=cuda", "train.micro_batch=2", "data.seq_len=32", "train.batch_tokens=128"});
  auto nccl = nccl_world_of_one();
  TrainingState local(config), through_nccl(config, nullptr, nccl.get());
  const BatchSource batches = [&](int64_t first, Tensor tokens, Tensor targets) {
    for (int64_t i = 0; i < tokens.numel(); ++i) {
      tokens.ptr<int32_t>()[i] = static_cast<int32_t>((first * 7 + i * 13) % config.model.vocab_size);
      targets.ptr<int32_t>()[i] = static_cast<int32_t>((first * 7 + i * 13 + 1) % config.model.vocab_size);
    }
  };
  for (int64_t step = 0; step < 3; ++step) {
    const StepResult a = local.step(step, batches), b = through_nccl.step(step, batches);
    CHECK(a.loss == b.loss);
    CHECK(a.grad_norm == b.grad_norm);
  }
  CHECK(same_bits(local.host_params().all(), through_nccl.host_params().all()));
}
