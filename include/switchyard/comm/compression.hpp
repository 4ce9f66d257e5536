#pragma once
/// \file Gradient compression (Config::gradient_compression): gradients summed over a group in
/// bfloat16, as PyTorch DDP's bf16_compress_hook and Megatron-Core's grad_reduce_in_bf16 do.
/// Each rank rounds its values to bfloat16 (round to nearest even, through float), the group
/// sums them in bfloat16 (every partial sum rounded to bfloat16 again), and every rank gets the
/// sum back widened: half the bytes of a float32 reduction, a quarter of a double one, at
/// bfloat16's precision (8 significant bits: a relative rounding of at most 2^-8 each time).
///
/// A communicator takes part when its all_reduce accepts `bf16` elements with ReduceOp::sum
/// (LocalComm, MpiComm; the BfloatCommunicator concept, which instantiates that all_reduce: a
/// communicator whose all_reduce template rejects other element types with a static_assert
/// does not compile with a layer). MpiComm sums them with a non-commutative MPI operation, so
/// MPI combines the values in rank order.

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "switchyard/comm/communicator.hpp"

namespace switchyard {

/// The bits of one bfloat16 value (the upper half of an IEEE float32), for host reductions.
struct bf16 {
  std::uint16_t bits = 0;
};

namespace detail {
/// float -> bfloat16, rounded to nearest even; NaN stays a (quiet) NaN, infinities stay.
inline std::uint16_t to_bf16_bits(float f) {
  std::uint32_t u = 0;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}
/// bfloat16 -> float (exact).
inline float from_bf16_bits(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f = 0;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
/// `v` rounded to bfloat16 (through float) and widened back: what one rank contributes.
template <class T>
T round_to_bf16(T v) {
  return static_cast<T>(from_bf16_bits(to_bf16_bits(static_cast<float>(v))));
}
/// inout[i] = bf16(in[i] + inout[i]), n elements: one step of the group's bfloat16 sum.
inline void add_bf16(const bf16* in, bf16* inout, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i)
    inout[i].bits = to_bf16_bits(from_bf16_bits(in[i].bits) + from_bf16_bits(inout[i].bits));
}
}  // namespace detail

/// A communicator that sums bfloat16 values (gradient_compression).
template <class C>
concept BfloatCommunicator = Communicator<C> && requires(C& c, bf16* v, std::int64_t n) {
  c.all_reduce(v, n, ReduceOp::sum);
};

/// Sums v[0..n) over `comm` in bfloat16 (the file comment) and widens the sum back into `v`,
/// the same on every rank. Collective. Also over a group of one rank, where it only rounds (the
/// gradients are bfloat16 values on one rank as on many). `scratch` (at least n elements)
/// holds the bfloat16 values; empty: allocated here (a rank out of memory then throws before
/// the collective its peers wait in: callers with peers pass scratch they allocated and agreed
/// on first).
template <BfloatCommunicator Comm, class T>
void all_reduce_bf16(Comm& comm, T* v, std::int64_t n, std::span<bf16> scratch = {}) {
  std::vector<bf16> own;
  if (scratch.empty()) {
    own.resize(static_cast<std::size_t>(n));
    scratch = own;
  }
  SY_EXPECTS(static_cast<std::int64_t>(scratch.size()) >= n,
             "all_reduce_bf16: the scratch holds fewer elements than the sum");
  for (std::int64_t i = 0; i < n; ++i)
    scratch[static_cast<std::size_t>(i)].bits = detail::to_bf16_bits(static_cast<float>(v[i]));
  comm.all_reduce(scratch.data(), n, ReduceOp::sum);
  for (std::int64_t i = 0; i < n; ++i)
    v[i] = static_cast<T>(detail::from_bf16_bits(scratch[static_cast<std::size_t>(i)].bits));
}

/// The gradient sum over `comm`: in bfloat16 with `compress` (all_reduce_bf16, with `scratch`),
/// else in T. A communicator without bfloat16 sums cannot compress (the layers refuse such a
/// config when they are built).
template <Communicator Comm, class T>
void sum_gradients(Comm& comm, T* v, std::int64_t n, bool compress, std::span<bf16> scratch = {}) {
  if constexpr (BfloatCommunicator<Comm>) {
    if (compress) return all_reduce_bf16(comm, v, n, scratch);
  } else {
    SY_EXPECTS(!compress, "gradient_compression needs a communicator that sums bfloat16");
  }
  comm.all_reduce(v, n, ReduceOp::sum);
}

}  // namespace switchyard
