// Validation of the routing toolkit's keys: every rule and policy is accepted with its
// defaults or its required values, and each impossible combination is refused with one
// message naming the key, the value and what is allowed. No MPI.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "moesim/config/config.hpp"
#include "moesim/routing/replay.hpp"

namespace moesim {
namespace {

std::string validate_error(const Config& cfg) {
  try {
    validate(cfg, Mode::run, 1);
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a ConfigError";
  return {};
}

Config with(const std::vector<std::string>& overrides) {
  return parse_config("", "t.ini", overrides);
}

}  // namespace

TEST(RoutingConfigValidate, EveryRuleAndPolicyIsAccepted) {
  const std::vector<std::vector<std::string>> ok = {
      {"--routing.rule=dense"},
      {"--routing.rule=dense", "--routing.k=1", "--routing.dropless=true"},  // k, capacity unused
      {"--routing.rule=topk", "--routing.k=3", "--routing.renormalize=true"},
      {"--routing.rule=topk", "--routing.bias_update_rate=0.001"},
      {"--routing.rule=noisy_topk", "--routing.importance_loss_coef=0.01",
       "--routing.load_loss_coef=0.01"},
      {"--routing.rule=switch", "--routing.k=1", "--routing.jitter_eps=0.01"},
      {"--routing.rule=switch"},  // k not given: 1 for switch (and hash), 2 for gshard
      {"--routing.rule=gshard"},
      {"--routing.rule=hash", "--routing.aux_loss_coef=0"},
      {"--routing.rule=switch", "--routing.k=1", "--routing.bias_update_rate=0.01"},
      {"--routing.rule=gshard", "--routing.k=2", "--routing.aux_gshard_loss_coef=0.01"},
      {"--routing.rule=gshard", "--routing.random_routing=false"},
      {"--routing.rule=expert_choice", "--routing.k=1"},
      {"--routing.rule=expert_choice", "--routing.drop_policy=probs"},  // ignored
      {"--routing.rule=hash", "--routing.k=1", "--routing.aux_loss_coef=0",
       "--routing.z_loss_coef=0"},
      {"--routing.drop_policy=position"},
      {"--routing.drop_policy=choice_position"},
      {"--routing.drop_policy=probs"},
      {"--routing.drop_policy=priority"},
  };
  for (const auto& o : ok) {
    std::string joined;
    for (const auto& s : o) joined += s + " ";
    EXPECT_NO_THROW(validate(with(o), Mode::run, 1)) << joined;
  }
}

TEST(RoutingConfigValidate, ImpossibleCombinationsNameKeyValueAndWhatIsAllowed) {
  struct Case {
    std::vector<std::string> overrides;
    std::vector<std::string> expected;  // substrings of the message
  };
  const Case cases[] = {
      {{"--routing.rule=gshard", "--routing.k=3"}, {"routing.k = 3", "must be 2", "gshard"}},
      {{"--routing.rule=gshard", "--routing.k=1"}, {"routing.k = 1", "must be 2"}},
      {{"--routing.rule=gshard", "--routing.num_experts=1"},
       {"routing.k = 2", "routing.num_experts = 1"}},
      // An explicit k that conflicts with the rule stays refused (a k not given follows it).
      {{"--routing.rule=hash", "--routing.k=2"}, {"routing.k = 2", "must be 1", "hash"}},
      {{"--routing.rule=switch", "--routing.k=2"}, {"routing.k = 2", "must be 1", "switch"}},
      {{"--routing.rule=hash"}, {"routing.aux_loss_coef", "must be 0", "hash"}},
      {{"--routing.rule=hash", "--routing.k=1"}, {"routing.aux_loss_coef", "must be 0", "hash"}},
      {{"--routing.rule=hash", "--routing.k=1", "--routing.aux_loss_coef=0",
        "--routing.z_loss_coef=0.1"},
       {"routing.z_loss_coef", "must be 0"}},
      {{"--routing.rule=hash", "--routing.k=1", "--routing.aux_loss_coef=0",
        "--routing.load_loss_coef=0.1"},
       {"routing.load_loss_coef", "must be 0"}},
      {{"--routing.rule=topk", "--routing.jitter_eps=0.1"}, {"routing.jitter_eps", "switch"}},
      {{"--routing.rule=noisy_topk", "--routing.bias_update_rate=0.1"},
       {"routing.bias_update_rate", "topk or switch"}},
      {{"--routing.rule=expert_choice", "--routing.dropless=true"},
       {"routing.dropless = true", "expert_choice"}},
      {{"--routing.rule=expert_choice", "--routing.capacity_factor=0"},
       {"routing.capacity_factor = 0", "must be > 0"}},
      {{"--routing.rule=expert_choice", "--routing.eval_capacity_factor=0"},
       {"routing.eval_capacity_factor = 0", "must be > 0"}},
      // k defaults to 1 for base; an explicit k = 2 is refused.
      {{"--routing.rule=base", "--routing.k=2"},
       {"routing.k = 2", "must be 1 when routing.rule = base"}},
      {{"--routing.rule=base", "--routing.k=1", "--routing.group_size=6",
        "--data.tokens_per_step=12", "--data.eval_tokens=12"},
       {"routing.group_size = 6", "multiple of routing.num_experts = 4"}},
      {{"--routing.rule=dense", "--routing.score=sigmoid"},
       {"routing.score = sigmoid", "topk or switch"}},
      {{"--routing.shared_experts=-1"}, {"routing.shared_experts = -1", ">= 0"}},
      {{"--routing.rule=base", "--routing.k=1", "--routing.dispatch=alltoall_padded"},
       {"routing.dispatch = alltoall_padded", "must be alltoallv when routing.rule = base"}},
      {{"--routing.rule=base", "--routing.k=1", "--routing.base_tolerance=0"},
       {"routing.base_tolerance = 0", "(0, 1]"}},
      {{"--routing.rule=topk", "--routing.num_experts=80", "--routing.k=65"},
       {"routing.k = 65", "at most 64"}},
  };
  for (const Case& c : cases) {
    const std::string msg = validate_error(with(c.overrides));
    for (const std::string& want : c.expected)
      EXPECT_NE(msg.find(want), std::string::npos) << "message: " << msg << "\nexpected: " << want;
  }
}

}  // namespace moesim

namespace moesim {

// Rule-dependent defaults (issue 7 item 11): only a k that was not given follows the rule, from
// the command line and from the file alike, and the resolved value is what to_ini writes.
TEST(RoutingConfigDefaults, KFollowsTheRuleOnlyWhenNotGiven) {
  struct Case {
    std::string rule;
    std::int64_t k;
  };
  for (const Case& c :
       {Case{"switch", 1}, Case{"hash", 1}, Case{"base", 1}, Case{"gshard", 2}, Case{"topk", 2},
        Case{"noisy_topk", 2}, Case{"dense", 2}, Case{"expert_choice", 2}}) {
    const Config cli = parse_config("", "t.ini", {"--routing.rule=" + c.rule});
    EXPECT_EQ(cli.routing.k, c.k) << c.rule;
    EXPECT_EQ(cli.given.count("routing.k"), 0u);
    EXPECT_EQ(cli.given.count("routing.rule"), 1u);
    const Config file = parse_config("[routing]\nrule = " + c.rule + "\n", "t.ini", {});
    EXPECT_EQ(file.routing.k, c.k) << c.rule;
    EXPECT_NE(to_ini(file).find("\nk = " + std::to_string(c.k) + "\n"), std::string::npos);
  }
  // Given explicitly: kept as written, whatever the rule.
  EXPECT_EQ(parse_config("", "t.ini", {"--routing.rule=switch", "--routing.k=3"}).routing.k, 3);
  EXPECT_EQ(parse_config("[routing]\nk = 4\n", "t.ini", {"--routing.rule=gshard"}).routing.k, 4);
  EXPECT_EQ(parse_config("[routing]\nk = 1\nrule = gshard\n", "t.ini", {}).routing.k, 1);
  // The resolved file reproduces itself (k is then given explicitly with the same value).
  const Config sw = parse_config("", "t.ini", {"--routing.rule=switch"});
  const Config back = parse_config(to_ini(sw), "resolved.ini", {});
  EXPECT_EQ(back.routing.k, 1);
  EXPECT_EQ(to_ini(back), to_ini(sw));
  EXPECT_NO_THROW(validate(sw, Mode::run, 1));
}

}  // namespace moesim

namespace moesim {

// routing::replay (moved out of the CLI): a hand-computed case. topk k=1, E=2, cf=1, one group
// of S=4: C = ceil(1*4*1/2) = 2. Tokens 0, 2, 3 prefer expert 0, token 1 expert 1; the position
// policy keeps tokens 0 and 2 at expert 0 (slots 0, 1) and drops token 3.
TEST(RoutingReplay, HandComputedTrace) {
  Config cfg = parse_config(
      "", "t.ini", {"--routing.k=1", "--routing.capacity_factor=1", "--routing.num_experts=2"});
  const std::vector<double> logits = {2, 0, 0, 2, 1, 0, 3, 0};
  const routing::ReplayResult r = routing::replay(cfg, logits, 4, 2, {});
  EXPECT_EQ(r.capacity, 2);
  EXPECT_EQ(r.groups, 1);
  EXPECT_EQ(r.token, (std::vector<std::int64_t>{0, 1, 2}));
  EXPECT_EQ(r.expert, (std::vector<std::int32_t>{0, 1, 0}));
  EXPECT_EQ(r.slot, (std::vector<std::int32_t>{0, 0, 1}));
  ASSERT_EQ(r.weight.size(), 3u);
  EXPECT_NEAR(r.weight[0], std::exp(2.0) / (std::exp(2.0) + 1.0), 1e-15);
  EXPECT_NEAR(r.weight[2], std::exp(1.0) / (std::exp(1.0) + 1.0), 1e-15);
  EXPECT_EQ(r.dropped_token, (std::vector<std::int64_t>{3}));
  EXPECT_EQ(r.dropped_expert, (std::vector<std::int32_t>{0}));
  EXPECT_EQ(r.load_routed, (std::vector<std::int64_t>{3, 1}));
  EXPECT_EQ(r.load_kept, (std::vector<std::int64_t>{2, 1}));
  EXPECT_DOUBLE_EQ(r.dropped_fraction, 0.25);
  // Two groups of 2: C = ceil(1*2*1/2) = 1 per group; group 1 = tokens 2, 3 both prefer
  // expert 0, so token 3 is dropped again and token 2 takes slot 0 of its group.
  cfg.routing.group_size = 2;
  const routing::ReplayResult g = routing::replay(cfg, logits, 4, 2, {});
  EXPECT_EQ(g.groups, 2);
  EXPECT_EQ(g.capacity, 1);
  EXPECT_EQ(g.dropped_token, (std::vector<std::int64_t>{3}));
  EXPECT_EQ(g.slot, (std::vector<std::int32_t>{0, 0, 0}));
}

TEST(RoutingReplay, TraceShapeIsCheckedBeforeAllocating) {
  Config cfg;
  cfg.trace.input = "big.h5";
  cfg.routing.group_size = 1;
  try {
    routing::check_trace_shape(cfg, (std::int64_t{1} << 62) + 1, 4);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.key(), "trace.input");
    EXPECT_NE(std::string(e.what()).find("4611686018427387905"), std::string::npos) << e.what();
  }
  cfg.routing.group_size = 3;
  try {
    routing::check_trace_shape(cfg, 8, 4);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.key(), "routing.group_size");
  }
  cfg.routing.group_size = 4;
  EXPECT_NO_THROW(routing::check_trace_shape(cfg, 8, 4));
  EXPECT_EQ(routing::replay_memory_bytes(cfg, std::int64_t{1} << 62, 1 << 20),
            std::numeric_limits<std::int64_t>::max());
}

}  // namespace moesim
