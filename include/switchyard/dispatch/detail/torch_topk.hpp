#pragma once
/// \file Which C of an expert's tokens torch.topk returns over its 0/1 routing column on the
/// CPU: the selection of Megatron-Core's drop_policy "position" (apply_router_token_dropping:
/// torch.topk(routing_map.int(), k=C, dim=0)) and of DeepSpeed's top1gating (torch.topk over the
/// one-hot mask). Every routed token has the same value there, so the choice among them is
/// torch's order among ties. On the CPU that is the order libstdc++'s algorithms leave
/// (ATen's topk_impl_loop: std::partial_sort when 64·C <= T, else std::nth_element at C - 1,
/// over (value, index) pairs in index order, comparing values only). These functions replay
/// those algorithms step for step (GCC's bits/stl_algo.h and bits/stl_heap.h, the same since
/// GCC 4), so the host and the CUDA plan make that choice with any standard library, and the
/// tests compare them with std::nth_element and std::partial_sort themselves.

#include <cstdint>

#include "switchyard/core/macros.hpp"

namespace switchyard::detail::torch_topk {

template <class E>
SY_HD inline void swap_elems(E* a, E* b) {
  E t = *a;
  *a = *b;
  *b = t;
}

/// floor(log2(n)) for n > 0 (std::__lg).
SY_HD inline int lg(std::int64_t n) {
  int r = 0;
  while (n > 1) {
    n >>= 1;
    ++r;
  }
  return r;
}

// std::__push_heap
template <class E, class Cmp>
SY_HD inline void push_heap(E* first, std::int64_t hole, std::int64_t top, E value, Cmp comp) {
  std::int64_t parent = (hole - 1) / 2;
  while (hole > top && comp(first[parent], value)) {
    first[hole] = first[parent];
    hole = parent;
    parent = (hole - 1) / 2;
  }
  first[hole] = value;
}

// std::__adjust_heap
template <class E, class Cmp>
SY_HD inline void adjust_heap(E* first, std::int64_t hole, std::int64_t len, E value, Cmp comp) {
  const std::int64_t top = hole;
  std::int64_t second = hole;
  while (second < (len - 1) / 2) {
    second = 2 * (second + 1);
    if (comp(first[second], first[second - 1])) --second;
    first[hole] = first[second];
    hole = second;
  }
  if ((len & 1) == 0 && second == (len - 2) / 2) {
    second = 2 * (second + 1);
    first[hole] = first[second - 1];
    hole = second - 1;
  }
  push_heap(first, hole, top, value, comp);
}

// std::__make_heap
template <class E, class Cmp>
SY_HD inline void make_heap(E* first, std::int64_t len, Cmp comp) {
  if (len < 2) return;
  for (std::int64_t parent = (len - 2) / 2;; --parent) {
    adjust_heap(first, parent, len, first[parent], comp);
    if (parent == 0) return;
  }
}

/// std::__heap_select(first, first + middle, first + n): the first step of std::partial_sort,
/// after which [0, middle) holds the selection.
template <class E, class Cmp>
SY_HD inline void heap_select(E* first, std::int64_t middle, std::int64_t n, Cmp comp) {
  make_heap(first, middle, comp);
  for (std::int64_t i = middle; i < n; ++i)
    if (comp(first[i], first[0])) {  // std::__pop_heap(first, first + middle, first + i)
      E value = first[i];
      first[i] = first[0];
      adjust_heap(first, std::int64_t{0}, middle, value, comp);
    }
}

// std::__move_median_to_first
template <class E, class Cmp>
SY_HD inline void move_median_to_first(E* result, E* a, E* b, E* c, Cmp comp) {
  if (comp(*a, *b)) {
    if (comp(*b, *c))
      swap_elems(result, b);
    else if (comp(*a, *c))
      swap_elems(result, c);
    else
      swap_elems(result, a);
  } else if (comp(*a, *c)) {
    swap_elems(result, a);
  } else if (comp(*b, *c)) {
    swap_elems(result, c);
  } else {
    swap_elems(result, b);
  }
}

// std::__unguarded_partition_pivot
template <class E, class Cmp>
SY_HD inline E* partition_pivot(E* first, E* last, Cmp comp) {
  E* mid = first + (last - first) / 2;
  move_median_to_first(first, first + 1, mid, last - 1, comp);
  E* lo = first + 1;
  E* hi = last;
  const E* pivot = first;
  while (true) {
    while (comp(*lo, *pivot)) ++lo;
    --hi;
    while (comp(*pivot, *hi)) --hi;
    if (!(lo < hi)) return lo;
    swap_elems(lo, hi);
    ++lo;
  }
}

// std::__insertion_sort
template <class E, class Cmp>
SY_HD inline void insertion_sort(E* first, E* last, Cmp comp) {
  if (first == last) return;
  for (E* i = first + 1; i != last; ++i) {
    E value = *i;
    if (comp(value, *first)) {
      for (E* p = i; p != first; --p) *p = *(p - 1);
      *first = value;
    } else {  // std::__unguarded_linear_insert
      E* hole = i;
      E* next = i - 1;
      while (comp(value, *next)) {
        *hole = *next;
        hole = next;
        --next;
      }
      *hole = value;
    }
  }
}

/// std::nth_element(first, first + nth, first + n, comp) (std::__introselect).
template <class E, class Cmp>
SY_HD inline void nth_element(E* first, std::int64_t nth, std::int64_t n, Cmp comp) {
  if (n == 0 || nth == n) return;
  E* last = first + n;
  E* nth_it = first + nth;
  int depth = 2 * lg(n);
  while (last - first > 3) {
    if (depth == 0) {
      heap_select(first, nth_it - first + 1, last - first, comp);
      swap_elems(first, nth_it);  // the nth largest in its final place
      return;
    }
    --depth;
    E* cut = partition_pivot(first, last, comp);
    if (cut <= nth_it)
      first = cut;
    else
      last = cut;
  }
  insertion_sort(first, last, comp);
}

/// Key of token t in an expert's column: bit 31 set when t routes to the expert, t below it.
SY_HD inline std::uint32_t key(std::int64_t t, bool routed) {
  return static_cast<std::uint32_t>(t) | (routed ? 0x80000000u : 0u);
}
SY_HD inline bool routed(std::uint32_t key) {
  return (key & 0x80000000u) != 0;
}
SY_HD inline std::int64_t token(std::uint32_t key) {
  return key & 0x7fffffffu;
}

/// ATen's comparator for largest = true, on the values only (a token's index never breaks a tie).
struct larger_value {
  SY_HD bool operator()(std::uint32_t x, std::uint32_t y) const { return (x >> 31) > (y >> 31); }
};

/// Reorders keys [T] (key(t, routed) for t = 0..T-1, in token order) as torch.topk(k = C) on
/// the CPU does: afterwards keys [0, C) are the tokens it returns (1 <= C <= T).
SY_HD inline void select(std::uint32_t* keys, std::int64_t T, std::int64_t C) {
  if (C * 64 <= T)
    heap_select(keys, C, T, larger_value{});
  else
    nth_element(keys, C - 1, T, larger_value{});
}

}  // namespace switchyard::detail::torch_topk
