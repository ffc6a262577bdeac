// The drop policies of routing.md, one class each (router.hpp's DropPolicy). Each decides
// which candidates fit under the per-expert capacity C and gives every kept one a slot.
// Slots follow token order within the expert's buffer (DeepSpeed's convention), except
// under choice_position, where they follow the fill order (all 1st choices first).
// A token's candidates are consecutive in `cands` (token order), choice order within.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "moesim/routing/router.hpp"

namespace moesim::routing {
namespace {

// Slots in token order among the kept candidates of each expert.
void slots_in_token_order(std::span<Candidate> cands, std::int64_t E,
                          std::vector<std::int32_t>& fill) {
  fill.assign(static_cast<std::size_t>(E), 0);
  for (Candidate& c : cands) c.slot = c.kept ? fill[static_cast<std::size_t>(c.expert)]++ : -1;
}

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
  void apply(std::span<Candidate> cands, std::span<const double> probs, std::int64_t S,
             std::int64_t E, std::int64_t cap) const override {
    if (cap < 0) {
      unlimited_.apply(cands, probs, 0, E, cap);
      return;
    }
    per_expert_.resize(static_cast<std::size_t>(E));
    for (auto& list : per_expert_) {
      list.clear();
      list.reserve(static_cast<std::size_t>(S));  // at most one candidate per token
    }
    for (std::size_t i = 0; i < cands.size(); ++i) {
      cands[i].kept = false;
      per_expert_[static_cast<std::size_t>(cands[i].expert)].push_back(i);
    }
    for (std::int64_t e = 0; e < E; ++e) {
      auto& list = per_expert_[static_cast<std::size_t>(e)];
      const auto prob = [&](std::size_t i) {
        return probs[static_cast<std::size_t>(cands[i].token * E + e)];
      };
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
    slots_in_token_order(cands, E, fill_);
  }

 private:
  PositionPolicy unlimited_;
  // Scratch reused across groups and steps (no allocation once warm).
  mutable std::vector<std::vector<std::size_t>> per_expert_;
  mutable std::vector<std::int32_t> fill_;
};

// Choice-major filling in a given token order: all 1st choices (tokens in `order`), then
// all 2nd choices, ... Shared by choice_position (token order; slots = fill order) and
// priority (tokens by priority; slots = token order).
class ChoiceMajorPolicy : public DropPolicy {
 protected:
  // order_ must hold the token order (a permutation of 0..S-1) before fill() is called.
  void fill(std::span<Candidate> cands, std::int64_t S, std::int64_t E, std::int64_t cap,
            bool slots_in_fill_order) const {
    first_.assign(static_cast<std::size_t>(S), 0);
    count_.assign(static_cast<std::size_t>(S), 0);
    std::int32_t max_count = 0;
    for (std::size_t i = 0; i < cands.size(); ++i) {
      const auto t = static_cast<std::size_t>(cands[i].token);
      if (count_[t]++ == 0) first_[t] = static_cast<std::int32_t>(i);
      max_count = std::max(max_count, count_[t]);
      cands[i].kept = false;
      cands[i].slot = -1;
    }
    fill_.assign(static_cast<std::size_t>(E), 0);
    for (std::int32_t c = 0; c < max_count; ++c) {
      for (std::int32_t t : order_) {
        if (count_[static_cast<std::size_t>(t)] <= c) continue;
        Candidate& cand = cands[static_cast<std::size_t>(first_[static_cast<std::size_t>(t)] + c)];
        std::int32_t& n = fill_[static_cast<std::size_t>(cand.expert)];
        if (cap >= 0 && n >= cap) continue;
        cand.kept = true;
        cand.slot = n++;
      }
    }
    if (!slots_in_fill_order) slots_in_token_order(cands, E, fill_);
  }
  mutable std::vector<std::int32_t> order_, first_, count_, fill_;  // scratch
};

// choice_position (GShard, DeepSpeed top2gating): 1st choices in token order, then 2nd
// choices, ...; slots in that order.
class ChoicePositionPolicy final : public ChoiceMajorPolicy {
 public:
  const char* name() const override { return "choice_position"; }
  void apply(std::span<Candidate> cands, std::span<const double> /*probs*/, std::int64_t S,
             std::int64_t E, std::int64_t cap) const override {
    order_.resize(static_cast<std::size_t>(S));
    for (std::int64_t t = 0; t < S; ++t)
      order_[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(t);
    fill(cands, S, E, cap, true);
  }
};

// priority (Batch Prioritized Routing, Riquelme et al. 2021): tokens ordered by
// max_e p_t,e descending (ties: lower token), choice-major; slots in token order.
class PriorityPolicy final : public ChoiceMajorPolicy {
 public:
  const char* name() const override { return "priority"; }
  void apply(std::span<Candidate> cands, std::span<const double> probs, std::int64_t S,
             std::int64_t E, std::int64_t cap) const override {
    priority_.resize(static_cast<std::size_t>(S));
    order_.resize(static_cast<std::size_t>(S));
    for (std::int64_t t = 0; t < S; ++t) {
      const double* p = probs.data() + t * E;
      priority_[static_cast<std::size_t>(t)] = *std::max_element(p, p + E);
      order_[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(t);
    }
    std::sort(order_.begin(), order_.end(), [this](std::int32_t a, std::int32_t b) {
      const double pa = priority_[static_cast<std::size_t>(a)],
                   pb = priority_[static_cast<std::size_t>(b)];
      return pa != pb ? pa > pb : a < b;
    });
    fill(cands, S, E, cap, false);
  }

 private:
  mutable std::vector<double> priority_;  // scratch [S]
};

}  // namespace

std::unique_ptr<DropPolicy> make_drop_policy(DropPolicyKind kind) {
  switch (kind) {
    case DropPolicyKind::position:
      return std::make_unique<PositionPolicy>();
    case DropPolicyKind::choice_position:
      return std::make_unique<ChoicePositionPolicy>();
    case DropPolicyKind::probs:
      return std::make_unique<ProbsPolicy>();
    case DropPolicyKind::priority:
      return std::make_unique<PriorityPolicy>();
  }
  throw std::invalid_argument(std::string("unknown drop policy ") + to_string(kind));
}

std::unique_ptr<DropPolicy> make_drop_policy(const RoutingConfig& cfg) {
  return make_drop_policy(cfg.drop_policy);
}

}  // namespace moesim::routing
