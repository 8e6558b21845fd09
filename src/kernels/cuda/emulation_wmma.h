// The warp matrix functions of CUDA's <mma.h> (namespace nvcuda::wmma) on the host emulation of CUDA
// (emulation.h includes this header): the subset the tensor-core kernels use, with CUDA's documented semantics and
// preconditions checked, so that a kernel built on it runs, and is checked, on the CPU.
//
// What exists: 16 x 16 x 16 bf16 tiles with fp32 accumulation, the shape and types of attention_flash.cu:
//   fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major | col_major>    A (M x K)
//   fragment<matrix_b, 16, 16, 16, __nv_bfloat16, row_major | col_major>    B (K x N)
//   fragment<accumulator, 16, 16, 16, float>                                C, D (M x N)
//   fill_fragment, load_matrix_sync, store_matrix_sync (layouts mem_row_major, mem_col_major), mma_sync.
// Any other shape or type does not compile (the primary template has no definition).
//
// Semantics, as CUDA documents them:
// - load_matrix_sync(a, ptr, ldm): element (r, c) of the tile is ptr[r * ldm + c] for row_major, ptr[c * ldm + r]
//   for col_major (ldm: elements between consecutive rows, or columns). The accumulator's layout is an argument.
// - store_matrix_sync(ptr, c, ldm, layout): the inverse.
// - mma_sync(d, a, b, c): d = a b + c; d may be c.
// - ptr must be 256-bit (32-byte) aligned and ldm a multiple of 16 bytes (8 bf16 elements, 4 floats); ptr, ldm,
//   the layout and the template arguments must be the same in every lane, and every lane of the warp must call
//   the _sync functions together. Each of these is checked here: a violation ends the process with a message, and a
//   call that some lanes never reach is a deadlock, as for the other warp collectives.
//
// How fragments are held: CUDA spreads a tile over the 32 lanes of a warp in an unspecified mapping, so portable
// code never relies on which lane holds which element. Here every lane holds the whole tile, and the _sync
// functions check that all lanes hold the same tile (a fragment that differs between lanes could only come from
// lane-dependent code, which would compute something else on a GPU). Element-wise access through fragment.x[] is
// therefore not offered (x, num_elements do not exist: code that uses them does not compile against the emulation),
// and neither are the other shapes, types and the sub-byte and double variants.
//
// Numerics: bf16 x bf16 products are exact in fp32. The hardware's order and rounding of the sum are unspecified;
// here the 16 products of an element are added in k order in fp32 and c is added last. An accumulator that was
// never filled or loaded holds NaN, so reading one shows.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <type_traits>

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment;  // only the specialisations below exist

}  // namespace nvcuda::wmma

namespace l3c_emu::wmma {

constexpr int kTileSide = 16;

// The tile every lane holds: element (row, col) of the 16 x 16 matrix.
template <typename T>
struct Tile {
  T element[kTileSide][kTileSide];
};

inline float to_f32(float x) { return x; }
inline float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
inline T from_f32(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else return __float2bfloat16(x);
}
template <typename T>
inline uint64_t bits_of(T x) {
  uint64_t bits = 0;
  std::memcpy(&bits, &x, sizeof x);
  return bits;
}

// FNV-1a over the tile's bits, and over a call's arguments: what every lane must agree on.
template <typename T>
inline uint64_t digest(const Tile<T>& tile, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (int r = 0; r < kTileSide; ++r)
    for (int c = 0; c < kTileSide; ++c) h = (h ^ bits_of(tile.element[r][c])) * 1099511628211ull;
  return h;
}
inline uint64_t mix(uint64_t h, uint64_t value) { return (h ^ value) * 1099511628211ull + 0x9E3779B97F4A7C15ull; }

// A warp-wide call: every lane deposits what it must agree on; all 32 lanes must arrive (else: deadlock) with the
// same value (else: the message names the function).
inline void warp_agree(uint64_t value, const char* function) {
  const uint64_t* all = warp_gather(0xFFFFFFFFu, value);
  for (int lane = 0; lane < 32; ++lane)
    if (all[lane] != value) {
      char message[256];
      std::snprintf(message, sizeof message,
                    "wmma::%s: lanes of a warp differ in their arguments or fragments (CUDA requires the same "
                    "pointer, ldm, layout and fragment contents in every lane)",
                    function);
      die(message);
    }
}

template <typename T>
inline void check_memory_operand(const void* ptr, unsigned ldm, const char* function) {
  char message[256];
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0) {
    std::snprintf(message, sizeof message, "wmma::%s: the pointer %p is not 256-bit (32-byte) aligned", function, ptr);
    die(message);
  }
  if ((ldm * sizeof(T)) % 16 != 0 || ldm < static_cast<unsigned>(kTileSide)) {
    std::snprintf(message, sizeof message,
                  "wmma::%s: ldm %u must be at least 16 and a multiple of 16 bytes (%zu elements of this type)",
                  function, ldm, 16 / sizeof(T));
    die(message);
  }
}

// Reads the tile at ptr (row-major: element (r, c) at ptr[r * ldm + c]; column-major: at ptr[c * ldm + r]).
// kind: which fragment type (matrix_a, matrix_b, accumulator), so that lanes that load into different types differ.
enum class Kind : uint64_t { MatrixA = 1, MatrixB = 2, Accumulator = 3 };
template <typename T>
inline void load(Tile<T>& tile, const T* ptr, unsigned ldm, bool row_major_layout, Kind kind, const char* function) {
  check_memory_operand<T>(ptr, ldm, function);
  warp_agree(mix(mix(mix(reinterpret_cast<uintptr_t>(ptr), ldm), row_major_layout), static_cast<uint64_t>(kind)),
             function);
  for (int r = 0; r < kTileSide; ++r)
    for (int c = 0; c < kTileSide; ++c)
      tile.element[r][c] = row_major_layout ? ptr[static_cast<size_t>(r) * ldm + c] : ptr[static_cast<size_t>(c) * ldm + r];
}

// Access to a fragment's tile for the functions below (kernels cannot reach it).
struct FragmentAccess {
  template <typename Fragment>
  static auto& tile(Fragment& f) {
    return f.tile_;
  }
  template <typename Fragment>
  static const auto& tile(const Fragment& f) {
    return f.tile_;
  }
};

}  // namespace l3c_emu::wmma

namespace nvcuda::wmma {

// bf16 operand tiles A (M x K) and B (K x N), in row- or column-major order in memory.
template <typename Use, typename Layout>
class fragment<Use, 16, 16, 16, __nv_bfloat16, Layout> {
  static_assert(std::is_same_v<Use, matrix_a> || std::is_same_v<Use, matrix_b>,
                "bf16 fragments are matrix_a or matrix_b operands (accumulators are float)");
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>,
                "a matrix_a or matrix_b fragment needs the row_major or col_major layout");

 public:
  using element_type = __nv_bfloat16;
  fragment() {
    const __nv_bfloat16 nan = __float2bfloat16(std::numeric_limits<float>::quiet_NaN());
    for (auto& row : tile_.element)
      for (auto& e : row) e = nan;
  }

 private:
  friend struct l3c_emu::wmma::FragmentAccess;
  l3c_emu::wmma::Tile<__nv_bfloat16> tile_;
};

// fp32 accumulator tiles C, D (M x N); their layout in memory is given to load and store.
template <>
class fragment<accumulator, 16, 16, 16, float, void> {
 public:
  using element_type = float;
  fragment() {
    for (auto& row : tile_.element)
      for (auto& e : row) e = std::numeric_limits<float>::quiet_NaN();
  }

 private:
  friend struct l3c_emu::wmma::FragmentAccess;
  l3c_emu::wmma::Tile<float> tile_;
};

// Every element of the fragment = value (CUDA: called by every lane with the same value; not a warp barrier).
template <typename Use, typename T, typename Layout, typename V>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, const V& value) {
  const T v = l3c_emu::wmma::from_f32<T>(l3c_emu::wmma::to_f32(value));
  for (auto& row : l3c_emu::wmma::FragmentAccess::tile(f).element)
    for (auto& e : row) e = v;
}

template <typename Use, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f, const __nv_bfloat16* ptr,
                             unsigned ldm) {
  using l3c_emu::wmma::Kind;
  l3c_emu::wmma::load(l3c_emu::wmma::FragmentAccess::tile(f), ptr, ldm, std::is_same_v<Layout, row_major>,
                      std::is_same_v<Use, matrix_a> ? Kind::MatrixA : Kind::MatrixB, "load_matrix_sync");
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* ptr, unsigned ldm,
                             layout_t layout) {
  l3c_emu::wmma::load(l3c_emu::wmma::FragmentAccess::tile(f), ptr, ldm, layout == mem_row_major,
                      l3c_emu::wmma::Kind::Accumulator, "load_matrix_sync");
}

inline void store_matrix_sync(float* ptr, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  using namespace l3c_emu::wmma;
  const Tile<float>& tile = FragmentAccess::tile(f);
  check_memory_operand<float>(ptr, ldm, "store_matrix_sync");
  warp_agree(digest(tile, mix(mix(reinterpret_cast<uintptr_t>(ptr), ldm), layout)), "store_matrix_sync");
  for (int r = 0; r < kTileSide; ++r)
    for (int c = 0; c < kTileSide; ++c)
      ptr[layout == mem_row_major ? static_cast<size_t>(r) * ldm + c : static_cast<size_t>(c) * ldm + r] =
          tile.element[r][c];
}

// d = a b + c (d may be c).
template <typename LayoutA, typename LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  using namespace l3c_emu::wmma;
  const Tile<__nv_bfloat16>& ta = FragmentAccess::tile(a);
  const Tile<__nv_bfloat16>& tb = FragmentAccess::tile(b);
  const Tile<float>& tc = FragmentAccess::tile(c);
  warp_agree(digest(ta, digest(tb, digest(tc, 0))), "mma_sync");
  float a_f32[kTileSide][kTileSide], b_f32[kTileSide][kTileSide];
  for (int r = 0; r < kTileSide; ++r)
    for (int col = 0; col < kTileSide; ++col) {
      a_f32[r][col] = __bfloat162float(ta.element[r][col]);
      b_f32[r][col] = __bfloat162float(tb.element[r][col]);
    }
  Tile<float> result;
  for (int m = 0; m < kTileSide; ++m) {
    float sums[kTileSide] = {};
    for (int k = 0; k < kTileSide; ++k)
      for (int n = 0; n < kTileSide; ++n) sums[n] += a_f32[m][k] * b_f32[k][n];  // exact products, fp32 sums in k order
    for (int n = 0; n < kTileSide; ++n) result.element[m][n] = sums[n] + tc.element[m][n];
  }
  FragmentAccess::tile(d) = result;
}

}  // namespace nvcuda::wmma
