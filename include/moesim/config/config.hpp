// The one typed configuration of a MoESim run: nested structs with in-class defaults.
// Parsed (Boost.Program_options, INI + command-line overrides) and validated in
// src/config/config.cpp only; everything else receives `const Config&`.
#pragma once

#include <cstdint>
#include <set>
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
// Router score function (routing.md "Additions"): p = softmax(h) or s = sigmoid(h).
enum class ScoreKind { softmax, sigmoid };
// Scope of the load-balance loss's f_e and P_e: each routing group, or the global batch.
enum class AuxScope { group, batch };
enum class DropPolicyKind { position, choice_position, probs, priority };
enum class DispatchKind {
  alltoallv,
  alltoall_padded,
  hierarchical
};  // variable-size, capacity-padded or two-level (node-aware) exchange
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
  ScoreKind score = ScoreKind::softmax;          // router score: softmax, or sigmoid (topk/switch)
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
  AuxScope aux_scope = AuxScope::group;  // aux loss f_e, P_e per group or over the global batch
  std::int64_t shared_experts = 0;       // always-on experts per layer (weight 1, replicated)
  double base_tolerance = 1e-6;          // base: final auction epsilon / the group's logit range
  DispatchKind dispatch = DispatchKind::alltoallv;  // token exchange implementation
  std::int64_t expert_groups = 1;      // G groups of E/G consecutive experts (node-limited routing)
  std::int64_t group_limit = 0;        // topk: experts only from the M best groups; 0 = all groups
  std::int64_t redundant_experts = 0;  // EPLB: r extra expert slots per layer (hot-expert replicas)
  std::int64_t rebalance_every = 100;  // EPLB: re-place the slots every N steps; 0 = never
  std::int64_t overlap_degree = 1;     // exchange/expert pipeline of d chunks of local experts
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
  std::int64_t loads_every = 10;     // record per-group loads (/loads/*) every N steps (0 = never)
  std::int64_t traffic_every = 100;  // record the step's P x P traffic matrix (/traffic/tokens)
                                     // every N steps (0 = never)
};

struct TraceConfig {
  std::string input;   // moesim route: input trace (/logits [T,E] HDF5, or router-choice *.jsonl)
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

// The machine a step is predicted on (moesim simulate) or measured on (moesim calibrate);
// a machine file is an INI file with this section (docs/simulate.md).
struct ClusterConfig {
  std::string file;                    // simulate: machine file to read ([cluster] keys)
  std::string output;                  // calibrate: machine file to write
  std::string name;                    // free text: which machine this is
  std::string measured;                // free text: where/when measured, or the sources
  std::int64_t ranks_per_node = 8;     // MPI ranks sharing one node (and its NIC)
  double intra_latency_us = 1.0;       // alpha of a message inside a node (per peer message)
  double intra_bandwidth_GBps = 10.0;  // beta inside a node, per rank and direction
  double inter_latency_us = 3.0;       // alpha of a message between nodes (per peer message)
  double inter_bandwidth_GBps = 12.5;  // beta between nodes, per node (NIC) and direction
  // A burstable inter-node link (a token bucket: emulated tc-tbf links, cloud NICs with burst
  // credits): up to inter_burst_bytes per node and direction leave at inter_burst_GBps when the
  // link was idle long enough to refill them at inter_bandwidth_GBps. 0 = a plain link.
  double inter_burst_bytes = 0.0;
  double inter_burst_GBps = 0.0;     // rate while the bucket holds tokens (> inter_bandwidth_GBps)
  double gemm_GFLOPs = 50.0;         // sustained GEMM rate per rank at expert shapes (float32)
  double gemm_GFLOPs_float64 = 0.0;  // the same in float64; 0 = half of gemm_GFLOPs
  double memory_bandwidth_GBps = 10.0;  // sustained copy bandwidth per rank (read + write bytes)
  double route_ns_per_score = 5.0;      // router work (softmax, rule, policy) per token x expert
  double step_overhead_us = 0.0;        // fixed time per step outside the modelled phases
  double optimizer_ns_per_param = 0.0;  // optimizer step per parameter; 0 = memory-bound formula
  double data_ns_per_value = 0.0;       // synthetic batch generation per token x input feature
  // Cores that all ranks of a run share (one machine: an emulated cluster, an oversubscribed
  // laptop); 0 = every rank has a core of its own (a cluster). The expert times are then shared
  // out as by the scheduler (simulate::shared_cores_time).
  std::int64_t shared_cores = 0;
  double intra_fit_rel_rms = 0.0;  // calibrate: relative RMS residual of the intra alpha-beta fit
  double inter_fit_rel_rms = 0.0;  // calibrate: relative RMS residual of the inter alpha-beta fit
  double gemm_fit_rel_rms = 0.0;   // calibrate: relative RMS spread of the GEMM rates measured
  // Measured expert times (calibrate writes, simulate reads; parse_expert_table): entries
  // "PRECISION DxF ROWS FWD_MS BWD_MS" separated by ';'. Shapes listed here are timed from the
  // table; any other shape falls back to the gemm_GFLOPs roofline. "" = no table.
  std::string expert_table;
  // calibrate: expert shapes "DxF,DxF" timed in addition to the config's own (model.d_model x
  // model.d_ff), so that one machine file covers several models.
  std::string calibrate_expert_shapes;
};

// One point of cluster.expert_table: one expert (d_model x d_ff) at `rows` token rows, forward
// and backward wall time in seconds, at `precision`.
struct ExpertTimePoint {
  Precision precision = Precision::float32;
  std::int64_t d_model = 0, d_ff = 0, rows = 0;
  double fwd_s = 0, bwd_s = 0;
};
// Parses cluster.expert_table; a malformed entry throws ConfigError naming the key, the entry
// and the format. Points come back sorted by (precision, d_model, d_ff, rows); a repeated
// (precision, shape, rows) is an error.
std::vector<ExpertTimePoint> parse_expert_table(const std::string& text);
// Parses cluster.calibrate_expert_shapes ("DxF,DxF", each >= 1) into (d_model, d_ff) pairs.
std::vector<std::pair<std::int64_t, std::int64_t>> parse_expert_shapes(const std::string& text);

// moesim simulate: which rank counts, workload and scaling to predict (simulate.md).
struct SimulateConfig {
  std::string ranks = "16,256,4096,16384";  // virtual rank counts, comma separated
  std::int64_t ranks_per_node = 0;          // 0 = cluster.ranks_per_node
  std::string workload =
      "uniform";           // uniform | zipf:S | lognormal:SIGMA | hot:F | rotate | run:FILE.h5
  std::uint64_t seed = 1;  // seeds the synthetic workloads
  std::string scaling = "weak";  // weak: tokens and experts grow with the ranks; strong: fixed
  std::int64_t base_ranks = 1;   // weak: the file's tokens and experts are per this many ranks
  std::string algorithm;   // exchange model: flat | padded | hierarchical; "" = routing.dispatch
  std::int64_t steps = 1;  // steps simulated per rank count (mean reported)
  std::string output;      // HDF5 projection file (a CSV is written beside it)
  std::string validate;    // comma-separated moesim run result files to predict
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
  // Keys given in the parameter file or on the command line ("routing.k"); parse_config fills
  // it. Not a parameter: rule-dependent defaults and `moesim route` read it, to_ini ignores it.
  std::set<std::string> given;
  ClusterConfig cluster;
  SimulateConfig simulate;
};

// One bad parameter: the key, the offending value and what is allowed.
struct ConfigProblem {
  std::string key, value, allowed;
  [[nodiscard]] std::string str() const;  // "bad parameter KEY = VALUE: ALLOWED"
  friend bool operator==(const ConfigProblem&, const ConfigProblem&) = default;
};

// Bad parameters: one or more problems, each naming the key, the offending value and what is
// allowed. key()/value()/allowed() are those of the first; problems() lists all of them, and
// what() has one line per problem.
class ConfigError : public std::runtime_error {
 public:
  ConfigError(std::string key, std::string value, std::string allowed);
  explicit ConfigError(std::vector<ConfigProblem> problems);  // non-empty
  [[nodiscard]] const std::string& key() const { return problems_.front().key; }
  [[nodiscard]] const std::string& value() const { return problems_.front().value; }
  [[nodiscard]] const std::string& allowed() const { return problems_.front().allowed; }
  [[nodiscard]] const std::vector<ConfigProblem>& problems() const { return problems_; }

 private:
  std::vector<ConfigProblem> problems_;
};

// Which subcommand the parameters are for (route needs no training keys, run no trace keys).
// simulate / calibrate validate the model and routing keys plus their own sections.
enum class Mode { run, route, bench, simulate, calibrate };  // bench validates like run

// Parses INI text (may be empty) and then applies `overrides` ("--section.key=value" or
// "--section.key value" tokens; the command line wins). `source_name` names the file in errors.
// Unknown keys, malformed values and bad enum names throw one ConfigError listing all of them.
// Keys not given take rule-dependent defaults: routing.k = 1 for switch/hash/base and 2 for
// gshard (an explicit conflicting k is kept and refused by validate()). Fills Config::given.
// Does not validate cross-key constraints: call validate().
Config parse_config(const std::string& ini_text, const std::string& source_name,
                    const std::vector<std::string>& overrides);

// Cross-key and range checks for `mode` on `ranks` MPI ranks. Every check runs; one ConfigError
// lists every problem found.
void validate(const Config& cfg, Mode mode, int ranks);

// parse_config + validate in one report: parse problems and validation problems together (a
// validation problem of a key that already failed to parse is left out). Throws ConfigError.
Config parse_and_validate(const std::string& ini_text, const std::string& source_name,
                          const std::vector<std::string>& overrides, Mode mode, int ranks);

// Fails the check: appends to the problems being collected by validate() (or throws a
// ConfigError when called outside of it). Other modules' validation helpers may call it.
void require(bool ok, const std::string& key, const std::string& value, const std::string& allowed);

// The routing rules validate() accepts ("dense|topk|...", `sep` between names); --help lists
// these, so a rule that is refused is never shown as allowed.
std::string accepted_rules(const char* sep);

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
const char* to_string(ScoreKind v);
const char* to_string(AuxScope v);
const char* to_string(DispatchKind v);
const char* to_string(OptimizerKind v);

}  // namespace moesim
