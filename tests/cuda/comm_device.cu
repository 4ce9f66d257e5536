// The NCCL communicator on one rank, for the comparison with LocalComm.
#include "comm_device.hpp"

#include <switchyard/exec/cuda.cuh>
#if defined(SWITCHYARD_HAS_NCCL)
#include <switchyard/comm/nccl.cuh>
#endif

namespace switchyard::test {

#if defined(SWITCHYARD_HAS_NCCL)
bool nccl_available() { return true; }

std::vector<double> nccl_one_rank_roundtrip(const std::vector<double>& data) {
  ncclComm_t raw = nullptr;
  int dev = 0;
  SY_NCCL_TRY(ncclCommInitAll(&raw, 1, &dev));
  cudaStream_t stream = nullptr;
  SY_CUDA_TRY(cudaStreamCreate(&stream));
  NcclComm comm(raw, stream);
  const auto n = static_cast<std::int64_t>(data.size());
  double *a = nullptr, *b = nullptr, *c = nullptr;
  SY_CUDA_TRY(cudaMalloc(&a, sizeof(double) * data.size()));
  SY_CUDA_TRY(cudaMalloc(&b, sizeof(double) * data.size()));
  SY_CUDA_TRY(cudaMalloc(&c, sizeof(double) * data.size()));
  SY_CUDA_TRY(cudaMemcpy(a, data.data(), sizeof(double) * data.size(), cudaMemcpyHostToDevice));
  const std::vector<std::int64_t> counts{n};
  comm.all_to_all_v(a, counts, b, counts);
  comm.all_reduce(b, n, ReduceOp::sum);
  comm.all_gather(b, n, c);
  comm.barrier();
  require_agreement(comm, 42, "test fingerprint");
  std::vector<double> out(data.size());
  SY_CUDA_TRY(cudaMemcpy(out.data(), c, sizeof(double) * data.size(), cudaMemcpyDeviceToHost));
  SY_CUDA_TRY(cudaFree(a));
  SY_CUDA_TRY(cudaFree(b));
  SY_CUDA_TRY(cudaFree(c));
  SY_CUDA_TRY(cudaStreamDestroy(stream));
  SY_NCCL_TRY(ncclCommDestroy(raw));
  return out;
}
#else
bool nccl_available() { return false; }
std::vector<double> nccl_one_rank_roundtrip(const std::vector<double>&) { return {}; }
#endif

}  // namespace switchyard::test
