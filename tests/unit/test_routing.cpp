// Routing on hand-derived cases: capacity arithmetic, rules, drop policies, slots, losses
// (routing.md), and a finite-difference check of the router backward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "moesim/routing/router.hpp"
#include "moesim/util/rng.hpp"

using moesim::Rational;
using moesim::RoutingConfig;
using moesim::routing::Candidate;
using moesim::routing::capacity;
using moesim::routing::GroupRouting;
using moesim::routing::Router;

namespace {

using Kept = std::tuple<int, int, int>;  // (token, expert, slot)

std::vector<Kept> kept_sorted(const GroupRouting& r) {
  std::vector<Kept> out;
  for (const Candidate& c : r.cands)
    if (c.kept) out.emplace_back(c.token, c.expert, c.slot);
  std::sort(out.begin(), out.end());
  return out;
}

GroupRouting route(const RoutingConfig& cfg, const std::vector<double>& logits, std::int64_t S,
                   bool training = true) {
  Router router(cfg, S);
  std::vector<double> probs(logits.size());
  GroupRouting r;
  router.route(logits, probs, training, r);
  return r;
}

// DeepSpeed's unit-test logits quoted in routing.md.
const std::vector<double> kL1 = {.11, .2, .1, .3, .3, .4,  .11, .1,
                                 .11, .1, .6, .5, .1, .11, .7,  .8};

RoutingConfig l1_config(moesim::DropPolicyKind policy) {
  RoutingConfig cfg;
  cfg.num_experts = 4;
  cfg.k = 2;
  cfg.capacity_factor = Rational{1, 1};
  cfg.min_capacity = 1;
  cfg.drop_policy = policy;
  return cfg;
}

}  // namespace

TEST(Capacity, ExactDecimalArithmetic) {
  // ceil(50 * 1.1) is 55 exactly (56 in float64).
  EXPECT_EQ(capacity(1, 50, 1, Rational{11, 10}, 0), 55);
  EXPECT_EQ(capacity(2, 4, 4, Rational{1, 1}, 1), 2);
  EXPECT_EQ(capacity(2, 4096, 8, Rational{125, 100}, 0), 1280);
  EXPECT_EQ(capacity(1, 10, 4, Rational{1, 1}, 0), 3);   // ceil(2.5)
  EXPECT_EQ(capacity(1, 8, 4, Rational{1, 1}, 0), 2);    // exact, no rounding up
  EXPECT_EQ(capacity(1, 8, 4, Rational{1, 100}, 0), 1);  // ceil(0.02)
  EXPECT_EQ(capacity(1, 8, 4, Rational{1, 100}, 5), 5);  // min_capacity wins
  EXPECT_EQ(capacity(2, 8, 4, Rational{0, 1}, 5), -1);   // cf = 0: dropless
}

TEST(Routing, L1ProbsPolicyMatchesReference) {
  const GroupRouting r = route(l1_config(moesim::DropPolicyKind::probs), kL1, 4);
  EXPECT_EQ(r.capacity, 2);
  const std::vector<Kept> want = {{0, 1, 0}, {1, 0, 0}, {1, 1, 1}, {2, 2, 0},
                                  {2, 3, 0}, {3, 2, 1}, {3, 3, 1}};
  EXPECT_EQ(kept_sorted(r), want);
  EXPECT_NEAR(r.aux, 1.0334199, 5e-7);
  EXPECT_EQ(r.dropped, 1);
}

TEST(Routing, L1PositionPolicyMatchesReference) {
  const GroupRouting r = route(l1_config(moesim::DropPolicyKind::position), kL1, 4);
  const std::vector<Kept> want = {{0, 1, 0}, {0, 3, 0}, {1, 0, 0}, {1, 1, 1},
                                  {2, 2, 0}, {2, 3, 1}, {3, 2, 1}};
  EXPECT_EQ(kept_sorted(r), want);
  EXPECT_NEAR(r.aux, 1.0334199, 5e-7);
  const std::vector<std::int64_t> routed = {1, 2, 2, 3}, kept = {1, 2, 2, 2};
  EXPECT_EQ(r.routed, routed);
  EXPECT_EQ(r.kept, kept);
}

TEST(Routing, AuxLossFromDefinition) {
  // Hand computation of (E/k) sum_e f_e P_e on the L1 case.
  std::vector<double> p(16);
  moesim::routing::softmax_rows(kL1, 4, 4, p, {});
  const double f[4] = {1.0 / 4, 2.0 / 4, 2.0 / 4, 3.0 / 4};  // routed counts / S
  double aux = 0;
  for (int e = 0; e < 4; ++e) aux += f[e] * (p[e] + p[4 + e] + p[8 + e] + p[12 + e]) / 4;
  aux *= 4.0 / 2.0;
  EXPECT_NEAR(route(l1_config(moesim::DropPolicyKind::position), kL1, 4).aux, aux, 1e-15);
}

TEST(Routing, AuxLossIsOneForUniformProbabilities) {
  for (int k : {1, 2, 3}) {
    RoutingConfig cfg;
    cfg.num_experts = 6;
    cfg.k = k;
    const std::vector<double> logits(10 * 6, 0.37);  // equal logits -> uniform p
    const GroupRouting r = route(cfg, logits, 10);
    EXPECT_NEAR(r.aux, 1.0, 1e-12) << "k=" << k;
    // All ties go to the lowest indices.
    for (const Candidate& c : r.cands) EXPECT_EQ(c.expert, c.choice);
  }
}

TEST(Routing, AuxLossIsOneAtPerfectBalance) {
  // Each token strongly prefers a different expert, round robin: f_e = 1/E, P_e equal.
  RoutingConfig cfg;
  cfg.num_experts = 4;
  cfg.k = 1;
  std::vector<double> logits(8 * 4, 0.0);
  for (int t = 0; t < 8; ++t) logits[t * 4 + t % 4] = 3.0;
  EXPECT_NEAR(route(cfg, logits, 8).aux, 1.0, 1e-12);
}

TEST(Routing, ZLossIsMeanSquaredLogSumExp) {
  RoutingConfig cfg = l1_config(moesim::DropPolicyKind::position);
  const GroupRouting r = route(cfg, kL1, 4);
  double z = 0;
  for (int t = 0; t < 4; ++t) {
    double s = 0;
    for (int e = 0; e < 4; ++e) s += std::exp(kL1[t * 4 + e]);
    z += std::log(s) * std::log(s);
  }
  EXPECT_NEAR(r.z, z / 4, 1e-14);
}

TEST(Routing, SwitchWeightIsTheProbabilityNotRenormalised) {
  RoutingConfig cfg;
  cfg.num_experts = 3;
  cfg.k = 1;
  cfg.rule = moesim::RoutingRuleKind::switch_top1;
  cfg.dropless = true;
  const std::vector<double> logits = {0.0, std::log(2.0), std::log(5.0)};  // p = 1/8, 2/8, 5/8
  const GroupRouting r = route(cfg, logits, 1);
  ASSERT_EQ(r.cands.size(), 1U);
  EXPECT_EQ(r.cands[0].expert, 2);
  EXPECT_NEAR(r.cands[0].weight, 5.0 / 8.0, 1e-15);
}

TEST(Routing, TopKRenormalisedWeightsSumToOne) {
  RoutingConfig cfg;
  cfg.num_experts = 4;
  cfg.k = 2;
  cfg.renormalize = true;
  cfg.dropless = true;
  const std::vector<double> logits = {0.0, std::log(3.0), std::log(1.0),
                                      std::log(6.0)};  // p ~ 1,3,1,6 /11
  const GroupRouting r = route(cfg, logits, 1);
  ASSERT_EQ(r.cands.size(), 2U);
  EXPECT_EQ(r.cands[0].expert, 3);
  EXPECT_EQ(r.cands[1].expert, 1);
  EXPECT_NEAR(r.cands[0].weight, 6.0 / 9.0, 1e-15);
  EXPECT_NEAR(r.cands[1].weight, 3.0 / 9.0, 1e-15);
}

TEST(Routing, TiesGoToTheLowerExpertIndex) {
  RoutingConfig cfg;
  cfg.num_experts = 4;
  cfg.k = 2;
  cfg.dropless = true;
  const std::vector<double> logits = {0.5, 1.0, 0.5, 1.0};
  const GroupRouting r = route(cfg, logits, 1);
  EXPECT_EQ(r.cands[0].expert, 1);
  EXPECT_EQ(r.cands[1].expert, 3);
  const std::vector<double> logits2 = {1.0, 0.5, 0.5, 0.2};
  const GroupRouting r2 = route(cfg, logits2, 1);
  EXPECT_EQ(r2.cands[1].expert, 1);
}

TEST(Routing, ProbsPolicyTieGoesToLowerToken) {
  // Three identical tokens all pick expert 0 first; C = ceil(1*3*1/2) = 2 -> tokens 0, 1.
  RoutingConfig cfg;
  cfg.num_experts = 2;
  cfg.k = 1;
  cfg.capacity_factor = Rational{1, 1};
  cfg.drop_policy = moesim::DropPolicyKind::probs;
  const std::vector<double> logits = {1, 0, 1, 0, 1, 0};
  const GroupRouting r = route(cfg, logits, 3);
  const std::vector<Kept> want = {{0, 0, 0}, {1, 0, 1}};
  EXPECT_EQ(kept_sorted(r), want);
}

TEST(Routing, PositionVsProbsOnAHandMadeCase) {
  // E = 2, k = 1, S = 4, cf = 1 -> C = 2. Everyone prefers expert 0 with rising confidence.
  RoutingConfig cfg;
  cfg.num_experts = 2;
  cfg.k = 1;
  cfg.capacity_factor = Rational{1, 1};
  const std::vector<double> logits = {0.1, 0, 0.2, 0, 0.3, 0, 0.4, 0};
  cfg.drop_policy = moesim::DropPolicyKind::position;
  EXPECT_EQ(kept_sorted(route(cfg, logits, 4)), (std::vector<Kept>{{0, 0, 0}, {1, 0, 1}}));
  cfg.drop_policy = moesim::DropPolicyKind::probs;
  EXPECT_EQ(kept_sorted(route(cfg, logits, 4)), (std::vector<Kept>{{2, 0, 0}, {3, 0, 1}}));
}

TEST(Routing, DroplessEqualsLargeCapacity) {
  const moesim::CounterRng rng(7, moesim::Stream::routing);
  std::vector<double> logits(64 * 8);
  for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = rng.normal(i);
  RoutingConfig a;
  a.num_experts = 8;
  a.k = 2;
  a.dropless = true;
  RoutingConfig b = a;
  b.dropless = false;
  b.capacity_factor = Rational{4, 1};  // C = 64 = S: nothing can be dropped
  const GroupRouting ra = route(a, logits, 64), rb = route(b, logits, 64);
  EXPECT_EQ(ra.capacity, -1);
  EXPECT_EQ(ra.dropped, 0);
  EXPECT_EQ(rb.dropped, 0);
  EXPECT_EQ(kept_sorted(ra), kept_sorted(rb));
}

TEST(Routing, EvalCapacityFactorIsSeparate) {
  RoutingConfig cfg;
  cfg.num_experts = 4;
  cfg.k = 1;
  cfg.capacity_factor = Rational{1, 2};
  cfg.eval_capacity_factor = Rational{2, 1};
  Router router(cfg, 16);
  EXPECT_EQ(router.capacity(true), 2);
  EXPECT_EQ(router.capacity(false), 8);
}

// The router backward against central differences of
//   J(h) = sum_a c_a w_a(h) + s_aux * aux(h) + s_z * z(h)
// with fixed routing decisions (small steps do not change the selection here).
TEST(Routing, BackwardMatchesFiniteDifferences) {
  for (bool renorm : {false, true}) {
    for (auto policy : {moesim::DropPolicyKind::position, moesim::DropPolicyKind::probs}) {
      RoutingConfig cfg;
      cfg.num_experts = 5;
      cfg.k = 2;
      cfg.renormalize = renorm;
      cfg.capacity_factor = Rational{8, 10};
      cfg.drop_policy = policy;
      const std::int64_t S = 12, E = 5;
      const moesim::CounterRng rng(3, moesim::Stream::routing, renorm);
      std::vector<double> h(static_cast<std::size_t>(S * E));
      for (std::size_t i = 0; i < h.size(); ++i) h[i] = rng.normal(i);
      Router router(cfg, S);
      std::vector<double> p(h.size()), dprobs(h.size()), dl(h.size());
      GroupRouting r;
      router.route(h, p, true, r);
      ASSERT_GT(r.dropped, 0);  // the case exercises capacity
      std::vector<double> coef(r.cands.size());
      for (std::size_t i = 0; i < coef.size(); ++i)
        coef[i] = r.cands[i].kept ? rng.normal(1000 + i) : 0.0;
      const double s_aux = 0.7, s_z = 0.3;
      moesim::routing::LossScales scales;
      scales.aux = s_aux;
      scales.z = s_z;
      router.backward(moesim::routing::RouteContext{}, h, p, r, coef, scales, dprobs, dl);
      const auto J = [&](const std::vector<double>& hh) {
        std::vector<double> pp(hh.size());
        GroupRouting rr;
        router.route(hh, pp, true, rr);
        double j = s_aux * rr.aux + s_z * rr.z;
        for (std::size_t i = 0; i < rr.cands.size(); ++i) j += coef[i] * rr.cands[i].weight;
        return j;
      };
      const double eps = 1e-6;
      for (std::size_t i = 0; i < h.size(); ++i) {
        std::vector<double> hp = h, hm = h;
        hp[i] += eps;
        hm[i] -= eps;
        const double fd = (J(hp) - J(hm)) / (2 * eps);
        EXPECT_NEAR(dl[i], fd, 1e-8 + 1e-6 * std::abs(fd)) << "entry " << i << " renorm " << renorm;
      }
    }
  }
}
