// Counter-based random numbers (Philox4x32-10): every draw is a pure function of a key and a counter,
// so a value never depends on how many values were drawn before it. Keys are built from
// (seed, purpose, and whatever indexes the use: parameter id, step, rank), which makes initialisation
// and data order reproducible on any thread count and resumable at any step.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>

namespace l3c {

// What a stream of random numbers is for: part of every key so that uses never share a stream.
enum class RngPurpose : uint32_t { Init = 1, Data = 2, Sample = 3, Test = 4 };

class Philox {
 public:
  Philox(uint64_t seed, RngPurpose purpose, uint64_t stream = 0)
      : key_{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)},
        stream_hi_(static_cast<uint32_t>(purpose)), stream_(stream) {}

  // Four 32-bit random words for counter value `index`.
  std::array<uint32_t, 4> block(uint64_t index) const {
    std::array<uint32_t, 4> ctr{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                                static_cast<uint32_t>(stream_), static_cast<uint32_t>(stream_ >> 32) ^ (stream_hi_ << 24)};
    std::array<uint32_t, 2> key = key_;
    key[1] ^= stream_hi_;
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = uint64_t{0xD2511F53} * ctr[0];
      const uint64_t p1 = uint64_t{0xCD9E8D57} * ctr[2];
      ctr = {static_cast<uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<uint32_t>(p1),
             static_cast<uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<uint32_t>(p0)};
      key[0] += 0x9E3779B9u;
      key[1] += 0xBB67AE85u;
    }
    return ctr;
  }

  // Uniform in (0, 1), from two words of block(index): 53 random bits, never exactly 0.
  double uniform(uint64_t index) const {
    const auto b = block(index);
    const uint64_t bits = (uint64_t{b[0]} << 21) ^ (uint64_t{b[1]} >> 11);
    return (static_cast<double>(bits & ((uint64_t{1} << 53) - 1)) + 0.5) * 0x1.0p-53;
  }

  // Standard normal by Box-Muller from block(index): the i-th normal of the stream.
  double normal(uint64_t index) const {
    const auto b = block(index);
    const double u1 = ((static_cast<double>(b[0]) + 0.5) * 0x1.0p-32);
    const double u2 = ((static_cast<double>(b[1]) + 0.5) * 0x1.0p-32);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  // Uniform integer in [0, n), n > 0 (64-bit words; bias below 2^-32 for n < 2^32).
  uint64_t below(uint64_t index, uint64_t n) const {
    const auto b = block(index);
    const uint64_t word = (uint64_t{b[2]} << 32) | b[3];
    return static_cast<uint64_t>((static_cast<unsigned __int128>(word) * n) >> 64);
  }

 private:
  std::array<uint32_t, 2> key_;
  uint32_t stream_hi_;
  uint64_t stream_;
};

}  // namespace l3c
