// GPU benchmark harness (issue 8): the CUDA pieces and the whole device layer at the
// Mixtral-8x7B and DeepSeek-V3-like shapes, timed with CUDA events, each against the
// machine's own ceilings measured in the same run. Prints a table, writes JSON.
//
//   bench_gpu [--out FILE.json] [--shapes mixtral,deepseek] [--tokens 128,4096,16384]
//             [--case-seconds S] [--skip-layer]
//
// Method (docs/benchmarks.md):
// - every timed run is one pair of events around the work on one stream, after warm-up runs;
//   the median of the runs is reported (with the minimum and the count), at least 5 runs and
//   up to 30 or --case-seconds of measurement;
// - inputs rotate over enough copies that they do not sit in L2 (2 x L2 bytes per rotation);
// - data are random and never zero (|v| in [0.25, 1) times a scale), drawn on the device;
// - ceilings: a 2 GiB device-to-device copy (read + write bytes over time), a bf16 GEMM and an
//   fp32 GEMM of 8192^3 through cuBLAS (fp32 accumulation, as the experts); each kernel's floor
//   is its minimal bytes over the copy bandwidth or its FLOPs over the GEMM rate of its dtype,
//   and the fraction reported is floor / median (1.0 = at the ceiling).
//
// Storage: the router works on fp32 logits (Megatron's router dtype), permute / unpermute and
// the grouped GEMM on bf16 rows, and the whole layer in fp32, the device layer's storage
// (layer/device_layer.cuh); its floor uses the fp32 GEMM rate.

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <switchyard/core/dtype.cuh>
#include <switchyard/core/philox.hpp>
#include <switchyard/dispatch/permute.cuh>
#include <switchyard/dispatch/plan.cuh>
#include <switchyard/experts/experts.cuh>
#include <switchyard/layer/device_layer.cuh>
#include <switchyard/routing.cuh>

namespace sy = switchyard;
using sy::index_t;
using bf16 = __nv_bfloat16;

namespace {

// ---------------------------------------------------------------- options and shapes

struct Shape {
  std::string name;
  index_t H, F, E;
  int k;
};

const std::vector<Shape> all_shapes = {{"mixtral", 4096, 14336, 8, 2},
                                       {"deepseek", 7168, 2048, 256, 8}};

struct Options {
  std::string out = "bench_gpu.json";
  std::vector<std::string> shapes = {"mixtral", "deepseek"};
  std::vector<index_t> tokens = {128, 4096, 16384};
  double case_seconds = 1.5;
  bool layer = true;
  bool help = false;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--out") {
      o.out = value();
    } else if (a == "--shapes") {
      o.shapes = split(value());
      for (const std::string& s : o.shapes)
        if (std::none_of(all_shapes.begin(), all_shapes.end(),
                         [&](const Shape& sh) { return sh.name == s; }))
          throw std::invalid_argument("--shapes: unknown shape '" + s + "' (mixtral or deepseek)");
    } else if (a == "--tokens") {
      o.tokens.clear();
      for (const std::string& t : split(value())) {
        const long long v = std::stoll(t);
        if (v < 1) throw std::invalid_argument("--tokens: each count must be >= 1, got " + t);
        o.tokens.push_back(v);
      }
    } else if (a == "--case-seconds") {
      o.case_seconds = std::stod(value());
      if (!(o.case_seconds > 0)) throw std::invalid_argument("--case-seconds must be > 0");
    } else if (a == "--skip-layer") {
      o.layer = false;
    } else if (a == "--help" || a == "-h") {
      o.help = true;
    } else {
      throw std::invalid_argument("unknown argument '" + a +
                                  "' (--out, --shapes, --tokens, --case-seconds, --skip-layer)");
    }
  }
  return o;
}

// ---------------------------------------------------------------- device data

template <class T>
__global__ void fill_random_kernel(T* p, std::size_t n, std::uint64_t seed, float scale) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    // The library's Philox keyed by seed, addressed by i (64 bits): |v| in (0.25, 1], random
    // sign, never zero.
    const sy::philox4x32_ctr r =
        sy::philox4x32<10>(sy::philox4x32_ctr{static_cast<std::uint32_t>(i),
                                              static_cast<std::uint32_t>(i >> 32), 0u, 0u},
                           sy::philox4x32_key{static_cast<std::uint32_t>(seed),
                                              static_cast<std::uint32_t>(seed >> 32)});
    const float v = (0.25f + 0.75f * sy::u01_open_closed(r.c0)) * ((r.c1 & 1u) ? 1.0f : -1.0f);
    p[i] = sy::storage_traits<T>::from_acc(v * scale);
  }
}

template <class T>
void fill_random(T* p, std::size_t n, std::uint64_t seed, float scale, cudaStream_t s) {
  if (n == 0) return;
  const auto blocks = static_cast<unsigned>(std::min<std::size_t>((n + 255) / 256, 65536));
  fill_random_kernel<T><<<blocks, 256, 0, s>>>(p, n, seed, scale);
  SY_CUDA_TRY(cudaGetLastError());
}

template <class T>
sy::device_buffer<T> random_buffer(std::size_t n, std::uint64_t seed, float scale, cudaStream_t s) {
  sy::device_buffer<T> b(n);
  fill_random(b.data(), n, seed, scale, s);
  return b;
}

/// `sets` copies of a random input (different seeds): the rotation that keeps it out of L2.
template <class T>
struct rotating {
  std::vector<sy::device_buffer<T>> sets;
  rotating(std::size_t n, int count, std::uint64_t seed, float scale, cudaStream_t s) {
    for (int i = 0; i < count; ++i)
      sets.push_back(
          random_buffer<T>(n, seed + 1000003ull * static_cast<std::uint64_t>(i), scale, s));
  }
  T* operator[](int i) { return sets[static_cast<std::size_t>(i) % sets.size()].data(); }
};

int l2_bytes = 50 << 20;
void* l2_flush = nullptr;      // 2 x L2 bytes, written before every timed run
cudaMemPool_t pool = nullptr;  // the default pool, which keeps freed memory while a case runs

/// Copies of an input of `bytes` bytes so that one rotation moves 2 x L2: 1 to 64.
int rotations(double bytes) {
  return static_cast<int>(std::clamp(std::ceil(2.0 * l2_bytes / std::max(bytes, 1.0)), 1.0, 64.0));
}

// ---------------------------------------------------------------- timing

struct Timing {
  double median_ms = 0, min_ms = 0;
  int runs = 0;
};

struct Events {
  cudaEvent_t a = nullptr, b = nullptr;
  Events() {
    SY_CUDA_TRY(cudaEventCreate(&a));
    SY_CUDA_TRY(cudaEventCreate(&b));
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
  ~Events() {
    (void)cudaEventDestroy(a);
    (void)cudaEventDestroy(b);
  }
};

/// Times `work(i)` (i = run number, for the rotation) between two events on `s`; `before(i)`
/// runs untimed ahead of each run (e.g. the forward whose saved state a backward consumes).
Timing time_runs(cudaStream_t s, double seconds, const std::function<void(int)>& work,
                 const std::function<void(int)>& before = {}) {
  constexpr int warmup = 2, min_runs = 5, max_runs = 30;
  Events ev;
  for (int i = 0; i < warmup; ++i) {
    if (before) before(i);
    work(i);
  }
  SY_CUDA_TRY(cudaStreamSynchronize(s));
  std::vector<double> ms;
  double measured = 0;
  for (int i = 0; i < max_runs && (i < min_runs || measured < seconds * 1e3); ++i) {
    if (before) before(warmup + i);
    // Evict L2 and keep the GPU busy while the run's launches queue behind the memset (about
    // 40 us), so a short case times the device rather than the host's launch latency.
    SY_CUDA_TRY(cudaMemsetAsync(l2_flush, i & 0xff, 2 * static_cast<std::size_t>(l2_bytes), s));
    SY_CUDA_TRY(cudaEventRecord(ev.a, s));
    work(warmup + i);
    SY_CUDA_TRY(cudaEventRecord(ev.b, s));
    SY_CUDA_TRY(cudaEventSynchronize(ev.b));
    float t = 0;
    SY_CUDA_TRY(cudaEventElapsedTime(&t, ev.a, ev.b));
    ms.push_back(t);
    measured += t;
  }
  std::sort(ms.begin(), ms.end());
  Timing r;
  r.runs = static_cast<int>(ms.size());
  r.min_ms = ms.front();
  r.median_ms =
      ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
  return r;
}

// ---------------------------------------------------------------- results

struct Ceilings {
  double copy_gbps = 0;    // (read + write) bytes / s / 1e9
  double bf16_tflops = 0;  // cuBLAS bf16 GEMM, fp32 accumulation
  double fp32_tflops = 0;  // cuBLAS fp32 GEMM
};

struct Result {
  std::string name, shape, dtype, note;
  index_t tokens = 0;
  Timing t;
  double bytes = 0, flops = 0;
  double floor_ms = 0;  // bytes / copy bandwidth or flops / GEMM rate
  bool skipped = false;
};

std::vector<Result> results;
Ceilings ceilings;

void record(Result r) {
  if (!r.skipped && r.t.median_ms > 0) {
    const double rate =
        r.flops > 0 ? (r.dtype == "bf16" ? ceilings.bf16_tflops : ceilings.fp32_tflops) * 1e12
                    : ceilings.copy_gbps * 1e9;
    const double amount = r.flops > 0 ? r.flops : r.bytes;
    r.floor_ms = rate > 0 ? amount / rate * 1e3 : 0;
  }
  if (r.skipped)
    std::printf("%-16s %-9s %6lld  skipped: %s\n", r.name.c_str(), r.shape.c_str(),
                static_cast<long long>(r.tokens), r.note.c_str());
  else
    std::printf("%-16s %-9s %6lld %-5s %10.4f %10.4f %4d %10.4f %7.3f  %s\n", r.name.c_str(),
                r.shape.c_str(), static_cast<long long>(r.tokens), r.dtype.c_str(), r.t.median_ms,
                r.t.min_ms, r.t.runs, r.floor_ms, r.floor_ms / r.t.median_ms, r.note.c_str());
  std::fflush(stdout);
  results.push_back(std::move(r));
}

/// Records `name` at (shape, T) as skipped, with the reason.
void record_skipped(const std::string& name, const Shape& sh, index_t T, std::string why) {
  Result r;
  r.name = name;
  r.shape = sh.name;
  r.tokens = T;
  r.skipped = true;
  r.note = std::move(why);
  record(std::move(r));
}

/// Runs one case; a failure (out of memory, a CUDA error) is recorded as skipped with its
/// message and the harness goes on with the next case.
void run_case(const std::string& name, const Shape& sh, index_t T,
              const std::function<Result()>& body) {
  try {
    Result r = body();
    r.name = name;
    r.shape = sh.name;
    r.tokens = T;
    record(std::move(r));
  } catch (const std::exception& e) {
    (void)cudaGetLastError();  // a failed allocation is not sticky; clear it
    (void)cudaDeviceSynchronize();
    record_skipped(name, sh, T, e.what());
  }
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      o += ' ';
    } else {
      o += c;
    }
  }
  return o;
}

/// Writes `path` through a temporary file and a rename, so a run stopped mid-write leaves the
/// previous, whole file.
void write_json(const std::string& path, const cudaDeviceProp& prop, const std::string& date) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) throw std::runtime_error("cannot write " + tmp);
  std::fprintf(f, "{\n  \"date\": \"%s\",\n", date.c_str());
  std::fprintf(f,
               "  \"device\": {\"name\": \"%s\", \"sm\": \"%d.%d\", \"memory_gib\": %.1f, "
               "\"l2_mib\": %.1f, \"sms\": %d},\n",
               json_escape(prop.name).c_str(), prop.major, prop.minor,
               static_cast<double>(prop.totalGlobalMem) / (1 << 30),
               static_cast<double>(prop.l2CacheSize) / (1 << 20), prop.multiProcessorCount);
  std::fprintf(f,
               "  \"ceilings\": {\"copy_gbps\": %.1f, \"bf16_gemm_tflops\": %.1f, "
               "\"fp32_gemm_tflops\": %.1f},\n  \"results\": [\n",
               ceilings.copy_gbps, ceilings.bf16_tflops, ceilings.fp32_tflops);
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    std::fprintf(f, "    {\"case\": \"%s\", \"shape\": \"%s\", \"tokens\": %lld, ", r.name.c_str(),
                 r.shape.c_str(), static_cast<long long>(r.tokens));
    if (r.skipped)
      std::fprintf(f, "\"skipped\": \"%s\"}", json_escape(r.note).c_str());
    else
      std::fprintf(f,
                   "\"dtype\": \"%s\", \"median_ms\": %.6f, \"min_ms\": %.6f, \"runs\": %d, "
                   "\"bytes\": %.0f, \"flops\": %.0f, \"floor_ms\": %.6f, "
                   "\"fraction_of_floor\": %.4f, \"note\": \"%s\"}",
                   r.dtype.c_str(), r.t.median_ms, r.t.min_ms, r.t.runs, r.bytes, r.flops,
                   r.floor_ms, r.floor_ms / r.t.median_ms, json_escape(r.note).c_str());
    std::fprintf(f, "%s\n", i + 1 < results.size() ? "," : "");
  }
  std::fprintf(f, "  ]\n}\n");
  if (std::fclose(f) != 0 || std::rename(tmp.c_str(), path.c_str()) != 0)
    throw std::runtime_error("cannot write " + path);
}

// ---------------------------------------------------------------- ceilings

/// TFLOP/s of one 8192^3 GEMM through cuBLAS over storage T (`type`), fp32 accumulation, on
/// random inputs.
template <class T>
double gemm_tflops(cublasHandle_t h, cudaDataType type, cudaStream_t s, double seconds) {
  const int n = 8192;
  const auto nn = static_cast<std::size_t>(n) * n;
  auto a = random_buffer<T>(nn, 11, 0.1f, s), b = random_buffer<T>(nn, 12, 0.1f, s);
  sy::device_buffer<T> c(nn);
  const float one = 1, zero = 0;
  const Timing t = time_runs(s, seconds, [&](int) {
    SY_CUBLAS_TRY(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, a.data(), type, n,
                               b.data(), type, n, &zero, c.data(), type, n, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
  });
  return 2.0 * n * n * n / (t.median_ms * 1e-3) / 1e12;
}

void measure_ceilings(cudaStream_t s, double seconds) {
  {
    const std::size_t bytes = std::size_t{2} << 30;
    sy::device_buffer<std::byte> a(bytes), b(bytes);
    SY_CUDA_TRY(cudaMemsetAsync(a.data(), 1, bytes, s));
    const Timing t = time_runs(s, seconds, [&](int) {
      SY_CUDA_TRY(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, s));
    });
    ceilings.copy_gbps = 2.0 * static_cast<double>(bytes) / (t.median_ms * 1e-3) / 1e9;
  }
  // One handle for both GEMMs, destroyed also when one throws.
  const std::unique_ptr<cublasContext, decltype(&cublasDestroy)> h(
      [] {
        cublasHandle_t raw = nullptr;
        SY_CUBLAS_TRY(cublasCreate(&raw));
        return raw;
      }(),
      &cublasDestroy);
  SY_CUBLAS_TRY(cublasSetStream(h.get(), s));
  ceilings.bf16_tflops = gemm_tflops<bf16>(h.get(), CUDA_R_16BF, s, seconds);
  ceilings.fp32_tflops = gemm_tflops<float>(h.get(), CUDA_R_32F, s, seconds);
  std::printf(
      "ceilings: copy %.0f GB/s (read + write), bf16 GEMM %.0f TFLOP/s, fp32 GEMM %.1f "
      "TFLOP/s\n\n",
      ceilings.copy_gbps, ceilings.bf16_tflops, ceilings.fp32_tflops);
}

// ---------------------------------------------------------------- one shape, one T

/// Routes of random logits (softmax top-k) and their dropless plan, shared by the dispatch
/// cases: the plan is built once, its offsets copied to the host.
struct Routed {
  sy::device_buffer<std::int32_t> idx;
  sy::device_buffer<float> prob;
  sy::device_buffer<std::byte> plan_ws;
  sy::DevicePlan plan;
  std::vector<index_t> offsets;  // host [E + 1]
};

template <int K>
void route_top_k(cudaStream_t s, index_t E, const float* logits, index_t T, std::int32_t* idx,
                 float* prob, unsigned long long* status) {
  sy::RouterParams p;
  p.num_experts = E;
  const sy::TopK<K, sy::Softmax> router(p);
  const auto a = router.template args_with_bias<float>(nullptr);
  sy::top_k_forward<K, sy::Softmax>(
      sy::exec::Cuda{s}, a, sy::matrix_view<const float>(logits, T, E),
      sy::matrix_view<std::int32_t>(idx, T, K), sy::matrix_view<float>(prob, T, K), status);
}

template <int K>
void route_sinkhorn(cudaStream_t s, index_t E, const float* logits, index_t T, void* ws,
                    std::int32_t* idx, float* prob, int* iterations, unsigned long long* status) {
  const sy::Sinkhorn<K> router(E);
  sy::sinkhorn_forward<K>(sy::exec::Cuda{s}, router, sy::matrix_view<const float>(logits, T, E),
                          /*training=*/true, ws, sy::matrix_view<std::int32_t>(idx, T, K),
                          sy::matrix_view<float>(prob, T, K), iterations, status);
}

template <class F>
void with_k(int k, F&& f) {
  switch (k) {
    case 2: f(std::integral_constant<int, 2>{}); return;
    case 8: f(std::integral_constant<int, 8>{}); return;
    default: throw std::invalid_argument("bench_gpu: k must be 2 or 8");
  }
}

void bench_shape(const Shape& sh, index_t T, const Options& o, cudaStream_t s) {
  const sy::exec::Cuda cu{s};
  const index_t E = sh.E, H = sh.H;
  const int k = sh.k;
  const auto Tk = static_cast<std::size_t>(T * k), TE = static_cast<std::size_t>(T * E);
  const double secs = o.case_seconds;

  // Router: softmax top-k and Sinkhorn over fp32 logits [T][E].
  rotating<float> logits(TE, rotations(4.0 * TE), 100, 3.0f, s);
  sy::device_buffer<std::int32_t> idx(Tk);
  sy::device_buffer<float> prob(Tk);
  sy::device_buffer<unsigned long long> status(1);
  sy::reset_routing_status(cu, status.data());
  const double route_bytes = 4.0 * TE + 8.0 * Tk;
  run_case("router_topk", sh, T, [&] {
    Result r;
    r.dtype = "fp32";
    r.bytes = route_bytes;
    with_k(k, [&](auto K) {
      r.t = time_runs(s, secs, [&](int i) {
        route_top_k<decltype(K)::value>(s, E, logits[i], T, idx.data(), prob.data(), status.data());
      });
    });
    return r;
  });
  run_case("router_sinkhorn", sh, T, [&] {
    Result r;
    r.dtype = "fp32";
    sy::device_buffer<std::byte> ws(sy::sinkhorn_workspace_bytes(T, E));
    sy::device_buffer<int> iterations(1);
    with_k(k, [&](auto K) {
      r.t = time_runs(s, secs, [&](int i) {
        route_sinkhorn<decltype(K)::value>(s, E, logits[i], T, ws.data(), idx.data(), prob.data(),
                                           iterations.data(), status.data());
      });
    });
    int iters = 0;
    SY_CUDA_TRY(cudaMemcpy(&iters, iterations.data(), sizeof(int), cudaMemcpyDeviceToHost));
    // Floor: read z, write P and the routes once; each iteration reads P twice more.
    r.bytes = route_bytes + 4.0 * TE;
    r.note = "iterations " + std::to_string(iters) + " (floor: one pass)";
    return r;
  });

  // Routes of the first logits set, the dropless plan over them.
  Routed rt;
  rt.idx = sy::device_buffer<std::int32_t>(Tk);
  rt.prob = sy::device_buffer<float>(Tk);
  with_k(k, [&](auto K) {
    route_top_k<decltype(K)::value>(s, E, logits[0], T, rt.idx.data(), rt.prob.data(),
                                    status.data());
  });
  sy::check_routing_status(cu, status.data());
  sy::DispatchOptions dopt;
  dopt.num_experts = E;
  rt.plan_ws = sy::device_buffer<std::byte>(sy::plan_workspace_bytes<float>(cu, T, k, dopt));
  const auto build = [&] {
    return sy::build_plan<float>(cu, dopt, rt.idx.data(), rt.prob.data(), T, k, rt.plan_ws.data(),
                                 rt.plan_ws.size());
  };
  run_case("dispatch_plan", sh, T, [&] {
    Result r;
    r.dtype = "fp32";
    r.t = time_runs(s, secs, [&](int) { (void)build(); });
    // Read expert ids and probs; write route_row and row_route (int64) and the counts.
    r.bytes = 8.0 * Tk + 16.0 * Tk + 8.0 * 3 * E;
    return r;
  });
  rt.plan = build();
  sy::check_device_plan(cu, rt.plan);
  std::vector<std::int64_t> off(static_cast<std::size_t>(E) + 1);
  SY_CUDA_TRY(cudaMemcpy(off.data(), rt.plan.expert_offsets, sizeof(std::int64_t) * off.size(),
                         cudaMemcpyDeviceToHost));
  rt.offsets.assign(off.begin(), off.end());
  const index_t R = rt.offsets.back();  // T·k, dropless

  // Permute / unpermute of bf16 rows.
  const auto TH = static_cast<std::size_t>(T * H), RH = static_cast<std::size_t>(R * H);
  run_case("permute", sh, T, [&] {
    Result r;
    r.dtype = "bf16";
    rotating<bf16> x(TH, rotations(2.0 * TH), 200, 1.0f, s);
    sy::device_buffer<bf16> rows(RH);
    r.t = time_runs(s, secs, [&](int i) { sy::permute(cu, rt.plan, x[i], H, rows.data()); });
    r.bytes = 2.0 * (TH + RH) + 8.0 * Tk;
    return r;
  });
  run_case("unpermute", sh, T, [&] {
    Result r;
    r.dtype = "bf16";
    rotating<bf16> rows(RH, rotations(2.0 * RH), 300, 1.0f, s);
    sy::device_buffer<bf16> y(TH);
    r.t = time_runs(
        s, secs, [&](int i) { sy::unpermute(cu, rt.plan, rows[i], rt.prob.data(), H, y.data()); });
    r.bytes = 2.0 * (RH + TH) + 12.0 * Tk;
    return r;
  });

  // Grouped GEMM: the first projection of SwiGLU experts, [R][H] x [E][2F][H]^T, bf16.
  run_case("grouped_gemm", sh, T, [&] {
    Result r;
    r.dtype = "bf16";
    const index_t N = 2 * sh.F;
    rotating<bf16> a(RH, rotations(2.0 * RH), 400, 1.0f, s);
    auto w = random_buffer<bf16>(static_cast<std::size_t>(E * N * H), 500,
                                 1.0f / std::sqrt(static_cast<float>(H)), s);
    sy::device_buffer<bf16> c(static_cast<std::size_t>(R * N));
    sy::cuda_expert_resources res;
    r.t = time_runs(s, secs, [&](int i) {
      sy::grouped_gemm<bf16>(cu, res, rt.offsets, sy::matrix_view<const bf16>(a[i], R, H),
                             sy::tensor3_view<const bf16>(w.data(), E, N, H),
                             sy::matrix_view<bf16>(c.data(), R, N));
    });
    r.flops = 2.0 * static_cast<double>(R) * N * H;
    r.note = "fc1 of SwiGLU, N = 2F = " + std::to_string(N);
    return r;
  });

  if (!o.layer) return;
  // The whole device layer (fp32): SwiGLU experts, dropless, softmax top-k, aux loss.
  sy::Config c;
  c.num_experts = E;
  c.num_experts_per_token = k;
  c.hidden_size = H;
  c.ffn_hidden_size = sh.F;
  c.gated = true;
  c.activation = sy::Activation::silu;
  c.load_balance_loss_coeff = 0.01;
  c.router_z_loss_coeff = 0.001;
  // Parameters and gradients (fp32), and the peak of backward: rows in, rows out or d_in,
  // d_rows, one more rows-sized buffer and the SwiGLU workspace [R][3F]; x, y, dy, dx [T][H].
  const double params = static_cast<double>(E) * H * (1 + 3.0 * sh.F);
  const double need = 8.0 * params + 4.0 * static_cast<double>(R) * (4.0 * H + 3.0 * sh.F) +
                      16.0 * static_cast<double>(T) * H;
  std::size_t free_b = 0, total_b = 0;
  SY_CUDA_TRY(cudaMemGetInfo(&free_b, &total_b));
  const double layer_flops = 2.0 * T * E * H + 6.0 * R * H * sh.F;  // router + fc1 + fc2
  const auto skip = [&](const std::string& why) {
    for (const char* name : {"layer_forward", "layer_backward"}) record_skipped(name, sh, T, why);
  };
  if (need > 0.9 * static_cast<double>(free_b)) {
    skip("needs about " + std::to_string(static_cast<long long>(need / (1 << 30))) + " GiB, " +
         std::to_string(static_cast<long long>(free_b >> 30)) + " GiB free");
    return;
  }
  try {
    // The compile-time layer (one router instantiation per k, not make_device_layer's all).
    std::unique_ptr<sy::DeviceMoELayerCore> layer;
    with_k(k, [&](auto K) {
      using Router = sy::TopK<decltype(K)::value, sy::Softmax>;
      layer = std::make_unique<sy::DeviceMoELayer<Router, sy::Dropless, sy::GLU<sy::SiLU>>>(
          c, Router(sy::router_params(c)), s);
    });
    sy::DeviceMoEParams& p = layer->params();
    const float router_scale = 0.02f, fc_scale = 1.0f / std::sqrt(static_cast<float>(H));
    fill_random(p.router_weight.data(), p.router_weight.size(), 600, router_scale, s);
    fill_random(p.fc1.data(), p.fc1.size(), 601, fc_scale, s);
    fill_random(p.fc2.data(), p.fc2.size(), 602, 1.0f / std::sqrt(static_cast<float>(sh.F)), s);
    sy::DeviceMoEGrads g = layer->make_grads(s);
    rotating<float> x(TH, rotations(4.0 * TH), 700, 1.0f, s);
    auto dy = random_buffer<float>(TH, 800, 1e-3f, s);
    run_case("layer_forward", sh, T, [&] {
      Result r;
      r.dtype = "fp32";
      r.flops = layer_flops;
      r.t = time_runs(s, secs, [&](int i) { (void)layer->forward(x[i], T, s); });
      r.note = "SwiGLU, dropless, aux + z loss; includes the host sync of the offsets";
      return r;
    });
    std::optional<sy::DeviceMoEForward> fwd;
    run_case("layer_backward", sh, T, [&] {
      Result r;
      r.dtype = "fp32";
      r.flops = 2.0 * layer_flops;
      r.t = time_runs(
          s, secs,
          [&](int) { sy::device_buffer<float> dx = layer->backward(fwd->saved, dy.data(), s, g); },
          [&](int i) {
            fwd.reset();  // the last forward's buffers go before the next one takes its own
            fwd.emplace(layer->forward(x[i], T, s));
          });
      fwd.reset();
      r.note = "dx and the parameter gradients";
      return r;
    });
  } catch (const std::exception& e) {
    (void)cudaGetLastError();
    skip(e.what());
  }
}

std::string today() {
  const std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&now));
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    if (o.help) {
      std::printf(
          "bench_gpu [--out FILE.json] [--shapes mixtral,deepseek] [--tokens "
          "128,4096,16384] [--case-seconds S] [--skip-layer]\n(docs/benchmarks.md)\n");
      return 0;
    }
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      std::fprintf(stderr, "bench_gpu: no CUDA device\n");
      return 77;
    }
    cudaDeviceProp prop{};
    SY_CUDA_TRY(cudaGetDeviceProperties(&prop, 0));
    l2_bytes = prop.l2CacheSize;
    sy::device_buffer<std::byte> flush(2 * static_cast<std::size_t>(l2_bytes));
    l2_flush = flush.data();
    // Keep freed pool memory for reuse, as a framework's caching allocator does (the layer's
    // per-call buffers come from cudaMallocAsync's default pool).
    SY_CUDA_TRY(cudaDeviceGetDefaultMemPool(&pool, 0));
    std::uint64_t keep = std::numeric_limits<std::uint64_t>::max();
    SY_CUDA_TRY(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    cudaStream_t s = nullptr;
    SY_CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    const std::string date = today();
    std::printf("bench_gpu %s on %s (sm_%d%d, %.0f GiB, L2 %d MiB)\n", date.c_str(), prop.name,
                prop.major, prop.minor, static_cast<double>(prop.totalGlobalMem) / (1 << 30),
                prop.l2CacheSize >> 20);
    measure_ceilings(s, o.case_seconds);
    std::printf("%-16s %-9s %6s %-5s %10s %10s %4s %10s %7s\n", "case", "shape", "T", "dtype",
                "median ms", "min ms", "runs", "floor ms", "of floor");
    for (const Shape& sh : all_shapes)
      if (std::find(o.shapes.begin(), o.shapes.end(), sh.name) != o.shapes.end())
        for (const index_t T : o.tokens) {
          try {
            bench_shape(sh, T, o, s);
          } catch (const std::exception& e) {  // outside a case (its shared set-up): go on
            (void)cudaGetLastError();
            record_skipped(
                "setup", sh, T,
                std::string("the cases after this failed set-up did not run: ") + e.what());
          }
          // Give the pool's kept memory back before the next, larger case sizes itself.
          SY_CUDA_TRY(cudaStreamSynchronize(s));
          SY_CUDA_TRY(cudaMemPoolTrimTo(pool, 0));
          write_json(o.out, prop, date);  // after each shape and T: a killed run keeps its rows
        }
    write_json(o.out, prop, date);
    (void)cudaStreamDestroy(s);
    std::printf("\nwrote %s\n", o.out.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu: %s\n", e.what());
    return 1;
  }
}
