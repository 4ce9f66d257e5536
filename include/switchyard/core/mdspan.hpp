#pragma once
/// \file Tensor views: cuda::std::mdspan from CCCL's libcu++ (header-only, usable with g++).

#include <cstdint>

#include <cuda/std/mdspan>

namespace switchyard {

/// Index type of every view: 64-bit so that T·H and R·F never overflow.
using index_t = std::int64_t;

template <class T, std::size_t Rank>
using view = cuda::std::mdspan<T, cuda::std::dextents<index_t, Rank>>;

/// Row-major matrix view [rows, cols].
template <class T>
using matrix_view = view<T, 2>;

/// Contiguous vector view [n].
template <class T>
using vector_view = view<T, 1>;

/// Row-major 3-D view, e.g. expert weights [E_local, rows, cols].
template <class T>
using tensor3_view = view<T, 3>;

}  // namespace switchyard
