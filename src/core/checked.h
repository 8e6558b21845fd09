// Overflow-checked integer arithmetic for sizes, offsets and element counts that come from files and configs.
// A result that does not fit (or a negative dimension) is a UserError naming `what`, so that a crafted value can
// never wrap around a bounds check: `checked_add(offset, length, "tensor w: data_offsets")`.
#pragma once
#include <cstdint>
#include <span>
#include <string_view>

#include "core/errors.h"

namespace l3c {

template <typename T>
T checked_add(T a, T b, std::string_view what) {
  T sum{};
  if (__builtin_add_overflow(a, b, &sum)) fail("{}: {} + {} overflows a {}-bit integer", what, a, b, 8 * sizeof(T));
  return sum;
}

template <typename T>
T checked_mul(T a, T b, std::string_view what) {
  T product{};
  if (__builtin_mul_overflow(a, b, &product))
    fail("{}: {} * {} overflows a {}-bit integer", what, a, b, 8 * sizeof(T));
  return product;
}

// The number of elements of a shape: every dimension >= 0, the product within int64_t.
inline int64_t checked_numel(std::span<const int64_t> shape, std::string_view what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("{}: negative dimension {}", what, d);
    n = checked_mul(n, d, what);
  }
  return n;
}

}  // namespace l3c
