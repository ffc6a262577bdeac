// Unit tests of the configuration module: parsing (INI + command line), error messages,
// validation, exact Rationals and the to_ini round trip. No MPI.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "moesim/config/config.hpp"

namespace moesim {
namespace {

// The message of the ConfigError that `f` throws; a failure (not a crash) when it throws none, so
// each caller's content checks then fail too.
std::string config_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a ConfigError";
  return {};
}

std::string parse_error(const std::string& ini, const std::vector<std::string>& overrides = {}) {
  return config_error([&] { parse_config(ini, "experiments/test.ini", overrides); });
}

std::string validate_error(const Config& cfg, Mode mode, int ranks) {
  return config_error([&] { validate(cfg, mode, ranks); });
}

// Every field, so that a field missed by the parser or a printer shows up by name.
void expect_same(const Config& a, const Config& b) {
  EXPECT_EQ(a.model.d_model, b.model.d_model);
  EXPECT_EQ(a.model.d_ff, b.model.d_ff);
  EXPECT_EQ(a.model.layers, b.model.layers);
  EXPECT_EQ(a.model.activation, b.model.activation);
  EXPECT_EQ(a.model.precision, b.model.precision);
  EXPECT_EQ(a.model.init_scale, b.model.init_scale);
  EXPECT_EQ(a.routing.num_experts, b.routing.num_experts);
  EXPECT_EQ(a.routing.rule, b.routing.rule);
  EXPECT_EQ(a.routing.k, b.routing.k);
  EXPECT_EQ(a.routing.renormalize, b.routing.renormalize);
  EXPECT_EQ(a.routing.capacity_factor, b.routing.capacity_factor);
  EXPECT_EQ(a.routing.eval_capacity_factor, b.routing.eval_capacity_factor);
  EXPECT_EQ(a.routing.min_capacity, b.routing.min_capacity);
  EXPECT_EQ(a.routing.dropless, b.routing.dropless);
  EXPECT_EQ(a.routing.drop_policy, b.routing.drop_policy);
  EXPECT_EQ(a.routing.group_size, b.routing.group_size);
  EXPECT_EQ(a.routing.aux_loss_coef, b.routing.aux_loss_coef);
  EXPECT_EQ(a.routing.z_loss_coef, b.routing.z_loss_coef);
  EXPECT_EQ(a.training.steps, b.training.steps);
  EXPECT_EQ(a.training.seed, b.training.seed);
  EXPECT_EQ(a.training.optimizer, b.training.optimizer);
  EXPECT_EQ(a.training.learning_rate, b.training.learning_rate);
  EXPECT_EQ(a.training.momentum, b.training.momentum);
  EXPECT_EQ(a.training.beta1, b.training.beta1);
  EXPECT_EQ(a.training.beta2, b.training.beta2);
  EXPECT_EQ(a.training.epsilon, b.training.epsilon);
  EXPECT_EQ(a.training.weight_decay, b.training.weight_decay);
  EXPECT_EQ(a.training.eval_every, b.training.eval_every);
  EXPECT_EQ(a.data.task, b.data.task);
  EXPECT_EQ(a.data.tokens_per_step, b.data.tokens_per_step);
  EXPECT_EQ(a.data.eval_tokens, b.data.eval_tokens);
  EXPECT_EQ(a.data.input_dim, b.data.input_dim);
  EXPECT_EQ(a.data.num_clusters, b.data.num_clusters);
  EXPECT_EQ(a.data.signal_strength, b.data.signal_strength);
  EXPECT_EQ(a.data.center_strength, b.data.center_strength);
  EXPECT_EQ(a.data.feature_noise, b.data.feature_noise);
  EXPECT_EQ(a.data.noise_std, b.data.noise_std);
  EXPECT_EQ(a.output.file, b.output.file);
  EXPECT_EQ(a.output.log_every, b.output.log_every);
  EXPECT_EQ(a.output.echo_config, b.output.echo_config);
  EXPECT_EQ(a.trace.input, b.trace.input);
  EXPECT_EQ(a.trace.output, b.trace.output);
  EXPECT_EQ(a.bench.warmup, b.bench.warmup);
  EXPECT_EQ(a.bench.iterations, b.bench.iterations);
  EXPECT_EQ(a.routing.aux_gshard_loss_coef, b.routing.aux_gshard_loss_coef);
  EXPECT_EQ(a.routing.importance_loss_coef, b.routing.importance_loss_coef);
  EXPECT_EQ(a.routing.load_loss_coef, b.routing.load_loss_coef);
  EXPECT_EQ(a.routing.jitter_eps, b.routing.jitter_eps);
  EXPECT_EQ(a.routing.random_routing, b.routing.random_routing);
  EXPECT_EQ(a.routing.bias_update_rate, b.routing.bias_update_rate);
  EXPECT_EQ(a.routing.dispatch, b.routing.dispatch);
  EXPECT_EQ(a.routing.score, b.routing.score);
  EXPECT_EQ(a.routing.aux_scope, b.routing.aux_scope);
  EXPECT_EQ(a.routing.shared_experts, b.routing.shared_experts);
  EXPECT_EQ(a.routing.base_tolerance, b.routing.base_tolerance);
  EXPECT_EQ(a.routing.expert_groups, b.routing.expert_groups);
  EXPECT_EQ(a.routing.group_limit, b.routing.group_limit);
  EXPECT_EQ(a.checkpoint.every, b.checkpoint.every);
  EXPECT_EQ(a.checkpoint.file, b.checkpoint.file);
  EXPECT_EQ(a.checkpoint.resume, b.checkpoint.resume);
  EXPECT_EQ(a.output.loads_every, b.output.loads_every);
  EXPECT_EQ(a.output.traffic_every, b.output.traffic_every);
  EXPECT_EQ(a.cluster.file, b.cluster.file);
  EXPECT_EQ(a.cluster.output, b.cluster.output);
  EXPECT_EQ(a.cluster.name, b.cluster.name);
  EXPECT_EQ(a.cluster.measured, b.cluster.measured);
  EXPECT_EQ(a.cluster.ranks_per_node, b.cluster.ranks_per_node);
  EXPECT_EQ(a.cluster.intra_latency_us, b.cluster.intra_latency_us);
  EXPECT_EQ(a.cluster.intra_bandwidth_GBps, b.cluster.intra_bandwidth_GBps);
  EXPECT_EQ(a.cluster.inter_latency_us, b.cluster.inter_latency_us);
  EXPECT_EQ(a.cluster.inter_bandwidth_GBps, b.cluster.inter_bandwidth_GBps);
  EXPECT_EQ(a.cluster.gemm_GFLOPs, b.cluster.gemm_GFLOPs);
  EXPECT_EQ(a.cluster.gemm_GFLOPs_float64, b.cluster.gemm_GFLOPs_float64);
  EXPECT_EQ(a.cluster.memory_bandwidth_GBps, b.cluster.memory_bandwidth_GBps);
  EXPECT_EQ(a.cluster.route_ns_per_score, b.cluster.route_ns_per_score);
  EXPECT_EQ(a.cluster.step_overhead_us, b.cluster.step_overhead_us);
  EXPECT_EQ(a.cluster.optimizer_ns_per_param, b.cluster.optimizer_ns_per_param);
  EXPECT_EQ(a.cluster.data_ns_per_value, b.cluster.data_ns_per_value);
  EXPECT_EQ(a.cluster.inter_burst_bytes, b.cluster.inter_burst_bytes);
  EXPECT_EQ(a.cluster.inter_burst_GBps, b.cluster.inter_burst_GBps);
  EXPECT_EQ(a.cluster.shared_cores, b.cluster.shared_cores);
  EXPECT_EQ(a.cluster.intra_fit_rel_rms, b.cluster.intra_fit_rel_rms);
  EXPECT_EQ(a.cluster.inter_fit_rel_rms, b.cluster.inter_fit_rel_rms);
  EXPECT_EQ(a.cluster.gemm_fit_rel_rms, b.cluster.gemm_fit_rel_rms);
  EXPECT_EQ(a.cluster.expert_table, b.cluster.expert_table);
  EXPECT_EQ(a.cluster.calibrate_expert_shapes, b.cluster.calibrate_expert_shapes);
  EXPECT_EQ(a.simulate.ranks, b.simulate.ranks);
  EXPECT_EQ(a.simulate.ranks_per_node, b.simulate.ranks_per_node);
  EXPECT_EQ(a.simulate.workload, b.simulate.workload);
  EXPECT_EQ(a.simulate.seed, b.simulate.seed);
  EXPECT_EQ(a.simulate.scaling, b.simulate.scaling);
  EXPECT_EQ(a.simulate.base_ranks, b.simulate.base_ranks);
  EXPECT_EQ(a.simulate.algorithm, b.simulate.algorithm);
  EXPECT_EQ(a.simulate.steps, b.simulate.steps);
  EXPECT_EQ(a.simulate.output, b.simulate.output);
  EXPECT_EQ(a.simulate.validate, b.simulate.validate);
}

// Every field differs from its default, and doubles need all 17 digits to survive.
Config all_non_default() {
  Config c;
  c.model.d_model = 48;
  c.model.d_ff = 96;
  c.model.layers = 3;
  c.model.activation = Activation::gelu;
  c.model.precision = Precision::float64;
  c.model.init_scale = 0.1;
  c.routing.num_experts = 8;
  c.routing.rule = RoutingRuleKind::switch_top1;
  c.routing.k = 1;
  c.routing.renormalize = true;
  c.routing.capacity_factor = Rational{11, 10};
  c.routing.eval_capacity_factor = Rational{5, 10};
  c.routing.min_capacity = 3;
  c.routing.dropless = true;
  c.routing.drop_policy = DropPolicyKind::probs;
  c.routing.group_size = 16;
  c.routing.aux_loss_coef = 1.0 / 3.0;
  c.routing.z_loss_coef = 1e-3;
  c.routing.score = ScoreKind::sigmoid;
  c.routing.aux_scope = AuxScope::batch;
  c.routing.shared_experts = 2;
  c.routing.base_tolerance = 1e-3;
  c.training.steps = 7;
  c.training.seed = std::numeric_limits<std::uint64_t>::max();
  c.training.optimizer = OptimizerKind::sgd;
  c.training.learning_rate = 0.12345678901234568;
  c.training.momentum = 0.5;
  c.training.beta1 = 0.8;
  c.training.beta2 = 0.99;
  c.training.epsilon = 1e-12;
  c.training.weight_decay = 0.01;
  c.training.eval_every = 0;
  c.data.task = "other_task";
  c.data.tokens_per_step = 2048;
  c.data.eval_tokens = 512;
  c.data.input_dim = 64;
  c.data.num_clusters = 8;
  c.data.signal_strength = 2.5;
  c.data.center_strength = -0.75;
  c.data.feature_noise = 0.25;
  c.data.noise_std = 5e-324;  // the smallest denormal
  c.output.file = "runs/a b.h5";
  c.output.log_every = 0;
  c.output.echo_config = false;
  c.trace.input = "in.h5";
  c.trace.output = "out.h5";
  c.bench.warmup = 0;
  c.bench.iterations = 11;
  c.routing.aux_gshard_loss_coef = 0.25;
  c.routing.importance_loss_coef = 0.125;
  c.routing.load_loss_coef = 0.0625;
  c.routing.jitter_eps = 0.01;
  c.routing.random_routing = false;
  c.routing.bias_update_rate = 1e-3;
  c.routing.dispatch = DispatchKind::alltoall_padded;
  c.routing.expert_groups = 4;
  c.routing.group_limit = 2;
  c.routing.redundant_experts = 8;
  c.routing.rebalance_every = 25;
  c.routing.overlap_degree = 2;
  c.checkpoint.every = 10;
  c.checkpoint.file = "ck.h5";
  c.checkpoint.resume = true;
  c.output.loads_every = 0;
  c.output.traffic_every = 7;
  c.cluster.file = "m.ini";
  c.cluster.output = "o.ini";
  c.cluster.name = "box";
  c.cluster.measured = "today";
  c.cluster.ranks_per_node = 3;
  c.cluster.intra_latency_us = 0.25;
  c.cluster.intra_bandwidth_GBps = 7.5;
  c.cluster.inter_latency_us = 4.5;
  c.cluster.inter_bandwidth_GBps = 25;
  c.cluster.gemm_GFLOPs = 123;
  c.cluster.gemm_GFLOPs_float64 = 61;
  c.cluster.memory_bandwidth_GBps = 33;
  c.cluster.route_ns_per_score = 2.5;
  c.cluster.step_overhead_us = 10;
  c.cluster.optimizer_ns_per_param = 1.5;
  c.cluster.data_ns_per_value = 12.5;
  c.cluster.inter_burst_bytes = 125000;
  c.cluster.inter_burst_GBps = 40;
  c.cluster.shared_cores = 2;
  c.cluster.intra_fit_rel_rms = 0.1;
  c.cluster.inter_fit_rel_rms = 0.2;
  c.cluster.gemm_fit_rel_rms = 0.3;
  c.cluster.expert_table = "float32 256x1024 8 0.05 0.1; float64 64x256 16 0.02 0.04";
  c.cluster.calibrate_expert_shapes = "128x512,64x256";
  c.simulate.ranks = "4,8";
  c.simulate.ranks_per_node = 2;
  c.simulate.workload = "zipf:1.5";
  c.simulate.seed = 9;
  c.simulate.scaling = "strong";
  c.simulate.base_ranks = 4;
  c.simulate.algorithm = "hierarchical";
  c.simulate.steps = 3;
  c.simulate.output = "p.h5";
  c.simulate.validate = "r.h5";
  return c;
}

// The "key = value" lines of an INI text, without comments, blanks and section headers.
std::vector<std::string> value_lines(const std::string& ini) {
  std::vector<std::string> lines;
  std::istringstream in(ini);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] != '#' && line[0] != '[') lines.push_back(line);
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------
// Defaults and parsing

TEST(ConfigParse, EmptyInputGivesDefaults) {
  const Config c = parse_config("", "empty.ini", {});
  expect_same(c, Config{});
  EXPECT_EQ(c.model.d_model, 64);
  EXPECT_EQ(c.routing.k, 2);
  EXPECT_EQ(c.routing.capacity_factor, (Rational{125, 100}));
  EXPECT_EQ(c.routing.eval_capacity_factor, (Rational{2, 1}));
  EXPECT_EQ(c.training.optimizer, OptimizerKind::adam);
  EXPECT_EQ(c.data.task, "clusters");
  EXPECT_EQ(c.output.file, "moesim_result.h5");
}

TEST(ConfigParse, DefaultsAreValidForRunAndNeedTracesForRoute) {
  const Config c;
  EXPECT_NO_THROW(validate(c, Mode::run, 1));
  EXPECT_NO_THROW(validate(c, Mode::run, 2));
  EXPECT_NO_THROW(validate(c, Mode::run, 4));
  EXPECT_THROW(validate(c, Mode::route, 1), ConfigError);
}

TEST(ConfigParse, IniWithEverySection) {
  const std::string ini = R"(# a comment line
[model]
d_model = 32   # trailing comment
d_ff = 128
layers = 2
activation = gelu
precision = float64
init_scale = 0.5

[routing]
num_experts = 8
rule = switch
k = 1
renormalize = yes
capacity_factor = 1.10
eval_capacity_factor = 0
min_capacity = 4
dropless = on
drop_policy = probs
group_size = 32
aux_loss_coef = 0.02
z_loss_coef = 1e-3

[training]
steps = 10
seed = 42
optimizer = sgd
learning_rate = 0.1
momentum = 0.8
beta1 = 0.7
beta2 = 0.95
epsilon = 1e-6
weight_decay = 0.001
eval_every = 5

[data]
task = clusters
tokens_per_step = 256
eval_tokens = 512
input_dim = 20
num_clusters = 5
signal_strength = 2
center_strength = 3
feature_noise = 0.25
noise_std = 0.05

[output]
file = out/run1.h5
log_every = 1
echo_config = false

[trace]
input = logits.h5
output = routed.h5
)";
  const Config c = parse_config(ini, "every.ini", {});
  EXPECT_EQ(c.model.d_model, 32);
  EXPECT_EQ(c.model.d_ff, 128);
  EXPECT_EQ(c.model.layers, 2);
  EXPECT_EQ(c.model.activation, Activation::gelu);
  EXPECT_EQ(c.model.precision, Precision::float64);
  EXPECT_EQ(c.model.init_scale, 0.5);
  EXPECT_EQ(c.routing.num_experts, 8);
  EXPECT_EQ(c.routing.rule, RoutingRuleKind::switch_top1);
  EXPECT_EQ(c.routing.k, 1);
  EXPECT_TRUE(c.routing.renormalize);
  EXPECT_EQ(c.routing.capacity_factor, (Rational{11, 10}));
  EXPECT_EQ(c.routing.eval_capacity_factor, (Rational{0, 1}));
  EXPECT_EQ(c.routing.min_capacity, 4);
  EXPECT_TRUE(c.routing.dropless);
  EXPECT_EQ(c.routing.drop_policy, DropPolicyKind::probs);
  EXPECT_EQ(c.routing.group_size, 32);
  EXPECT_EQ(c.routing.aux_loss_coef, 0.02);
  EXPECT_EQ(c.routing.z_loss_coef, 1e-3);
  EXPECT_EQ(c.training.steps, 10);
  EXPECT_EQ(c.training.seed, 42u);
  EXPECT_EQ(c.training.optimizer, OptimizerKind::sgd);
  EXPECT_EQ(c.training.learning_rate, 0.1);
  EXPECT_EQ(c.training.momentum, 0.8);
  EXPECT_EQ(c.training.beta1, 0.7);
  EXPECT_EQ(c.training.beta2, 0.95);
  EXPECT_EQ(c.training.epsilon, 1e-6);
  EXPECT_EQ(c.training.weight_decay, 0.001);
  EXPECT_EQ(c.training.eval_every, 5);
  EXPECT_EQ(c.data.task, "clusters");
  EXPECT_EQ(c.data.tokens_per_step, 256);
  EXPECT_EQ(c.data.eval_tokens, 512);
  EXPECT_EQ(c.data.input_dim, 20);
  EXPECT_EQ(c.data.num_clusters, 5);
  EXPECT_EQ(c.data.signal_strength, 2.0);
  EXPECT_EQ(c.data.center_strength, 3.0);
  EXPECT_EQ(c.data.feature_noise, 0.25);
  EXPECT_EQ(c.data.noise_std, 0.05);
  EXPECT_EQ(c.output.file, "out/run1.h5");
  EXPECT_EQ(c.output.log_every, 1);
  EXPECT_FALSE(c.output.echo_config);
  EXPECT_EQ(c.trace.input, "logits.h5");
  EXPECT_EQ(c.trace.output, "routed.h5");
  EXPECT_NO_THROW(validate(c, Mode::run, 2));
}

TEST(ConfigParse, CommandLineOverridesTheFile) {
  const std::string ini = "[routing]\nk = 1\ncapacity_factor = 1.5\n[training]\nsteps = 9\n";
  const Config c = parse_config(ini, "f.ini", {"--routing.k=3", "--routing.capacity_factor=0.75"});
  EXPECT_EQ(c.routing.k, 3);
  EXPECT_EQ(c.routing.capacity_factor, (Rational{75, 100}));
  EXPECT_EQ(c.training.steps, 9);  // untouched by the command line: the file's value
}

TEST(ConfigParse, KeySpaceValueForm) {
  const Config c = parse_config("[routing]\nk = 1\n", "f.ini",
                                {"--routing.k", "4", "--training.optimizer", "sgd",
                                 "--data.center_strength", "-2.5", "--output.file=x.h5"});
  EXPECT_EQ(c.routing.k, 4);
  EXPECT_EQ(c.training.optimizer, OptimizerKind::sgd);
  EXPECT_EQ(c.data.center_strength, -2.5);  // a leading '-' is a value, not an option
  EXPECT_EQ(c.output.file, "x.h5");
}

TEST(ConfigParse, BareBooleanFlagMeansTrue) {
  const Config c = parse_config("[routing]\ndropless = false\n", "f.ini",
                                {"--routing.dropless", "--routing.k=1"});
  EXPECT_TRUE(c.routing.dropless);
  EXPECT_EQ(c.routing.k, 1);
}

TEST(ConfigParse, MissingValueOnTheCommandLine) {
  const std::string msg = parse_error("", {"--routing.k"});
  EXPECT_NE(msg.find("routing.k"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing value"), std::string::npos) << msg;
}

TEST(ConfigParse, PositionalTokenIsRejected) {
  const std::string msg = parse_error("", {"params.ini"});
  EXPECT_NE(msg.find("params.ini"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--section.key=value"), std::string::npos) << msg;
  EXPECT_THROW(parse_config("", "f.ini", {"-k=2"}), ConfigError);
}

TEST(ConfigParse, NoPrefixGuessingOnTheCommandLine) {
  // Boost's default style would accept a unique prefix; a typo must not silently set a key.
  const std::string msg = parse_error("", {"--routing.capacity=2"});
  EXPECT_NE(msg.find("unknown key"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------------
// Error messages

TEST(ConfigErrorText, WhatNamesKeyValueAndAllowed) {
  const ConfigError e("routing.k", "7", "must be an integer in [1, routing.num_experts = 4]");
  EXPECT_STREQ(e.what(),
               "bad parameter routing.k = 7: must be an integer in [1, routing.num_experts = 4]");
  EXPECT_EQ(e.key(), "routing.k");
  EXPECT_EQ(e.value(), "7");
  EXPECT_EQ(e.allowed(), "must be an integer in [1, routing.num_experts = 4]");
}

TEST(ConfigErrors, UnknownKeyInFileSuggestsTheClosest) {
  const std::string msg = parse_error("[routing]\ncapacity_factr = 1.5\n");
  EXPECT_NE(msg.find("routing.capacity_factr = 1.5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown key; see `moesim --help` for the list"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean routing.capacity_factor?"), std::string::npos) << msg;
  EXPECT_NE(msg.find("experiments/test.ini:2"), std::string::npos) << msg;
}

TEST(ConfigErrors, UnknownKeyOnCommandLineSuggestsTheClosest) {
  const std::string msg = parse_error("", {"--training.learnig_rate=0.1"});
  EXPECT_NE(msg.find("training.learnig_rate = 0.1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean training.learning_rate?"), std::string::npos) << msg;
}

TEST(ConfigErrors, KeyInTheWrongSectionSuggestsTheRightOne) {
  const std::string msg = parse_error("[model]\nnum_experts = 8\n");
  EXPECT_NE(msg.find("model.num_experts"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean routing.num_experts?"), std::string::npos) << msg;
}

TEST(ConfigErrors, FarOffKeyHasNoSuggestion) {
  const std::string msg = parse_error("[zzz]\nqqqqqqqqqqqq = 1\n");
  EXPECT_NE(msg.find("zzz.qqqqqqqqqqqq"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("did you mean"), std::string::npos) << msg;
}

TEST(ConfigErrors, BadInteger) {
  for (const std::string bad : {"1.5", "abc", "12x", "", "99999999999999999999"}) {
    const std::string msg = parse_error("[routing]\nk = " + bad + "\n");
    EXPECT_NE(msg.find("routing.k = " + (bad.empty() ? std::string("\"\"") : bad)),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("integer"), std::string::npos) << msg;
    EXPECT_NE(msg.find("experiments/test.ini:2"), std::string::npos) << msg;
  }
}

TEST(ConfigErrors, BadDouble) {
  for (const std::string bad : {"nan", "inf", "-inf", "0.1.2", "1e999", "fast", "1e"}) {
    const std::string msg = parse_error("", {"--training.learning_rate=" + bad});
    EXPECT_NE(msg.find("training.learning_rate = " + bad), std::string::npos) << msg;
    EXPECT_NE(msg.find("finite number"), std::string::npos) << msg;
    EXPECT_NE(msg.find("command line"), std::string::npos) << msg;
  }
}

TEST(ConfigErrors, BadBool) {
  const std::string msg = parse_error("[output]\necho_config = maybe\n");
  EXPECT_NE(msg.find("output.echo_config = maybe"), std::string::npos) << msg;
  EXPECT_NE(msg.find("true|false|1|0|yes|no|on|off"), std::string::npos) << msg;
}

TEST(ConfigErrors, BadEnumsListTheAllowedNames) {
  struct Case {
    std::string key, allowed;
  };
  for (const Case& c :
       {Case{"model.activation", "relu|gelu"}, Case{"model.precision", "float32|float64"},
        Case{"routing.rule", "topk|switch"}, Case{"routing.drop_policy", "position|probs"},
        Case{"training.optimizer", "sgd|adam"}}) {
    const std::string msg = parse_error("", {"--" + c.key + "=bogus"});
    EXPECT_NE(msg.find(c.key + " = bogus"), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.allowed), std::string::npos) << msg;
  }
  // Names are exact: the C++ enumerator name is not the INI name.
  EXPECT_THROW(parse_config("", "f.ini", {"--routing.rule=switch_top1"}), ConfigError);
}

TEST(ConfigErrors, BadRationalCapacityFactor) {
  const std::string msg = parse_error("[routing]\ncapacity_factor = 1,25\n");
  EXPECT_NE(msg.find("routing.capacity_factor = 1,25"), std::string::npos) << msg;
  EXPECT_NE(msg.find("decimal"), std::string::npos) << msg;
}

TEST(ConfigErrors, DuplicateKeyInFile) {
  const std::string msg = parse_error("[routing]\nk = 1\n\n[routing]\nk = 2\n");
  EXPECT_NE(msg.find("routing.k"), std::string::npos) << msg;
  EXPECT_NE(msg.find("twice"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lines 2 and 5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("experiments/test.ini"), std::string::npos) << msg;
}

TEST(ConfigErrors, DuplicateKeyOnCommandLine) {
  const std::string msg = parse_error("", {"--routing.k=1", "--routing.k", "2"});
  EXPECT_NE(msg.find("routing.k"), std::string::npos) << msg;
  EXPECT_NE(msg.find("twice"), std::string::npos) << msg;
}

TEST(ConfigErrors, NegativeSeedIsNotWrapped) {
  const std::string msg = parse_error("[training]\nseed = -1\n");
  EXPECT_NE(msg.find("training.seed = -1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("18446744073709551615"), std::string::npos) << msg;
  EXPECT_EQ(parse_config("[training]\nseed = 18446744073709551615\n", "f.ini", {}).training.seed,
            std::numeric_limits<std::uint64_t>::max());
}

TEST(ConfigErrors, MalformedIniLines) {
  const std::string semicolon = parse_error("[routing]\n; a comment\n");
  EXPECT_NE(semicolon.find("experiments/test.ini:2"), std::string::npos) << semicolon;
  EXPECT_NE(semicolon.find("`#`"), std::string::npos) << semicolon;
  const std::string no_equals = parse_error("[routing]\nk 2\n");
  EXPECT_NE(no_equals.find("experiments/test.ini:2"), std::string::npos) << no_equals;
  EXPECT_THROW(parse_config("[]\nk = 1\n", "f.ini", {}), ConfigError);
}

// ---------------------------------------------------------------------------------------------
// Rational

TEST(RationalTest, ParseIsExact) {
  EXPECT_EQ(Rational::parse("1.1"), (Rational{11, 10}));
  EXPECT_EQ(Rational::parse("1.25"), (Rational{125, 100}));
  EXPECT_EQ(Rational::parse("1.250"), (Rational{125, 100}));  // canonical: no trailing zeros
  EXPECT_EQ(Rational::parse("2"), (Rational{2, 1}));
  EXPECT_EQ(Rational::parse("2.0"), (Rational{2, 1}));
  EXPECT_EQ(Rational::parse("+0.5"), (Rational{5, 10}));
  EXPECT_EQ(Rational::parse("-0.5"), (Rational{-5, 10}));
  EXPECT_EQ(Rational::parse("0"), (Rational{0, 1}));
  EXPECT_EQ(Rational::parse("-0.000"), (Rational{0, 1}));
  EXPECT_EQ(Rational::parse(".5"), (Rational{5, 10}));
  EXPECT_EQ(Rational::parse("3."), (Rational{3, 1}));
}

TEST(RationalTest, Exponents) {
  EXPECT_EQ(Rational::parse("1e-1"), (Rational{1, 10}));
  EXPECT_EQ(Rational::parse("1.5E2"), (Rational{150, 1}));
  EXPECT_EQ(Rational::parse("125e-2"), (Rational{125, 100}));
  EXPECT_EQ(Rational::parse("12.5e-1"), (Rational{125, 100}));
  EXPECT_EQ(Rational::parse("1e+3"), (Rational{1000, 1}));
  EXPECT_EQ(Rational::parse("0e999999999999"), (Rational{0, 1}));
}

TEST(RationalTest, ValueIsTheDecimal) {
  EXPECT_DOUBLE_EQ(Rational::parse("1.25").value(), 1.25);
  EXPECT_DOUBLE_EQ(Rational::parse("-3e-2").value(), -0.03);
}

TEST(RationalTest, RejectsGarbage) {
  for (const std::string bad : {"", "nan", "inf", "-inf", "abc", "1.2.3", "1e", "e5", ".", "+", "-",
                                "1,5", " 1", "1 ", "0x10", "1/2", "--1", "+-1"}) {
    EXPECT_THROW(Rational::parse(bad), std::invalid_argument) << "'" << bad << "'";
  }
}

TEST(RationalTest, OverflowThrows) {
  EXPECT_THROW(Rational::parse("1e19"), std::invalid_argument);
  EXPECT_THROW(Rational::parse("12345678901234567890"), std::invalid_argument);
  EXPECT_THROW(Rational::parse("1e-19"), std::invalid_argument);
  EXPECT_THROW(Rational::parse("1e99999999999999999999999"), std::invalid_argument);
  EXPECT_NO_THROW(Rational::parse("1e18"));
  EXPECT_NO_THROW(Rational::parse("1e-18"));
  // Trailing zeros carry no information and must not count towards the range.
  EXPECT_EQ(Rational::parse("1.000000000000000000000000000000"), (Rational{1, 1}));
}

TEST(RationalTest, StrIsTheShortestDecimal) {
  EXPECT_EQ((Rational{125, 100}).str(), "1.25");
  EXPECT_EQ((Rational{2, 1}).str(), "2");
  EXPECT_EQ((Rational{5, 10}).str(), "0.5");
  EXPECT_EQ((Rational{11, 10}).str(), "1.1");
  EXPECT_EQ((Rational{1250, 1000}).str(), "1.25");
  EXPECT_EQ((Rational{-5, 10}).str(), "-0.5");
  EXPECT_EQ((Rational{0, 1}).str(), "0");
  EXPECT_EQ((Rational{1, 8}).str(), "0.125");  // not a power-of-ten denominator, still finite
  EXPECT_EQ((Rational{3, -4}).str(), "-0.75");
  EXPECT_EQ((Rational{1, 3}).str(), "1/3");  // no finite decimal exists
  EXPECT_EQ(Rational::parse("1e-18").str(), "0.000000000000000001");
}

TEST(RationalTest, StrParsesBack) {
  for (const std::string s : {"1.25", "0.001", "-7.5", "1000000", "3.1415926535"}) {
    const Rational r = Rational::parse(s);
    EXPECT_EQ(r.str(), s);
    EXPECT_EQ(Rational::parse(r.str()), r);
  }
}

// ---------------------------------------------------------------------------------------------
// Validation

TEST(ConfigValidate, NumExpertsDivisibleByRanks) {
  Config c;
  c.routing.num_experts = 4;
  c.data.tokens_per_step = 3 * 128;
  c.data.eval_tokens = 3 * 128;
  const std::string msg = validate_error(c, Mode::run, 3);
  EXPECT_NE(msg.find("routing.num_experts = 4"), std::string::npos) << msg;
  EXPECT_NE(msg.find("divisible by the number of MPI ranks (3)"), std::string::npos) << msg;
  // The replay has no expert parallelism, so any rank count is fine there.
  c.trace.input = "in.h5";
  c.trace.output = "out.h5";
  EXPECT_NO_THROW(validate(c, Mode::route, 3));
}

// Redundant experts: E + r slots must spread evenly over the ranks; E itself need not.
TEST(ConfigValidate, RedundantExpertsSlotsDivisibleByRanks) {
  Config c;
  c.routing.num_experts = 4;
  c.routing.redundant_experts = 2;
  c.data.tokens_per_step = 4 * 128;
  c.data.eval_tokens = 4 * 128;
  const std::string msg = validate_error(c, Mode::run, 4);
  EXPECT_NE(msg.find("bad parameter routing.redundant_experts = 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(4 + 2) divisible by the number of MPI ranks (4)"), std::string::npos) << msg;
  c.routing.redundant_experts = 4;  // 8 slots on 4 ranks
  EXPECT_NO_THROW(validate(c, Mode::run, 4));
  c.routing.num_experts = 3;  // 3 + 1 slots on 4 ranks: E < P needs no replica groups here
  c.routing.redundant_experts = 1;
  EXPECT_NO_THROW(validate(c, Mode::run, 4));
  c.routing.redundant_experts = -1;
  EXPECT_NE(validate_error(c, Mode::run, 1).find("routing.redundant_experts = -1"),
            std::string::npos);
  c.routing.redundant_experts = 0;
  c.routing.rebalance_every = -5;
  EXPECT_NE(validate_error(c, Mode::run, 1).find("routing.rebalance_every = -5"),
            std::string::npos);
}

TEST(ConfigValidate, OverlapDegree) {
  Config c;
  c.routing.num_experts = 8;
  c.routing.overlap_degree = 4;  // 4 experts per rank on 2 ranks
  EXPECT_NO_THROW(validate(c, Mode::run, 2));
  const std::string many = validate_error(c, Mode::run, 4);  // 2 experts per rank
  EXPECT_NE(many.find("routing.overlap_degree = 4"), std::string::npos) << many;
  EXPECT_NE(many.find("at most the experts per rank (2"), std::string::npos) << many;
  c.routing.overlap_degree = 0;
  EXPECT_NE(validate_error(c, Mode::run, 1).find("routing.overlap_degree = 0"), std::string::npos);
  c.routing.overlap_degree = 2;
  c.routing.dispatch = DispatchKind::hierarchical;
  const std::string hier = validate_error(c, Mode::run, 2);
  EXPECT_NE(hier.find("routing.dispatch = alltoallv"), std::string::npos) << hier;
  c.routing.dispatch = DispatchKind::alltoall_padded;
  EXPECT_NE(validate_error(c, Mode::run, 2).find("routing.overlap_degree = 2"), std::string::npos);
}

TEST(ConfigValidate, KAboveNumExperts) {
  Config c;
  c.routing.k = 7;
  const std::string msg = validate_error(c, Mode::run, 1);
  EXPECT_NE(
      msg.find("bad parameter routing.k = 7: must be an integer in [1, routing.num_experts = 4]"),
      std::string::npos)
      << msg;
  c.routing.k = 0;
  EXPECT_THROW(validate(c, Mode::run, 1), ConfigError);
}

TEST(ConfigValidate, NegativeCapacityFactor) {
  Config c = parse_config("", "f.ini", {"--routing.capacity_factor=-0.5"});
  const std::string msg = validate_error(c, Mode::run, 1);
  EXPECT_NE(msg.find("routing.capacity_factor = -0.5"), std::string::npos) << msg;
  EXPECT_NE(msg.find(">= 0"), std::string::npos) << msg;
  c = parse_config("", "f.ini", {"--routing.eval_capacity_factor=-1"});
  EXPECT_NE(validate_error(c, Mode::run, 1).find("routing.eval_capacity_factor"),
            std::string::npos);
  c = parse_config("", "f.ini", {"--routing.capacity_factor=0"});  // 0 = dropless is allowed
  EXPECT_NO_THROW(validate(c, Mode::run, 1));
}

TEST(ConfigValidate, SwitchNeedsKOne) {
  Config c;
  c.routing.rule = RoutingRuleKind::switch_top1;
  c.routing.k = 2;
  const std::string msg = validate_error(c, Mode::run, 1);
  EXPECT_NE(msg.find("routing.k = 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("routing.rule = switch"), std::string::npos) << msg;
  c.routing.k = 1;
  EXPECT_NO_THROW(validate(c, Mode::run, 1));
}

TEST(ConfigValidate, GroupSizeMustDivideEachRanksShare) {
  Config c;
  c.data.tokens_per_step = 1024;
  c.routing.group_size = 48;
  const std::string msg = validate_error(c, Mode::run, 4);
  EXPECT_NE(msg.find("routing.group_size = 48"), std::string::npos) << msg;
  EXPECT_NE(msg.find("256"), std::string::npos) << msg;  // the share 1024 / 4
  c.routing.group_size = 64;
  EXPECT_NO_THROW(validate(c, Mode::run, 4));
  // It must also tile the evaluation share.
  c.data.eval_tokens = 4 * 96;
  const std::string eval_msg = validate_error(c, Mode::run, 4);
  EXPECT_NE(eval_msg.find("data.eval_tokens"), std::string::npos) << eval_msg;
}

TEST(ConfigValidate, TokensDivisibleByRanks) {
  Config c;
  c.routing.num_experts = 6;
  c.routing.k = 2;
  c.data.tokens_per_step = 1000;
  const std::string msg = validate_error(c, Mode::run, 3);
  EXPECT_NE(msg.find("data.tokens_per_step = 1000"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(3)"), std::string::npos) << msg;
}

TEST(ConfigValidate, RouteNeedsTraceFiles) {
  Config c;
  c.trace.output = "out.h5";
  const std::string msg = validate_error(c, Mode::route, 1);
  EXPECT_NE(msg.find("trace.input"), std::string::npos) << msg;
  c.trace.input = "in.h5";
  c.trace.output = "";
  EXPECT_NE(validate_error(c, Mode::route, 1).find("trace.output"), std::string::npos);
  c.trace.output = "in.h5";
  EXPECT_NE(validate_error(c, Mode::route, 1).find("must differ"), std::string::npos);
  c.trace.output = "out.h5";
  EXPECT_NO_THROW(validate(c, Mode::route, 1));
}

TEST(ConfigValidate, RouteIgnoresTrainingAndData) {
  Config c;
  c.trace.input = "in.h5";
  c.trace.output = "out.h5";
  c.training.learning_rate = -1.0;
  c.data.tokens_per_step = 0;
  c.output.file = "";
  EXPECT_NO_THROW(validate(c, Mode::route, 1));
  EXPECT_THROW(validate(c, Mode::run, 1), ConfigError);
}

TEST(ConfigValidate, RangeChecksNameKeyValueAndLimit) {
  struct Case {
    std::function<void(Config&)> set;
    std::string expected;  // a substring of the message
  };
  const std::vector<Case> cases = {
      {[](Config& c) { c.model.d_model = 0; }, "model.d_model = 0: must be an integer >= 1"},
      {[](Config& c) { c.model.d_ff = -3; }, "model.d_ff = -3"},
      {[](Config& c) { c.model.layers = 0; }, "model.layers = 0"},
      {[](Config& c) { c.model.init_scale = 0.0; }, "model.init_scale = 0"},
      {[](Config& c) { c.routing.num_experts = 0; }, "routing.num_experts = 0"},
      {[](Config& c) { c.routing.min_capacity = -1; }, "routing.min_capacity = -1"},
      {[](Config& c) { c.routing.group_size = -1; }, "routing.group_size = -1"},
      {[](Config& c) { c.routing.aux_loss_coef = -0.1; }, "routing.aux_loss_coef = -0.1"},
      {[](Config& c) { c.routing.z_loss_coef = std::numeric_limits<double>::infinity(); },
       "routing.z_loss_coef = inf"},
      {[](Config& c) { c.training.steps = 0; }, "training.steps = 0"},
      {[](Config& c) { c.training.learning_rate = 0.0; }, "training.learning_rate = 0"},
      {[](Config& c) { c.training.momentum = 1.0; },
       "training.momentum = 1: must be a number in [0, 1)"},
      {[](Config& c) { c.training.beta1 = -0.1; }, "training.beta1 = -0.1"},
      {[](Config& c) { c.training.beta2 = 1.0; }, "training.beta2 = 1"},
      {[](Config& c) { c.training.epsilon = 0.0; }, "training.epsilon = 0"},
      {[](Config& c) { c.training.weight_decay = -1e-3; }, "training.weight_decay = -0.001"},
      {[](Config& c) { c.training.eval_every = -1; }, "training.eval_every = -1"},
      {[](Config& c) { c.data.task = "mnist"; }, "data.task = mnist: must be one of clusters"},
      {[](Config& c) { c.data.tokens_per_step = 0; }, "data.tokens_per_step = 0"},
      {[](Config& c) { c.data.eval_tokens = 0; }, "data.eval_tokens = 0"},
      {[](Config& c) { c.data.num_clusters = 0; }, "data.num_clusters = 0"},
      {[](Config& c) { c.data.input_dim = 7; },
       "data.input_dim = 7: must be an integer >= 2 * data.num_clusters"},
      {[](Config& c) { c.data.noise_std = -0.5; }, "data.noise_std = -0.5"},
      {[](Config& c) { c.output.file = ""; }, "output.file = \"\""},
      {[](Config& c) { c.output.file = "a#b.h5"; }, "output.file = a#b.h5"},
      {[](Config& c) { c.output.log_every = -2; }, "output.log_every = -2"},
  };
  for (const Case& k : cases) {
    Config c;
    k.set(c);
    const std::string msg = validate_error(c, Mode::run, 1);
    EXPECT_NE(msg.find(k.expected), std::string::npos)
        << "message: " << msg << "\nexpected: " << k.expected;
  }
}

TEST(ConfigValidate, NegativeSizeFromTheCommandLine) {
  const Config c = parse_config("", "f.ini", {"--model.d_model", "-1"});
  const std::string msg = validate_error(c, Mode::run, 1);
  EXPECT_NE(msg.find("model.d_model = -1"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------------
// Every problem in one report (issue 7 item 11)

bool has_problem(const ConfigError& e, const std::string& key, const std::string& value) {
  for (const auto& p : e.problems())
    if (p.key == key && p.value == value) return true;
  return false;
}

TEST(ConfigReport, ValidateListsEveryProblemOnce) {
  Config c;
  c.model.d_model = 0;
  c.routing.k = 9;
  c.training.learning_rate = -1;
  c.data.tokens_per_step = 1001;
  try {
    validate(c, Mode::run, 2);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.problems().size(), 4u) << e.what();
    EXPECT_EQ(e.key(), "model.d_model");  // the first problem, in check order
    EXPECT_EQ(e.value(), "0");
    EXPECT_TRUE(has_problem(e, "routing.k", "9")) << e.what();
    EXPECT_TRUE(has_problem(e, "training.learning_rate", "-1")) << e.what();
    EXPECT_TRUE(has_problem(e, "data.tokens_per_step", "1001")) << e.what();
    // One line per problem, each "bad parameter KEY = VALUE: ALLOWED".
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("4 bad parameters:", 0), 0u) << msg;
    for (const auto& p : e.problems())
      EXPECT_NE(msg.find("\n  " + p.str()), std::string::npos) << msg;
    EXPECT_EQ(std::count(msg.begin(), msg.end(), '\n'), 4) << msg;
  }
}

TEST(ConfigReport, SingleProblemKeepsTheOneLineMessage) {
  Config c;
  c.model.d_model = 0;
  const std::string msg = validate_error(c, Mode::run, 1);
  EXPECT_EQ(msg, "bad parameter model.d_model = 0: must be an integer >= 1");
}

TEST(ConfigReport, ChecksThatWouldDivideByZeroAreGuarded) {
  Config c;
  c.routing.num_experts = 0;  // `ranks % num_experts` must not run
  c.routing.group_size = 0;
  try {
    validate(c, Mode::run, 3);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(has_problem(e, "routing.num_experts", "0")) << e.what();
  }
  EXPECT_EQ(config_error([] { validate(Config{}, Mode::run, 0); }),
            "bad parameter (MPI ranks) = 0: must be >= 1");
}

TEST(ConfigReport, ParsingListsEveryBadKeyAndValue) {
  const std::string ini =
      "[routing]\ncapacity_factr = 1.5\nk = two\n[model]\nd_modell = 3\nd_ff = 8\nd_ff = 9\n"
      "just words\n";
  try {
    parse_config(ini, "p.ini", {"--training.steps=x", "--data.bogus=1", "--model.layers=2"});
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(has_problem(e, "routing.capacity_factr", "1.5")) << msg;
    EXPECT_TRUE(has_problem(e, "routing.k", "two")) << msg;
    EXPECT_TRUE(has_problem(e, "model.d_modell", "3")) << msg;
    EXPECT_TRUE(has_problem(e, "model.d_ff", "9")) << msg;  // the duplicate
    EXPECT_TRUE(has_problem(e, "p.ini:8", "just words")) << msg;
    EXPECT_TRUE(has_problem(e, "training.steps", "x")) << msg;
    EXPECT_TRUE(has_problem(e, "data.bogus", "1")) << msg;
    EXPECT_EQ(e.problems().size(), 7u) << msg;
  }
}

TEST(ConfigReport, ParseAndValidateReportTogether) {
  try {
    parse_and_validate("[model]\nd_model = abc\nd_ff = 0\n", "p.ini", {"--routing.k=7"}, Mode::run,
                       1);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(has_problem(e, "model.d_model", "abc")) << e.what();
    EXPECT_TRUE(has_problem(e, "model.d_ff", "0")) << e.what();
    EXPECT_TRUE(has_problem(e, "routing.k", "7")) << e.what();
    EXPECT_EQ(e.problems().size(), 3u) << e.what();
  }
  // A key whose value did not parse is not reported a second time by validation.
  try {
    parse_and_validate("", "p.ini", {"--routing.k=-x", "--routing.rule=switch"}, Mode::run, 1);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.problems().size(), 1u) << e.what();
    EXPECT_EQ(e.key(), "routing.k");
  }
  EXPECT_NO_THROW(parse_and_validate("", "p.ini", {"--routing.rule=switch"}, Mode::run, 2));
}

TEST(ConfigReport, RouteChecksKAgainstATraceWidthNotYetKnown) {
  // num_experts not given: route takes it from the trace, so k is not held to the default E.
  const Config c =
      parse_config("", "x", {"--routing.k=6", "--trace.input=a.h5", "--trace.output=b.h5"});
  EXPECT_NO_THROW(validate(c, Mode::route, 1));
  EXPECT_THROW(validate(c, Mode::run, 1), ConfigError);
  const Config g = parse_config(
      "", "x",
      {"--routing.k=6", "--routing.num_experts=4", "--trace.input=a.h5", "--trace.output=b.h5"});
  EXPECT_THROW(validate(g, Mode::route, 1), ConfigError);
}

TEST(ConfigReport, RequireOutsideValidateThrows) {
  EXPECT_NO_THROW(require(true, "a.b", "1", "x"));
  EXPECT_EQ(config_error([] { require(false, "a.b", "1", "must be 2"); }),
            "bad parameter a.b = 1: must be 2");
}

TEST(ConfigValidate, ExpertTableParsesSortsAndNamesBadEntries) {
  const auto t = parse_expert_table(
      " float32 256x1024 64 2.5 5 ;float32 256x1024 8 0.5 1.25; bfloat16 64x256 16 0.1 0.2;");
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[0].precision, Precision::float32);  // enum order: float32, float64, bfloat16
  EXPECT_EQ(t[0].rows, 8);
  EXPECT_DOUBLE_EQ(t[0].fwd_s, 0.5e-3);
  EXPECT_DOUBLE_EQ(t[0].bwd_s, 1.25e-3);
  EXPECT_EQ(t[1].rows, 64);
  EXPECT_EQ(t[2].precision, Precision::bfloat16);
  EXPECT_EQ(t[2].d_model, 64);
  EXPECT_EQ(t[2].d_ff, 256);
  EXPECT_TRUE(parse_expert_table("").empty());
  for (const char* bad : {"float16 256x1024 8 1 1", "float32 256x1024 8 1", "float32 256 8 1 1",
                          "float32 256x1024 0 1 1", "float32 256x1024 8 -1 1",
                          "float32 256x1024 8 1 1; float32 256x1024 8 2 2"}) {
    const std::string msg = config_error([&] { (void)parse_expert_table(bad); });
    EXPECT_NE(msg.find("cluster.expert_table"), std::string::npos) << bad << ": " << msg;
  }
  Config c;
  c.cluster.expert_table = "float32 256x1024 8 1";
  EXPECT_NE(config_error([&] { validate(c, Mode::simulate, 1); }).find("cluster.expert_table"),
            std::string::npos);
  c.cluster.expert_table = "";
  c.cluster.calibrate_expert_shapes = "128x512,64";
  EXPECT_NE(config_error([&] {
              validate(c, Mode::calibrate, 1);
            }).find("bad parameter cluster.calibrate_expert_shapes = 64"),
            std::string::npos);
  const auto shapes = parse_expert_shapes(" 128x512 , 64x256");
  ASSERT_EQ(shapes.size(), 2u);
  EXPECT_EQ(shapes[1], std::make_pair(std::int64_t{64}, std::int64_t{256}));
}

// ---------------------------------------------------------------------------------------------
// Printers

TEST(ConfigPrint, ToIniRoundTripsEveryField) {
  const Config original = all_non_default();
  // Guard for the test itself: the round trip proves nothing for a field left at its default.
  const std::vector<std::string> custom = value_lines(to_ini(original));
  const std::vector<std::string> defaults = value_lines(to_ini(Config{}));
  ASSERT_EQ(custom.size(), defaults.size());
  for (std::size_t i = 0; i < custom.size(); ++i) EXPECT_NE(custom[i], defaults[i]);

  const Config back = parse_config(to_ini(original), "x", {});
  expect_same(back, original);
  EXPECT_EQ(to_ini(back), to_ini(original));
}

TEST(ConfigPrint, ToIniRoundTripsDefaults) {
  expect_same(parse_config(to_ini(Config{}), "x", {}), Config{});
}

TEST(ConfigPrint, ToIniLayout) {
  const std::string ini = to_ini(Config{});
  ASSERT_FALSE(ini.empty());
  EXPECT_EQ(ini[0], '#');
  const std::vector<std::string> order = {"[model]", "[routing]", "[training]",
                                          "[data]",  "[output]",  "[trace]"};
  std::size_t pos = 0;
  for (const auto& s : order) {
    const std::size_t at = ini.find("\n" + s + "\n", pos);
    ASSERT_NE(at, std::string::npos) << s;
    pos = at + 1;
  }
  EXPECT_NE(ini.find("\ncapacity_factor = 1.25\n"), std::string::npos) << ini;
  EXPECT_NE(ini.find("\nrule = topk\n"), std::string::npos) << ini;
  EXPECT_NE(ini.find("\nepsilon = 1e-08\n"), std::string::npos) << ini;
  EXPECT_EQ(value_lines(ini).size(), 99u);  // every field of config.hpp
}

TEST(ConfigPrint, TableHasEveryKeyAligned) {
  Config c;
  c.routing.capacity_factor = Rational{11, 10};
  const std::string table = to_table(c);
  std::istringstream in(table);
  std::string line;
  std::size_t rows = 0, value_column = std::string::npos;
  while (std::getline(in, line)) {
    ++rows;
    const std::size_t key_end = line.find(' ');
    const std::size_t value_start = line.find_first_not_of(' ', key_end);
    ASSERT_NE(value_start, std::string::npos) << line;
    if (value_column == std::string::npos) value_column = value_start;
    EXPECT_EQ(value_start, value_column) << line;
  }
  EXPECT_EQ(rows, 99u);
  EXPECT_NE(table.find("routing.capacity_factor"), std::string::npos);
  EXPECT_NE(table.find("1.1\n"), std::string::npos);
}

// Exact lines, not substrings: ".file = " would also match checkpoint.file when output.file is
// missing, and "topk | switch" matched inside "noisy_topk | switch" (issue 7: help-text
// assertions that passed by accident).
TEST(ConfigPrint, HelpListsEveryKeyWithDefaultAndAllowed) {
  const std::string help = help_text();
  std::istringstream ini(to_ini(Config{}));
  std::string line, section;
  int keys = 0;
  while (std::getline(ini, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '[') {
      section = line.substr(1, line.size() - 2);
      continue;
    }
    const std::string name = line.substr(0, line.find(' '));
    std::string value =
        line.find(" = ") == std::string::npos ? "" : line.substr(line.find(" = ") + 3);
    if (value.empty()) value = "\"\"";
    const std::string want = "\n  " + section + "." + name + " = " + value + "\n      ";
    EXPECT_NE(help.find(want), std::string::npos) << want;
    ++keys;
  }
  EXPECT_EQ(keys, 99);  // every field of config.hpp
  EXPECT_NE(help.find("\n  routing.capacity_factor = 1.25\n      training capacity factor; 0 = "
                      "dropless; allowed: exact decimal >= 0 (e.g. 1.25)\n"),
            std::string::npos);
  EXPECT_NE(help.find("; allowed: position | choice_position | probs | priority\n"),
            std::string::npos);
  EXPECT_NE(help.find("\n[trace]\n"), std::string::npos);
}

// --help lists exactly the rules validate() accepts (every rule is built now, base included).
TEST(ConfigPrint, HelpListsOnlyAcceptedRules) {
  const std::string help = help_text();
  const std::string rules = accepted_rules(" | ");
  EXPECT_EQ(rules, "dense | topk | noisy_topk | switch | gshard | expert_choice | hash | base");
  EXPECT_NE(help.find("; allowed: " + rules + "\n"), std::string::npos) << help;
  for (const char* name :
       {"dense", "topk", "noisy_topk", "switch", "gshard", "expert_choice", "hash", "base"}) {
    Config c = parse_config("", "x", {std::string("--routing.rule=") + name});
    c.routing.aux_loss_coef = 0;  // hash needs the router losses off
    bool accepted = true;
    try {
      validate(c, Mode::route, 1);
    } catch (const ConfigError& e) {
      for (const auto& p : e.problems())
        if (p.key == "routing.rule") accepted = false;
    }
    const std::string listed = " | " + rules + " | ";
    EXPECT_EQ(accepted, listed.find(std::string(" | ") + name + " | ") != std::string::npos)
        << name;
  }
}

TEST(ConfigPrint, EnumNames) {
  EXPECT_STREQ(to_string(RoutingRuleKind::switch_top1), "switch");
  EXPECT_STREQ(to_string(RoutingRuleKind::topk), "topk");
  EXPECT_STREQ(to_string(Activation::gelu), "gelu");
  EXPECT_STREQ(to_string(Precision::float64), "float64");
  EXPECT_STREQ(to_string(DropPolicyKind::probs), "probs");
  EXPECT_STREQ(to_string(OptimizerKind::sgd), "sgd");
}

}  // namespace
}  // namespace moesim

namespace moesim {
namespace {

// [cluster] and [simulate]: each bad value names its key, value and what is allowed.
TEST(ConfigValidate, SimulateAndClusterKeys) {
  auto err = [](const std::vector<std::string>& args, Mode mode, int ranks) {
    try {
      validate(parse_config("", "x.ini", args), mode, ranks);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::vector<std::string> ok{"--cluster.file=m.ini", "--simulate.output=o.h5"};
  EXPECT_EQ(err(ok, Mode::simulate, 1), "");
  EXPECT_NE(err({"--simulate.output=o.h5"}, Mode::simulate, 1).find("cluster.file"),
            std::string::npos);
  EXPECT_NE(err({"--cluster.file=m.ini"}, Mode::simulate, 1).find("simulate.output"),
            std::string::npos);
  EXPECT_NE(err(ok, Mode::simulate, 2).find("runs in one process"), std::string::npos);
  auto with = [&](const std::string& a) {
    std::vector<std::string> v = ok;
    v.push_back(a);
    return err(v, Mode::simulate, 1);
  };
  EXPECT_NE(with("--simulate.ranks=16,0").find("simulate.ranks = 16,0"), std::string::npos);
  EXPECT_NE(with("--simulate.ranks=16,x").find("bad item 'x'"), std::string::npos);
  EXPECT_NE(with("--simulate.ranks=2097152").find("[1, 1048576]"), std::string::npos);
  EXPECT_NE(
      with("--simulate.scaling=both").find("simulate.scaling = both: must be one of weak|strong"),
      std::string::npos);
  EXPECT_NE(with("--simulate.algorithm=ring").find("simulate.algorithm = ring"), std::string::npos);
  EXPECT_NE(with("--simulate.base_ranks=0").find("simulate.base_ranks = 0"), std::string::npos);
  EXPECT_NE(with("--cluster.inter_bandwidth_GBps=0").find("cluster.inter_bandwidth_GBps = 0"),
            std::string::npos);
  EXPECT_NE(with("--cluster.shared_cores=-1").find("cluster.shared_cores = -1"), std::string::npos);
  EXPECT_NE(with("--cluster.inter_burst_bytes=-1").find("cluster.inter_burst_bytes = -1"),
            std::string::npos);
  // a bucket needs a burst rate above the link's rate; without a bucket the rate is unused
  EXPECT_NE(with("--cluster.inter_burst_bytes=65536")
                .find("cluster.inter_burst_GBps = 0: must exceed cluster.inter_bandwidth_GBps"),
            std::string::npos);
  std::vector<std::string> burst = ok;
  burst.push_back("--cluster.inter_burst_bytes=65536");
  burst.push_back("--cluster.inter_burst_GBps=12.5");  // = the default inter_bandwidth_GBps
  EXPECT_NE(err(burst, Mode::simulate, 1).find("cluster.inter_burst_GBps = 12.5"),
            std::string::npos);
  burst.back() = "--cluster.inter_burst_GBps=40";
  EXPECT_EQ(err(burst, Mode::simulate, 1), "");
  EXPECT_EQ(with("--cluster.inter_burst_GBps=3"), "");
  EXPECT_NE(with("--cluster.intra_latency_us=-1").find("cluster.intra_latency_us = -1"),
            std::string::npos);
  EXPECT_NE(with("--cluster.ranks_per_node=0").find("cluster.ranks_per_node = 0"),
            std::string::npos);
  EXPECT_EQ(err({"--cluster.output=m.ini"}, Mode::calibrate, 2), "");
  EXPECT_NE(err({}, Mode::calibrate, 2).find("cluster.output"), std::string::npos);
  EXPECT_NE(err({"--output.traffic_every=-2"}, Mode::run, 1).find("output.traffic_every = -2"),
            std::string::npos);
  EXPECT_NE(err({"--output.loads_every=-1"}, Mode::run, 1).find("output.loads_every = -1"),
            std::string::npos);
}

}  // namespace
}  // namespace moesim
