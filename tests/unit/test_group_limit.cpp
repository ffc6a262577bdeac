// Node-limited routing (routing.expert_groups = G, routing.group_limit = M; multinode.md):
// hand cases of the group selection, a brute-force reference on random scores, the
// "at most M groups per token" invariant through the Router, equality with plain top-k
// when M = G, config validation, and the router backward against finite differences (the
// group mask is a selection: gradients flow through the kept probabilities as in topk).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "moesim/config/config.hpp"
#include "moesim/routing/group_limit.hpp"
#include "moesim/routing/router.hpp"
#include "moesim/util/rng.hpp"

using moesim::DropPolicyKind;
using moesim::Rational;
using moesim::RoutingConfig;
using moesim::RoutingRuleKind;
using moesim::routing::Candidate;
using moesim::routing::group_limited_top_k;
using moesim::routing::GroupRouting;
using moesim::routing::LossScales;
using moesim::routing::RouteContext;
using moesim::routing::Router;

namespace {

std::vector<int> pick(const std::vector<double>& score, int k, int G, int M) {
  std::vector<std::int32_t> out(static_cast<std::size_t>(k), -1);
  std::vector<double> scratch;
  group_limited_top_k(score.data(), static_cast<std::int64_t>(score.size()), k, G, M, out.data(),
                      scratch);
  return {out.begin(), out.end()};
}

// Independent reference: sort-based group scores and selection.
std::vector<int> reference(const std::vector<double>& score, int k, int G, int M) {
  const int E = static_cast<int>(score.size()), per = E / G;
  const int m = std::min((k + M - 1) / M, per);
  std::vector<std::pair<double, int>> groups;  // (-score, g): sorts best first, ties lower g
  for (int g = 0; g < G; ++g) {
    std::vector<double> s(score.begin() + g * per, score.begin() + (g + 1) * per);
    std::sort(s.begin(), s.end(), std::greater<>());
    double sum = 0;
    for (int c = 0; c < m; ++c) sum += s[static_cast<std::size_t>(c)];
    groups.emplace_back(-sum, g);
  }
  std::sort(groups.begin(), groups.end());
  std::vector<std::pair<double, int>> experts;  // (-score, e) over the kept groups
  for (int c = 0; c < M; ++c) {
    const int g = groups[static_cast<std::size_t>(c)].second;
    for (int e = g * per; e < (g + 1) * per; ++e)
      experts.emplace_back(-score[static_cast<std::size_t>(e)], e);
  }
  std::sort(experts.begin(), experts.end());
  std::vector<int> out;
  for (int c = 0; c < k; ++c) out.push_back(experts[static_cast<std::size_t>(c)].second);
  return out;
}

RoutingConfig limited(std::int64_t E, std::int64_t k, std::int64_t G, std::int64_t M) {
  RoutingConfig cfg;
  cfg.rule = RoutingRuleKind::topk;
  cfg.num_experts = E;
  cfg.k = k;
  cfg.expert_groups = G;
  cfg.group_limit = M;
  return cfg;
}

std::vector<double> normal_logits(std::uint64_t key, std::size_t n) {
  const moesim::CounterRng rng(key, moesim::Stream::routing, 7);
  std::vector<double> h(n);
  for (std::size_t i = 0; i < n; ++i) h[i] = rng.normal(i);
  return h;
}

}  // namespace

TEST(GroupLimit, HandCases) {
  // 8 experts in 4 groups of 2: {0,1} {2,3} {4,5} {6,7}.
  const std::vector<double> s = {0.30, 0.01, 0.20, 0.19, 0.05, 0.05, 0.10, 0.09};
  // M = 1, k = 2: group sums of the top 2: .31 .39 .10 .19 -> group 1 only.
  EXPECT_EQ(pick(s, 2, 4, 1), (std::vector<int>{2, 3}));
  // M = 2, k = 2: top-1 per group: .30 .20 .05 .10 -> groups 0, 1 -> top-2 {0, 2}.
  EXPECT_EQ(pick(s, 2, 4, 2), (std::vector<int>{0, 2}));
  // M = 2, k = 3: top-2 sums .31 .39 .10 .19 -> groups 1, 0 -> top-3 of {0,1,2,3}.
  EXPECT_EQ(pick(s, 3, 4, 2), (std::vector<int>{0, 2, 3}));
  // M = G: plain top-k.
  EXPECT_EQ(pick(s, 2, 4, 4), (std::vector<int>{0, 2}));
  // Tied group scores: the lower group wins.
  const std::vector<double> t = {0.2, 0.1, 0.1, 0.2, 0.3, 0.0};
  EXPECT_EQ(pick(t, 2, 3, 1), (std::vector<int>{0, 1}));
  // The best expert's group loses to a group with a better top-2 sum: .5 vs .6.
  const std::vector<double> u = {0.5, 0.0, 0.3, 0.3};
  EXPECT_EQ(pick(u, 2, 2, 1), (std::vector<int>{2, 3}));
  EXPECT_EQ(pick(u, 2, 2, 2), (std::vector<int>{0, 2}));
}

TEST(GroupLimit, MatchesSortReferenceOnRandomScores) {
  const moesim::CounterRng rng(3, moesim::Stream::routing, 1);
  std::uint64_t draw = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int G = 1 + static_cast<int>(rng.bits(draw++) % 4);
    const int per = 1 + static_cast<int>(rng.bits(draw++) % 4);
    const int E = G * per;
    const int M = 1 + static_cast<int>(rng.bits(draw++) % static_cast<std::uint64_t>(G));
    const int k = 1 + static_cast<int>(rng.bits(draw++) % static_cast<std::uint64_t>(M * per));
    std::vector<double> s(static_cast<std::size_t>(E));
    for (double& v : s)
      v = trial % 3 == 0 ? 0.1 * static_cast<double>(rng.bits(draw++) % 4)  // many ties
                         : rng.uniform(draw++);
    EXPECT_EQ(pick(s, k, G, M), reference(s, k, G, M))
        << "trial " << trial << " E=" << E << " G=" << G << " M=" << M << " k=" << k;
  }
}

TEST(GroupLimit, RouterKeepsEveryTokenWithinMGroups) {
  const std::int64_t S = 64, E = 16, G = 4;
  const std::vector<double> h = normal_logits(5, static_cast<std::size_t>(S * E));
  for (std::int64_t M : {1, 2, 3}) {
    RoutingConfig cfg = limited(E, 4, G, M);
    cfg.dropless = true;
    Router router(cfg, S);
    std::vector<double> p(h.size());
    GroupRouting r;
    router.route(h, p, RouteContext{}, r);
    ASSERT_EQ(r.cands.size(), static_cast<std::size_t>(S * 4));
    std::vector<std::set<int>> groups(static_cast<std::size_t>(S));
    for (const Candidate& c : r.cands) {
      groups[static_cast<std::size_t>(c.token)].insert(c.expert / static_cast<int>(E / G));
      // the weight is p, as in topk
      EXPECT_EQ(c.weight, p[static_cast<std::size_t>(c.token * E + c.expert)]);
    }
    for (const auto& g : groups) EXPECT_LE(static_cast<std::int64_t>(g.size()), M);
  }
  // Without a limit some tokens use more than one group (the test above is not vacuous).
  RoutingConfig cfg = limited(E, 4, G, 0);
  cfg.dropless = true;
  Router router(cfg, S);
  std::vector<double> p(h.size());
  GroupRouting r;
  router.route(h, p, RouteContext{}, r);
  std::vector<std::set<int>> groups(static_cast<std::size_t>(S));
  for (const Candidate& c : r.cands)
    groups[static_cast<std::size_t>(c.token)].insert(c.expert / static_cast<int>(E / G));
  EXPECT_TRUE(
      std::any_of(groups.begin(), groups.end(), [](const auto& g) { return g.size() > 1; }));
}

TEST(GroupLimit, LimitEqualToGroupsIsPlainTopK) {
  const std::int64_t S = 32, E = 8;
  const std::vector<double> h = normal_logits(9, static_cast<std::size_t>(S * E));
  RoutingConfig plain = limited(E, 3, 1, 0), full = limited(E, 3, 4, 4);
  Router a(plain, S), b(full, S);
  std::vector<double> pa(h.size()), pb(h.size());
  GroupRouting ra, rb;
  a.route(h, pa, RouteContext{}, ra);
  b.route(h, pb, RouteContext{}, rb);
  ASSERT_EQ(ra.cands.size(), rb.cands.size());
  for (std::size_t i = 0; i < ra.cands.size(); ++i) {
    EXPECT_EQ(ra.cands[i].expert, rb.cands[i].expert);
    EXPECT_EQ(ra.cands[i].kept, rb.cands[i].kept);
    EXPECT_EQ(ra.cands[i].weight, rb.cands[i].weight);
  }
}

TEST(GroupLimit, ConfigValidation) {
  const auto bad = [](const std::vector<std::string>& args, const std::string& key) {
    try {
      const moesim::Config cfg = moesim::parse_config("", "test.ini", args);
      moesim::validate(cfg, moesim::Mode::run, 1);
      ADD_FAILURE() << "accepted: " << key;
    } catch (const moesim::ConfigError& e) {
      EXPECT_EQ(e.key(), key) << e.what();
    }
  };
  bad({"--routing.num_experts=8", "--routing.expert_groups=3"}, "routing.expert_groups");
  bad({"--routing.num_experts=8", "--routing.expert_groups=0"}, "routing.expert_groups");
  bad({"--routing.num_experts=8", "--routing.expert_groups=4", "--routing.group_limit=5"},
      "routing.group_limit");
  bad({"--routing.num_experts=8", "--routing.expert_groups=4", "--routing.group_limit=-1"},
      "routing.group_limit");
  // k = 4 from one group of 2 experts is impossible.
  bad({"--routing.num_experts=8", "--routing.k=4", "--routing.expert_groups=4",
       "--routing.group_limit=1"},
      "routing.group_limit");
  bad({"--routing.num_experts=8", "--routing.rule=gshard", "--routing.expert_groups=4",
       "--routing.group_limit=1"},
      "routing.group_limit");
  // Accepted: 4 nodes' worth of groups, M = 1 (and the defaults).
  moesim::validate(moesim::parse_config("", "test.ini",
                                        {"--routing.num_experts=8", "--routing.expert_groups=4",
                                         "--routing.group_limit=1", "--routing.k=2"}),
                   moesim::Mode::run, 1);
}

TEST(GroupLimit, RouterBackwardMatchesFiniteDifferences) {
  // J = sum_a c_a w_a + aux + z (capacity drops included), central differences on the logits.
  for (bool renorm : {false, true})
    for (std::int64_t M : {1, 2}) {
      const std::int64_t S = 10, E = 6, G = 3;
      RoutingConfig cfg = limited(E, 2, G, M);
      cfg.capacity_factor = Rational{8, 10};
      cfg.drop_policy = DropPolicyKind::probs;
      cfg.renormalize = renorm;
      const std::string label = "M=" + std::to_string(M) + (renorm ? " renormalised" : "");
      const auto n = static_cast<std::size_t>(S * E);
      const std::vector<double> h = normal_logits(11 + static_cast<std::uint64_t>(M), n);
      Router router(cfg, S);
      std::vector<double> p(n), dprobs(n), dl(n);
      GroupRouting r;
      router.route(h, p, RouteContext{}, r);
      const moesim::CounterRng crng(29, moesim::Stream::routing);
      std::vector<double> coef(r.cands.size());
      for (std::size_t i = 0; i < coef.size(); ++i)
        coef[i] = r.cands[i].kept ? crng.normal(i) : 0.0;
      const LossScales scales{0.7, 0.4, 0.5, 0.6, 0.3, {}};
      router.backward(RouteContext{}, h, p, r, coef, scales, dprobs, dl, std::span<double>{});
      const auto J = [&](const std::vector<double>& hh) {
        std::vector<double> pp(n);
        GroupRouting rr;
        router.route(hh, pp, RouteContext{}, rr);
        EXPECT_EQ(rr.cands.size(), r.cands.size()) << label;
        double j = scales.aux * rr.aux + scales.aux_gshard * rr.aux_gshard +
                   scales.importance * rr.importance + scales.load * rr.load + scales.z * rr.z;
        for (std::size_t i = 0; i < rr.cands.size() && i < coef.size(); ++i) {
          EXPECT_EQ(rr.cands[i].expert, r.cands[i].expert) << label << ": selection changed";
          j += coef[i] * rr.cands[i].weight;
        }
        return j;
      };
      const double eps = 1e-6;
      double largest = 0;
      for (std::size_t i = 0; i < n; ++i) {
        std::vector<double> hp = h, hm = h;
        hp[i] += eps;
        hm[i] -= eps;
        const double fd = (J(hp) - J(hm)) / (2 * eps);
        EXPECT_NEAR(dl[i], fd, 1e-8 + 1e-6 * std::abs(fd)) << label << " dlogits[" << i << "]";
        largest = std::max(largest, std::abs(dl[i]));
      }
      EXPECT_GT(largest, 1e-3) << label << ": the gradient is trivially zero";
    }
}
