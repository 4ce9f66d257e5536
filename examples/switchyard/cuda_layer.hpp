#pragma once
// The device MoE layer (switchyard/layer/device_layer.cuh) behind a plain C++ interface, so the
// driver's g++ code (Boost, CLI11, fmt) never meets nvcc: cuda_layer.cu is the one nvcc
// translation unit, built into the switchyard_cli_cuda library when CUDA is available.
//
// `train --backend cuda` keeps the master weights and the optimizer on the host: each step
// uploads a block's weights once; each micro-batch runs forward and backward on the GPU (x copied
// in, y copied out; dy in, dx out) and adds the downloaded gradients to the host gradients, which
// the host layer then reduces over its MPI groups once per step. Under mpirun (or with
// distributed_backend nccl) the device layers exchange tokens and reduce their losses and counts
// over NCCL communicators of the same groups.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "switchyard/config/config_types.hpp"
#include "switchyard/layer/layer_types.hpp"

namespace switchyard::cli {

/// Number of visible CUDA devices (cudaGetDeviceCount; 0 without a driver or a device).
int cuda_device_count();

/// What one device forward keeps for its backward (opaque to g++ code).
class CudaSaved {
 public:
  virtual ~CudaSaved() = default;
};

/// The global aux loss accumulator of one global batch, on the device.
class CudaGlobalAux {
 public:
  virtual ~CudaGlobalAux() = default;
};

struct CudaForward {
  std::vector<float> y;  ///< [T][H], host
  MoEMetrics metrics;
  std::unique_ptr<CudaSaved> saved;
};

/// One MoE layer on GPU 0, float32, with its own stream.
class CudaMoEBlock {
 public:
  virtual ~CudaMoEBlock() = default;
  /// Copies host weights (the shapes of make_layer's params for the same config) to the device.
  virtual void set_params(const MoEParams<float>& p) = 0;
  /// The placement of those weights (ExpertPlacementMap::slots() of the host layer, after its
  /// experts migrated): the device layer routes by it from now on. Collective like the layer.
  virtual void set_placement(const std::vector<std::int64_t>& expert_of_slot) = 0;
  /// y for x [T][H] (host); `global_aux` is needed by global_aux_loss.
  virtual CudaForward forward(const std::vector<float>& x, index_t T, bool training,
                              std::uint64_t seed, std::uint32_t step,
                              CudaGlobalAux* global_aux) = 0;
  /// dx for dy [T][H] (host); ADDS this backward's gradients into `grads` (host).
  virtual std::vector<float> backward(CudaSaved& saved, const std::vector<float>& dy,
                                      MoEGrads<float>& grads) = 0;
  virtual void update_expert_bias(std::span<const std::int64_t> kept_per_expert) = 0;
};

/// Bytes of an NCCL unique id; 0 in a build without NCCL.
std::size_t nccl_unique_id_bytes();
/// A fresh NCCL unique id (rank 0 of a group makes it and the others receive it).
std::vector<unsigned char> nccl_unique_id();

/// One process group of the device layers: rank 0's unique id, this process's rank, the size.
struct CudaGroup {
  std::vector<unsigned char> id;
  int rank = 0, size = 1;
};

/// The NCCL communicators of the device layers (expert-parallel, dense data-parallel, expert
/// data-parallel), shared by every MoE block of the model.
class CudaComms {
 public:
  virtual ~CudaComms() = default;
};

/// Creates the three communicators (collective: every member of each group calls it, groups in
/// the same order). Throws config_error in a build without NCCL.
std::shared_ptr<CudaComms> make_cuda_comms(const CudaGroup& expert_parallel,
                                           const CudaGroup& dense_data_parallel,
                                           const CudaGroup& expert_data_parallel);

/// Makes GPU `local_rank` this process's device (one GPU per process on a node, as NCCL needs):
/// throws config_error when the node has fewer visible GPUs than `local_size` processes.
void select_cuda_device(int local_rank, int local_size);

/// A device layer for the config, on one GPU (`comms` null) or over the groups of `comms`
/// (throws config_error for what it does not support, cuda_error without a usable device).
std::unique_ptr<CudaMoEBlock> make_cuda_block(const Config& c,
                                              std::shared_ptr<CudaComms> comms = nullptr);
/// A zeroed accumulator for `num_experts` experts.
std::unique_ptr<CudaGlobalAux> make_cuda_global_aux(std::int64_t num_experts);

}  // namespace switchyard::cli
