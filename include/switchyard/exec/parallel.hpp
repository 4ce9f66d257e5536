#pragma once
/// \file Host parallelism: OpenMP loops over independent items, written once and serial when
/// OpenMP is off (no -fopenmp, i.e. switchyard::openmp not linked) or under nvcc.
///
/// Determinism: each item is computed by exactly one thread, in the same order inside the item
/// whatever the thread count, and no reduction crosses items here; sums over items are done
/// serially in item order by the caller (or over fixed-size chunks combined in chunk order), so
/// results are bit-identical for any OMP_NUM_THREADS.

#include <cstdint>


#if defined(_OPENMP) && !defined(__CUDACC__)
#define SY_HAS_OPENMP 1
#define SY_OMP_PRAGMA(x) _Pragma(#x)
#else
#define SY_HAS_OPENMP 0
#define SY_OMP_PRAGMA(x)
#endif

namespace switchyard::exec {

/// Whether the host loops of this translation unit run on OpenMP threads.
inline constexpr bool host_parallel = SY_HAS_OPENMP != 0;

/// Below this many element operations (items × cost per item) a loop stays on one thread: the
/// fork/join costs a few µs on idle cores and far more when the cores are shared (libgomp's
/// threads spin at the barrier), so only loops of ~1 ms or more go parallel. A process-wide
/// tuning knob (results never depend on it); tests lower it to run the parallel paths on small
/// sizes.
inline std::int64_t min_parallel_work = std::int64_t{1} << 20;

/// Runs body(i) for i in [0, n), on OpenMP threads (static schedule) when n · cost_per_item
/// reaches min_parallel_work. body(i) must write only what item i owns and must not throw.
template <class F>
void parallel_for(std::int64_t n, std::int64_t cost_per_item, F&& body) {
  [[maybe_unused]] const bool par = n > 1 && n * cost_per_item >= min_parallel_work;
  SY_OMP_PRAGMA(omp parallel for schedule(static) if (par))
  for (std::int64_t i = 0; i < n; ++i) body(i);
}

/// As parallel_for, but each thread takes the next item when it is done with one (dynamic
/// schedule): for few, large items of unequal cost (the tiles of a grouped GEMM). Which thread
/// computes an item changes from run to run; what it computes does not.
template <class F>
void parallel_for_dynamic(std::int64_t n, std::int64_t cost_per_item, F&& body) {
  [[maybe_unused]] const bool par = n > 1 && n * cost_per_item >= min_parallel_work;
  SY_OMP_PRAGMA(omp parallel for schedule(dynamic, 1) if (par))
  for (std::int64_t i = 0; i < n; ++i) body(i);
}

/// Fixed chunks of items for partial results (histograms, partial sums): the chunking depends
/// on n only, never on the thread count, and callers combine the chunks in chunk order.
struct chunking {
  std::int64_t n = 0, size = 1;
  std::int64_t count() const { return n == 0 ? 0 : (n + size - 1) / size; }
  std::int64_t begin(std::int64_t c) const { return c * size; }
  std::int64_t end(std::int64_t c) const { return c * size + size < n ? c * size + size : n; }
};

}  // namespace switchyard::exec
