// BASE layers: the auction of base_assignment.hpp and the `base` routing rule.
//
// The rule (routing.md "Additions"): in training, the balanced assignment of the whole group
// maximising sum_t h_t,a_t (h = router logits), exactly S/E tokens per expert, each token one
// candidate (choice 0) with weight sigma(h_t,a_t) (the BASE layer gates its expert with the
// sigmoid of the winning logit); every candidate is kept (the balance is exact, so there is
// no capacity and no drop policy). In evaluation: greedy top-1 by h (ties: lower expert),
// weight sigma(h), no capacity (as fairseq at inference). The gradient flows through the
// weight only: dL/dh_t,a_t = dL/dw * sigma(h) (1 - sigma(h)); the assignment itself is
// piecewise constant in h. Router losses are defined as for any top-1 rule (k = 1).
#include "moesim/routing/base_assignment.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "moesim/routing/router.hpp"

namespace moesim::routing {

namespace {
constexpr double kTheta = 4.0;  // epsilon divisor per scaling phase
}  // namespace

void BalancedAssignment::sift_down(std::int64_t e, std::int64_t i) {
  double* p = price_.data() + e * m_;
  std::int32_t* o = owner_.data() + e * m_;
  for (;;) {
    const std::int64_t l = 2 * i + 1, r = l + 1;
    std::int64_t s = i;
    if (l < m_ && p[l] < p[s]) s = l;
    if (r < m_ && p[r] < p[s]) s = r;
    if (s == i) return;
    std::swap(p[i], p[s]);
    std::swap(o[i], o[s]);
    i = s;
  }
}

void BalancedAssignment::run_phase(std::span<const double> a, std::int64_t S, std::int64_t E,
                                   double eps, std::span<std::int32_t> assign) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  std::fill(owner_.begin(), owner_.end(), -1);
  // FIFO of unassigned tokens: at most S are waiting, so a ring of S entries suffices.
  std::int64_t head = 0, count = S;
  for (std::int64_t t = 0; t < S; ++t)
    queue_[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(t);
  while (count > 0) {
    const std::int32_t t = queue_[static_cast<std::size_t>(head)];
    head = (head + 1) % S;
    --count;
    ++bids_;
    const double* h = a.data() + static_cast<std::int64_t>(t) * E;
    // Best and second-best value over all slots: a slot of expert e is worth h_e - price;
    // the cheapest slot of e is its heap top, the second cheapest one of the top's children.
    std::int64_t best = -1;
    double v1 = kNegInf, v2 = kNegInf;
    for (std::int64_t e = 0; e < E; ++e) {
      const double v = h[e] - price_[static_cast<std::size_t>(e * m_)];
      if (v > v1) {
        v2 = v1;
        v1 = v;
        best = e;
      } else if (v > v2) {
        v2 = v;
      }
    }
    if (m_ > 1) {
      const double* p = price_.data() + best * m_;
      double second = p[1];
      if (m_ > 2) second = std::min(second, p[2]);
      v2 = std::max(v2, h[best] - second);
    }
    double* top = price_.data() + best * m_;
    std::int32_t* holder = owner_.data() + best * m_;
    // v2 is finite unless there is a single slot in all (S = E = 1, handled by solve()).
    *top += (v1 - v2) + eps;
    const std::int32_t displaced = *holder;
    *holder = t;
    assign[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(best);
    sift_down(best, 0);
    if (displaced >= 0) {
      assign[static_cast<std::size_t>(displaced)] = -1;
      queue_[static_cast<std::size_t>((head + count) % S)] = displaced;
      ++count;
    }
  }
}

double BalancedAssignment::solve(std::span<const double> scores, std::int64_t S, std::int64_t E,
                                 double tolerance, std::span<std::int32_t> assign) {
  if (S <= 0 || E <= 0 || S % E != 0)
    throw std::invalid_argument("balanced assignment: S must be a positive multiple of E (S = " +
                                std::to_string(S) + ", E = " + std::to_string(E) + ")");
  if (!(tolerance > 0)) throw std::invalid_argument("balanced assignment: tolerance must be > 0");
  bids_ = 0;
  m_ = S / E;
  if (E == 1) {
    std::fill_n(assign.begin(), S, 0);
    return 0.0;
  }
  double lo = scores[0], hi = scores[0];
  for (std::int64_t i = 0; i < S * E; ++i) {
    lo = std::min(lo, scores[static_cast<std::size_t>(i)]);
    hi = std::max(hi, scores[static_cast<std::size_t>(i)]);
  }
  const double range = hi - lo;
  const double eps_final = tolerance * (range > 0 ? range : 1.0);
  price_.assign(static_cast<std::size_t>(S), 0.0);
  owner_.resize(static_cast<std::size_t>(S));
  queue_.resize(static_cast<std::size_t>(S));
  double eps = std::max(range / kTheta, eps_final);
  for (;;) {
    run_phase(scores, S, E, eps, assign);
    if (eps <= eps_final) break;
    eps = std::max(eps / kTheta, eps_final);
  }
  return eps_final;
}

namespace {

void brute(std::span<const double> a, std::int64_t S, std::int64_t E, std::int64_t t, double total,
           std::vector<std::int64_t>& left, std::vector<std::int32_t>& cur, double& best,
           std::span<std::int32_t> out) {
  if (t == S) {
    if (total > best) {
      best = total;
      std::copy(cur.begin(), cur.end(), out.begin());
    }
    return;
  }
  for (std::int64_t e = 0; e < E; ++e) {
    if (left[static_cast<std::size_t>(e)] == 0) continue;
    --left[static_cast<std::size_t>(e)];
    cur[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(e);
    brute(a, S, E, t + 1, total + a[static_cast<std::size_t>(t * E + e)], left, cur, best, out);
    ++left[static_cast<std::size_t>(e)];
  }
}

}  // namespace

double brute_force_balanced_assignment(std::span<const double> scores, std::int64_t S,
                                       std::int64_t E, std::span<std::int32_t> assign) {
  if (S <= 0 || E <= 0 || S % E != 0 || S > 10)
    throw std::invalid_argument("brute_force_balanced_assignment: needs 0 < S <= 10, E | S");
  std::vector<std::int64_t> left(static_cast<std::size_t>(E), S / E);
  std::vector<std::int32_t> cur(static_cast<std::size_t>(S), 0);
  double best = -std::numeric_limits<double>::infinity();
  brute(scores, S, E, 0, 0.0, left, cur, best, assign);
  return best;
}

namespace {

double sigmoid(double r) {
  const double e = std::exp(-std::abs(r));
  return r >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

// base (Lewis et al. 2021); see the top of this file.
class BaseRule final : public RoutingRule {
 public:
  explicit BaseRule(double tolerance) : tolerance_(tolerance) {}
  const char* name() const override { return "base"; }
  std::int64_t max_choices(std::int64_t) const override { return 1; }
  bool uses_drop_policy() const override { return false; }
  std::int64_t capacity(std::int64_t, std::int64_t, const Rational&,
                        const RoutingConfig&) const override {
    return -1;  // balanced by construction in training; greedy top-1 in evaluation
  }
  double choices_per_token(std::int64_t, std::int64_t, std::int64_t) const override { return 1.0; }

  void select(const RuleInput& in, GroupRouting& out) const override {
    const std::int64_t S = in.S, E = in.E;
    assign_.resize(static_cast<std::size_t>(S));
    if (in.ctx->training) {
      out.base_epsilon = solver_.solve(in.logits, S, E, tolerance_, assign_);
    } else {
      out.base_epsilon = 0;
      for (std::int64_t t = 0; t < S; ++t) {
        const double* h = in.logits.data() + t * E;
        std::int32_t best = 0;
        for (std::int64_t e = 1; e < E; ++e)
          if (h[e] > h[best]) best = static_cast<std::int32_t>(e);
        assign_[static_cast<std::size_t>(t)] = best;
      }
    }
    for (std::int64_t t = 0; t < S; ++t) {
      const std::int32_t e = assign_[static_cast<std::size_t>(t)];
      out.cands.push_back(Candidate{static_cast<std::int32_t>(t), e, 0,
                                    sigmoid(in.logits[static_cast<std::size_t>(t * E + e)]), false,
                                    -1});
    }
  }

  void backward(const RuleInput& in, const GroupRouting& r, std::span<const double> dweight,
                const RuleGrads& g) const override {
    for (std::size_t i = 0; i < r.cands.size(); ++i) {
      const double w = r.cands[i].weight;
      g.dlogits[static_cast<std::size_t>(r.cands[i].token * in.E + r.cands[i].expert)] +=
          dweight[i] * w * (1.0 - w);
    }
  }

 private:
  double tolerance_;
  mutable BalancedAssignment solver_;
  mutable std::vector<std::int32_t> assign_;  // scratch [S]
};

}  // namespace

std::unique_ptr<RoutingRule> make_base_rule(const RoutingConfig& cfg) {
  return std::make_unique<BaseRule>(cfg.base_tolerance);
}

}  // namespace moesim::routing
