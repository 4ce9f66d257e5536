// Host benchmarks of the MoE layer and of each kernel on its path, for two shapes
// (docs/benchmarks.md):
//   shape 0, Mixtral-like scaled to a CPU: H 1024, F 3584, E 8, k 2, softmax top-2, capacity
//            factor 1.25 dropping by probability (examples/configs/mixtral_8x7b_ep8.json);
//   shape 1, DeepSeek-like: H 1024, F 256, E 64, k 6, sigmoid top-6 with 8 groups choosing 3,
//            scaling 2.5, expert bias (zero), dropless (examples/configs/deepseek_v3_like.json).
// Both: SwiGLU experts, float32, no aux or z-loss (the PyTorch peer computes none either).
// Every benchmark takes Args({shape, T}) and uses only the public host API (exec::Host overloads,
// make_layer), so a parallel host backend is picked up without changes; the thread count comes
// from OMP_NUM_THREADS (recorded in the JSON context).
//
// Peak memory: this executable replaces the global operator new/delete with counting versions
// (usable bytes, current and peak); layer_memory reports the peak above the baseline during one
// forward+backward against the activations it must keep (kept_bytes, formula at kept_bytes()).
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "switchyard/dispatch/permute.hpp"
#include "switchyard/dispatch/plan.hpp"
#include "switchyard/layer.hpp"
#include "switchyard/routing.hpp"

// ---- counting allocator -------------------------------------------------------------------------
namespace heap {
std::atomic<std::size_t> current{0}, peak{0};
inline void* note_alloc(void* p) {
  if (!p) throw std::bad_alloc();
  const std::size_t now = current.fetch_add(malloc_usable_size(p)) + malloc_usable_size(p);
  std::size_t old = peak.load();
  while (now > old && !peak.compare_exchange_weak(old, now)) {
  }
  return p;
}
inline void note_free(void* p) {
  if (p) current.fetch_sub(malloc_usable_size(p));
  std::free(p);
}
inline void* aligned(std::size_t n, std::align_val_t a) {
  const auto al = static_cast<std::size_t>(a);
  return note_alloc(std::aligned_alloc(al, (n + al - 1) / al * al));
}
/// Restarts the peak at the current usage; returns the current usage.
inline std::size_t reset_peak() {
  const std::size_t now = current.load();
  peak.store(now);
  return now;
}
}  // namespace heap

void* operator new(std::size_t n) {
  return heap::note_alloc(std::malloc(n ? n : 1));
}
void* operator new[](std::size_t n) {
  return heap::note_alloc(std::malloc(n ? n : 1));
}
void* operator new(std::size_t n, std::align_val_t a) {
  return heap::aligned(n ? n : 1, a);
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return heap::aligned(n ? n : 1, a);
}
void operator delete(void* p) noexcept {
  heap::note_free(p);
}
void operator delete[](void* p) noexcept {
  heap::note_free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  heap::note_free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  heap::note_free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  heap::note_free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  heap::note_free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  heap::note_free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  heap::note_free(p);
}

namespace sy = switchyard;
using sy::index_t;

namespace {

/// The config of a shape (0: Mixtral-like, 1: DeepSeek-like).
sy::Config shape_config(std::int64_t shape) {
  sy::Config c;
  c.hidden_size = 1024;
  c.activation = sy::Activation::silu;
  c.gated = true;
  c.load_balancing_type = sy::LoadBalancingType::none;
  c.load_balance_loss_coeff = 0;
  c.router_z_loss_coeff = 0;
  c.precision = sy::Precision::float32;
  if (shape == 0) {
    c.num_experts = 8;
    c.num_experts_per_token = 2;
    c.ffn_hidden_size = 3584;
    c.score_function = sy::ScoreFunction::softmax;
    c.token_dispatch = sy::TokenDispatch::capacity;
    c.capacity_factor = 1.25;
    c.drop_policy = sy::DropPolicy::probs;
  } else {
    c.num_experts = 64;
    c.num_experts_per_token = 6;
    c.ffn_hidden_size = 256;
    c.score_function = sy::ScoreFunction::sigmoid;
    c.num_groups = 8;
    c.group_topk = 3;
    c.topk_scaling_factor = 2.5;
    c.enable_expert_bias = true;
    c.token_dispatch = sy::TokenDispatch::dropless;
  }
  return c;
}

const char* shape_name(std::int64_t shape) {
  return shape == 0 ? "mixtral" : "deepseek";
}

std::vector<float> filled(std::size_t n, float scale, unsigned salt = 0) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = scale * float(int((i + salt * 7919u) * 2654435761u % 1000) - 500) / 500;
  return v;
}

/// n draws of N(0, std²).
std::vector<float> gaussian(std::size_t n, float std, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, std);
  std::vector<float> v(n);
  for (float& e : v) e = d(gen);
  return v;
}

/// The input x ~ N(0, 1) [T][H], the router weight W_r ~ N(0, 0.02²) [E][H] (Megatron's
/// init_method_std, as MoELayer::initialize) and the logits x·W_rᵀ [T][E]: the layer
/// benchmarks use the same x and W_r, so they see the same routes.
struct Inputs {
  sy::Config cfg;
  index_t T, H, E;
  int k;
  std::vector<float> x, w_router, logits;
  explicit Inputs(std::int64_t shape, index_t tokens) : cfg(shape_config(shape)), T(tokens) {
    H = cfg.hidden_size;
    E = cfg.num_experts;
    k = static_cast<int>(cfg.num_experts_per_token);
    x = gaussian(static_cast<std::size_t>(T * H), 1.0f, 1);
    w_router = gaussian(static_cast<std::size_t>(E * H), 0.02f, 2);
    logits.resize(static_cast<std::size_t>(T * E));
    sy::router_linear_forward(sy::exec::Host{}, matrix(x, H), matrix(w_router, H),
                              sy::vector_view<const float>(),
                              sy::matrix_view<float>(logits.data(), T, E));
  }
  sy::matrix_view<const float> matrix(const std::vector<float>& v, index_t cols) const {
    return sy::matrix_view<const float>(v.data(), static_cast<index_t>(v.size()) / cols, cols);
  }
};

/// Calls f(router) with the router of the shape's config.
template <class F>
void with_shape_router(const sy::Config& c, F&& f) {
  if (c.num_experts_per_token == 2)
    f(sy::TopK<2, sy::Softmax>(sy::router_params(c)));
  else
    f(sy::TopK<6, sy::Sigmoid>(sy::router_params(c)));
}

sy::Routing<float> route(const Inputs& in) {
  sy::Routing<float> r;
  with_shape_router(in.cfg, [&](const auto& router) {
    r = router.forward(sy::exec::Host{}, in.matrix(in.logits, in.E));
  });
  return r;
}

void label(benchmark::State& state, std::int64_t shape, index_t T) {
  state.SetLabel(std::string(shape_name(shape)) + " T=" + std::to_string(T));
}

void rate(benchmark::State& state, const char* name, double per_iteration) {
  state.counters[name] =
      benchmark::Counter(per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- kernels
// --------------------------------------------------------------------------------------

// x [T][H] · W_r [E][H]ᵀ -> logits [T][E].
void router_linear(benchmark::State& state) {
  const Inputs in(state.range(0), state.range(1));
  std::vector<float> logits(static_cast<std::size_t>(in.T * in.E));
  for (auto _ : state) {
    sy::router_linear_forward(sy::exec::Host{}, in.matrix(in.x, in.H), in.matrix(in.w_router, in.H),
                              sy::vector_view<const float>(),
                              sy::matrix_view<float>(logits.data(), in.T, in.E));
    benchmark::DoNotOptimize(logits.data());
  }
  label(state, state.range(0), in.T);
  rate(state, "GFLOP/s", 2e-9 * double(in.T) * double(in.E) * double(in.H));
}

// Score + (group-limited) top-k from logits [T][E]: routes {expert, prob} [T][k].
void router(benchmark::State& state) {
  const Inputs in(state.range(0), state.range(1));
  with_shape_router(in.cfg, [&](const auto& r) {
    for (auto _ : state) {
      auto routes = r.forward(sy::exec::Host{}, in.matrix(in.logits, in.E));
      benchmark::DoNotOptimize(routes.topk_probs.data());
    }
  });
  label(state, state.range(0), in.T);
  rate(state, "routes/s", double(in.T) * in.k);
}

// The dispatch plan from the routes: counts, capacity drops, offsets, row maps.
void dispatch_plan(benchmark::State& state) {
  const Inputs in(state.range(0), state.range(1));
  const auto r = route(in);
  const auto opt = sy::dispatch_options(in.cfg, in.T);
  std::int64_t rows = 0;
  for (auto _ : state) {
    auto plan = sy::build_plan(sy::exec::Host{}, opt, r.indices(), r.probs());
    rows = plan.rows();
    benchmark::DoNotOptimize(plan.route_row.data());
  }
  label(state, state.range(0), in.T);
  rate(state, "routes/s", double(in.T) * in.k);
  state.counters["rows"] = double(rows);
}

struct Planned {
  Inputs in;
  sy::Routing<float> r;
  sy::DispatchPlan plan;
  Planned(std::int64_t shape, index_t T) : in(shape, T), r(route(in)) {
    plan =
        sy::build_plan(sy::exec::Host{}, sy::dispatch_options(in.cfg, T), r.indices(), r.probs());
  }
  index_t R() const { return plan.rows(); }
};

// Bytes moved (read + written): x once per token, rows once each.
void permute(benchmark::State& state) {
  const Planned p(state.range(0), state.range(1));
  const index_t H = p.in.H, R = p.R();
  std::vector<float> rows(static_cast<std::size_t>(R * H));
  for (auto _ : state) {
    sy::permute(sy::exec::Host{}, p.plan, p.in.matrix(p.in.x, H),
                sy::matrix_view<float>(rows.data(), R, H));
    benchmark::DoNotOptimize(rows.data());
  }
  label(state, state.range(0), p.in.T);
  rate(state, "GB/s", 1e-9 * double(p.in.T + R) * double(H) * sizeof(float));
  state.counters["bytes"] = double(p.in.T + R) * double(H) * sizeof(float);
}

// y[t] = Σ_j prob · rows[route_row]: rows read once, y written once.
void unpermute(benchmark::State& state) {
  const Planned p(state.range(0), state.range(1));
  const index_t H = p.in.H, R = p.R(), T = p.in.T;
  const auto rows = filled(static_cast<std::size_t>(R * H), 1.0f, 2);
  std::vector<float> y(static_cast<std::size_t>(T * H));
  for (auto _ : state) {
    sy::unpermute(sy::exec::Host{}, p.plan, sy::matrix_view<const float>(rows.data(), R, H),
                  p.r.probs(), sy::matrix_view<float>(y.data(), T, H));
    benchmark::DoNotOptimize(y.data());
  }
  label(state, state.range(0), T);
  rate(state, "GB/s", 1e-9 * double(T + R) * double(H) * sizeof(float));
  state.counters["bytes"] = double(T + R) * double(H) * sizeof(float);
}

// std::memcpy of the permuted rows [R][H] (the bytes permute writes); GB/s counts read + write
// (2·R·H·4), the hardware reference for permute and unpermute.
void memcpy_rows(benchmark::State& state) {
  const Planned p(state.range(0), state.range(1));
  const std::size_t n = static_cast<std::size_t>(p.R() * p.in.H);
  const auto src = filled(n, 1.0f, 3);
  std::vector<float> dst(n);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), n * sizeof(float));
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  label(state, state.range(0), p.in.T);
  rate(state, "GB/s", 2e-9 * double(n) * sizeof(float));
  state.counters["bytes"] = 2.0 * double(n) * sizeof(float);
}

// ---- the layer
// --------------------------------------------------------------------------------------

/// A layer of the shape with the router of Inputs and expert weights of Xavier scale (filled
/// directly: the Philox initialisation of 88 M weights would dominate the set-up time).
struct LayerFixture {
  sy::LocalComm one;
  sy::Config cfg;
  std::unique_ptr<sy::MoELayerCore<float, sy::LocalComm>> layer;
  index_t T, H;
  std::vector<float> x, dy;
  LayerFixture(std::int64_t shape, index_t tokens) : cfg(shape_config(shape)), T(tokens) {
    H = cfg.hidden_size;
    layer = sy::make_layer<float>(cfg, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
    Inputs in(shape, tokens);
    auto& p = layer->params();
    p.router_weight = in.w_router;
    const float a = std::sqrt(6.0f / float(H + cfg.ffn_hidden_size));
    p.fc1 = filled(p.fc1.size(), a, 11);
    p.fc2 = filled(p.fc2.size(), a, 12);
    x = std::move(in.x);
    dy = gaussian(static_cast<std::size_t>(T * H), 1.0f, 5);
  }
  sy::matrix_view<const float> xv() const { return sy::matrix_view<const float>(x.data(), T, H); }
  sy::matrix_view<const float> dyv() const { return sy::matrix_view<const float>(dy.data(), T, H); }
};

// The layer benchmarks time steady steps: one untimed call first, as bench/peer_cpu.py does for
// PyTorch (it warms the allocator, and the layer's expert workspace cache from the second step).
void layer_forward(benchmark::State& state) {
  LayerFixture f(state.range(0), state.range(1));
  f.layer->forward(f.xv(), {.training = true, .seed = 1, .step = 0});
  for (auto _ : state) {
    auto out = f.layer->forward(f.xv(), {.training = true, .seed = 1, .step = 0});
    benchmark::DoNotOptimize(out.y.data());
  }
  label(state, state.range(0), f.T);
  rate(state, "tokens/s", double(f.T));
}

void layer_forward_backward(benchmark::State& state) {
  LayerFixture f(state.range(0), state.range(1));
  auto grads = f.layer->make_grads();
  auto step = [&] {
    auto out = f.layer->forward(f.xv(), {.training = true, .seed = 1, .step = 0});
    return f.layer->backward(out.saved, f.dyv(), grads);
  };
  step();
  for (auto _ : state) {
    auto dx = step();
    benchmark::DoNotOptimize(dx.data());
  }
  label(state, state.range(0), f.T);
  rate(state, "tokens/s", double(f.T));
}

/// Bytes a forward must keep for backward (float32), the minimum any implementation with the
/// same math holds (it is what autograd keeps for the PyTorch peer):
///   x [T][H] (router dW_r and dx)  + logits [T][E] (score backward) + routes [T][k] (int32 id +
///   float prob) + permuted rows [R][H] (fc1 dW) + fc1 output [R][2F] (SwiGLU backward)
///   + activation a [R][F] (fc2 dW) + expert output rows [R][H] (d prob of the combine)
///   + the row map [R] (int64).
double kept_bytes(index_t T, index_t H, index_t E, index_t k, index_t F, index_t R) {
  const double f = sizeof(float);
  return f * double(T * H + T * E + R * H + R * 2 * F + R * F + R * H) +
         double(T * k) * (sizeof(std::int32_t) + sizeof(float)) + double(R) * sizeof(std::int64_t);
}

// One forward+backward per iteration; counters from the heap: peak_bytes (above what was
// allocated before the forward: the input, dy, weights and gradients are not counted),
// saved_bytes (what the forward's result holds besides y), kept_bytes (the formula above) and
// peak_over_kept.
void layer_memory(benchmark::State& state) {
  LayerFixture f(state.range(0), state.range(1));
  auto grads = f.layer->make_grads();
  std::size_t peak = 0, saved = 0;
  index_t R = 0;
  for (auto _ : state) {
    const std::size_t base = heap::reset_peak();
    {
      auto out = f.layer->forward(f.xv(), {.training = true, .seed = 1, .step = 0});
      saved = heap::current.load() - base - out.y.capacity() * sizeof(float);
      R = out.saved.plan.rows();
      auto dx = f.layer->backward(out.saved, f.dyv(), grads);
      benchmark::DoNotOptimize(dx.data());
    }
    peak = heap::peak.load() - base;
  }
  const double kept = kept_bytes(f.T, f.H, f.cfg.num_experts, f.cfg.num_experts_per_token,
                                 f.cfg.ffn_hidden_size, R);
  label(state, state.range(0), f.T);
  state.counters["peak_bytes"] = double(peak);
  state.counters["saved_bytes"] = double(saved);
  state.counters["kept_bytes"] = kept;
  state.counters["peak_over_kept"] = double(peak) / kept;
  state.counters["rows"] = double(R);
}

void shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t shape : {0, 1})
    for (std::int64_t T : {256, 4096}) b->Args({shape, T});
  b->ArgNames({"shape", "T"})->UseRealTime();
}

}  // namespace

BENCHMARK(router_linear)->Apply(shapes)->Unit(benchmark::kMicrosecond);
BENCHMARK(router)->Apply(shapes)->Unit(benchmark::kMicrosecond);
BENCHMARK(dispatch_plan)->Apply(shapes)->Unit(benchmark::kMicrosecond);
BENCHMARK(permute)->Apply(shapes)->Unit(benchmark::kMicrosecond);
BENCHMARK(unpermute)->Apply(shapes)->Unit(benchmark::kMicrosecond);
BENCHMARK(memcpy_rows)->Apply(shapes)->Unit(benchmark::kMicrosecond);
BENCHMARK(layer_forward)->Apply(shapes)->Unit(benchmark::kMillisecond);
BENCHMARK(layer_forward_backward)->Apply(shapes)->Unit(benchmark::kMillisecond);
BENCHMARK(layer_memory)->Apply(shapes)->Unit(benchmark::kMillisecond)->Iterations(1);
