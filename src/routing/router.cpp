// The router: capacity, softmax, rule + drop policy, the router losses of one group and
// their gradients (routing.md). Rules are in rules.cpp, drop policies in policies.cpp.
//
// Loss definitions (each per group; the model averages them over groups and layers):
//   aux        = (E/k) sum_e (routed_e / S) P_e, routed_e = candidates before capacity,
//                P_e = mean_t p_t,e; k = the rule's choices per token (dense: E,
//                expert_choice: E C / S, so both give exactly 1);
//   aux_gshard = E sum_e (c_e / S) P_e, c_e = tokens whose first choice (choice 0) is e;
//   importance = CV^2(sum_t G_t) with G the candidates' combine weights before capacity;
//   load       = CV^2(load_e): noisy_topk in training: Shazeer's smooth sum_t P(t,e)
//                (rules.cpp); otherwise the pre-capacity counts routed_e (no gradient);
//   z          = mean_t logsumexp(h_t)^2.
// hash has no router: aux, aux_gshard and z are 0 and nothing flows back.
#include "moesim/routing/router.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "moesim/routing/losses.hpp"

namespace moesim::routing {

std::int64_t capacity(std::int64_t k, std::int64_t group_tokens, std::int64_t num_experts,
                      const Rational& cf, std::int64_t min_capacity) {
  if (cf.num == 0) return -1;
  if (cf.num < 0 || cf.den <= 0 || k <= 0 || group_tokens <= 0 || num_experts <= 0)
    throw std::invalid_argument("capacity: invalid arguments");
  // ceil(k*S*num / (E*den)) exactly, in checked 64-bit integer arithmetic.
  std::int64_t numer = 0, denom = 0;
  if (__builtin_mul_overflow(k, group_tokens, &numer) ||
      __builtin_mul_overflow(numer, cf.num, &numer) ||
      __builtin_mul_overflow(num_experts, cf.den, &denom))
    throw std::overflow_error(
        "capacity: k * group_size * capacity_factor overflows 64-bit integers");
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

Router::Router(const RoutingConfig& cfg, std::int64_t group_tokens)
    : E_(cfg.num_experts),
      S_(group_tokens),
      sigmoid_(cfg.score == ScoreKind::sigmoid),
      rule_(make_rule(cfg)),
      policy_(make_drop_policy(cfg)),
      keep_all_(make_drop_policy(DropPolicyKind::position)) {
  if (S_ <= 0 || E_ <= 0)
    throw std::invalid_argument("Router: group size and experts must be positive");
  train_capacity_ = rule_->capacity(S_, E_, cfg.capacity_factor, cfg);
  eval_capacity_ = rule_->capacity(S_, E_, cfg.eval_capacity_factor, cfg);
  // Candidate counts vary from group to group (gshard): size for the most, once.
  dweight_.reserve(static_cast<std::size_t>(S_ * max_choices()));
}

void Router::route(std::span<const double> logits, std::span<double> probs, bool training,
                   GroupRouting& out) const {
  RouteContext ctx;
  ctx.training = training;
  route(logits, probs, ctx, out);
}

void Router::route(std::span<const double> logits, std::span<double> probs, const RouteContext& ctx,
                   GroupRouting& out) const {
  const auto E = static_cast<std::size_t>(E_);
  const auto S = static_cast<std::size_t>(S_);
  const double Sd = static_cast<double>(S_);
  const bool learned = rule_->learned();
  out.lse.resize(S);
  if (learned) {
    softmax_rows(logits, S_, E_, probs, out.lse);  // lse: the z-loss uses the logits as they are
    if (sigmoid_) {  // s = sigmoid(h); the losses' distribution is p = s / sum_e s
      out.sig.resize(S * E);
      for (std::size_t t = 0; t < S; ++t) {
        double sum = 0;
        for (std::size_t e = 0; e < E; ++e) {
          const double h = logits[t * E + e];
          const double x = std::exp(-std::abs(h));
          const double s = h >= 0 ? 1.0 / (1.0 + x) : x / (1.0 + x);
          out.sig[t * E + e] = s;
          sum += s;
        }
        for (std::size_t e = 0; e < E; ++e) probs[t * E + e] = out.sig[t * E + e] / sum;
      }
    } else {
      out.sig.clear();
    }
  } else {
    std::fill_n(probs.begin(), S * E, 0.0);
    std::fill(out.lse.begin(), out.lse.end(), 0.0);
  }
  out.cands.clear();
  out.cands.reserve(static_cast<std::size_t>(S_ * max_choices()));
  out.capacity = capacity(ctx.training);
  const RuleInput in{
      learned ? logits : std::span<const double>{}, probs, out.sig, S_, E_, out.capacity, &ctx};
  out.base_epsilon = 0;
  rule_->select(in, out);
  if (rule_->uses_drop_policy())
    policy_->apply(out.cands, probs, S_, E_, out.capacity);
  else
    keep_all_->apply(out.cands, probs, S_, E_, -1);

  out.routed.assign(E, 0);
  out.kept.assign(E, 0);
  out.importance_e.assign(E, 0.0);
  first_.assign(E, 0);
  out.dropped = 0;
  for (const Candidate& c : out.cands) {
    const auto e = static_cast<std::size_t>(c.expert);
    ++out.routed[e];
    out.importance_e[e] += c.weight;
    if (c.choice == 0) ++first_[e];
    if (c.kept)
      ++out.kept[e];
    else
      ++out.dropped;
  }

  out.aux = out.aux_gshard = out.z = 0;
  if (learned) {
    // P_e = mean_t p_t,e.
    mean_p_.assign(E, 0.0);
    for (std::size_t t = 0; t < S; ++t)
      for (std::size_t e = 0; e < E; ++e) mean_p_[e] += probs[t * E + e];
    for (double& P : mean_p_) P /= Sd;
    const double k = rule_->choices_per_token(S_, E_, out.capacity);
    double aux = 0, gs = 0;
    for (std::size_t e = 0; e < E; ++e) {
      aux += (static_cast<double>(out.routed[e]) / Sd) * mean_p_[e];
      gs += (static_cast<double>(first_[e]) / Sd) * mean_p_[e];
    }
    out.aux = aux * static_cast<double>(E_) / k;
    out.aux_gshard = gs * static_cast<double>(E_);
    double z = 0;
    for (double l : out.lse) z += l * l;
    out.z = z / Sd;
  }
  out.importance = cv_squared(out.importance_e);
  out.load_e.resize(E);
  out.smooth_load = rule_->smooth_load(in, out, out.load_e);
  if (!out.smooth_load)
    for (std::size_t e = 0; e < E; ++e) out.load_e[e] = static_cast<double>(out.routed[e]);
  out.load = cv_squared(out.load_e);
}

void Router::backward(const RouteContext& ctx, std::span<const double> logits,
                      std::span<const double> probs, const GroupRouting& r,
                      std::span<const double> dweight, const LossScales& scales,
                      std::span<double> dprobs, std::span<double> dlogits,
                      std::span<double> dnoise_std) const {
  const auto E = static_cast<std::size_t>(E_);
  const auto S = static_cast<std::size_t>(S_);
  const double Sd = static_cast<double>(S_);
  std::fill_n(dprobs.begin(), S * E, 0.0);
  std::fill_n(dlogits.begin(), S * E, 0.0);
  if (!dnoise_std.empty()) std::fill_n(dnoise_std.begin(), S * E, 0.0);
  if (!rule_->learned()) return;  // hash: nothing depends on a router
  const RuleInput in{logits, probs, r.sig, S_, E_, r.capacity, &ctx};
  const RuleGrads g{dprobs, dlogits, dnoise_std};

  // Importance CV^2 is a function of the candidates' weights: its gradient joins dweight.
  dweight_.assign(dweight.begin(), dweight.end());
  if (scales.importance != 0) {
    dsum_.assign(E, 0.0);
    cv_squared_backward(r.importance_e, scales.importance, dsum_);
    for (std::size_t i = 0; i < r.cands.size(); ++i)
      dweight_[i] += dsum_[static_cast<std::size_t>(r.cands[i].expert)];
  }
  rule_->backward(in, r, dweight_, g);
  if (scales.load != 0 && r.smooth_load) {
    dsum_.assign(E, 0.0);
    cv_squared_backward(r.load_e, scales.load, dsum_);
    rule_->smooth_load_backward(in, r, dsum_, g);
  }
  // aux and aux_gshard are linear in P_e with piecewise-constant counts:
  // d aux / d p_t,e = (E/k) routed_e / S^2, d aux_gshard / d p_t,e = E c_e / S^2.
  if (scales.aux != 0 || scales.aux_gshard != 0) {
    const double ca = scales.aux * static_cast<double>(E_) /
                      rule_->choices_per_token(S_, E_, r.capacity) / (Sd * Sd);
    const double cg = scales.aux_gshard * static_cast<double>(E_) / (Sd * Sd);
    dsum_.assign(E, 0.0);
    for (const Candidate& c : r.cands) {
      const auto e = static_cast<std::size_t>(c.expert);
      dsum_[e] += ca + (c.choice == 0 ? cg : 0.0);
    }
    for (std::size_t t = 0; t < S; ++t)
      for (std::size_t e = 0; e < E; ++e) dprobs[t * E + e] += dsum_[e];
  }
  if (!scales.aux_batch_dp.empty())
    for (std::size_t t = 0; t < S; ++t)
      for (std::size_t e = 0; e < E; ++e) dprobs[t * E + e] += scales.aux_batch_dp[e];
  if (sigmoid_) {
    // p = s / sum s with s = sigmoid(h): ds_e = (dp_e - sum_j dp_j p_j) / sum s,
    // dh_e = ds_e s_e (1 - s_e); z = mean_t lse_t^2 still: d/dh = 2 lse_t softmax(h)_t,e / S.
    for (std::size_t t = 0; t < S; ++t) {
      const double* p = probs.data() + t * E;
      const double* s = r.sig.data() + t * E;
      const double* dp = dprobs.data() + t * E;
      const double* h = logits.data() + t * E;
      double* dh = dlogits.data() + t * E;
      double dot = 0, sum = 0;
      for (std::size_t e = 0; e < E; ++e) {
        dot += dp[e] * p[e];
        sum += s[e];
      }
      const double zc = scales.z * 2.0 * r.lse[t] / Sd;
      for (std::size_t e = 0; e < E; ++e) {
        dh[e] += (dp[e] - dot) / sum * s[e] * (1.0 - s[e]);
        if (zc != 0) dh[e] += zc * std::exp(h[e] - r.lse[t]);
      }
    }
    return;
  }
  // Softmax backward, plus z = mean_t lse_t^2: d/dh_t,e = 2 lse_t p_t,e / S.
  for (std::size_t t = 0; t < S; ++t) {
    const double* p = probs.data() + t * E;
    const double* dp = dprobs.data() + t * E;
    double* dh = dlogits.data() + t * E;
    double dot = 0;
    for (std::size_t e = 0; e < E; ++e) dot += dp[e] * p[e];
    const double zc = scales.z * 2.0 * r.lse[t] / Sd;
    for (std::size_t e = 0; e < E; ++e) dh[e] += p[e] * (dp[e] - dot) + zc * p[e];
  }
}

}  // namespace moesim::routing
