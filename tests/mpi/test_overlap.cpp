// routing.overlap_degree = d (docs/overlap.md): the exchange and the expert computation as a
// pipeline of d chunks of whole local experts. Checked against the blocking exchange:
//  - the chunked exchange lands exactly the rows of the blocking one, in both directions, and
//    counts the same bytes per level (random plans, every chunk count, empty chunks);
//  - a layer's forward output, input gradient and every parameter gradient are bitwise those of
//    d = 1 (float64, float32, bfloat16);
//  - whole training runs (Adam, capacity drops and dropless skew, evaluation) give bitwise the
//    same loss curve for every d at 1, 2 and 4 ranks, and equal the 1-rank run to round-off.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "moesim/comm/comm.hpp"
#include "moesim/dispatch/dispatcher.hpp"
#include "moesim/model/moe_layer.hpp"
#include "moesim/routing/random.hpp"
#include "moesim/train/trainer.hpp"
#include "moesim/util/rng.hpp"
#include "tiny_run.hpp"

using namespace moesim;

namespace {

// A random plan: every rank sends a random number of rows (some zero) to every global expert.
void random_plan(const dispatch::Placement& pl, std::uint64_t seed, std::vector<std::int32_t>& tok,
                 std::vector<std::int32_t>& exp) {
  tok.clear();
  exp.clear();
  const CounterRng rng(seed, Stream::data_train, static_cast<std::uint64_t>(pl.rank));
  std::uint64_t draw = 0;
  for (std::int64_t e = 0; e < pl.num_experts; ++e) {
    // Expert 1 gets nothing from anybody (an empty slice, and an empty chunk when d = per).
    const int rows = e == 1 ? 0 : static_cast<int>(rng.uniform(draw++) * 7.0);
    for (int r = 0; r < rows; ++r) {
      tok.push_back(static_cast<std::int32_t>(tok.size()));
      exp.push_back(static_cast<std::int32_t>(e));
    }
  }
}

template <typename T>
void chunked_equals_blocking() {
  const comm::Comm comm = comm::Comm::world();
  const int P = comm.size();
  const std::int64_t per = 4;
  const dispatch::Placement pl{per * P, P, comm.rank()};
  const std::int64_t width = 3;
  for (int chunks = 1; chunks <= per; ++chunks)
    for (std::uint64_t seed = 1; seed <= 3; ++seed) {
      std::vector<std::int32_t> tok, exp;
      random_plan(pl, seed, tok, exp);
      dispatch::Plan plan;
      dispatch::pack_plan(tok, exp, pl, plan);
      dispatch::AlltoallvDispatcher<T> blocking(comm, pl), chunked(comm, pl);
      chunked.set_chunks(chunks);
      blocking.exchange_counts(plan);
      dispatch::Plan plan2 = plan;
      chunked.exchange_counts(plan2);
      std::vector<T> send(static_cast<std::size_t>(plan.total_send * width));
      for (std::size_t i = 0; i < send.size(); ++i)
        send[i] = static_cast<T>(comm.rank() * 1000 + static_cast<int>(i)) + T(0.25);
      const auto R = static_cast<std::size_t>(plan.total_recv * width);
      std::vector<T> a(R + 1, T(-1)), b(R + 1, T(-1));  // + 1: nothing written past the end
      blocking.to_experts_token_rows(plan, send.data(), a.data(), width);
      for (int c = 0; c < chunks; ++c) {
        chunked.start_to_experts(plan2, c, send.data(), width, true);
        chunked.finish_to_experts(plan2, c, b.data(), width);
        chunked.start_from_experts(plan2, c, b.data(), send.data(), width);
      }
      chunked.finish_from_experts();
      EXPECT_EQ(a, b) << "chunks " << chunks << " seed " << seed;
      // Back again: the expert-major rows (here: the forwarded ones, then doubled) return to
      // their send-order rows.
      std::vector<T> back_a(send.size() + 1, T(-1)), back_b(send.size() + 1, T(-1));
      for (T& v : a) v *= T(2);
      blocking.from_experts(plan, a.data(), back_a.data(), width);
      for (int c = 0; c < chunks; ++c) {
        chunked.start_to_experts(plan2, c, send.data(), width, false);
        chunked.finish_to_experts(plan2, c, b.data(), width);
        for (std::int64_t i =
                 plan2.expert_offset[static_cast<std::size_t>(chunked.chunk_begin(c))] * width;
             i < plan2.expert_offset[static_cast<std::size_t>(chunked.chunk_begin(c + 1))] * width;
             ++i)
          b[static_cast<std::size_t>(i)] *= T(2);
        chunked.start_from_experts(plan2, c, b.data(), back_b.data(), width);
      }
      chunked.finish_from_experts();
      EXPECT_EQ(back_a, back_b) << "chunks " << chunks << " seed " << seed;
      for (std::size_t i = 0; i < send.size(); ++i) ASSERT_EQ(back_a[i], T(2) * send[i]);
      // Bytes per level: the blocking pair moved the same rows as the first chunked pass.
      EXPECT_EQ(2 * blocking.bytes_sent(), chunked.bytes_sent());
      EXPECT_EQ(2 * blocking.bytes_inter_node(), chunked.bytes_inter_node());
      EXPECT_EQ(blocking.bytes_token_dispatch_inter_node(),
                chunked.bytes_token_dispatch_inter_node());
    }
}

Config layer_config(Precision precision) {
  Config cfg;
  cfg.model.d_model = 16;
  cfg.model.d_ff = 24;
  cfg.model.precision = precision;
  cfg.model.activation = Activation::gelu;
  cfg.routing.num_experts = 8;
  cfg.routing.k = 2;
  cfg.routing.group_size = 16;
  cfg.routing.capacity_factor = Rational{1, 1};
  return cfg;
}

// One layer, forward + backward: output, input gradient and every gradient bitwise equal for
// every chunk count the rank count allows.
template <typename T>
void layer_bitwise(Precision precision) {
  const comm::Comm comm = comm::Comm::world();
  const std::int64_t N = 64;
  const Config base = layer_config(precision);
  const std::int64_t per = base.routing.num_experts / comm.size();
  std::vector<T> y_ref, dx_ref, g_ref;
  for (std::int64_t d = 1; d <= per; ++d) {
    Config cfg = base;
    cfg.routing.overlap_degree = d;
    ParamStore<T> store;
    model::MoELayer<T> layer(cfg, 0, comm, store, N, N);
    store.allocate();
    store.initialize(7);
    layer.bind(store);
    std::vector<T> x(static_cast<std::size_t>(N * 16)), y(x.size()), dy(x.size()), dx(x.size());
    const CounterRng rng(3, Stream::data_train, static_cast<std::uint64_t>(comm.rank()));
    for (std::size_t i = 0; i < x.size(); ++i) {
      x[i] = static_cast<T>(rng.normal(i));
      dy[i] = static_cast<T>(rng.normal(x.size() + i));
    }
    for (int rep = 0; rep < 2; ++rep) {  // a second pass reuses every buffer and request slot
      store.zero_grads();
      layer.forward(x.data(), y.data(), N, true, nullptr);
      layer.backward(dy.data(), dx.data(), 0.01, 0.001);
    }
    std::vector<T> g;
    for (const ParamKind kind : {ParamKind::replicated, ParamKind::expert}) {
      const std::span<T> gk = store.grads(kind);
      g.insert(g.end(), gk.begin(), gk.end());
    }
    if (d == 1) {
      y_ref = y;
      dx_ref = dx;
      g_ref = g;
      EXPECT_GT(layer.stats().dropped, 0) << "no drops: capacity untested";
      continue;
    }
    EXPECT_EQ(std::memcmp(y.data(), y_ref.data(), y.size() * sizeof(T)), 0) << "y, d = " << d;
    EXPECT_EQ(std::memcmp(dx.data(), dx_ref.data(), dx.size() * sizeof(T)), 0) << "dx, d = " << d;
    ASSERT_EQ(g.size(), g_ref.size());
    EXPECT_EQ(std::memcmp(g.data(), g_ref.data(), g.size() * sizeof(T)), 0) << "grads, d = " << d;
  }
}

Config run_config() {  // the tiny run with E = 8 (2-8 experts per rank) and 6 steps
  Config cfg = test_support::tiny_run_config();
  cfg.routing.num_experts = 8;
  cfg.training.steps = 6;
  cfg.training.eval_every = 3;
  return cfg;
}

}  // namespace

TEST(Overlap, ChunkedExchangeEqualsBlockingFloat64) { chunked_equals_blocking<double>(); }
TEST(Overlap, ChunkedExchangeEqualsBlockingFloat32) { chunked_equals_blocking<float>(); }

TEST(Overlap, LayerBitwiseFloat64) { layer_bitwise<double>(Precision::float64); }
TEST(Overlap, LayerBitwiseFloat32) { layer_bitwise<float>(Precision::float32); }
TEST(Overlap, LayerBitwiseBfloat16) { layer_bitwise<float>(Precision::bfloat16); }

// Whole runs: bitwise the same curve (loss, drops, evaluations) for every d, and the same as the
// 1-rank run to round-off (float64) — with capacity drops and dropless with skew.
TEST(Overlap, SameTrainingRunForEveryDegree) {
  const comm::Comm comm = comm::Comm::world();
  for (const Precision precision : {Precision::float64, Precision::float32})
    for (const bool dropless : {false, true}) {
      Config cfg = run_config();
      cfg.model.precision = precision;
      if (dropless) {
        cfg.routing.capacity_factor = Rational{0, 1};
        cfg.routing.eval_capacity_factor = Rational{0, 1};
        cfg.routing.aux_loss_coef = 0;
        cfg.model.init_scale = 3.0;
      }
      const train::RunResult ref = train::train(cfg, comm, nullptr);
      const std::int64_t per = cfg.routing.num_experts / comm.size();
      for (std::int64_t d = 2; d <= per; d *= 2) {
        Config o = cfg;
        o.routing.overlap_degree = d;
        const train::RunResult r = train::train(o, comm, nullptr);
        ASSERT_EQ(r.loss.size(), ref.loss.size());
        for (std::size_t i = 0; i < r.loss.size(); ++i) {
          EXPECT_EQ(r.loss[i], ref.loss[i]) << "d = " << d << " step " << i;
          EXPECT_EQ(r.dropped_fraction[i], ref.dropped_fraction[i]) << "d = " << d;
        }
        ASSERT_EQ(r.evals.size(), ref.evals.size());
        for (std::size_t i = 0; i < r.evals.size(); ++i)
          EXPECT_EQ(r.evals[i].loss, ref.evals[i].loss) << "d = " << d;
      }
      if (precision == Precision::float64) {
        const comm::Comm self = comm::Comm::self();
        Config one = cfg;
        one.routing.overlap_degree = 4;
        const train::RunResult single = train::train(one, self, nullptr);
        for (std::size_t i = 0; i < ref.loss.size(); ++i)
          EXPECT_NEAR(single.loss[i], ref.loss[i], 1e-12 * std::abs(ref.loss[i])) << "step " << i;
      }
      if (!dropless) {
        EXPECT_GT(ref.dropped_fraction.front(), 0) << "no drops: capacity untested";
      }
      EXPECT_LT(ref.loss.back(), ref.loss.front());
    }
}
