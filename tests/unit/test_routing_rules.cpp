// Every routing rule, drop policy and router loss of routing.md on hand-derived cases,
// the invariants the issue names, and finite-difference checks of the router backward
// for every rule and every loss (dlogits and, for noisy_topk, dnoise_std).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "moesim/routing/losses.hpp"
#include "moesim/routing/random.hpp"
#include "moesim/routing/router.hpp"
#include "moesim/util/rng.hpp"

using moesim::DropPolicyKind;
using moesim::Rational;
using moesim::RoutingConfig;
using moesim::RoutingRuleKind;
using moesim::routing::Candidate;
using moesim::routing::GroupRouting;
using moesim::routing::LossScales;
using moesim::routing::RouteContext;
using moesim::routing::Router;

namespace {

using Kept = std::tuple<int, int, int>;  // (token, expert, slot)
using Pair = std::tuple<int, int>;       // (token, expert)

std::vector<Kept> kept_sorted(const GroupRouting& r) {
  std::vector<Kept> out;
  for (const Candidate& c : r.cands)
    if (c.kept) out.emplace_back(c.token, c.expert, c.slot);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<Pair> kept_pairs(const GroupRouting& r) {
  std::vector<Pair> out;
  for (const Candidate& c : r.cands)
    if (c.kept) out.emplace_back(c.token, c.expert);
  std::sort(out.begin(), out.end());
  return out;
}

// Logits whose softmax is exactly proportional to the given positive numbers.
std::vector<double> log_of(const std::vector<double>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = std::log(v[i]);
  return out;
}

std::vector<double> normal_logits(std::uint64_t key, std::size_t n, double scale = 1.0) {
  const moesim::CounterRng rng(key, moesim::Stream::routing, 99);
  std::vector<double> h(n);
  for (std::size_t i = 0; i < n; ++i) h[i] = scale * rng.normal(i);
  return h;
}

GroupRouting route(const RoutingConfig& cfg, const std::vector<double>& logits, std::int64_t S,
                   const RouteContext& ctx = {}) {
  Router router(cfg, S);
  std::vector<double> probs(static_cast<std::size_t>(S * cfg.num_experts));
  GroupRouting r;
  router.route(logits, probs, ctx, r);
  return r;
}

RoutingConfig config(RoutingRuleKind rule, std::int64_t E, std::int64_t k) {
  RoutingConfig cfg;
  cfg.rule = rule;
  cfg.num_experts = E;
  cfg.k = k;
  return cfg;
}

RouteContext keyed(std::int64_t step, std::int64_t layer, std::int64_t first_token,
                   bool training = true) {
  RouteContext ctx;
  ctx.training = training;
  ctx.seed = 11;
  ctx.step = step;
  ctx.layer = layer;
  ctx.first_token = first_token;
  return ctx;
}

const std::vector<double> kL1 = {.11, .2, .1, .3, .3, .4,  .11, .1,
                                 .11, .1, .6, .5, .1, .11, .7,  .8};

}  // namespace

// ------------------------------------------------------------------------------------------
// dense

TEST(RuleDense, EveryExpertWeightPNoCapacity) {
  RoutingConfig cfg = config(RoutingRuleKind::dense, 3, 2);
  cfg.capacity_factor = Rational{1, 10};  // would drop almost everything if it applied
  const std::vector<double> logits = log_of({1, 2, 5, 3, 3, 2});  // p = {1,2,5}/8, {3,3,2}/8
  const GroupRouting r = route(cfg, logits, 2);
  EXPECT_EQ(r.capacity, -1);
  EXPECT_EQ(r.dropped, 0);
  ASSERT_EQ(r.cands.size(), 6U);
  // Choice order: p descending, ties to the lower expert.
  const int want_expert[6] = {2, 1, 0, 0, 1, 2};
  const double want_weight[6] = {5. / 8, 2. / 8, 1. / 8, 3. / 8, 3. / 8, 2. / 8};
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(r.cands[static_cast<std::size_t>(i)].expert, want_expert[i]);
    EXPECT_EQ(r.cands[static_cast<std::size_t>(i)].choice, i % 3);
    EXPECT_NEAR(r.cands[static_cast<std::size_t>(i)].weight, want_weight[i], 1e-15);
  }
  // Slots in token order: every expert holds token 0 in slot 0 and token 1 in slot 1.
  for (const Candidate& c : r.cands) EXPECT_EQ(c.slot, c.token);
  EXPECT_NEAR(r.aux, 1.0, 1e-15);  // k = E: (E/E) sum_e 1 * P_e = 1
  EXPECT_EQ(Router(cfg, 2).capacity(false), -1);
}

// ------------------------------------------------------------------------------------------
// topk with the aux-loss-free expert bias (DeepSeek-V3)

TEST(RuleTopKBias, SelectsWithPPlusBWeightsWithP) {
  const std::vector<double> logits = log_of({0.5, 0.3, 0.2});
  const std::vector<double> bias = {0.0, 0.0, 0.4};
  RouteContext ctx;
  ctx.bias = bias;
  RoutingConfig cfg = config(RoutingRuleKind::topk, 3, 1);
  cfg.dropless = true;
  GroupRouting r = route(cfg, logits, 1, ctx);
  ASSERT_EQ(r.cands.size(), 1U);
  EXPECT_EQ(r.cands[0].expert, 2);  // 0.2 + 0.4 > 0.5
  EXPECT_NEAR(r.cands[0].weight, 0.2, 1e-15);
  cfg.k = 2;
  cfg.renormalize = true;  // scores {0.5, 0.3, 0.6}: experts 2 then 0, weights p / (0.2 + 0.5)
  r = route(cfg, logits, 1, ctx);
  ASSERT_EQ(r.cands.size(), 2U);
  EXPECT_EQ(r.cands[0].expert, 2);
  EXPECT_EQ(r.cands[1].expert, 0);
  EXPECT_NEAR(r.cands[0].weight, 0.2 / 0.7, 1e-15);
  EXPECT_NEAR(r.cands[1].weight, 0.5 / 0.7, 1e-15);
  // Without the bias the same logits select expert 0.
  EXPECT_EQ(route(config(RoutingRuleKind::switch_top1, 3, 1), logits, 1).cands[0].expert, 0);
}

TEST(RuleTopKBias, UpdateIsSignOfMeanMinusLoad) {
  std::vector<double> b = {0.0, 0.5, 0.0, -0.25};
  const std::vector<double> load = {4, 2, 2, 0};  // mean 2
  moesim::routing::update_expert_bias(b, load, 0.1);
  EXPECT_DOUBLE_EQ(b[0], -0.1);
  EXPECT_DOUBLE_EQ(b[1], 0.5);  // sign(0) = 0
  EXPECT_DOUBLE_EQ(b[2], 0.0);
  EXPECT_DOUBLE_EQ(b[3], -0.15);
  moesim::routing::update_expert_bias(b, load, 0.0);  // rate 0: off
  EXPECT_DOUBLE_EQ(b[0], -0.1);
}

// ------------------------------------------------------------------------------------------
// noisy_topk (Shazeer et al. 2017)

TEST(RuleNoisyTopK, WithoutNoiseSoftmaxOverTheKeptLogits) {
  RoutingConfig cfg = config(RoutingRuleKind::noisy_topk, 4, 2);
  cfg.dropless = true;
  const std::vector<double> logits = log_of({1, 3, 2, 6});
  const std::vector<double> sigma(4, 2.0);
  for (bool training : {true, false}) {
    RouteContext ctx = keyed(0, 0, 0, training);
    if (!training) ctx.noise_std = sigma;  // evaluation ignores the noise
    const GroupRouting r = route(cfg, logits, 1, ctx);
    ASSERT_EQ(r.cands.size(), 2U);
    EXPECT_EQ(r.cands[0].expert, 3);
    EXPECT_EQ(r.cands[1].expert, 1);
    EXPECT_NEAR(r.cands[0].weight, 6.0 / 9.0, 1e-15);
    EXPECT_NEAR(r.cands[1].weight, 3.0 / 9.0, 1e-15);
    EXPECT_FALSE(r.smooth_load);  // no noise: load = counts
  }
}

TEST(RuleNoisyTopK, TopKOfNoisyLogitsFromKeyedDraws) {
  const std::int64_t S = 6, E = 5, k = 2;
  RoutingConfig cfg = config(RoutingRuleKind::noisy_topk, E, k);
  cfg.dropless = true;
  const std::vector<double> h = normal_logits(1, S * E, 0.3);
  std::vector<double> sigma(static_cast<std::size_t>(S * E));
  for (std::size_t i = 0; i < sigma.size(); ++i) sigma[i] = 0.5 + 0.1 * static_cast<double>(i % 7);
  RouteContext ctx = keyed(3, 1, 1000);
  ctx.noise_std = sigma;
  const GroupRouting r = route(cfg, h, S, ctx);
  ASSERT_EQ(r.cands.size(), static_cast<std::size_t>(S * k));
  for (std::int64_t t = 0; t < S; ++t) {
    // H = h + n sigma with n the (seed, step, layer, token 1000 + t) normal draw of expert e.
    const moesim::CounterRng rng =
        moesim::routing::draw_stream(11, 3, 1, 1000 + t, moesim::routing::DrawPurpose::noise);
    std::vector<double> H(static_cast<std::size_t>(E));
    for (std::int64_t e = 0; e < E; ++e)
      H[static_cast<std::size_t>(e)] =
          h[static_cast<std::size_t>(t * E + e)] +
          rng.normal(static_cast<std::uint64_t>(e)) * sigma[static_cast<std::size_t>(t * E + e)];
    std::vector<int> order(static_cast<std::size_t>(E));
    for (int e = 0; e < E; ++e) order[static_cast<std::size_t>(e)] = e;
    std::sort(order.begin(), order.end(), [&](int a, int b) {
      return H[static_cast<std::size_t>(a)] > H[static_cast<std::size_t>(b)];
    });
    const double z = std::exp(H[static_cast<std::size_t>(order[0])]) +
                     std::exp(H[static_cast<std::size_t>(order[1])]);
    for (int c = 0; c < k; ++c) {
      const Candidate& cand = r.cands[static_cast<std::size_t>(t * k + c)];
      EXPECT_EQ(cand.expert, order[static_cast<std::size_t>(c)]) << "token " << t;
      EXPECT_NEAR(cand.weight,
                  std::exp(H[static_cast<std::size_t>(order[static_cast<std::size_t>(c)])]) / z,
                  1e-14);
    }
  }
  // The draws are keyed: another step, layer or token id changes them, the same key does not.
  const auto noisy_scores = [&](const RouteContext& c) { return route(cfg, h, S, c).scores; };
  RouteContext again = ctx;
  EXPECT_EQ(noisy_scores(again), r.scores);
  for (auto change : std::vector<std::function<void(RouteContext&)>>{
           [](RouteContext& c) { c.step = 4; }, [](RouteContext& c) { c.layer = 0; },
           [](RouteContext& c) { c.first_token = 1001; }, [](RouteContext& c) { c.seed = 12; }}) {
    RouteContext other = ctx;
    change(other);
    EXPECT_NE(noisy_scores(other), r.scores);
  }
}

TEST(RuleNoisyTopK, LoadIsShazeersSmoothEstimator) {
  // One token, E = 3, k = 1: P(e) = Phi((h_e - kth_excluding(H, 1, e)) / sigma_e).
  RoutingConfig cfg = config(RoutingRuleKind::noisy_topk, 3, 1);
  cfg.dropless = true;
  const std::vector<double> h = {0.2, -0.1, 0.4};
  const std::vector<double> sigma = {0.5, 1.0, 0.8};
  RouteContext ctx = keyed(0, 0, 7);
  ctx.noise_std = sigma;
  const GroupRouting r = route(cfg, h, 1, ctx);
  ASSERT_TRUE(r.smooth_load);
  const moesim::CounterRng rng =
      moesim::routing::draw_stream(11, 0, 0, 7, moesim::routing::DrawPurpose::noise);
  double H[3];
  for (int e = 0; e < 3; ++e)
    H[e] = h[static_cast<std::size_t>(e)] +
           rng.normal(static_cast<std::uint64_t>(e)) * sigma[static_cast<std::size_t>(e)];
  const int best = static_cast<int>(std::max_element(H, H + 3) - H);
  EXPECT_EQ(r.cands[0].expert, best);
  const auto Phi = [](double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); };
  std::vector<double> load(3);
  for (int e = 0; e < 3; ++e) {
    // Top-1: the threshold is the largest H among the other experts.
    double thr = -HUGE_VAL;
    for (int j = 0; j < 3; ++j)
      if (j != e) thr = std::max(thr, H[j]);
    load[static_cast<std::size_t>(e)] =
        Phi((h[static_cast<std::size_t>(e)] - thr) / sigma[static_cast<std::size_t>(e)]);
  }
  for (int e = 0; e < 3; ++e)
    EXPECT_NEAR(r.load_e[static_cast<std::size_t>(e)], load[static_cast<std::size_t>(e)], 1e-14);
  EXPECT_NEAR(r.load, moesim::routing::cv_squared(load), 1e-14);
}

// ------------------------------------------------------------------------------------------
// switch

TEST(RuleSwitch, Top1WeightPNotRenormalised) {
  RoutingConfig cfg = config(RoutingRuleKind::switch_top1, 3, 1);
  cfg.renormalize = true;  // switch never renormalises
  cfg.dropless = true;
  const GroupRouting r = route(cfg, log_of({1, 2, 5}), 1);
  ASSERT_EQ(r.cands.size(), 1U);
  EXPECT_EQ(r.cands[0].expert, 2);
  EXPECT_NEAR(r.cands[0].weight, 5.0 / 8.0, 1e-15);
}

// ------------------------------------------------------------------------------------------
// gshard (Lepikhin et al. 2020)

TEST(RuleGShard, Top2RenormalisedWithoutRandomRouting) {
  RoutingConfig cfg = config(RoutingRuleKind::gshard, 3, 2);
  cfg.random_routing = false;
  cfg.dropless = true;
  const GroupRouting r = route(cfg, log_of({1, 3, 6}), 1, keyed(0, 0, 0));
  ASSERT_EQ(r.cands.size(), 2U);
  EXPECT_EQ(r.cands[0].expert, 2);
  EXPECT_EQ(r.cands[1].expert, 1);
  EXPECT_NEAR(r.cands[0].weight, 6.0 / 9.0, 1e-15);
  EXPECT_NEAR(r.cands[1].weight, 3.0 / 9.0, 1e-15);
}

TEST(RuleGShard, SecondExpertKeptIffTwiceG2ExceedsKeyedUniform) {
  const std::int64_t S = 200, E = 4;
  RoutingConfig cfg = config(RoutingRuleKind::gshard, E, 2);
  cfg.dropless = true;
  const std::vector<double> h = normal_logits(5, S * E, 2.0);
  const GroupRouting r = route(cfg, h, S, keyed(2, 3, 500));
  std::size_t i = 0;
  int with_second = 0, without = 0;
  for (std::int64_t t = 0; t < S; ++t) {
    std::vector<double> p(static_cast<std::size_t>(E));
    moesim::routing::softmax_rows(std::span<const double>(h).subspan(
                                      static_cast<std::size_t>(t * E), static_cast<std::size_t>(E)),
                                  1, E, p, {});
    std::vector<int> order = {0, 1, 2, 3};
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return p[static_cast<std::size_t>(a)] > p[static_cast<std::size_t>(b)];
    });
    const double s = p[static_cast<std::size_t>(order[0])] + p[static_cast<std::size_t>(order[1])];
    const double g1 = p[static_cast<std::size_t>(order[0])] / s,
                 g2 = p[static_cast<std::size_t>(order[1])] / s;
    const double u = moesim::routing::draw_stream(11, 2, 3, 500 + t,
                                                  moesim::routing::DrawPurpose::random_routing)
                         .uniform(0);
    ASSERT_EQ(r.cands[i].token, t);
    EXPECT_EQ(r.cands[i].expert, order[0]);
    EXPECT_NEAR(r.cands[i].weight, g1, 1e-15);  // g1 is not renormalised when the 2nd goes
    ++i;
    const bool second = 2 * g2 > u;
    if (second) {
      ASSERT_LT(i, r.cands.size());
      EXPECT_EQ(r.cands[i].token, t);
      EXPECT_EQ(r.cands[i].expert, order[1]);
      EXPECT_NEAR(r.cands[i].weight, g2, 1e-15);
      ++i;
    } else {
      EXPECT_TRUE(i == r.cands.size() || r.cands[i].token != t);
    }
    (second ? with_second : without)++;
  }
  EXPECT_EQ(i, r.cands.size());
  EXPECT_GT(with_second, 10);  // the case exercises both outcomes
  EXPECT_GT(without, 10);
  // Random routing is not a capacity drop; evaluation keeps every 2nd expert.
  EXPECT_EQ(r.dropped, 0);
  EXPECT_EQ(route(cfg, h, S, keyed(2, 3, 500, false)).cands.size(),
            static_cast<std::size_t>(2 * S));
}

TEST(RuleGShard, ExtremeSecondWeights) {
  RoutingConfig cfg = config(RoutingRuleKind::gshard, 3, 2);
  cfg.dropless = true;
  // g2 = 1/2: 2 g2 = 1 > U(0,1) always. g2 ~ 1e-40: never (U >= 2^-54).
  std::vector<double> equal, tiny;
  for (int t = 0; t < 50; ++t) {
    equal.insert(equal.end(), {1.0, 1.0, -1.0});
    tiny.insert(tiny.end(), {0.0, -92.0, -200.0});
  }
  EXPECT_EQ(route(cfg, equal, 50, keyed(0, 0, 0)).cands.size(), 100U);
  EXPECT_EQ(route(cfg, tiny, 50, keyed(0, 0, 0)).cands.size(), 50U);
}

TEST(RuleGShard, RandomRoutingWithHugeCapacityDropsNothing) {
  const std::int64_t S = 64, E = 8;
  RoutingConfig cfg = config(RoutingRuleKind::gshard, E, 2);
  cfg.capacity_factor = Rational{100, 1};
  for (auto policy : {DropPolicyKind::position, DropPolicyKind::choice_position,
                      DropPolicyKind::probs, DropPolicyKind::priority}) {
    cfg.drop_policy = policy;
    const GroupRouting r = route(cfg, normal_logits(8, S * E, 3.0), S, keyed(1, 0, 0));
    EXPECT_EQ(r.dropped, 0) << to_string(policy);
    EXPECT_LT(r.cands.size(), static_cast<std::size_t>(2 * S));  // random routing did act
    for (const Candidate& c : r.cands) EXPECT_TRUE(c.kept);
  }
}

// ------------------------------------------------------------------------------------------
// expert_choice (Zhou et al. 2022)

TEST(RuleExpertChoice, HandCaseTokensGetZeroToEExperts) {
  // S = 4, E = 2, cf = 1: C = ceil(4 * 1 / 2) = 2 tokens per expert.
  RoutingConfig cfg = config(RoutingRuleKind::expert_choice, 2, 2);
  cfg.capacity_factor = Rational{1, 1};
  cfg.drop_policy = DropPolicyKind::probs;  // ignored
  const std::vector<double> logits = log_of({.5, .5, .5, .5, .9, .1, .1, .9});
  const GroupRouting r = route(cfg, logits, 4);
  EXPECT_EQ(r.capacity, 2);
  // Expert 0 ranks t2 (.9), t0 (.5), t1 (.5; tie -> lower token t0 first); expert 1: t3, t0.
  const std::vector<Kept> want = {{0, 0, 0}, {0, 1, 0}, {2, 0, 1}, {3, 1, 1}};
  EXPECT_EQ(kept_sorted(r), want);
  EXPECT_EQ(r.dropped, 0);
  ASSERT_EQ(r.cands.size(), 4U);
  EXPECT_EQ(r.cands[0].expert, 0);  // token 0: tie .5/.5 -> expert 0 is its first choice
  EXPECT_EQ(r.cands[1].choice, 1);
  EXPECT_NEAR(r.cands[0].weight, 0.5, 1e-15);
  EXPECT_NEAR(r.cands[2].weight, 0.9, 1e-15);
  EXPECT_NEAR(r.aux, 1.0, 1e-15);  // k = E C / S: aux = sum_e P_e = 1
}

TEST(RuleExpertChoice, EveryExpertTakesExactlyC) {
  struct Case {
    std::int64_t S, E;
    Rational cf;
    std::int64_t min_capacity, want;
  };
  const Case cases[] = {
      {10, 4, {1, 1}, 0, 3},      // ceil(2.5)
      {16, 4, {1, 1}, 0, 4},      // exact
      {50, 1, {11, 10}, 0, 50},   // ceil(55) is clamped to S
      {12, 3, {1, 10}, 0, 1},     // ceil(0.4)
      {12, 3, {1, 10}, 5, 5},     // min_capacity
      {12, 3, {125, 100}, 0, 5},  // ceil(5)
  };
  for (const Case& k : cases) {
    RoutingConfig cfg = config(RoutingRuleKind::expert_choice, k.E, 1);
    cfg.capacity_factor = k.cf;
    cfg.eval_capacity_factor = Rational{1, 1000};
    cfg.min_capacity = k.min_capacity;
    const GroupRouting r = route(cfg,
                                 normal_logits(static_cast<std::uint64_t>(k.S * 7 + k.E),
                                               static_cast<std::size_t>(k.S * k.E)),
                                 k.S);
    EXPECT_EQ(r.capacity, k.want) << k.S << " " << k.E;
    for (std::int64_t e = 0; e < k.E; ++e) {
      EXPECT_EQ(r.routed[static_cast<std::size_t>(e)], k.want);
      EXPECT_EQ(r.kept[static_cast<std::size_t>(e)], k.want);
    }
    EXPECT_EQ(r.dropped, 0);
    EXPECT_EQ(Router(cfg, k.S).capacity(false),
              std::max<std::int64_t>(1, k.min_capacity));  // eval factor
  }
}

TEST(RuleExpertChoice, RefusesNoCapacity) {
  RoutingConfig cfg = config(RoutingRuleKind::expert_choice, 4, 1);
  cfg.dropless = true;
  EXPECT_THROW(Router(cfg, 8), std::invalid_argument);
}

// ------------------------------------------------------------------------------------------
// hash (Roller et al. 2021)

TEST(RuleHash, ExpertIsMix64OfTheGlobalTokenIdModE) {
  RoutingConfig cfg = config(RoutingRuleKind::hash, 4, 1);
  cfg.dropless = true;
  // SplitMix64 outputs of ids 0..7 mod 4 (e.g. mix64(0) = 0xE220A8397B1DCDAF).
  const int want[8] = {3, 1, 2, 1, 2, 2, 0, 3};
  const GroupRouting r = route(cfg, {}, 8, keyed(5, 2, 0));
  ASSERT_EQ(r.cands.size(), 8U);
  for (int t = 0; t < 8; ++t) {
    EXPECT_EQ(r.cands[static_cast<std::size_t>(t)].expert, want[t]);
    EXPECT_EQ(r.cands[static_cast<std::size_t>(t)].weight, 1.0);
  }
  EXPECT_EQ(moesim::mix64(0), 0xE220A8397B1DCDAFULL);
  // The group offset and explicit ids select the same experts for the same ids.
  const GroupRouting shifted = route(cfg, {}, 4, keyed(0, 0, 4));
  const std::vector<std::int64_t> ids = {4, 5, 6, 7};
  RouteContext explicit_ids = keyed(0, 0, 123);
  explicit_ids.token_ids = ids;
  const GroupRouting listed = route(cfg, {}, 4, explicit_ids);
  for (int t = 0; t < 4; ++t) {
    EXPECT_EQ(shifted.cands[static_cast<std::size_t>(t)].expert, want[4 + t]);
    EXPECT_EQ(listed.cands[static_cast<std::size_t>(t)].expert, want[4 + t]);
  }
  // No router: no router losses, no probabilities, no gradient.
  EXPECT_EQ(r.aux, 0.0);
  EXPECT_EQ(r.z, 0.0);
  EXPECT_EQ(r.aux_gshard, 0.0);
  const std::vector<std::int64_t> routed = {1, 2, 3, 2};
  EXPECT_EQ(r.routed, routed);
  EXPECT_NEAR(r.load, moesim::routing::cv_squared(std::vector<double>{1, 2, 3, 2}), 1e-15);
  Router router(cfg, 8);
  std::vector<double> probs(32, 9.0), dprobs(32), dl(32, 9.0);
  GroupRouting rr;
  router.route({}, probs, keyed(0, 0, 0), rr);
  for (double p : probs) EXPECT_EQ(p, 0.0);
  LossScales scales{1, 1, 1, 1, 1, {}};
  router.backward(keyed(0, 0, 0), {}, probs, rr, std::vector<double>(8, 1.0), scales, dprobs, dl);
  for (double d : dl) EXPECT_EQ(d, 0.0);
}

// ------------------------------------------------------------------------------------------
// Drop policies

namespace {
RoutingConfig l1_config(DropPolicyKind policy) {
  RoutingConfig cfg = config(RoutingRuleKind::topk, 4, 2);
  cfg.capacity_factor = Rational{1, 1};
  cfg.min_capacity = 1;
  cfg.drop_policy = policy;
  return cfg;
}
}  // namespace

TEST(DropPolicies, L1ChoicePosition) {
  // Top-2 of L1: t0 -> 3, 1; t1 -> 1, 0; t2 -> 2, 3; t3 -> 3, 2; C = 2.
  // 1st choices in token order: e3 <- t0 (slot 0), e1 <- t1 (0), e2 <- t2 (0), e3 <- t3 (1).
  // 2nd choices: e1 <- t0 (1), e0 <- t1 (0), e3 <- t2 (full: dropped), e2 <- t3 (1).
  const GroupRouting r = route(l1_config(DropPolicyKind::choice_position), kL1, 4);
  const std::vector<Kept> want = {{0, 1, 1}, {0, 3, 0}, {1, 0, 0}, {1, 1, 0},
                                  {2, 2, 0}, {3, 2, 1}, {3, 3, 1}};
  EXPECT_EQ(kept_sorted(r), want);
  EXPECT_EQ(r.dropped, 1);
}

TEST(DropPolicies, L1Priority) {
  // max_e p per token: t3 .3445 > t2 .3201 > t1 .2946 > t0 .2817 -> order t3, t2, t1, t0.
  // 1st choices: e3 <- t3, e2 <- t2, e1 <- t1, e3 <- t0 (full now). 2nd: e2 <- t3 (full now),
  // e3 <- t2 dropped, e0 <- t1, e1 <- t0. Slots in token order.
  const GroupRouting r = route(l1_config(DropPolicyKind::priority), kL1, 4);
  const std::vector<Kept> want = {{0, 1, 0}, {0, 3, 0}, {1, 0, 0}, {1, 1, 1},
                                  {2, 2, 0}, {3, 2, 1}, {3, 3, 1}};
  EXPECT_EQ(kept_sorted(r), want);
  EXPECT_EQ(r.dropped, 1);
}

TEST(DropPolicies, FourPoliciesThreeOutcomes) {
  // E = 2, k = 2, S = 2, cf = 1/2: C = 1. t0 p = (.6, .4), t1 p = (.9, .1).
  RoutingConfig cfg = config(RoutingRuleKind::topk, 2, 2);
  cfg.capacity_factor = Rational{1, 2};
  const std::vector<double> logits = log_of({.6, .4, .9, .1});
  const auto kept = [&](DropPolicyKind policy) {
    cfg.drop_policy = policy;
    return kept_pairs(route(cfg, logits, 2));
  };
  // position / choice_position: token 0 arrives first at both experts.
  EXPECT_EQ(kept(DropPolicyKind::position), (std::vector<Pair>{{0, 0}, {0, 1}}));
  EXPECT_EQ(kept(DropPolicyKind::choice_position), (std::vector<Pair>{{0, 0}, {0, 1}}));
  // probs: e0 keeps the larger .9 (t1), e1 the larger .4 (t0).
  EXPECT_EQ(kept(DropPolicyKind::probs), (std::vector<Pair>{{0, 1}, {1, 0}}));
  // priority: t1 (max .9) goes first, its 1st and 2nd choices fill both experts.
  EXPECT_EQ(kept(DropPolicyKind::priority), (std::vector<Pair>{{1, 0}, {1, 1}}));
}

TEST(DropPolicies, ChoicePositionSlotsFollowFillOrder) {
  // E = 2, k = 2, unlimited: 1st choices (t0 -> e0, t1 -> e1) take slot 0, then 2nd choices.
  RoutingConfig cfg = config(RoutingRuleKind::topk, 2, 2);
  cfg.dropless = true;
  cfg.drop_policy = DropPolicyKind::choice_position;
  const std::vector<double> logits = log_of({.7, .3, .2, .8});
  EXPECT_EQ(kept_sorted(route(cfg, logits, 2)),
            (std::vector<Kept>{{0, 0, 0}, {0, 1, 1}, {1, 0, 1}, {1, 1, 0}}));
  cfg.drop_policy = DropPolicyKind::priority;  // slots in token order
  EXPECT_EQ(kept_sorted(route(cfg, logits, 2)),
            (std::vector<Kept>{{0, 0, 0}, {0, 1, 0}, {1, 0, 1}, {1, 1, 1}}));
}

// ------------------------------------------------------------------------------------------
// Router losses: closed forms

TEST(RouterLosses, CvSquaredClosedForms) {
  using moesim::routing::cv_squared;
  EXPECT_EQ(cv_squared(std::vector<double>{1, 1, 1}), 0.0);
  EXPECT_DOUBLE_EQ(cv_squared(std::vector<double>{2, 0}), 1.0);
  EXPECT_DOUBLE_EQ(cv_squared(std::vector<double>{1, 2, 3}), (2.0 / 3.0) / 4.0);
  EXPECT_EQ(cv_squared(std::vector<double>{5}), 0.0);
  EXPECT_EQ(cv_squared(std::vector<double>{0, 0}), 0.0);
  // Backward against central differences.
  const std::vector<double> x = {0.3, 1.7, 0.9, 2.2};
  std::vector<double> dx(4, 0.0);
  moesim::routing::cv_squared_backward(x, 0.8, dx);
  for (std::size_t i = 0; i < 4; ++i) {
    std::vector<double> a = x, b = x;
    a[i] += 1e-6;
    b[i] -= 1e-6;
    EXPECT_NEAR(dx[i], 0.8 * (cv_squared(a) - cv_squared(b)) / 2e-6, 1e-8);
  }
}

TEST(RouterLosses, AllOnOneExpertHandCase) {
  // E = 2, k = 1, S = 2: p_0 = (3/4, 1/4), p_1 = (2/3, 1/3); both tokens choose expert 0.
  RoutingConfig cfg = config(RoutingRuleKind::topk, 2, 1);
  cfg.dropless = true;
  const GroupRouting r = route(cfg, log_of({3, 1, 2, 1}), 2);
  const double P0 = (3.0 / 4 + 2.0 / 3) / 2;         // 17/24
  EXPECT_NEAR(r.aux, 2.0 * 1.0 * P0, 1e-15);         // (E/k) (f_0 P_0 + 0)
  EXPECT_NEAR(r.aux_gshard, 2.0 * 1.0 * P0, 1e-15);  // E (c_0/S) P_0
  EXPECT_NEAR(r.importance, 1.0, 1e-15);             // importance (17/12, 0): CV^2 = 1
  EXPECT_NEAR(r.load, 1.0, 1e-15);                   // counts (2, 0)
  EXPECT_NEAR(r.z, (std::log(4.0) * std::log(4.0) + std::log(3.0) * std::log(3.0)) / 2, 1e-15);
}

TEST(RouterLosses, GShardAuxCountsFirstChoicesOnly) {
  const GroupRouting r = route(l1_config(DropPolicyKind::position), kL1, 4);
  std::vector<double> p(16);
  moesim::routing::softmax_rows(kL1, 4, 4, p, {});
  const double c[4] = {0, 1, 1, 2};  // first choices: t0 -> 3, t1 -> 1, t2 -> 2, t3 -> 3
  double want = 0;
  for (int e = 0; e < 4; ++e)
    want += c[e] / 4 *
            (p[static_cast<std::size_t>(e)] + p[static_cast<std::size_t>(4 + e)] +
             p[static_cast<std::size_t>(8 + e)] + p[static_cast<std::size_t>(12 + e)]) /
            4;
  EXPECT_NEAR(r.aux_gshard, 4 * want, 1e-15);
  // Importance: sum of the (pre-capacity) weights p of each expert's candidates.
  const std::vector<double> imp = {p[4], p[1] + p[5], p[10] + p[14], p[3] + p[11] + p[15]};
  EXPECT_NEAR(r.importance, moesim::routing::cv_squared(imp), 1e-15);
  EXPECT_NEAR(r.load, moesim::routing::cv_squared(std::vector<double>{1, 2, 2, 3}), 1e-15);
}

TEST(RouterLosses, UniformProbabilitiesGiveAuxOne) {
  struct Case {
    RoutingRuleKind rule;
    std::int64_t k;
  };
  const Case cases[] = {{RoutingRuleKind::topk, 1},   {RoutingRuleKind::topk, 2},
                        {RoutingRuleKind::topk, 3},   {RoutingRuleKind::switch_top1, 1},
                        {RoutingRuleKind::gshard, 2}, {RoutingRuleKind::noisy_topk, 2},
                        {RoutingRuleKind::dense, 2},  {RoutingRuleKind::expert_choice, 1}};
  for (const Case& k : cases) {
    RoutingConfig cfg = config(k.rule, 6, k.k);
    const GroupRouting r = route(cfg, std::vector<double>(12 * 6, 0.37), 12, keyed(0, 0, 0));
    EXPECT_NEAR(r.aux, 1.0, 1e-12) << to_string(k.rule) << " k=" << k.k;
    if (k.rule != RoutingRuleKind::expert_choice) {  // there a token may have no first choice
      EXPECT_NEAR(r.aux_gshard, 1.0, 1e-12) << to_string(k.rule);
    }
  }
}

// ------------------------------------------------------------------------------------------
// dropless == a capacity large enough to drop nothing, for every rule and policy

TEST(RouterInvariants, DroplessEqualsLargeCapacity) {
  const std::int64_t S = 48, E = 6;
  const std::vector<double> h = normal_logits(21, S * E, 1.5);
  std::vector<double> sigma(static_cast<std::size_t>(S * E), 0.7);
  const std::vector<double> bias = {0.1, -0.2, 0.0, 0.3, 0.05, -0.1};
  struct Case {
    RoutingRuleKind rule;
    std::int64_t k;
    bool with_bias;
  };
  const Case cases[] = {
      {RoutingRuleKind::topk, 2, false},        {RoutingRuleKind::topk, 3, true},
      {RoutingRuleKind::switch_top1, 1, false}, {RoutingRuleKind::switch_top1, 1, true},
      {RoutingRuleKind::gshard, 2, false},      {RoutingRuleKind::noisy_topk, 2, false},
      {RoutingRuleKind::hash, 1, false}};
  for (const Case& k : cases) {
    for (auto policy : {DropPolicyKind::position, DropPolicyKind::choice_position,
                        DropPolicyKind::probs, DropPolicyKind::priority}) {
      RoutingConfig a = config(k.rule, E, k.k);
      a.drop_policy = policy;
      a.dropless = true;
      RoutingConfig b = a;
      b.dropless = false;
      b.capacity_factor = Rational{E, 1};  // C = k S >= any load
      RouteContext ctx = keyed(4, 1, 96);
      ctx.noise_std = sigma;
      if (k.with_bias) ctx.bias = bias;
      const GroupRouting ra = route(a, h, S, ctx), rb = route(b, h, S, ctx);
      const std::string label = std::string(to_string(k.rule)) + "/" + to_string(policy);
      EXPECT_EQ(ra.capacity, -1) << label;
      EXPECT_EQ(ra.dropped, 0) << label;
      EXPECT_EQ(rb.dropped, 0) << label;
      EXPECT_EQ(kept_sorted(ra), kept_sorted(rb)) << label;
      ASSERT_EQ(ra.cands.size(), rb.cands.size());
      for (std::size_t i = 0; i < ra.cands.size(); ++i)
        EXPECT_EQ(ra.cands[i].weight, rb.cands[i].weight);
      EXPECT_EQ(ra.aux, rb.aux);
    }
  }
}

// ------------------------------------------------------------------------------------------
// Router backward against central differences, for every rule and every loss:
//   J(h, sigma) = sum_a c_a w_a + sum of scale * loss
// (c_a = 0 for dropped candidates, as in the layer; the importance loss still sees them).

namespace {
struct FdCase {
  std::string label;
  RoutingConfig cfg;
  bool noise = false, bias = false;
};

void fd_check(const FdCase& fc) {
  const std::int64_t S = 12, E = fc.cfg.num_experts;
  const auto n = static_cast<std::size_t>(S * E);
  const std::vector<double> h = normal_logits(std::hash<std::string>{}(fc.label), n);
  std::vector<double> sigma(n);
  const moesim::CounterRng srng(17, moesim::Stream::routing);
  for (std::size_t i = 0; i < n; ++i) sigma[i] = 0.3 + srng.uniform(i);
  std::vector<double> bias(static_cast<std::size_t>(E));
  for (std::int64_t e = 0; e < E; ++e)
    bias[static_cast<std::size_t>(e)] = 0.05 * static_cast<double>((e * 7) % 5) - 0.1;
  Router router(fc.cfg, S);
  const auto context = [&](const std::vector<double>& sg) {
    RouteContext ctx = keyed(6, 2, 240);
    if (fc.noise) ctx.noise_std = sg;
    if (fc.bias) ctx.bias = bias;
    return ctx;
  };
  std::vector<double> p(n), dprobs(n), dl(n), dsig(n);
  GroupRouting r;
  const RouteContext ctx = context(sigma);
  router.route(h, p, ctx, r);
  const moesim::CounterRng crng(29, moesim::Stream::routing);
  std::vector<double> coef(r.cands.size());
  for (std::size_t i = 0; i < coef.size(); ++i) coef[i] = r.cands[i].kept ? crng.normal(i) : 0.0;
  const LossScales scales{0.7, 0.4, 0.5, 0.6, 0.3, {}};
  router.backward(ctx, h, p, r, coef, scales, dprobs, dl,
                  fc.noise ? std::span<double>(dsig) : std::span<double>{});
  const auto J = [&](const std::vector<double>& hh, const std::vector<double>& sg) {
    std::vector<double> pp(n);
    GroupRouting rr;
    router.route(hh, pp, context(sg), rr);
    EXPECT_EQ(rr.cands.size(), r.cands.size())
        << fc.label << ": the selection changed under the step";
    double j = scales.aux * rr.aux + scales.aux_gshard * rr.aux_gshard +
               scales.importance * rr.importance + scales.load * rr.load + scales.z * rr.z;
    for (std::size_t i = 0; i < rr.cands.size() && i < coef.size(); ++i)
      j += coef[i] * rr.cands[i].weight;
    return j;
  };
  const double eps = 1e-6;
  int checked = 0;
  double largest = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<double> hp = h, hm = h;
    hp[i] += eps;
    hm[i] -= eps;
    const double fd = (J(hp, sigma) - J(hm, sigma)) / (2 * eps);
    EXPECT_NEAR(dl[i], fd, 1e-8 + 1e-6 * std::abs(fd)) << fc.label << " dlogits[" << i << "]";
    largest = std::max(largest, std::abs(dl[i]));
    ++checked;
    if (!fc.noise) continue;
    std::vector<double> sp = sigma, sm = sigma;
    sp[i] += eps;
    sm[i] -= eps;
    const double fds = (J(h, sp) - J(h, sm)) / (2 * eps);
    EXPECT_NEAR(dsig[i], fds, 1e-8 + 1e-6 * std::abs(fds))
        << fc.label << " dnoise_std[" << i << "]";
  }
  EXPECT_GT(largest, 1e-3) << fc.label << ": the gradient is trivially zero";
}
}  // namespace

TEST(RouterBackward, EveryRuleAndLossMatchesFiniteDifferences) {
  std::vector<FdCase> cases;
  const auto add = [&](std::string label, RoutingRuleKind rule, std::int64_t k,
                       DropPolicyKind policy, bool renorm = false, bool noise = false,
                       bool bias = false) {
    RoutingConfig cfg = config(rule, 5, k);
    cfg.capacity_factor = Rational{8, 10};
    cfg.drop_policy = policy;
    cfg.renormalize = renorm;
    cases.push_back({std::move(label), cfg, noise, bias});
  };
  add("topk-position", RoutingRuleKind::topk, 2, DropPolicyKind::position);
  add("topk-renorm-probs", RoutingRuleKind::topk, 2, DropPolicyKind::probs, true);
  add("topk-choice_position", RoutingRuleKind::topk, 3, DropPolicyKind::choice_position);
  add("topk-renorm-priority", RoutingRuleKind::topk, 2, DropPolicyKind::priority, true);
  add("topk-bias", RoutingRuleKind::topk, 2, DropPolicyKind::position, true, false, true);
  add("switch-probs", RoutingRuleKind::switch_top1, 1, DropPolicyKind::probs);
  add("switch-bias-priority", RoutingRuleKind::switch_top1, 1, DropPolicyKind::priority, false,
      false, true);
  add("dense", RoutingRuleKind::dense, 2, DropPolicyKind::position);
  add("gshard-random", RoutingRuleKind::gshard, 2, DropPolicyKind::choice_position);
  add("noisy_topk-2", RoutingRuleKind::noisy_topk, 2, DropPolicyKind::position, false, true);
  add("noisy_topk-1-priority", RoutingRuleKind::noisy_topk, 1, DropPolicyKind::priority, false,
      true);
  add("noisy_topk-clean", RoutingRuleKind::noisy_topk, 2, DropPolicyKind::probs);
  add("expert_choice", RoutingRuleKind::expert_choice, 1, DropPolicyKind::position);
  const auto add_sigmoid = [&](std::string label, RoutingRuleKind rule, std::int64_t k,
                               DropPolicyKind policy, bool bias) {
    add(std::move(label), rule, k, policy, false, false, bias);
    cases.back().cfg.score = moesim::ScoreKind::sigmoid;
  };
  add_sigmoid("topk-sigmoid-position", RoutingRuleKind::topk, 2, DropPolicyKind::position, false);
  add_sigmoid("topk-sigmoid-bias-probs", RoutingRuleKind::topk, 3, DropPolicyKind::probs, true);
  add_sigmoid("switch-sigmoid-priority", RoutingRuleKind::switch_top1, 1, DropPolicyKind::priority,
              true);
  for (const FdCase& fc : cases) fd_check(fc);
}

// routing.score = sigmoid (DeepSeek-V3): select by s = sigmoid(h) (+ b), weights = the
// selected s renormalised (k > 1), the losses' distribution p = s / sum_e s.
TEST(RuleSigmoid, SelectsBySigmoidPlusBiasWeightsRenormalisedLossesUseNormalisedS) {
  // One token, 4 experts. s = (0.5, 0.8, 0.2, 0.6) via h = logit(s).
  const std::vector<double> s = {0.5, 0.8, 0.2, 0.6};
  std::vector<double> h(4);
  for (std::size_t e = 0; e < 4; ++e) h[e] = std::log(s[e] / (1 - s[e]));
  RoutingConfig cfg = config(RoutingRuleKind::topk, 4, 2);
  cfg.score = moesim::ScoreKind::sigmoid;
  cfg.dropless = true;
  GroupRouting r = route(cfg, h, 1);
  ASSERT_EQ(r.cands.size(), 2U);
  EXPECT_EQ(r.cands[0].expert, 1);
  EXPECT_EQ(r.cands[1].expert, 3);
  EXPECT_NEAR(r.cands[0].weight, 0.8 / 1.4, 1e-14);
  EXPECT_NEAR(r.cands[1].weight, 0.6 / 1.4, 1e-14);
  // aux = (E/k) sum_e f_e P_e with P = s / sum s = s / 2.1 and f = (0, 1, 0, 1).
  EXPECT_NEAR(r.aux, 2.0 * (0.8 + 0.6) / 2.1, 1e-14);
  // With the bias b = (0.35, 0, 0, 0): s + b = (0.85, 0.8, 0.2, 0.6) selects experts 0 and 1,
  // weighted by s alone.
  const std::vector<double> bias = {0.35, 0, 0, 0};
  RouteContext ctx;
  ctx.bias = bias;
  r = route(cfg, h, 1, ctx);
  EXPECT_EQ(r.cands[0].expert, 0);
  EXPECT_EQ(r.cands[1].expert, 1);
  EXPECT_NEAR(r.cands[0].weight, 0.5 / 1.3, 1e-14);
  // k = 1 (switch): weight s itself (renormalising one score would make it constant 1).
  RoutingConfig sw = config(RoutingRuleKind::switch_top1, 4, 1);
  sw.score = moesim::ScoreKind::sigmoid;
  sw.dropless = true;
  r = route(sw, h, 1);
  EXPECT_EQ(r.cands[0].expert, 1);
  EXPECT_NEAR(r.cands[0].weight, 0.8, 1e-14);
}

TEST(RouterBackward, GShardSecondNotKeptStillShapesTheFirstWeight) {
  // A token whose 2nd expert was not selected: g1 = p1 / (p1 + p2) still depends on p2.
  RoutingConfig cfg = config(RoutingRuleKind::gshard, 3, 2);
  cfg.dropless = true;
  const std::vector<double> h = {0.0, -3.0, -5.0};  // g2 ~ 0.047: the 2nd is rarely kept
  Router router(cfg, 1);
  std::int64_t token = 0;
  GroupRouting r;
  std::vector<double> p(3), dp(3), dl(3);
  for (;; ++token) {  // find a token id whose draw drops the 2nd expert
    router.route(h, p, keyed(0, 0, token), r);
    if (r.cands.size() == 1) break;
  }
  router.backward(keyed(0, 0, token), h, p, r, std::vector<double>{1.0}, LossScales{}, dp, dl);
  for (int e = 0; e < 3; ++e) {
    std::vector<double> hp = h, hm = h;
    hp[static_cast<std::size_t>(e)] += 1e-6;
    hm[static_cast<std::size_t>(e)] -= 1e-6;
    GroupRouting a, b;
    router.route(hp, p, keyed(0, 0, token), a);
    router.route(hm, p, keyed(0, 0, token), b);
    EXPECT_NEAR(dl[static_cast<std::size_t>(e)], (a.cands[0].weight - b.cands[0].weight) / 2e-6,
                1e-9);
  }
  EXPECT_LT(dl[1], -1e-3);  // raising p2 lowers g1
}
