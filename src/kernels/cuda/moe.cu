// CUDA Mixture-of-Experts ops (kernels/ops.h, Mixtral semantics): the router (softmax, top-k, renormalised
// weights) and its backward, the layer's routing statistics and load-balancing bias reduced on the device, the
// pair indices of the dispatch, the grouped products, and the combine with its backward.
//
// Nothing here reads anything back to the host: the expert offsets stay on the device and the grouped products
// find their rows there, so the MoE layer queues all its work without the host ever waiting for the GPU.
//
// Dtypes: the call's dtype T (f32 or bf16) for the router's logits and their gradient, the grouped rows and the
// expert weights; f32 for the routing statistics (probs, lse, the routing weights and their gradient, the
// load-balancing bias, the layer statistics), as Mixtral computes its router softmax in fp32; a grouped product's
// weight gradient is T or, in a bf16 call, f32 (fp32 gradient accumulation). Every kernel computes in f32 (the
// statistics' sums in double; the bf16 grouped products on sm_80+ multiply on tensor cores: exact bf16 products
// summed in fp32). The router runs one thread per token (E is small); every other output element has one owner
// that sums in a fixed order: no atomics, the same bits on every run.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/internal.cuh"
#include "kernels/cuda/wmma.cuh"
#include "kernels/router_top_k.h"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 256;

// ---- router ----------------------------------------------------------------------------------------------

// Row n: probs = softmax(logits), lse, and the top_k experts by probability (descending, ties to the lower
// index), with their probabilities as weights, divided by their sum when normalize. Logits are T, the rest f32.
template <typename T>
__global__ void router_forward_kernel(float* __restrict__ probs, float* __restrict__ lse, int32_t* __restrict__ experts,
                                      float* __restrict__ weights, const T* __restrict__ logits, int64_t n,
                                      int64_t num_experts, int64_t top_k, bool normalize) {
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < n;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T* z = logits + row * num_experts;
    float* p = probs + row * num_experts;
    float row_max = -INFINITY;
    for (int64_t e = 0; e < num_experts; ++e) row_max = fmaxf(row_max, to_float(z[e]));
    double sum = 0.0;
    for (int64_t e = 0; e < num_experts; ++e) sum += static_cast<double>(expf(to_float(z[e]) - row_max));
    lse[row] = static_cast<float>(static_cast<double>(row_max) + log(sum));
    for (int64_t e = 0; e < num_experts; ++e)
      p[e] = static_cast<float>(static_cast<double>(expf(to_float(z[e]) - row_max)) / sum);
    router_top_k(experts + row * top_k, weights + row * top_k, p, num_experts, top_k, normalize);
  }
}

// Row n of dlogits (T): with g_e = d/dp_e of (sum_s dweights_s w_s + sum_e bias_e p_e),
//   dlogits_e = p_e (g_e - sum_e' p_e' g_e') + 2 z_scale lse p_e.
// With normalize, w_s = p_{e_s} / S (S = sum of the selected probabilities), so
//   d/dp_{e_s} = (dweights_s - sum_s' dweights_s' w_s') / S; without, it is dweights_s.
template <typename T>
__global__ void router_backward_kernel(T* __restrict__ dlogits, const float* __restrict__ dweights,
                                       const float* __restrict__ probs, const float* __restrict__ lse,
                                       const int32_t* __restrict__ experts, const float* __restrict__ weights,
                                       const float* __restrict__ bias, float z_scale, int64_t n, int64_t num_experts,
                                       int64_t top_k, bool normalize) {
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < n;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float* p = probs + row * num_experts;
    const int32_t* chosen = experts + row * top_k;
    const float* dw = dweights + row * top_k;
    const float* w = weights + row * top_k;
    T* dz = dlogits + row * num_experts;
    float selected = 0.0f, weighted = 0.0f;
    for (int64_t s = 0; s < top_k; ++s) {
      selected += p[chosen[s]];
      weighted += dw[s] * w[s];
    }
    // g_e, as a function: the bias term plus the slot term of a selected expert
    auto slot_term = [&](int64_t e) {
      for (int64_t s = 0; s < top_k; ++s)
        if (chosen[s] == e) return normalize ? (dw[s] - weighted) / selected : dw[s];
      return 0.0f;
    };
    float dot = 0.0f;
    for (int64_t e = 0; e < num_experts; ++e) dot += p[e] * ((bias ? bias[e] : 0.0f) + slot_term(e));
    const float z_term = 2.0f * z_scale * lse[row];
    for (int64_t e = 0; e < num_experts; ++e) {
      const float g = (bias ? bias[e] : 0.0f) + slot_term(e);
      dz[e] = from_float<T>(p[e] * (g - dot) + z_term * p[e]);
    }
  }
}

// ---- routing statistics, on the device -----------------------------------------------------------------------

// Block e < E sums column e of probs over the N rows: partials[2e] = sum_n p, partials[2e + 1] = sum_n -p log p;
// block E: partials[2E] = sum_n lse^2. In double, in a fixed order (the block tree).
__global__ void routing_partials_kernel(double* __restrict__ partials, const float* __restrict__ probs,
                                        const float* __restrict__ lse, int64_t n, int64_t num_experts) {
  __shared__ double scratch[32];
  const int64_t column = blockIdx.x;
  double mass = 0.0, entropy = 0.0;
  for (int64_t row = threadIdx.x; row < n; row += blockDim.x) {
    if (column < num_experts) {
      const double p = probs[row * num_experts + column];
      mass += p;
      if (p > 0.0) entropy -= p * log(p);
    } else {
      const double l = lse[row];
      mass += l * l;
    }
  }
  mass = block_sum(mass, scratch);
  entropy = block_sum(entropy, scratch);
  if (threadIdx.x != 0) return;
  if (column < num_experts) {
    partials[2 * column] = mass;
    partials[2 * column + 1] = entropy;
  } else {
    partials[2 * num_experts] = mass;
  }
}

// One thread: the kMoeStatistics values of ops.h from the partial sums and the expert offsets (rows_e / M with
// M = offsets[E]: the f_e of the load-balancing loss).
__global__ void routing_stats_kernel(float* __restrict__ stats, const double* __restrict__ partials,
                                     const int32_t* __restrict__ offsets, int64_t n, int64_t num_experts) {
  if (threadIdx.x != 0) return;
  const double tokens = static_cast<double>(n), pairs = static_cast<double>(offsets[num_experts] - offsets[0]);
  double balance = 0.0, entropy = 0.0, most = 0.0, least = 0.0;
  for (int64_t e = 0; e < num_experts; ++e) {
    const double rows = static_cast<double>(offsets[e + 1] - offsets[e]);
    if (pairs > 0.0) balance += rows / pairs * (partials[2 * e] / tokens);
    entropy += partials[2 * e + 1];
    most = e == 0 ? rows : fmax(most, rows);
    least = e == 0 ? rows : fmin(least, rows);
  }
  stats[0] = static_cast<float>(balance);
  stats[1] = static_cast<float>(partials[2 * num_experts] / tokens);
  stats[2] = static_cast<float>(most / tokens);
  stats[3] = static_cast<float>(least / tokens);
  stats[4] = static_cast<float>(entropy / tokens);
}

// bias[e] = scale * (rows of expert e).
__global__ void balance_bias_kernel(float* __restrict__ bias, const int32_t* __restrict__ offsets,
                                    int64_t num_experts, double scale) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < num_experts;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    bias[e] = static_cast<float>(scale * static_cast<double>(offsets[e + 1] - offsets[e]));
}

__global__ void pair_indices_kernel(int32_t* __restrict__ token_of_row, int32_t* __restrict__ row_of_pair,
                                    const int32_t* __restrict__ order, int64_t m, int64_t top_k) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < m;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    token_of_row[i] = static_cast<int32_t>(order[i] / top_k);
    row_of_pair[order[i]] = static_cast<int32_t>(i);
  }
}

// ---- grouped products ----------------------------------------------------------------------------------------
// cuBLAS's grouped GEMM (cublasGemmGroupedBatchedEx) takes every group's m, n and k in host arrays, but how many
// rows an expert receives is known only on the device: it would need the offsets read back on every call. These
// kernels find their rows on the device instead. The rows of a call are cut into row tiles of at most kTileRows
// rows that never cross a group boundary (a group of r rows has ceil(r / kTileRows) of them; all groups together
// at most ceil(M / kTileRows) + E, a bound the host knows): a one-block kernel lays them out from the offsets, and
// the product kernels launch that many row tiles, those past the last real one returning at once. A block computes
// a kTileRows x kTileCols tile of the output, staging kTileDepth-deep slices of both operands in shared memory (as
// f32) and accumulating in f32 registers: 16 x 16 threads, 4 x 4 outputs each, every output summed by one thread in
// depth order. These CUDA-core kernels serve f32 (and bf16 where the GPU has no bf16 tensor cores); bf16 on sm_80+
// takes the tensor-core kernels below (WMMA, same tiles), which moe_kernel_for chooses.
constexpr int kTileRows = 64, kTileCols = 64, kTileDepth = 16;
constexpr int kGemmThreads = 256;  // 16 x 16, each owning rows ty + 16 i and columns tx + 16 j, i, j < 4
constexpr int kMapThreads = 256;

int64_t row_tile_slots(int64_t rows, int64_t groups) { return (rows + kTileRows - 1) / kTileRows + groups; }
unsigned column_tiles(int64_t columns) { return static_cast<unsigned>((columns + kTileCols - 1) / kTileCols); }

__device__ __forceinline__ int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max_i64(int64_t a, int64_t b) { return a < b ? b : a; }

// Group e's rows, clamped into [0, rows): offsets that do not rise make a group empty instead of a read out of bounds.
__device__ __forceinline__ void group_bounds(const int32_t* offsets, int64_t e, int64_t rows, int64_t& begin,
                                             int64_t& end) {
  begin = min_i64(max_i64(offsets[e], 0), rows);
  end = min_i64(max_i64(offsets[e + 1], begin), rows);
}

// The row tiles in group order: tile t is rows [tile_begin[t], tile_end[t]) of group tile_group[t]; slots past the
// last tile get group -1. Thread t lays out the tiles of a contiguous chunk of groups, after the tiles of the
// chunks before it.
__global__ void row_tiles_kernel(int32_t* __restrict__ tile_group, int32_t* __restrict__ tile_begin,
                                 int32_t* __restrict__ tile_end, const int32_t* __restrict__ offsets, int64_t groups,
                                 int64_t rows, int64_t slots) {
  __shared__ int64_t chunk_tiles[kMapThreads];
  const int t = threadIdx.x;
  const int64_t per_thread = (groups + kMapThreads - 1) / kMapThreads;
  const int64_t first = min_i64(t * per_thread, groups), last = min_i64(first + per_thread, groups);
  int64_t begin = 0, end = 0, tiles = 0;
  for (int64_t e = first; e < last; ++e) {
    group_bounds(offsets, e, rows, begin, end);
    tiles += (end - begin + kTileRows - 1) / kTileRows;
  }
  chunk_tiles[t] = tiles;
  __syncthreads();
  int64_t slot = 0, total = 0;
  for (int u = 0; u < kMapThreads; ++u) {
    if (u < t) slot += chunk_tiles[u];
    total += chunk_tiles[u];
  }
  for (int64_t e = first; e < last; ++e) {
    group_bounds(offsets, e, rows, begin, end);
    for (int64_t row = begin; row < end && slot < slots; row += kTileRows, ++slot) {
      tile_group[slot] = static_cast<int32_t>(e);
      tile_begin[slot] = static_cast<int32_t>(row);
      tile_end[slot] = static_cast<int32_t>(min_i64(row + kTileRows, end));
    }
  }
  for (int64_t s = total + t; s < slots; s += kMapThreads) tile_group[s] = -1;
}

// The inner loop of both product kernels: thread (ty, tx) adds to its 4 x 4 outputs (rows ty + 16 i of a, columns
// tx + 16 j of b) the products over one kTileDepth-deep slice staged in shared memory.
__device__ __forceinline__ void add_slice_product(float (&acc)[4][4], const float (*a)[kTileRows + 4],
                                                  const float (*b)[kTileCols + 4], int tx, int ty) {
  for (int kk = 0; kk < kTileDepth; ++kk) {
    float a_values[4], b_values[4];
    for (int i = 0; i < 4; ++i) a_values[i] = a[kk][ty + 16 * i];
    for (int j = 0; j < 4; ++j) b_values[j] = b[kk][tx + 16 * j];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] += a_values[i] * b_values[j];
  }
}

// Writes thread (ty, tx)'s 4 x 4 outputs to rows row0 + ty + 16 i (< row_end) and columns col0 + tx + 16 j (< width)
// of out (rows of `width`), adding to what is there when accumulate.
template <typename Out>
__device__ __forceinline__ void store_outputs(Out* out, const float (&acc)[4][4], int64_t row0, int64_t row_end,
                                              int64_t col0, int64_t width, bool accumulate, int tx, int ty) {
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + ty + 16 * i;
    if (row >= row_end) continue;
    for (int j = 0; j < 4; ++j) {
      const int64_t col = col0 + tx + 16 * j;
      if (col >= width) continue;
      Out* target = out + row * width + col;
      *target = from_float<Out>(acc[i][j] + (accumulate ? to_float(*target) : 0.0f));
    }
  }
}

// Row tile blockIdx.x, columns [blockIdx.y * kTileCols, + kTileCols) of out (M, width) = a (M, depth) B, where B
// (depth, width) is w_e^T with w_e (width, depth) when kWeightTransposed (the forward: x w_e^T), else w_e itself
// with w_e (depth, width) (the backward's dx: dout w_e). Overwrites out, or adds to it when accumulate.
template <typename T, bool kWeightTransposed>
__global__ void grouped_rows_kernel(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ w,
                                    const int32_t* __restrict__ tile_group, const int32_t* __restrict__ tile_begin,
                                    const int32_t* __restrict__ tile_end, int64_t depth, int64_t width,
                                    bool accumulate) {
  __shared__ float a_tile[kTileDepth][kTileRows + 4];  // [k][row]
  __shared__ float b_tile[kTileDepth][kTileCols + 4];  // [k][column]
  const int32_t group = tile_group[blockIdx.x];
  if (group < 0) return;  // past the last tile: the whole block leaves before any barrier
  const int64_t row0 = tile_begin[blockIdx.x], row_end = tile_end[blockIdx.x];
  const int64_t col0 = static_cast<int64_t>(blockIdx.y) * kTileCols;
  const T* w_e = w + static_cast<int64_t>(group) * width * depth;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < depth; k0 += kTileDepth) {
    for (int i = threadIdx.x; i < kTileRows * kTileDepth; i += kGemmThreads) {
      const int m = i / kTileDepth, kk = i % kTileDepth;  // neighbouring threads read neighbouring k of a row
      const int64_t row = row0 + m, k = k0 + kk;
      a_tile[kk][m] = row < row_end && k < depth ? to_float(a[row * depth + k]) : 0.0f;
    }
    for (int i = threadIdx.x; i < kTileCols * kTileDepth; i += kGemmThreads) {
      if constexpr (kWeightTransposed) {
        const int n = i / kTileDepth, kk = i % kTileDepth;
        const int64_t col = col0 + n, k = k0 + kk;
        b_tile[kk][n] = col < width && k < depth ? to_float(w_e[col * depth + k]) : 0.0f;
      } else {
        const int kk = i / kTileCols, n = i % kTileCols;
        const int64_t col = col0 + n, k = k0 + kk;
        b_tile[kk][n] = col < width && k < depth ? to_float(w_e[k * width + col]) : 0.0f;
      }
    }
    __syncthreads();
    add_slice_product(acc, a_tile, b_tile, tx, ty);
    __syncthreads();  // the tiles are read before the next slice overwrites them
  }
  store_outputs(out, acc, row0, row_end, col0, width, accumulate, tx, ty);
}

// dw[e] (out_features, in_features) += sum over group e's rows r of dout[r]^T x[r]: block (blockIdx.x, blockIdx.y)
// owns a kTileRows x kTileCols tile of dw[blockIdx.z] and walks the group's rows kTileDepth at a time, in row
// order. An empty group leaves its gradient untouched. dout and x are T, dw is G (T, or f32 for bf16 inputs).
template <typename T, typename G>
__global__ void grouped_weight_grad_kernel(G* __restrict__ dw, const T* __restrict__ dout, const T* __restrict__ x,
                                           const int32_t* __restrict__ offsets, int64_t rows, int64_t out_features,
                                           int64_t in_features) {
  __shared__ float dout_tile[kTileDepth][kTileRows + 4];  // [row][output feature]
  __shared__ float x_tile[kTileDepth][kTileCols + 4];     // [row][input feature]
  const int64_t group = blockIdx.z;
  int64_t begin = 0, end = 0;
  group_bounds(offsets, group, rows, begin, end);
  if (end == begin) return;  // the whole block leaves before any barrier
  const int64_t o0 = static_cast<int64_t>(blockIdx.y) * kTileRows, i0 = static_cast<int64_t>(blockIdx.x) * kTileCols;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int64_t r0 = begin; r0 < end; r0 += kTileDepth) {
    for (int i = threadIdx.x; i < kTileRows * kTileDepth; i += kGemmThreads) {
      const int kk = i / kTileRows, m = i % kTileRows;  // neighbouring threads read neighbouring features of a row
      const int64_t row = r0 + kk, o = o0 + m;
      dout_tile[kk][m] = row < end && o < out_features ? to_float(dout[row * out_features + o]) : 0.0f;
    }
    for (int i = threadIdx.x; i < kTileCols * kTileDepth; i += kGemmThreads) {
      const int kk = i / kTileCols, n = i % kTileCols;
      const int64_t row = r0 + kk, c = i0 + n;
      x_tile[kk][n] = row < end && c < in_features ? to_float(x[row * in_features + c]) : 0.0f;
    }
    __syncthreads();
    add_slice_product(acc, dout_tile, x_tile, tx, ty);
    __syncthreads();
  }
  store_outputs(dw + group * out_features * in_features, acc, o0, out_features, i0, in_features,
                /*accumulate=*/true, tx, ty);
}

// ---- grouped products on tensor cores (bf16) ------------------------------------------------------------------
// The same products for bf16 rows and weights on sm_80 and later: the same row tiles and 64 x 64 output tiles as the
// CUDA-core kernels above (so one row-tile layout serves both), the operands staged in shared memory as bf16 and
// multiplied with WMMA 16 x 16 x 16 fragments into fp32 accumulators. A block is 4 warps in a 2 x 2 arrangement,
// each owning a 32 x 32 quarter of the tile (2 x 2 accumulator fragments: per 16-deep step a warp loads 2 A and
// 2 B fragments for 4 mma, twice the reuse of a 16 x 64 strip), and the depth advances kWmmaDepth = 32 at a time
// (two fragment steps per pair of barriers). Ragged tiles (the last rows of an expert, columns past the width,
// depth past the end, rows past the expert in the weight gradient) are zeros in shared memory: nothing outside the
// group is read. The accumulators leave through a 64 x 64 f32 tile in shared memory, so that each output element
// is written by one thread, rounded once, and added to what is there when the contract says so.
//
// Shared memory: two operand slices of 64 x 32 or 32 x 64 bf16 with padded rows (5 KB and 4.5 KB), and then, in
// the same bytes, the 64 x 64 f32 output tile (17 KB): 17.5 KB of dynamic shared memory a block, far below the 48 KB
// a kernel gets without opting in (allow_shared_bytes), so that several blocks share an SM (H100 / H200: 228 KB of
// shared memory, 2048 threads; at 56 to 66 registers a thread on sm_90, 7 or 8 blocks of 128) and hide each
// other's loads (no double buffering or asynchronous copies yet: the next step if a profile asks for it).
constexpr int kWmmaWarps = 4;
constexpr int kWmmaThreads = 32 * kWmmaWarps;
constexpr int kWmmaDepth = 32;                 // depth of a staged slice: two 16-deep fragment steps
constexpr int kFrag = 16;                      // the WMMA tile side
constexpr int kWarpTile = 32;                  // a warp's rows and columns of the 64 x 64 tile
constexpr int kWarpFrags = kWarpTile / kFrag;  // 2 x 2 fragments a warp
constexpr int kLdDepth = kWmmaDepth + 8;       // bf16 slices [row][k]: ldm a multiple of 8, rows apart in banks
constexpr int kLdWide = kTileCols + 8;         // bf16 slices [k][column]
constexpr int kLdOut = kTileCols + 4;          // the f32 output tile (ldm a multiple of 4)
static_assert(kTileRows == 2 * kWarpTile && kTileCols == 2 * kWarpTile && kWmmaWarps == 4, "2 x 2 warps a tile");
// Region sizes are multiples of 128 bytes, so every fragment pointer keeps WMMA's 32-byte alignment.
constexpr size_t kSliceBytes = sizeof(bf16) * kTileRows * kLdDepth;  // (64, kLdDepth) or (32, kLdWide), the larger
static_assert(sizeof(bf16) * kWmmaDepth * kLdWide <= kSliceBytes && kSliceBytes % 128 == 0, "slice regions");
constexpr size_t kOutTileBytes = sizeof(float) * kTileRows * kLdOut;
static_assert(kOutTileBytes % 128 == 0, "the output tile keeps the alignment");
constexpr size_t kWmmaSharedBytes = (2 * kSliceBytes > kOutTileBytes ? 2 * kSliceBytes : kOutTileBytes) + 128;
static_assert(kWmmaSharedBytes <= 48 * 1024, "within the shared memory a kernel gets without opting in");

using Accumulator = wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float>;
using WarpAccumulators = Accumulator[kWarpFrags][kWarpFrags];

struct WmmaShared {
  bf16* a;      // the first operand's slice
  bf16* b;      // the second's
  float* out;   // (64, kLdOut), over both slices once the products are done
};
__device__ __forceinline__ WmmaShared wmma_shared() {
  L3C_DYNAMIC_SHARED(unsigned char, raw);
  unsigned char* base = raw + (128 - reinterpret_cast<uintptr_t>(raw) % 128) % 128;
  return {reinterpret_cast<bf16*>(base), reinterpret_cast<bf16*>(base + kSliceBytes), reinterpret_cast<float*>(base)};
}

// acc += the warp's 32 x 32 of A B over one kWmmaDepth slice: fragment (i, kk) of A at a + 16 (i a_row + kk a_k),
// fragment (kk, j) of B at b + 16 (kk b_k + j b_col), both of leading dimension ld_a / ld_b; the fragment types give
// the layouts (a [row][k] slice is a row-major A, a [k][row] one a column-major A, and so on).
template <typename FragmentA, typename FragmentB>
__device__ __forceinline__ void multiply_slice(WarpAccumulators& acc, const bf16* a, int a_row, int a_k, int ld_a,
                                               const bf16* b, int b_k, int b_col, int ld_b) {
  for (int kk = 0; kk < kWmmaDepth / kFrag; ++kk) {
    FragmentA fa[kWarpFrags];
    FragmentB fb[kWarpFrags];
    for (int i = 0; i < kWarpFrags; ++i) wmma::load_matrix_sync(fa[i], a + kFrag * (i * a_row + kk * a_k), ld_a);
    for (int j = 0; j < kWarpFrags; ++j) wmma::load_matrix_sync(fb[j], b + kFrag * (kk * b_k + j * b_col), ld_b);
    for (int i = 0; i < kWarpFrags; ++i)
      for (int j = 0; j < kWarpFrags; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
  }
}

// After the last slice (the caller's barrier passed): the block's 64 x 64 accumulators through the shared output
// tile into rows [row0, row0 + rows) and columns [col0, col0 + cols) of out (rows of `width`), adding to what is
// there when accumulate. Each element has one writer; consecutive threads write consecutive columns.
template <typename Out>
__device__ __forceinline__ void store_tile(Out* out, const WarpAccumulators& acc, float* tile, int warp_row,
                                           int warp_col, int64_t row0, int rows, int64_t col0, int cols, int64_t width,
                                           bool accumulate) {
  for (int i = 0; i < kWarpFrags; ++i)
    for (int j = 0; j < kWarpFrags; ++j)
      wmma::store_matrix_sync(tile + (warp_row + kFrag * i) * kLdOut + warp_col + kFrag * j, acc[i][j], kLdOut,
                              wmma::mem_row_major);
  __syncthreads();
  for (int idx = threadIdx.x; idx < kTileRows * kTileCols; idx += kWmmaThreads) {
    const int r = idx / kTileCols, c = idx % kTileCols;
    if (r >= rows || c >= cols) continue;
    Out* target = out + (row0 + r) * width + col0 + c;
    *target = from_float<Out>(tile[r * kLdOut + c] + (accumulate ? to_float(*target) : 0.0f));
  }
}

__device__ __forceinline__ void zero_accumulators(WarpAccumulators& acc) {
  for (int i = 0; i < kWarpFrags; ++i)
    for (int j = 0; j < kWarpFrags; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
}

__device__ __forceinline__ int tile_extent(int64_t remaining, int tile) {
  return static_cast<int>(remaining < tile ? remaining : tile);
}

// grouped_rows_kernel on tensor cores: row tile blockIdx.x, columns [blockIdx.y * 64, + 64) of out (M, width) =
// a (M, depth) B with B = w_e^T (w_e (width, depth)) when kWeightTransposed, else w_e (depth, width). bf16 in and
// out; overwrites out, or adds to it when accumulate. The a slice is staged [row][k]; the w_e^T slice [column][k]
// (w_e's rows as they lie: a column-major B), the w_e slice [k][column] (a row-major B).
template <bool kWeightTransposed>
__global__ void __launch_bounds__(kWmmaThreads)
    grouped_rows_wmma_kernel(bf16* __restrict__ out, const bf16* __restrict__ a, const bf16* __restrict__ w,
                             const int32_t* __restrict__ tile_group, const int32_t* __restrict__ tile_begin,
                             const int32_t* __restrict__ tile_end, int64_t depth, int64_t width, bool accumulate) {
#ifdef L3C_WMMA_BF16_UNAVAILABLE
  __trap();
#else
  const int32_t group = tile_group[blockIdx.x];
  if (group < 0) return;  // past the last tile: the whole block leaves before any barrier
  const int64_t row0 = tile_begin[blockIdx.x];
  const int rows = static_cast<int>(tile_end[blockIdx.x] - row0);
  const int64_t col0 = static_cast<int64_t>(blockIdx.y) * kTileCols;
  const int cols = tile_extent(width - col0, kTileCols);
  const bf16* w_e = w + static_cast<int64_t>(group) * width * depth;
  const WmmaShared shared = wmma_shared();
  const int warp = threadIdx.x / 32, warp_row = warp / 2 * kWarpTile, warp_col = warp % 2 * kWarpTile;
  const bool warp_has_rows = warp_row < rows;  // warp-uniform: a warp below the tile's last row has only zeros
  WarpAccumulators acc;
  zero_accumulators(acc);
  for (int64_t k0 = 0; k0 < depth; k0 += kWmmaDepth) {
    const int slice = tile_extent(depth - k0, kWmmaDepth);
    load_bf16_tile<kTileRows, kWmmaDepth, kLdDepth, kWmmaThreads>(shared.a, a + row0 * depth + k0, depth, rows, slice);
    if constexpr (kWeightTransposed)
      load_bf16_tile<kTileCols, kWmmaDepth, kLdDepth, kWmmaThreads>(shared.b, w_e + col0 * depth + k0, depth, cols,
                                                                     slice);
    else
      load_bf16_tile<kWmmaDepth, kTileCols, kLdWide, kWmmaThreads>(shared.b, w_e + k0 * width + col0, width, slice,
                                                                    cols);
    __syncthreads();
    if (warp_has_rows) {
      const bf16* a_warp = shared.a + warp_row * kLdDepth;
      if constexpr (kWeightTransposed)
        multiply_slice<wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, bf16, wmma::row_major>,
                       wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::col_major>>(
            acc, a_warp, kLdDepth, 1, kLdDepth, shared.b + warp_col * kLdDepth, 1, kLdDepth, kLdDepth);
      else
        multiply_slice<wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, bf16, wmma::row_major>,
                       wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::row_major>>(
            acc, a_warp, kLdDepth, 1, kLdDepth, shared.b + warp_col, kLdWide, 1, kLdWide);
    }
    __syncthreads();  // the slices are read before the next ones (or the output tile) overwrite them
  }
  store_tile(out, acc, shared.out, warp_row, warp_col, row0, rows, col0, cols, width, accumulate);
#endif
}

// grouped_weight_grad_kernel on tensor cores: dw[e] (out_features, in_features) += sum over group e's rows of
// dout[r]^T x[r], block (blockIdx.x, blockIdx.y) owning the 64 x 64 tile of input features blockIdx.x * 64 and
// output features blockIdx.y * 64 of dw[blockIdx.z], walking the group's rows kWmmaDepth at a time in row order.
// Both slices are staged [row][feature]: the dout slice is dout^T as a column-major A, the x slice a row-major B.
// An empty group leaves its gradient untouched. dout and x are bf16, dw is G (bf16, or f32).
template <typename G>
__global__ void __launch_bounds__(kWmmaThreads)
    grouped_weight_grad_wmma_kernel(G* __restrict__ dw, const bf16* __restrict__ dout, const bf16* __restrict__ x,
                                    const int32_t* __restrict__ offsets, int64_t rows, int64_t out_features,
                                    int64_t in_features) {
#ifdef L3C_WMMA_BF16_UNAVAILABLE
  __trap();
#else
  const int64_t group = blockIdx.z;
  int64_t begin = 0, end = 0;
  group_bounds(offsets, group, rows, begin, end);
  if (end == begin) return;  // the whole block leaves before any barrier
  const int64_t o0 = static_cast<int64_t>(blockIdx.y) * kTileRows, i0 = static_cast<int64_t>(blockIdx.x) * kTileCols;
  const int outs = tile_extent(out_features - o0, kTileRows), ins = tile_extent(in_features - i0, kTileCols);
  const WmmaShared shared = wmma_shared();
  const int warp = threadIdx.x / 32, warp_row = warp / 2 * kWarpTile, warp_col = warp % 2 * kWarpTile;
  const bool warp_has_rows = warp_row < outs;  // warp-uniform
  WarpAccumulators acc;
  zero_accumulators(acc);
  for (int64_t r0 = begin; r0 < end; r0 += kWmmaDepth) {
    const int slice = tile_extent(end - r0, kWmmaDepth);
    load_bf16_tile<kWmmaDepth, kTileRows, kLdWide, kWmmaThreads>(shared.a, dout + r0 * out_features + o0,
                                                                  out_features, slice, outs);
    load_bf16_tile<kWmmaDepth, kTileCols, kLdWide, kWmmaThreads>(shared.b, x + r0 * in_features + i0, in_features,
                                                                  slice, ins);
    __syncthreads();
    if (warp_has_rows)
      multiply_slice<wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, bf16, wmma::col_major>,
                     wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::row_major>>(
          acc, shared.a + warp_row, 1, kLdWide, kLdWide, shared.b + warp_col, kLdWide, 1, kLdWide);
    __syncthreads();
  }
  store_tile(dw + group * out_features * in_features, acc, shared.out, warp_row, warp_col, o0, outs, i0, ins,
             in_features, /*accumulate=*/true);
#endif
}

// The row tiles of one grouped call, laid out in the workspace (device pointers).
struct RowTiles {
  int32_t* group = nullptr;
  int32_t* begin = nullptr;
  int32_t* end = nullptr;
  int64_t slots = 0;
};
RowTiles lay_out_row_tiles(const Tensor& offsets, int64_t groups, int64_t rows) {
  RowTiles tiles;
  tiles.slots = row_tile_slots(rows, groups);
  Carve carve(workspace(moe_workspace_bytes(rows, groups)));
  tiles.group = carve.take<int32_t>(tiles.slots);
  tiles.begin = carve.take<int32_t>(tiles.slots);
  tiles.end = carve.take<int32_t>(tiles.slots);
  launch(row_tiles_kernel, 1, kMapThreads, 0, tiles.group, tiles.begin, tiles.end,
         static_cast<const int32_t*>(offsets.data), groups, rows, tiles.slots);
  return tiles;
}

// ---- combine -------------------------------------------------------------------------------------------------

// out[n][c] (+)= sum_s w[n, s] rows[row_of_pair[n * top_k + s]][c]; weights (f32) null: every weight is 1.
template <typename T>
__global__ void combine_forward_kernel(T* __restrict__ out, const T* __restrict__ rows, const float* __restrict__ weights,
                                       const int32_t* __restrict__ row_of_pair, int64_t n, int64_t d, int64_t top_k,
                                       bool accumulate) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n * d;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t token = idx / d, c = idx % d;
    float acc = accumulate ? to_float(out[idx]) : 0.0f;
    for (int64_t s = 0; s < top_k; ++s) {
      const float w = weights ? weights[token * top_k + s] : 1.0f;
      acc += w * to_float(rows[static_cast<int64_t>(row_of_pair[token * top_k + s]) * d + c]);
    }
    out[idx] = from_float<T>(acc);
  }
}

// drows[row_of_pair[n * top_k + s]][c] = w[n, s] dout[n][c] (every grouped row is one pair's: no collisions).
template <typename T>
__global__ void combine_backward_rows_kernel(T* __restrict__ drows, const T* __restrict__ dout,
                                             const float* __restrict__ weights, const int32_t* __restrict__ row_of_pair,
                                             int64_t n, int64_t d, int64_t top_k) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n * top_k * d;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pair = idx / d, c = idx % d, token = pair / top_k;
    const float w = weights ? weights[pair] : 1.0f;
    drows[static_cast<int64_t>(row_of_pair[pair]) * d + c] = from_float<T>(w * to_float(dout[token * d + c]));
  }
}

// dweights[n, s] (f32) = dout[n] . rows[row_of_pair[n * top_k + s]]: one block per pair, the block tree.
template <typename T>
__global__ void combine_backward_weights_kernel(float* __restrict__ dweights, const T* __restrict__ dout,
                                                const T* __restrict__ rows, const int32_t* __restrict__ row_of_pair,
                                                int64_t pairs, int64_t d, int64_t top_k) {
  __shared__ float scratch[32];
  for (int64_t pair = blockIdx.x; pair < pairs; pair += gridDim.x) {
    const T* a = dout + (pair / top_k) * d;
    const T* b = rows + static_cast<int64_t>(row_of_pair[pair]) * d;
    float acc = 0.0f;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) acc += to_float(a[c]) * to_float(b[c]);
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) dweights[pair] = acc;
  }
}

unsigned grid_for(int64_t items) { return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(items, 1), kMaxGridBlocks)); }

const float* f32_or_null(const Tensor& t) { return t.empty() ? nullptr : static_cast<const float*>(t.data); }

}  // namespace

size_t moe_workspace_bytes(int64_t rows, int64_t experts) {
  if (experts == 0) return 0;
  Carve tiles(nullptr);
  for (int i = 0; i < 3; ++i) tiles.take<int32_t>(row_tile_slots(rows, experts));
  Carve partials(nullptr);
  partials.take<double>(2 * experts + 1);
  return std::max(tiles.bytes(), partials.bytes());
}

void moe_router_forward(Tensor probs, Tensor lse, Tensor experts, Tensor weights, Tensor logits, bool normalize) {
  const int64_t num_experts = logits.dim(-1), n = logits.numel() / num_experts, top_k = experts.dim(-1);
  dispatch_float(logits.dtype, "moe_router_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(router_forward_kernel<T>, capped_blocks(n, 128), 128, 0, static_cast<float*>(probs.data),
           static_cast<float*>(lse.data), static_cast<int32_t*>(experts.data), static_cast<float*>(weights.data),
           static_cast<const T*>(logits.data), n, num_experts, top_k, normalize);
  });
}

void moe_router_backward(Tensor dlogits, Tensor dweights, Tensor probs, Tensor lse, Tensor experts, Tensor weights,
                         Tensor probs_bias, double z_scale, bool normalize) {
  const int64_t num_experts = probs.dim(-1), n = probs.numel() / num_experts, top_k = experts.dim(-1);
  dispatch_float(dlogits.dtype, "moe_router_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(router_backward_kernel<T>, capped_blocks(n, 128), 128, 0, static_cast<T*>(dlogits.data),
           static_cast<const float*>(dweights.data), static_cast<const float*>(probs.data),
           static_cast<const float*>(lse.data), static_cast<const int32_t*>(experts.data),
           static_cast<const float*>(weights.data), f32_or_null(probs_bias), static_cast<float>(z_scale), n,
           num_experts, top_k, normalize);
  });
}

void moe_routing_stats(Tensor stats, Tensor probs, Tensor lse, Tensor offsets) {
  const int64_t num_experts = probs.dim(-1), n = probs.numel() / num_experts;
  Carve carve(workspace(moe_workspace_bytes(0, num_experts)));
  double* partials = carve.take<double>(2 * num_experts + 1);
  launch(routing_partials_kernel, static_cast<unsigned>(num_experts + 1), kThreads, 0, partials,
         static_cast<const float*>(probs.data), static_cast<const float*>(lse.data), n, num_experts);
  launch(routing_stats_kernel, 1, 32, 0, static_cast<float*>(stats.data), partials,
         static_cast<const int32_t*>(offsets.data), n, num_experts);
}

void moe_balance_bias(Tensor probs_bias, Tensor offsets, double scale) {
  const int64_t num_experts = probs_bias.numel();
  launch(balance_bias_kernel, capped_blocks(num_experts, kThreads), kThreads, 0, static_cast<float*>(probs_bias.data),
         static_cast<const int32_t*>(offsets.data), num_experts, scale);
}

void moe_pair_indices(Tensor token_of_row, Tensor row_of_pair, Tensor order, int64_t top_k) {
  const int64_t m = order.numel();
  launch(pair_indices_kernel, capped_blocks(m, kThreads), kThreads, 0, static_cast<int32_t*>(token_of_row.data),
         static_cast<int32_t*>(row_of_pair.data), static_cast<const int32_t*>(order.data), m, top_k);
}

bool tensor_core_moe_supports(DType dtype) { return dtype == DType::BF16; }

MoeKernel moe_kernel_for(DType dtype) {
  return tensor_core_moe_supports(dtype) && gpu_has_bf16_tensor_cores() ? MoeKernel::TensorCores
                                                                        : MoeKernel::CudaCores;
}

namespace {
void check_tensor_core_moe(const char* op, DType dtype) {
  L3C_CHECK(dtype == DType::BF16, "ops::{}: the tensor-core MoE kernels take bf16, got {}", op, dtype_name(dtype));
}
// out (rows, width) (+)= a (rows, depth) B per row tile, B = w_e^T (the forward) or w_e (the backward's dx).
template <bool kWeightTransposed>
void grouped_rows(Tensor out, Tensor a, Tensor w, Tensor offsets, int64_t depth, int64_t width, bool accumulate,
                  MoeKernel kernel, const char* op) {
  const int64_t groups = w.dim(0), rows = a.numel() / depth;
  const RowTiles tiles = lay_out_row_tiles(offsets, groups, rows);
  const dim3 grid(static_cast<unsigned>(tiles.slots), column_tiles(width));
  if (kernel == MoeKernel::TensorCores) {
    check_tensor_core_moe(op, a.dtype);
    launch(grouped_rows_wmma_kernel<kWeightTransposed>, grid, kWmmaThreads, kWmmaSharedBytes,
           static_cast<bf16*>(out.data), static_cast<const bf16*>(a.data), static_cast<const bf16*>(w.data),
           tiles.group, tiles.begin, tiles.end, depth, width, accumulate);
    return;
  }
  dispatch_float(a.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(grouped_rows_kernel<T, kWeightTransposed>, grid, kGemmThreads, 0, static_cast<T*>(out.data),
           static_cast<const T*>(a.data), static_cast<const T*>(w.data), tiles.group, tiles.begin, tiles.end, depth,
           width, accumulate);
  });
}
}  // namespace

void grouped_matmul_forward(Tensor out, Tensor x, Tensor w, Tensor offsets, MoeKernel kernel) {
  const int64_t out_features = w.dim(1), in_features = w.dim(2);
  grouped_rows<true>(out, x, w, offsets, in_features, out_features, /*accumulate=*/false, kernel,
                     "grouped_matmul_forward");
}

void grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets, bool accumulate_dx,
                             MoeKernel kernel) {
  const int64_t groups = w.dim(0), out_features = w.dim(1), in_features = w.dim(2), rows = x.numel() / in_features;
  const char* op = "grouped_matmul_backward";
  if (!dx.empty()) grouped_rows<false>(dx, dout, w, offsets, out_features, in_features, accumulate_dx, kernel, op);
  if (dw.empty()) return;
  // The gradient may be f32 for bf16 inputs: expert e's block starts e * O * I elements of dw's own type in.
  if (kernel == MoeKernel::TensorCores) check_tensor_core_moe(op, x.dtype);
  dispatch_gradient(x.dtype, dw.dtype, op, [&](auto input_tag, auto grad_tag) {
    using T = typename decltype(input_tag)::type;
    using G = typename decltype(grad_tag)::type;
    const dim3 grid(column_tiles(in_features), column_tiles(out_features), static_cast<unsigned>(groups));
    const auto* offsets_data = static_cast<const int32_t*>(offsets.data);
    if (kernel == MoeKernel::TensorCores)  // bf16 inputs (checked above)
      launch(grouped_weight_grad_wmma_kernel<G>, grid, kWmmaThreads, kWmmaSharedBytes, static_cast<G*>(dw.data),
             static_cast<const bf16*>(dout.data), static_cast<const bf16*>(x.data), offsets_data, rows, out_features,
             in_features);
    else
      launch(grouped_weight_grad_kernel<T, G>, grid, kGemmThreads, 0, static_cast<G*>(dw.data),
             static_cast<const T*>(dout.data), static_cast<const T*>(x.data), offsets_data, rows, out_features,
             in_features);
  });
}

void grouped_matmul_forward(Tensor out, Tensor x, Tensor w, Tensor offsets) {
  grouped_matmul_forward(out, x, w, offsets, moe_kernel_for(x.dtype));
}

void grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets,
                             bool accumulate_dx) {
  grouped_matmul_backward(dx, dw, dout, x, w, offsets, accumulate_dx, moe_kernel_for(x.dtype));
}

void moe_combine_forward(Tensor out, Tensor rows, Tensor weights, Tensor row_of_pair, bool accumulate) {
  const int64_t d = out.dim(-1), n = out.numel() / d, top_k = row_of_pair.numel() / std::max<int64_t>(n, 1);
  dispatch_float(out.dtype, "moe_combine_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(combine_forward_kernel<T>, capped_blocks(n * d, kThreads), kThreads, 0, static_cast<T*>(out.data),
           static_cast<const T*>(rows.data), f32_or_null(weights), static_cast<const int32_t*>(row_of_pair.data), n,
           d, top_k, accumulate);
  });
}

void moe_combine_backward(Tensor drows, Tensor dweights, Tensor dout, Tensor rows, Tensor weights,
                          Tensor row_of_pair) {
  const int64_t d = dout.dim(-1), n = dout.numel() / d, top_k = row_of_pair.numel() / std::max<int64_t>(n, 1);
  dispatch_float(dout.dtype, "moe_combine_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(combine_backward_rows_kernel<T>, capped_blocks(n * top_k * d, kThreads), kThreads, 0,
           static_cast<T*>(drows.data), static_cast<const T*>(dout.data), f32_or_null(weights),
           static_cast<const int32_t*>(row_of_pair.data), n, d, top_k);
    if (!dweights.empty())
      launch(combine_backward_weights_kernel<T>, grid_for(n * top_k), 128, 0, static_cast<float*>(dweights.data),
             static_cast<const T*>(dout.data), static_cast<const T*>(rows.data),
             static_cast<const int32_t*>(row_of_pair.data), n * top_k, d, top_k);
  });
}

}  // namespace l3c::ops::cuda
