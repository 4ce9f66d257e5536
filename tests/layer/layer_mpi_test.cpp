// Under mpirun with 2 and 4 processes (CTest label mpi): a distributed layer gives the outputs and
// gradients of one rank on the same global batch.
#define BOOST_TEST_MODULE layer_mpi
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <numeric>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "../comm/bf16_sum_check.hpp"
#include "layer_fixture.hpp"
#include "switchyard/comm/mpi.hpp"
#include "switchyard/layer.hpp"
#include "switchyard/sharding/mpi_groups.hpp"

namespace sy = switchyard;
using sy_test::random_vector;

// Allocation faults on demand: the program's operator new counts, on the thread that armed it,
// the allocations of at least `min_bytes`, and the `fail_at`-th of them throws std::bad_alloc.
namespace alloc_fault {
thread_local bool armed = false;
thread_local std::size_t min_bytes = 0;
thread_local std::int64_t seen = 0, fail_at = 0;  // fail_at 0: count only
}  // namespace alloc_fault

// Out of line, so that GCC does not pair the malloc it inlines with a delete elsewhere.
[[gnu::noinline]] void* operator new(std::size_t n) {
  if (alloc_fault::armed && n >= alloc_fault::min_bytes &&
      ++alloc_fault::seen == alloc_fault::fail_at)
    throw std::bad_alloc();
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t n) {
  return ::operator new(n);
}
// The nothrow forms (std::stable_sort's temporary buffer) have a fallback: never failed here.
[[gnu::noinline]] void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return std::malloc(n == 0 ? 1 : n);
}
[[gnu::noinline]] void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return std::malloc(n == 0 ? 1 : n);
}
// Every unaligned delete frees what these allocated (a sanitizer's own operator new must not
// allocate what they free).
[[gnu::noinline]] void operator delete(void* p) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}

struct mpi_environment {
  mpi_environment() { MPI_Init(nullptr, nullptr); }
  ~mpi_environment() { MPI_Finalize(); }
};
BOOST_TEST_GLOBAL_FIXTURE(mpi_environment);

namespace {

// Sums are reordered across ranks (expert rows arrive in another order, reductions add rank
// partials): 1e-12 relative in double, as CONVENTIONS states for reordering.
bool close(double a, double b) { return std::abs(a - b) <= 1e-12 * std::max(1.0, std::abs(b)); }

bool has(const std::exception& e, const std::string& what) {
  return std::string(e.what()).find(what) != std::string::npos;
}

struct split {
  std::int64_t first, count;
};

// Dense data-parallel rank r of n gets a contiguous slice; `empty_rank` (if >= 0) gets none.
split slice_of(std::int64_t T, int r, int n, int empty_rank) {
  const int takers = empty_rank >= 0 ? n - 1 : n;
  const int idx = empty_rank >= 0 && r > empty_rank ? r - 1 : r;
  if (r == empty_rank) return {0, 0};
  const std::int64_t base = T / takers, extra = T % takers;
  const std::int64_t first = idx * base + std::min<std::int64_t>(idx, extra);
  return {first, base + (idx < extra ? 1 : 0)};
}

// The layer of `c` on its MPI groups.
std::unique_ptr<sy::MoELayerCore<double, sy::MpiComm>> mpi_layer(const sy::Config& c,
                                                                 sy::MpiGroups& groups) {
  return sy::make_layer<double>(
      c, sy::MoEComms<sy::MpiComm>{&groups.expert_parallel, &groups.dense_data_parallel,
                                   &groups.expert_data_parallel, &groups.tensor_parallel});
}

// A layer (weights of seed 21) run forward and backward on T tokens x, dy [T][H].
template <class Comm>
struct layer_run {
  // Biases (when the config has them) of the global expert and column, not zero, so that a bias
  // added more than once shows: this rank's local experts and its TP columns of F.
  void set_biases() {
    auto& p = layer->params();
    if (!p.bias) return;
    const std::int64_t tp = layer->config().tensor_parallel_size, r = layer->tp_rank();
    const std::int64_t Fs = p.ffn_hidden, F = Fs * tp, m = p.fc1_multiplier, H = p.hidden;
    for (std::int64_t le = 0; le < p.local_experts; ++le) {
      const auto e = static_cast<double>(layer->placement().expert(layer->ep_rank(), le));
      for (std::int64_t half = 0; half < m; ++half)
        for (std::int64_t f = 0; f < Fs; ++f)
          p.fc1_bias[static_cast<std::size_t>(le * m * Fs + half * Fs + f)] =
              0.05 * std::sin(e + 0.3 * static_cast<double>(half * F + r * Fs + f));
      for (std::int64_t h = 0; h < H; ++h)
        p.fc2_bias[static_cast<std::size_t>(le * H + h)] = 0.07 * std::cos(e + 0.2 * double(h));
    }
  }

  std::unique_ptr<sy::MoELayerCore<double, Comm>> layer;
  sy::MoEForward<double> fwd;
  sy::MoEGrads<double> grads;
  std::vector<double> dx;

 protected:
  // `to`: the experts move there after they are initialised (expert migration), so the run
  // computes from the weights that moved.
  void run(const double* x, const double* dy, std::int64_t T, std::int64_t H,
           const sy::ExpertPlacementMap* to = nullptr) {
    layer->initialize(21);
    set_biases();
    if (to) layer->move_experts(*to);
    fwd = layer->forward(sy::matrix_view<const double>(x, T, H));
    grads = layer->make_grads();
    dx = layer->backward(fwd.saved, sy::matrix_view<const double>(dy, T, H), grads);
  }
};

// The layer of `dist` on one rank (EP = DP = 1).
struct one_rank_run : layer_run<sy::LocalComm> {
  sy::LocalComm comm;
  one_rank_run(sy::Config dist, const double* x, const double* dy, std::int64_t T) {
    dist.expert_parallel_size = 1;
    dist.data_parallel_size = 1;
    dist.tensor_parallel_size = 1;
    dist.world_size.reset();
    layer = sy::make_layer<double>(dist, sy::MoEComms<sy::LocalComm>{&comm, &comm, &comm});
    run(x, dy, T, dist.hidden_size);
  }
};

// The layer of `c` over MPI_COMM_WORLD in its layout; this rank's T tokens.
struct mpi_run : layer_run<sy::MpiComm> {
  sy::MpiGroups groups;
  mpi_run(sy::MpiComm& world, const sy::Config& c, const double* x, const double* dy,
          std::int64_t T, const sy::ExpertPlacementMap* to = nullptr)
      : groups(sy::make_mpi_groups(world, sy::Layout(c))) {
    layer = mpi_layer(c, groups);
    run(x, dy, T, c.hidden_size, to);
  }
};

// `to`: the distributed layer's experts move to this placement before the run (the comparison
// below finds each global expert through placement(), so it checks the weights that moved).
void run_and_compare(sy::Config dist, int empty_rank, const sy::ExpertPlacementMap* to = nullptr) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  const std::int64_t T = 24, H = dist.hidden_size;
  const auto x = random_vector(5, static_cast<std::size_t>(T * H));
  const auto dy = random_vector(6, static_cast<std::size_t>(T * H));

  // One rank on the whole batch.
  const one_rank_run one(dist, x.data(), dy.data(), T);
  const auto& ref = one.layer;
  const auto& rf = one.fwd;
  const auto& rg = one.grads;
  const auto& rdx = one.dx;

  // The distributed layer, each rank of the dense data-parallel x TP group on its slice (TP
  // ranks hold other tokens, as under sequence parallelism; world-rank order).
  const sy::MpiGroups probe = sy::make_mpi_groups(world, sy::Layout(dist));
  const int tp = probe.tensor_parallel.size(), tp_rank = probe.tensor_parallel.rank();
  const auto sl = slice_of(T, probe.dense_data_parallel.rank() * tp + tp_rank,
                           probe.dense_data_parallel.size() * tp, empty_rank);
  mpi_run run(world, dist, x.data() + sl.first * H, dy.data() + sl.first * H, sl.count, to);
  auto& layer = run.layer;
  if (to) BOOST_TEST((layer->placement() == *to));
  const auto& fwd = run.fwd;
  auto& g = run.grads;
  const auto& dx = run.dx;
  layer->reduce_gradients(g);

  for (std::int64_t i = 0; i < sl.count * H; ++i) {
    BOOST_REQUIRE_MESSAGE(close(fwd.y[i], rf.y[sl.first * H + i]), "y[" << i << "]");
    BOOST_REQUIRE_MESSAGE(close(dx[i], rdx[sl.first * H + i]), "dx[" << i << "]");
  }
  BOOST_TEST(fwd.metrics.tokens == T);
  BOOST_TEST(fwd.metrics.tokens_per_expert == rf.metrics.tokens_per_expert,
             boost::test_tools::per_element());
  BOOST_TEST(close(fwd.metrics.aux_loss.value(), rf.metrics.aux_loss.value()));
  BOOST_TEST(close(fwd.metrics.z_loss.value(), rf.metrics.z_loss.value()));
  for (std::size_t i = 0; i < g.router_weight.size(); ++i)
    BOOST_REQUIRE_MESSAGE(close(g.router_weight[i], rg.router_weight[i]), "router grad " << i);
  // The shared expert's gate is replicated like the router: the same weights on every rank,
  // and the gradients summed over the group are one rank's on the whole batch. So is the shared
  // expert, whose F is split over TP as the experts' (below): this rank's shard of its weights
  // and of its whole-batch gradients.
  BOOST_TEST(layer->params().shared_gate == ref->params().shared_gate);
  BOOST_REQUIRE_EQUAL(g.shared_gate.size(), rg.shared_gate.size());
  for (std::size_t i = 0; i < g.shared_gate.size(); ++i)
    BOOST_REQUIRE_MESSAGE(close(g.shared_gate[i], rg.shared_gate[i]), "shared gate grad " << i);
  const std::int64_t Fsh = layer->params().shared_ffn_hidden;
  BOOST_TEST(Fsh * tp == ref->params().shared_ffn_hidden);
  const std::int64_t shared_halves =
      Fsh ? static_cast<std::int64_t>(g.shared_fc1.size()) / (Fsh * H) : 0;
  for (std::int64_t half = 0; half < shared_halves; ++half)
    for (std::int64_t f = 0; f < Fsh; ++f)
      for (std::int64_t h = 0; h < H; ++h) {
        const std::int64_t mine = (half * Fsh + f) * H + h;
        const std::int64_t whole = (half * Fsh * tp + tp_rank * Fsh + f) * H + h;
        BOOST_REQUIRE(layer->params().shared_fc1[mine] == ref->params().shared_fc1[whole]);
        BOOST_REQUIRE_MESSAGE(close(g.shared_fc1[mine], rg.shared_fc1[whole]),
                              "shared fc1 grad " << mine);
      }
  for (std::int64_t h = 0; h < H && Fsh; ++h)
    for (std::int64_t f = 0; f < Fsh; ++f) {
      const std::int64_t mine = h * Fsh + f, whole = h * Fsh * tp + tp_rank * Fsh + f;
      BOOST_REQUIRE(layer->params().shared_fc2[mine] == ref->params().shared_fc2[whole]);
      BOOST_REQUIRE_MESSAGE(close(g.shared_fc2[mine], rg.shared_fc2[whole]),
                            "shared fc2 grad " << mine);
    }
  // Local expert le is global expert e; with TP this rank holds F columns [tp_rank·Fs, +Fs) of
  // it: fc1 rows half·Fs + f are the whole expert's half·F + tp_rank·Fs + f, fc2 [h][f] its
  // [h][tp_rank·Fs + f].
  const auto El = layer->placement().local_experts();
  const std::int64_t F = dist.ffn_hidden_size, Fs = F / tp;
  BOOST_TEST(layer->tp_rank() == tp_rank);
  BOOST_TEST(layer->params().ffn_hidden == Fs);
  const auto halves = static_cast<std::int64_t>(g.fc1.size()) / (El * Fs * H);
  for (std::int64_t le = 0; le < El; ++le) {
    const auto e = layer->placement().expert(layer->ep_rank(), le);
    for (std::int64_t half = 0; half < halves; ++half)
      for (std::int64_t f = 0; f < Fs; ++f)
        for (std::int64_t h = 0; h < H; ++h) {
          const std::int64_t mine = ((le * halves + half) * Fs + f) * H + h;
          const std::int64_t whole = ((e * halves + half) * F + tp_rank * Fs + f) * H + h;
          BOOST_REQUIRE_MESSAGE(close(g.fc1[mine], rg.fc1[whole]), "fc1 grad of expert " << e);
          // The weights themselves are those of the same global expert.
          BOOST_REQUIRE(layer->params().fc1[mine] == ref->params().fc1[whole]);
        }
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t f = 0; f < Fs; ++f) {
        const std::int64_t mine = (le * H + h) * Fs + f;
        const std::int64_t whole = (e * H + h) * F + tp_rank * Fs + f;
        BOOST_REQUIRE_MESSAGE(close(g.fc2[mine], rg.fc2[whole]), "fc2 grad of expert " << e);
        BOOST_REQUIRE(layer->params().fc2[mine] == ref->params().fc2[whole]);
      }
    if (!layer->params().bias) continue;
    // fc1's bias is split as fc1's rows; fc2's is whole on every TP rank, with its whole grad.
    for (std::int64_t half = 0; half < halves; ++half)
      for (std::int64_t f = 0; f < Fs; ++f)
        BOOST_REQUIRE_MESSAGE(close(g.fc1_bias[(le * halves + half) * Fs + f],
                                    rg.fc1_bias[(e * halves + half) * F + tp_rank * Fs + f]),
                              "fc1 bias grad of expert " << e);
    for (std::int64_t h = 0; h < H; ++h)
      BOOST_REQUIRE_MESSAGE(close(g.fc2_bias[le * H + h], rg.fc2_bias[e * H + h]),
                            "fc2 bias grad of expert " << e);
  }
  // Bytes of the EP exchange: this rank's rows to and from the other EP ranks (its own block
  // stays); over the world, what is sent is received, and with EP > 1 rows do travel.
  const std::int64_t ep = layer->placement().ep(), me = layer->ep_rank();
  std::int64_t rows_sent = 0, rows_received = 0;
  for (std::int64_t p = 0; p < ep; ++p)
    for (std::int64_t le = 0; p != me && le < El; ++le) {
      rows_sent += fwd.saved.send_rows[static_cast<std::size_t>(p * El + le)];
      rows_received += fwd.saved.recv_rows[static_cast<std::size_t>(p * El + le)];
    }
  const auto row_bytes = static_cast<std::int64_t>(sizeof(double)) * H;
  BOOST_TEST(fwd.metrics.bytes_sent == rows_sent * row_bytes);
  BOOST_TEST(fwd.metrics.bytes_received == rows_received * row_bytes);
  // With TP, per segment (and for the shared expert's rows): the gather moves the largest TP
  // rank's rows to and from each peer, the reduce-scatter sends the partials of the peers' rows
  // and receives each peer's partials of this rank's own.
  std::int64_t tp_sent = 0, tp_received = 0;
  const auto count_tp_rows = [&](const sy::detail::tp_rows& rows, std::int64_t own) {
    if (rows.counts.empty()) return;  // no TP, or the remote segment of one EP rank
    const auto blocks = static_cast<std::int64_t>(rows.offsets.size()) - 1;
    std::int64_t most = 0;
    for (int p = 0; p < tp; ++p) {
      std::int64_t n = 0;
      for (std::int64_t le = 0; le < blocks; ++le) n += rows.counts[p * blocks + le];
      most = std::max(most, n);
    }
    const std::int64_t gathered = rows.offsets.back();
    tp_sent += ((tp - 1) * most + gathered - own) * row_bytes;
    tp_received += ((tp - 1) * most + (tp - 1) * own) * row_bytes;
  };
  for (const auto* seg : {&fwd.saved.local, &fwd.saved.remote})
    count_tp_rows(seg->tp, seg->offsets.back());
  count_tp_rows(fwd.saved.shared_tp, sl.count);
  BOOST_TEST(fwd.saved.shared_tp.counts.size() ==
             (tp > 1 && layer->params().has_shared_expert() ? std::size_t(tp) : 0));
  BOOST_TEST(fwd.metrics.tp_bytes_sent == tp_sent);
  BOOST_TEST(fwd.metrics.tp_bytes_received == tp_received);
  std::int64_t world_bytes[4] = {fwd.metrics.bytes_sent, fwd.metrics.bytes_received,
                                 fwd.metrics.tp_bytes_sent, fwd.metrics.tp_bytes_received};
  MPI_Allreduce(MPI_IN_PLACE, world_bytes, 4, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  BOOST_TEST(world_bytes[0] == world_bytes[1]);
  BOOST_TEST((world_bytes[0] > 0) == (ep > 1));
  BOOST_TEST(world_bytes[2] == world_bytes[3]);
  BOOST_TEST((world_bytes[2] > 0) == (tp > 1));
}

sy::Config base_config() {
  auto c = sy_test::small_config(8, 2, true, sy::Activation::silu, false);
  c.hidden_size = 8;
  return c;
}

// TP 2 (np 2) or TP 2 x EP 2 (np 4); F = 8 splits in two.
sy::Config tensor_parallel_config(int world_size) {
  auto c = base_config();
  c.ffn_hidden_size = 8;
  c.tensor_parallel_size = 2;
  c.expert_parallel_size = world_size / 2;
  return c;
}

}  // namespace

BOOST_AUTO_TEST_CASE(expert_parallel_over_every_rank_matches_one_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.expert_parallel_size = world.size();  // EP 2 or EP 4
  run_and_compare(c, -1);
}

BOOST_AUTO_TEST_CASE(round_robin_placement_matches_one_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.expert_parallel_size = world.size();
  c.expert_placement = sy::ExpertPlacement::round_robin;
  c.activation = sy::Activation::gelu;
  c.gated = false;
  run_and_compare(c, -1);
}

namespace {
// E experts over ep ranks in a shuffled order (seeded): a placement neither contiguous nor
// round-robin, as expert migration may leave.
sy::ExpertPlacementMap shuffled_placement(std::int64_t E, std::int64_t ep, std::uint64_t seed) {
  std::vector<std::int64_t> slots(static_cast<std::size_t>(E));
  std::iota(slots.begin(), slots.end(), std::int64_t{0});
  std::mt19937_64 g(seed);
  std::shuffle(slots.begin(), slots.end(), g);
  return sy::ExpertPlacementMap(ep, std::move(slots));
}
}  // namespace

// Expert migration's move: after move_experts() to another placement every global expert has
// its own weights, biases included, on its new owner (checked bit for bit by run_and_compare
// through placement()), and the layer computes y, dx and every gradient of one rank on the whole
// batch. EP over every rank (dropless, then capacity with padded blocks and a rank without
// tokens), TP 2 (x EP 2), and DP 2 x EP 2 on four ranks.
BOOST_AUTO_TEST_CASE(experts_moved_to_another_placement_match_one_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.sharding_strategy = sy::ShardingStrategy::Dynamic;
  c.expert_parallel_size = world.size();
  for (const std::uint64_t seed : {1u, 2u, 3u}) {
    const auto to = shuffled_placement(c.num_experts, world.size(), seed);
    run_and_compare(c, -1, &to);
  }
  auto cap = c;
  cap.token_dispatch = sy::TokenDispatch::capacity;
  cap.capacity_factor = 8.0;
  const auto to = shuffled_placement(c.num_experts, world.size(), 4);
  run_and_compare(cap, 1, &to);
  auto tp = tensor_parallel_config(world.size());
  tp.enable_expert_migration = true;
  const auto tp_to = shuffled_placement(tp.num_experts, tp.expert_parallel_size, 5);
  run_and_compare(tp, -1, &tp_to);
  if (world.size() == 4) {
    auto dp = base_config();
    dp.enable_expert_migration = true;
    dp.expert_parallel_size = 2;
    dp.data_parallel_size = 2;
    const auto dp_to = shuffled_placement(dp.num_experts, 2, 6);
    run_and_compare(dp, -1, &dp_to);
  }
}

// migrate_experts() moves the experts only when the EP ranks' imbalance under the step's loads
// is above migration_threshold and the balanced placement lowers the busiest rank's load; the
// experts' weights and the caller's per-expert state (optimizer moments) go with them; loads
// that differ between ranks, or of the wrong length on one rank, are an error on every rank.
BOOST_AUTO_TEST_CASE(migrate_experts_balances_the_ranks_and_carries_per_expert_state) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.sharding_strategy = sy::ShardingStrategy::Dynamic;
  c.migration_threshold = 0.2;
  c.expert_parallel_size = world.size();
  sy::MpiGroups groups = sy::make_mpi_groups(world, sy::Layout(c));
  auto layer = mpi_layer(c, groups);
  layer->initialize(21);
  auto one_cfg = c;
  one_cfg.expert_parallel_size = 1;
  sy::LocalComm one;
  auto ref = sy::make_layer<double>(one_cfg, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  ref->initialize(21);
  const std::int64_t E = c.num_experts, El = layer->placement().local_experts();
  const std::int64_t me = layer->ep_rank();
  // The caller's state: three values per local expert, of its global id.
  const auto state_of = [&](std::int64_t e, std::int64_t i) {
    return 10.0 * double(e) + double(i);
  };
  std::vector<double> state(static_cast<std::size_t>(El * 3));
  for (std::int64_t j = 0; j < El; ++j)
    for (std::int64_t i = 0; i < 3; ++i)
      state[static_cast<std::size_t>(j * 3 + i)] = state_of(layer->placement().expert(me, j), i);
  std::vector<std::vector<double>*> also{&state};
  const auto check_experts = [&] {
    const std::size_t fc1 = layer->params().fc1.size() / static_cast<std::size_t>(El);
    for (std::int64_t j = 0; j < El; ++j) {
      const std::int64_t e = layer->placement().expert(me, j);
      BOOST_REQUIRE(std::equal(layer->params().fc1.begin() + j * fc1,
                               layer->params().fc1.begin() + (j + 1) * fc1,
                               ref->params().fc1.begin() + e * fc1));
      for (std::int64_t i = 0; i < 3; ++i)
        BOOST_REQUIRE(state[static_cast<std::size_t>(j * 3 + i)] == state_of(e, i));
    }
  };
  const sy::ExpertPlacementMap start = layer->placement();

  // Even loads: nothing to gain, nothing moves.
  const std::vector<std::int64_t> even(static_cast<std::size_t>(E), 10);
  BOOST_TEST(!layer->migrate_experts(even, also));
  BOOST_TEST((layer->placement() == start));
  // Rank 0's experts (contiguous placement) get nearly every token: they spread out.
  std::vector<std::int64_t> skewed(static_cast<std::size_t>(E), 1);
  for (std::int64_t e = 0; e < El; ++e) skewed[static_cast<std::size_t>(e)] = 100 + e;
  BOOST_TEST(start.imbalance(skewed) > 0.2);
  BOOST_TEST(layer->migrate_experts(skewed, also));
  BOOST_TEST((layer->placement() == start.balanced(skewed)));
  BOOST_TEST(layer->placement().imbalance(skewed) < start.imbalance(skewed));
  check_experts();
  // An imbalance below 0.1 under the new placement: below the threshold.
  std::vector<std::int64_t> mild(static_cast<std::size_t>(E), 10);
  mild[0] += El;
  BOOST_TEST(layer->placement().imbalance(mild) <= 0.2);
  const sy::ExpertPlacementMap settled = layer->placement();
  BOOST_TEST(!layer->migrate_experts(mild, also));
  BOOST_TEST((layer->placement() == settled));

  // Loads that differ on the last rank: comm_error on every rank, and nothing moves.
  auto differ = skewed;
  if (world.rank() == world.size() - 1) differ[0] += 1;
  try {
    layer->migrate_experts(differ, also);
    BOOST_FAIL("loads that differ were accepted");
  } catch (const sy::comm_error& e) {
    BOOST_TEST(has(e, "ranks disagree on the expert loads"), e.what());
  }
  BOOST_TEST((layer->placement() == settled));
  // The wrong number of loads on rank 0: its own error there, comm_error naming it elsewhere.
  std::vector<std::int64_t> wrong = even;
  if (world.rank() == 0) wrong.pop_back();
  try {
    layer->migrate_experts(wrong, also);
    BOOST_FAIL("a wrong number of loads was accepted");
  } catch (const sy::precondition_error& e) {
    BOOST_TEST(world.rank() == 0);
    BOOST_TEST(has(e, "7 loads for 8 experts"), e.what());
  } catch (const sy::comm_error& e) {
    BOOST_TEST(world.rank() != 0);
    BOOST_TEST(has(e, "MoELayer::migrate_experts: rank 0 of"), e.what());
  }
  check_experts();
  // A tensor given twice would move twice: an error on every rank, before anything moves.
  std::vector<std::vector<double>*> twice{&state, &state};
  BOOST_CHECK_EXCEPTION(layer->move_experts(start, twice), sy::precondition_error,
                        [](const sy::precondition_error& e) { return has(e, "given twice"); });
  BOOST_TEST((layer->placement() == settled));
  check_experts();

  // Without migration (ModelParallel) the same skewed loads move nothing.
  auto fixed = c;
  fixed.sharding_strategy = sy::ShardingStrategy::ModelParallel;
  fixed.migration_threshold = 0.3;
  auto still = mpi_layer(fixed, groups);
  BOOST_TEST(!still->migrate_experts(skewed));
  BOOST_TEST((still->placement() == start));

  // A load_balancing object: a check every 2nd step, on loads smoothed by 0.5, at most 2
  // experts moved (swaps when the packing would move more).
  auto scheduled = c;
  scheduled.migration_threshold = 0.3;
  scheduled.load_balancing.present = true;
  scheduled.load_balancing.imbalance_threshold = 0.2;
  scheduled.load_balancing.check_frequency = 2;
  scheduled.load_balancing.load_smoothing_factor = 0.5;
  scheduled.load_balancing.max_concurrent_migrations = 2;
  auto paced = mpi_layer(scheduled, groups);
  BOOST_TEST(!paced->migrate_experts(skewed));  // step 1: not a check
  BOOST_TEST((paced->placement() == start));
  // Step 2, a check, on h = 0.5 skewed + 0.5 skewed2.
  std::vector<std::int64_t> skewed2 = skewed;
  skewed2[0] += 20;
  BOOST_TEST(paced->migrate_experts(skewed2));
  std::vector<double> h(static_cast<std::size_t>(E));
  for (std::size_t e = 0; e < h.size(); ++e)
    h[e] = 0.5 * double(skewed[e]) + 0.5 * double(skewed2[e]);
  BOOST_TEST((paced->migration().smoothed_loads() == h));
  const auto expected = sy::migration_target(start, h, 0.2, 2);
  BOOST_REQUIRE(expected.has_value());
  BOOST_TEST((paced->placement() == *expected));
  BOOST_TEST(start.experts_moved_to(paced->placement()) <= 2);
  BOOST_TEST(!paced->migrate_experts(skewed));  // step 3: not a check
  // enable_auto_balancing false: the experts stay, with no collective.
  scheduled.load_balancing.enable_auto_balancing = false;
  auto off = mpi_layer(scheduled, groups);
  for (int step = 0; step < 2; ++step) BOOST_TEST(!off->migrate_experts(skewed));
  BOOST_TEST((off->placement() == start));
}

// A gated shared expert beside the routed ones (GLU SiLU), EP over every rank, one rank with
// no tokens.
BOOST_AUTO_TEST_CASE(a_shared_expert_under_expert_parallelism_matches_one_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.expert_parallel_size = world.size();
  c.shared_expert_intermediate_size = 6;
  c.shared_expert_gate = true;
  run_and_compare(c, 1);
}

BOOST_AUTO_TEST_CASE(data_parallel_times_expert_parallel_matches_one_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  if (world.size() < 4) return;  // DP 2 x EP 2 needs four ranks (the np4 run)
  auto c = base_config();
  c.expert_parallel_size = 2;
  c.data_parallel_size = world.size() / 2;
  run_and_compare(c, -1);
}

namespace {

// Expert sync (enable_expert_sync) in layout `c` (DP 2 with EP or TP): the router's gradients are
// still summed over the dense group (one rank's on the whole batch); the experts' are this
// replica's own, scaled by the expert-data-parallel group's size D (not summed over it); every
// sync_frequency-th step the replicas' expert weights, and only those, are averaged; a loop that
// skips the sync gets an error; without the switch the gradients are summed and nothing averaged.
void check_expert_sync(sy::Config c) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  c.add_bias_linear = true;
  c.enable_expert_sync = true;
  c.sync_frequency = 2;
  const std::int64_t T = 24, H = c.hidden_size;
  const auto x = random_vector(5, static_cast<std::size_t>(T * H));
  const auto dy = random_vector(6, static_cast<std::size_t>(T * H));
  const one_rank_run one(c, x.data(), dy.data(), T);
  const sy::MpiGroups probe = sy::make_mpi_groups(world, sy::Layout(c));
  const int tp = probe.tensor_parallel.size();
  const auto sl = slice_of(T, probe.dense_data_parallel.rank() * tp + probe.tensor_parallel.rank(),
                           probe.dense_data_parallel.size() * tp, -1);
  mpi_run run(world, c, x.data() + sl.first * H, dy.data() + sl.first * H, sl.count);
  auto& layer = *run.layer;
  const int D = run.groups.expert_data_parallel.size(), r = run.groups.expert_data_parallel.rank();
  BOOST_TEST(D == 2);
  const auto expert_tensors = [](auto& set) {
    return std::vector{&set.fc1, &set.fc2, &set.fc1_bias, &set.fc2_bias};
  };

  sy::MoEGrads<double> local = run.grads;
  layer.reduce_gradients(run.grads);
  for (std::size_t i = 0; i < local.router_weight.size(); ++i)
    BOOST_REQUIRE_MESSAGE(close(run.grads.router_weight[i], one.grads.router_weight[i]),
                          "router grad " << i);
  auto mine = expert_tensors(run.grads);
  auto own = expert_tensors(local);
  bool some_nonzero = false;
  for (std::size_t t = 0; t < mine.size(); ++t) {
    BOOST_REQUIRE(!own[t]->empty());
    for (std::size_t i = 0; i < own[t]->size(); ++i) {
      BOOST_REQUIRE_MESSAGE((*mine[t])[i] == D * (*own[t])[i], "expert grad " << t << "/" << i);
      some_nonzero = some_nonzero || (*own[t])[i] != 0;
    }
  }
  BOOST_TEST(some_nonzero);

  // Replica r moves its experts by 0.25·(r + 1) and its router by r: a sync averages the experts
  // (to +0.25·(D + 1)/2 on every replica) and leaves the router alone.
  auto& p = layer.params();
  sy::MoEParams<double> start = p;
  const auto shift = [&](double by) {
    p.for_each_expert_tensor([&](std::vector<double>& v) {
      for (double& w : v) w += by;
    });
  };
  const double mine_shift = 0.25 * (r + 1), mean_shift = 0.25 * (D + 1) / 2.0;
  shift(mine_shift);
  p.router_weight[0] += r;
  const auto check = [&](double expected_shift, const char* when) {
    auto now = expert_tensors(p);
    auto was = expert_tensors(start);
    for (std::size_t t = 0; t < now.size(); ++t)
      for (std::size_t i = 0; i < now[t]->size(); ++i)
        BOOST_REQUIRE_MESSAGE(close((*now[t])[i], (*was[t])[i] + expected_shift),
                              when << ": expert tensor " << t << "/" << i);
    BOOST_TEST(p.router_weight[0] == start.router_weight[0] + r);
  };
  BOOST_TEST(!layer.sync_expert_weights(1));
  check(mine_shift, "step 1");
  BOOST_TEST(layer.sync_expert_weights(2));
  check(mean_shift, "step 2");
  shift(mine_shift);  // the replicas part again: step 3 leaves them apart, step 4 averages
  BOOST_TEST(!layer.sync_expert_weights(3));
  check(mean_shift + mine_shift, "step 3");
  BOOST_TEST(layer.sync_expert_weights(4));
  check(2 * mean_shift, "step 4");
  BOOST_CHECK_THROW(layer.sync_expert_weights(0), sy::precondition_error);

  // A loop that forgets the sync: sync_frequency reductions pass, the next is an error on every
  // rank (before any collective, so nothing hangs).
  layer.reduce_gradients(run.grads);
  layer.reduce_gradients(run.grads);
  try {
    layer.reduce_gradients(run.grads);
    BOOST_ERROR("a third step without a sync was accepted");
  } catch (const sy::precondition_error& e) {
    BOOST_TEST(has(e, "sync_frequency 2, but 2 optimizer steps passed without an average"),
               e.what());
  }

  // Without enable_expert_sync: expert gradients summed over the replicas, nothing averaged.
  c.enable_expert_sync = false;
  c.sync_frequency = 100;
  mpi_run plain(world, c, x.data() + sl.first * H, dy.data() + sl.first * H, sl.count);
  sy::MoEGrads<double> plain_local = plain.grads;
  plain.layer->reduce_gradients(plain.grads);
  auto summed = expert_tensors(plain_local);
  auto reduced = expert_tensors(plain.grads);
  for (std::size_t t = 0; t < summed.size(); ++t) {
    std::vector<double>& v = *summed[t];
    MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_DOUBLE, MPI_SUM,
                  plain.groups.expert_data_parallel.native());
    for (std::size_t i = 0; i < v.size(); ++i)
      BOOST_REQUIRE_MESSAGE(close((*reduced[t])[i], v[i]), "summed expert grad " << t << "/" << i);
  }
  plain.layer->params().fc1[0] += r;
  const double fc1_0 = plain.layer->params().fc1[0];
  BOOST_TEST(!plain.layer->sync_expert_weights(2));
  BOOST_TEST(plain.layer->params().fc1[0] == fc1_0);
}

}  // namespace

BOOST_AUTO_TEST_CASE(expert_sync_over_data_parallel_replicas) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.data_parallel_size = 2;
  c.expert_parallel_size = world.size() / 2;  // DP 2 (np 2) or DP 2 x EP 2 (np 4)
  check_expert_sync(c);
}

// Tensor-parallel experts: each replica is an F shard, averaged with the same shard of the other
// replica (np 4: DP 2 x TP 2).
BOOST_AUTO_TEST_CASE(expert_sync_with_tensor_parallel_experts) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  if (world.size() < 4) return;
  auto c = tensor_parallel_config(world.size());
  c.expert_parallel_size = 1;
  c.data_parallel_size = 2;
  check_expert_sync(c);
}

// gradient_compression: reduce_gradients sums every gradient in bfloat16 over its group
// (bf16_sum_check.hpp: the same bits on every rank of the group, bfloat16 values within its
// rounding of the exact sum, over two ranks exactly bf16(bf16(a) + bf16(b))): the router and the
// shared expert's gate over the dense group (and then the TP group), the shared expert over the
// dense group, the experts over the expert-data-parallel group.
namespace {
void check_gradient_compression(sy::Config c) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  c.gradient_compression = true;
  auto groups = sy::make_mpi_groups(world, sy::Layout(c));
  auto layer = mpi_layer(c, groups);
  layer->initialize(21);
  const std::int64_t T = 12, H = c.hidden_size;
  const auto seed = static_cast<std::uint32_t>(world.rank());
  const auto x = random_vector(110 + seed, static_cast<std::size_t>(T * H));
  const auto dy = random_vector(120 + seed, static_cast<std::size_t>(T * H));
  auto f = layer->forward(sy::matrix_view<const double>(x.data(), T, H));
  auto g = layer->make_grads();
  (void)layer->backward(f.saved, sy::matrix_view<const double>(dy.data(), T, H), g);
  const sy::MoEGrads<double> local = g;
  layer->reduce_gradients(g);
  // With TP (here DP x TP, EP 1) the ranks holding other tokens are the whole world.
  const bool tp = c.tensor_parallel_size > 1;
  sy::MpiComm& tokens = tp ? world : groups.dense_data_parallel;
  sy::MpiComm& dense = groups.dense_data_parallel;
  sy::MpiComm& experts = groups.expert_data_parallel;
  int away = 0;
  away += sy_test::check_bf16_sum(tokens, local.router_weight, g.router_weight,
                                  !tp && tokens.size() == 2, "router grad");
  away += sy_test::check_bf16_sum(tokens, local.shared_gate, g.shared_gate,
                                  !tp && tokens.size() == 2, "shared gate grad");
  away += sy_test::check_bf16_sum(dense, local.shared_fc1, g.shared_fc1, dense.size() == 2,
                                  "shared fc1 grad");
  away += sy_test::check_bf16_sum(dense, local.shared_fc2, g.shared_fc2, dense.size() == 2,
                                  "shared fc2 grad");
  away += sy_test::check_bf16_sum(experts, local.fc1, g.fc1, experts.size() == 2, "fc1 grad");
  away += sy_test::check_bf16_sum(experts, local.fc2, g.fc2, experts.size() == 2, "fc2 grad");
  BOOST_TEST(away > 0);
}
}  // namespace

BOOST_AUTO_TEST_CASE(gradient_compression_sums_gradients_in_bfloat16) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();  // GLU SiLU, no biases
  c.shared_expert_intermediate_size = 6;
  c.shared_expert_gate = true;
  c.data_parallel_size = 2;
  c.expert_parallel_size = world.size() / 2;  // DP 2 (np 2) or DP 2 x EP 2 (np 4)
  check_gradient_compression(c);
  if (world.size() < 4) return;
  auto t = tensor_parallel_config(world.size());  // DP 2 x TP 2
  t.expert_parallel_size = 1;
  t.data_parallel_size = 2;
  t.shared_expert_intermediate_size = 6;
  t.shared_expert_gate = true;
  check_gradient_compression(t);
}

// Tensor-parallel experts: F split over the TP group, tokens spread over DP x EP x TP.
BOOST_AUTO_TEST_CASE(tensor_parallel_experts_match_one_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = tensor_parallel_config(world.size());  // GLU (SiLU), dropless, aux + z-loss
  c.add_bias_linear = true;
  run_and_compare(c, -1);
}

// Megatron's shared expert (gated, GLU SiLU) split over TP as the experts are: TP 2 (np 2) or
// TP 2 x EP 2 (np 4), one rank with no tokens.
BOOST_AUTO_TEST_CASE(a_tensor_parallel_shared_expert_matches_one_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = tensor_parallel_config(world.size());
  c.add_bias_linear = false;
  c.shared_expert_intermediate_size = 6;
  c.shared_expert_gate = true;
  run_and_compare(c, 1);
  c.shared_expert_gate = false;
  c.activation = sy::Activation::gelu;
  c.gated = false;
  run_and_compare(c, -1);
}

BOOST_AUTO_TEST_CASE(tensor_parallel_times_data_parallel_with_capacity_matches_one_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = tensor_parallel_config(world.size());
  c.add_bias_linear = true;
  c.data_parallel_size = world.size() / 2;  // TP 2 (np 2), TP 2 x DP 2 (np 4)
  c.expert_parallel_size = 1;
  c.activation = sy::Activation::gelu;
  c.gated = false;
  c.token_dispatch = sy::TokenDispatch::capacity;
  c.capacity_factor = 8.0;  // nothing dropped: equal to the dropless single rank
  run_and_compare(c, -1);
}

BOOST_AUTO_TEST_CASE(a_tensor_parallel_rank_with_zero_tokens_takes_part) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.ffn_hidden_size = 8;
  c.tensor_parallel_size = world.size();  // TP 2 or TP 4
  run_and_compare(c, 1);
}

BOOST_AUTO_TEST_CASE(a_rank_with_zero_tokens_takes_part) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.expert_parallel_size = world.size();
  run_and_compare(c, 1);
}

BOOST_AUTO_TEST_CASE(capacity_dispatch_exchanges_fixed_blocks) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.expert_parallel_size = world.size();
  c.token_dispatch = sy::TokenDispatch::capacity;
  c.capacity_factor = 8.0;  // nothing dropped: equal to the dropless single rank
  run_and_compare(c, -1);
}

BOOST_AUTO_TEST_CASE(capacity_with_uneven_token_counts_matches_each_rank_alone) {
  // C comes from each rank's own T (as in Megatron), so with drops and ranks of different token
  // counts (one with none) every rank's y and dx equal those of one rank routing its own tokens
  // alone. No balance losses: those use the group's counts, which one rank alone does not see.
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.expert_parallel_size = world.size();
  c.token_dispatch = sy::TokenDispatch::capacity;
  c.capacity_factor = 0.5;
  c.load_balancing_type = sy::LoadBalancingType::none;
  c.load_balance_loss_coeff = 0;
  c.router_z_loss_coeff = 0;
  const std::int64_t H = c.hidden_size;
  const std::int64_t tokens_of_rank[] = {13, 0, 21, 6};
  const std::int64_t T = tokens_of_rank[world.rank() % 4];
  const auto x =
      random_vector(30 + static_cast<std::uint32_t>(world.rank()), static_cast<std::size_t>(T * H));
  const auto dy =
      random_vector(40 + static_cast<std::uint32_t>(world.rank()), static_cast<std::size_t>(T * H));

  const one_rank_run one(c, x.data(), dy.data(), T);
  const auto& rf = one.fwd;
  const auto& rdx = one.dx;
  const mpi_run run(world, c, x.data(), dy.data(), T);
  const auto& fwd = run.fwd;
  const auto& dx = run.dx;

  BOOST_TEST(fwd.metrics.capacity.value_or(-1) == rf.metrics.capacity.value_or(-1));
  if (world.rank() == 0) BOOST_TEST(rf.metrics.dropped > 0);  // the case has drops
  for (std::int64_t i = 0; i < T * H; ++i) {
    BOOST_REQUIRE_MESSAGE(close(fwd.y[i], rf.y[i]), "y[" << i << "]");
    BOOST_REQUIRE_MESSAGE(close(dx[i], rdx[i]), "dx[" << i << "]");
  }
  // The group's dropped routes are the sum of each rank's own.
  std::int64_t dropped = rf.metrics.dropped;
  MPI_Allreduce(MPI_IN_PLACE, &dropped, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  BOOST_TEST(fwd.metrics.dropped == dropped);
}

namespace {
// The last rank's config differs: every rank's constructor throws (with TP the dense groups
// check first, then the TP groups, which hear whether a dense group failed), none hangs.
void config_mismatch_fails_on_every_rank(sy::Config c) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  if (world.rank() == world.size() - 1) c.router_z_loss_coeff = 0.002;
  auto groups = sy::make_mpi_groups(world, sy::Layout(c));
  BOOST_CHECK_EXCEPTION(mpi_layer(c, groups), sy::comm_error, [](const sy::comm_error& e) {
    return std::string(e.what()).find("ranks disagree on the layer config") != std::string::npos;
  });
}
}  // namespace

BOOST_AUTO_TEST_CASE(a_config_mismatch_is_an_error_on_every_rank_not_a_hang) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.expert_parallel_size = world.size();
  config_mismatch_fails_on_every_rank(c);
}

BOOST_AUTO_TEST_CASE(a_config_mismatch_under_tensor_parallelism_is_an_error_on_every_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  config_mismatch_fails_on_every_rank(tensor_parallel_config(world.size()));
}

BOOST_AUTO_TEST_CASE(blocking_exchange_without_overlap_matches_one_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.expert_parallel_size = world.size();
  c.communication_overlap = false;
  run_and_compare(c, -1);
}

// Issue 11: bad input on one rank only (NaN in its x, then a dy of the wrong shape) fails on that
// rank before any exchange, and every other rank gets an error naming it, not a hang. The group
// stays usable: a good step runs afterwards on every rank.
namespace {
// Bad input on the last rank only; the others' errors name the failed rank in their group (with
// TP, in the dense group or the TP group through which the failure reached them).
void bad_input_fails_on_every_rank(const sy::Config& c) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto groups = sy::make_mpi_groups(world, sy::Layout(c));
  auto layer = mpi_layer(c, groups);
  layer->initialize(3);
  const int bad = world.size() - 1;
  const bool is_bad = world.rank() == bad;
  const std::int64_t T = 4, H = c.hidden_size;
  std::vector<double> x = random_vector(40 + static_cast<std::uint32_t>(world.rank()), static_cast<std::size_t>(T * H));
  if (is_bad) x[2 * H + 1] = std::nan("");
  // "<where>: rank r of n failed: ...": the world's rank without TP. With TP the failure
  // reaches a rank through its dense group or its TP group (whose message then nests the dense
  // group's), and the message names the group.
  const auto failed_text = [&](const sy::comm_error& e, const std::string& where) {
    if (c.tensor_parallel_size == 1)
      return has(e, where + ": rank " + std::to_string(bad) + " of " +
                        std::to_string(world.size()) + " failed");
    return std::string(e.what()).starts_with(where + ", dense group: rank ") ||
           std::string(e.what()).starts_with(where + ", TP group: rank ");
  };
  if (is_bad) {
    BOOST_CHECK_EXCEPTION(layer->forward(sy::matrix_view<const double>(x.data(), T, H)),
                          sy::numeric_error, [&](const sy::numeric_error& e) {
                            return has(e, "router logits of token 2 are not finite");
                          });
  } else {
    BOOST_CHECK_EXCEPTION(layer->forward(sy::matrix_view<const double>(x.data(), T, H)),
                          sy::comm_error, [&](const sy::comm_error& e) {
                            return failed_text(e, "MoELayer::forward") &&
                                   has(e, "router logits of token 2 are not finite");
                          });
  }

  // A good forward, then a backward whose dy has the wrong shape on the bad rank only.
  x[2 * H + 1] = 0.5;
  auto fwd = layer->forward(sy::matrix_view<const double>(x.data(), T, H));
  BOOST_TEST(fwd.y.size() == static_cast<std::size_t>(T * H));
  const std::int64_t dy_rows = is_bad ? T - 1 : T;
  std::vector<double> dy = random_vector(60, static_cast<std::size_t>(dy_rows * H));
  auto g = layer->make_grads();
  if (is_bad) {
    BOOST_CHECK_EXCEPTION(
        layer->backward(fwd.saved, sy::matrix_view<const double>(dy.data(), dy_rows, H), g),
        sy::precondition_error, [&](const sy::precondition_error& e) { return has(e, "dy is [3]"); });
  } else {
    BOOST_CHECK_EXCEPTION(
        layer->backward(fwd.saved, sy::matrix_view<const double>(dy.data(), dy_rows, H), g),
        sy::comm_error, [&](const sy::comm_error& e) {
          return failed_text(e, "MoELayer::backward") && has(e, "dy is [3]");
        });
  }

  // Still usable: a full step on every rank.
  auto fwd2 = layer->forward(sy::matrix_view<const double>(x.data(), T, H));
  std::vector<double> dy2 = random_vector(61, static_cast<std::size_t>(T * H));
  const auto dx = layer->backward(fwd2.saved, sy::matrix_view<const double>(dy2.data(), T, H), g);
  for (double v : dx) BOOST_REQUIRE(std::isfinite(v));
}
}  // namespace

// A capacity_factor whose capacity does not fit for one rank's T (the others have no tokens,
// so their capacity is 0) is a config_error there and an error naming it on every other rank:
// the capacity is computed in the local stage, before the first collective.
BOOST_AUTO_TEST_CASE(a_capacity_too_large_for_one_rank_is_an_error_on_every_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  world.set_timeout(std::chrono::seconds(20));
  auto c = base_config();
  c.expert_parallel_size = world.size();
  c.token_dispatch = sy::TokenDispatch::capacity;
  // Valid for the config's one token per rank (rule capacity_fits: 1e8 x 2 x (1/8 + 1) + 1 per
  // expert), but 128 tokens need ceil(128 x 2 / 8 x 1e8) = 3.2e9 > 2^31 - 1.
  c.batch_size_per_gpu = 1;
  c.sequence_length = 1;
  c.capacity_factor = 1e8;
  auto groups = sy::make_mpi_groups(world, sy::Layout(c));
  auto layer = mpi_layer(c, groups);
  layer->initialize(3);
  const int busy = world.size() - 1;
  const std::int64_t T = world.rank() == busy ? 128 : 0, H = c.hidden_size;
  const std::vector<double> x = random_vector(7, static_cast<std::size_t>(T * H));
  if (world.rank() == busy) {
    BOOST_CHECK_EXCEPTION(layer->forward(sy::matrix_view<const double>(x.data(), T, H)),
                          sy::config_error, [&](const sy::config_error& e) {
                            return has(e, "capacity_factor: 1e+08 gives a capacity of");
                          });
  } else {
    BOOST_CHECK_EXCEPTION(layer->forward(sy::matrix_view<const double>(x.data(), T, H)),
                          sy::comm_error, [&](const sy::comm_error& e) {
                            return has(e, "MoELayer::forward: rank " + std::to_string(busy)) &&
                                   has(e, "capacity_factor: 1e+08");
                          });
  }
}

BOOST_AUTO_TEST_CASE(a_rank_with_bad_input_is_an_error_on_every_rank_not_a_hang) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.expert_parallel_size = world.size();
  bad_input_fails_on_every_rank(c);
}

// With TP the failure crosses the dense group and the TP group (the last rank is in another
// dense group than rank 0 under TP 2).
BOOST_AUTO_TEST_CASE(a_tensor_parallel_rank_with_bad_input_is_an_error_on_every_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  bad_input_fails_on_every_rank(tensor_parallel_config(world.size()));
}

// A failure inside one rank's experts (out of memory for the workspace, say) comes after the
// first exchange, while peers wait for the rank's rows: the rank still joins every exchange and
// the group fails together after the last one, then runs a good step.
namespace {
// The config's experts, throwing on demand.
struct failing_experts final : sy::detail::expert_hooks<double> {
  explicit failing_experts(const sy::Config& c) : inner(sy::detail::make_expert_hooks<double>(c)) {}
  int fc1_multiplier() const override { return inner->fc1_multiplier(); }
  std::size_t workspace_bytes(const sy::expert_shape& s, sy::index_t rows) const override {
    return inner->workspace_bytes(s, rows);
  }
  void forward(const sy::expert_shape& s, const sy::expert_weights<double>& w,
               sy::matrix_view<const double> x, std::span<const sy::index_t> offsets,
               sy::matrix_view<double> y, std::span<std::byte> ws,
               const sy::expert_options& opt) const override {
    if (due(fail_forward_call)) throw std::bad_alloc();
    inner->forward(s, w, x, offsets, y, ws, opt);
  }
  void backward(const sy::expert_shape& s, const sy::expert_weights<double>& w,
                sy::matrix_view<const double> x, std::span<const sy::index_t> offsets,
                sy::matrix_view<const double> dy, sy::matrix_view<double> dx,
                const sy::expert_grads<double>& g, std::span<std::byte> ws,
                const sy::expert_options& opt) const override {
    if (due(fail_backward_call)) throw std::runtime_error("expert backward ran out of memory");
    inner->backward(s, w, x, offsets, dy, dx, g, ws, opt);
  }
  void initialize(const sy::expert_shape& s, const sy::expert_init& init,
                  const sy::expert_tensors<double>& w) const override {
    inner->initialize(s, init, w);
  }
  std::unique_ptr<sy::detail::expert_hooks<double>> inner;
  // The n-th call from now throws (0: none), forward and backward counted apart: a forward
  // calls the experts once per segment (its own rows, then with EP the received ones).
  mutable int fail_forward_call = 0, fail_backward_call = 0;
  static bool due(int& n) { return n > 0 && --n == 0; }
};

// A layer of `c` on its MPI groups whose experts (and shared expert) fail on demand.
struct failing_layer {
  explicit failing_layer(const sy::Config& c)
      : world(MPI_COMM_WORLD, std::chrono::seconds(60)),
        groups(sy::make_mpi_groups(world, sy::Layout(c))) {
    auto owned = std::make_unique<failing_experts>(c);
    experts = owned.get();
    layer = std::make_unique<sy::MoELayerCore<double, sy::MpiComm>>(
        c,
        sy::MoEComms<sy::MpiComm>{&groups.expert_parallel, &groups.dense_data_parallel,
                                  &groups.expert_data_parallel, &groups.tensor_parallel},
        sy::detail::make_router_hooks<double>(c), std::move(owned));
    layer->initialize(5);
  }
  sy::MpiComm world;
  sy::MpiGroups groups;
  failing_experts* experts = nullptr;
  std::unique_ptr<sy::MoELayerCore<double, sy::MpiComm>> layer;
};

// The roles and data of a failure test of layer `c` over the world: the last rank fails, and
// with TP its TP peers hear of it first; every rank has its own 6 tokens x and dy.
struct failure_setup {
  failure_setup(const sy::Config& c, const sy::MpiComm& world)
      : is_bad(world.rank() == world.size() - 1),
        x(random_vector(70 + static_cast<std::uint32_t>(world.rank()), rows(c))),
        dy(random_vector(80 + static_cast<std::uint32_t>(world.rank()), rows(c))),
        xv(x.data(), T, c.hidden_size),
        dyv(dy.data(), T, c.hidden_size) {
    const std::vector<std::int64_t> tp_group =
        sy::Layout(c).group(sy::GroupKind::tensor_parallel, world.rank());
    tp_peer_of_bad =
        c.tensor_parallel_size > 1 && !is_bad &&
        std::find(tp_group.begin(), tp_group.end(), world.size() - 1) != tp_group.end();
  }
  static constexpr std::int64_t T = 6;
  static std::size_t rows(const sy::Config& c) {
    return static_cast<std::size_t>(T * c.hidden_size);
  }
  bool is_bad, tp_peer_of_bad = false;
  std::vector<double> x, dy;
  sy::matrix_view<const double> xv, dyv;

  // `call` fails on the last rank: there it throws `Bad` (whose message has `own`); every other
  // rank gets comm_error naming `where` and the failure's `cause`.
  template <class Bad, class Call>
  void expect_failure(Call&& call, const std::string& own, const std::string& where,
                      const std::string& cause) const {
    if (is_bad)
      BOOST_CHECK_EXCEPTION(call(), Bad, [&](const Bad& e) { return has(e, own); });
    else
      BOOST_CHECK_EXCEPTION(call(), sy::comm_error, [&](const sy::comm_error& e) {
        return has(e, where) && has(e, cause);
      });
  }
};

void expert_failure_fails_on_every_rank(const sy::Config& c) {
  failing_layer fl(c);
  failing_experts& experts = *fl.experts;
  sy::MoELayerCore<double, sy::MpiComm>& layer = *fl.layer;
  const failure_setup s(c, fl.world);
  const bool is_bad = s.is_bad, tp_peer_of_bad = s.tp_peer_of_bad;
  const auto& xv = s.xv;
  const auto& dyv = s.dyv;
  const auto reference = layer.forward(xv);  // a good forward first

  // A failure in the first segment (while the EP exchange is in flight), then in the second
  // (after the first segment took its workspace).
  const int segments = layer.placement().ep() > 1 ? 2 : 1;
  for (int seg = 1; seg <= segments; ++seg) {
    BOOST_TEST_CONTEXT("the experts fail in segment " << seg) {
      experts.fail_forward_call = is_bad ? seg : 0;
      // With one EP rank the check after the experts also covers the dispatch; with TP the
      // failed rank's TP peer hears of it before the reduce-scatter it would wait in, and only
      // it: the others hear at the check after the experts.
      s.expect_failure<std::bad_alloc>(
          [&] { layer.forward(xv); }, "",
          tp_peer_of_bad               ? "MoELayer::forward: TP reduce-scatter: rank 1 of 2 failed"
          : c.expert_parallel_size > 1 ? "MoELayer::forward: experts"
                                       : "MoELayer::forward: dispatch and experts",
          "failed: std::bad_alloc");
      experts.fail_forward_call = 0;

      auto fwd = layer.forward(xv);
      BOOST_TEST(fwd.y == reference.y, boost::test_tools::per_element());  // the same step
      auto g = layer.make_grads();
      experts.fail_backward_call = is_bad ? seg : 0;
      s.expect_failure<std::runtime_error>(
          [&] { layer.backward(fwd.saved, dyv, g); }, "ran out of memory",
          tp_peer_of_bad ? "MoELayer::backward: TP reduce-scatter: rank 1 of 2 failed"
                         : "MoELayer::backward: experts",
          "expert backward ran out of memory");
      experts.fail_backward_call = 0;
    }
  }

  // Still usable: a full step on every rank, with the forward's bits of the first one.
  auto fwd2 = layer.forward(xv);
  BOOST_TEST(fwd2.y == reference.y, boost::test_tools::per_element());
  auto g2 = layer.make_grads();
  const auto dx = layer.backward(fwd2.saved, dyv, g2);
  for (double v : dx) BOOST_REQUIRE(std::isfinite(v));
}

// The shared expert runs before the routed ones (the experts' first call in forward and in
// backward): one rank failing in it sends no rows, and its group fails together at the
// dispatch's check (with one EP rank, the check after the experts); with TP its TP peer hears
// of it before the shared expert's reduce-scatter it would wait in. Then a good step, the same
// bits as before, gradients included.
void shared_expert_failure_fails_on_every_rank(const sy::Config& c) {
  failing_layer fl(c);
  failing_experts& experts = *fl.experts;
  sy::MoELayerCore<double, sy::MpiComm>& layer = *fl.layer;
  BOOST_TEST_REQUIRE(layer.params().has_shared_expert());
  const failure_setup s(c, fl.world);
  const bool is_bad = s.is_bad, tp_peer_of_bad = s.tp_peer_of_bad;
  const auto& xv = s.xv;
  const auto& dyv = s.dyv;
  auto reference = layer.forward(xv);
  auto ref_grads = layer.make_grads();
  const auto ref_dx = layer.backward(reference.saved, dyv, ref_grads);

  experts.fail_forward_call = is_bad ? 1 : 0;
  s.expect_failure<std::bad_alloc>(
      [&] { layer.forward(xv); }, "",
      tp_peer_of_bad ? "MoELayer::forward: shared expert TP reduce-scatter: rank 1 of 2 failed"
      : c.expert_parallel_size > 1 ? "MoELayer::forward: dispatch"
                                   : "MoELayer::forward: dispatch and experts",
      "failed: std::bad_alloc");
  experts.fail_forward_call = 0;

  auto fwd = layer.forward(xv);
  BOOST_TEST(fwd.y == reference.y, boost::test_tools::per_element());
  auto g = layer.make_grads();
  experts.fail_backward_call = is_bad ? 1 : 0;
  s.expect_failure<std::runtime_error>(
      [&] { layer.backward(fwd.saved, dyv, g); }, "ran out of memory",
      tp_peer_of_bad ? "MoELayer::backward: shared expert TP reduce-scatter: rank 1 of 2 failed"
                     : "MoELayer::backward",
      "expert backward ran out of memory");
  experts.fail_backward_call = 0;

  auto fwd2 = layer.forward(xv);
  BOOST_TEST(fwd2.y == reference.y, boost::test_tools::per_element());
  auto g2 = layer.make_grads();
  BOOST_TEST(layer.backward(fwd2.saved, dyv, g2) == ref_dx, boost::test_tools::per_element());
  BOOST_TEST(g2.shared_fc1 == ref_grads.shared_fc1, boost::test_tools::per_element());
  BOOST_TEST(g2.shared_gate == ref_grads.shared_gate, boost::test_tools::per_element());
  BOOST_TEST(g2.fc1 == ref_grads.fc1, boost::test_tools::per_element());
}
}  // namespace

BOOST_AUTO_TEST_CASE(an_expert_failure_on_one_rank_is_an_error_on_every_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.expert_parallel_size = world.size();  // EP: the failed rank's peers wait in the exchange
  expert_failure_fails_on_every_rank(c);
  c.expert_parallel_size = 1;
  c.data_parallel_size = world.size();  // DP only: no exchange, the metrics reduction waits
  expert_failure_fails_on_every_rank(c);
  // TP 2 (x EP 2): the failed rank's TP peers wait in the gather and reduce-scatter.
  expert_failure_fails_on_every_rank(tensor_parallel_config(world.size()));
}

BOOST_AUTO_TEST_CASE(a_shared_expert_failure_on_one_rank_is_an_error_on_every_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = tensor_parallel_config(world.size());  // TP 2 (x EP 2)
  c.add_bias_linear = false;
  c.shared_expert_intermediate_size = 6;
  c.shared_expert_gate = true;
  shared_expert_failure_fails_on_every_rank(c);
  c.tensor_parallel_size = 1;
  c.expert_parallel_size = world.size();  // EP: peers wait in the exchange
  shared_expert_failure_fails_on_every_rank(c);
  c.expert_parallel_size = 1;
  c.data_parallel_size = world.size();  // DP only: no exchange
  shared_expert_failure_fails_on_every_rank(c);
}

// A router that fails between its loss group sums (here the global aux loss's accumulator, which
// one rank was given holding counts of another expert count, throws after the aux loss's sum
// and before the z-loss's): the rank joins the sum it missed, and every rank gets the error at
// the next check instead of its peers waiting in the z-loss's sum. Then, with every
// accumulator reset, a good forward gives the reference bits.
namespace {
void router_failure_between_its_sums_fails_on_every_rank(sy::Config c) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(20));
  c.load_balancing_type = sy::LoadBalancingType::global_aux_loss;
  BOOST_TEST_REQUIRE(c.router_z_loss_coeff > 0);  // a second sum after the aux loss's
  auto groups = sy::make_mpi_groups(world, sy::Layout(c));
  auto layer = mpi_layer(c, groups);
  layer->initialize(5);
  const bool is_bad = world.rank() == world.size() - 1;
  const std::int64_t T = 6, H = c.hidden_size;
  const auto x =
      random_vector(60 + static_cast<std::uint32_t>(world.rank()), static_cast<std::size_t>(T * H));
  const sy::matrix_view<const double> xv(x.data(), T, H);
  sy::GlobalAuxLoss acc;
  sy::ForwardOptions opt;
  opt.global_aux = &acc;
  const std::vector<double> reference = layer->forward(xv, opt).y;
  acc.reset();
  if (is_bad) acc.accumulate({1, 2, 3});  // 3 experts: the next accumulate throws
  const char* check = c.expert_parallel_size > 1 ? "MoELayer::forward: dispatch"
                                                 : "MoELayer::forward: dispatch and experts";
  if (is_bad) {
    BOOST_CHECK_EXCEPTION(
        layer->forward(xv, opt), sy::precondition_error,
        [](const std::exception& e) { return has(e, "GlobalAuxLoss: 8 experts after 3"); });
  } else {
    BOOST_CHECK_EXCEPTION(layer->forward(xv, opt), sy::comm_error, [&](const sy::comm_error& e) {
      return has(e, check) && has(e, "GlobalAuxLoss: 8 experts after 3");
    });
  }
  acc.reset();
  BOOST_TEST(layer->forward(xv, opt).y == reference, boost::test_tools::per_element());
}
}  // namespace

BOOST_AUTO_TEST_CASE(a_router_failure_between_its_group_sums_is_an_error_on_every_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.expert_parallel_size = world.size();
  router_failure_between_its_sums_fails_on_every_rank(c);
  c = base_config();
  c.data_parallel_size = world.size();
  router_failure_between_its_sums_fails_on_every_rank(c);
}

// A router policy of the user's own that declares group_sum_lengths(E) (docs/routing.md): a
// failure inside its forward on one rank (out of memory before its first loss sum) is an error
// on every rank at the next check, as for TopK; then a good forward gives the reference bits.
namespace {
struct user_router {  // TopK<2, Softmax> with a switch that makes its forward throw
  using policy_kind = sy::router_tag;
  static constexpr int k = 2;
  explicit user_router(const sy::Config& c) : inner(sy::router_params(c)) {}
  sy::index_t num_experts() const { return inner.num_experts(); }
  template <class T>
  sy::Routing<T> forward(sy::exec::Host h, sy::matrix_view<const T> z,
                         const sy::RouteContext& ctx) const {
    if (*fail) throw std::bad_alloc();
    return inner.forward(h, z, ctx);
  }
  template <class T>
  void backward(sy::exec::Host h, const sy::Routing<T>& r, sy::matrix_view<const T> dprob,
                sy::matrix_view<T> dz) const {
    inner.backward(h, r, dprob, dz);
  }
  std::vector<std::size_t> group_sum_lengths(sy::index_t E) const {
    return sy::group_sum_lengths(inner.params().losses, E);
  }
  sy::TopK<2, sy::Softmax> inner;
  std::shared_ptr<bool> fail = std::make_shared<bool>(false);
};
static_assert(sy::RouterPolicy<user_router>);

void user_router_failure_fails_on_every_rank(const sy::Config& c) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(20));
  auto groups = sy::make_mpi_groups(world, sy::Layout(c));
  user_router router(c);
  const std::shared_ptr<bool> fail = router.fail;
  BOOST_TEST_REQUIRE(sy::detail::router_group_sums(router, c.num_experts)->size() == 2);
  sy::MoELayerCore<double, sy::MpiComm> layer(
      c,
      {&groups.expert_parallel, &groups.dense_data_parallel, &groups.expert_data_parallel,
       &groups.tensor_parallel},
      std::make_unique<sy::detail::router_hooks_impl<user_router, double>>(router),
      sy::detail::make_expert_hooks<double>(c));
  layer.initialize(5);
  const bool is_bad = world.rank() == world.size() - 1;
  const std::int64_t T = 6, H = c.hidden_size;
  const auto x =
      random_vector(70 + static_cast<std::uint32_t>(world.rank()), static_cast<std::size_t>(T * H));
  const sy::matrix_view<const double> xv(x.data(), T, H);
  const std::vector<double> reference = layer.forward(xv).y;
  *fail = is_bad;
  const char* check = c.expert_parallel_size > 1 ? "MoELayer::forward: dispatch"
                                                 : "MoELayer::forward: dispatch and experts";
  if (is_bad) {
    BOOST_CHECK_THROW(layer.forward(xv), std::bad_alloc);
  } else {
    BOOST_CHECK_EXCEPTION(layer.forward(xv), sy::comm_error, [&](const sy::comm_error& e) {
      return has(e, check) && has(e, "rank " + std::to_string(world.size() - 1));
    });
  }
  *fail = false;
  BOOST_TEST(layer.forward(xv).y == reference, boost::test_tools::per_element());
}
}  // namespace

BOOST_AUTO_TEST_CASE(a_user_router_failure_is_an_error_on_every_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();  // softmax top-2 with the aux loss and the z-loss: two group sums
  c.expert_parallel_size = world.size();
  user_router_failure_fails_on_every_rank(c);
  c = base_config();
  c.data_parallel_size = world.size();
  user_router_failure_fails_on_every_rank(c);
}

// Out of memory at any of the row-sized allocations of a forward or a backward on one rank (the
// copies of x, the router's [T][E] arrays, the dispatched rows,
// every buffer of the EP exchange, the experts' workspace and outputs, the outputs and
// gradients) is an error on every rank, never a peer waiting until its timeout: the failed
// rank rethrows std::bad_alloc, its peers throw comm_error naming it, and the next step gives
// the same bits. Every such allocation is failed in turn (counted first on an armed run that
// fails none), with tensor-parallel experts those of the TP gather and reduce-scatter too.
// Smaller allocations (counts, offsets, metrics, messages) are not swept
// (docs/reliability.md). A regression fails fast: after each case the ranks agree, over a
// communicator of their own, whether it went as expected, and stop at the first that did not.
namespace {
void allocation_failure_fails_on_every_rank(sy::Config c) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(10));
  sy::MpiComm verdicts = world.split(0, world.rank());  // untouched by a layer's timeout
  verdicts.set_timeout(std::chrono::seconds(60));
  c.hidden_size = 256;     // a row (2 KiB) is larger than every allocation that is not swept
  c.ffn_hidden_size = 96;  // and the experts' workspace is larger than a row
  auto groups = sy::make_mpi_groups(world, sy::Layout(c));
  auto layer = mpi_layer(c, groups);
  layer->initialize(5);
  const bool is_bad = world.rank() == world.size() - 1;
  // T·E doubles = a row: the router's [T][E] arrays (aux and z-loss on) are swept as well.
  const std::int64_t T = 32, H = c.hidden_size;
  BOOST_TEST_REQUIRE(T * c.num_experts >= H);
  const auto x =
      random_vector(90 + static_cast<std::uint32_t>(world.rank()), static_cast<std::size_t>(T * H));
  const auto dy =
      random_vector(95 + static_cast<std::uint32_t>(world.rank()), static_cast<std::size_t>(T * H));
  const sy::matrix_view<const double> xv(x.data(), T, H), dyv(dy.data(), T, H);

  // A good step: y, dx and every gradient.
  struct step_result {
    std::vector<double> y, dx;
    sy::MoEGrads<double> grads;
    bool operator==(const step_result& o) const {
      return y == o.y && dx == o.dx && grads.router_weight == o.grads.router_weight &&
             grads.fc1 == o.grads.fc1 && grads.fc2 == o.grads.fc2 &&
             grads.fc1_bias == o.grads.fc1_bias && grads.fc2_bias == o.grads.fc2_bias &&
             grads.shared_fc1 == o.grads.shared_fc1 && grads.shared_fc2 == o.grads.shared_fc2 &&
             grads.shared_gate == o.grads.shared_gate;
    }
  };
  const auto good_step = [&] {
    step_result r;
    auto f = layer->forward(xv);
    r.y = f.y;
    r.grads = layer->make_grads();
    r.dx = layer->backward(f.saved, dyv, r.grads);
    return r;
  };
  const step_result reference = good_step();
  const auto same_as_reference = [&] {
    try {
      return good_step() == reference;
    } catch (...) {
      return false;
    }
  };

  // Runs `call` with the faults armed on the failing rank (fail_at 0 counts only) and returns
  // how many allocations it counted, the most of any rank.
  const auto armed = [&](std::int64_t fail_at, auto&& call) -> std::int64_t {
    layer->release_cached_memory();  // the workspace is allocated in every run
    alloc_fault::seen = 0;
    alloc_fault::fail_at = fail_at;
    alloc_fault::min_bytes = static_cast<std::size_t>(H) * sizeof(double);
    alloc_fault::armed = is_bad;
    try {
      call();
    } catch (...) {
      alloc_fault::armed = false;
      throw;
    }
    alloc_fault::armed = false;
    std::int64_t n = alloc_fault::seen;
    verdicts.all_reduce(&n, 1, sy::ReduceOp::max);
    return n;
  };
  // Whether `call` failed as it should on this rank: std::bad_alloc on the failing rank, on the
  // others comm_error naming it and `where`.
  const auto failed_as_expected = [&](auto&& call, const char* where) {
    try {
      call();
    } catch (const std::bad_alloc&) {
      return is_bad;
    } catch (const sy::comm_error& e) {
      return !is_bad && has(e, where) && has(e, "failed: std::bad_alloc");
    } catch (...) {
    }
    return false;
  };
  // Every rank's verdict: false when any rank saw something else.
  const auto all_agree = [&](bool ok) {
    std::int64_t bad = ok ? 0 : 1;
    verdicts.all_reduce(&bad, 1, sy::ReduceOp::max);
    return bad == 0;
  };

  const std::int64_t forward_allocations = armed(0, [&] { (void)layer->forward(xv); });
  BOOST_TEST_MESSAGE("EP " << c.expert_parallel_size << ", TP " << c.tensor_parallel_size << ", DP "
                           << c.dp() << ", " << sy::enum_name(c.token_dispatch) << ": "
                           << forward_allocations << " allocations in forward");
  BOOST_TEST(forward_allocations >= 5);  // x, y, the rows, the workspace, the experts' output
  for (std::int64_t n = 1; n <= forward_allocations; ++n) {
    BOOST_TEST_CONTEXT("forward, allocation " << n << " of " << forward_allocations) {
      const bool failed_ok = failed_as_expected(
          [&] { armed(n, [&] { (void)layer->forward(xv); }); }, "MoELayer::forward");
      BOOST_TEST(failed_ok);
      if (!all_agree(failed_ok)) return;
      const bool same = same_as_reference();
      BOOST_TEST(same);
      if (!all_agree(same)) return;
    }
  }
  const auto backward_armed = [&](std::int64_t fail_at) {
    auto f = layer->forward(xv);
    auto g = layer->make_grads();
    return armed(fail_at, [&] { (void)layer->backward(f.saved, dyv, g); });
  };
  const std::int64_t backward_allocations = backward_armed(0);
  BOOST_TEST_MESSAGE(backward_allocations << " allocations in backward");
  BOOST_TEST(backward_allocations >= 3);  // dx, the router's dx, its weight gradient at least
  for (std::int64_t n = 1; n <= backward_allocations; ++n) {
    BOOST_TEST_CONTEXT("backward, allocation " << n << " of " << backward_allocations) {
      const bool failed_ok = failed_as_expected([&] { backward_armed(n); }, "MoELayer::backward");
      BOOST_TEST(failed_ok);
      if (!all_agree(failed_ok)) return;
      const bool same = same_as_reference();
      BOOST_TEST(same);
      if (!all_agree(same)) return;
    }
  }
}
}  // namespace

BOOST_AUTO_TEST_CASE(out_of_memory_on_one_rank_is_an_error_on_every_rank) {
  sy::MpiComm world(MPI_COMM_WORLD, std::chrono::seconds(60));
  auto c = base_config();
  c.expert_parallel_size = world.size();  // EP: peers wait in the exchanges
  allocation_failure_fails_on_every_rank(c);
  c.token_dispatch = sy::TokenDispatch::capacity;  // padded capacity blocks
  c.capacity_factor = 1.0;
  allocation_failure_fails_on_every_rank(c);
  c = base_config();
  c.data_parallel_size = world.size();  // DP only: the metrics reduction waits
  allocation_failure_fails_on_every_rank(c);
  if (world.size() >= 4) {  // DP 2 x EP 2
    c.data_parallel_size = world.size() / 2;
    c.expert_parallel_size = 2;
    allocation_failure_fails_on_every_rank(c);
  }
  // TP 2 (x EP 2): the buffers of the TP gather and reduce-scatter too; the failed rank's TP
  // peers would wait in them.
  allocation_failure_fails_on_every_rank(tensor_parallel_config(world.size()));
  // A gated shared expert: its buffers, with TP those of its own gather and reduce-scatter too.
  c = tensor_parallel_config(world.size());
  c.add_bias_linear = false;
  c.shared_expert_intermediate_size = 6;
  c.shared_expert_gate = true;
  allocation_failure_fails_on_every_rank(c);
  c.tensor_parallel_size = 1;
  c.expert_parallel_size = world.size();
  allocation_failure_fails_on_every_rank(c);
}
