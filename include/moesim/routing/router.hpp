// Routing: from router logits of one routing group to the kept (token, expert, slot,
// weight) assignments, the dropped ones, and the router losses — and back (gradients of
// the loss with respect to the logits and, for noisy_topk, the noise scale). Definitions:
// docs/routing.md; the choices this code makes where the papers leave room are in
// the comments of rules.cpp / policies.cpp / losses.hpp and in README "What is computed".
//
// Words: a *candidate* is a (token, expert) pair a rule selected; a candidate is *kept*
// if the drop policy fits it under the expert's capacity, else *dropped*. The *slot* of a
// kept candidate is its index in the expert's buffer for the group.
//
// A rule and a drop policy are each one class: adding one is one new class plus a line in
// make_rule / make_drop_policy. All arithmetic here is double precision: logits of fp32
// runs are widened once per group, so routing decisions are made the same way at any
// model precision. Every random draw comes from a counter-based stream keyed by (seed,
// step, layer, global token id) — never by rank (random.hpp).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "moesim/config/config.hpp"

namespace moesim::routing {

// C = max(ceil(k * S * cf / E), min_capacity) in exact integer arithmetic on the decimal
// text of cf (routing.md: ceil(50 * 1.1) = 55). Returns -1 (no limit) when cf == 0.
std::int64_t capacity(std::int64_t k, std::int64_t group_tokens, std::int64_t num_experts,
                      const Rational& cf, std::int64_t min_capacity);

// Evaluation tokens are keyed in their own id space: the layer adds this to their ids, so
// an evaluation token never shares a key (hash expert, draws) with a training token.
inline constexpr std::int64_t kEvalTokenIdBase = std::int64_t{1} << 62;

// Where a group sits in the run: what keys its random draws and hash experts, plus the
// per-token inputs some rules need besides the logits.
struct RouteContext {
  bool training = true;          // false: evaluation (no noise, jitter or random routing)
  std::uint64_t seed = 0;        // training.seed
  std::int64_t step = 0;         // training step (draws differ per step)
  std::int64_t layer = 0;        // MoE layer index
  std::int64_t first_token = 0;  // global id of the group's token 0 (ids are consecutive)
  std::span<const std::int64_t> token_ids;  // if non-empty: explicit global ids [S] (traces)
  std::span<const double>
      noise_std;                 // [S*E] softplus(x W_noise) (noisy_topk, training); empty = none
  std::span<const double> bias;  // [E] expert bias of aux-loss-free balancing; empty = none
  [[nodiscard]] std::int64_t token_id(std::int64_t t) const {
    return token_ids.empty() ? first_token + t : token_ids[static_cast<std::size_t>(t)];
  }
};

struct Candidate {
  std::int32_t token = 0;   // index within the group
  std::int32_t expert = 0;  // global expert index
  std::int32_t choice = 0;  // 0 = the token's first choice, 1 = second, ...
  double weight = 0;        // combine weight (gradient flows through it)
  bool kept = false;        // set by the drop policy
  std::int32_t slot = -1;   // index in the expert's buffer for the group, -1 if dropped
};

// Everything the router decided for one group, with the values its backward needs.
struct GroupRouting {
  std::vector<Candidate> cands;      // token order, choice order within a token
  std::vector<std::int64_t> routed;  // [E] candidates per expert before capacity
  std::vector<std::int64_t> kept;    // [E] after capacity
  std::vector<double> lse;           // [S] logsumexp of each token's logits (z-loss)
  std::vector<double> sig;           // [S*E] routing.score = sigmoid: s = sigmoid(h); else empty
  std::vector<double> scores;        // [S*E] selection scores where a rule keeps them
                                     // (noisy_topk: noisy logits; bias: p + b)
  std::vector<double> noise;         // [S*E] noisy_topk: the N(0,1) draws
  std::vector<std::int32_t> picks;   // gshard: [S*2] the top-2 experts (before random routing)
  std::vector<double> importance_e;  // [E] sum_t G_t,e (gate weights before capacity)
  std::vector<double> load_e;        // [E] Shazeer's load (smooth estimate or counts)
  bool smooth_load = false;          // load_e is the differentiable estimator
  std::int64_t capacity = -1;        // per expert for this group, -1 = unlimited
  double aux = 0;                    // (E/k) sum_e f_e P_e, before its coefficient
  double aux_gshard = 0;             // E sum_e (c_e/S) P_e (first choices)
  double importance = 0;             // CV^2(importance_e)
  double load = 0;                   // CV^2(load_e)
  double z = 0;                      // mean_t lse_t^2, before its coefficient
  std::int64_t dropped = 0;          // dropped candidates
  double base_epsilon = 0;           // base (training): final epsilon of the auction, else 0
};

// dL/d(each router loss of one group): the coefficient over (layers * groups).
struct LossScales {
  double aux = 0, aux_gshard = 0, importance = 0, load = 0, z = 0;
  // routing.aux_scope = batch: dL/dp_t,e of the global-batch aux loss, the same for every
  // token of the layer ([E]; empty = none). The layer computes it; `aux` is then 0.
  std::span<const double> aux_batch_dp;
};

// One group's inputs as the rules see them.
struct RuleInput {
  std::span<const double> logits;  // [S*E] (empty for rules without a learned router)
  std::span<const double> probs;   // [S*E] softmax of logits (zeros without a router);
                                   // routing.score = sigmoid: s / sum_e s (what losses use)
  std::span<const double> sig;     // [S*E] sigmoid scores s (routing.score = sigmoid), else empty
  std::int64_t S = 0, E = 0;
  std::int64_t capacity = -1;  // this group's capacity (expert_choice selects with it)
  const RouteContext* ctx = nullptr;
};

// Gradient outputs of one group, all accumulated into ([S*E] each; dnoise_std may be empty).
struct RuleGrads {
  std::span<double> dprobs, dlogits, dnoise_std;
};

// A routing rule picks candidates from one group's logits/probabilities.
class RoutingRule {
 public:
  virtual ~RoutingRule() = default;
  [[nodiscard]] virtual const char* name() const = 0;
  // false: no router logits at all (hash); the layer then has no gate parameter.
  [[nodiscard]] virtual bool learned() const { return true; }
  // false: the rule fixes its own assignment counts (dense, expert_choice) and the drop
  // policy is not applied; every candidate is kept.
  [[nodiscard]] virtual bool uses_drop_policy() const { return true; }
  // Per-expert capacity of a group of S tokens under capacity factor cf (-1 = unlimited).
  [[nodiscard]] virtual std::int64_t capacity(std::int64_t S, std::int64_t E, const Rational& cf,
                                              const RoutingConfig& cfg) const;
  // The most candidates one token can get (buffers are sized with it once).
  [[nodiscard]] virtual std::int64_t max_choices(std::int64_t E) const = 0;
  // Choices per token k in the aux-loss normalisation E/k.
  [[nodiscard]] virtual double choices_per_token(std::int64_t S, std::int64_t E,
                                                 std::int64_t capacity) const = 0;
  // Appends the group's candidates to out.cands in token order, choice order within a
  // token (weights set, kept/slot not yet), and whatever state its backward needs.
  virtual void select(const RuleInput& in, GroupRouting& out) const = 0;
  // Given dL/dweight of every candidate (same order as r.cands), accumulates into g.
  virtual void backward(const RuleInput& in, const GroupRouting& r, std::span<const double> dweight,
                        const RuleGrads& g) const = 0;
  // Shazeer's load per expert. Returns false when the rule has no smooth estimator here
  // (then the router uses the pre-capacity counts, which carry no gradient).
  virtual bool smooth_load(const RuleInput& /*in*/, const GroupRouting& /*r*/,
                           std::span<double> /*load_e*/) const {
    return false;
  }
  // Accumulates the gradient of sum_e dload_e * load_e into g (smooth estimator only).
  virtual void smooth_load_backward(const RuleInput& /*in*/, const GroupRouting& /*r*/,
                                    std::span<const double> /*dload_e*/,
                                    const RuleGrads& /*g*/) const {}
};

// A drop policy decides which candidates fit under capacity and assigns slots.
class DropPolicy {
 public:
  virtual ~DropPolicy() = default;
  [[nodiscard]] virtual const char* name() const = 0;
  // Sets kept/slot of every candidate. capacity < 0 means unlimited. probs is [S, E].
  virtual void apply(std::span<Candidate> cands, std::span<const double> probs, std::int64_t S,
                     std::int64_t E, std::int64_t capacity) const = 0;
};

std::unique_ptr<RoutingRule> make_rule(const RoutingConfig& cfg);
// base (base_assignment.cpp): balanced assignment by auction.
std::unique_ptr<RoutingRule> make_base_rule(const RoutingConfig& cfg);
std::unique_ptr<DropPolicy> make_drop_policy(const RoutingConfig& cfg);
std::unique_ptr<DropPolicy> make_drop_policy(DropPolicyKind kind);

// Rule + drop policy + capacity + losses for groups of a fixed size.
class Router {
 public:
  Router(const RoutingConfig& cfg, std::int64_t group_tokens);
  [[nodiscard]] std::int64_t num_experts() const { return E_; }
  [[nodiscard]] std::int64_t group_tokens() const { return S_; }
  // The most candidates of one token (rule dependent: k, 2, 1 or E).
  [[nodiscard]] std::int64_t max_choices() const { return rule_->max_choices(E_); }
  [[nodiscard]] const RoutingRule& rule() const { return *rule_; }
  // Capacity per expert under training or evaluation capacity factor (-1 = unlimited).
  [[nodiscard]] std::int64_t capacity(bool training) const {
    return training ? train_capacity_ : eval_capacity_;
  }

  // Routes one group. logits [S*E] in (ignored by rules without a router); probs [S*E]
  // out: softmax(h), or with routing.score = sigmoid p = s / sum_e s (s = sigmoid(h), kept in
  // out.sig); result out.
  void route(std::span<const double> logits, std::span<double> probs, const RouteContext& ctx,
             GroupRouting& out) const;
  // Shorthand without keys: group token ids 0..S-1, step 0, layer 0, seed 0.
  void route(std::span<const double> logits, std::span<double> probs, bool training,
             GroupRouting& out) const;

  // Backward of one group routed with `ctx`: dweight per candidate (same order as
  // out.cands) and the loss scales; writes dlogits [S*E] and, if non-empty, dnoise_std
  // [S*E] (noisy_topk). dprobs_work is [S*E] scratch.
  void backward(const RouteContext& ctx, std::span<const double> logits,
                std::span<const double> probs, const GroupRouting& r,
                std::span<const double> dweight, const LossScales& scales,
                std::span<double> dprobs_work, std::span<double> dlogits,
                std::span<double> dnoise_std = {}) const;

 private:
  std::int64_t E_, S_;
  bool sigmoid_;  // routing.score = sigmoid
  std::int64_t train_capacity_, eval_capacity_;
  std::unique_ptr<RoutingRule> rule_;
  std::unique_ptr<DropPolicy> policy_;
  std::unique_ptr<DropPolicy> keep_all_;  // rules that fix their own counts
  // Scratch reused across groups and steps (no allocation once warm).
  mutable std::vector<std::int64_t> first_;  // [E] first choices per expert
  mutable std::vector<double> mean_p_;       // [E] P_e
  mutable std::vector<double> dweight_;      // dweight + importance-loss term
  mutable std::vector<double> dsum_;         // [E] per-expert gradient terms
};

// Numerically stable softmax of each row; returns the row's logsumexp in lse (optional).
void softmax_rows(std::span<const double> logits, std::int64_t rows, std::int64_t cols,
                  std::span<double> probs, std::span<double> lse);

}  // namespace moesim::routing
