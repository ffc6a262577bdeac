// Parsing (INI + command line), validation and printing of the MoESim Config.
// This is the only file that includes Boost.Program_options; every error leaves as ConfigError.
#include "moesim/config/config.hpp"

#include <algorithm>
#include <boost/program_options.hpp>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <span>
#include <sstream>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace moesim {
namespace {

namespace po = boost::program_options;

// Rational::str needs a remainder up to 10 * 2^63 during long division.
__extension__ typedef unsigned __int128 u128;

// ---------------------------------------------------------------------------------------------
// Enum names: one table per enum serves parsing, printing and the allowed lists in messages.

template <class E>
struct Named {
  E value;
  const char* name;
};

constexpr Named<Activation> kActivationNames[] = {{Activation::relu, "relu"},
                                                  {Activation::gelu, "gelu"}};
constexpr Named<Precision> kPrecisionNames[] = {{Precision::float32, "float32"},
                                                {Precision::float64, "float64"},
                                                {Precision::bfloat16, "bfloat16"}};
constexpr Named<RoutingRuleKind> kRuleNames[] = {{RoutingRuleKind::dense, "dense"},
                                                 {RoutingRuleKind::topk, "topk"},
                                                 {RoutingRuleKind::noisy_topk, "noisy_topk"},
                                                 {RoutingRuleKind::switch_top1, "switch"},
                                                 {RoutingRuleKind::gshard, "gshard"},
                                                 {RoutingRuleKind::expert_choice, "expert_choice"},
                                                 {RoutingRuleKind::hash, "hash"},
                                                 {RoutingRuleKind::base, "base"}};
// The one place that says which rules validate() accepts (every rule is implemented now; a
// future rule that is parsed before it is built is refused here, and --help follows).
constexpr bool rule_accepted(RoutingRuleKind) { return true; }

constexpr Named<ScoreKind> kScoreNames[] = {{ScoreKind::softmax, "softmax"},
                                            {ScoreKind::sigmoid, "sigmoid"}};
constexpr Named<AuxScope> kAuxScopeNames[] = {{AuxScope::group, "group"},
                                              {AuxScope::batch, "batch"}};
constexpr Named<DropPolicyKind> kDropPolicyNames[] = {
    {DropPolicyKind::position, "position"},
    {DropPolicyKind::choice_position, "choice_position"},
    {DropPolicyKind::probs, "probs"},
    {DropPolicyKind::priority, "priority"}};
constexpr Named<DispatchKind> kDispatchNames[] = {
    {DispatchKind::alltoallv, "alltoallv"},
    {DispatchKind::alltoall_padded, "alltoall_padded"},
    {DispatchKind::hierarchical, "hierarchical"}};
constexpr Named<OptimizerKind> kOptimizerNames[] = {{OptimizerKind::sgd, "sgd"},
                                                    {OptimizerKind::adam, "adam"}};

constexpr std::span<const Named<Activation>> names_of(Activation) { return kActivationNames; }
constexpr std::span<const Named<Precision>> names_of(Precision) { return kPrecisionNames; }
constexpr std::span<const Named<RoutingRuleKind>> names_of(RoutingRuleKind) { return kRuleNames; }
constexpr std::span<const Named<ScoreKind>> names_of(ScoreKind) { return kScoreNames; }
constexpr std::span<const Named<AuxScope>> names_of(AuxScope) { return kAuxScopeNames; }
constexpr std::span<const Named<DropPolicyKind>> names_of(DropPolicyKind) {
  return kDropPolicyNames;
}
constexpr std::span<const Named<OptimizerKind>> names_of(OptimizerKind) { return kOptimizerNames; }
constexpr std::span<const Named<DispatchKind>> names_of(DispatchKind) { return kDispatchNames; }

template <class E>
const char* enum_name(E v) {
  for (const auto& n : names_of(E{})) {
    if (n.value == v) return n.name;
  }
  return "?";  // only reachable through a cast of an out-of-range integer
}

template <class E>
std::string enum_list(const char* sep) {
  std::string out;
  for (const auto& n : names_of(E{})) {
    if (!out.empty()) out += sep;
    out += n.name;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Text -> value. Each returns nullopt on anything but a complete, exact match so that the caller
// can name the key; none of them depends on the C locale.

bool is_digit(char c) { return c >= '0' && c <= '9'; }

enum class IntStatus { ok, not_integer, out_of_range };

template <class Int>
IntStatus to_integer(std::string_view s, Int& out) {
  // from_chars rejects '+', but "+3" is a reasonable thing to write; "+-3" is not.
  if (!s.empty() && s[0] == '+') {
    s.remove_prefix(1);
    if (!s.empty() && s[0] == '-') return IntStatus::not_integer;
  }
  if (s.empty()) return IntStatus::not_integer;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec == std::errc::result_out_of_range) return IntStatus::out_of_range;
  if (ec != std::errc{} || end != s.data() + s.size()) return IntStatus::not_integer;
  return IntStatus::ok;
}

std::optional<double> to_double(std::string_view s) {
  if (!s.empty() && s[0] == '+') {
    s.remove_prefix(1);
    if (!s.empty() && s[0] == '-') return std::nullopt;
  }
  if (s.empty()) return std::nullopt;
  double v = 0.0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || end != s.data() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::optional<bool> to_bool(std::string_view s) {
  if (s == "true" || s == "1" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "0" || s == "no" || s == "off") return false;
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Value -> text, such that parsing the text gives back exactly the same value.

std::string format_double(double v) {
  char buf[64];
  // Shortest text that round-trips (C++17 to_chars without a format).
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc{} ? std::string(buf, end) : std::string("?");
}

template <class T>
std::string format_value(const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_same_v<T, double>) {
    return format_double(v);
  } else if constexpr (std::is_same_v<T, Rational>) {
    return v.str();
  } else if constexpr (std::is_same_v<T, std::string>) {
    return v;
  } else if constexpr (std::is_enum_v<T>) {
    return enum_name(v);
  } else {
    static_assert(std::is_integral_v<T>);
    return std::to_string(v);
  }
}

template <class T>
T parse_value(const std::string& key, const std::string& text, const std::string& where) {
  if constexpr (std::is_same_v<T, bool>) {
    if (auto v = to_bool(text)) return *v;
    throw ConfigError(key, text, "must be one of true|false|1|0|yes|no|on|off" + where);
  } else if constexpr (std::is_same_v<T, double>) {
    if (auto v = to_double(text)) return *v;
    throw ConfigError(key, text, "must be a finite number (e.g. 0.5, 1e-3)" + where);
  } else if constexpr (std::is_same_v<T, Rational>) {
    try {
      return Rational::parse(text);
    } catch (const std::invalid_argument& e) {
      throw ConfigError(
          key, text,
          std::string("must be an exact decimal number such as 1.25 (") + e.what() + ")" + where);
    }
  } else if constexpr (std::is_same_v<T, std::string>) {
    return text;
  } else if constexpr (std::is_enum_v<T>) {
    for (const auto& n : names_of(T{})) {
      if (text == n.name) return n.value;
    }
    throw ConfigError(key, text, "must be one of " + enum_list<T>("|") + where);
  } else if constexpr (std::is_same_v<T, std::uint64_t>) {
    // Explicit, because Boost would wrap "-1" to 2^64-1 for an unsigned option (platform.md).
    T v{};
    if (to_integer(text, v) == IntStatus::ok) return v;
    throw ConfigError(
        key, text,
        "must be an integer in [0, " + std::to_string(std::numeric_limits<T>::max()) + "]" + where);
  } else {
    static_assert(std::is_same_v<T, std::int64_t>);
    T v{};
    switch (to_integer(text, v)) {
      case IntStatus::ok:
        return v;
      case IntStatus::out_of_range:
        throw ConfigError(key, text, "must be an integer that fits in 64 bits" + where);
      case IntStatus::not_integer:
        break;
    }
    throw ConfigError(key, text, "must be an integer" + where);
  }
}

// ---------------------------------------------------------------------------------------------
// The key table: one entry per Config field, in the order of sections and fields of config.hpp.
// Every printer, the help and the parser walk this table, so a field cannot be forgotten by one
// of them.

struct Field {
  std::string key;      // "section.field"
  std::string allowed;  // for the help text
  std::string meaning;  // one line, from the comment in config.hpp
  bool is_bool = false;
  std::function<std::string(const Config&)> get;
  std::function<void(Config&, const std::string& text, const std::string& where)> set;
};

template <auto Section, auto Member>
Field make_field(const char* key, const char* allowed, const char* meaning) {
  using T = std::remove_cvref_t<decltype((std::declval<Config&>().*Section).*Member)>;
  Field f;
  f.key = key;
  f.allowed = allowed;
  f.meaning = meaning;
  f.is_bool = std::is_same_v<T, bool>;
  f.get = [](const Config& c) { return format_value<T>((c.*Section).*Member); };
  f.set = [k = f.key](Config& c, const std::string& text, const std::string& where) {
    (c.*Section).*Member = parse_value<T>(k, text, where);
  };
  return f;
}

const std::vector<Field>& fields() {
  using C = Config;
  static const std::vector<Field> table = [] {
    const std::string bools = "true|false (also 1|0, yes|no, on|off)";
    const std::string activation = enum_list<Activation>(" | ");
    const std::string precision = enum_list<Precision>(" | ");
    const std::string rule = accepted_rules(" | ");
    const std::string policy = enum_list<DropPolicyKind>(" | ");
    const std::string optimizer = enum_list<OptimizerKind>(" | ");
    std::vector<Field> t;
    // model
    t.push_back(make_field<&C::model, &ModelConfig::d_model>("model.d_model", "integer >= 1",
                                                             "token width"));
    t.push_back(make_field<&C::model, &ModelConfig::d_ff>("model.d_ff", "integer >= 1",
                                                          "expert hidden width"));
    t.push_back(make_field<&C::model, &ModelConfig::layers>(
        "model.layers", "integer >= 1", "number of MoE layers (each residual)"));
    t.push_back(make_field<&C::model, &ModelConfig::activation>(
        "model.activation", activation.c_str(), "expert nonlinearity"));
    t.push_back(make_field<&C::model, &ModelConfig::precision>(
        "model.precision", precision.c_str(),
        "arithmetic of activations and parameters; bfloat16 = mixed precision: fp32 master "
        "weights, optimizer and accumulation, bf16 expert GEMMs and all-to-all"));
    t.push_back(make_field<&C::model, &ModelConfig::init_scale>(
        "model.init_scale", "number > 0",
        "multiplies the default (He/Xavier-like) init standard deviation"));
    // routing
    t.push_back(make_field<&C::routing, &RoutingConfig::num_experts>(
        "routing.num_experts", "integer >= 1; run: divisible by the number of MPI ranks",
        "E, experts per MoE layer over all ranks"));
    t.push_back(make_field<&C::routing, &RoutingConfig::rule>("routing.rule", rule.c_str(),
                                                              "routing rule (docs/routing.md)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::score>(
        "routing.score", enum_list<ScoreKind>(" | ").c_str(),
        "router score: softmax, or sigmoid s = 1/(1+e^-h) (topk/switch; weights = selected s, "
        "renormalised when k > 1; losses use p = s / sum s)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::k>(
        "routing.k",
        "integer in [1, min(routing.num_experts, 64)]; 1 for switch and hash, 2 for gshard; "
        "ignored by dense and expert_choice",
        "choices per token"));
    t.push_back(make_field<&C::routing, &RoutingConfig::renormalize>(
        "routing.renormalize", bools.c_str(), "topk: renormalise kept weights to sum 1"));
    t.push_back(make_field<&C::routing, &RoutingConfig::capacity_factor>(
        "routing.capacity_factor", "exact decimal >= 0 (e.g. 1.25)",
        "training capacity factor; 0 = dropless"));
    t.push_back(make_field<&C::routing, &RoutingConfig::eval_capacity_factor>(
        "routing.eval_capacity_factor", "exact decimal >= 0 (e.g. 2)",
        "evaluation capacity factor; 0 = dropless"));
    t.push_back(make_field<&C::routing, &RoutingConfig::min_capacity>(
        "routing.min_capacity", "integer >= 0", "lower bound of the capacity per (group, expert)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::dropless>(
        "routing.dropless", bools.c_str(), "true: no capacity limit at all"));
    t.push_back(make_field<&C::routing, &RoutingConfig::drop_policy>(
        "routing.drop_policy", policy.c_str(),
        "which assignments survive when an expert is over capacity"));
    t.push_back(make_field<&C::routing, &RoutingConfig::group_size>(
        "routing.group_size",
        "integer >= 0; run: a positive value must divide each rank's share of "
        "data.tokens_per_step and of data.eval_tokens",
        "tokens per routing group; 0 = each rank's share is one group (route: the whole trace)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::aux_loss_coef>(
        "routing.aux_loss_coef", "number >= 0", "coefficient of the load-balance loss"));
    t.push_back(make_field<&C::routing, &RoutingConfig::z_loss_coef>(
        "routing.z_loss_coef", "number >= 0", "coefficient of the router z-loss"));
    t.push_back(make_field<&C::routing, &RoutingConfig::aux_gshard_loss_coef>(
        "routing.aux_gshard_loss_coef", "number >= 0",
        "coefficient of the GShard (first-choice) balance loss"));
    t.push_back(make_field<&C::routing, &RoutingConfig::importance_loss_coef>(
        "routing.importance_loss_coef", "number >= 0",
        "coefficient of Shazeer's importance CV^2 loss"));
    t.push_back(make_field<&C::routing, &RoutingConfig::load_loss_coef>(
        "routing.load_loss_coef", "number >= 0", "coefficient of Shazeer's load CV^2 loss"));
    t.push_back(make_field<&C::routing, &RoutingConfig::jitter_eps>(
        "routing.jitter_eps", "number in [0, 1)",
        "switch: multiplicative router-input jitter U[1-eps, 1+eps] (0 = off)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::random_routing>(
        "routing.random_routing", bools.c_str(),
        "gshard: keep the 2nd expert only if 2*g2 > U(0,1)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::bias_update_rate>(
        "routing.bias_update_rate", "number >= 0",
        "aux-loss-free balancing (DeepSeek-V3): expert-bias update rate u (0 = off)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::aux_scope>(
        "routing.aux_scope", enum_list<AuxScope>(" | ").c_str(),
        "load-balance loss: f_e and P_e per routing group (averaged), or over the global batch "
        "of all groups and ranks (Qwen's global-batch balance)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::shared_experts>(
        "routing.shared_experts", "integer >= 0",
        "always-on experts per layer added to every token with weight 1, replicated on every "
        "rank (data parallel), never dropped (DeepSeek-MoE)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::base_tolerance>(
        "routing.base_tolerance", "number in (0, 1]",
        "base: final auction epsilon as a fraction of the group's logit range (the total is "
        "within group_size * epsilon of the optimum)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::dispatch>(
        "routing.dispatch", enum_list<DispatchKind>("|").c_str(),
        "token exchange: variable-size alltoallv, capacity-padded alltoall, or hierarchical "
        "(node-aware two-level, docs/multinode_cluster.md)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::expert_groups>(
        "routing.expert_groups", "integer >= 1 dividing routing.num_experts",
        "node-limited routing: G groups of consecutive experts (G = nodes: a group per node)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::group_limit>(
        "routing.group_limit", "integer in [0, routing.expert_groups]",
        "node-limited routing (topk, switch): keep the M groups with the largest sum of their "
        "top-ceil(k/M) scores, then top-k inside them; 0 = no limit"));
    t.push_back(make_field<&C::routing, &RoutingConfig::redundant_experts>(
        "routing.redundant_experts", "integer >= 0; run: num_experts + r divisible by the ranks",
        "redundant experts (DeepSeek EPLB): E + r expert slots per layer; the r extra slots "
        "replicate the hottest experts and the slots are packed onto ranks to balance rows "
        "(docs/eplb.md)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::rebalance_every>(
        "routing.rebalance_every", "integer >= 0",
        "redundant experts: re-place the slots every N steps from the loads of the last N "
        "steps (0 = keep the initial placement: replicas of experts 0..r-1)"));
    t.push_back(make_field<&C::routing, &RoutingConfig::overlap_degree>(
        "routing.overlap_degree",
        "integer >= 1; run: at most the experts per rank; > 1 needs routing.dispatch = alltoallv",
        "pipeline of d chunks of each rank's experts: the non-blocking all-to-all of the next "
        "chunk runs while the current chunk's experts compute, forward and backward (bitwise "
        "the same results for any d; docs/overlap.md)"));
    // training
    t.push_back(make_field<&C::training, &TrainingConfig::steps>("training.steps", "integer >= 1",
                                                                 "optimizer steps"));
    t.push_back(make_field<&C::training, &TrainingConfig::seed>(
        "training.seed", "integer in [0, 18446744073709551615]",
        "keys every random stream (data, init)"));
    t.push_back(make_field<&C::training, &TrainingConfig::optimizer>(
        "training.optimizer", optimizer.c_str(), "sgd (with momentum) or adam"));
    t.push_back(make_field<&C::training, &TrainingConfig::learning_rate>(
        "training.learning_rate", "number > 0", "step size"));
    t.push_back(make_field<&C::training, &TrainingConfig::momentum>(
        "training.momentum", "number in [0, 1)", "sgd momentum"));
    t.push_back(make_field<&C::training, &TrainingConfig::beta1>("training.beta1",
                                                                 "number in [0, 1)", "adam beta1"));
    t.push_back(make_field<&C::training, &TrainingConfig::beta2>("training.beta2",
                                                                 "number in [0, 1)", "adam beta2"));
    t.push_back(make_field<&C::training, &TrainingConfig::epsilon>("training.epsilon", "number > 0",
                                                                   "adam epsilon"));
    t.push_back(make_field<&C::training, &TrainingConfig::weight_decay>(
        "training.weight_decay", "number >= 0", "decoupled (AdamW-style) decay; sgd: L2"));
    t.push_back(make_field<&C::training, &TrainingConfig::eval_every>(
        "training.eval_every", "integer >= 0", "evaluate every N steps (0 = only at the end)"));
    // data
    t.push_back(make_field<&C::data, &DataConfig::task>(
        "data.task", "clusters", "synthetic task: clusters (Chen et al. 2022)"));
    t.push_back(make_field<&C::data, &DataConfig::tokens_per_step>(
        "data.tokens_per_step", "integer >= 1, divisible by the number of MPI ranks",
        "global tokens per step, split evenly over ranks"));
    t.push_back(make_field<&C::data, &DataConfig::eval_tokens>(
        "data.eval_tokens", "integer >= 1, divisible by the number of MPI ranks",
        "held-out tokens per evaluation"));
    t.push_back(make_field<&C::data, &DataConfig::input_dim>(
        "data.input_dim", "integer >= 2 * data.num_clusters", "raw feature width"));
    t.push_back(make_field<&C::data, &DataConfig::num_clusters>(
        "data.num_clusters", "integer >= 1",
        "K clusters, each with its own signal direction (2 classes, fixed)"));
    t.push_back(make_field<&C::data, &DataConfig::signal_strength>(
        "data.signal_strength", "finite number", "alpha: weight of the label signal y * v_k"));
    t.push_back(make_field<&C::data, &DataConfig::center_strength>(
        "data.center_strength", "finite number", "beta: weight of the cluster centre c_k"));
    t.push_back(make_field<&C::data, &DataConfig::feature_noise>(
        "data.feature_noise", "finite number", "gamma: weight of the misleading -y * v_k' patch"));
    t.push_back(make_field<&C::data, &DataConfig::noise_std>("data.noise_std", "number >= 0",
                                                             "sigma: isotropic Gaussian noise"));
    // output
    t.push_back(make_field<&C::output, &OutputConfig::file>("output.file", "non-empty path (run)",
                                                            "result file path"));
    t.push_back(make_field<&C::output, &OutputConfig::log_every>(
        "output.log_every", "integer >= 0", "progress line every N steps (0 = none)"));
    t.push_back(make_field<&C::output, &OutputConfig::echo_config>(
        "output.echo_config", bools.c_str(), "print the resolved config on rank 0"));
    t.push_back(make_field<&C::output, &OutputConfig::loads_every>(
        "output.loads_every", "integer >= 0",
        "record the per-(layer, group, expert) routed and kept counts (/loads/*, for moesim "
        "simulate's run: workload) every N steps (0 = never)"));
    t.push_back(make_field<&C::output, &OutputConfig::traffic_every>(
        "output.traffic_every", "integer >= 0",
        "record the step's rank x rank traffic matrix (/traffic/tokens [T, P, P]) every N steps "
        "(0 = never); P^2 * 8 bytes per sample, streamed (the run's sum is always kept in "
        "/summary/traffic_tokens)"));
    // trace
    t.push_back(
        make_field<&C::trace, &TraceConfig::input>("trace.input", "path (route: required)",
                                                   "moesim route: input trace: HDF5 with /logits "
                                                   "[T,E], or a Megatron-Core router trace *.jsonl "
                                                   "(docs/routing_traces.md)"));
    t.push_back(make_field<&C::trace, &TraceConfig::output>(
        "trace.output", "path (route: required, not trace.input)", "moesim route: output file"));
    // checkpoint
    t.push_back(make_field<&C::checkpoint, &CheckpointConfig::every>(
        "checkpoint.every", "integer >= 0", "write a checkpoint every N steps (0 = never)"));
    t.push_back(make_field<&C::checkpoint, &CheckpointConfig::file>(
        "checkpoint.file", "path", "checkpoint path; empty = output.file + \".ckpt\""));
    t.push_back(make_field<&C::checkpoint, &CheckpointConfig::resume>(
        "checkpoint.resume", bools.c_str(),
        "continue from checkpoint.file if it exists (moesim run --resume)"));
    // bench
    t.push_back(make_field<&C::bench, &BenchConfig::warmup>(
        "bench.warmup", "integer >= 0", "moesim bench: untimed iterations before timing"));
    t.push_back(make_field<&C::bench, &BenchConfig::iterations>("bench.iterations", "integer >= 1",
                                                                "moesim bench: timed iterations"));
    // cluster (machine files: simulate reads cluster.file, calibrate writes cluster.output)
    using CC = ClusterConfig;
    t.push_back(make_field<&C::cluster, &CC::file>(
        "cluster.file", "path of a machine file (simulate: required)",
        "simulate: machine file to read ([cluster] keys; the command line wins)"));
    t.push_back(make_field<&C::cluster, &CC::output>("cluster.output", "path (calibrate: required)",
                                                     "calibrate: machine file to write"));
    t.push_back(make_field<&C::cluster, &CC::name>("cluster.name", "text",
                                                   "free text: which machine this is"));
    t.push_back(make_field<&C::cluster, &CC::measured>(
        "cluster.measured", "text", "free text: where/when measured, or the sources"));
    t.push_back(make_field<&C::cluster, &CC::ranks_per_node>(
        "cluster.ranks_per_node", "integer >= 1", "MPI ranks sharing one node (and its NIC)"));
    t.push_back(make_field<&C::cluster, &CC::intra_latency_us>(
        "cluster.intra_latency_us", "number >= 0", "alpha of one message inside a node"));
    t.push_back(make_field<&C::cluster, &CC::intra_bandwidth_GBps>(
        "cluster.intra_bandwidth_GBps", "number > 0",
        "beta inside a node, per rank and direction"));
    t.push_back(make_field<&C::cluster, &CC::inter_latency_us>(
        "cluster.inter_latency_us", "number >= 0", "alpha of one message between nodes"));
    t.push_back(make_field<&C::cluster, &CC::inter_bandwidth_GBps>(
        "cluster.inter_bandwidth_GBps", "number > 0",
        "beta between nodes, per node (NIC) and direction"));
    t.push_back(make_field<&C::cluster, &CC::inter_burst_bytes>(
        "cluster.inter_burst_bytes", "number >= 0",
        "token bucket of a burstable inter-node link, bytes per node and direction (0 = none)"));
    t.push_back(make_field<&C::cluster, &CC::inter_burst_GBps>(
        "cluster.inter_burst_GBps", "0, or a number > cluster.inter_bandwidth_GBps",
        "rate of the inter-node link while its token bucket holds tokens"));
    t.push_back(make_field<&C::cluster, &CC::gemm_GFLOPs>(
        "cluster.gemm_GFLOPs", "number > 0",
        "sustained GEMM rate per rank at expert shapes (float32)"));
    t.push_back(make_field<&C::cluster, &CC::gemm_GFLOPs_float64>(
        "cluster.gemm_GFLOPs_float64", "number >= 0",
        "sustained float64 GEMM rate per rank; 0 = half of cluster.gemm_GFLOPs"));
    t.push_back(make_field<&C::cluster, &CC::memory_bandwidth_GBps>(
        "cluster.memory_bandwidth_GBps", "number > 0",
        "sustained copy bandwidth per rank (bytes read + written per second)"));
    t.push_back(make_field<&C::cluster, &CC::route_ns_per_score>(
        "cluster.route_ns_per_score", "number >= 0",
        "router work (softmax, rule, drop policy) per token x expert, nanoseconds"));
    t.push_back(make_field<&C::cluster, &CC::step_overhead_us>(
        "cluster.step_overhead_us", "number >= 0",
        "fixed time per step outside the modelled phases, microseconds"));
    t.push_back(make_field<&C::cluster, &CC::optimizer_ns_per_param>(
        "cluster.optimizer_ns_per_param", "number >= 0",
        "optimizer step per parameter, nanoseconds (0 = memory-bound formula only)"));
    t.push_back(make_field<&C::cluster, &CC::data_ns_per_value>(
        "cluster.data_ns_per_value", "number >= 0",
        "synthetic batch generation (data.task) per token x input feature, nanoseconds"));
    t.push_back(
        make_field<&C::cluster, &CC::shared_cores>("cluster.shared_cores", "integer >= 0",
                                                   "cores all ranks of a run share (an emulated "
                                                   "cluster on one machine); 0 = a core per rank"));
    t.push_back(make_field<&C::cluster, &CC::intra_fit_rel_rms>(
        "cluster.intra_fit_rel_rms", "number >= 0",
        "calibrate: relative RMS residual of the intra-node alpha-beta fit"));
    t.push_back(make_field<&C::cluster, &CC::inter_fit_rel_rms>(
        "cluster.inter_fit_rel_rms", "number >= 0",
        "calibrate: relative RMS residual of the inter-node alpha-beta fit"));
    t.push_back(make_field<&C::cluster, &CC::gemm_fit_rel_rms>(
        "cluster.gemm_fit_rel_rms", "number >= 0",
        "calibrate: relative RMS spread of the GEMM rates over the measured shapes"));
    t.push_back(make_field<&C::cluster, &CC::expert_table>(
        "cluster.expert_table",
        "\"\" or entries \"PRECISION DxF ROWS FWD_MS BWD_MS\" separated by ;",
        "measured expert forward/backward times per shape and rows (calibrate writes it; listed "
        "shapes are interpolated in rows, others use the gemm_GFLOPs roofline)"));
    t.push_back(make_field<&C::cluster, &CC::calibrate_expert_shapes>(
        "cluster.calibrate_expert_shapes", "\"\" or DxF[,DxF...] (integers >= 1)",
        "calibrate: expert shapes timed besides model.d_model x model.d_ff"));
    // simulate
    using SC = SimulateConfig;
    t.push_back(make_field<&C::simulate, &SC::ranks>("simulate.ranks",
                                                     "comma-separated integers in [1, 1048576]",
                                                     "virtual rank counts to predict"));
    t.push_back(make_field<&C::simulate, &SC::ranks_per_node>(
        "simulate.ranks_per_node", "integer >= 0", "0 = cluster.ranks_per_node"));
    t.push_back(make_field<&C::simulate, &SC::workload>(
        "simulate.workload", "uniform | zipf:S | lognormal:SIGMA | hot:F | rotate | run:FILE.h5",
        "expert loads: a seeded generator or the loads a run recorded"));
    t.push_back(make_field<&C::simulate, &SC::seed>(
        "simulate.seed", "integer in [0, 18446744073709551615]", "seeds the synthetic workloads"));
    t.push_back(make_field<&C::simulate, &SC::scaling>(
        "simulate.scaling", "weak | strong",
        "weak: tokens and experts grow with the ranks; strong: they stay fixed"));
    t.push_back(make_field<&C::simulate, &SC::base_ranks>(
        "simulate.base_ranks", "integer >= 1",
        "weak scaling: the file's tokens and experts are per this many ranks"));
    t.push_back(make_field<&C::simulate, &SC::algorithm>(
        "simulate.algorithm", "\"\" | flat | padded | hierarchical",
        "exchange model; empty = as routing.dispatch (flat or padded)"));
    t.push_back(make_field<&C::simulate, &SC::steps>(
        "simulate.steps", "integer >= 1", "steps simulated per rank count (mean reported)"));
    t.push_back(make_field<&C::simulate, &SC::output>(
        "simulate.output", "path (required unless simulate.validate is given)",
        "HDF5 projection file; a CSV is written beside it"));
    t.push_back(make_field<&C::simulate, &SC::validate>(
        "simulate.validate", "comma-separated paths of moesim run result files",
        "predict these measured runs and report the error per phase"));
    return t;
  }();
  return table;
}

const Field* find_field(const std::string& key) {
  for (const auto& f : fields()) {
    if (f.key == key) return &f;
  }
  return nullptr;
}

std::string section_of(const std::string& key) { return key.substr(0, key.find('.')); }
std::string name_of(const std::string& key) {
  const auto dot = key.rfind('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

// ---------------------------------------------------------------------------------------------
// Unknown keys: suggest the closest known one, since typos are the usual cause.

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  std::iota(row.begin(), row.end(), std::size_t{0});
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::optional<std::string> suggest_key(const std::string& unknown) {
  // A right name in the wrong section (or without one) is found by its field name first.
  const std::string name = name_of(unknown);
  for (const auto& f : fields()) {
    if (name_of(f.key) == name) return f.key;
  }
  const Field* best = nullptr;
  std::size_t best_d = std::numeric_limits<std::size_t>::max();
  for (const auto& f : fields()) {
    const std::size_t d = edit_distance(unknown, f.key);
    if (d < best_d) {
      best_d = d;
      best = &f;
    }
  }
  if (best != nullptr && best_d <= std::max<std::size_t>(2, unknown.size() / 4)) return best->key;
  return std::nullopt;
}

ConfigProblem unknown_key(const std::string& key, const std::string& value,
                          const std::string& where) {
  std::string allowed = "unknown key; see `moesim --help` for the list";
  if (auto s = suggest_key(key)) allowed += "; did you mean " + *s + "?";
  return {key, value, allowed + where};
}

// ---------------------------------------------------------------------------------------------
// INI pre-scan. Boost's config-file parser reports unknown keys without their value and
// duplicates without lines; this scan mirrors its grammar (strip '#' comments, trim, "[section]",
// "name = value") only to give those errors the key, value, file and line.

struct IniEntry {
  std::string key, value;
  int line = 0;
};

std::string trim_ws(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::string file_where(const std::string& source, int line) {
  return " [" + (source.empty() ? std::string("<ini>") : source) + ":" + std::to_string(line) + "]";
}

// Collects every malformed line, unknown key and duplicate into `problems`; returns the entries
// of known keys, first occurrence only.
std::vector<IniEntry> scan_ini(const std::string& text, const std::string& source,
                               std::vector<ConfigProblem>& problems) {
  std::vector<IniEntry> entries;
  std::istringstream in(text);
  std::string raw, prefix;
  int line = 0;
  while (std::getline(in, raw)) {
    ++line;
    std::string s = raw.substr(0, raw.find('#'));
    s = trim_ws(s);
    if (s.empty()) continue;
    const std::string loc =
        (source.empty() ? std::string("<ini>") : source) + ":" + std::to_string(line);
    if (s.front() == '[' && s.back() == ']') {
      prefix = s.substr(1, s.size() - 2);
      if (prefix.empty()) problems.push_back({loc, s, "empty section name"});
      if (!prefix.empty() && prefix.back() != '.') prefix += '.';
      continue;
    }
    const auto eq = s.find('=');
    if (eq == std::string::npos) {
      problems.push_back({loc, s,
                          "not an INI line: expected `key = value`, `[section]` or a `#` comment "
                          "(`;` comments are not supported)"});
      continue;
    }
    entries.push_back({prefix + trim_ws(s.substr(0, eq)), trim_ws(s.substr(eq + 1)), line});
  }
  std::map<std::string, const IniEntry*> seen;
  std::vector<IniEntry> known;
  for (const auto& e : entries) {
    if (find_field(e.key) == nullptr) {
      problems.push_back(unknown_key(e.key, e.value, file_where(source, e.line)));
      continue;
    }
    auto [it, inserted] = seen.emplace(e.key, &e);
    if (!inserted) {
      problems.push_back({e.key, e.value,
                          "given twice in " + (source.empty() ? std::string("<ini>") : source) +
                              " (lines " + std::to_string(it->second->line) + " and " +
                              std::to_string(e.line) + "); keep one"});
      continue;
    }
    known.push_back(e);
  }
  return known;
}

// "--k v" becomes "--k=v" here so that values starting with '-' (e.g. "-1", which validate then
// rejects with a clear message) are not mistaken for options, and a bare boolean flag means true.
// Bad tokens go to `problems` and are left out.
std::vector<std::string> normalize_overrides(const std::vector<std::string>& overrides,
                                             std::vector<ConfigProblem>& problems) {
  std::vector<std::string> args;
  for (std::size_t i = 0; i < overrides.size(); ++i) {
    const std::string& tok = overrides[i];
    if (tok.size() < 3 || tok.compare(0, 2, "--") != 0 || tok[2] == '=') {
      problems.push_back({"(command line)", tok,
                          "unexpected argument; parameters are given as --section.key=value or "
                          "--section.key value"});
      continue;
    }
    const auto eq = tok.find('=');
    const std::string name = tok.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    std::string value;
    if (eq != std::string::npos) {
      value = tok.substr(eq + 1);
    } else if (i + 1 < overrides.size() && overrides[i + 1].compare(0, 2, "--") != 0) {
      value = overrides[++i];
    } else {
      const Field* f = find_field(name);
      if (f == nullptr) {
        problems.push_back(unknown_key(name, "", " [command line]"));
        continue;
      }
      if (!f->is_bool) {
        problems.push_back(
            {name, "", "missing value on the command line: use --" + name + "=VALUE"});
        continue;
      }
      value = "true";
    }
    if (value.empty()) {
      // Boost.PO rejects "--key=" and an empty value is never valid where it matters.
      problems.push_back(
          {name, "", "an empty value cannot be given on the command line [command line]"});
      continue;
    }
    args.push_back("--" + name + "=" + value);
  }
  return args;
}

// ---------------------------------------------------------------------------------------------
// Validation helpers.

// Where validate() collects its problems (require() appends); null outside validate().
thread_local std::vector<ConfigProblem>* g_collector = nullptr;

class CollectProblems {
 public:
  explicit CollectProblems(std::vector<ConfigProblem>& into) : saved_(g_collector) {
    g_collector = &into;
  }
  ~CollectProblems() { g_collector = saved_; }
  CollectProblems(const CollectProblems&) = delete;
  CollectProblems& operator=(const CollectProblems&) = delete;

 private:
  std::vector<ConfigProblem>* saved_;
};

void require_int(std::int64_t v, std::int64_t lo, const std::string& key) {
  require(v >= lo, key, std::to_string(v), "must be an integer >= " + std::to_string(lo));
}

void require_real(double v, bool ok, const std::string& key, const std::string& allowed) {
  require(std::isfinite(v) && ok, key, format_double(v), allowed);
}

void require_nonneg_rational(const Rational& r, const std::string& key) {
  require(r.den > 0 && r.num >= 0, key, r.str(), "must be a decimal number >= 0 (0 = dropless)");
}

// A string the INI file cannot carry would break the promise that to_ini reproduces the run.
void require_ini_safe(const std::string& s, const std::string& key) {
  const bool ok = s.find_first_of("#\n\r") == std::string::npos && trim_ws(s) == s;
  require(ok, key, s,
          "must not contain '#' or line breaks, nor start or end with whitespace "
          "(it could not be stored in the INI file)");
}

}  // namespace

// =============================================================================================
// Rational

Rational Rational::parse(const std::string& text) {
  auto fail = [&](const std::string& why) -> Rational {
    throw std::invalid_argument("'" + text + "' is not a decimal number: " + why);
  };
  std::string_view s = text;
  bool negative = false;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  std::size_t i = 0;
  while (i < s.size() && is_digit(s[i])) ++i;
  const std::string_view int_digits = s.substr(0, i);
  std::string_view frac_digits;
  if (i < s.size() && s[i] == '.') {
    std::size_t j = i + 1;
    while (j < s.size() && is_digit(s[j])) ++j;
    frac_digits = s.substr(i + 1, j - i - 1);
    i = j;
  }
  if (int_digits.empty() && frac_digits.empty()) return fail("expected digits");
  // The exponent saturates: anything this large is out of range unless the mantissa is zero.
  constexpr std::int64_t kExpLimit = 1'000'000;
  std::int64_t exponent = 0;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    bool exp_negative = false;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
      exp_negative = s[i] == '-';
      ++i;
    }
    const std::size_t start = i;
    while (i < s.size() && is_digit(s[i])) {
      exponent = std::min(kExpLimit, exponent * 10 + (s[i] - '0'));
      ++i;
    }
    if (i == start) return fail("expected exponent digits after 'e'");
    if (exp_negative) exponent = -exponent;
  }
  if (i != s.size()) return fail("unexpected character '" + std::string(1, s[i]) + "'");

  // Significant digits without leading/trailing zeros; the trailing ones move into the power of
  // ten, which makes the result canonical (den = 10^n with num not divisible by 10).
  std::string digits = std::string(int_digits) + std::string(frac_digits);
  std::int64_t power = exponent - static_cast<std::int64_t>(frac_digits.size());
  const auto first = digits.find_first_not_of('0');
  if (first == std::string::npos) return Rational{0, 1};
  digits.erase(0, first);
  const auto last = digits.find_last_not_of('0');
  power += static_cast<std::int64_t>(digits.size() - 1 - last);
  digits.erase(last + 1);

  const std::string range = "out of range (at most 18 decimal places, magnitude below 9.2e18)";
  std::int64_t num = 0;
  if (to_integer(digits, num) != IntStatus::ok) return fail(range);
  std::int64_t den = 1;
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  for (; power > 0; --power) {
    if (num > kMax / 10) return fail(range);
    num *= 10;
  }
  for (; power < 0; ++power) {
    if (den > kMax / 10) return fail(range);
    den *= 10;
  }
  return Rational{negative ? -num : num, den};
}

std::string Rational::str() const {
  const bool negative = (num < 0) != (den < 0) && num != 0;
  // Magnitudes as unsigned so that INT64_MIN needs no special case.
  auto magnitude = [](std::int64_t v) {
    return v < 0 ? std::uint64_t{0} - static_cast<std::uint64_t>(v) : static_cast<std::uint64_t>(v);
  };
  std::uint64_t n = magnitude(num);
  std::uint64_t d = magnitude(den);
  const std::string sign = negative ? "-" : "";
  if (d == 0) return sign + std::to_string(n) + "/0";
  const std::uint64_t g = std::gcd(n, d);
  n /= g;
  d /= g;
  // A finite decimal exists iff the reduced denominator is 2^a * 5^b; it has max(a, b) places.
  std::uint64_t rest = d;
  int twos = 0, fives = 0;
  while (rest % 2 == 0) {
    rest /= 2;
    ++twos;
  }
  while (rest % 5 == 0) {
    rest /= 5;
    ++fives;
  }
  if (rest != 1) return sign + std::to_string(n) + "/" + std::to_string(d);
  std::string out = sign + std::to_string(n / d);
  u128 remainder = n % d;
  const int places = std::max(twos, fives);
  if (places > 0) out += '.';
  for (int p = 0; p < places; ++p) {
    remainder *= 10;
    out += static_cast<char>('0' + static_cast<int>(remainder / d));
    remainder %= d;
  }
  return out;
}

// =============================================================================================
// ConfigError

std::string ConfigProblem::str() const {
  return "bad parameter " + key + " = " + (value.empty() ? "\"\"" : value) + ": " + allowed;
}

namespace {
std::string joined_message(const std::vector<ConfigProblem>& problems) {
  if (problems.size() == 1) return problems.front().str();
  std::string out = std::to_string(problems.size()) + " bad parameters:";
  for (const auto& p : problems) out += "\n  " + p.str();
  return out;
}
std::vector<ConfigProblem> non_empty(std::vector<ConfigProblem> problems) {
  if (problems.empty()) problems.push_back({"(internal)", "", "ConfigError without a problem"});
  return problems;
}
}  // namespace

ConfigError::ConfigError(std::string key, std::string value, std::string allowed)
    : ConfigError(
          std::vector<ConfigProblem>{{std::move(key), std::move(value), std::move(allowed)}}) {}

ConfigError::ConfigError(std::vector<ConfigProblem> problems)
    : std::runtime_error(joined_message(non_empty(problems))),
      problems_(non_empty(std::move(problems))) {}

void require(bool ok, const std::string& key, const std::string& value,
             const std::string& allowed) {
  if (ok) return;
  if (g_collector != nullptr) {
    g_collector->push_back({key, value, allowed});
    return;
  }
  throw ConfigError(key, value, allowed);
}

// =============================================================================================
// parse_config

namespace {

// Parses into a Config, collecting every problem; `bad_keys` gets the keys whose value failed.
Config parse_collect(const std::string& ini_text, const std::string& source_name,
                     const std::vector<std::string>& overrides,
                     std::vector<ConfigProblem>& problems, std::set<std::string>& bad_keys) {
  po::options_description desc("MoESim parameters");
  for (const auto& f : fields()) desc.add_options()(f.key.c_str(), po::value<std::string>());

  // key -> (value text, " [where it was set]"); the command line is entered first and wins.
  std::map<std::string, std::pair<std::string, std::string>> values;
  const std::vector<std::string> args = normalize_overrides(overrides, problems);
  try {
    // Long options only and no prefix guessing: "--routing.capacity" must not silently mean
    // routing.capacity_factor.
    const auto style =
        po::command_line_style::allow_long | po::command_line_style::long_allow_adjacent;
    const po::parsed_options cl =
        po::command_line_parser(args).options(desc).style(style).allow_unregistered().run();
    for (const auto& o : cl.options) {
      const std::string value = o.value.empty() ? std::string() : o.value.front();
      if (o.unregistered || o.string_key.empty()) {
        problems.push_back(unknown_key(o.string_key.empty() && !o.original_tokens.empty()
                                           ? o.original_tokens.front()
                                           : o.string_key,
                                       value, " [command line]"));
        continue;
      }
      if (values.count(o.string_key) != 0) {
        problems.push_back({o.string_key, value, "given twice on the command line; keep one"});
        bad_keys.insert(o.string_key);
        continue;
      }
      values[o.string_key] = {value, " [command line]"};
    }
  } catch (const po::error& e) {
    problems.push_back({"(command line)", "", e.what()});
  }

  const std::size_t before_scan = problems.size();
  const std::vector<IniEntry> entries = scan_ini(ini_text, source_name, problems);
  if (problems.size() == before_scan) {
    // A clean file: Boost's own parser is the reference for the INI grammar.
    try {
      std::istringstream in(ini_text);
      po::variables_map vm;
      const po::parsed_options file = po::parse_config_file(in, desc, /*allow_unregistered=*/false);
      po::store(file, vm);
      po::notify(vm);
      std::map<std::string, int> line_of;
      for (const auto& e : entries) line_of[e.key] = e.line;
      for (const auto& [key, v] : vm)
        values.emplace(key,
                       std::make_pair(v.as<std::string>(), file_where(source_name, line_of[key])));
    } catch (const po::error& e) {
      // The pre-scan should have caught everything; this keeps Boost's own wording.
      problems.push_back({source_name.empty() ? std::string("<ini>") : source_name, "", e.what()});
    }
  } else {
    // The file has bad lines (reported): its good entries still count, so that their problems
    // are reported in the same run.
    for (const auto& e : entries)
      values.emplace(e.key, std::make_pair(e.value, file_where(source_name, e.line)));
  }

  Config cfg;
  for (const auto& f : fields()) {
    const auto it = values.find(f.key);
    if (it == values.end()) continue;
    cfg.given.insert(f.key);
    try {
      f.set(cfg, it->second.first, it->second.second);
    } catch (const ConfigError& e) {
      problems.insert(problems.end(), e.problems().begin(), e.problems().end());
      bad_keys.insert(f.key);
    }
  }
  // Rule-dependent defaults: a k that was not given follows the rule (routing.md); a given k
  // is kept, and validate() refuses it if it conflicts.
  if (cfg.given.count("routing.k") == 0) {
    switch (cfg.routing.rule) {
      case RoutingRuleKind::switch_top1:
      case RoutingRuleKind::hash:
      case RoutingRuleKind::base:
        cfg.routing.k = 1;
        break;
      case RoutingRuleKind::gshard:
        cfg.routing.k = 2;
        break;
      default:
        break;
    }
  }
  return cfg;
}

}  // namespace

Config parse_config(const std::string& ini_text, const std::string& source_name,
                    const std::vector<std::string>& overrides) {
  std::vector<ConfigProblem> problems;
  std::set<std::string> bad_keys;
  Config cfg = parse_collect(ini_text, source_name, overrides, problems, bad_keys);
  if (!problems.empty()) throw ConfigError(std::move(problems));
  return cfg;
}

namespace {
void validate_checks(const Config& cfg, Mode mode, int ranks);
}  // namespace

void validate(const Config& cfg, Mode mode, int ranks) {
  std::vector<ConfigProblem> problems;
  {
    const CollectProblems collect(problems);
    validate_checks(cfg, mode, ranks);
  }
  if (!problems.empty()) throw ConfigError(std::move(problems));
}

Config parse_and_validate(const std::string& ini_text, const std::string& source_name,
                          const std::vector<std::string>& overrides, Mode mode, int ranks) {
  std::vector<ConfigProblem> problems;
  std::set<std::string> bad_keys;
  Config cfg = parse_collect(ini_text, source_name, overrides, problems, bad_keys);
  std::vector<ConfigProblem> checks;
  {
    const CollectProblems collect(checks);
    validate_checks(cfg, mode, ranks);
  }
  for (auto& p : checks)
    if (bad_keys.count(p.key) == 0) problems.push_back(std::move(p));
  if (!problems.empty()) throw ConfigError(std::move(problems));
  return cfg;
}

std::string accepted_rules(const char* sep) {
  std::string out;
  for (const auto& n : kRuleNames) {
    if (!rule_accepted(n.value)) continue;
    if (!out.empty()) out += sep;
    out += n.name;
  }
  return out;
}

// =============================================================================================
// validate

namespace {

void validate_checks(const Config& cfg, Mode mode, int ranks) {
  // Every check runs (require() collects), so a check must not rely on an earlier one: guard
  // divisions and derived sizes explicitly.
  require(ranks >= 1, "(MPI ranks)", std::to_string(ranks), "must be >= 1");
  if (ranks < 1) return;
  const std::string nranks = std::to_string(ranks);
  const bool run = mode == Mode::run || mode == Mode::bench;

  const ModelConfig& m = cfg.model;
  require_int(m.d_model, 1, "model.d_model");
  require(m.precision != Precision::bfloat16 || m.d_model % 2 == 0, "model.d_model",
          std::to_string(m.d_model),
          "must be even with model.precision = bfloat16 (bf16 pairs cross the all-to-all as "
          "32-bit words)");
  require_int(m.d_ff, 1, "model.d_ff");
  require_int(m.layers, 1, "model.layers");
  require_real(m.init_scale, m.init_scale > 0, "model.init_scale", "must be a number > 0");

  const RoutingConfig& r = cfg.routing;
  const std::string E = std::to_string(r.num_experts);
  require_int(r.num_experts, 1, "routing.num_experts");
  require_int(r.redundant_experts, 0, "routing.redundant_experts");
  require_int(r.rebalance_every, 0, "routing.rebalance_every");
  if (run && r.num_experts >= 1 && r.redundant_experts > 0 && ranks >= 1) {
    // E + r slots spread evenly over the ranks; the E < P replica groups do not apply.
    require((r.num_experts + r.redundant_experts) % ranks == 0, "routing.redundant_experts",
            std::to_string(r.redundant_experts),
            "must make routing.num_experts + routing.redundant_experts (" + E + " + " +
                std::to_string(r.redundant_experts) + ") divisible by the number of MPI ranks (" +
                nranks + ")");
  }
  require_int(r.overlap_degree, 1, "routing.overlap_degree");
  if (r.overlap_degree > 1) {
    require(r.dispatch == DispatchKind::alltoallv, "routing.overlap_degree",
            std::to_string(r.overlap_degree),
            "must be 1 unless routing.dispatch = alltoallv (the pipeline splits the variable-size "
            "exchange; routing.dispatch is " +
                std::string(to_string(r.dispatch)) + ")");
    if (run && r.num_experts >= 1 && ranks >= 1) {
      // Chunks are whole local experts (each expert's GEMMs keep their shapes: bitwise).
      const std::int64_t slots = r.num_experts + std::max<std::int64_t>(r.redundant_experts, 0);
      const std::int64_t per = slots >= ranks ? slots / ranks : 1;
      require(r.overlap_degree <= per, "routing.overlap_degree", std::to_string(r.overlap_degree),
              "must be at most the experts per rank (" + std::to_string(per) + " with " +
                  std::to_string(slots) + " expert slots on " + nranks +
                  " ranks): a chunk is a group of whole local experts");
    }
  }
  if (run && r.num_experts >= 1 && r.redundant_experts <= 0) {
    require(r.num_experts % ranks == 0 || ranks % r.num_experts == 0, "routing.num_experts", E,
            "must be divisible by the number of MPI ranks (" + nranks +
                ") or divide it (fewer experts than ranks: each expert is replicated on ranks / "
                "num_experts ranks)");
  }
  // moesim route takes E from the trace when routing.num_experts is not given: k <= E is then
  // checked once the trace's width is known (cli replay_trace validates again).
  const bool e_known = mode != Mode::route || cfg.given.count("routing.num_experts") != 0;
  require(r.k >= 1 && (!e_known || r.k <= r.num_experts), "routing.k", std::to_string(r.k),
          "must be an integer in [1, routing.num_experts = " + E + "]");
  // A k that was not given already follows the rule (parse_config); say so when it was given.
  const std::string k_given = cfg.given.count("routing.k") != 0
                                  ? " (routing.k is given explicitly; leave it out to take the "
                                    "rule's default)"
                                  : "";
  require(r.rule != RoutingRuleKind::switch_top1 || r.k == 1, "routing.k", std::to_string(r.k),
          "must be 1 when routing.rule = switch" + k_given);
  require(r.rule != RoutingRuleKind::hash || r.k == 1, "routing.k", std::to_string(r.k),
          "must be 1 when routing.rule = hash" + k_given);
  require(r.rule != RoutingRuleKind::gshard || r.k == 2, "routing.k", std::to_string(r.k),
          "must be 2 when routing.rule = gshard (top-2 routing)" + k_given);
  require(r.rule != RoutingRuleKind::noisy_topk || r.k < 64, "routing.k", std::to_string(r.k),
          "must be below 64 when routing.rule = noisy_topk");
  require((r.rule != RoutingRuleKind::topk) || r.k <= 64, "routing.k", std::to_string(r.k),
          "must be at most 64 when routing.rule = topk");
  require_nonneg_rational(r.capacity_factor, "routing.capacity_factor");
  require_nonneg_rational(r.eval_capacity_factor, "routing.eval_capacity_factor");
  require_int(r.min_capacity, 0, "routing.min_capacity");
  require_int(r.group_size, 0, "routing.group_size");
  require_real(r.aux_loss_coef, r.aux_loss_coef >= 0, "routing.aux_loss_coef",
               "must be a number >= 0");
  require_real(r.z_loss_coef, r.z_loss_coef >= 0, "routing.z_loss_coef", "must be a number >= 0");
  require_real(r.aux_gshard_loss_coef, r.aux_gshard_loss_coef >= 0, "routing.aux_gshard_loss_coef",
               "must be a number >= 0");
  require_real(r.importance_loss_coef, r.importance_loss_coef >= 0, "routing.importance_loss_coef",
               "must be a number >= 0");
  require_real(r.load_loss_coef, r.load_loss_coef >= 0, "routing.load_loss_coef",
               "must be a number >= 0");
  require_real(r.jitter_eps, r.jitter_eps >= 0 && r.jitter_eps < 1, "routing.jitter_eps",
               "must be a number in [0, 1)");
  require_real(r.bias_update_rate, r.bias_update_rate >= 0, "routing.bias_update_rate",
               "must be a number >= 0");
  // Parts of the routing toolkit that are not built yet are refused here, with the key and
  // value, rather than failing later at run time.
  require(rule_accepted(r.rule), "routing.rule", to_string(r.rule),
          "is not available in this build; available: " + accepted_rules("|"));
  require(r.score == ScoreKind::softmax || r.rule == RoutingRuleKind::topk ||
              r.rule == RoutingRuleKind::switch_top1,
          "routing.score", to_string(r.score),
          "must be softmax unless routing.rule = topk or switch (sigmoid scores select the top k)");
  require_int(r.shared_experts, 0, "routing.shared_experts");
  require_real(r.base_tolerance, r.base_tolerance > 0 && r.base_tolerance <= 1,
               "routing.base_tolerance", "must be a number in (0, 1]");
  require(r.rule != RoutingRuleKind::base || r.k == 1, "routing.k", std::to_string(r.k),
          "must be 1 when routing.rule = base (one expert per token)");
  require(r.rule != RoutingRuleKind::base || r.dispatch == DispatchKind::alltoallv,
          "routing.dispatch", to_string(r.dispatch),
          "must be alltoallv when routing.rule = base (no capacity to pad to)");
  require_int(r.expert_groups, 1, "routing.expert_groups");
  // (guarded: every check runs even after an earlier one failed; no division by 0)
  require(r.expert_groups < 1 || r.num_experts % r.expert_groups == 0, "routing.expert_groups",
          std::to_string(r.expert_groups),
          "must divide routing.num_experts = " + std::to_string(r.num_experts));
  require(r.group_limit >= 0 && r.group_limit <= r.expert_groups, "routing.group_limit",
          std::to_string(r.group_limit),
          "must be in [0, routing.expert_groups = " + std::to_string(r.expert_groups) + "]");
  if (r.expert_groups >= 1 && r.group_limit > 0 && r.group_limit < r.expert_groups) {
    require(r.rule == RoutingRuleKind::topk || r.rule == RoutingRuleKind::switch_top1,
            "routing.group_limit", std::to_string(r.group_limit),
            "a limit below routing.expert_groups needs routing.rule = topk or switch (not " +
                std::string(to_string(r.rule)) + ")");
    const std::int64_t k = r.rule == RoutingRuleKind::switch_top1 ? 1 : r.k;
    require(k <= r.group_limit * (r.num_experts / r.expert_groups), "routing.group_limit",
            std::to_string(r.group_limit),
            "must leave at least routing.k = " + std::to_string(k) +
                " experts (group_limit * num_experts / expert_groups)");
  }
  require(r.dispatch != DispatchKind::alltoall_padded ||
              (!r.dropless && r.capacity_factor.num > 0 && r.eval_capacity_factor.num > 0 &&
               r.rule != RoutingRuleKind::dense),
          "routing.dispatch", to_string(r.dispatch),
          "needs a capacity to pad to: not with routing.dropless = true, a capacity factor of 0 "
          "or routing.rule = dense (use alltoallv)");
  // Cross-key checks of the routing rules (README "What is computed"). Keys a rule does not
  // use are ignored, not refused: dense and expert_choice ignore k and drop_policy (dense
  // also the capacity keys); renormalize is read by topk only, random_routing by gshard only.
  if (r.rule == RoutingRuleKind::hash) {
    const std::pair<const char*, double> coefs[] = {
        {"routing.aux_loss_coef", r.aux_loss_coef},
        {"routing.aux_gshard_loss_coef", r.aux_gshard_loss_coef},
        {"routing.importance_loss_coef", r.importance_loss_coef},
        {"routing.load_loss_coef", r.load_loss_coef},
        {"routing.z_loss_coef", r.z_loss_coef}};
    for (const auto& [key, coef] : coefs)
      require(coef == 0, key, format_double(coef),
              "must be 0 when routing.rule = hash (no learned router: the loss would have no "
              "gradient)");
  }
  require(r.jitter_eps == 0 || r.rule == RoutingRuleKind::switch_top1, "routing.jitter_eps",
          format_double(r.jitter_eps),
          "must be 0 unless routing.rule = switch (router-input jitter)");
  require(
      r.bias_update_rate == 0 || r.rule == RoutingRuleKind::topk ||
          r.rule == RoutingRuleKind::switch_top1,
      "routing.bias_update_rate", format_double(r.bias_update_rate),
      "must be 0 unless routing.rule = topk or switch (aux-loss-free balancing by expert bias)");
  if (r.rule == RoutingRuleKind::expert_choice) {
    require(!r.dropless, "routing.dropless", "true",
            "must be false when routing.rule = expert_choice (each expert takes C = ceil(S * cf / "
            "E) tokens)");
    require(r.capacity_factor.num > 0, "routing.capacity_factor", r.capacity_factor.str(),
            "must be > 0 when routing.rule = expert_choice (it sets the tokens per expert)");
    require(r.eval_capacity_factor.num > 0, "routing.eval_capacity_factor",
            r.eval_capacity_factor.str(),
            "must be > 0 when routing.rule = expert_choice (it sets the tokens per expert)");
  }

  // Strings are checked in both modes: to_ini writes all of them into every result file.
  require_ini_safe(cfg.data.task, "data.task");
  require_ini_safe(cfg.output.file, "output.file");
  require_ini_safe(cfg.trace.input, "trace.input");
  require_ini_safe(cfg.checkpoint.file, "checkpoint.file");
  require_ini_safe(cfg.trace.output, "trace.output");

  if (run) {
    const TrainingConfig& t = cfg.training;
    require_int(t.steps, 1, "training.steps");
    require_real(t.learning_rate, t.learning_rate > 0, "training.learning_rate",
                 "must be a number > 0");
    require_real(t.momentum, t.momentum >= 0 && t.momentum < 1, "training.momentum",
                 "must be a number in [0, 1)");
    require_real(t.beta1, t.beta1 >= 0 && t.beta1 < 1, "training.beta1",
                 "must be a number in [0, 1)");
    require_real(t.beta2, t.beta2 >= 0 && t.beta2 < 1, "training.beta2",
                 "must be a number in [0, 1)");
    require_real(t.epsilon, t.epsilon > 0, "training.epsilon", "must be a number > 0");
    require_real(t.weight_decay, t.weight_decay >= 0, "training.weight_decay",
                 "must be a number >= 0");
    require_int(t.eval_every, 0, "training.eval_every");

    const DataConfig& d = cfg.data;
    require(d.task == "clusters", "data.task", d.task, "must be one of clusters");
    require_int(d.tokens_per_step, 1, "data.tokens_per_step");
    require(d.tokens_per_step % ranks == 0, "data.tokens_per_step",
            std::to_string(d.tokens_per_step),
            "must be divisible by the number of MPI ranks (" + nranks + ")");
    require_int(d.eval_tokens, 1, "data.eval_tokens");
    require(d.eval_tokens % ranks == 0, "data.eval_tokens", std::to_string(d.eval_tokens),
            "must be divisible by the number of MPI ranks (" + nranks + ")");
    if (r.group_size > 0) {
      // A group never spans two ranks (routing.md), so it must tile each rank's share exactly.
      const std::int64_t share = d.tokens_per_step / ranks;
      require(share % r.group_size == 0, "routing.group_size", std::to_string(r.group_size),
              "must divide each rank's share of data.tokens_per_step (" +
                  std::to_string(d.tokens_per_step) + " / " + nranks +
                  " ranks = " + std::to_string(share) + " tokens), or be 0");
      const std::int64_t eval_share = d.eval_tokens / ranks;
      require(eval_share % r.group_size == 0, "routing.group_size", std::to_string(r.group_size),
              "must divide each rank's share of data.eval_tokens (" +
                  std::to_string(d.eval_tokens) + " / " + nranks +
                  " ranks = " + std::to_string(eval_share) + " tokens), or be 0");
    }
    if (r.rule == RoutingRuleKind::base) {
      // BASE balances exactly S / E tokens per expert: the group size must be a multiple of E.
      const std::int64_t share = d.tokens_per_step / ranks;
      const std::int64_t S = r.group_size > 0 ? r.group_size : share;
      require(r.num_experts < 1 || S % r.num_experts == 0,
              r.group_size > 0 ? "routing.group_size" : "data.tokens_per_step",
              std::to_string(r.group_size > 0 ? r.group_size : d.tokens_per_step),
              "must give routing groups of a multiple of routing.num_experts = " + E +
                  " tokens when routing.rule = base (group of " + std::to_string(S) +
                  " tokens; exactly S / E tokens per expert)");
    }
    require_int(d.num_clusters, 1, "data.num_clusters");
    // Written as a division so that a huge num_clusters cannot overflow 2 * num_clusters.
    require(d.input_dim >= 0 && d.num_clusters <= d.input_dim / 2, "data.input_dim",
            std::to_string(d.input_dim),
            "must be an integer >= 2 * data.num_clusters (data.num_clusters = " +
                std::to_string(d.num_clusters) + ")");
    require_real(d.signal_strength, true, "data.signal_strength", "must be a finite number");
    require_real(d.center_strength, true, "data.center_strength", "must be a finite number");
    require_real(d.feature_noise, true, "data.feature_noise", "must be a finite number");
    require_real(d.noise_std, d.noise_std >= 0, "data.noise_std", "must be a number >= 0");

    require(!cfg.output.file.empty(), "output.file", cfg.output.file, "must be a non-empty path");
    require_int(cfg.output.log_every, 0, "output.log_every");
    require_int(cfg.output.loads_every, 0, "output.loads_every");
    require_int(cfg.output.traffic_every, 0, "output.traffic_every");
    require_int(cfg.bench.warmup, 0, "bench.warmup");
    require_int(cfg.bench.iterations, 1, "bench.iterations");
    require_int(cfg.checkpoint.every, 0, "checkpoint.every");

  } else if (mode == Mode::route) {
    require(!cfg.trace.input.empty(), "trace.input", cfg.trace.input,
            "must name the input trace file (an HDF5 file with /logits [T,E], or a router-choice "
            "trace *.jsonl) for moesim route");
    require(!cfg.trace.output.empty(), "trace.output", cfg.trace.output,
            "must name the output file for moesim route");
    require(cfg.trace.output != cfg.trace.input, "trace.output", cfg.trace.output,
            "must differ from trace.input (the input trace would be overwritten)");
  }

  // Machine description: read by simulate, written by calibrate, stored in every file.
  const ClusterConfig& cl = cfg.cluster;
  for (const auto* s : {&cl.file, &cl.output, &cl.name, &cl.measured})
    require_ini_safe(*s, s == &cl.file     ? "cluster.file"
                         : s == &cl.output ? "cluster.output"
                         : s == &cl.name   ? "cluster.name"
                                           : "cluster.measured");
  require_int(cl.ranks_per_node, 1, "cluster.ranks_per_node");
  require_int(cl.shared_cores, 0, "cluster.shared_cores");
  const std::pair<const char*, double> positive[] = {
      {"cluster.intra_bandwidth_GBps", cl.intra_bandwidth_GBps},
      {"cluster.inter_bandwidth_GBps", cl.inter_bandwidth_GBps},
      {"cluster.gemm_GFLOPs", cl.gemm_GFLOPs},
      {"cluster.memory_bandwidth_GBps", cl.memory_bandwidth_GBps}};
  for (const auto& [key, v] : positive) require_real(v, v > 0, key, "must be a number > 0");
  const std::pair<const char*, double> nonneg[] = {
      {"cluster.intra_latency_us", cl.intra_latency_us},
      {"cluster.inter_latency_us", cl.inter_latency_us},
      {"cluster.gemm_GFLOPs_float64", cl.gemm_GFLOPs_float64},
      {"cluster.route_ns_per_score", cl.route_ns_per_score},
      {"cluster.step_overhead_us", cl.step_overhead_us},
      {"cluster.optimizer_ns_per_param", cl.optimizer_ns_per_param},
      {"cluster.data_ns_per_value", cl.data_ns_per_value},
      {"cluster.inter_burst_bytes", cl.inter_burst_bytes},
      {"cluster.inter_burst_GBps", cl.inter_burst_GBps},
      {"cluster.intra_fit_rel_rms", cl.intra_fit_rel_rms},
      {"cluster.inter_fit_rel_rms", cl.inter_fit_rel_rms},
      {"cluster.gemm_fit_rel_rms", cl.gemm_fit_rel_rms}};
  for (const auto& [key, v] : nonneg) require_real(v, v >= 0, key, "must be a number >= 0");
  if (cl.inter_burst_bytes > 0)
    require_real(cl.inter_burst_GBps, cl.inter_burst_GBps > cl.inter_bandwidth_GBps,
                 "cluster.inter_burst_GBps",
                 "must exceed cluster.inter_bandwidth_GBps when cluster.inter_burst_bytes > 0");
  require_ini_safe(cl.expert_table, "cluster.expert_table");
  require_ini_safe(cl.calibrate_expert_shapes, "cluster.calibrate_expert_shapes");
  (void)parse_expert_table(cl.expert_table);
  (void)parse_expert_shapes(cl.calibrate_expert_shapes);

  const SimulateConfig& sm = cfg.simulate;
  require_ini_safe(sm.ranks, "simulate.ranks");
  require_ini_safe(sm.workload, "simulate.workload");
  require_ini_safe(sm.output, "simulate.output");
  require_ini_safe(sm.validate, "simulate.validate");
  require_int(sm.ranks_per_node, 0, "simulate.ranks_per_node");
  require_int(sm.base_ranks, 1, "simulate.base_ranks");
  require_int(sm.steps, 1, "simulate.steps");
  require(sm.scaling == "weak" || sm.scaling == "strong", "simulate.scaling", sm.scaling,
          "must be one of weak|strong");
  require(sm.algorithm.empty() || sm.algorithm == "flat" || sm.algorithm == "padded" ||
              sm.algorithm == "hierarchical",
          "simulate.algorithm", sm.algorithm,
          "must be one of flat|padded|hierarchical, or empty (= routing.dispatch)");
  if (mode == Mode::simulate) {
    require(ranks == 1, "(MPI ranks)", nranks,
            "must be 1: moesim simulate runs in one process (start it without mpirun)");
    require(!cl.file.empty(), "cluster.file", cl.file,
            "must name a machine file (INI with a [cluster] section) for moesim simulate");
    require(!sm.output.empty() || !sm.validate.empty(), "simulate.output", sm.output,
            "must name the HDF5 projection file to write (or give simulate.validate)");
    if (sm.validate.empty()) {
      // Rank counts: a non-empty comma-separated list of integers in [1, 2^20].
      std::string item;
      std::istringstream in(sm.ranks);
      int count = 0;
      while (std::getline(in, item, ',')) {
        item = trim_ws(item);
        std::int64_t v = 0;
        require(to_integer(item, v) == IntStatus::ok && v >= 1 && v <= (std::int64_t{1} << 20),
                "simulate.ranks", sm.ranks,
                "must be comma-separated integers in [1, 1048576] (bad item '" + item + "')");
        ++count;
      }
      require(count > 0, "simulate.ranks", sm.ranks, "must list at least one rank count");
    }
  }
  if (mode == Mode::calibrate)
    require(!cl.output.empty(), "cluster.output", cl.output,
            "must name the machine file to write for moesim calibrate");
}

}  // namespace

// =============================================================================================
// Printers

std::string to_ini(const Config& cfg) {
  std::string out =
      "# MoESim parameters, fully resolved: `moesim run` on this file reproduces the run\n";
  std::string section;
  for (const auto& f : fields()) {
    if (section_of(f.key) != section) {
      section = section_of(f.key);
      out += "\n[" + section + "]\n";
    }
    const std::string value = f.get(cfg);
    out += name_of(f.key) + (value.empty() ? " =" : " = " + value) + "\n";
  }
  return out;
}

std::string to_table(const Config& cfg) {
  std::size_t width = 0;
  for (const auto& f : fields()) width = std::max(width, f.key.size());
  std::string out;
  for (const auto& f : fields()) {
    const std::string value = f.get(cfg);
    out += f.key + std::string(width - f.key.size() + 2, ' ') + (value.empty() ? "\"\"" : value) +
           "\n";
  }
  return out;
}

std::string help_text() {
  const Config defaults;
  std::string out =
      "Definitions: docs/routing.md (routing rules, capacity), docs/outputs.md (files, keys),\n"
      "docs/memory.md (the per-rank memory estimate of `moesim validate`).\n"
      "Parameters: INI `[section]` + `key = value` lines (comments start with '#'), or\n"
      "--section.key=VALUE / --section.key VALUE on the command line (the command line wins).\n";
  std::string section;
  for (const auto& f : fields()) {
    if (section_of(f.key) != section) {
      section = section_of(f.key);
      out += "\n[" + section + "]\n";
    }
    const std::string value = f.get(defaults);
    out += "  " + f.key + " = " + (value.empty() ? "\"\"" : value) + "\n";
    out += "      " + f.meaning + "; allowed: " + f.allowed + "\n";
  }
  return out;
}

const char* to_string(Activation v) { return enum_name(v); }
std::vector<ExpertTimePoint> parse_expert_table(const std::string& text) {
  static const char* key = "cluster.expert_table";
  static const char* format =
      "must be \"\" or entries \"PRECISION DxF ROWS FWD_MS BWD_MS\" separated by ';' "
      "(PRECISION one of ";
  std::vector<ExpertTimePoint> out;
  std::istringstream entries(text);
  std::string entry;
  while (std::getline(entries, entry, ';')) {
    std::istringstream in(entry);
    std::vector<std::string> tok;
    for (std::string t; in >> t;) tok.push_back(t);
    if (tok.empty()) continue;
    const auto bad = [&](const std::string& why) {
      throw ConfigError(key, entry,
                        std::string(format) + enum_list<Precision>("|") + "; " + why + ")");
    };
    if (tok.size() != 5) bad("5 fields per entry");
    ExpertTimePoint p;
    bool known = false;
    for (const auto& n : names_of(Precision{})) {
      if (tok[0] == n.name) {
        p.precision = n.value;
        known = true;
      }
    }
    if (!known) bad("unknown precision");
    const auto x = tok[1].find('x');
    if (x == std::string::npos || to_integer(tok[1].substr(0, x), p.d_model) != IntStatus::ok ||
        to_integer(tok[1].substr(x + 1), p.d_ff) != IntStatus::ok || p.d_model < 1 || p.d_ff < 1)
      bad("DxF: two integers >= 1");
    if (to_integer(tok[2], p.rows) != IntStatus::ok || p.rows < 1) bad("ROWS: an integer >= 1");
    const auto fwd = to_double(tok[3]), bwd = to_double(tok[4]);
    if (!fwd || !bwd || *fwd <= 0 || *bwd <= 0) bad("FWD_MS, BWD_MS: numbers > 0");
    p.fwd_s = *fwd * 1e-3;
    p.bwd_s = *bwd * 1e-3;
    out.push_back(p);
  }
  const auto order = [](const ExpertTimePoint& a, const ExpertTimePoint& b) {
    return std::tie(a.precision, a.d_model, a.d_ff, a.rows) <
           std::tie(b.precision, b.d_model, b.d_ff, b.rows);
  };
  std::sort(out.begin(), out.end(), order);
  for (std::size_t i = 1; i < out.size(); ++i) {
    if (!order(out[i - 1], out[i]))
      throw ConfigError(key, text,
                        std::string("lists ") + enum_name(out[i].precision) + " " +
                            std::to_string(out[i].d_model) + "x" + std::to_string(out[i].d_ff) +
                            " at " + std::to_string(out[i].rows) +
                            " rows twice; each (precision, shape, rows) at most once");
  }
  return out;
}

std::vector<std::pair<std::int64_t, std::int64_t>> parse_expert_shapes(const std::string& text) {
  std::vector<std::pair<std::int64_t, std::int64_t>> out;
  std::istringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    if (b == std::string::npos) {
      if (text.find_first_not_of(" \t") == std::string::npos) continue;
      throw ConfigError("cluster.calibrate_expert_shapes", text,
                        "must be \"\" or DxF[,DxF...] with integers >= 1 (an item is empty)");
    }
    const std::string t = item.substr(b, e - b + 1);
    const auto x = t.find('x');
    std::int64_t d = 0, f = 0;
    if (x == std::string::npos || to_integer(t.substr(0, x), d) != IntStatus::ok ||
        to_integer(t.substr(x + 1), f) != IntStatus::ok || d < 1 || f < 1)
      throw ConfigError("cluster.calibrate_expert_shapes", t,
                        "must be \"\" or DxF[,DxF...] with integers >= 1 (e.g. 128x512,64x256)");
    out.emplace_back(d, f);
  }
  return out;
}

const char* to_string(Precision v) { return enum_name(v); }
const char* to_string(RoutingRuleKind v) { return enum_name(v); }
const char* to_string(DropPolicyKind v) { return enum_name(v); }
const char* to_string(OptimizerKind v) { return enum_name(v); }
const char* to_string(DispatchKind v) { return enum_name(v); }
const char* to_string(ScoreKind v) { return enum_name(v); }
const char* to_string(AuxScope v) { return enum_name(v); }

}  // namespace moesim
