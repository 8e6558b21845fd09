// CUDA token embedding: a row gather forward; a deterministic backward without atomics: the positions are
// grouped by token with the stable counting sort, then one thread per table element adds that token's rows of
// dout in position order (the order the CPU adds them in).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/internal.cuh"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void embedding_forward_kernel(T* __restrict__ out, const T* __restrict__ table,
                                         const int32_t* __restrict__ tokens, int64_t n, int64_t d) {
  // out (N, d) = table (V, d)[tokens (N)]
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n * d;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / d, c = e % d;
    out[e] = table[static_cast<int64_t>(tokens[i]) * d + c];
  }
}

// Block u (grid-stride over tokens) owns table row u; its positions are order[offsets[u] .. offsets[u + 1]).
template <typename T, typename G>
__global__ void embedding_backward_kernel(G* __restrict__ dtable, const T* __restrict__ dout,
                                          const int32_t* __restrict__ order, const int32_t* __restrict__ offsets,
                                          int64_t vocab, int64_t d) {
  for (int64_t u = blockIdx.x; u < vocab; u += gridDim.x) {
    const int32_t begin = offsets[u], end = offsets[u + 1];
    if (begin == end) continue;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float acc = to_float(dtable[u * d + c]);
      for (int32_t p = begin; p < end; ++p) acc += to_float(dout[static_cast<int64_t>(order[p]) * d + c]);
      dtable[u * d + c] = from_float<G>(acc);
    }
  }
}

}  // namespace

void embedding_forward(Tensor out, Tensor table, Tensor tokens) {
  const int64_t n = tokens.numel(), d = table.dim(1);
  dispatch_float(out.dtype, "embedding_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(embedding_forward_kernel<T>, capped_blocks(n * d, kThreads), kThreads, 0, static_cast<T*>(out.data),
           static_cast<const T*>(table.data), static_cast<const int32_t*>(tokens.data), n, d);
  });
}

void embedding_backward(Tensor dtable, Tensor dout, Tensor tokens) {
  const int64_t n = tokens.numel(), vocab = dtable.dim(0), d = dtable.dim(1);
  Carve sizes(nullptr);
  sizes.take<int32_t>(n);
  sizes.take<int32_t>(vocab + 1);
  Carve carve(workspace(sizes.bytes()));
  int32_t* order = carve.take<int32_t>(n);
  int32_t* offsets = carve.take<int32_t>(vocab + 1);
  // Nothing is read back: token ids are checked when the data is loaded (embedding_forward already read the table
  // at them), and an id outside [0, V) would only be left out of the groups.
  launch_group_by_key(order, offsets, static_cast<const int32_t*>(tokens.data), n, vocab);
  dispatch_gradient(dout.dtype, dtable.dtype, "embedding_backward", [&](auto tag, auto grad_tag) {
    using T = typename decltype(tag)::type;
    using G = typename decltype(grad_tag)::type;
    const unsigned blocks = static_cast<unsigned>(vocab < kMaxGridBlocks ? vocab : kMaxGridBlocks);
    launch(embedding_backward_kernel<T, G>, blocks, 128, 0, static_cast<G*>(dtable.data), static_cast<const T*>(dout.data),
           order, offsets, vocab, d);
  });
}

}  // namespace l3c::ops::cuda
