#pragma once
// The model `switchyard train` trains: num_layers residual blocks h ← h + Block(h), block i an
// MoE layer when Config::is_moe_layer(i) (Megatron's moe_layer_freq: moe_layer_pattern[i] == 1,
// or i % moe_layer_frequency == 0), the others a dense FFN of the same expert kind; a synthetic
// regression task whose targets come from a fixed random teacher, y* = x + B·tanh(A·x) (A, B of
// their own seed); loss = mean squared error over the group's tokens and the hidden size, plus the
// MoE layers' aux and z-losses. AdamW (β 0.9, 0.999, ε 1e-8, weight_decay from the config) or SGD.
//
// With the CUDA backend the MoE blocks run on the GPU through cuda_layer.hpp; the dense blocks,
// the loss and the optimizer stay on the host, which keeps the master weights: each step uploads
// every MoE block's weights once, before its micro-batches, and each micro-batch adds the
// downloaded gradients to the host gradients after its backward.
//
// With expert migration (sharding_strategy Dynamic, enable_expert_migration or a migration
// object) each MoE block's
// experts, with their AdamW moments, move to the balanced placement of the step's kept tokens
// after the optimizer step when the EP ranks' imbalance is above migration_threshold (with a
// load_balancing object: at its checks, on its smoothed loads, at most its number of experts; the
// host layer moves them; with the CUDA backend the device layer then takes the new placement, and
// the next step uploads the weights in it).

#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "switchyard/core/philox.hpp"
#include "switchyard/experts/experts.hpp"
#include "switchyard/layer.hpp"
#if defined(SWITCHYARD_CLI_HAS_CUDA)
#include "cuda_layer.hpp"
#endif

namespace switchyard::train {

/// A standard normal keyed by (seed, stream, a, b) (Box–Muller over two Philox uniforms).
inline float normal(std::uint64_t seed, std::uint32_t stream, std::uint32_t a, std::uint32_t b) {
  const double u1 = philox_uniform(seed, stream, a, 2 * b);
  const double u2 = philox_uniform(seed, stream, a, 2 * b + 1);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

/// A dense FFN block: the experts' code with one expert holding every row.
class DenseBlock {
 public:
  DenseBlock(const Config& c, std::uint64_t seed, std::uint32_t index)
      : shape_{1, c.hidden_size, c.ffn_hidden_size, c.add_bias_linear}, cfg_(c) {
    visit_expert_policy(c, [&](auto p) {
      using P = decltype(p);
      params_ = MoEParams<float>(1, 1, c.hidden_size, c.ffn_hidden_size, P::fc1_multiplier,
                                 c.add_bias_linear);
      expert_init init;
      init.strategy = c.initialization_strategy;
      init.seed = seed ^ (0x44656e73ull << 32);
      init.first_expert = index;
      initialize_expert_weights(p, shape_, init, params_.experts());
    });
    grads_ = params_.zeros_like();
  }
  std::vector<float> forward(const std::vector<float>& h, index_t T) {
    offsets_ = {0, T};
    input_ = h;
    std::vector<float> y(h.size());
    visit_expert_policy(cfg_, [&](auto p) {
      workspace_.resize(expert_workspace_bytes<float>(p, shape_, T));
      expert_forward(p, exec::Host{}, shape_, std::as_const(params_).experts(),
                     matrix_view<const float>(input_.data(), T, shape_.hidden), offsets_,
                     matrix_view<float>(y.data(), T, shape_.hidden), workspace_);
    });
    return y;
  }
  std::vector<float> backward(const std::vector<float>& dy, index_t T) {
    std::vector<float> dx(dy.size());
    visit_expert_policy(cfg_, [&](auto p) {
      expert_backward(p, exec::Host{}, shape_, std::as_const(params_).experts(),
                      matrix_view<const float>(input_.data(), T, shape_.hidden), offsets_,
                      matrix_view<const float>(dy.data(), T, shape_.hidden),
                      matrix_view<float>(dx.data(), T, shape_.hidden), grads_.experts(),
                      workspace_);
    });
    return dx;
  }
  MoEParams<float>& params() { return params_; }
  MoEParams<float>& grads() { return grads_; }

 private:
  expert_shape shape_;
  Config cfg_;
  MoEParams<float> params_, grads_;
  std::vector<float> input_;
  std::vector<index_t> offsets_;
  std::vector<std::byte> workspace_;
};

/// AdamW or SGD over a list of (parameter, gradient) tensors.
class Optimizer {
 public:
  Optimizer(const Config& c) : cfg_(c) {}
  void add(std::vector<float>* param, std::vector<float>* grad) {
    if (param->empty()) return;
    slots_.push_back({param, grad, std::vector<float>(param->size(), 0.f),
                      std::vector<float>(param->size(), 0.f)});
  }
  /// The optimizer state kept for `param` (its two moment tensors; none for a parameter it does
  /// not hold): expert migration moves it with the expert.
  std::vector<std::vector<float>*> state_of(const std::vector<float>* param) {
    for (auto& s : slots_)
      if (s.param == param) return {&s.m, &s.v};
    return {};
  }
  void step() {
    ++t_;
    const double lr = cfg_.learning_rate, wd = cfg_.weight_decay;
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    const double c1 = 1.0 - std::pow(b1, static_cast<double>(t_));
    const double c2 = 1.0 - std::pow(b2, static_cast<double>(t_));
    for (auto& s : slots_) {
      std::vector<float>& w = *s.param;
      const std::vector<float>& g = *s.grad;
      for (std::size_t i = 0; i < w.size(); ++i) {
        if (cfg_.optimizer == switchyard::Optimizer::adamw) {
          s.m[i] = static_cast<float>(b1 * s.m[i] + (1 - b1) * g[i]);
          s.v[i] = static_cast<float>(b2 * s.v[i] + (1 - b2) * g[i] * g[i]);
          const double update = (s.m[i] / c1) / (std::sqrt(s.v[i] / c2) + eps);
          w[i] = static_cast<float>(w[i] - lr * (update + wd * w[i]));  // decoupled decay
        } else {
          w[i] = static_cast<float>(w[i] - lr * (g[i] + wd * w[i]));
        }
      }
    }
  }

 private:
  struct slot {
    std::vector<float>* param;
    std::vector<float>* grad;
    std::vector<float> m, v;
  };
  Config cfg_;
  std::vector<slot> slots_;
  std::int64_t t_ = 0;
};

/// What one training step measured (global over the dense data-parallel group and the TP group).
struct StepMetrics {
  std::int64_t step = 0;
  double loss = 0, aux_loss = 0, z_loss = 0, dropped_fraction = 0, load_cv = 0;
  double tokens_per_second = 0, seconds = 0;
  std::int64_t tokens = 0;  ///< the group's tokens over the step's micro-batches
  std::int64_t micro_batches = 1;
  bool expert_sync = false;  ///< the expert weights were averaged after this step
  /// Per MoE layer: the EP ranks' imbalance under the placement the step ran with (busiest
  /// rank's kept tokens over the mean, minus 1; ExpertPlacementMap::imbalance).
  std::vector<double> rank_load_imbalance;
  std::int64_t expert_migrations = 0;  ///< MoE layers whose experts moved after this step
  bool has_aux = false, has_z = false;
  std::vector<std::vector<std::int64_t>> tokens_per_expert;  ///< per MoE layer, step's sum
  std::vector<std::vector<std::int64_t>> kept_per_expert;    ///< per MoE layer, step's sum
};

/// The model over communicator type Comm (LocalComm, or MpiComm under mpirun).
template <class Comm>
class Model {
 public:
  /// `cuda`: run the MoE blocks on the GPU (needs SWITCHYARD_CLI_HAS_CUDA); `nccl`: their
  /// device layers exchange tokens and reduce losses over NCCL communicators of the groups of
  /// `comms` (under mpirun, or with distributed_backend nccl), else they run on one GPU.
  Model(const Config& c, MoEComms<Comm> comms, std::uint64_t seed, bool cuda = false,
        bool nccl = false)
      : cfg_(c), comms_(comms), seed_(seed), opt_(c) {
#if defined(SWITCHYARD_CLI_HAS_CUDA)
    std::shared_ptr<cli::CudaComms> gpu_comms;
    if (cuda && nccl)  // collective, in the same order on every rank: EP, dense DP, expert DP
      gpu_comms = cli::make_cuda_comms(nccl_group(*comms.expert_parallel),
                                       nccl_group(*comms.dense_data_parallel),
                                       nccl_group(*comms.expert_data_parallel));
#else
    (void)nccl;
#endif
    for (std::int64_t i = 0; i < c.num_layers; ++i) {
      block b;
      if (c.is_moe_layer(i)) {
        b.moe = make_layer<float>(c, comms);
        b.moe->initialize(seed + static_cast<std::uint64_t>(i) * 7919u);
        b.moe_grads = b.moe->make_grads();
        if (cuda) {
#if defined(SWITCHYARD_CLI_HAS_CUDA)
          b.gpu = cli::make_cuda_block(c, gpu_comms);
#else
          throw config_error("--backend cuda: this switchyard was built without CUDA");
#endif
        }
      } else {
        b.dense = std::make_unique<DenseBlock>(c, seed, static_cast<std::uint32_t>(i));
      }
      blocks_.push_back(std::move(b));
    }
    for (auto& b : blocks_) {
      MoEParams<float>& p = b.moe ? b.moe->params() : b.dense->params();
      MoEParams<float>& g = b.moe ? b.moe_grads : b.dense->grads();
      opt_.add(&p.router_weight, &g.router_weight);
      opt_.add(&p.fc1, &g.fc1);
      opt_.add(&p.fc2, &g.fc2);
      opt_.add(&p.fc1_bias, &g.fc1_bias);
      opt_.add(&p.fc2_bias, &g.fc2_bias);
      opt_.add(&p.shared_fc1, &g.shared_fc1);
      opt_.add(&p.shared_fc2, &g.shared_fc2);
      opt_.add(&p.shared_gate, &g.shared_gate);
    }
  }

  /// One optimizer step: micro_batches_per_step() forwards and backwards on this rank (their
  /// gradients summed), the gradients scaled by 1 / micro-batches (Megatron scales every
  /// micro-batch's loss, the aux and z-losses included, by 1 / num_microbatches), reduced over the
  /// groups once, one optimizer update, and one aux-loss-free bias update from the step's
  /// dispatched counts. Metrics: the losses are means over the micro-batches; counts, dropped
  /// fraction and load CV are of the step's summed counts per layer.
  StepMetrics step(std::int64_t step_index) {
    const auto start = std::chrono::steady_clock::now();
    const std::int64_t n = cfg_.micro_batches_per_step();
    StepMetrics m;
    m.step = step_index;
    m.micro_batches = n;
    step_state st(blocks_.size());
#if defined(SWITCHYARD_CLI_HAS_CUDA)
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      if (!blocks_[i].gpu) continue;
      // The weights change once per step: upload them once, before the micro-batches.
      blocks_[i].gpu->set_params(blocks_[i].moe->params());
      // One accumulator per MoE layer on the GPU too, kept over the step's micro-batches.
      if (cfg_.aux_loss_coeff(LoadBalancingType::global_aux_loss) > 0)
        st.gpu_global_aux[i] = cli::make_cuda_global_aux(cfg_.num_experts);
    }
#endif
    for (std::int64_t mb = 0; mb < n; ++mb) micro_batch(step_index, mb, st, m);

    const double inv = 1.0 / static_cast<double>(n);
    m.loss *= inv;
    m.aux_loss *= inv;
    m.z_loss *= inv;
    for (auto& b : blocks_) {
      MoEParams<float>& g = b.moe ? b.moe_grads : b.dense->grads();
      if (n > 1)
        g.for_each_tensor([&](std::vector<float>& v) {
          for (float& x : v) x = static_cast<float>(x * inv);
        });
      if (b.moe) {
        b.moe->reduce_gradients(b.moe_grads);
      } else {
        // Dense weights are replicated on every rank of the dense group and of the TP group
        // (the dense blocks are not split): sum their gradients.
        for (std::vector<float>* v : {&g.fc1, &g.fc2, &g.fc1_bias, &g.fc2_bias})
          if (!v->empty()) gradient_sum(v->data(), static_cast<std::int64_t>(v->size()));
      }
    }
    opt_.step();
    std::int64_t routes = 0, dropped = 0;
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      auto& b = blocks_[i];
      if (!b.moe) {
        b.dense->grads().set_zero();
        continue;
      }
      // enable_expert_sync: every sync_frequency steps the expert replicas (the host layer holds
      // the master weights on either backend) average their weights.
      m.expert_sync = b.moe->sync_expert_weights(step_index) || m.expert_sync;
      if (cfg_.enable_expert_bias) {  // aux-loss-free balancing after each global batch
#if defined(SWITCHYARD_CLI_HAS_CUDA)
        if (b.gpu) b.gpu->update_expert_bias(st.kept[i]);
#endif
        b.moe->update_expert_bias(st.kept[i]);
      }
      b.moe_grads.set_zero();
      // Expert migration: the layer records the step's kept tokens and, at a check of its
      // schedule (load_balancing), moves the experts (and their AdamW moments) to a placement
      // that balances them over the EP ranks when the imbalance is above the threshold (the
      // gradients are zero here: nothing else to move).
      m.rank_load_imbalance.push_back(b.moe->placement().imbalance(st.kept[i]));
      if (cfg_.migrates_experts()) {
        std::vector<std::vector<float>*> state;
        MoEParams<float>& p = b.moe->params();
        for (std::vector<float>* t : {&p.fc1, &p.fc2, &p.fc1_bias, &p.fc2_bias})
          for (std::vector<float>* v : opt_.state_of(t)) state.push_back(v);
        if (b.moe->migrate_experts(st.kept[i], state)) {
          ++m.expert_migrations;
#if defined(SWITCHYARD_CLI_HAS_CUDA)
          // The host layer keeps the master weights; the device layer routes by their placement.
          if (b.gpu) b.gpu->set_placement(b.moe->placement().slots());
#endif
        }
      }
      const DispatchStats ds = dispatch_stats(st.routed[i], st.kept[i]);
      routes += ds.routes;
      dropped += ds.dropped;
      m.load_cv += ds.load_cv;
      m.tokens_per_expert.push_back(ds.routed_per_expert);
      m.kept_per_expert.push_back(ds.kept_per_expert);
    }
    if (!m.tokens_per_expert.empty()) m.load_cv /= static_cast<double>(m.tokens_per_expert.size());
    m.dropped_fraction =
        routes > 0 ? static_cast<double>(dropped) / static_cast<double>(routes) : 0;
    m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    m.tokens_per_second = m.seconds > 0 ? static_cast<double>(m.tokens) / m.seconds : 0;
    return m;
  }

 private:
  // What a step keeps over its micro-batches, per block.
  struct step_state {
    explicit step_state(std::size_t blocks)
        : routed(blocks),
          kept(blocks),
          global_aux(blocks)
#if defined(SWITCHYARD_CLI_HAS_CUDA)
          ,
          gpu_global_aux(blocks)
#endif
    {
    }
    std::vector<std::vector<std::int64_t>> routed, kept;  ///< counts summed over micro-batches
    // global_aux_loss: one accumulator per MoE layer (each Megatron router keeps its own), over
    // the micro-batches of one step (one global batch).
    std::vector<GlobalAuxLoss> global_aux;
#if defined(SWITCHYARD_CLI_HAS_CUDA)
    std::vector<std::unique_ptr<cli::CudaGlobalAux>> gpu_global_aux;
#endif
  };

  static void add_counts(std::vector<std::int64_t>& sum, const std::vector<std::int64_t>& c) {
    if (sum.empty()) sum.assign(c.size(), 0);
    for (std::size_t e = 0; e < c.size(); ++e) sum[e] += c[e];
  }

  // Micro-batch mb (from 0) of step step_index: forward, loss, backward (gradients added to the
  // blocks' gradients); adds its loss, aux and z-loss sums and token count to m and its counts
  // to st.
  void micro_batch(std::int64_t step_index, std::int64_t mb, step_state& st, StepMetrics& m) {
    const index_t T = cfg_.tokens_per_rank(), H = cfg_.hidden_size;
    // Inputs differ per step, micro-batch and rank (TP ranks hold other tokens, as under
    // sequence parallelism); the teacher is fixed. Micro-batch mb of token rank r holds the
    // tokens rank mb·R + r of a layout with mb times the R token ranks (dense DP × TP) would hold
    // with one micro-batch: accumulating n micro-batches trains on the tokens of n times the
    // data-parallel ranks.
    const std::int64_t token_ranks =
        static_cast<std::int64_t>(comms_.dense_data_parallel->size()) * cfg_.tensor_parallel_size;
    const std::int64_t rank =
        mb * token_ranks +
        static_cast<std::int64_t>(comms_.dense_data_parallel->rank()) * cfg_.tensor_parallel_size +
        (tensor_parallel() ? comms_.tensor_parallel->rank() : 0);
    std::vector<float> x(static_cast<std::size_t>(T * H)), target(x.size());
    for (index_t t = 0; t < T; ++t)
      for (index_t h = 0; h < H; ++h)
        x[static_cast<std::size_t>(t * H + h)] =
            normal(seed_, static_cast<std::uint32_t>(step_index),
                   static_cast<std::uint32_t>(rank * T + t), static_cast<std::uint32_t>(h));
    teacher(x, target, T);
    // The draws of jitter and dropout: one counter per micro-batch ((step - 1)·n + mb + 1; the
    // step itself with one micro-batch per step).
    const auto draw_step =
        static_cast<std::uint32_t>((step_index - 1) * cfg_.micro_batches_per_step() + mb + 1);

    std::vector<float> h = x;
    std::vector<MoEForward<float>> saved(blocks_.size());
#if defined(SWITCHYARD_CLI_HAS_CUDA)
    std::vector<std::unique_ptr<cli::CudaSaved>> gpu_saved(blocks_.size());
#endif
    std::int64_t tokens = 0;
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      std::vector<float> out;
      if (blocks_[i].moe) {
        const MoEMetrics* metrics = nullptr;
#if defined(SWITCHYARD_CLI_HAS_CUDA)
        cli::CudaForward gpu;
        if (blocks_[i].gpu) {
          // Only for MoE blocks on the GPU: the host backend runs where there is no GPU.
          gpu = blocks_[i].gpu->forward(h, T, true, seed_, draw_step, st.gpu_global_aux[i].get());
          gpu_saved[i] = std::move(gpu.saved);
          out = std::move(gpu.y);
          metrics = &gpu.metrics;
        }
#endif
        if (!metrics) {
          saved[i] = blocks_[i].moe->forward(matrix_view<const float>(h.data(), T, H),
                                             {.training = true,
                                              .seed = seed_,
                                              .step = draw_step,
                                              .global_aux = &st.global_aux[i]});
          out = saved[i].y;
          metrics = &saved[i].metrics;
        }
        const MoEMetrics& mm = *metrics;
        add_counts(st.routed[i], mm.tokens_per_expert);
        add_counts(st.kept[i], mm.kept_per_expert);
        m.aux_loss += mm.aux_loss.value_or(0);
        m.z_loss += mm.z_loss.value_or(0);
        m.has_aux = m.has_aux || mm.aux_loss.has_value();
        m.has_z = m.has_z || mm.z_loss.has_value();
        tokens = mm.tokens;
      } else {
        out = blocks_[i].dense->forward(h, T);
      }
      for (std::size_t j = 0; j < h.size(); ++j) h[j] += out[j];
    }
    // MSE over the group's tokens: the per-rank sums add up.
    double sq[2] = {0.0, static_cast<double>(T)};
    for (std::size_t j = 0; j < h.size(); ++j) {
      const double d = h[j] - target[j];
      sq[0] += d * d;
    }
    group_sum(sq, 2);
    const double denom = sq[1] * static_cast<double>(H);
    m.loss += denom > 0 ? sq[0] / denom : 0.0;
    m.tokens += tokens > 0 ? tokens : static_cast<std::int64_t>(sq[1]);
    std::vector<float> dh(h.size());
    for (std::size_t j = 0; j < h.size(); ++j)
      dh[j] = static_cast<float>(2.0 * (h[j] - target[j]) / denom);

    for (std::size_t i = blocks_.size(); i-- > 0;) {
      std::vector<float> dblock;
#if defined(SWITCHYARD_CLI_HAS_CUDA)
      if (blocks_[i].gpu)
        dblock = blocks_[i].gpu->backward(*gpu_saved[i], dh, blocks_[i].moe_grads);
      else
#endif
      if (blocks_[i].moe)
        dblock = blocks_[i].moe->backward(saved[i].saved,
                                          matrix_view<const float>(dh.data(), T, H),
                                          blocks_[i].moe_grads);
      else
        dblock = blocks_[i].dense->backward(dh, T);
      for (std::size_t j = 0; j < dh.size(); ++j) dh[j] += dblock[j];
    }
  }

  bool tensor_parallel() const {
    return cfg_.tensor_parallel_size > 1;
  }
  // Sums over the ranks holding other tokens of this replica: dense DP, then TP.
  template <class U>
  void group_sum(U* v, std::int64_t n) {
    comms_.dense_data_parallel->all_reduce(v, n, ReduceOp::sum);
    if (tensor_parallel()) comms_.tensor_parallel->all_reduce(v, n, ReduceOp::sum);
  }
  // A dense block's gradient sum over the same groups: in bfloat16 with gradient_compression,
  // as the MoE layers reduce theirs (comm/compression.hpp).
  void gradient_sum(float* v, std::int64_t n) {
    sum_gradients(*comms_.dense_data_parallel, v, n, cfg_.gradient_compression);
    if (tensor_parallel()) sum_gradients(*comms_.tensor_parallel, v, n, cfg_.gradient_compression);
  }

#if defined(SWITCHYARD_CLI_HAS_CUDA)
  // Rank 0 of the group makes the NCCL id, every member receives it over the host group.
  static cli::CudaGroup nccl_group(Comm& c) {
    const std::size_t n = cli::nccl_unique_id_bytes();
    std::vector<unsigned char> mine =
        c.rank() == 0 ? cli::nccl_unique_id() : std::vector<unsigned char>(n);
    std::vector<unsigned char> all(n * static_cast<std::size_t>(c.size()));
    c.all_gather(mine.data(), static_cast<std::int64_t>(n), all.data());
    return {std::vector<unsigned char>(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n)),
            c.rank(), c.size()};
  }
#endif

  // y* = x + B·tanh(A·x), A of N(0, 4/H) and B of N(0, 1/H) from the teacher's own seed.
  void teacher(const std::vector<float>& x, std::vector<float>& y, index_t T) const {
    const index_t H = cfg_.hidden_size;
    if (teacher_a_.empty()) {
      teacher_a_.resize(static_cast<std::size_t>(H * H));
      teacher_b_.resize(teacher_a_.size());
      const float s = 1.0f / std::sqrt(static_cast<float>(H));
      for (index_t i = 0; i < H * H; ++i) {
        teacher_a_[static_cast<std::size_t>(i)] =
            2.0f * s * normal(seed_ ^ 0x7465616368ull, 1, static_cast<std::uint32_t>(i), 0);
        teacher_b_[static_cast<std::size_t>(i)] =
            s * normal(seed_ ^ 0x7465616368ull, 2, static_cast<std::uint32_t>(i), 0);
      }
    }
    std::vector<float> a(static_cast<std::size_t>(H));
    for (index_t t = 0; t < T; ++t) {
      for (index_t i = 0; i < H; ++i) {
        float acc = 0;
        for (index_t j = 0; j < H; ++j)
          acc += teacher_a_[static_cast<std::size_t>(i * H + j)] * x[static_cast<std::size_t>(t * H + j)];
        a[static_cast<std::size_t>(i)] = std::tanh(acc);
      }
      for (index_t i = 0; i < H; ++i) {
        float acc = 0;
        for (index_t j = 0; j < H; ++j)
          acc += teacher_b_[static_cast<std::size_t>(i * H + j)] * a[static_cast<std::size_t>(j)];
        y[static_cast<std::size_t>(t * H + i)] = x[static_cast<std::size_t>(t * H + i)] + acc;
      }
    }
  }

  struct block {
    std::unique_ptr<MoELayerCore<float, Comm>> moe;  ///< the master weights, on either backend
    MoEGrads<float> moe_grads;
    std::unique_ptr<DenseBlock> dense;
#if defined(SWITCHYARD_CLI_HAS_CUDA)
    std::unique_ptr<cli::CudaMoEBlock> gpu;  ///< the GPU runs this MoE block (--backend cuda)
#endif
  };
  Config cfg_;
  MoEComms<Comm> comms_;
  std::uint64_t seed_;
  Optimizer opt_;
  std::vector<block> blocks_;
  mutable std::vector<float> teacher_a_, teacher_b_;
};

}  // namespace switchyard::train
