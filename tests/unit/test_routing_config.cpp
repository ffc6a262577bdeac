// Validation of the routing toolkit's keys: every rule and policy is accepted with its
// defaults or its required values, and each impossible combination is refused with one
// message naming the key, the value and what is allowed. No MPI.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "moesim/config/config.hpp"

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
      {{"--routing.rule=hash"}, {"routing.k = 2", "must be 1", "hash"}},
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
      {{"--routing.rule=base"}, {"routing.k = 2", "must be 1 when routing.rule = base"}},
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
