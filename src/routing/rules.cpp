// The routing rules of routing.md, one class each (router.hpp's RoutingRule).
//
// Choices made here where the papers leave room (also in README "What is computed"):
//  - ties in any ranking go to the lower expert index, then the lower token index;
//  - a token's candidates are listed in choice order: choice 0 is its best expert under the
//    rule's selection score (dense and expert_choice: by p, descending);
//  - dense:    all E experts, weight p, no capacity (capacity factor and drop policy unused);
//  - topk:     the k largest p (or p + b with the aux-loss-free expert bias b), weight p,
//              optionally renormalised over the k selected (before capacity);
//  - switch:   topk with k = 1 and no renormalisation (its input jitter lives in the layer:
//              it multiplies the router input, never the expert input);
//  - noisy_topk: H = h + n * sigma with n ~ N(0,1) per (token, expert) and sigma =
//              softplus(x W_noise) from the layer, in training only (evaluation and `moesim
//              route` use H = h); top-k of H; weights = softmax over the k kept H;
//  - gshard:   the top-2 p, g1, g2 = p1, p2 / (p1 + p2) (GShard Algorithm 1: normalised
//              before random routing and capacity, so g1 stays < 1 when the 2nd is not
//              kept); in training with random_routing the 2nd is selected only if
//              2 g2 > U(0,1). A 2nd expert not selected this way is not a candidate (it is
//              not counted as routed nor as dropped);
//  - expert_choice: each expert takes the C tokens of the group with the largest p_t,e
//              (ties: lower token), C = min(max(ceil(S cf / E), min_capacity), S) in exact
//              integer arithmetic; weight p; a token may get 0..E experts;
//  - hash:     expert = mix64(global token id) mod E, weight 1, no router (random.hpp).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <stdexcept>
#include <string>

#include "moesim/routing/group_limit.hpp"
#include "moesim/routing/random.hpp"
#include "moesim/routing/router.hpp"

namespace moesim::routing {

std::int64_t RoutingRule::capacity(std::int64_t S, std::int64_t E, const Rational& cf,
                                   const RoutingConfig& cfg) const {
  if (cfg.dropless) return -1;
  const auto k = static_cast<std::int64_t>(choices_per_token(S, E, -1));
  return routing::capacity(k, S, E, cf, cfg.min_capacity);
}

namespace {

constexpr std::int64_t kMaxK = 64;  // fixed-size index arrays of the top-k rules

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

}  // namespace

// Node-limited top-k (group_limit.hpp): group scores, the kept groups, then top-k over the
// experts of the kept groups (the others masked to -infinity).
void group_limited_top_k(const double* score, std::int64_t E, std::int64_t k, std::int64_t groups,
                         std::int64_t limit, std::int32_t* out, std::vector<double>& scratch) {
  const std::int64_t per = E / groups;
  const std::int64_t m = std::min<std::int64_t>((k + limit - 1) / limit, per);
  scratch.resize(static_cast<std::size_t>(E + groups));
  double* masked = scratch.data();
  double* group_score = scratch.data() + E;
  std::int32_t idx[kMaxK];
  for (std::int64_t g = 0; g < groups; ++g) {
    top_k_indices(score + g * per, per, m, idx);
    double s = 0;
    for (std::int64_t c = 0; c < m; ++c) s += score[g * per + idx[c]];
    group_score[g] = s;
  }
  for (std::int64_t e = 0; e < E; ++e) masked[e] = -std::numeric_limits<double>::infinity();
  for (std::int64_t c = 0; c < limit; ++c) {  // the `limit` best groups (ties: lower group)
    std::int64_t best = -1;
    for (std::int64_t g = 0; g < groups; ++g)
      if (group_score[g] != -std::numeric_limits<double>::infinity() &&
          (best < 0 || group_score[g] > group_score[best]))
        best = g;
    group_score[best] = -std::numeric_limits<double>::infinity();
    for (std::int64_t e = best * per; e < (best + 1) * per; ++e) masked[e] = score[e];
  }
  top_k_indices(masked, E, k, out);
}

namespace {

// The index range [i, end) of the candidates of the token at cands[i] (token-major order).
std::size_t token_end(std::span<const Candidate> cands, std::size_t i) {
  std::size_t j = i + 1;
  while (j < cands.size() && cands[j].token == cands[i].token) ++j;
  return j;
}

Candidate make_candidate(std::int64_t t, std::int64_t e, std::int64_t choice, double weight) {
  return Candidate{static_cast<std::int32_t>(t),
                   static_cast<std::int32_t>(e),
                   static_cast<std::int32_t>(choice),
                   weight,
                   false,
                   -1};
}

// topk (and switch): the k largest p, or p + b when an expert bias is given.
class TopKRule final : public RoutingRule {
 public:
  TopKRule(std::int64_t k, bool renormalize, const char* name, std::int64_t groups = 1,
           std::int64_t limit = 0)
      : k_(k),
        renormalize_(renormalize),
        name_(name),
        groups_(groups),
        limit_(limit > 0 && limit < groups ? limit : 0) {
    if (k_ > kMaxK) throw std::invalid_argument("routing.k above 64 is not supported");
  }
  const char* name() const override { return name_; }
  std::int64_t max_choices(std::int64_t) const override { return k_; }
  double choices_per_token(std::int64_t, std::int64_t, std::int64_t) const override {
    return static_cast<double>(k_);
  }

  void select(const RuleInput& in, GroupRouting& out) const override {
    const std::int64_t S = in.S, E = in.E;
    const std::span<const double> bias = in.ctx->bias;
    const bool sig = !in.sig.empty();
    std::int32_t idx[kMaxK];
    score_.resize(static_cast<std::size_t>(E));
    for (std::int64_t t = 0; t < S; ++t) {
      // routing.score = sigmoid: select by s (+ b), weights = the selected s renormalised
      // when k > 1 (DeepSeek-V3; Megatron-Core leaves k = 1 unnormalised, as here).
      const double* p = (sig ? in.sig : in.probs).data() + t * E;
      const double* score = p;
      if (!bias.empty()) {  // aux-loss-free balancing: select with p + b, weight with p
        for (std::int64_t e = 0; e < E; ++e)
          score_[static_cast<std::size_t>(e)] = p[e] + bias[static_cast<std::size_t>(e)];
        score = score_.data();
      }
      if (limit_ > 0)  // node-limited: experts from the limit_ best groups only
        group_limited_top_k(score, E, k_, groups_, limit_, idx, group_scratch_);
      else
        top_k_indices(score, E, k_, idx);
      double norm = 1.0;
      if (renormalize_ || (sig && k_ > 1)) {
        double s = 0;
        for (std::int64_t c = 0; c < k_; ++c) s += p[idx[c]];
        norm = 1.0 / s;
      }
      for (std::int64_t c = 0; c < k_; ++c)
        out.cands.push_back(make_candidate(t, idx[c], c, p[idx[c]] * norm));
    }
  }

  void backward(const RuleInput& in, const GroupRouting& r, std::span<const double> dweight,
                const RuleGrads& g) const override {
    const std::int64_t E = in.E;
    const std::span<const Candidate> cands = r.cands;
    if (!in.sig.empty()) {  // w = s_j (/ sum of the selected s), s = sigmoid(h)
      for (std::size_t i = 0; i < cands.size(); i += static_cast<std::size_t>(k_)) {
        const std::int64_t t = cands[i].token;
        const double* s = in.sig.data() + t * E;
        double* dh = g.dlogits.data() + t * E;
        double sum = 0, dot = 0;
        for (std::int64_t c = 0; c < k_; ++c) {
          sum += s[cands[i + c].expert];
          dot += dweight[i + c] * s[cands[i + c].expert];
        }
        const bool norm = renormalize_ || k_ > 1;
        for (std::int64_t c = 0; c < k_; ++c) {
          const std::int32_t e = cands[i + c].expert;
          const double ds = norm ? dweight[i + c] / sum - dot / (sum * sum) : dweight[i + c];
          dh[e] += ds * s[e] * (1.0 - s[e]);
        }
      }
      return;
    }
    for (std::size_t i = 0; i < cands.size(); i += static_cast<std::size_t>(k_)) {
      const std::int64_t t = cands[i].token;
      const double* p = in.probs.data() + t * E;
      double* dp = g.dprobs.data() + t * E;
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
  std::int64_t groups_, limit_;                // node-limited routing (limit_ = 0: off)
  mutable std::vector<double> score_;          // scratch [E]
  mutable std::vector<double> group_scratch_;  // scratch [E + groups]
};

// dense: every expert, weight p, no capacity.
class DenseRule final : public RoutingRule {
 public:
  const char* name() const override { return "dense"; }
  std::int64_t max_choices(std::int64_t E) const override { return E; }
  bool uses_drop_policy() const override { return false; }
  std::int64_t capacity(std::int64_t, std::int64_t, const Rational&,
                        const RoutingConfig&) const override {
    return -1;
  }
  double choices_per_token(std::int64_t, std::int64_t E, std::int64_t) const override {
    return static_cast<double>(E);
  }
  void select(const RuleInput& in, GroupRouting& out) const override {
    const std::int64_t S = in.S, E = in.E;
    order_.resize(static_cast<std::size_t>(E));
    for (std::int64_t t = 0; t < S; ++t) {
      const double* p = in.probs.data() + t * E;
      for (std::int64_t e = 0; e < E; ++e)
        order_[static_cast<std::size_t>(e)] = static_cast<std::int32_t>(e);
      // (p desc, expert asc) is a strict total order: std::sort is deterministic here.
      std::sort(order_.begin(), order_.end(),
                [p](std::int32_t a, std::int32_t b) { return p[a] != p[b] ? p[a] > p[b] : a < b; });
      for (std::int64_t c = 0; c < E; ++c) {
        const std::int32_t e = order_[static_cast<std::size_t>(c)];
        out.cands.push_back(make_candidate(t, e, c, p[e]));
      }
    }
  }
  void backward(const RuleInput& in, const GroupRouting& r, std::span<const double> dweight,
                const RuleGrads& g) const override {
    for (std::size_t i = 0; i < r.cands.size(); ++i)
      g.dprobs[static_cast<std::size_t>(r.cands[i].token * in.E + r.cands[i].expert)] += dweight[i];
  }

 private:
  mutable std::vector<std::int32_t> order_;  // scratch [E]
};

// noisy_topk (Shazeer et al. 2017): top-k of H = h + n * sigma, softmax over the kept H.
class NoisyTopKRule final : public RoutingRule {
 public:
  explicit NoisyTopKRule(std::int64_t k) : k_(k) {
    if (k_ >= kMaxK)
      throw std::invalid_argument("routing.k above 63 is not supported by noisy_topk");
  }
  const char* name() const override { return "noisy_topk"; }
  std::int64_t max_choices(std::int64_t) const override { return k_; }
  double choices_per_token(std::int64_t, std::int64_t, std::int64_t) const override {
    return static_cast<double>(k_);
  }

  static bool noisy(const RuleInput& in) { return in.ctx->training && !in.ctx->noise_std.empty(); }

  void select(const RuleInput& in, GroupRouting& out) const override {
    const std::int64_t S = in.S, E = in.E;
    const RouteContext& ctx = *in.ctx;
    const bool active = noisy(in);
    const auto n = static_cast<std::size_t>(S * E);
    out.scores.resize(n);
    out.noise.assign(active ? n : 0, 0.0);
    std::int32_t idx[kMaxK];
    for (std::int64_t t = 0; t < S; ++t) {
      const double* h = in.logits.data() + t * E;
      double* H = out.scores.data() + t * E;
      if (active) {
        const CounterRng rng =
            draw_stream(ctx.seed, ctx.step, ctx.layer, ctx.token_id(t), DrawPurpose::noise);
        const double* sigma = ctx.noise_std.data() + t * E;
        double* nz = out.noise.data() + t * E;
        for (std::int64_t e = 0; e < E; ++e) {
          nz[e] = rng.normal(static_cast<std::uint64_t>(e));
          H[e] = h[e] + nz[e] * sigma[e];
        }
      } else {
        std::copy_n(h, E, H);
      }
      top_k_indices(H, E, k_, idx);
      const double m = H[idx[0]];
      double s = 0;
      for (std::int64_t c = 0; c < k_; ++c) s += std::exp(H[idx[c]] - m);
      for (std::int64_t c = 0; c < k_; ++c)
        out.cands.push_back(make_candidate(t, idx[c], c, std::exp(H[idx[c]] - m) / s));
    }
  }

  void backward(const RuleInput& in, const GroupRouting& r, std::span<const double> dweight,
                const RuleGrads& g) const override {
    const std::int64_t E = in.E;
    const bool active = noisy(in) && !g.dnoise_std.empty();
    const std::span<const Candidate> cands = r.cands;
    for (std::size_t i = 0; i < cands.size(); i += static_cast<std::size_t>(k_)) {
      const std::int64_t t = cands[i].token;
      // w = softmax(H_kept): dH_j = w_j (dw_j - sum_i w_i dw_i); dh = dH, dsigma = dH * n.
      double dot = 0;
      for (std::int64_t c = 0; c < k_; ++c) dot += cands[i + c].weight * dweight[i + c];
      for (std::int64_t c = 0; c < k_; ++c) {
        const auto at = static_cast<std::size_t>(t * E + cands[i + c].expert);
        const double dH = cands[i + c].weight * (dweight[i + c] - dot);
        g.dlogits[at] += dH;
        if (active) g.dnoise_std[at] += dH * r.noise[at];
      }
    }
  }

  // Shazeer's P(t,e) = Phi((h_te - kth_excluding(H_t, k, e)) / sigma_te): the probability
  // that e stays in the top k when only its own noise is redrawn. kth_excluding is the
  // (k+1)-th largest H when e is selected, else the k-th largest.
  struct Threshold {
    std::int64_t j = -1;  // the expert whose noisy logit is the threshold
    double z = 0, sigma = 0;
  };
  Threshold threshold(const RuleInput& in, const GroupRouting& r, std::int64_t t, std::int64_t e,
                      const std::int32_t* idx) const {
    bool in_top = false;
    for (std::int64_t c = 0; c < k_; ++c) in_top = in_top || idx[c] == e;
    Threshold th;
    th.j = in_top ? idx[k_] : idx[k_ - 1];
    th.sigma = in.ctx->noise_std[static_cast<std::size_t>(t * in.E + e)];
    const double H_j = r.scores[static_cast<std::size_t>(t * in.E + th.j)];
    th.z = th.sigma > 0 ? (in.logits[static_cast<std::size_t>(t * in.E + e)] - H_j) / th.sigma
                        : (in_top ? HUGE_VAL : -HUGE_VAL);
    return th;
  }

  bool smooth_load(const RuleInput& in, const GroupRouting& r,
                   std::span<double> load_e) const override {
    if (!noisy(in) || k_ >= in.E) return false;
    std::fill(load_e.begin(), load_e.end(), 0.0);
    std::int32_t idx[kMaxK];
    for (std::int64_t t = 0; t < in.S; ++t) {
      top_k_indices(r.scores.data() + t * in.E, in.E, k_ + 1, idx);
      for (std::int64_t e = 0; e < in.E; ++e) {
        const Threshold th = threshold(in, r, t, e, idx);
        load_e[static_cast<std::size_t>(e)] += 0.5 * std::erfc(-th.z / std::numbers::sqrt2);
      }
    }
    return true;
  }

  void smooth_load_backward(const RuleInput& in, const GroupRouting& r,
                            std::span<const double> dload_e, const RuleGrads& g) const override {
    std::int32_t idx[kMaxK];
    const bool with_sigma = !g.dnoise_std.empty();
    for (std::int64_t t = 0; t < in.S; ++t) {
      top_k_indices(r.scores.data() + t * in.E, in.E, k_ + 1, idx);
      for (std::int64_t e = 0; e < in.E; ++e) {
        const Threshold th = threshold(in, r, t, e, idx);
        if (!(th.sigma > 0)) continue;  // a step function: no gradient
        // z = (h_e - h_j - n_j sigma_j) / sigma_e; dPhi = phi(z) dz.
        const double phi = std::exp(-0.5 * th.z * th.z) / std::sqrt(2.0 * std::numbers::pi);
        const double c = dload_e[static_cast<std::size_t>(e)] * phi / th.sigma;
        const auto te = static_cast<std::size_t>(t * in.E + e),
                   tj = static_cast<std::size_t>(t * in.E + th.j);
        g.dlogits[te] += c;
        g.dlogits[tj] -= c;
        if (with_sigma) {
          g.dnoise_std[tj] -= c * r.noise[tj];
          g.dnoise_std[te] -= c * th.z;
        }
      }
    }
  }

 private:
  std::int64_t k_;
};

// gshard (Lepikhin et al. 2020): top-2, renormalised, random routing of the 2nd expert.
class GShardRule final : public RoutingRule {
 public:
  explicit GShardRule(bool random_routing) : random_routing_(random_routing) {}
  const char* name() const override { return "gshard"; }
  std::int64_t max_choices(std::int64_t) const override { return 2; }
  double choices_per_token(std::int64_t, std::int64_t, std::int64_t) const override { return 2.0; }

  void select(const RuleInput& in, GroupRouting& out) const override {
    const std::int64_t S = in.S, E = in.E;
    const RouteContext& ctx = *in.ctx;
    const bool random = random_routing_ && ctx.training;
    out.picks.resize(static_cast<std::size_t>(2 * S));
    std::int32_t idx[2];
    for (std::int64_t t = 0; t < S; ++t) {
      const double* p = in.probs.data() + t * E;
      top_k_indices(p, E, 2, idx);
      out.picks[static_cast<std::size_t>(2 * t)] = idx[0];
      out.picks[static_cast<std::size_t>(2 * t + 1)] = idx[1];
      const double s = p[idx[0]] + p[idx[1]];
      const double g1 = p[idx[0]] / s, g2 = p[idx[1]] / s;
      out.cands.push_back(make_candidate(t, idx[0], 0, g1));
      bool second = true;
      if (random) {
        const double u =
            draw_stream(ctx.seed, ctx.step, ctx.layer, ctx.token_id(t), DrawPurpose::random_routing)
                .uniform(0);
        second = 2.0 * g2 > u;
      }
      if (second) out.cands.push_back(make_candidate(t, idx[1], 1, g2));
    }
  }

  void backward(const RuleInput& in, const GroupRouting& r, std::span<const double> dweight,
                const RuleGrads& g) const override {
    const std::int64_t E = in.E;
    const std::span<const Candidate> cands = r.cands;
    for (std::size_t i = 0; i < cands.size();) {
      const std::size_t end = token_end(cands, i);
      const std::int64_t t = cands[i].token;
      const std::int32_t a = r.picks[static_cast<std::size_t>(2 * t)],
                         b = r.picks[static_cast<std::size_t>(2 * t + 1)];
      const double* p = in.probs.data() + t * E;
      double* dp = g.dprobs.data() + t * E;
      // g_i = p_i / (p_a + p_b) for i in {a, b}, whether or not b was kept.
      const double s = p[a] + p[b];
      double dot = 0;
      for (std::size_t c = i; c < end; ++c) dot += dweight[c] * p[cands[c].expert];
      for (std::size_t c = i; c < end; ++c) dp[cands[c].expert] += dweight[c] / s;
      dp[a] -= dot / (s * s);
      dp[b] -= dot / (s * s);
      i = end;
    }
  }

 private:
  bool random_routing_;
};

// expert_choice (Zhou et al. 2022): each expert takes its top-C tokens by p.
class ExpertChoiceRule final : public RoutingRule {
 public:
  const char* name() const override { return "expert_choice"; }
  std::int64_t max_choices(std::int64_t E) const override { return E; }
  bool uses_drop_policy() const override { return false; }
  std::int64_t capacity(std::int64_t S, std::int64_t E, const Rational& cf,
                        const RoutingConfig& cfg) const override {
    if (cfg.dropless || cf.num == 0)
      throw std::invalid_argument("expert_choice needs a capacity factor > 0 and dropless = false");
    return std::min(routing::capacity(1, S, E, cf, cfg.min_capacity), S);
  }
  double choices_per_token(std::int64_t S, std::int64_t E, std::int64_t capacity) const override {
    // E*C assignments over S tokens: with this k the aux loss is exactly sum_e P_e = 1.
    return capacity > 0 ? static_cast<double>(E * capacity) / static_cast<double>(S) : 1.0;
  }

  void select(const RuleInput& in, GroupRouting& out) const override {
    const std::int64_t S = in.S, E = in.E, C = in.capacity;
    const std::span<const double> p = in.probs;
    chosen_.assign(static_cast<std::size_t>(S * E), 0);
    tokens_.resize(static_cast<std::size_t>(S));
    for (std::int64_t e = 0; e < E; ++e) {
      for (std::int64_t t = 0; t < S; ++t)
        tokens_[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(t);
      const auto prob = [&](std::int32_t t) { return p[static_cast<std::size_t>(t * E + e)]; };
      // (p desc, token asc) is a strict total order: the C chosen tokens are well defined.
      std::nth_element(tokens_.begin(), tokens_.begin() + (C - 1), tokens_.end(),
                       [&](std::int32_t a, std::int32_t b) {
                         return prob(a) != prob(b) ? prob(a) > prob(b) : a < b;
                       });
      for (std::int64_t c = 0; c < C; ++c)
        chosen_[static_cast<std::size_t>(tokens_[static_cast<std::size_t>(c)] * E + e)] = 1;
    }
    order_.resize(static_cast<std::size_t>(E));
    for (std::int64_t t = 0; t < S; ++t) {
      const double* pt = p.data() + t * E;
      std::size_t n = 0;
      for (std::int64_t e = 0; e < E; ++e)
        if (chosen_[static_cast<std::size_t>(t * E + e)])
          order_[n++] = static_cast<std::int32_t>(e);
      std::sort(
          order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(n),
          [pt](std::int32_t a, std::int32_t b) { return pt[a] != pt[b] ? pt[a] > pt[b] : a < b; });
      for (std::size_t c = 0; c < n; ++c)
        out.cands.push_back(
            make_candidate(t, order_[c], static_cast<std::int64_t>(c), pt[order_[c]]));
    }
  }

  void backward(const RuleInput& in, const GroupRouting& r, std::span<const double> dweight,
                const RuleGrads& g) const override {
    for (std::size_t i = 0; i < r.cands.size(); ++i)
      g.dprobs[static_cast<std::size_t>(r.cands[i].token * in.E + r.cands[i].expert)] += dweight[i];
  }

 private:
  mutable std::vector<char> chosen_;          // scratch [S*E]
  mutable std::vector<std::int32_t> tokens_;  // scratch [S]
  mutable std::vector<std::int32_t> order_;   // scratch [E]
};

// hash (Roller et al. 2021): a fixed expert per token id, weight 1, no router.
class HashRule final : public RoutingRule {
 public:
  const char* name() const override { return "hash"; }
  std::int64_t max_choices(std::int64_t) const override { return 1; }
  bool learned() const override { return false; }
  double choices_per_token(std::int64_t, std::int64_t, std::int64_t) const override { return 1.0; }
  void select(const RuleInput& in, GroupRouting& out) const override {
    for (std::int64_t t = 0; t < in.S; ++t)
      out.cands.push_back(make_candidate(t, hash_expert(in.ctx->token_id(t), in.E), 0, 1.0));
  }
  void backward(const RuleInput&, const GroupRouting&, std::span<const double>,
                const RuleGrads&) const override {}
};

}  // namespace

std::unique_ptr<RoutingRule> make_rule(const RoutingConfig& cfg) {
  switch (cfg.rule) {
    case RoutingRuleKind::dense:
      return std::make_unique<DenseRule>();
    case RoutingRuleKind::topk:
      return std::make_unique<TopKRule>(cfg.k, cfg.renormalize, "topk", cfg.expert_groups,
                                        cfg.group_limit);
    case RoutingRuleKind::noisy_topk:
      return std::make_unique<NoisyTopKRule>(cfg.k);
    case RoutingRuleKind::switch_top1:
      return std::make_unique<TopKRule>(1, false, "switch", cfg.expert_groups, cfg.group_limit);
    case RoutingRuleKind::gshard:
      return std::make_unique<GShardRule>(cfg.random_routing);
    case RoutingRuleKind::expert_choice:
      return std::make_unique<ExpertChoiceRule>();
    case RoutingRuleKind::hash:
      return std::make_unique<HashRule>();
    case RoutingRuleKind::base:
      return make_base_rule(cfg);
  }
  throw std::invalid_argument(std::string("routing.rule = ") + to_string(cfg.rule) +
                              " is not implemented");
}

}  // namespace moesim::routing
