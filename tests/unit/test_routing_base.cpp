// BASE layers (routing.md "Additions"): the auction of base_assignment.hpp against an exact
// solver (exhaustive search) on small instances, exact balance, the S * eps bound, ties and
// determinism, and the `base` rule through the Router (weights sigma(h), evaluation greedy
// top-1, the reported epsilon, the router backward against finite differences).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "moesim/routing/base_assignment.hpp"
#include "moesim/routing/router.hpp"
#include "moesim/util/rng.hpp"

using moesim::RoutingConfig;
using moesim::RoutingRuleKind;
using moesim::routing::BalancedAssignment;
using moesim::routing::brute_force_balanced_assignment;
using moesim::routing::GroupRouting;
using moesim::routing::LossScales;
using moesim::routing::RouteContext;
using moesim::routing::Router;

namespace {

std::vector<double> normal_scores(std::uint64_t key, std::size_t n, double scale = 1.0) {
  const moesim::CounterRng rng(key, moesim::Stream::routing, 123);
  std::vector<double> h(n);
  for (std::size_t i = 0; i < n; ++i) h[i] = scale * rng.normal(i);
  return h;
}

double total(const std::vector<double>& h, const std::vector<std::int32_t>& a, std::int64_t E) {
  double s = 0;
  for (std::size_t t = 0; t < a.size(); ++t)
    s += h[t * static_cast<std::size_t>(E) + static_cast<std::size_t>(a[t])];
  return s;
}

void expect_balanced(const std::vector<std::int32_t>& a, std::int64_t E, const std::string& label) {
  std::vector<std::int64_t> count(static_cast<std::size_t>(E), 0);
  for (std::int32_t e : a) {
    ASSERT_GE(e, 0) << label;
    ASSERT_LT(e, E) << label;
    ++count[static_cast<std::size_t>(e)];
  }
  for (std::int64_t e = 0; e < E; ++e)
    EXPECT_EQ(count[static_cast<std::size_t>(e)], static_cast<std::int64_t>(a.size()) / E)
        << label << " expert " << e;
}

RoutingConfig base_config(std::int64_t E) {
  RoutingConfig cfg;
  cfg.rule = RoutingRuleKind::base;
  cfg.num_experts = E;
  cfg.k = 1;
  return cfg;
}

}  // namespace

// The exhaustive oracle itself on a hand case: 2 experts, 4 tokens (C(4,2) = 6 assignments).
TEST(BaseOracle, HandCase) {
  // Token rows (h_t0, h_t1). Greedy would put tokens 0, 1, 2 on expert 0; the balanced
  // optimum gives expert 0 the two tokens with the largest h0 - h1: tokens 0 (3) and 2 (2.5).
  const std::vector<double> h = {4, 1, 3, 1.5, 3, 0.5, 0, 1};
  std::vector<std::int32_t> a(4);
  EXPECT_DOUBLE_EQ(brute_force_balanced_assignment(h, 4, 2, a), 4 + 1.5 + 3 + 1);
  EXPECT_EQ(a, (std::vector<std::int32_t>{0, 1, 0, 1}));
  BalancedAssignment solver;
  std::vector<std::int32_t> b(4);
  solver.solve(h, 4, 2, 1e-9, b);
  EXPECT_EQ(b, a);
}

// Random instances: the auction's total is within S * eps of the exact optimum, and with
// the default tolerance (eps far below the gap between distinct assignments' totals) it is
// the optimal assignment itself.
TEST(BaseAuction, MatchesExhaustiveSearchOnSmallInstances) {
  const std::pair<std::int64_t, std::int64_t> shapes[] = {{2, 2}, {4, 2}, {6, 2}, {6, 3},  {8, 2},
                                                          {8, 4}, {8, 8}, {9, 3}, {10, 5}, {4, 4}};
  BalancedAssignment solver;
  int cases = 0;
  for (const auto& [S, E] : shapes) {
    for (std::uint64_t seed = 0; seed < 25; ++seed) {
      const std::string label =
          "S=" + std::to_string(S) + " E=" + std::to_string(E) + " seed=" + std::to_string(seed);
      const double scale = seed % 3 == 0 ? 10.0 : 1.0;
      const std::vector<double> h =
          normal_scores(seed * 1000 + static_cast<std::uint64_t>(S * 16 + E),
                        static_cast<std::size_t>(S * E), scale);
      std::vector<std::int32_t> exact(static_cast<std::size_t>(S)), got(exact.size());
      const double opt = brute_force_balanced_assignment(h, S, E, exact);
      const double eps = solver.solve(h, S, E, 1e-6, got);
      expect_balanced(got, E, label);
      const double tot = total(h, got, E);
      EXPECT_LE(tot, opt + 1e-12) << label;
      EXPECT_GE(tot, opt - static_cast<double>(S) * eps) << label;
      EXPECT_EQ(got, exact) << label;
      // A coarse tolerance still honours the bound (and may leave the optimum).
      const double eps_coarse = solver.solve(h, S, E, 0.2, got);
      expect_balanced(got, E, label + " coarse");
      EXPECT_GE(total(h, got, E), opt - static_cast<double>(S) * eps_coarse - 1e-12) << label;
      ++cases;
    }
  }
  EXPECT_EQ(cases, 250);
}

// The certificate behind the S * eps bound: at the end every token's slot is worth (score minus
// slot price) at least the best slot of any expert minus eps (eps-complementary slackness),
// every slot is held, and the holder of a slot is assigned to that slot's expert.
TEST(BaseAuction, FinalPricesSatisfyEpsilonComplementarySlackness) {
  BalancedAssignment solver;
  int checked = 0;
  for (const auto& [S, E] : std::vector<std::pair<std::int64_t, std::int64_t>>{
           {8, 2}, {12, 3}, {64, 4}, {256, 16}, {96, 8}}) {
    for (std::uint64_t seed = 0; seed < 10; ++seed) {
      std::vector<double> h = normal_scores(seed + 500, static_cast<std::size_t>(S * E));
      if (seed % 2 == 1)  // skewed: every token prefers expert 0
        for (std::int64_t t = 0; t < S; ++t) h[static_cast<std::size_t>(t * E)] += 3.0;
      for (const double tol : {1e-6, 0.05}) {
        std::vector<std::int32_t> a(static_cast<std::size_t>(S));
        const double eps = solver.solve(h, S, E, tol, a);
        const std::int64_t m = S / E;
        const auto price = solver.slot_prices();
        const auto owner = solver.slot_owners();
        ASSERT_EQ(price.size(), static_cast<std::size_t>(S));
        std::vector<double> own(static_cast<std::size_t>(S), -1e300);
        for (std::int64_t e = 0; e < E; ++e)
          for (std::int64_t j = 0; j < m; ++j) {
            const std::int32_t t = owner[static_cast<std::size_t>(e * m + j)];
            ASSERT_GE(t, 0) << "a free slot at the end";
            ASSERT_EQ(a[static_cast<std::size_t>(t)], e);
            own[static_cast<std::size_t>(t)] =
                h[static_cast<std::size_t>(t * E + e)] - price[static_cast<std::size_t>(e * m + j)];
          }
        for (std::int64_t t = 0; t < S; ++t) {
          double best = -1e300;
          for (std::int64_t s = 0; s < S; ++s) {
            const std::int64_t e = s / m;
            best = std::max(
                best, h[static_cast<std::size_t>(t * E + e)] - price[static_cast<std::size_t>(s)]);
          }
          EXPECT_GE(own[static_cast<std::size_t>(t)], best - eps - 1e-12)
              << "S=" << S << " E=" << E << " seed=" << seed << " tol=" << tol << " token " << t;
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 100);
}

// Integer scores: eps below 1/S makes the auction exact (Bertsekas), here with many ties.
TEST(BaseAuction, IntegerScoresWithTiesAreOptimal) {
  BalancedAssignment solver;
  for (std::uint64_t seed = 0; seed < 40; ++seed) {
    const std::int64_t S = 8, E = 4;
    const moesim::CounterRng rng(seed, moesim::Stream::routing, 7);
    std::vector<double> h(static_cast<std::size_t>(S * E));
    for (std::size_t i = 0; i < h.size(); ++i)
      h[i] = std::floor(4 * rng.uniform(i));  // values 0..3: ties everywhere
    std::vector<std::int32_t> exact(static_cast<std::size_t>(S)), got(exact.size());
    const double opt = brute_force_balanced_assignment(h, S, E, exact);
    solver.solve(h, S, E, 1e-3, got);  // eps = 3e-3 < 1/8
    expect_balanced(got, E, "seed " + std::to_string(seed));
    EXPECT_EQ(total(h, got, E), opt) << "seed " << seed;
  }
}

// Ties: all scores equal -> token t goes to expert t / (S/E) (lower tokens, lower experts).
TEST(BaseAuction, AllEqualScoresFillExpertsInTokenOrder) {
  BalancedAssignment solver;
  for (const double v : {0.0, 1.5, -3.0}) {
    const std::int64_t S = 12, E = 3;
    const std::vector<double> h(static_cast<std::size_t>(S * E), v);
    std::vector<std::int32_t> got(static_cast<std::size_t>(S));
    const double eps = solver.solve(h, S, E, 1e-6, got);
    EXPECT_DOUBLE_EQ(eps, 1e-6);  // range 0: eps = tolerance
    for (std::int64_t t = 0; t < S; ++t) EXPECT_EQ(got[static_cast<std::size_t>(t)], t / 4) << t;
  }
  // Two identical tokens competing for one slot each of two experts that both prefer
  // expert 1 equally: the lower token gets the lower expert.
  const std::vector<double> h = {1, 1, 1, 1};
  std::vector<std::int32_t> got(2);
  solver.solve(h, 2, 2, 1e-6, got);
  EXPECT_EQ(got, (std::vector<std::int32_t>{0, 1}));
}

// Exact balance and determinism at scale, with a heavily skewed preference (every token
// prefers expert 0 by a wide margin), where greedy top-1 would put everything on expert 0.
TEST(BaseAuction, ExactBalanceUnderSkewAndDeterministic) {
  const std::int64_t S = 1024, E = 16;
  std::vector<double> h = normal_scores(5, static_cast<std::size_t>(S * E));
  for (std::int64_t t = 0; t < S; ++t) h[static_cast<std::size_t>(t * E)] += 6.0;
  BalancedAssignment solver;
  std::vector<std::int32_t> a(static_cast<std::size_t>(S)), b(a.size());
  const double eps = solver.solve(h, S, E, 1e-6, a);
  expect_balanced(a, E, "skewed");
  EXPECT_GT(eps, 0);
  BalancedAssignment other;
  other.solve(h, S, E, 1e-6, b);
  EXPECT_EQ(a, b);
  // The total is at least that of a simple balanced assignment (t -> t mod E) and of the
  // assignment with a coarser epsilon, up to S * eps.
  std::vector<std::int32_t> naive(a.size());
  for (std::int64_t t = 0; t < S; ++t)
    naive[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(t % E);
  EXPECT_GT(total(h, a, E), total(h, naive, E));
  const double eps_coarse = solver.solve(h, S, E, 1e-2, b);
  EXPECT_GE(total(h, a, E) + static_cast<double>(S) * eps, total(h, b, E) - 1e-9);
  (void)eps_coarse;
}

TEST(BaseAuction, RefusesUnbalanceableShapes) {
  BalancedAssignment solver;
  const std::vector<double> h(12, 0.0);
  std::vector<std::int32_t> a(4);
  EXPECT_THROW(solver.solve(h, 4, 3, 1e-6, a), std::invalid_argument);
  EXPECT_THROW(solver.solve(h, 6, 2, 0.0, a), std::invalid_argument);
}

// The rule through the Router: one kept candidate per token, weight sigma(h), exact
// balance, base_epsilon = tolerance * logit range; evaluation: greedy top-1.
TEST(RuleBase, TrainingBalancedSigmoidWeightsEvaluationGreedy) {
  const std::int64_t S = 8, E = 4;
  const std::vector<double> h = normal_scores(77, static_cast<std::size_t>(S * E), 2.0);
  Router router(base_config(E), S);
  EXPECT_EQ(router.capacity(true), -1);
  std::vector<double> p(h.size());
  GroupRouting r;
  RouteContext ctx;
  router.route(h, p, ctx, r);
  ASSERT_EQ(r.cands.size(), static_cast<std::size_t>(S));
  std::vector<std::int32_t> exact(static_cast<std::size_t>(S)), got(exact.size());
  brute_force_balanced_assignment(h, S, E, exact);
  double lo = h[0], hi = h[0];
  for (double v : h) lo = std::min(lo, v), hi = std::max(hi, v);
  EXPECT_DOUBLE_EQ(r.base_epsilon, 1e-6 * (hi - lo));
  for (std::int64_t t = 0; t < S; ++t) {
    const auto& c = r.cands[static_cast<std::size_t>(t)];
    EXPECT_EQ(c.token, t);
    EXPECT_EQ(c.choice, 0);
    EXPECT_TRUE(c.kept);
    EXPECT_EQ(c.expert, exact[static_cast<std::size_t>(t)]);
    const double ht = h[static_cast<std::size_t>(t * E + c.expert)];
    EXPECT_NEAR(c.weight, 1.0 / (1.0 + std::exp(-ht)), 1e-15);
    got[static_cast<std::size_t>(t)] = c.expert;
  }
  expect_balanced(got, E, "router");
  EXPECT_EQ(r.dropped, 0);
  EXPECT_NEAR(r.aux, 1.0, 1e-12);  // f_e = 1/E exactly: aux = E sum_e P_e / E = 1
  // Evaluation: argmax h per token, no balance.
  ctx.training = false;
  router.route(h, p, ctx, r);
  EXPECT_EQ(r.base_epsilon, 0.0);
  for (std::int64_t t = 0; t < S; ++t) {
    std::int32_t best = 0;
    for (std::int32_t e = 1; e < E; ++e)
      if (h[static_cast<std::size_t>(t * E + e)] > h[static_cast<std::size_t>(t * E + best)])
        best = e;
    EXPECT_EQ(r.cands[static_cast<std::size_t>(t)].expert, best) << t;
  }
}

// Router backward: d/dh of sum_a c_a w_a + router losses, against central differences
// (the assignment stays fixed under the small step; it is checked to).
TEST(RuleBase, BackwardMatchesFiniteDifferences) {
  const std::int64_t S = 12, E = 4;
  const auto n = static_cast<std::size_t>(S * E);
  const std::vector<double> h = normal_scores(31, n);
  Router router(base_config(E), S);
  std::vector<double> p(n), dprobs(n), dl(n);
  GroupRouting r;
  const RouteContext ctx;
  router.route(h, p, ctx, r);
  const moesim::CounterRng crng(3, moesim::Stream::routing);
  std::vector<double> coef(r.cands.size());
  for (std::size_t i = 0; i < coef.size(); ++i) coef[i] = crng.normal(i);
  const LossScales scales{0.7, 0.4, 0.5, 0.6, 0.3, {}};
  router.backward(ctx, h, p, r, coef, scales, dprobs, dl);
  const auto J = [&](const std::vector<double>& hh) {
    std::vector<double> pp(n);
    GroupRouting rr;
    router.route(hh, pp, ctx, rr);
    for (std::size_t i = 0; i < rr.cands.size(); ++i)
      EXPECT_EQ(rr.cands[i].expert, r.cands[i].expert) << "the assignment changed";
    double j = scales.aux * rr.aux + scales.aux_gshard * rr.aux_gshard +
               scales.importance * rr.importance + scales.load * rr.load + scales.z * rr.z;
    for (std::size_t i = 0; i < rr.cands.size(); ++i) j += coef[i] * rr.cands[i].weight;
    return j;
  };
  const double step = 1e-6;
  double largest = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<double> hp = h, hm = h;
    hp[i] += step;
    hm[i] -= step;
    const double fd = (J(hp) - J(hm)) / (2 * step);
    EXPECT_NEAR(dl[i], fd, 1e-8 + 1e-6 * std::abs(fd)) << "dlogits[" << i << "]";
    largest = std::max(largest, std::abs(dl[i]));
  }
  EXPECT_GT(largest, 1e-3);
}
