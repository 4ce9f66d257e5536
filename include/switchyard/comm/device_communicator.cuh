#pragma once
/// \file DeviceCommunicator: what the device layer needs from a process group over GPUs. Its
/// collectives take device memory and run on the stream of the layer call that issues them.
/// NcclComm (comm/nccl.cuh) implements it over the framework's ncclComm_t; a framework with its
/// own process groups can implement it over them. nvcc only; no NCCL dependency here.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <span>

#include "switchyard/comm/communicator.hpp"

namespace switchyard {

class DeviceCommunicator {
 public:
  virtual ~DeviceCommunicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// Device buffers; the counts (elements, one per peer, this rank included) are host arrays.
  /// Queued on `stream`.
  virtual void all_to_all_v(const float* send, std::span<const std::int64_t> send_counts,
                            float* recv, std::span<const std::int64_t> recv_counts,
                            cudaStream_t stream) = 0;
  virtual void all_to_all_v(const std::int64_t* send, std::span<const std::int64_t> send_counts,
                            std::int64_t* recv, std::span<const std::int64_t> recv_counts,
                            cudaStream_t stream) = 0;
  /// In place on device buffers, queued on `stream`.
  virtual void all_reduce(float* data, std::int64_t n, ReduceOp op, cudaStream_t stream) = 0;
  virtual void all_reduce(double* data, std::int64_t n, ReduceOp op, cudaStream_t stream) = 0;
  virtual void all_reduce(std::int64_t* data, std::int64_t n, ReduceOp op, cudaStream_t stream) = 0;
  /// A bfloat16 sum in place (gradient_compression). A communicator that has one overrides
  /// this and sums_bfloat16(); the defaults say it has none (the device layer then refuses
  /// gradient_compression when it is built) and throw config_error naming the field.
  virtual bool sums_bfloat16() const { return false; }
  virtual void all_reduce(__nv_bfloat16* /*data*/, std::int64_t /*n*/, ReduceOp /*op*/,
                          cudaStream_t /*stream*/) {
    throw config_error(
        "gradient_compression: this DeviceCommunicator cannot sum bfloat16 (NcclComm can): "
        "leave it false");
  }
  /// all_gather of host words (recv holds n · size()); returns when `recv` is filled, so it
  /// synchronises `stream`. For control messages: config agreement, fail_together, token counts.
  virtual void all_gather_host(const std::uint64_t* send, std::int64_t n, std::uint64_t* recv,
                               cudaStream_t stream) = 0;
};

namespace detail {
/// The host all_gather of a device communicator on `stream` (fail_together, require_agreement).
inline host_word_gather host_gather_of(DeviceCommunicator& c, cudaStream_t stream) {
  return [&c, stream](const std::uint64_t* send, std::int64_t n, std::uint64_t* recv) {
    c.all_gather_host(send, n, recv, stream);
  };
}
}  // namespace detail

}  // namespace switchyard
