#pragma once
/// \file Streams, cuBLAS handles and events the CUDA experts spread their per-expert GEMMs over.
/// nvcc only.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <vector>

#include "switchyard/core/error.hpp"
#include "switchyard/exec/cublas.cuh"
#include "switchyard/exec/cuda.cuh"

namespace switchyard {

/// Owns `num_streams` non-blocking side streams, one cuBLAS handle per side stream (a handle is
/// not shared between concurrently running streams), one handle for the caller's stream, and
/// the events of the fork/join. Create once per device and reuse; not thread-safe.
class cuda_expert_resources {
 public:
  explicit cuda_expert_resources(int num_streams = 4) {
    SY_EXPECTS(num_streams >= 1, detail::concat("num_streams must be >= 1; got ", num_streams));
    try {
      SY_CUBLAS_TRY(cublasCreate(&main_));
      SY_CUDA_TRY(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming));
      for (int i = 0; i < num_streams; ++i) {
        cudaStream_t s = nullptr;
        SY_CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        streams_.push_back(s);
        cublasHandle_t h = nullptr;
        SY_CUBLAS_TRY(cublasCreate(&h));
        handles_.push_back(h);
        SY_CUBLAS_TRY(cublasSetStream(h, s));
        cudaEvent_t e = nullptr;
        SY_CUDA_TRY(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        joins_.push_back(e);
      }
    } catch (...) {
      release();
      throw;
    }
  }
  cuda_expert_resources(const cuda_expert_resources&) = delete;
  cuda_expert_resources& operator=(const cuda_expert_resources&) = delete;
  ~cuda_expert_resources() { release(); }

  int num_streams() const { return static_cast<int>(streams_.size()); }
  cudaStream_t stream(int i) const { return streams_[static_cast<std::size_t>(i)]; }
  cublasHandle_t handle(int i) const { return handles_[static_cast<std::size_t>(i)]; }

  /// The handle bound to the caller's stream.
  cublasHandle_t main_handle(cudaStream_t caller) {
    SY_CUBLAS_TRY(cublasSetStream(main_, caller));
    return main_;
  }
  /// Side streams wait for the work queued on `caller` so far.
  void fork(cudaStream_t caller) {
    SY_CUDA_TRY(cudaEventRecord(fork_, caller));
    for (cudaStream_t s : streams_) SY_CUDA_TRY(cudaStreamWaitEvent(s, fork_, 0));
  }
  /// `caller` waits for everything queued on the side streams.
  void join(cudaStream_t caller) {
    for (std::size_t i = 0; i < streams_.size(); ++i) {
      SY_CUDA_TRY(cudaEventRecord(joins_[i], streams_[i]));
      SY_CUDA_TRY(cudaStreamWaitEvent(caller, joins_[i], 0));
    }
  }

 private:
  void release() noexcept {
    // Destruction must not throw: failures here leave nothing to recover.
    for (cudaEvent_t e : joins_) (void)cudaEventDestroy(e);
    for (cublasHandle_t h : handles_) (void)cublasDestroy(h);
    for (cudaStream_t s : streams_) (void)cudaStreamDestroy(s);
    if (fork_) (void)cudaEventDestroy(fork_);
    if (main_) (void)cublasDestroy(main_);
    joins_.clear();
    handles_.clear();
    streams_.clear();
    fork_ = nullptr;
    main_ = nullptr;
  }

  cublasHandle_t main_ = nullptr;
  cudaEvent_t fork_ = nullptr;
  std::vector<cudaStream_t> streams_;
  std::vector<cublasHandle_t> handles_;
  std::vector<cudaEvent_t> joins_;
};

}  // namespace switchyard
