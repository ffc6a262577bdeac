// One MoE layer vs pure GEMMs of its useful expert FLOPs (layer_bench.hpp).
#include "moesim/bench/layer_bench.hpp"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <span>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "moesim/experts/gemm.hpp"
#include "moesim/model/moe_layer.hpp"
#include "moesim/util/eigen_maps.hpp"
#include "moesim/util/params.hpp"
#include "moesim/util/rng.hpp"

namespace moesim::bench {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

using eigen::RowMat;

// Accumulation / output type of a GEMM with inputs In (bf16 -> float).
template <typename In>
using Acc = std::conditional_t<std::is_same_v<In, experts::bf16>, float, In>;

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Interleaved timing: every iteration times the layer, then the GEMM reference, each
// between barriers, so both see the same machine state (this machine is shared and
// noisy). Per-iteration times are MAX-reduced over ranks; medians are returned (seconds).
template <typename F, typename G>
std::pair<double, double> interleaved(const comm::Comm& comm, std::int64_t warmup,
                                      std::int64_t iters, F&& layer_body, G&& gemm_body) {
  std::vector<double> t(static_cast<std::size_t>(2 * iters), 0.0);
  for (std::int64_t i = 0; i < warmup + iters; ++i) {
    comm.barrier();
    auto t0 = Clock::now();
    layer_body(i);
    const double tl = seconds_since(t0);
    comm.barrier();
    t0 = Clock::now();
    gemm_body(i);
    const double tg = seconds_since(t0);
    if (i >= warmup) {
      t[static_cast<std::size_t>(2 * (i - warmup))] = tl;
      t[static_cast<std::size_t>(2 * (i - warmup) + 1)] = tg;
    }
  }
  comm.allreduce(std::span<double>(t), comm::ReduceOp::max);
  std::vector<double> tl, tg;
  for (std::int64_t i = 0; i < iters; ++i) {
    tl.push_back(t[static_cast<std::size_t>(2 * i)]);
    tg.push_back(t[static_cast<std::size_t>(2 * i + 1)]);
  }
  return {median(std::move(tl)), median(std::move(tg))};
}

// The expert GEMMs of one forward (and backward) at the layer's per-expert row counts, in
// the layer's precision, on buffers of their own: what the GEMM library does at these
// shapes with nothing else around it. In = the GEMM input type (double, float or bf16).
template <typename In>
struct GemmReference {
  std::int64_t d, f;
  std::vector<std::int64_t> off;  // per local expert row offsets (the layer's plan)
  AlignedVector<In> X, W1, W2, Hin, dY, dHin;
  AlignedVector<Acc<In>> H, Y, gW1, gW2, dH, dX;
  GemmReference(std::int64_t d_, std::int64_t f_, std::span<const std::int64_t> offsets)
      : d(d_), f(f_), off(offsets.begin(), offsets.end()) {
    const std::int64_t R = off.back(), E = static_cast<std::int64_t>(off.size()) - 1;
    const auto fill = [](auto& v, std::int64_t n, std::uint64_t key) {
      v.resize(static_cast<std::size_t>(n));
      const CounterRng rng(11, Stream::init, key);
      for (std::int64_t i = 0; i < n; ++i) {
        const double r = 0.05 * rng.normal(static_cast<std::uint64_t>(i));
        if constexpr (std::is_same_v<std::decay_t<decltype(v[0])>, experts::bf16>)
          v[static_cast<std::size_t>(i)] = experts::to_bf16(static_cast<float>(r));
        else
          v[static_cast<std::size_t>(i)] = static_cast<std::decay_t<decltype(v[0])>>(r);
      }
    };
    fill(X, R * d, 1), fill(W1, E * d * f, 2), fill(W2, E * f * d, 3), fill(Hin, R * f, 4);
    fill(dY, R * d, 5), fill(dHin, R * f, 6);
    H.resize(static_cast<std::size_t>(R * f)), Y.resize(static_cast<std::size_t>(R * d));
    dH.resize(H.size()), dX.resize(Y.size());
    gW1.resize(static_cast<std::size_t>(E * d * f)), gW2.resize(gW1.size());
  }
  // bf16: the second GEMM reads a bf16 activation (Hin); fp32/fp64 read H itself.
  const In* act(std::int64_t r0) const {
    if constexpr (std::is_same_v<In, experts::bf16>)
      return Hin.data() + r0 * f;
    else
      return H.data() + r0 * f;
  }
  const In* dact(std::int64_t r0) const {
    if constexpr (std::is_same_v<In, experts::bf16>)
      return dHin.data() + r0 * f;
    else
      return dH.data() + r0 * f;
  }
  void forward() {
    using experts::Op;
    for (std::size_t j = 0; j + 1 < off.size(); ++j) {
      const std::int64_t r0 = off[j], n = off[j + 1] - r0, e = static_cast<std::int64_t>(j);
      experts::gemm(Op::none, Op::none, n, f, d, Acc<In>(1), X.data() + r0 * d, d,
                    W1.data() + e * d * f, f, Acc<In>(0), H.data() + r0 * f, f);
      experts::gemm(Op::none, Op::none, n, d, f, Acc<In>(1), act(r0), f, W2.data() + e * f * d, d,
                    Acc<In>(0), Y.data() + r0 * d, d);
    }
  }
  void backward() {
    using experts::Op;
    for (std::size_t j = 0; j + 1 < off.size(); ++j) {
      const std::int64_t r0 = off[j], n = off[j + 1] - r0, e = static_cast<std::int64_t>(j);
      experts::gemm(Op::transpose, Op::none, f, d, n, Acc<In>(1), act(r0), f, dY.data() + r0 * d, d,
                    Acc<In>(1), gW2.data() + e * f * d, d);
      experts::gemm(Op::none, Op::transpose, n, f, d, Acc<In>(1), dY.data() + r0 * d, d,
                    W2.data() + e * f * d, d, Acc<In>(0), dH.data() + r0 * f, f);
      experts::gemm(Op::transpose, Op::none, d, f, n, Acc<In>(1), X.data() + r0 * d, d, dact(r0), f,
                    Acc<In>(1), gW1.data() + e * d * f, f);
      experts::gemm(Op::none, Op::transpose, n, d, f, Acc<In>(1), dact(r0), f,
                    W1.data() + e * d * f, f, Acc<In>(0), dX.data() + r0 * d, d);
    }
  }
};

// routing.overlap_degree = d > 1: the pipelined layer against the same layer with d = 1 (same
// weights, same inputs), fwd+bwd alternating in one loop; exchange and expert seconds per
// iteration from the layers' own stage timers.
template <typename T>
void overlap_vs_blocking(const Config& cfg, const comm::Comm& comm, model::MoELayer<T>& layer,
                         ParamStore<T>& store, const AlignedVector<T>& x,
                         const AlignedVector<T>& dy, LayerBenchResult& res) {
  const std::int64_t N = static_cast<std::int64_t>(x.size()) / cfg.model.d_model;
  Config c1 = cfg;
  c1.routing.overlap_degree = 1;
  ParamStore<T> store1;
  model::MoELayer<T> blocking(c1, 0, comm, store1, N, N);
  store1.allocate();
  store1.initialize(cfg.training.seed);
  blocking.bind(store1);
  AlignedVector<T> y(x.size()), dx(x.size()), y1(x.size()), dx1(x.size());
  const std::int64_t W = cfg.bench.warmup, I = cfg.bench.iterations;
  std::vector<double> it(static_cast<std::size_t>(4 * I), 0.0);  // exch d, exch 1, expert 1
  auto pass = [&](model::MoELayer<T>& l, ParamStore<T>& s, T* out, T* din) {
    s.zero_grads();
    l.reset_seconds();
    l.forward(x.data(), out, N, true, nullptr);
    l.backward(dy.data(), din, 1e-2, 0.0);
  };
  std::tie(res.stepd_ms, res.step1_ms) = interleaved(
      comm, W, I,
      [&](std::int64_t i) {
        pass(layer, store, y.data(), dx.data());
        if (i >= W) it[static_cast<std::size_t>(4 * (i - W))] = layer.exchange_seconds();
      },
      [&](std::int64_t i) {
        pass(blocking, store1, y1.data(), dx1.data());
        if (i >= W) {
          it[static_cast<std::size_t>(4 * (i - W) + 1)] = blocking.exchange_seconds();
          it[static_cast<std::size_t>(4 * (i - W) + 2)] = blocking.expert_seconds();
        }
      });
  comm.allreduce(std::span<double>(it), comm::ReduceOp::max);
  std::vector<double> ed, e1, x1;
  for (std::int64_t i = 0; i < I; ++i) {
    ed.push_back(it[static_cast<std::size_t>(4 * i)]);
    e1.push_back(it[static_cast<std::size_t>(4 * i + 1)]);
    x1.push_back(it[static_cast<std::size_t>(4 * i + 2)]);
  }
  res.overlap_degree = static_cast<int>(cfg.routing.overlap_degree);
  res.stepd_ms *= 1e3;
  res.step1_ms *= 1e3;
  res.exchanged_ms = 1e3 * median(std::move(ed));
  res.exchange1_ms = 1e3 * median(std::move(e1));
  res.expert1_ms = 1e3 * median(std::move(x1));
  res.hidden = res.exchange1_ms > 0 ? 1.0 - res.exchanged_ms / res.exchange1_ms : 0.0;
  res.step_gain = res.exchange1_ms > 0 ? (res.step1_ms - res.stepd_ms) / res.exchange1_ms : 0.0;
  // Same results (the promise of the pipeline), checked on the last iteration.
  bool same = std::memcmp(y.data(), y1.data(), y.size() * sizeof(T)) == 0 &&
              std::memcmp(dx.data(), dx1.data(), dx.size() * sizeof(T)) == 0;
  for (const ParamKind k : {ParamKind::replicated, ParamKind::expert}) {
    const std::span<T> a = store.grads(k), b = store1.grads(k);
    same =
        same && a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
  }
  res.overlap_bitwise = comm.allreduce<std::int64_t>(same ? 0 : 1, comm::ReduceOp::sum) == 0;
}

template <typename T, typename In>
LayerBenchResult run(const Config& cfg, const comm::Comm& comm) {
  LayerBenchResult res;
  const std::int64_t P = comm.size(), N = cfg.data.tokens_per_step / P;
  const std::int64_t d = cfg.model.d_model, f = cfg.model.d_ff;
  ParamStore<T> store;
  model::MoELayer<T> layer(cfg, 0, comm, store, N, N);
  store.allocate();
  store.initialize(cfg.training.seed);
  layer.bind(store);

  // Inputs keyed by global token id: the same tokens whatever the rank count.
  AlignedVector<T> x(static_cast<std::size_t>(N * d)), y(x.size()), dy(x.size()), dx(x.size()),
      y_first(x.size());
  for (std::int64_t t = 0; t < N; ++t) {
    const CounterRng rng(cfg.training.seed, Stream::data_train,
                         static_cast<std::uint64_t>(comm.rank() * N + t));
    for (std::int64_t j = 0; j < d; ++j) {
      x[static_cast<std::size_t>(t * d + j)] =
          static_cast<T>(rng.normal(static_cast<std::uint64_t>(j)));
      dy[static_cast<std::size_t>(t * d + j)] =
          static_cast<T>(1e-3 * rng.normal(static_cast<std::uint64_t>(d + j)));
    }
  }
  const std::int64_t W = cfg.bench.warmup, I = cfg.bench.iterations;
  // One forward fixes the routing, hence the expert rows this rank computes.
  layer.forward(x.data(), y.data(), N, true, nullptr);
  y_first = y;
  const std::int64_t R = layer.plan().total_recv;
  const double total_rows =
      static_cast<double>(comm.allreduce<std::int64_t>(R, comm::ReduceOp::sum));
  res.useful_gflop_fwd = 4.0 * total_rows * static_cast<double>(d * f) * 1e-9;
  GemmReference<In> ref(d, f, layer.plan().expert_offset);

  bool same = true;
  std::tie(res.fwd_ms, res.fwd_gemm_ms) = interleaved(
      comm, W, I,
      [&](std::int64_t) {
        layer.forward(x.data(), y.data(), N, true, nullptr);
        same = same && std::memcmp(y.data(), y_first.data(), y.size() * sizeof(T)) == 0;
      },
      [&](std::int64_t) { ref.forward(); });
  // Per timed iteration: the layer's phases and the library's forward GEMMs (the part
  // the expert phase is compared with), max over ranks per iteration, then medians, like
  // the totals.
  constexpr std::size_t kPhases = 6;
  std::vector<double> phase_it(static_cast<std::size_t>(I) * kPhases, 0.0);
  std::vector<double> ref_fwd_it(static_cast<std::size_t>(I), 0.0);
  std::tie(res.fwdbwd_ms, res.fwdbwd_gemm_ms) = interleaved(
      comm, W, I,
      [&](std::int64_t i) {
        perf::PhaseTimes times;
        store.zero_grads();
        layer.forward(x.data(), y.data(), N, true, &times);
        {
          perf::ScopedTimer timer(&times, perf::Phase::backward);
          layer.backward(dy.data(), dx.data(), 1e-2, 0.0);
        }
        if (i >= W)
          for (std::size_t p = 0; p < kPhases; ++p)
            phase_it[static_cast<std::size_t>(i - W) * kPhases + p] = times.seconds[p];
      },
      [&](std::int64_t i) {
        const auto t0 = Clock::now();
        ref.forward();
        if (i >= W) ref_fwd_it[static_cast<std::size_t>(i - W)] = seconds_since(t0);
        ref.backward();
      });
  res.fwd_ms *= 1e3;
  res.fwd_gemm_ms *= 1e3;
  res.fwdbwd_ms *= 1e3;
  res.fwdbwd_gemm_ms *= 1e3;
  res.deterministic = comm.allreduce<std::int64_t>(same ? 0 : 1, comm::ReduceOp::sum) == 0;
  {  // exchange bytes of one more fwd+bwd iteration, split by level
    layer.reset_bytes();
    store.zero_grads();
    layer.forward(x.data(), y.data(), N, true, nullptr);
    layer.backward(dy.data(), dx.data(), 1e-2, 0.0);
    std::vector<double> b{static_cast<double>(layer.bytes_inter_node()),
                          static_cast<double>(layer.bytes_intra_node()),
                          static_cast<double>(layer.bytes_token_dispatch_inter_node())};
    comm.allreduce(std::span<double>(b), comm::ReduceOp::sum);
    res.bytes_inter_node = b[0];
    res.bytes_intra_node = b[1];
    res.bytes_token_dispatch_inter_node = b[2];
    res.nodes = layer.nodes();
  }
  comm.allreduce(std::span<double>(phase_it), comm::ReduceOp::max);
  comm.allreduce(std::span<double>(ref_fwd_it), comm::ReduceOp::max);
  for (std::size_t p = 0; p < kPhases; ++p) {
    std::vector<double> v;
    for (std::int64_t i = 0; i < I; ++i)
      v.push_back(phase_it[static_cast<std::size_t>(i) * kPhases + p]);
    res.phase_ms[p] = 1e3 * median(std::move(v));
  }
  res.expert_fwd_gemm_ms = 1e3 * median(std::move(ref_fwd_it));
  if (cfg.routing.overlap_degree > 1) overlap_vs_blocking(cfg, comm, layer, store, x, dy, res);
  return res;
}

}  // namespace

LayerBenchResult bench_layer(const Config& cfg, const comm::Comm& comm) {
  LayerBenchResult res;
  if (cfg.model.precision == Precision::float64)
    res = run<double, double>(cfg, comm);
  else if (cfg.model.precision == Precision::bfloat16)
    res = run<float, experts::bf16>(cfg, comm);
  else
    res = run<float, float>(cfg, comm);
  // Peaks and the machine description: measured on every rank at the same time (the
  // ranks share the machine as in the run), reported from rank 0.
  comm.barrier();
  res.fma_peak_gflops = fma_peak_gflops();
  res.bf16_peak_gflops = bf16_dot_peak_gflops();
  const experts::CpuInfo c = experts::cpu_info();
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "%s | avx512f %s, avx512_bf16 %s, amx_bf16 %s | oneDNN %s (isa %s), f32: %s, "
                "bf16: %s | %d OpenMP thread(s) per rank",
                c.vendor_model.c_str(), c.avx512f ? "yes" : "no", c.avx512_bf16 ? "yes" : "no",
                c.amx_bf16 ? "yes" : "no", c.dnnl_version.c_str(), c.dnnl_isa.c_str(),
                experts::kernel_name(false).c_str(), experts::kernel_name(true).c_str(),
                c.omp_threads);
  res.cpu = buf;
  return res;
}

namespace {
template <typename Body>
double best_rate(double flop, Body&& body) {
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    body();
    best = std::max(best, flop / seconds_since(t0) * 1e-9);
  }
  return best;
}
}  // namespace

// The peak kernels are compiled for their instruction sets with target attributes and chosen
// at run time from the CPU (the portable build, e.g. the sanitizer one, measures the same peak as
// a native one; the CPU model differs between machines of this kind).
namespace {
constexpr int kAcc = 12;
constexpr std::int64_t kIters = 2'000'000;

__attribute__((target("avx512f"))) float fma_loop_avx512(std::int64_t iters) {
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512 m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-6f);
  for (std::int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_fmadd_ps(acc[i], m, a);
  __m512 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_ps(s, acc[i]);
  alignas(64) float out[16];  // (not _mm512_reduce_add_ps: a GCC 12 false warning)
  _mm512_store_ps(out, s);
  return out[0];
}

__attribute__((target("avx2,fma"))) float fma_loop_avx2(std::int64_t iters) {
  __m256 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  const __m256 m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-6f);
  for (std::int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_fmadd_ps(acc[i], m, a);
  __m256 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  return out[0];
}

// vdpbf16ps: 16 lanes x 2 bf16 products, each multiply + add = 64 flop per instruction.
__attribute__((target("avx512f,avx512bf16"))) float bf16_loop(std::int64_t iters) {
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.25f));
  for (std::int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  __m512 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_ps(s, acc[i]);
  alignas(64) float out[16];  // (not _mm512_reduce_add_ps: a GCC 12 false warning)
  _mm512_store_ps(out, s);
  return out[0];
}
}  // namespace

double fma_peak_gflops() {
  volatile float sink = 0;
  if (experts::cpu_info().avx512f)
    return best_rate(2.0 * 16 * kAcc * kIters, [&] { sink = sink + fma_loop_avx512(kIters); });
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return best_rate(2.0 * 8 * kAcc * kIters, [&] { sink = sink + fma_loop_avx2(kIters); });
  return 0;  // no FMA unit this code knows: the bench prints 0 and says so
}

double bf16_dot_peak_gflops() {
  if (!experts::cpu_info().avx512_bf16) return 0;
  volatile float sink = 0;
  return best_rate(64.0 * kAcc * kIters, [&] { sink = sink + bf16_loop(kIters); });
}

}  // namespace moesim::bench
