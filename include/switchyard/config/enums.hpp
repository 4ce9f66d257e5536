#pragma once
/// \file Enumerations of the runtime config and their JSON spellings.

#include <array>
#include <cstddef>
#include <optional>
#include <string_view>

namespace switchyard {

/// Spellings of an enum in JSON, in declaration order.
template <class E>
struct enum_info;

/// How experts are spread over devices (torsh ExpertShardingStrategy).
enum class ShardingStrategy { DataParallel, ModelParallel, Hybrid, Dynamic };
template <>
struct enum_info<ShardingStrategy> {
  static constexpr std::string_view type_name = "ShardingStrategy";
  static constexpr std::array<std::string_view, 4> names = {"DataParallel", "ModelParallel", "Hybrid", "Dynamic"};
};

/// What starts an expert migration (torsh MigrationTrigger, the migration object's `triggers`).
/// Built: LoadImbalance (a check moves experts when the EP ranks' imbalance is above the
/// threshold) and Periodic (every check moves them when that lowers the busiest rank's load).
enum class MigrationTrigger { LoadImbalance, MemoryPressure, PerformanceDegradation, Periodic };
template <>
struct enum_info<MigrationTrigger> {
  static constexpr std::string_view type_name = "MigrationTrigger";
  static constexpr std::array<std::string_view, 4> names = {"LoadImbalance", "MemoryPressure",
                                                            "PerformanceDegradation", "Periodic"};
};

/// How experts move (torsh MigrationStrategy, the migration object's `preferred_strategies`).
/// Built: GradualMigration (at most max_concurrent_migrations experts per check) and
/// CompleteMigration (the balanced packing, any number of experts).
enum class MigrationStrategy { GradualMigration, CompleteMigration, LoadRedistribution, Hybrid };
template <>
struct enum_info<MigrationStrategy> {
  static constexpr std::string_view type_name = "MigrationStrategy";
  static constexpr std::array<std::string_view, 4> names = {"GradualMigration", "CompleteMigration",
                                                            "LoadRedistribution", "Hybrid"};
};

/// How expert weights are initialised (torsh ExpertInitStrategy).
enum class InitStrategy { Xavier, Kaiming, Normal, Uniform, TruncatedNormal };
template <>
struct enum_info<InitStrategy> {
  static constexpr std::string_view type_name = "InitStrategy";
  static constexpr std::array<std::string_view, 5> names = {"Xavier", "Kaiming", "Normal", "Uniform", "TruncatedNormal"};
};

/// Router score function (REFERENCE §2).
enum class ScoreFunction { softmax, sigmoid, sqrtsoftplus };
template <>
struct enum_info<ScoreFunction> {
  static constexpr std::string_view type_name = "ScoreFunction";
  static constexpr std::array<std::string_view, 3> names = {"softmax", "sigmoid", "sqrtsoftplus"};
};

/// Load-balancing scheme (REFERENCE §3, §5).
enum class LoadBalancingType { aux_loss, seq_aux_loss, global_aux_loss, sinkhorn, none };
template <>
struct enum_info<LoadBalancingType> {
  static constexpr std::string_view type_name = "LoadBalancingType";
  static constexpr std::array<std::string_view, 5> names = {"aux_loss", "seq_aux_loss", "global_aux_loss", "sinkhorn", "none"};
};

/// Token order of the activations: Megatron's [seq, batch] or Hugging Face's [batch, seq].
enum class TokenLayout { seq_batch, batch_seq };
template <>
struct enum_info<TokenLayout> {
  static constexpr std::string_view type_name = "TokenLayout";
  static constexpr std::array<std::string_view, 2> names = {"seq_batch", "batch_seq"};
};

/// Whether experts have a capacity (REFERENCE §4).
enum class TokenDispatch { dropless, capacity };
template <>
struct enum_info<TokenDispatch> {
  static constexpr std::string_view type_name = "TokenDispatch";
  static constexpr std::array<std::string_view, 2> names = {"dropless", "capacity"};
};

/// Which routes an over-full expert keeps (REFERENCE §4).
enum class DropPolicy { probs, position };
template <>
struct enum_info<DropPolicy> {
  static constexpr std::string_view type_name = "DropPolicy";
  static constexpr std::array<std::string_view, 2> names = {"probs", "position"};
};

/// Which of an over-full expert's routed tokens the position policy keeps where Megatron-Core
/// (and DeepSpeed's top-1) take them from torch.topk over a 0/1 column, where all of them tie
/// (dispatch/dispatch_types.hpp, DispatchOptions::position_by_topk): torch_cpu, the ones torch
/// returns on the CPU (the default: the peers' output as fixtures compute it); token_order, the
/// first C in token order (REFERENCE §4's rule; what torch returns on a GPU).
enum class PositionTies { torch_cpu, token_order };
template <>
struct enum_info<PositionTies> {
  static constexpr std::string_view type_name = "PositionTies";
  static constexpr std::array<std::string_view, 2> names = {"torch_cpu", "token_order"};
};

/// Capacity formula of each training stack (REFERENCE §4).
enum class CapacityFormula { megatron, deepspeed, tutel, megablocks, torsh };
template <>
struct enum_info<CapacityFormula> {
  static constexpr std::string_view type_name = "CapacityFormula";
  static constexpr std::array<std::string_view, 5> names = {"megatron", "deepspeed", "tutel", "megablocks", "torsh"};
};

/// Whose numbers the router and the dispatcher reproduce (docs/conformance.md): Megatron-Core's
/// (the default) or DeepSpeed's top1/top2/topkgating (its capacity, drop order, renormalisation
/// of the kept weights and aux loss).
enum class Semantics { megatron, deepspeed };
template <>
struct enum_info<Semantics> {
  static constexpr std::string_view type_name = "Semantics";
  static constexpr std::array<std::string_view, 2> names = {"megatron", "deepspeed"};
};

/// Expert activation: gelu is the exact (erf) form, gelu_tanh the tanh approximation.
enum class Activation { gelu, gelu_tanh, relu, silu };
template <>
struct enum_info<Activation> {
  static constexpr std::string_view type_name = "Activation";
  static constexpr std::array<std::string_view, 4> names = {"gelu", "gelu_tanh", "relu", "silu"};
};

/// Optimizer of the training driver.
enum class Optimizer { adamw, sgd };
template <>
struct enum_info<Optimizer> {
  static constexpr std::string_view type_name = "Optimizer";
  static constexpr std::array<std::string_view, 2> names = {"AdamW", "SGD"};
};

/// Storage precision of parameters and activations.
enum class Precision { float32, bfloat16, float16 };
template <>
struct enum_info<Precision> {
  static constexpr std::string_view type_name = "Precision";
  static constexpr std::array<std::string_view, 3> names = {"float32", "bfloat16", "float16"};
};

/// Which global experts an EP rank holds.
enum class ExpertPlacement { contiguous, round_robin };
template <>
struct enum_info<ExpertPlacement> {
  static constexpr std::string_view type_name = "ExpertPlacement";
  static constexpr std::array<std::string_view, 2> names = {"contiguous", "round_robin"};
};

/// Communication engine; auto picks local for one process, MPI on the host, NCCL with CUDA.
enum class DistributedBackend { automatic, local, mpi, nccl };
template <>
struct enum_info<DistributedBackend> {
  static constexpr std::string_view type_name = "DistributedBackend";
  static constexpr std::array<std::string_view, 4> names = {"auto", "local", "mpi", "nccl"};
};

/// JSON spelling of an enum value.
template <class E>
constexpr std::string_view enum_name(E e) {
  return enum_info<E>::names[static_cast<std::size_t>(e)];
}

/// Parses a JSON spelling; std::nullopt when it is not one of enum_info<E>::names.
template <class E>
constexpr std::optional<E> enum_from_name(std::string_view s) {
  for (std::size_t i = 0; i < enum_info<E>::names.size(); ++i)
    if (enum_info<E>::names[i] == s) return static_cast<E>(i);
  return std::nullopt;
}

}  // namespace switchyard
