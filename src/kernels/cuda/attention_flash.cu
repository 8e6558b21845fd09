// Causal grouped-query attention on tensor cores: FlashAttention-2's forward and backward with the CUDA WMMA API
// (16 x 16 x 16 bf16 tiles, fp32 accumulation), for bf16 tensors with head_dim 64 or 128 on sm_80 and later.
// The op contract is ops.h's attention_forward / attention_backward, the CPU reference kernels/cpu/attention.cpp,
// and attention.cu the CUDA-core kernels used for every other dtype and head size (attention_kernel_for in
// attention.cu chooses). No T x T matrix exists: scores live one (64 x 64) tile at a time in shared memory.
//
// Layout: q, out, dq (B, T, H, hd); k, v, dk, dv (B, T, Hkv, hd); lse (B, H, T) f32; query head h reads kv head
// h / (H / Hkv). A block has 4 warps and owns 64 rows (query rows, or keys for dK/dV), 16 per warp; the other
// operand streams through shared memory in tiles of 64 rows. Q, K, V, dO tiles are copied to shared memory as bf16
// (rows past T are zeros); every product runs on tensor cores with fp32 accumulators. The softmax needs per-row
// values, and the element-to-lane mapping of a WMMA fragment is unspecified, so a warp stores its score tile to
// its own shared scratch (f32), each row's statistics are computed there by two lanes (lane 2r and 2r + 1 own row
// r, the even and odd columns), and the probabilities go back to shared memory as bf16 to be loaded as the next
// product's operand.
//
// Forward (grid: query tiles x H x B): per key tile up to the block's last row: S = Q K^T (fp32), the online
// softmax update per row (running max m and sum l, fp32; the output accumulator, in registers, rescaled when the
// max grows), P rounded to bf16, O += P V. out = O / l, lse = m + log(l), as attention.cu.
//
// Backward, two kernels without atomics, probabilities recomputed from lse (p = exp(s * scale - lse)),
// D_i = dO_i . O_i recomputed where needed:
//   dK/dV (grid: key tiles x Hkv x B): a block owns 64 keys of one kv head and keeps their dK, dV in fp32
//     accumulator fragments; it walks every query head of the group and the query tiles at or after its first
//     key: S^T = K Q^T, dP^T = V dO^T, dS^T = P^T (dP^T - D) / sqrt(hd), dV += P^T dO, dK += dS^T Q.
//   dQ (grid: query tiles x H x B): a block owns 64 query rows and walks the key tiles up to its last row:
//     S = Q K^T, dP = dO V^T, dS = P (dP - D) / sqrt(hd), dQ += dS K.
// Every output element is written by one thread, each sum in a fixed order: results are deterministic.
//
// Precision: inputs are bf16, products exact, sums fp32. P and dS are rounded to bf16 to enter the second product
// of each pair (as FlashAttention does); the softmax statistics stay fp32. tests/test_cuda_ops.cpp compares with
// the CPU op and with the CUDA-core kernel in fp32 on the same (bf16-rounded) inputs.
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/internal.cuh"
#include "kernels/cuda/wmma.cuh"  // for an architecture below sm_80 the kernels compile to a trap

namespace l3c::ops::cuda {
namespace {

constexpr int kTile = 64;         // rows a block owns, and rows per streamed tile
constexpr int kWarps = 4;         // 16 of the block's rows each
constexpr int kThreads = 32 * kWarps;
constexpr int kFrag = 16;         // the WMMA tile side
constexpr int kPadBf16 = 8;       // per shared row: keeps rows 16-byte aligned (ldm a multiple of 8) and spreads banks
constexpr int kPadF32 = 4;        // the same for f32 rows (ldm a multiple of 4)
constexpr int kScoreLd = kTile + kPadF32;  // f32 scratch rows: a warp's 16 x 64 scores (or 4 fragments of output)
constexpr int kProbLd = kTile + kPadBf16;  // bf16 rows of P or dS (16 x 64 per warp)
static_assert(kTile == kWarps * kFrag, "each warp owns 16 of the block's rows");
constexpr unsigned kFullMask = 0xFFFFFFFFu;

using OperandA = wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, bf16, wmma::row_major>;
using OperandBt = wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::col_major>;  // X^T of row-major X
using OperandB = wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::row_major>;
using Accumulator = wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float>;

struct FlashDims : AttentionDims {
  __device__ int rows_from(int t0) const { return seq - t0 < kTile ? seq - t0 : kTile; }  // valid rows of a tile
};

// ---- shared memory ---------------------------------------------------------------------------------------
// Regions are carved from the dynamic shared memory in multiples of 128 bytes from a 128-byte aligned start
// (WMMA pointers must be 32-byte aligned).
constexpr size_t round128(size_t bytes) { return (bytes + 127) / 128 * 128; }
template <int HD>
struct Shared {
  static constexpr int kLd = HD + kPadBf16;                                           // bf16 rows of Q, K, V, dO
  static constexpr size_t kRowTile = round128(sizeof(bf16) * kTile * kLd);           // (64, hd) bf16
  static constexpr size_t kScores = round128(sizeof(float) * kFrag * kScoreLd);      // (16, 64) f32, per warp
  static constexpr size_t kProbs = round128(sizeof(bf16) * kFrag * kProbLd);         // (16, 64) bf16, per warp
  static constexpr size_t kRowStats = round128(sizeof(float) * kTile);               // (64) f32
  // Forward: Q, K, V tiles; per warp scores and P.
  static constexpr size_t kForward = 3 * kRowTile + kWarps * (kScores + kProbs);
  // dK/dV: K, V, Q, dO tiles, lse and D of the query tile; per warp scores, dP, P and dS.
  static constexpr size_t kBackwardKv = 4 * kRowTile + 2 * kRowStats + kWarps * (2 * kScores + 2 * kProbs);
  // dQ: Q, dO, K, V tiles; per warp scores, dP and dS.
  static constexpr size_t kBackwardQ = 4 * kRowTile + kWarps * (2 * kScores + kProbs);
};
constexpr size_t kSharedAlignSlack = 128;

__device__ __forceinline__ unsigned char* aligned_shared_base() {
  L3C_DYNAMIC_SHARED(unsigned char, raw);
  const uintptr_t address = reinterpret_cast<uintptr_t>(raw);
  return raw + ((128 - address % 128) % 128);
}
// Hands out consecutive regions of the block's dynamic shared memory, in the sizes of Shared<HD>.
template <int HD>
class SharedCarve {
 public:
  __device__ SharedCarve() : next_(aligned_shared_base()) {}
  __device__ bf16* row_tile() { return take<bf16>(Shared<HD>::kRowTile); }     // (64, hd + pad) bf16
  __device__ float* row_stats() { return take<float>(Shared<HD>::kRowStats); }  // (64) f32
  // Warp `warp`'s (16, 64) f32 scratch of a region with one per warp.
  __device__ float* warp_scores(int warp) {
    return take<float>(kWarps * Shared<HD>::kScores) + warp * Shared<HD>::kScores / sizeof(float);
  }
  // Warp `warp`'s (16, 64) bf16 operand of a region with one per warp.
  __device__ bf16* warp_probs(int warp) {
    return take<bf16>(kWarps * Shared<HD>::kProbs) + warp * Shared<HD>::kProbs / sizeof(bf16);
  }

 private:
  template <typename T>
  __device__ T* take(size_t bytes) {
    T* p = reinterpret_cast<T*>(next_);
    next_ += bytes;
    return p;
  }
  unsigned char* next_;
};
// Row `row` of a (64, hd + pad) shared tile.
template <int HD>
__device__ __forceinline__ const bf16* tile_row(const bf16* tile, int row) {
  return tile + row * Shared<HD>::kLd;
}

// ---- tiles ---------------------------------------------------------------------------------------------
// 16-byte copies (8 bf16): the tensors' rows are hd * 2 bytes, a multiple of 16, and their bases are 16-byte aligned
// (checked on the host).
__device__ __forceinline__ void copy16(bf16* dst, const bf16* src) {
#ifdef L3C_CUDA_EMULATION
  std::memcpy(dst, src, 16);
#else
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#endif
}
__device__ __forceinline__ void zero16(bf16* dst) {
#ifdef L3C_CUDA_EMULATION
  std::memset(dst, 0, 16);
#else
  *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
#endif
}

// tile (64, hd + pad) = rows [0, valid_rows) of src (row r at src + r * row_stride), zeros below. Every thread of
// the block takes part.
template <int HD>
__device__ __forceinline__ void load_rows(bf16* tile, const bf16* src, int64_t row_stride, int valid_rows) {
  constexpr int kChunksPerRow = HD / 8;
  for (int idx = threadIdx.x; idx < kTile * kChunksPerRow; idx += kThreads) {
    const int row = idx / kChunksPerRow, chunk = idx % kChunksPerRow;
    bf16* dst = tile + row * Shared<HD>::kLd + chunk * 8;
    if (row < valid_rows) copy16(dst, src + row * row_stride + chunk * 8);
    else zero16(dst);
  }
}

// Rows t0 .. t0 + 63 of head `head` (of `heads`) of two (B, T, heads, HD) tensors a and b into tile_a and tile_b
// (rows past T are zeros): the keys and values of a kv head, or the query rows of a head and their dO.
template <int HD>
__device__ __forceinline__ void load_head_tiles(bf16* tile_a, bf16* tile_b, const bf16* a, const bf16* b,
                                                const FlashDims& dim, int batch, int t0, int head, int heads) {
  const int64_t stride = static_cast<int64_t>(heads) * HD;
  const int64_t offset = (static_cast<int64_t>(batch) * dim.seq + t0) * stride + static_cast<int64_t>(head) * HD;
  load_rows<HD>(tile_a, a + offset, stride, dim.rows_from(t0));
  load_rows<HD>(tile_b, b + offset, stride, dim.rows_from(t0));
}

// scores (16, 64) f32 = A (16, hd) B^T, with A the warp's 16 rows of a row-major (., hd + pad) tile and B the 64
// rows of another: S = Q K^T, S^T = K Q^T, dP = dO V^T, dP^T = V dO^T.
template <int HD>
__device__ __forceinline__ void product_with_transpose(float* scores, const bf16* a_rows, const bf16* b_tile) {
  constexpr int kLd = Shared<HD>::kLd;
  for (int n = 0; n < kTile / kFrag; ++n) {
    Accumulator acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kk = 0; kk < HD / kFrag; ++kk) {
      OperandA a;
      OperandBt bt;
      wmma::load_matrix_sync(a, a_rows + kk * kFrag, kLd);
      wmma::load_matrix_sync(bt, b_tile + n * kFrag * kLd + kk * kFrag, kLd);
      wmma::mma_sync(acc, a, bt, acc);
    }
    wmma::store_matrix_sync(scores + n * kFrag, acc, kScoreLd, wmma::mem_row_major);
  }
}

// acc[n] (16, 16 of hd) += P (16, 64) X (64, hd) for the 16-column blocks n of X: O += P V, dV += P^T dO,
// dK += dS^T Q, dQ += dS K. probs: the warp's (16, 64) bf16 operand; x_tile: a (64, hd + pad) bf16 tile.
template <int HD, int Blocks>
__device__ __forceinline__ void accumulate_product(Accumulator (&acc)[Blocks], int first_block, const bf16* probs,
                                                   const bf16* x_tile) {
  constexpr int kLd = Shared<HD>::kLd;
  for (int kk = 0; kk < kTile / kFrag; ++kk) {
    OperandA p;
    wmma::load_matrix_sync(p, probs + kk * kFrag, kProbLd);
    for (int n = 0; n < Blocks; ++n) {
      OperandB x;
      wmma::load_matrix_sync(x, x_tile + kk * kFrag * kLd + (first_block + n) * kFrag, kLd);
      wmma::mma_sync(acc[n], p, x, acc[n]);
    }
  }
}

// Writes the warp's (16, hd) accumulators as bf16 to rows [0, valid_rows) of dst (row r at dst + r * row_stride),
// through the warp's f32 scratch, four fragments (64 columns) at a time; 32 lanes write 32 consecutive elements.
template <int HD>
__device__ __forceinline__ void write_rows(bf16* dst, int64_t row_stride, int valid_rows,
                                           const Accumulator (&acc)[HD / kFrag], float* scratch, int lane) {
  for (int n0 = 0; n0 < HD / kFrag; n0 += kTile / kFrag) {
    for (int n = 0; n < kTile / kFrag; ++n)
      wmma::store_matrix_sync(scratch + n * kFrag, acc[n0 + n], kScoreLd, wmma::mem_row_major);
    __syncwarp();
    for (int idx = lane; idx < kFrag * kTile; idx += 32) {
      const int row = idx / kTile, col = idx % kTile;
      if (row < valid_rows) dst[row * row_stride + n0 * kFrag + col] = from_float<bf16>(scratch[row * kScoreLd + col]);
    }
    __syncwarp();
  }
}

// The rows of a block of the forward and dQ grids (query tiles x H x B) that a lane works on: rows i0 .. i0 + 63 of
// query head h (kv head g) of batch b, the warp's 16 from warp_row0, the lane's row i = warp_row0 + r and its columns
// half + 2e; last_row: the block's last row below T.
struct WarpQueryRows {
  int i0, h, b, g, warp_row0, r, half, i, last_row;
};
__device__ __forceinline__ WarpQueryRows warp_query_rows(const FlashDims& dim, int warp, int lane) {
  const int i0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, g = h / dim.group();
  const int warp_row0 = i0 + warp * kFrag;
  const int r = lane / 2, half = lane % 2;
  const int last_row = (i0 + kTile < dim.seq ? i0 + kTile : dim.seq) - 1;
  return {i0, h, b, g, warp_row0, r, half, warp_row0 + r, last_row};
}

// Keys and values j0 .. j0 + 63 of kv head g into k_tile and v_tile, between two barriers: every warp is done with
// the previous tiles before (the first time: the block's own tiles are complete), the new ones are complete after.
template <int HD>
__device__ __forceinline__ void load_key_value_tiles(bf16* k_tile, bf16* v_tile, const bf16* k, const bf16* v,
                                                     const FlashDims& dim, int b, int j0, int g) {
  __syncthreads();
  load_head_tiles<HD>(k_tile, v_tile, k, v, dim, b, j0, g, dim.kv_heads);
  __syncthreads();
}

// ---- forward -----------------------------------------------------------------------------------------------
template <int HD>
__global__ void flash_forward_kernel(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q,
                                     const bf16* __restrict__ k, const bf16* __restrict__ v, FlashDims dim,
                                     float scale) {
#ifndef L3C_WMMA_BF16_UNAVAILABLE
  SharedCarve<HD> carve;
  // (64, hd) tiles: the block's query rows, keys j0 .., values j0 ..
  bf16 *q_tile = carve.row_tile(), *k_tile = carve.row_tile(), *v_tile = carve.row_tile();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scores = carve.warp_scores(warp);  // (16, 64) f32
  bf16* probs = carve.warp_probs(warp);     // (16, 64) bf16
  const auto [i0, h, b, g, warp_row0, r, half, i, last_row] = warp_query_rows(dim, warp, lane);

  load_rows<HD>(q_tile, q + dim.q_offset(b, i0, h), static_cast<int64_t>(dim.heads) * HD, dim.rows_from(i0));
  const bf16* q_rows = tile_row<HD>(q_tile, warp * kFrag);  // the warp's (16, hd) queries

  float o[HD / 2];  // columns half + 2e of row i, unnormalised
#pragma unroll
  for (int e = 0; e < HD / 2; ++e) o[e] = 0.0f;
  float m = -INFINITY, l = 0.0f;

  for (int j0 = 0; j0 <= last_row; j0 += kTile) {
    load_key_value_tiles<HD>(k_tile, v_tile, k, v, dim, b, j0, g);
    if (j0 > warp_row0 + kFrag - 1) continue;  // every key of the tile comes after this warp's rows

    product_with_transpose<HD>(scores, q_rows, k_tile);  // S (16, 64) = Q K^T, fp32
    __syncwarp();

    // Online softmax over this tile for row i: the lane's 32 columns, then the pair's; masked keys give p = 0.
    float tile_max = -INFINITY;
#pragma unroll 8
    for (int e = 0; e < kTile / 2; ++e) {
      const int c = half + 2 * e;
      if (j0 + c <= i) tile_max = fmaxf(tile_max, scores[r * kScoreLd + c] * scale);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullMask, tile_max, 1));
    // Finite: key 0 is in the first tile and visible to every row, so m is finite from then on.
    const float new_max = fmaxf(m, tile_max);
    const float rescale = expf(m - new_max);  // 0 on the first tile (m = -inf)
    float sum = 0.0f;
#pragma unroll 8
    for (int e = 0; e < kTile / 2; ++e) {
      const int c = half + 2 * e;
      const float p = j0 + c <= i ? expf(scores[r * kScoreLd + c] * scale - new_max) : 0.0f;
      sum += p;
      probs[r * kProbLd + c] = from_float<bf16>(p);
    }
    sum += __shfl_xor_sync(kFullMask, sum, 1);
    l = l * rescale + sum;
    m = new_max;
#pragma unroll
    for (int e = 0; e < HD / 2; ++e) o[e] *= rescale;
    __syncwarp();  // P is complete, and the scores are read

    // O += P V, 64 output columns at a time through the scratch.
    for (int n0 = 0; n0 < HD / kFrag; n0 += kTile / kFrag) {
      Accumulator pv[kTile / kFrag];
      for (int n = 0; n < kTile / kFrag; ++n) wmma::fill_fragment(pv[n], 0.0f);
      accumulate_product<HD>(pv, n0, probs, v_tile);
      for (int n = 0; n < kTile / kFrag; ++n)
        wmma::store_matrix_sync(scores + n * kFrag, pv[n], kScoreLd, wmma::mem_row_major);
      __syncwarp();
#pragma unroll
      for (int e = 0; e < kTile / 2; ++e) o[n0 * kFrag / 2 + e] += scores[r * kScoreLd + half + 2 * e];
      __syncwarp();
    }
  }

  if (i < dim.seq) {
    const float inv = 1.0f / l;
    bf16* row = out + dim.q_offset(b, i, h);
#pragma unroll
    for (int e = 0; e < HD / 2; ++e) row[half + 2 * e] = from_float<bf16>(o[e] * inv);
    if (half == 0) lse[dim.lse_offset(b, h, i)] = m + logf(l);
  }
#else
  __trap();
#endif
}

// ---- backward ----------------------------------------------------------------------------------------------
// The tensors both backward kernels read: dO, Q, O (B, T, H, hd) bf16, K, V (B, T, Hkv, hd) bf16, lse (B, H, T) f32.
struct BackwardInputs {
  const bf16* __restrict__ dout;
  const bf16* __restrict__ q;
  const bf16* __restrict__ k;
  const bf16* __restrict__ v;
  const bf16* __restrict__ out;
  const float* __restrict__ lse;
};

// D_i = dO_i . O_i for the warp's 16 rows of a tile starting at row t0 of head h: lane pair (2r, 2r + 1) sums row r,
// dO from the shared tile, O from global memory. Returns the row's D to both lanes of the pair.
template <int HD>
__device__ __forceinline__ float row_delta(const bf16* dout_tile_row, const bf16* __restrict__ out, const FlashDims& dim,
                                           int b, int t, int h, int half) {
  float part = 0.0f;
  if (t < dim.seq) {
    const bf16* o_row = out + dim.q_offset(b, t, h);
#pragma unroll
    for (int e = 0; e < HD / 2; ++e) part += to_float(dout_tile_row[half + 2 * e]) * to_float(o_row[half + 2 * e]);
  }
  return part + __shfl_xor_sync(kFullMask, part, 1);
}

template <int HD>
__global__ void flash_backward_dkv_kernel(bf16* __restrict__ dk, bf16* __restrict__ dv, BackwardInputs in,
                                          FlashDims dim, float scale) {
#ifndef L3C_WMMA_BF16_UNAVAILABLE
  SharedCarve<HD> carve;
  bf16 *k_tile = carve.row_tile(), *v_tile = carve.row_tile();         // (64, hd) the block's keys, their values
  bf16 *q_tile = carve.row_tile(), *dout_tile = carve.row_tile();      // (64, hd) query rows i0 .. of head h, dO
  float *lse_tile = carve.row_stats(), *delta_tile = carve.row_stats();  // (64) their lse and D
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scores = carve.warp_scores(warp);  // (16, 64) S^T
  float* dprobs = carve.warp_scores(warp);  // (16, 64) dP^T
  bf16* probs = carve.warp_probs(warp);     // (16, 64) P^T
  bf16* dscores = carve.warp_probs(warp);   // (16, 64) dS^T

  const int j0 = blockIdx.x * kTile, g = blockIdx.y, b = blockIdx.z;
  const int r = lane / 2, half = lane % 2;  // this lane's key (row of the warp's 16) and its columns half + 2e
  const int j = j0 + warp * kFrag + r;
  const int64_t kv_stride = static_cast<int64_t>(dim.kv_heads) * HD;

  load_head_tiles<HD>(k_tile, v_tile, in.k, in.v, dim, b, j0, g, dim.kv_heads);
  Accumulator dk_acc[HD / kFrag], dv_acc[HD / kFrag];  // the warp's (16, hd) dK and dV
  for (int n = 0; n < HD / kFrag; ++n) {
    wmma::fill_fragment(dk_acc[n], 0.0f);
    wmma::fill_fragment(dv_acc[n], 0.0f);
  }
  const bf16* k_rows = tile_row<HD>(k_tile, warp * kFrag);
  const bf16* v_rows = tile_row<HD>(v_tile, warp * kFrag);

  for (int hr = 0; hr < dim.group(); ++hr) {
    const int h = g * dim.group() + hr;
    // Query rows before the block's first key see none of its keys (tiles of queries and keys are both 64 rows).
    for (int i0 = j0; i0 < dim.seq; i0 += kTile) {
      __syncthreads();  // every warp is done with the previous query tile
      load_head_tiles<HD>(q_tile, dout_tile, in.q, in.dout, dim, b, i0, h, dim.heads);
      if (threadIdx.x < kTile) {
        const int i = i0 + static_cast<int>(threadIdx.x);
        lse_tile[threadIdx.x] = i < dim.seq ? in.lse[dim.lse_offset(b, h, i)] : 0.0f;
      }
      __syncthreads();
      {  // D for the tile's rows: warp w computes rows 16w .. 16w + 15
        const int row = warp * kFrag + r;
        const float delta = row_delta<HD>(tile_row<HD>(dout_tile, row), in.out, dim, b, i0 + row, h, half);
        if (half == 0) delta_tile[row] = delta;
      }
      __syncthreads();

      product_with_transpose<HD>(scores, k_rows, q_tile);     // S^T (16 keys, 64 queries)
      product_with_transpose<HD>(dprobs, v_rows, dout_tile);  // dP^T
      __syncwarp();
#pragma unroll 4
      for (int e = 0; e < kTile / 2; ++e) {
        const int c = half + 2 * e, i = i0 + c;
        const bool visible = j <= i && i < dim.seq;  // keys past T are zero rows, never written back
        const float p = visible ? expf(scores[r * kScoreLd + c] * scale - lse_tile[c]) : 0.0f;
        const float ds = p * (dprobs[r * kScoreLd + c] - delta_tile[c]) * scale;
        probs[r * kProbLd + c] = from_float<bf16>(p);
        dscores[r * kProbLd + c] = from_float<bf16>(ds);
      }
      __syncwarp();
      accumulate_product<HD>(dv_acc, 0, probs, dout_tile);  // dV += P^T dO
      accumulate_product<HD>(dk_acc, 0, dscores, q_tile);   // dK += dS^T Q
    }
  }

  const int warp_key0 = j0 + warp * kFrag;
  if (warp_key0 < dim.seq) {  // warp-uniform
    write_rows<HD>(dk + dim.kv_offset(b, warp_key0, g), kv_stride, dim.seq - warp_key0, dk_acc, scores, lane);
    write_rows<HD>(dv + dim.kv_offset(b, warp_key0, g), kv_stride, dim.seq - warp_key0, dv_acc, scores, lane);
  }
#else
  __trap();
#endif
}

template <int HD>
__global__ void flash_backward_dq_kernel(bf16* __restrict__ dq, BackwardInputs in, FlashDims dim, float scale) {
#ifndef L3C_WMMA_BF16_UNAVAILABLE
  SharedCarve<HD> carve;
  bf16 *q_tile = carve.row_tile(), *dout_tile = carve.row_tile();  // (64, hd) the block's query rows, their dO
  bf16 *k_tile = carve.row_tile(), *v_tile = carve.row_tile();     // (64, hd) keys j0 .., values j0 ..
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scores = carve.warp_scores(warp);  // (16, 64) S
  float* dprobs = carve.warp_scores(warp);  // (16, 64) dP
  bf16* dscores = carve.warp_probs(warp);   // (16, 64) dS
  const auto [i0, h, b, g, warp_row0, r, half, i, last_row] = warp_query_rows(dim, warp, lane);
  const int64_t q_stride = static_cast<int64_t>(dim.heads) * HD;

  load_head_tiles<HD>(q_tile, dout_tile, in.q, in.dout, dim, b, i0, h, dim.heads);
  __syncthreads();
  const float delta = row_delta<HD>(tile_row<HD>(dout_tile, warp * kFrag + r), in.out, dim, b, i, h, half);
  const float lse_i = i < dim.seq ? in.lse[dim.lse_offset(b, h, i)] : 0.0f;
  Accumulator dq_acc[HD / kFrag];  // the warp's (16, hd) dQ
  for (int n = 0; n < HD / kFrag; ++n) wmma::fill_fragment(dq_acc[n], 0.0f);
  const bf16* q_rows = tile_row<HD>(q_tile, warp * kFrag);
  const bf16* dout_rows = tile_row<HD>(dout_tile, warp * kFrag);

  for (int j0 = 0; j0 <= last_row; j0 += kTile) {
    load_key_value_tiles<HD>(k_tile, v_tile, in.k, in.v, dim, b, j0, g);
    if (j0 > warp_row0 + kFrag - 1) continue;  // every key of the tile comes after this warp's rows

    product_with_transpose<HD>(scores, q_rows, k_tile);     // S (16 queries, 64 keys)
    product_with_transpose<HD>(dprobs, dout_rows, v_tile);  // dP
    __syncwarp();
#pragma unroll 4
    for (int e = 0; e < kTile / 2; ++e) {
      const int c = half + 2 * e;
      const bool visible = j0 + c <= i && i < dim.seq;
      const float p = visible ? expf(scores[r * kScoreLd + c] * scale - lse_i) : 0.0f;
      dscores[r * kProbLd + c] = from_float<bf16>(p * (dprobs[r * kScoreLd + c] - delta) * scale);
    }
    __syncwarp();
    accumulate_product<HD>(dq_acc, 0, dscores, k_tile);  // dQ += dS K
  }

  if (warp_row0 < dim.seq)  // warp-uniform
    write_rows<HD>(dq + dim.q_offset(b, warp_row0, h), q_stride, dim.seq - warp_row0, dq_acc, scores, lane);
#else
  __trap();
#endif
}

FlashDims flash_dims_of(const Tensor& q, const Tensor& k) {
  const FlashDims dim{attention_dims(q, k, 65535 * kTile, "tensor-core kernels")};
  L3C_CHECK(dim.batch <= 65535 && dim.heads <= 65535, "ops::attention: batch {} or heads {} above 65535", dim.batch,
            dim.heads);
  return dim;
}

void check_flash_inputs(const char* op, DType dtype, int hd, std::initializer_list<const Tensor*> tensors) {
  L3C_CHECK(tensor_core_attention_supports(dtype, hd),
            "ops::{}: the tensor-core kernels take bf16 with head_dim 64 or 128, got {} with head_dim {}", op,
            dtype_name(dtype), hd);
  for (const Tensor* t : tensors)
    L3C_CHECK(reinterpret_cast<uintptr_t>(t->data) % 16 == 0,
              "ops::{}: the tensor-core kernels need 16-byte aligned tensors", op);
}

// Calls fn(Int<HD>) for head_dim 64 or 128.
template <int V>
using Int = std::integral_constant<int, V>;
template <typename Fn>
void dispatch_flash_head_dim(int hd, Fn&& fn) {
  if (hd == 64) return fn(Int<64>{});
  if (hd == 128) return fn(Int<128>{});
  L3C_CHECK(false, "ops::attention: the tensor-core kernels take head_dim 64 or 128, got {}", hd);
}

}  // namespace

bool tensor_core_attention_supports(DType dtype, int64_t head_dim) {
  return dtype == DType::BF16 && (head_dim == 64 || head_dim == 128);
}

void attention_forward_tensor_cores(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v) {
  const FlashDims dim = flash_dims_of(q, k);
  check_flash_inputs("attention_forward", q.dtype, dim.hd, {&out, &q, &k, &v});
  const float scale = dim.scale();
  const dim3 grid((dim.seq + kTile - 1) / kTile, dim.heads, dim.batch);
  dispatch_flash_head_dim(dim.hd, [&](auto hd) {
    constexpr int HD = decltype(hd)::value;
    launch_with_shared(flash_forward_kernel<HD>, grid, kThreads, Shared<HD>::kForward + kSharedAlignSlack,
                       static_cast<bf16*>(out.data), static_cast<float*>(lse.data), static_cast<const bf16*>(q.data),
                       static_cast<const bf16*>(k.data), static_cast<const bf16*>(v.data), dim, scale);
  });
}

void attention_backward_tensor_cores(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                     Tensor out, Tensor lse) {
  const FlashDims dim = flash_dims_of(q, k);
  check_flash_inputs("attention_backward", q.dtype, dim.hd, {&dq, &dk, &dv, &dout, &q, &k, &v, &out});
  const float scale = dim.scale();
  const unsigned tiles = (dim.seq + kTile - 1) / kTile;
  const BackwardInputs in{static_cast<const bf16*>(dout.data), static_cast<const bf16*>(q.data),
                          static_cast<const bf16*>(k.data), static_cast<const bf16*>(v.data),
                          static_cast<const bf16*>(out.data), static_cast<const float*>(lse.data)};
  dispatch_flash_head_dim(dim.hd, [&](auto hd) {
    constexpr int HD = decltype(hd)::value;
    launch_with_shared(flash_backward_dkv_kernel<HD>, dim3(tiles, dim.kv_heads, dim.batch), kThreads,
                       Shared<HD>::kBackwardKv + kSharedAlignSlack, static_cast<bf16*>(dk.data),
                       static_cast<bf16*>(dv.data), in, dim, scale);
    launch_with_shared(flash_backward_dq_kernel<HD>, dim3(tiles, dim.heads, dim.batch), kThreads,
                       Shared<HD>::kBackwardQ + kSharedAlignSlack, static_cast<bf16*>(dq.data), in, dim, scale);
  });
}

}  // namespace l3c::ops::cuda
