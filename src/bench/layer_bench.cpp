// One MoE layer vs pure GEMMs of its useful expert FLOPs (layer_bench.hpp).
#include "moesim/bench/layer_bench.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

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
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  };
  return {median(tl), median(tg)};
}

template <typename T>
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
  // One forward fixes the routing, hence R = the expert rows this rank computes.
  layer.forward(x.data(), y.data(), N, true, nullptr);
  y_first = y;
  const std::int64_t R = layer.plan().total_recv;
  const double total_rows =
      static_cast<double>(comm.allreduce<std::int64_t>(R, comm::ReduceOp::sum));
  res.useful_gflop_fwd = 4.0 * total_rows * static_cast<double>(d * f) * 1e-9;
  // Pure GEMMs of the same useful FLOPs: this rank's R expert rows as single big GEMMs.
  RowMat<T> X = RowMat<T>::Random(R, d), W1 = RowMat<T>::Random(d, f), W2 = RowMat<T>::Random(f, d);
  RowMat<T> H(R, f), Y(R, d), dY = RowMat<T>::Random(R, d), gW1(d, f), gW2(f, d), dX(R, d);
  const auto gemm_fwd = [&](std::int64_t) {
    H.noalias() = X * W1;
    Y.noalias() = H * W2;
  };
  const auto gemm_bwd = [&]() {
    gW2.noalias() = H.transpose() * dY;
    H.noalias() = dY * W2.transpose();
    gW1.noalias() = X.transpose() * H;
    dX.noalias() = H * W1.transpose();
  };

  bool same = true;
  std::tie(res.fwd_ms, res.fwd_gemm_ms) = interleaved(
      comm, W, I,
      [&](std::int64_t) {
        layer.forward(x.data(), y.data(), N, true, nullptr);
        same = same && std::memcmp(y.data(), y_first.data(), y.size() * sizeof(T)) == 0;
      },
      gemm_fwd);
  perf::PhaseTimes times;
  std::tie(res.fwdbwd_ms, res.fwdbwd_gemm_ms) = interleaved(
      comm, W, I,
      [&](std::int64_t i) {
        if (i == W) times.reset();  // phases of the timed iterations only
        store.zero_grads();
        layer.forward(x.data(), y.data(), N, true, &times);
        perf::ScopedTimer timer(&times, perf::Phase::backward);
        layer.backward(dy.data(), dx.data(), 1e-2, 0.0);
      },
      [&](std::int64_t i) {
        gemm_fwd(i);
        gemm_bwd();
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
  std::vector<double> ph(times.seconds.begin(), times.seconds.end());
  comm.allreduce(std::span<double>(ph), comm::ReduceOp::max);
  for (std::size_t p = 0; p < 6; ++p) res.phase_ms[p] = 1e3 * ph[p] / static_cast<double>(I);
  return res;
}

}  // namespace

LayerBenchResult bench_layer(const Config& cfg, const comm::Comm& comm) {
  if (cfg.model.precision == Precision::float64) return run<double>(cfg, comm);
  return run<float>(cfg, comm);
}

}  // namespace moesim::bench
