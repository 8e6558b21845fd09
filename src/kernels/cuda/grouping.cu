// CUDA group-by-key (the stable counting sort behind L3 and MoE), row gather / scatter, and the column
// concat / split of the L3 mixer.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/internal.cuh"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSortThreads = 1024;  // the sort's single block

// The whole counting sort in one block of kSortThreads threads (keys (n) in [0, groups); offsets (groups + 1)):
//  1. histogram: offsets[k + 1] = number of keys k (integer atomics: exact, whatever the order)
//  2. exclusive scan: offsets[k] = where group k starts; offsets[groups] = number of valid keys
//  3. placement, one tile of kSortThreads positions at a time in position order: a thread ranks its position
//     among the equal keys before it in the tile, writes order[offsets[k] + rank], and the last of each key in
//     the tile advances offsets[k] (the cursor) by the key's count in the tile. Ties keep position order.
//  4. the cursors now hold each group's end; shifting them up by one entry restores the starts.
// Keys outside [0, groups) are left out (the caller checks offsets[groups] against n).
__launch_bounds__(kSortThreads)  // 1024 threads: at most 64 registers a thread
__global__ void group_by_key_kernel(int32_t* __restrict__ order, int32_t* __restrict__ offsets,
                                    const int32_t* __restrict__ keys, int64_t n, int64_t groups) {
  __shared__ int32_t tile_keys[kSortThreads];
  __shared__ int64_t chunk_sums[kSortThreads];
  const int t = threadIdx.x;
  const int threads = blockDim.x;

  for (int64_t i = t; i <= groups; i += threads) offsets[i] = 0;
  __syncthreads();
  for (int64_t i = t; i < n; i += threads) {
    const int32_t k = keys[i];
    if (k >= 0 && k < groups) atomicAdd(&offsets[k + 1], 1);
  }
  __syncthreads();

  // Inclusive scan of offsets[1 .. groups]: thread t owns the contiguous entries [first, last).
  const int64_t per_thread = (groups + threads - 1) / threads;
  const int64_t first = 1 + t * per_thread;
  const int64_t last = first + per_thread < groups + 1 ? first + per_thread : groups + 1;
  int64_t local = 0;
  for (int64_t i = first; i < last; ++i) local += offsets[i];
  chunk_sums[t] = local;
  __syncthreads();
  for (int offset = 1; offset < threads; offset <<= 1) {  // Hillis-Steele inclusive scan of the chunk sums
    const int64_t add = t >= offset ? chunk_sums[t - offset] : 0;
    __syncthreads();
    chunk_sums[t] += add;
    __syncthreads();
  }
  int64_t running = chunk_sums[t] - local;  // exclusive prefix of this thread's chunk
  for (int64_t i = first; i < last; ++i) {
    running += offsets[i];
    offsets[i] = static_cast<int32_t>(running);
  }
  __syncthreads();

  for (int64_t base = 0; base < n; base += threads) {
    const int64_t i = base + t;
    int32_t k = i < n ? keys[i] : -1;
    if (k >= groups) k = -1;
    tile_keys[t] = k;
    __syncthreads();
    int rank = 0, count = 0;
    if (k >= 0) {
      for (int j = 0; j < threads; ++j) {
        if (tile_keys[j] == k) {
          if (j < t) ++rank;
          ++count;
        }
      }
      order[offsets[k] + rank] = static_cast<int32_t>(i);
    }
    __syncthreads();  // every thread has read its cursor
    if (k >= 0 && rank == count - 1) offsets[k] += count;
    __syncthreads();  // cursors advanced, tile_keys free
  }

  // offsets[k] is the end of group k = the start of group k + 1: new[k] = old[k - 1] for k in [1, groups],
  // new[0] = 0 (offsets[groups] already holds the total). Chunks of kSortThreads entries from the top down, so
  // that each chunk reads entries no chunk has rewritten yet.
  if (groups >= 1) {
    for (int64_t m = (groups - 1) / threads; m >= 0; --m) {
      const int64_t index = 1 + m * threads + t;
      const int32_t value = index <= groups ? offsets[index - 1] : 0;
      __syncthreads();
      if (index <= groups) offsets[index] = value;
      __syncthreads();
    }
  }
  if (t == 0) offsets[0] = 0;
}

template <typename T>
__global__ void gather_kernel(T* __restrict__ out, const T* __restrict__ x, const int32_t* __restrict__ index,
                              int64_t m, int64_t d) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < m * d;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / d, c = e % d;
    out[e] = x[static_cast<int64_t>(index[i]) * d + c];
  }
}

template <typename T>
__global__ void scatter_kernel(T* __restrict__ out, const T* __restrict__ x, const int32_t* __restrict__ index,
                               int64_t m, int64_t d, bool accumulate) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < m * d;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / d, c = e % d;
    T* dst = out + static_cast<int64_t>(index[i]) * d + c;
    *dst = accumulate ? from_float<T>(to_float(*dst) + to_float(x[e])) : x[e];
  }
}

template <typename T>
__global__ void concat_kernel(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b, int64_t n,
                              int64_t da, int64_t db) {
  const int64_t w = da + db;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n * w;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / w, c = e % w;
    out[e] = c < da ? a[i * da + c] : b[i * db + (c - da)];
  }
}

template <typename T>
__global__ void split_kernel(T* __restrict__ da_out, T* __restrict__ db_out, const T* __restrict__ dout, int64_t n,
                             int64_t wa, int64_t wb, bool acc_a, bool acc_b) {
  const int64_t w = wa + wb;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n * w;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / w, c = e % w;
    const bool first = c < wa;
    T* dst = first ? da_out + i * wa + c : db_out + i * wb + (c - wa);
    const bool accumulate = first ? acc_a : acc_b;
    *dst = accumulate ? from_float<T>(to_float(*dst) + to_float(dout[e])) : dout[e];
  }
}

}  // namespace

void launch_group_by_key(int32_t* order, int32_t* offsets, const int32_t* keys, int64_t n, int64_t groups) {
  launch(group_by_key_kernel, 1, kSortThreads, 0, order, offsets, keys, n, groups);
}

int64_t group_by_key_device(int32_t* order, int32_t* offsets, const int32_t* keys, int64_t n, int64_t groups) {
  launch_group_by_key(order, offsets, keys, n, groups);
  int32_t valid = 0;
  count_host_synchronization();
  L3C_CUDA_CHECK(cudaMemcpy(&valid, offsets + groups, sizeof valid, cudaMemcpyDeviceToHost));
  return valid;
}

void group_by_key(Tensor order, Tensor offsets, Tensor keys, bool verify_keys) {
  const int64_t n = keys.numel(), groups = offsets.numel() - 1;
  auto* order_data = static_cast<int32_t*>(order.data);
  auto* offsets_data = static_cast<int32_t*>(offsets.data);
  const auto* keys_data = static_cast<const int32_t*>(keys.data);
  if (!verify_keys) return launch_group_by_key(order_data, offsets_data, keys_data, n, groups);
  const int64_t valid = group_by_key_device(order_data, offsets_data, keys_data, n, groups);
  L3C_CHECK(valid == n, "ops::group_by_key: {} of {} keys are outside [0, {})", n - valid, n, groups);
}

void gather_rows(Tensor out, Tensor x, Tensor index) {
  const int64_t m = index.numel(), d = out.dim(-1);
  dispatch_float(out.dtype, "gather_rows", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(gather_kernel<T>, capped_blocks(m * d, kThreads), kThreads, 0, static_cast<T*>(out.data),
           static_cast<const T*>(x.data), static_cast<const int32_t*>(index.data), m, d);
  });
}

void scatter_rows(Tensor out, Tensor x, Tensor index, bool accumulate) {
  const int64_t m = index.numel(), d = out.dim(-1);
  dispatch_float(out.dtype, "scatter_rows", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(scatter_kernel<T>, capped_blocks(m * d, kThreads), kThreads, 0, static_cast<T*>(out.data),
           static_cast<const T*>(x.data), static_cast<const int32_t*>(index.data), m, d, accumulate);
  });
}

void concat_last_dim(Tensor out, Tensor x_a, Tensor x_b) {
  const int64_t da = x_a.dim(-1), db = x_b.dim(-1), n = out.numel() / (da + db);
  dispatch_float(out.dtype, "concat_last_dim", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(concat_kernel<T>, capped_blocks(out.numel(), kThreads), kThreads, 0, static_cast<T*>(out.data),
           static_cast<const T*>(x_a.data), static_cast<const T*>(x_b.data), n, da, db);
  });
}

void split_last_dim(Tensor dx_a, Tensor dx_b, Tensor dout, bool accumulate_a, bool accumulate_b) {
  const int64_t wa = dx_a.dim(-1), wb = dx_b.dim(-1), n = dout.numel() / (wa + wb);
  dispatch_float(dout.dtype, "split_last_dim", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(split_kernel<T>, capped_blocks(dout.numel(), kThreads), kThreads, 0, static_cast<T*>(dx_a.data),
           static_cast<T*>(dx_b.data), static_cast<const T*>(dout.data), n, wa, wb, accumulate_a, accumulate_b);
  });
}

}  // namespace l3c::ops::cuda
