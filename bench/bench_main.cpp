// The main() of every benchmark executable: records OMP_NUM_THREADS in the JSON context (the
// thread count a run used), then runs the registered benchmarks.
#include <benchmark/benchmark.h>

#include <cstdlib>

int main(int argc, char** argv) {
  const char* omp = std::getenv("OMP_NUM_THREADS");
  benchmark::AddCustomContext("omp_num_threads", omp ? omp : "unset");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
