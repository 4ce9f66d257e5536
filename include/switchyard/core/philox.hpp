#pragma once
/// \file Philox4x32-10 counter-based generator (Salmon et al., SC'11; the Random123 algorithm),
/// written as SY_HD functions so the host and the device draw the same numbers from the same
/// (key, counter). Tested against Random123's known-answer vectors.

#include <array>
#include <cstdint>

#include "switchyard/core/macros.hpp"

namespace switchyard {

struct philox4x32_key {
  std::uint32_t k0, k1;
};
struct philox4x32_ctr {
  std::uint32_t c0, c1, c2, c3;
};

namespace detail {
SY_HD constexpr void mulhilo32(std::uint32_t a, std::uint32_t b, std::uint32_t& hi,
                               std::uint32_t& lo) {
  const std::uint64_t p = static_cast<std::uint64_t>(a) * b;
  hi = static_cast<std::uint32_t>(p >> 32);
  lo = static_cast<std::uint32_t>(p);
}
}  // namespace detail

/// Philox4x32 with R rounds (10 is the standard, crush-resistant choice).
template <int Rounds = 10>
SY_HD constexpr philox4x32_ctr philox4x32(philox4x32_ctr c, philox4x32_key k) {
  constexpr std::uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
  constexpr std::uint32_t w0 = 0x9E3779B9u, w1 = 0xBB67AE85u;
  for (int r = 0; r < Rounds; ++r) {
    if (r > 0) {
      k.k0 += w0;
      k.k1 += w1;
    }
    std::uint32_t hi0 = 0, lo0 = 0, hi1 = 0, lo1 = 0;
    detail::mulhilo32(m0, c.c0, hi0, lo0);
    detail::mulhilo32(m1, c.c2, hi1, lo1);
    c = philox4x32_ctr{hi1 ^ c.c1 ^ k.k0, lo1, hi0 ^ c.c3 ^ k.k1, lo0};
  }
  return c;
}

/// Maps 32 random bits to a float in (0, 1]: never 0, so log() of it is finite.
SY_HD constexpr float u01_open_closed(std::uint32_t x) {
  return (static_cast<float>(x >> 8) + 1.0f) * (1.0f / 16777216.0f);
}

/// One uniform draw in (0,1] keyed by (seed) and addressed by (stream, a, b): e.g. stream = step,
/// a = token, b = column for input jitter (REFERENCE §1).
SY_HD constexpr float philox_uniform(std::uint64_t seed, std::uint32_t stream, std::uint32_t a,
                                     std::uint32_t b) {
  const philox4x32_ctr out =
      philox4x32<10>(philox4x32_ctr{a, b, stream, 0u},
                     philox4x32_key{static_cast<std::uint32_t>(seed),
                                    static_cast<std::uint32_t>(seed >> 32)});
  return u01_open_closed(out.c0);
}

}  // namespace switchyard
