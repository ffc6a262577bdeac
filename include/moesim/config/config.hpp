// The one typed configuration of a MoESim run: nested structs with in-class defaults.
// Parsed (Boost.Program_options, INI + command-line overrides) and validated in
// src/config/config.cpp only; everything else receives `const Config&`.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace moesim {

// A decimal number kept exactly as written ("1.25" == 125/100), so that capacity
// arithmetic is exact integer arithmetic (routing.md: ceil(50 * 1.1) is 55, not 56).
struct Rational {
  std::int64_t num = 0;  // numerator
  std::int64_t den = 1;  // denominator (> 0, a power of ten as parsed)
  [[nodiscard]] double value() const { return static_cast<double>(num) / static_cast<double>(den); }
  [[nodiscard]] std::string str() const;  // shortest decimal text, e.g. "1.25"
  // Parses "[-]digits[.digits]" (optionally with e/E exponent). Throws std::invalid_argument.
  static Rational parse(const std::string& text);
  friend bool operator==(const Rational&, const Rational&) = default;
};

enum class Activation { relu, gelu };
enum class Precision { float32, float64, bfloat16 };
// INI names: dense, topk, noisy_topk, switch, gshard, expert_choice, hash, base.
enum class RoutingRuleKind {
  dense,
  topk,
  noisy_topk,
  switch_top1,
  gshard,
  expert_choice,
  hash,
  base
};
enum class DropPolicyKind { position, choice_position, probs, priority };
enum class DispatchKind {
  alltoallv,
  alltoall_padded
};  // variable-size or capacity-padded exchange
enum class OptimizerKind { sgd, adam };

struct ModelConfig {
  std::int64_t d_model = 64;                 // token width
  std::int64_t d_ff = 256;                   // expert hidden width
  std::int64_t layers = 1;                   // number of MoE layers (each residual)
  Activation activation = Activation::relu;  // expert nonlinearity
  Precision precision = Precision::float32;  // arithmetic (bfloat16: mixed, fp32 master)
  double init_scale = 1.0;                   // multiplies the default (He/Xavier-like) init std
};

struct RoutingConfig {
  std::int64_t num_experts = 4;                  // E, experts per MoE layer over all ranks
  RoutingRuleKind rule = RoutingRuleKind::topk;  // routing rule (routing.md)
  std::int64_t k = 2;                            // choices per token (switch: must be 1)
  bool renormalize = false;                      // topk: renormalise kept weights to sum 1
  Rational capacity_factor{125, 100};            // training capacity factor; 0 = dropless
  Rational eval_capacity_factor{2, 1};           // evaluation capacity factor; 0 = dropless
  std::int64_t min_capacity = 0;                 // lower bound of C per (group, expert)
  bool dropless = false;                         // true: no capacity limit at all
  DropPolicyKind drop_policy = DropPolicyKind::position;  // which assignments survive over capacity
  std::int64_t group_size = 0;  // tokens per routing group; 0 = each rank's share is one group
  double aux_loss_coef = 0.01;  // coefficient of the load-balance loss
  double z_loss_coef = 0.0;     // coefficient of the router z-loss
  double aux_gshard_loss_coef = 0.0;  // coefficient of the GShard (first-choice) balance loss
  double importance_loss_coef = 0.0;  // coefficient of Shazeer's importance CV^2 loss
  double load_loss_coef = 0.0;        // coefficient of Shazeer's load CV^2 loss
  double jitter_eps = 0.0;            // switch: multiplicative router-input jitter U[1-eps,1+eps]
  bool random_routing = true;         // gshard: keep the 2nd expert only if 2*g2 > U(0,1)
  double bias_update_rate = 0.0;      // aux-loss-free balancing (DeepSeek-V3) rate u; 0 = off
  DispatchKind dispatch = DispatchKind::alltoallv;  // token exchange implementation
};

struct TrainingConfig {
  std::int64_t steps = 100;                       // optimizer steps
  std::uint64_t seed = 1;                         // keys every random stream (data, init)
  OptimizerKind optimizer = OptimizerKind::adam;  // sgd (with momentum) or adam
  double learning_rate = 1e-3;                    // step size
  double momentum = 0.9;                          // sgd momentum
  double beta1 = 0.9;                             // adam beta1
  double beta2 = 0.999;                           // adam beta2
  double epsilon = 1e-8;                          // adam epsilon
  double weight_decay = 0.0;                      // decoupled (AdamW-style) decay; sgd: L2
  std::int64_t eval_every = 50;                   // evaluate every N steps (0 = only at the end)
};

struct DataConfig {
  std::string task = "clusters";        // synthetic task: "clusters" (Chen et al. 2022)
  std::int64_t tokens_per_step = 1024;  // global tokens per step, split evenly over ranks
  std::int64_t eval_tokens = 4096;      // held-out tokens per evaluation
  std::int64_t input_dim = 32;          // raw feature width (>= 2 * num_clusters)
  std::int64_t num_clusters = 4;        // K clusters, each with its own signal direction
  double signal_strength = 1.0;         // alpha: weight of the label signal y * v_k
  double center_strength = 1.0;         // beta: weight of the cluster centre c_k
  double feature_noise = 0.5;           // gamma: weight of the misleading -y * v_k' patch
  double noise_std = 0.1;               // sigma: isotropic Gaussian noise
};

struct OutputConfig {
  std::string file = "moesim_result.h5";  // result file path
  std::int64_t log_every = 10;            // progress line every N steps (0 = none)
  bool echo_config = true;                // print the resolved config on rank 0
};

struct TraceConfig {
  std::string input;   // moesim route: input trace (/logits [T,E])
  std::string output;  // moesim route: output file
};

struct CheckpointConfig {
  std::int64_t every = 0;  // write a checkpoint every N steps (0 = never)
  std::string file;        // checkpoint path; empty = output.file + ".ckpt"
  bool resume = false;     // continue from checkpoint.file if it exists (moesim run --resume)
};

struct BenchConfig {
  std::int64_t warmup = 2;      // untimed iterations before the timed loop
  std::int64_t iterations = 5;  // timed iterations (each timed loop: barrier, loop, barrier)
};

struct Config {
  ModelConfig model;
  RoutingConfig routing;
  TrainingConfig training;
  DataConfig data;
  OutputConfig output;
  TraceConfig trace;
  CheckpointConfig checkpoint;
  BenchConfig bench;
};

// A bad parameter: names the key, the offending value and what is allowed.
class ConfigError : public std::runtime_error {
 public:
  ConfigError(std::string key, std::string value, std::string allowed);
  [[nodiscard]] const std::string& key() const { return key_; }
  [[nodiscard]] const std::string& value() const { return value_; }
  [[nodiscard]] const std::string& allowed() const { return allowed_; }

 private:
  std::string key_, value_, allowed_;
};

// Which subcommand the parameters are for (route needs no training keys, run no trace keys).
enum class Mode { run, route, bench };  // bench validates like run

// Parses INI text (may be empty) and then applies `overrides` ("--section.key=value" or
// "--section.key value" tokens; the command line wins). `source_name` names the file in errors.
// Unknown keys, malformed values and bad enum names throw ConfigError. Does not validate
// cross-key constraints: call validate().
Config parse_config(const std::string& ini_text, const std::string& source_name,
                    const std::vector<std::string>& overrides);

// Cross-key and range checks for `mode` on `ranks` MPI ranks. Throws ConfigError.
void validate(const Config& cfg, Mode mode, int ranks);

// The fully resolved parameter file as INI text; parse_config(to_ini(c)) == c.
std::string to_ini(const Config& cfg);

// Human table of all keys (for the rank-0 echo).
std::string to_table(const Config& cfg);

// Every key with its default, allowed values and meaning (moesim --help / run --help).
std::string help_text();

// Enum <-> text, for output and messages.
const char* to_string(Activation v);
const char* to_string(Precision v);
const char* to_string(RoutingRuleKind v);
const char* to_string(DropPolicyKind v);
const char* to_string(DispatchKind v);
const char* to_string(OptimizerKind v);

}  // namespace moesim
