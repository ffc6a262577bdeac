// Routing: from router logits of one routing group to the kept (token, expert, slot,
// weight) assignments, the dropped ones, and the router losses — and back (gradients of
// the loss with respect to the logits). Definitions: shared/spec/routing.md.
//
// Words: a *candidate* is a (token, expert) pair a rule selected; a candidate is *kept*
// if the drop policy fits it under the expert's capacity, else *dropped*. The *slot* of a
// kept candidate is its index in the expert's buffer for the group.
//
// A rule and a drop policy are each one class: adding one is one new class plus a line in
// make_rule / make_drop_policy. All arithmetic here is double precision: logits of fp32
// runs are widened once per group, so routing decisions are made the same way at any
// model precision.
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

struct Candidate {
  std::int32_t token = 0;   // index within the group
  std::int32_t expert = 0;  // global expert index
  std::int32_t choice = 0;  // 0 = first choice, 1 = second, ...
  double weight = 0;        // combine weight (gradient flows through it)
  bool kept = false;        // set by the drop policy
  std::int32_t slot = -1;   // index in the expert's buffer for the group, -1 if dropped
};

// A routing rule picks candidates from one group's logits/probabilities.
class RoutingRule {
 public:
  virtual ~RoutingRule() = default;
  [[nodiscard]] virtual const char* name() const = 0;
  // Choices per token that enter the aux-loss normalisation E/k.
  [[nodiscard]] virtual int choices_per_token() const = 0;
  // Appends the candidates of the group to `out` in token order, choice order within a
  // token. logits/probs are [S, E] row-major.
  virtual void select(std::span<const double> logits, std::span<const double> probs,
                      std::int64_t S, std::int64_t E, std::vector<Candidate>& out) const = 0;
  // Given dL/dweight of each candidate (0 for dropped ones), accumulates dL/dprobs and
  // (for rules whose weights depend on logits directly) dL/dlogits, both [S, E].
  virtual void backward(std::span<const double> logits, std::span<const double> probs,
                        std::int64_t S, std::int64_t E, std::span<const Candidate> cands,
                        std::span<const double> dweight, std::span<double> dprobs,
                        std::span<double> dlogits) const = 0;
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
std::unique_ptr<DropPolicy> make_drop_policy(const RoutingConfig& cfg);

// Everything the router decided for one group, with the values its backward needs.
struct GroupRouting {
  std::vector<Candidate> cands;        // token order, choice order within a token
  std::vector<std::int64_t> routed;    // [E] candidates per expert before capacity
  std::vector<std::int64_t> kept;      // [E] after capacity
  std::vector<double> lse;             // [S] logsumexp of each token's logits (z-loss)
  std::int64_t capacity = -1;          // per expert for this group, -1 = unlimited
  double aux = 0;                      // (E/k) sum_e f_e P_e, before its coefficient
  double z = 0;                        // mean_t lse_t^2, before its coefficient
  std::int64_t dropped = 0;            // dropped candidates
};

// Rule + drop policy + capacity + losses for groups of a fixed size.
class Router {
 public:
  Router(const RoutingConfig& cfg, std::int64_t group_tokens);
  [[nodiscard]] std::int64_t num_experts() const { return E_; }
  [[nodiscard]] std::int64_t group_tokens() const { return S_; }
  [[nodiscard]] const RoutingRule& rule() const { return *rule_; }
  // Capacity per expert under training or evaluation capacity factor.
  [[nodiscard]] std::int64_t capacity(bool training) const {
    return training ? train_capacity_ : eval_capacity_;
  }

  // Routes one group. logits [S*E] in; probs [S*E] (softmax) out; result out.
  void route(std::span<const double> logits, std::span<double> probs, bool training,
             GroupRouting& out) const;

  // Backward of one group: dweight per candidate (same order as out.cands), the scales
  // dL/d(aux of this group) and dL/d(z of this group); writes dlogits [S*E].
  void backward(std::span<const double> logits, std::span<const double> probs,
                const GroupRouting& r, std::span<const double> dweight, double aux_scale,
                double z_scale, std::span<double> dprobs_work, std::span<double> dlogits) const;

 private:
  std::int64_t E_, S_;
  std::int64_t train_capacity_, eval_capacity_;
  std::unique_ptr<RoutingRule> rule_;
  std::unique_ptr<DropPolicy> policy_;
};

// Numerically stable softmax of each row; returns the row's logsumexp in lse (optional).
void softmax_rows(std::span<const double> logits, std::int64_t rows, std::int64_t cols,
                  std::span<double> probs, std::span<double> lse);

}  // namespace moesim::routing
