// L3 lookup attention on tensor cores (MODEL.md "Large Lookup Layer"): the grouped matrix products of the CPU op
// (kernels/cpu/l3.cpp) with the CUDA WMMA API, 16 x 16 x 16 bf16 tiles with fp32 accumulation, for bf16 tensors on
// sm_80 and later. The op contract is ops.h's l3_lookup_forward / l3_lookup_backward; l3.cu holds the per-position
// CUDA-core kernels (every other dtype and shape) and chooses (l3_kernel_for).
//
// Rows arrive grouped by token, so the rows of token u are one block X_u (m_u, d) that meets the same table rows
// K_u (n_u, d), V_u (n_u, d_emb). A tile is up to 64 consecutive grouped rows of one token (a token's rows split
// at multiples of 64 from its first row); a block of 4 warps computes one tile at a time, 16 rows per warp, and
// reads K_u and V_u once per tile instead of once per position:
//   forward   S = X_u K_u^T -> probs (raw scores), P = softmax_rows(S) in place (exact: all n_u <= k scores of a row
//             are in probs, which the op writes anyway), E = P V_u -> out
//   backward  dP = dE_u V_u^T -> ds (workspace), dS = P (dP - rowsum(P dP)) in place, dX = dS K_u -> dx
// The two are the same kernel (grouped_rows_kernel): a first product into an (N, k) f32 buffer, a row pass, a second
// product out of it. Products stream through shared memory in 64 x 64 bf16 tiles (rows past the tile, keys past n_u
// and columns past the width are zeros); the first product's scores leave a warp through its f32 scratch.
//
// Table gradients (grouped_table_kernel, launched twice: dV += P^T dE, then dK += dS^T X, the CPU's order, which
// matters when the tables are tied): a block owns a chunk of up to 64 table rows of one token (split at multiples of
// 64 from its first row) and 64 columns, keeps their sums in fp32 accumulator fragments over all of the token's
// grouped rows in tiles of 64, in order, and adds them to the gradient once. Every gradient element has one owner:
// no atomics, and the result does not depend on the schedule.
//
// Blocks find their work without a host read-back: the grid strides over grouped rows (table rows), and a block
// works on the rows that start a tile (a chunk), found by binary search over group_offsets (row_offsets).
//
// Precision: inputs bf16, products exact, sums fp32, softmax statistics fp32. P and dS are rounded to bf16 to enter
// their products (as FlashAttention does); probs and ds stay f32 in memory. tests/test_cuda_l3.cpp states the
// tolerances against the CPU op.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/internal.cuh"
#include "kernels/cuda/wmma.cuh"

namespace l3c::ops::cuda {
namespace {

constexpr int kTile = 64;                 // grouped rows of a tile, table rows of a chunk; keys and columns per shared tile
constexpr int kWarps = 4;                 // 16 rows of the tile each
constexpr int kThreads = 32 * kWarps;
constexpr int kFrag = 16;                 // the WMMA tile side
constexpr int kFrags = kTile / kFrag;     // fragments across a tile
constexpr int kLd = kTile + 8;            // bf16 shared rows: ldm a multiple of 8, 16-byte aligned rows, spread banks
constexpr int kScratchLd = kTile + 4;     // f32 scratch rows (ldm a multiple of 4)
static_assert(kTile == kWarps * kFrag, "each warp owns 16 rows of a tile");

using OperandA = wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, bf16, wmma::row_major>;
using OperandAt = wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, bf16, wmma::col_major>;  // X^T of row-major X
using OperandB = wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::row_major>;
using OperandBt = wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::col_major>;  // X^T of row-major X
using Accumulator = wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float>;

// ---- shared memory: two bf16 tiles (64, kLd) and a (16, kScratchLd) f32 scratch per warp, from a 128-byte boundary
// (WMMA pointers must be 32-byte aligned; every region size is a multiple of 128 bytes).
constexpr size_t kTileBytes = sizeof(bf16) * kTile * kLd;
constexpr size_t kScratchBytes = sizeof(float) * kFrag * kScratchLd;
static_assert(kTileBytes % 128 == 0 && kScratchBytes % 128 == 0, "regions keep the 128-byte alignment");
constexpr size_t kSharedBytes = 2 * kTileBytes + kWarps * kScratchBytes + 128;  // + the alignment slack

struct SharedTiles {
  bf16* first;     // (64, kLd)
  bf16* second;    // (64, kLd)
  float* scratch;  // (16, kScratchLd), this warp's
};
__device__ __forceinline__ SharedTiles shared_tiles() {
  L3C_DYNAMIC_SHARED(unsigned char, raw);
  unsigned char* base = raw + (128 - reinterpret_cast<uintptr_t>(raw) % 128) % 128;
  const int warp = threadIdx.x / 32;
  return {reinterpret_cast<bf16*>(base), reinterpret_cast<bf16*>(base + kTileBytes),
          reinterpret_cast<float*>(base + 2 * kTileBytes + warp * kScratchBytes)};
}

// tile (64, kLd) bf16: element (r, c) = src[r * stride + c] for r < rows and c < cols, else 0 (wmma.cuh).
template <typename S>
__device__ __forceinline__ void load_tile(bf16* tile, const S* src, int64_t stride, int rows, int cols) {
  load_bf16_tile<kTile, kTile, kLd, kThreads>(tile, src, stride, rows, cols);
}

// Writes the warp's 16 x 64 accumulators through its scratch: for r < rows, c < cols, write(r, c, value). Lanes
// write consecutive columns.
template <typename Write>
__device__ __forceinline__ void drain(const Accumulator (&acc)[kFrags], float* scratch, int rows, int cols,
                                      Write&& write) {
  for (int f = 0; f < kFrags; ++f) wmma::store_matrix_sync(scratch + f * kFrag, acc[f], kScratchLd, wmma::mem_row_major);
  __syncwarp();
  for (int idx = threadIdx.x % 32; idx < kFrag * kTile; idx += 32) {
    const int r = idx / kTile, c = idx % kTile;
    if (r < rows && c < cols) write(r, c, scratch[r * kScratchLd + c]);
  }
  __syncwarp();
}

// acc[f] (16 x 16) += A B for f < b_frags, over k_steps steps of 16: the step kk of A (16 x 16) at a + kk * a_step and
// the fragment (kk, f) of B at b + kk * b_step + f * b_frag_step, all in shared tiles of leading dimension kLd. The
// fragment types give the layouts: S = X K^T (A row-major, B^T col-major), E = P V (both row-major), dV = P^T dE
// (A^T col-major).
template <typename FragmentA, typename FragmentB>
__device__ __forceinline__ void multiply(Accumulator (&acc)[kFrags], const bf16* a, int a_step, const bf16* b,
                                         int b_step, int b_frag_step, int k_steps, int b_frags) {
  for (int kk = 0; kk < k_steps; ++kk) {
    FragmentA fa;
    wmma::load_matrix_sync(fa, a + kk * a_step, kLd);
    for (int f = 0; f < b_frags; ++f) {
      FragmentB fb;
      wmma::load_matrix_sync(fb, b + kk * b_step + f * b_frag_step, kLd);
      wmma::mma_sync(acc[f], fa, fb, acc[f]);
    }
  }
}

__device__ __forceinline__ int frags_for(int64_t count) {  // fragments that hold count (<= 64) rows or columns
  return static_cast<int>((count < kTile ? count : kTile) + kFrag - 1) / kFrag;
}
__device__ __forceinline__ int min_tile(int64_t count) { return static_cast<int>(count < kTile ? count : kTile); }

// ---- rows: the forward, and the backward's dx -------------------------------------------------------------
enum class RowPass {
  Softmax,          // buffer = softmax of the scores (probs), zeros past n_u
  SoftmaxBackward,  // buffer = p (dp - p . dp) from dp, p = probs
};

// For each tile (rows [i, i + rows) of token u, table rows [r0, r0 + keys)):
//   buffer[i.., :keys] = first[i..] table_b[r0..]^T      (first (N, first_dim), table_b (v, first_dim))
//   the row pass on buffer[i..]
//   out[i..] = buffer[i.., :keys] table_c[r0..]          (table_c (v, out_dim), out (N, out_dim), overwritten)
// A token with keys outside [1, width] (an allocation the buffer cannot hold) gets NaN rows instead.
template <RowPass kPass>
__global__ void __launch_bounds__(kThreads)
    grouped_rows_kernel(bf16* __restrict__ out, float* __restrict__ buffer, const float* __restrict__ probs,
                        const bf16* __restrict__ first, const bf16* __restrict__ table_b,
                        const bf16* __restrict__ table_c, const int32_t* __restrict__ group_offsets,
                        const int32_t* __restrict__ row_offsets, int64_t n, int64_t groups, int64_t first_dim,
                        int64_t out_dim, int64_t width) {
#ifdef L3C_WMMA_BF16_UNAVAILABLE
  __trap();
#else
  const SharedTiles shared = shared_tiles();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_row0 = warp * kFrag;
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t u = find_group(group_offsets, groups, i);
    if ((i - group_offsets[u]) % kTile != 0) continue;  // not the first row of a tile (block-uniform)
    const int rows = min_tile(group_offsets[u + 1] - i);
    const int64_t r0 = row_offsets[u], keys = row_offsets[u + 1] - r0;
    float* buffer_i = buffer + i * width;
    if (keys < 1 || keys > width) {
      for (int64_t e = threadIdx.x; e < rows * width; e += kThreads) buffer_i[e] = NAN;
      for (int64_t e = threadIdx.x; e < rows * out_dim; e += kThreads) out[i * out_dim + e] = from_float<bf16>(NAN);
      continue;
    }
    const bool warp_has_rows = warp_row0 < rows;  // warp-uniform

    // First product, 64 keys at a time, streaming 64 columns of both operands.
    for (int64_t j0 = 0; j0 < keys; j0 += kTile) {
      const int key_frags = frags_for(keys - j0);
      Accumulator acc[kFrags];
      for (int f = 0; f < kFrags; ++f) wmma::fill_fragment(acc[f], 0.0f);
      for (int64_t c0 = 0; c0 < first_dim; c0 += kTile) {
        __syncthreads();  // every warp is done with the previous tiles
        load_tile(shared.first, first + i * first_dim + c0, first_dim, rows, min_tile(first_dim - c0));
        load_tile(shared.second, table_b + (r0 + j0) * first_dim + c0, first_dim, min_tile(keys - j0),
                  min_tile(first_dim - c0));
        __syncthreads();
        if (warp_has_rows)
          multiply<OperandA, OperandBt>(acc, shared.first + warp_row0 * kLd, kFrag, shared.second, kFrag, kFrag * kLd,
                                        frags_for(first_dim - c0), key_frags);
      }
      if (warp_has_rows)
        drain(acc, shared.scratch, rows - warp_row0, min_tile(keys - j0),
              [&](int r, int c, float value) { buffer_i[(warp_row0 + r) * width + j0 + c] = value; });
    }
    __syncthreads();  // the block's scores are in buffer (global writes are visible to the block after the barrier)

    // Row pass: warp w takes rows w, w + 4, ...; each lane reads back only what it wrote.
    for (int r = warp; r < rows; r += kWarps) {
      float* row = buffer_i + r * width;
      if constexpr (kPass == RowPass::Softmax) {
        float row_max = -INFINITY;
        for (int64_t j = lane; j < keys; j += 32) row_max = fmaxf(row_max, row[j]);
        row_max = warp_max(row_max);
        float sum = 0.0f;
        for (int64_t j = lane; j < keys; j += 32) {
          const float e = expf(row[j] - row_max);
          row[j] = e;
          sum += e;
        }
        const float inv = 1.0f / warp_sum(sum);
        for (int64_t j = lane; j < width; j += 32) row[j] = j < keys ? row[j] * inv : 0.0f;
      } else {
        const float* p = probs + (i + r) * width;
        float dot = 0.0f;
        for (int64_t j = lane; j < keys; j += 32) dot += p[j] * row[j];
        dot = warp_sum(dot);
        for (int64_t j = lane; j < keys; j += 32) row[j] = p[j] * (row[j] - dot);
      }
    }

    // Second product, 64 output columns at a time, streaming 64 keys of the buffer (rounded to bf16) and table_c.
    for (int64_t c0 = 0; c0 < out_dim; c0 += kTile) {
      const int col_frags = frags_for(out_dim - c0);
      Accumulator acc[kFrags];
      for (int f = 0; f < kFrags; ++f) wmma::fill_fragment(acc[f], 0.0f);
      for (int64_t j0 = 0; j0 < keys; j0 += kTile) {
        __syncthreads();  // the row pass is complete; every warp is done with the previous tiles
        load_tile(shared.first, buffer_i + j0, width, rows, min_tile(keys - j0));
        load_tile(shared.second, table_c + (r0 + j0) * out_dim + c0, out_dim, min_tile(keys - j0),
                  min_tile(out_dim - c0));
        __syncthreads();
        if (warp_has_rows)
          multiply<OperandA, OperandB>(acc, shared.first + warp_row0 * kLd, kFrag, shared.second, kFrag * kLd, kFrag,
                                       frags_for(keys - j0), col_frags);
      }
      if (warp_has_rows)
        drain(acc, shared.scratch, rows - warp_row0, min_tile(out_dim - c0), [&](int r, int c, float value) {
          out[(i + warp_row0 + r) * out_dim + c0 + c] = from_float<bf16>(value);
        });
    }
    __syncthreads();  // every warp is done with the tiles before the next tile's loads
  }
#endif
}

// ---- table gradients -----------------------------------------------------------------------------------------
// grad[r, c] += sum_i weights[i, j] y[i, c] over the grouped rows i of the token u that owns table row r (its row
// j = r - row_offsets[u], for j < width): dV += P^T dE (weights = probs, y = dout), dK += dS^T X (weights = ds,
// y = x). Grid: x strides over table rows, y picks 64 columns. Rows of tokens absent from the batch are untouched.
template <typename G>
__global__ void __launch_bounds__(kThreads)
    grouped_table_kernel(G* __restrict__ grad, const float* __restrict__ weights, const bf16* __restrict__ y,
                         const int32_t* __restrict__ group_offsets, const int32_t* __restrict__ row_offsets,
                         int64_t table_rows, int64_t groups, int64_t y_dim, int64_t width) {
#ifdef L3C_WMMA_BF16_UNAVAILABLE
  __trap();
#else
  const SharedTiles shared = shared_tiles();
  const int warp = threadIdx.x / 32;
  const int warp_key0 = warp * kFrag;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int cols = min_tile(y_dim - c0), col_frags = frags_for(y_dim - c0);
  for (int64_t r = blockIdx.x; r < table_rows; r += gridDim.x) {
    const int64_t u = find_group(row_offsets, groups, r);
    const int64_t j_first = r - row_offsets[u];
    if (j_first % kTile != 0) continue;  // not the first row of a chunk (block-uniform)
    const int64_t g0 = group_offsets[u], g1 = group_offsets[u + 1];
    const int64_t token_keys = row_offsets[u + 1] - row_offsets[u];
    const int keys = min_tile((token_keys < width ? token_keys : width) - j_first);
    if (g0 == g1 || keys <= 0) continue;  // the token is not in the batch, or the chunk is past the width
    const bool warp_has_keys = warp_key0 < keys;  // warp-uniform

    Accumulator acc[kFrags];
    for (int f = 0; f < kFrags; ++f) wmma::fill_fragment(acc[f], 0.0f);
    for (int64_t i0 = g0; i0 < g1; i0 += kTile) {
      const int positions = min_tile(g1 - i0);
      __syncthreads();  // every warp is done with the previous tiles
      load_tile(shared.first, weights + i0 * width + j_first, width, positions, keys);  // (positions, keys)
      load_tile(shared.second, y + i0 * y_dim + c0, y_dim, positions, cols);          // (positions, columns)
      __syncthreads();
      if (warp_has_keys)  // A: (16 keys, 16 positions) of the transposed weights
        multiply<OperandAt, OperandB>(acc, shared.first + warp_key0, kFrag * kLd, shared.second, kFrag * kLd, kFrag,
                                      frags_for(positions), col_frags);
    }
    if (warp_has_keys)
      drain(acc, shared.scratch, keys - warp_key0, cols, [&](int k, int c, float value) {
        G& g = grad[(r + warp_key0 + k) * y_dim + c0 + c];
        g = from_float<G>(to_float(g) + value);
      });
  }
#endif
}

void check_tensor_core_l3(const char* op, DType dtype) {
  L3C_CHECK(dtype == DType::BF16, "ops::{}: the tensor-core L3 kernels take bf16, got {}", op, dtype_name(dtype));
}

unsigned column_blocks(int64_t columns) {
  const int64_t blocks = (columns + kTile - 1) / kTile;
  L3C_CHECK(blocks <= 65535, "ops::l3_lookup: {} columns are too many for the tensor-core kernels", columns);
  return static_cast<unsigned>(blocks);
}

}  // namespace

void l3_lookup_forward_tensor_cores(Tensor out, Tensor probs, Tensor x, Tensor w_k, Tensor w_v, Tensor group_offsets,
                                    Tensor row_offsets) {
  check_tensor_core_l3("l3_lookup_forward", x.dtype);
  const int64_t d = x.dim(-1), n = x.numel() / d, d_emb = w_v.dim(1), width = probs.dim(-1);
  const int64_t groups = group_offsets.numel() - 1;
  auto* kernel = grouped_rows_kernel<RowPass::Softmax>;
  allow_shared_bytes(kernel, kSharedBytes);
  launch(kernel, capped_blocks(n, 1), kThreads, kSharedBytes, static_cast<bf16*>(out.data),
         static_cast<float*>(probs.data), static_cast<const float*>(nullptr), static_cast<const bf16*>(x.data),
         static_cast<const bf16*>(w_k.data), static_cast<const bf16*>(w_v.data),
         static_cast<const int32_t*>(group_offsets.data), static_cast<const int32_t*>(row_offsets.data), n, groups, d,
         d_emb, width);
}

void l3_lookup_backward_tensor_cores(Tensor dx, Tensor dw_k, Tensor dw_v, Tensor dout, Tensor x, Tensor w_k,
                                     Tensor w_v, Tensor probs, Tensor group_offsets, Tensor row_offsets) {
  check_tensor_core_l3("l3_lookup_backward", x.dtype);
  const int64_t d = x.dim(-1), n = x.numel() / d, d_emb = w_v.dim(1), width = probs.dim(-1);
  const int64_t groups = group_offsets.numel() - 1, table_rows = w_k.dim(0);
  float* ds = static_cast<float*>(workspace(static_cast<size_t>(n * width) * sizeof(float)));  // (N, k)
  const int32_t* go = static_cast<const int32_t*>(group_offsets.data);
  const int32_t* ro = static_cast<const int32_t*>(row_offsets.data);
  const bf16* x16 = static_cast<const bf16*>(x.data);
  const bf16* dout16 = static_cast<const bf16*>(dout.data);
  const float* p = static_cast<const float*>(probs.data);
  auto* rows_kernel = grouped_rows_kernel<RowPass::SoftmaxBackward>;
  allow_shared_bytes(rows_kernel, kSharedBytes);
  launch(rows_kernel, capped_blocks(n, 1), kThreads, kSharedBytes, static_cast<bf16*>(dx.data), ds, p, dout16,
         static_cast<const bf16*>(w_v.data), static_cast<const bf16*>(w_k.data), go, ro, n, groups, d_emb, d, width);
  dispatch_gradient(x.dtype, dw_k.dtype, "l3_lookup_backward", [&](auto, auto grad_tag) {
    using G = typename decltype(grad_tag)::type;
    auto* table_kernel = grouped_table_kernel<G>;
    allow_shared_bytes(table_kernel, kSharedBytes);
    const unsigned table_blocks = capped_blocks(table_rows, 1);
    // dV before dK: with tied tables (dw_v is dw_k) both add into the same rows, in the CPU's order.
    launch(table_kernel, dim3(table_blocks, column_blocks(d_emb)), kThreads, kSharedBytes, static_cast<G*>(dw_v.data),
           p, dout16, go, ro, table_rows, groups, d_emb, width);
    launch(table_kernel, dim3(table_blocks, column_blocks(d)), kThreads, kSharedBytes, static_cast<G*>(dw_k.data),
           static_cast<const float*>(ds), x16, go, ro, table_rows, groups, d, width);
  });
}

}  // namespace l3c::ops::cuda
