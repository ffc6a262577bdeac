// BASE layers (Lewis et al. 2021): the balanced linear assignment of one routing group.
// Each of the S tokens gets exactly one of E experts, each expert exactly S/E tokens, so
// that sum_t h_t,a_t is maximal. Solved by Bertsekas' forward auction (Gauss-Seidel, one
// bidder at a time) on the S/E identical slots of every expert, with epsilon-scaling:
// epsilon starts at a quarter of the group's logit range and is divided by 4 per phase
// (prices kept, assignment restarted) down to the final epsilon
//   eps = routing.base_tolerance * (max_t,e h - min_t,e h)   (range 0: eps = tolerance),
// whose assignment satisfies eps-complementary slackness and is therefore within S * eps
// of the optimum (Bertsekas 1988). fairseq's `balanced_assignment` runs the auction the
// other way round (experts bid for tokens) and per rank; this one runs over the whole group,
// which never spans two ranks, so the assignment does not depend on the rank count.
//
// Determinism and ties: unassigned tokens bid in first-in first-out order starting with
// token order 0..S-1; a bidder's best expert is the lower index among equal values; slot
// prices are compared exactly. Identical inputs give the identical assignment. When all
// logits are equal, token t goes to expert t / (S/E) (lower tokens to lower experts).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace moesim::routing {

class BalancedAssignment {
 public:
  // scores [S*E] row-major; S must be a positive multiple of E. Writes assign [S] (the
  // expert of each token) and returns the final epsilon. tolerance > 0. Scratch is kept,
  // so repeated solves of the same size do not allocate.
  double solve(std::span<const double> scores, std::int64_t S, std::int64_t E, double tolerance,
               std::span<std::int32_t> assign);
  // Bids made by the last solve (all phases): the work it did.
  [[nodiscard]] std::int64_t last_bids() const { return bids_; }
  // The final slot prices [E * S/E] (expert-major) and the token holding each slot: the
  // dual certificate of the last solve (tests check epsilon-complementary slackness on it).
  [[nodiscard]] std::span<const double> slot_prices() const { return price_; }
  [[nodiscard]] std::span<const std::int32_t> slot_owners() const { return owner_; }

 private:
  void run_phase(std::span<const double> scores, std::int64_t S, std::int64_t E, double eps,
                 std::span<std::int32_t> assign);
  void sift_down(std::int64_t e, std::int64_t i);
  std::int64_t m_ = 0;               // slots per expert, S / E
  std::vector<double> price_;        // [E*m] min-heap of slot prices per expert
  std::vector<std::int32_t> owner_;  // [E*m] token holding the slot, -1 = free
  std::vector<std::int32_t> queue_;  // [S] ring buffer of unassigned tokens
  std::int64_t bids_ = 0;
};

// Exact optimum of the same problem by exhaustive search (tests; S <= 10): the maximal
// total and one assignment achieving it (the lexicographically smallest by token order).
double brute_force_balanced_assignment(std::span<const double> scores, std::int64_t S,
                                       std::int64_t E, std::span<std::int32_t> assign);

}  // namespace moesim::routing
