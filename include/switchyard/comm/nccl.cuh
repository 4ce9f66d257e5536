#pragma once
/// \file NcclComm: the device communicator. It wraps an ncclComm_t the framework already has
/// (not owned) and runs every collective on the caller's stream; create_nccl_comm() builds one
/// over a host communicator (e.g. MpiComm) for standalone use. Buffers are device memory; the
/// per-peer counts of all_to_all_v are host values. A count exchange over NCCL sends the counts
/// from device memory too (as DeviceMoELayer does); exchange_counts() takes host communicators
/// only.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "switchyard/comm/communicator.hpp"
#include "switchyard/comm/device_communicator.cuh"
#include "switchyard/exec/cuda.cuh"

namespace switchyard {

namespace detail {
[[noreturn]] inline void throw_nccl(ncclResult_t r, const char* call, const char* file, int line) {
  throw comm_error(concat(call, " failed at ", file, ":", line, ": ", ncclGetErrorString(r)));
}
template <class T>
ncclDataType_t nccl_type() {
  if constexpr (std::is_same_v<T, double>) return ncclFloat64;
  else if constexpr (std::is_same_v<T, float>) return ncclFloat32;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return ncclBfloat16;
  else if constexpr (std::is_same_v<T, __half>) return ncclFloat16;
  else if constexpr (std::is_same_v<T, std::int64_t>) return ncclInt64;
  else if constexpr (std::is_same_v<T, std::uint64_t>) return ncclUint64;
  else if constexpr (std::is_same_v<T, std::int32_t>) return ncclInt32;
  else if constexpr (std::is_same_v<T, unsigned char> || std::is_same_v<T, char>) return ncclUint8;
  else static_assert(!sizeof(T), "no NCCL datatype for this element type");
}
}  // namespace detail

/// Every NCCL call goes through this: it throws comm_error with the call and NCCL's error string.
#define SY_NCCL_TRY(call)                                                                   \
  do {                                                                                      \
    const ncclResult_t sy_nccl_res_ = (call);                                               \
    if (sy_nccl_res_ != ncclSuccess) ::switchyard::detail::throw_nccl(sy_nccl_res_, #call,  \
                                                                      __FILE__, __LINE__);  \
  } while (0)

/// A process group over an existing ncclComm_t. As a Communicator its collectives run on the
/// stream it was made with; as the device layer's DeviceCommunicator, on each call's stream.
class NcclComm final : public DeviceCommunicator {
 public:
  static constexpr bool device_memory = true;

  NcclComm(ncclComm_t comm, cudaStream_t stream) : comm_(comm), stream_(stream) {
    SY_NCCL_TRY(ncclCommUserRank(comm_, &rank_));
    SY_NCCL_TRY(ncclCommCount(comm_, &size_));
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  ncclComm_t native() const { return comm_; }
  cudaStream_t stream() const { return stream_; }
  /// The same communicator, its collectives on `stream` (the layer runs them on each call's
  /// stream).
  NcclComm on(cudaStream_t stream) const {
    NcclComm c = *this;
    c.stream_ = stream;
    return c;
  }

  /// Device buffers; send_counts / recv_counts are host arrays, one per peer, in elements.
  template <class T>
  void all_to_all_v(const T* send, std::span<const std::int64_t> send_counts, T* recv,
                    std::span<const std::int64_t> recv_counts) {
    SY_EXPECTS(static_cast<int>(send_counts.size()) == size_ &&
                   static_cast<int>(recv_counts.size()) == size_,
               detail::concat("all_to_all_v needs one count per peer (", size_, ")"));
    std::int64_t so = 0, ro = 0;
    SY_NCCL_TRY(ncclGroupStart());
    for (int p = 0; p < size_; ++p) {
      if (send_counts[p] > 0)
        SY_NCCL_TRY(ncclSend(send + so, static_cast<std::size_t>(send_counts[p]),
                             detail::nccl_type<T>(), p, comm_, stream_));
      if (recv_counts[p] > 0)
        SY_NCCL_TRY(ncclRecv(recv + ro, static_cast<std::size_t>(recv_counts[p]),
                             detail::nccl_type<T>(), p, comm_, stream_));
      so += send_counts[p];
      ro += recv_counts[p];
    }
    SY_NCCL_TRY(ncclGroupEnd());
  }
  template <class T>
  void all_reduce(T* data, std::int64_t n, ReduceOp op) {
    SY_NCCL_TRY(ncclAllReduce(data, data, static_cast<std::size_t>(n), detail::nccl_type<T>(),
                              op == ReduceOp::sum ? ncclSum : ncclMax, comm_, stream_));
  }
  template <class T>
  void all_gather(const T* send, std::int64_t n, T* recv) {
    SY_NCCL_TRY(ncclAllGather(send, recv, static_cast<std::size_t>(n), detail::nccl_type<T>(),
                              comm_, stream_));
  }
  void barrier() {
    int* flag = nullptr;
    SY_CUDA_TRY(cudaMallocAsync(&flag, sizeof(int), stream_));
    SY_CUDA_TRY(cudaMemsetAsync(flag, 0, sizeof(int), stream_));
    all_reduce(flag, 1, ReduceOp::sum);
    SY_CUDA_TRY(cudaFreeAsync(flag, stream_));
    SY_CUDA_TRY(cudaStreamSynchronize(stream_));
  }
  /// all_gather of host values through a device buffer (control messages: config agreement).
  template <class T>
  void all_gather_host(const T* send, std::int64_t n, T* recv) {
    T* d = nullptr;
    const auto bytes = sizeof(T) * static_cast<std::size_t>(n);
    SY_CUDA_TRY(cudaMallocAsync(&d, bytes * static_cast<std::size_t>(size_ + 1), stream_));
    SY_CUDA_TRY(cudaMemcpyAsync(d, send, bytes, cudaMemcpyHostToDevice, stream_));
    all_gather(d, n, d + n);
    SY_CUDA_TRY(cudaMemcpyAsync(recv, d + n, bytes * static_cast<std::size_t>(size_),
                                cudaMemcpyDeviceToHost, stream_));
    SY_CUDA_TRY(cudaFreeAsync(d, stream_));
    SY_CUDA_TRY(cudaStreamSynchronize(stream_));
  }

  // DeviceCommunicator: the same collectives on `stream`.
  void all_to_all_v(const float* send, std::span<const std::int64_t> send_counts, float* recv,
                    std::span<const std::int64_t> recv_counts, cudaStream_t stream) override {
    on(stream).all_to_all_v(send, send_counts, recv, recv_counts);
  }
  void all_to_all_v(const std::int64_t* send, std::span<const std::int64_t> send_counts,
                    std::int64_t* recv, std::span<const std::int64_t> recv_counts,
                    cudaStream_t stream) override {
    on(stream).all_to_all_v(send, send_counts, recv, recv_counts);
  }
  void all_reduce(float* data, std::int64_t n, ReduceOp op, cudaStream_t stream) override {
    on(stream).all_reduce(data, n, op);
  }
  void all_reduce(double* data, std::int64_t n, ReduceOp op, cudaStream_t stream) override {
    on(stream).all_reduce(data, n, op);
  }
  void all_reduce(std::int64_t* data, std::int64_t n, ReduceOp op, cudaStream_t stream) override {
    on(stream).all_reduce(data, n, op);
  }
  bool sums_bfloat16() const override { return true; }
  void all_reduce(__nv_bfloat16* data, std::int64_t n, ReduceOp op, cudaStream_t stream) override {
    on(stream).all_reduce(data, n, op);
  }
  void all_gather_host(const std::uint64_t* send, std::int64_t n, std::uint64_t* recv,
                       cudaStream_t stream) override {
    on(stream).all_gather_host(send, n, recv);
  }

 private:
  ncclComm_t comm_;
  cudaStream_t stream_;
  int rank_ = 0, size_ = 1;
};

static_assert(Communicator<NcclComm>);

/// Creates an ncclComm_t over the ranks of a host communicator (rank 0 makes the unique id and
/// the others receive it through `host`). The caller owns the result (ncclCommDestroy).
template <Communicator Host>
ncclComm_t create_nccl_comm(Host& host) {
  ncclUniqueId id{};
  if (host.rank() == 0) SY_NCCL_TRY(ncclGetUniqueId(&id));
  std::vector<unsigned char> all(sizeof(id) * static_cast<std::size_t>(host.size()));
  host.all_gather(reinterpret_cast<const unsigned char*>(&id), static_cast<std::int64_t>(sizeof(id)),
                  all.data());
  std::memcpy(&id, all.data(), sizeof(id));  // rank 0's id
  ncclComm_t comm = nullptr;
  SY_NCCL_TRY(ncclCommInitRank(&comm, host.size(), id, host.rank()));
  return comm;
}

}  // namespace switchyard
