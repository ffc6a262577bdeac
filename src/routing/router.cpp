// Routing rules, drop policies, capacity and router losses (routing.md).
#include "moesim/routing/router.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

namespace moesim::routing {

std::int64_t capacity(std::int64_t k, std::int64_t group_tokens, std::int64_t num_experts,
                      const Rational& cf, std::int64_t min_capacity) {
  if (cf.num == 0) return -1;
  if (cf.num < 0 || cf.den <= 0 || k <= 0 || group_tokens <= 0 || num_experts <= 0)
    throw std::invalid_argument("capacity: invalid arguments");
  // ceil(k*S*num / (E*den)) exactly, in checked 64-bit integer arithmetic.
  std::int64_t numer = 0, denom = 0;
  if (__builtin_mul_overflow(k, group_tokens, &numer) || __builtin_mul_overflow(numer, cf.num, &numer) ||
      __builtin_mul_overflow(num_experts, cf.den, &denom))
    throw std::overflow_error("capacity: k * group_size * capacity_factor overflows 64-bit integers");
  const std::int64_t c = numer / denom + (numer % denom != 0 ? 1 : 0);
  return std::max(c, min_capacity);
}

void softmax_rows(std::span<const double> logits, std::int64_t rows, std::int64_t cols,
                  std::span<double> probs, std::span<double> lse) {
  for (std::int64_t t = 0; t < rows; ++t) {
    const double* h = logits.data() + t * cols;
    double* p = probs.data() + t * cols;
    double m = h[0];
    for (std::int64_t e = 1; e < cols; ++e) m = std::max(m, h[e]);
    double s = 0;
    for (std::int64_t e = 0; e < cols; ++e) {
      p[e] = std::exp(h[e] - m);
      s += p[e];
    }
    const double inv = 1.0 / s;
    for (std::int64_t e = 0; e < cols; ++e) p[e] *= inv;
    if (!lse.empty()) lse[static_cast<std::size_t>(t)] = m + std::log(s);
  }
}

namespace {

// The k experts with the largest score in a row; ties go to the lower index.
void top_k_indices(const double* score, std::int64_t E, std::int64_t k, std::int32_t* out) {
  for (std::int64_t c = 0; c < k; ++c) {
    std::int32_t best = -1;
    for (std::int64_t e = 0; e < E; ++e) {
      bool taken = false;
      for (std::int64_t j = 0; j < c; ++j) taken = taken || out[j] == e;
      if (taken) continue;
      if (best < 0 || score[e] > score[best]) best = static_cast<std::int32_t>(e);
    }
    out[c] = best;
  }
}

// topk: the k largest probabilities; weights are those probabilities, optionally
// renormalised over the k selected (before capacity, as DeepSpeed / Megatron-Core do).
class TopKRule final : public RoutingRule {
 public:
  TopKRule(std::int64_t k, bool renormalize, const char* name)
      : k_(k), renormalize_(renormalize), name_(name) {}
  const char* name() const override { return name_; }
  int choices_per_token() const override { return static_cast<int>(k_); }

  void select(std::span<const double> /*logits*/, std::span<const double> probs, std::int64_t S,
              std::int64_t E, std::vector<Candidate>& out) const override {
    std::int32_t idx[64];
    for (std::int64_t t = 0; t < S; ++t) {
      const double* p = probs.data() + t * E;
      top_k_indices(p, E, k_, idx);
      double norm = 1.0;
      if (renormalize_) {
        double s = 0;
        for (std::int64_t c = 0; c < k_; ++c) s += p[idx[c]];
        norm = 1.0 / s;
      }
      for (std::int64_t c = 0; c < k_; ++c)
        out.push_back(Candidate{static_cast<std::int32_t>(t), idx[c], static_cast<std::int32_t>(c),
                                p[idx[c]] * norm, false, -1});
    }
  }

  void backward(std::span<const double> /*logits*/, std::span<const double> probs,
                std::int64_t /*S*/, std::int64_t E, std::span<const Candidate> cands,
                std::span<const double> dweight, std::span<double> dprobs,
                std::span<double> /*dlogits*/) const override {
    // Candidates of one token are k consecutive entries (select's order).
    for (std::size_t i = 0; i < cands.size(); i += static_cast<std::size_t>(k_)) {
      const std::int64_t t = cands[i].token;
      const double* p = probs.data() + t * E;
      double* dp = dprobs.data() + t * E;
      if (!renormalize_) {
        for (std::int64_t c = 0; c < k_; ++c) dp[cands[i + c].expert] += dweight[i + c];
        continue;
      }
      // w_j = p_j / s with s = sum of the selected p: dp_j = dw_j / s - sum_i dw_i p_i / s^2.
      double s = 0, dot = 0;
      for (std::int64_t c = 0; c < k_; ++c) {
        s += p[cands[i + c].expert];
        dot += dweight[i + c] * p[cands[i + c].expert];
      }
      for (std::int64_t c = 0; c < k_; ++c)
        dp[cands[i + c].expert] += dweight[i + c] / s - dot / (s * s);
    }
  }

 private:
  std::int64_t k_;
  bool renormalize_;
  const char* name_;
};

// position: keep in token order, all choices mixed; slot = order of arrival.
class PositionPolicy final : public DropPolicy {
 public:
  const char* name() const override { return "position"; }
  void apply(std::span<Candidate> cands, std::span<const double> /*probs*/, std::int64_t /*S*/,
             std::int64_t E, std::int64_t cap) const override {
    fill_.assign(static_cast<std::size_t>(E), 0);
    for (Candidate& c : cands) {
      std::int32_t& n = fill_[static_cast<std::size_t>(c.expert)];
      c.kept = cap < 0 || n < cap;
      c.slot = c.kept ? n++ : -1;
    }
  }

 private:
  mutable std::vector<std::int32_t> fill_;  // scratch, reused across groups and steps
};

// probs: per expert keep the C candidates with the largest probability (ties: lower
// token); slots then follow token order among the kept.
class ProbsPolicy final : public DropPolicy {
 public:
  const char* name() const override { return "probs"; }
  void apply(std::span<Candidate> cands, std::span<const double> probs, std::int64_t /*S*/,
             std::int64_t E, std::int64_t cap) const override {
    if (cap < 0) {
      unlimited_.apply(cands, probs, 0, E, cap);
      return;
    }
    per_expert_.resize(static_cast<std::size_t>(E));
    for (auto& list : per_expert_) list.clear();
    for (std::size_t i = 0; i < cands.size(); ++i)
      per_expert_[static_cast<std::size_t>(cands[i].expert)].push_back(i);
    for (std::int64_t e = 0; e < E; ++e) {
      auto& list = per_expert_[static_cast<std::size_t>(e)];
      const auto prob = [&](std::size_t i) { return probs[static_cast<std::size_t>(cands[i].token * E + e)]; };
      if (static_cast<std::int64_t>(list.size()) > cap) {
        // (prob, token) is a strict total order here (one candidate per token and expert),
        // so std::sort is deterministic and, unlike stable_sort, allocates nothing.
        std::sort(list.begin(), list.end(), [&](std::size_t a, std::size_t b) {
          if (prob(a) != prob(b)) return prob(a) > prob(b);
          return cands[a].token < cands[b].token;
        });
        list.resize(static_cast<std::size_t>(cap));
      }
      for (std::size_t i : list) cands[i].kept = true;
    }
    fill_.assign(static_cast<std::size_t>(E), 0);
    for (Candidate& c : cands) c.slot = c.kept ? fill_[static_cast<std::size_t>(c.expert)]++ : -1;
  }

 private:
  PositionPolicy unlimited_;
  // Scratch reused across groups and steps (no allocation once warm).
  mutable std::vector<std::vector<std::size_t>> per_expert_;
  mutable std::vector<std::int32_t> fill_;
};

}  // namespace

std::unique_ptr<RoutingRule> make_rule(const RoutingConfig& cfg) {
  switch (cfg.rule) {
    case RoutingRuleKind::topk: return std::make_unique<TopKRule>(cfg.k, cfg.renormalize, "topk");
    case RoutingRuleKind::switch_top1: return std::make_unique<TopKRule>(1, false, "switch");
    default: break;
  }
  throw std::invalid_argument("unknown routing rule");
}

std::unique_ptr<DropPolicy> make_drop_policy(const RoutingConfig& cfg) {
  switch (cfg.drop_policy) {
    case DropPolicyKind::position: return std::make_unique<PositionPolicy>();
    case DropPolicyKind::probs: return std::make_unique<ProbsPolicy>();
    default: break;
  }
  throw std::invalid_argument("unknown drop policy");
}

Router::Router(const RoutingConfig& cfg, std::int64_t group_tokens)
    : E_(cfg.num_experts), S_(group_tokens), rule_(make_rule(cfg)), policy_(make_drop_policy(cfg)) {
  if (cfg.k > 64) throw std::invalid_argument("routing.k above 64 is not supported");
  const std::int64_t k = rule_->choices_per_token();
  train_capacity_ = cfg.dropless ? -1 : routing::capacity(k, S_, E_, cfg.capacity_factor, cfg.min_capacity);
  eval_capacity_ = cfg.dropless ? -1 : routing::capacity(k, S_, E_, cfg.eval_capacity_factor, cfg.min_capacity);
}

void Router::route(std::span<const double> logits, std::span<double> probs, bool training,
                   GroupRouting& out) const {
  const auto E = static_cast<std::size_t>(E_);
  out.lse.resize(static_cast<std::size_t>(S_));
  softmax_rows(logits, S_, E_, probs, out.lse);
  out.cands.clear();
  rule_->select(logits, probs, S_, E_, out.cands);
  out.capacity = capacity(training);
  policy_->apply(out.cands, probs, S_, E_, out.capacity);

  out.routed.assign(E, 0);
  out.kept.assign(E, 0);
  out.dropped = 0;
  for (const Candidate& c : out.cands) {
    ++out.routed[static_cast<std::size_t>(c.expert)];
    if (c.kept) ++out.kept[static_cast<std::size_t>(c.expert)];
    else ++out.dropped;
  }
  // aux = (E/k) sum_e f_e P_e with f_e = routed_e / S and P_e = mean_t p_te.
  double aux = 0;
  for (std::size_t e = 0; e < E; ++e) {
    double P = 0;
    for (std::int64_t t = 0; t < S_; ++t) P += probs[static_cast<std::size_t>(t) * E + e];
    aux += (static_cast<double>(out.routed[e]) / static_cast<double>(S_)) * (P / static_cast<double>(S_));
  }
  out.aux = aux * static_cast<double>(E_) / rule_->choices_per_token();
  double z = 0;
  for (double l : out.lse) z += l * l;
  out.z = z / static_cast<double>(S_);
}

void Router::backward(std::span<const double> logits, std::span<const double> probs,
                      const GroupRouting& r, std::span<const double> dweight, double aux_scale,
                      double z_scale, std::span<double> dprobs, std::span<double> dlogits) const {
  const auto E = static_cast<std::size_t>(E_);
  std::fill(dprobs.begin(), dprobs.end(), 0.0);
  std::fill(dlogits.begin(), dlogits.end(), 0.0);
  rule_->backward(logits, probs, S_, E_, r.cands, dweight, dprobs, dlogits);
  // d aux / d p_te = (E/k) f_e / S  (the counts f_e are piecewise constant).
  if (aux_scale != 0) {
    const double c = aux_scale * static_cast<double>(E_) / rule_->choices_per_token() /
                     (static_cast<double>(S_) * static_cast<double>(S_));
    for (std::int64_t t = 0; t < S_; ++t)
      for (std::size_t e = 0; e < E; ++e)
        dprobs[static_cast<std::size_t>(t) * E + e] += c * static_cast<double>(r.routed[e]);
  }
  for (std::int64_t t = 0; t < S_; ++t) {
    const double* p = probs.data() + t * E_;
    const double* dp = dprobs.data() + t * E_;
    double* dh = dlogits.data() + t * E_;
    double dot = 0;
    for (std::size_t e = 0; e < E; ++e) dot += dp[e] * p[e];
    // z = mean_t lse_t^2: d/dh_te = 2 lse_t p_te / S.
    const double zc = z_scale * 2.0 * r.lse[static_cast<std::size_t>(t)] / static_cast<double>(S_);
    for (std::size_t e = 0; e < E; ++e) dh[e] += p[e] * (dp[e] - dot) + zc * p[e];
  }
}

}  // namespace moesim::routing
