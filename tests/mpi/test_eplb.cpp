// Redundant experts (EPLB, routing.redundant_experts): the placement policy on hand cases;
// replicas bitwise identical (weights and optimizer state) after training with rebalancing;
// the loss curve equal to r = 0 (float64, summation order only) at 1, 2 and 4 ranks; rows per
// rank (/steps/rank_rows) more even on a skewed workload; checkpoints under logical names
// (r = 2 resumed on the same ranks bitwise, on 1 rank with r = 0 within round-off).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "moesim/comm/comm.hpp"
#include "moesim/dispatch/eplb.hpp"
#include "moesim/model/model.hpp"
#include "moesim/train/trainer.hpp"
#include "tiny_run.hpp"

using namespace moesim;

namespace {

Config tiny() { return test_support::tiny_run_config(); }

std::vector<std::int64_t> replicas(const std::vector<std::int64_t>& map, std::int64_t E) {
  std::vector<std::int64_t> c(static_cast<std::size_t>(E), 0);
  for (auto e : map) ++c[static_cast<std::size_t>(e)];
  return c;
}

// Collects /steps/rank_rows (rank 0).
class RowsObserver : public train::Observer {
 public:
  void on_step(const io::StepRecord& rec) override { rows.push_back(rec.rank_rows); }
  void on_eval(const io::EvalRecord&) override {}
  void on_checkpoint(std::int64_t) override {}
  std::vector<std::vector<std::int64_t>> rows;
};

// Mean over steps [from, end) and layers of max/mean rows per rank.
double mean_max_over_mean(const RowsObserver& o, std::size_t from, int L, int P) {
  double sum = 0;
  int n = 0;
  for (std::size_t s = from; s < o.rows.size(); ++s)
    for (int l = 0; l < L; ++l) {
      const auto* r = o.rows[s].data() + static_cast<std::size_t>(l * P);
      const double total = std::accumulate(r, r + P, 0.0);
      sum += static_cast<double>(*std::max_element(r, r + P)) / (total / P);
      ++n;
    }
  return sum / n;
}

std::string shared_dir(const comm::Comm& comm, const std::string& tag) {
  std::string dir;
  if (comm.rank() == 0) {
    dir = (std::filesystem::temp_directory_path() /
           ("moesim_eplb_" + tag + "_" + std::to_string(::getpid())))
              .string();
    std::filesystem::create_directories(dir);
  }
  comm.bcast(dir, 0);
  return dir;
}

}  // namespace

// Hand case: loads {10, 1, 1, 1}, r = 2, 2 ranks (3 slots each). Both extra replicas go to
// expert 0 (10/1 > 1, then 10/2 > 1); replicas weigh 10/3; packing heaviest first gives
// rank 0 {0, 0, 3} and rank 1 {0, 1, 2}: rows 23/3 and 16/3 (max/mean 1.18) instead of the
// best r = 0 split 11 : 2 (max/mean 1.69).
TEST(EplbPlacement, HandCase) {
  const std::vector<double> load{10, 1, 1, 1};
  const std::vector<std::int64_t> map = dispatch::eplb_placement(load, 2, 2);
  EXPECT_EQ(map, (std::vector<std::int64_t>{0, 0, 3, 0, 1, 2}));
  EXPECT_NEAR(dispatch::eplb_rank_imbalance(load, map, 2), (23.0 / 3) / 6.5, 1e-12);
  const std::vector<std::int64_t> plain = dispatch::eplb_placement(load, 0, 2);
  EXPECT_NEAR(dispatch::eplb_rank_imbalance(load, plain, 2), 11.0 / 6.5, 1e-12);
  // r hottest experts: distinct loads, r = 2 <= E: experts 3 and 1 get one extra replica.
  const std::vector<double> distinct{5, 7, 2, 9};
  EXPECT_EQ(replicas(dispatch::eplb_placement(distinct, 2, 3), 4),
            (std::vector<std::int64_t>{1, 2, 1, 2}));
}

TEST(EplbPlacement, InitialPlacementAndInvariants) {
  // Equal loads: replicas of experts 0 and 1, no rank holds one expert twice.
  const std::vector<std::int64_t> init = dispatch::eplb_initial_placement(4, 2, 2);
  EXPECT_EQ(replicas(init, 4), (std::vector<std::int64_t>{2, 2, 1, 1}));
  for (int p = 0; p < 2; ++p) {
    std::vector<std::int64_t> mine(init.begin() + 3 * p, init.begin() + 3 * p + 3);
    EXPECT_TRUE(std::adjacent_find(mine.begin(), mine.end()) == mine.end()) << "rank " << p;
  }
  // Random loads: every expert has a slot, the extra slots sum to r, each rank's slots
  // are sorted, the placement is a function of the loads, and the replicated placement is
  // never less balanced than the plain one on these cases.
  std::uint64_t x = 12345;
  auto next = [&] {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<double>(x >> 40);
  };
  for (int trial = 0; trial < 200; ++trial) {
    const std::int64_t E = 4 + trial % 5;
    const int P = 1 + trial % 4;
    std::int64_t r = 1;
    while ((E + r) % P != 0) ++r;
    std::vector<double> load(static_cast<std::size_t>(E));
    for (double& l : load) l = std::pow(next(), 2.0);  // skewed
    const auto map = dispatch::eplb_placement(load, r, P);
    ASSERT_EQ(static_cast<std::int64_t>(map.size()), E + r);
    const auto c = replicas(map, E);
    EXPECT_EQ(std::accumulate(c.begin(), c.end(), std::int64_t{0}), E + r);
    for (auto v : c) EXPECT_GE(v, 1);
    const std::int64_t per = (E + r) / P;
    for (int p = 0; p < P; ++p)
      EXPECT_TRUE(std::is_sorted(map.begin() + p * per, map.begin() + (p + 1) * per));
    EXPECT_EQ(map, dispatch::eplb_placement(load, r, P));
  }
  EXPECT_THROW((void)dispatch::eplb_placement(std::vector<double>{1, 2, 3}, 2, 2),
               std::invalid_argument);
  EXPECT_THROW((void)dispatch::eplb_placement(std::vector<double>{1, -2}, 2, 2),
               std::invalid_argument);
}

// The mismatch check itself detects a differing replica (so the training test can fail).
TEST(Eplb, ReplicaCheckDetectsADifference) {
  const comm::Comm comm = comm::Comm::world();
  Config cfg = tiny();
  cfg.routing.redundant_experts = 4;  // 8 slots: divisible by 1, 2, 4
  model::Model<double> model(cfg, comm, 8, 8);
  std::vector<std::span<double>> arenas{model.params().values(ParamKind::expert)};
  // Keyed initialisation: replicas start identical.
  EXPECT_EQ(model.layer(0).replica_mismatches(arenas), 0);
  // Perturb the second replica of the first replicated expert on its rank.
  const auto map = model.layer(0).slot_expert();
  const std::int64_t per = model.layer(0).placement().per_rank();
  std::int64_t victim = -1;
  for (std::size_t s = 0; s < map.size() && victim < 0; ++s)
    for (std::size_t t = s + 1; t < map.size(); ++t)
      if (map[s] == map[t]) {
        victim = static_cast<std::int64_t>(t);
        break;
      }
  ASSERT_GE(victim, 0);
  if (victim / per == comm.rank()) {
    const int id = model.layer(0).expert_bank().tensor_ids(
        victim - model.layer(0).placement().first_local())[2];
    double& v = model.params().value(id)[3];
    v = std::nextafter(v, 1.0);  // one ulp
  }
  EXPECT_EQ(model.layer(0).replica_mismatches(arenas), 1);
}

// Loss curve with r redundant experts (rebalanced twice during the run) equals r = 0 up to
// summation order; replicas (weights and Adam state) bitwise identical at the end. Two
// regimes per rule: capacity 1 with drops (drops must match exactly), and dropless without a
// balance loss (skewed loads: the rebalances must move slots, or the move path is untested).
TEST(Eplb, SameLossCurveAsWithoutReplicas) {
  const comm::Comm comm = comm::Comm::world();
  for (const RoutingRuleKind rule : {RoutingRuleKind::topk, RoutingRuleKind::switch_top1})
    for (const bool skewed : {false, true}) {
      Config cfg = tiny();
      cfg.routing.rule = rule;
      cfg.routing.k = rule == RoutingRuleKind::switch_top1 ? 1 : 2;
      if (skewed) {
        cfg.routing.capacity_factor = Rational{0, 1};
        cfg.routing.eval_capacity_factor = Rational{0, 1};
        cfg.routing.aux_loss_coef = 0;
        cfg.model.init_scale = 3.0;
      }
      const train::RunResult plain = train::train(cfg, comm, nullptr);
      cfg.routing.redundant_experts = 4;
      cfg.routing.rebalance_every = 3;
      const train::RunResult eplb = train::train(cfg, comm, nullptr);
      const comm::Comm self = comm::Comm::self();
      Config one = cfg;
      one.routing.redundant_experts = 0;
      const train::RunResult ref = train::train(one, self, nullptr);  // every expert on 1 rank
      ASSERT_EQ(plain.loss.size(), eplb.loss.size());
      double worst = 0;
      for (std::size_t i = 0; i < plain.loss.size(); ++i) {
        const double rel = std::abs(eplb.loss[i] - plain.loss[i]) / std::abs(plain.loss[i]);
        worst = std::max(worst, rel);
        EXPECT_LT(rel, 1e-12) << "step " << i;
        EXPECT_LT(std::abs(eplb.loss[i] - ref.loss[i]) / std::abs(ref.loss[i]), 1e-12);
        EXPECT_EQ(eplb.dropped_fraction[i], plain.dropped_fraction[i]) << "step " << i;
      }
      ASSERT_EQ(eplb.evals.size(), plain.evals.size());
      for (std::size_t i = 0; i < plain.evals.size(); ++i)
        EXPECT_NEAR(eplb.evals[i].loss, plain.evals[i].loss, 1e-12 * std::abs(plain.evals[i].loss));
      EXPECT_LT(plain.loss.back(), plain.loss.front());
      EXPECT_EQ(eplb.replica_mismatches, 0);
      EXPECT_EQ(plain.replica_mismatches, -1);
      if (skewed) {
        EXPECT_GT(eplb.slots_moved, 0) << "no slot moved: the move path is untested";
      } else {
        EXPECT_GT(plain.dropped_fraction.front(), 0) << "no drops: capacity untested";
      }
      // The other exchanges move the same rows between the same slots: bitwise the same run
      // (the padded one needs a capacity).
      const DispatchKind kind = skewed ? DispatchKind::hierarchical : DispatchKind::alltoall_padded;
      Config other = cfg;
      other.routing.dispatch = kind;
      const train::RunResult o = train::train(other, comm, nullptr);
      ASSERT_EQ(o.loss.size(), eplb.loss.size());
      for (std::size_t i = 0; i < o.loss.size(); ++i)
        EXPECT_EQ(o.loss[i], eplb.loss[i]) << to_string(kind) << " step " << i;
      EXPECT_EQ(o.replica_mismatches, 0);
      if (comm.rank() == 0)
        std::printf(
            "[eplb] %s%s, P=%d, r=4: worst relative loss difference vs r=0 %.2e (%lld "
            "slots moved)\n",
            to_string(rule), skewed ? " skewed dropless" : " capacity 1", comm.size(), worst,
            static_cast<long long>(eplb.slots_moved));
    }
}

// A skewed workload (switch top-1, dropless, no balance loss: the router concentrates the 8
// clusters on few experts): rows per rank with r redundant experts, rebalanced every 2 steps,
// are more even than without (measured max/mean: P=2 1.15 -> 1.05, P=4 1.87 -> 1.13).
TEST(Eplb, RankRowsMoreEvenOnASkewedWorkload) {
  const comm::Comm comm = comm::Comm::world();
  const int P = comm.size();
  Config cfg = tiny();
  cfg.routing.num_experts = 8;
  cfg.routing.rule = RoutingRuleKind::switch_top1;
  cfg.routing.k = 1;
  cfg.routing.capacity_factor = Rational{0, 1};
  cfg.routing.eval_capacity_factor = Rational{0, 1};
  cfg.routing.aux_loss_coef = 0;  // no balance loss: the router collapses onto few experts
  cfg.data.num_clusters = 8;
  cfg.data.input_dim = 16;
  cfg.data.tokens_per_step = 256;
  cfg.training.steps = 10;
  RowsObserver without;
  train::train(cfg, comm, &without);
  cfg.routing.redundant_experts = P <= 2 ? 2 : 4;
  cfg.routing.rebalance_every = 2;
  RowsObserver with;
  const train::RunResult res = train::train(cfg, comm, &with);
  EXPECT_EQ(res.replica_mismatches, 0);
  if (comm.rank() != 0) return;
  ASSERT_EQ(with.rows.size(), 10U);
  const double a = mean_max_over_mean(without, 2, cfg.model.layers, P);
  const double b = mean_max_over_mean(with, 2, cfg.model.layers, P);
  std::printf("[eplb] skewed, P=%d: rows per rank max/mean %.3f with r=0, %.3f with r=%lld\n", P, a,
              b, static_cast<long long>(cfg.routing.redundant_experts));
  if (P == 1) {  // one rank computes every row either way
    EXPECT_DOUBLE_EQ(a, 1.0);
    EXPECT_DOUBLE_EQ(b, 1.0);
  } else {
    EXPECT_GT(a, 1.1) << "the workload is not skewed";
    EXPECT_LT(b - 1, 0.5 * (a - 1)) << "at least half of the excess over a perfect balance goes";
  }
}

// Checkpoints keep logical names: written with r = 2 on P ranks at step 5 (after a rebalance at
// step 3, with a partial load window), resumed on P ranks with r = 2 (bitwise: slot map and
// window restored) and on 1 rank with r = 0 (within round-off).
TEST(Eplb, CheckpointResumesWithAnotherRAndRankCount) {
  const comm::Comm comm = comm::Comm::world();
  const std::string dir = shared_dir(comm, "ckpt");
  Config cfg = tiny();
  cfg.routing.num_experts = 6;
  cfg.routing.redundant_experts = 2;  // 8 slots: 1, 2 or 4 ranks
  cfg.routing.rebalance_every = 4;
  cfg.routing.capacity_factor = Rational{0, 1};  // skewed loads: the step-4 rebalance moves slots
  cfg.routing.eval_capacity_factor = Rational{0, 1};
  cfg.routing.aux_loss_coef = 0;
  cfg.model.init_scale = 3.0;
  cfg.training.steps = 10;
  cfg.training.eval_every = 5;
  cfg.checkpoint.file = dir + "/run.ckpt";
  const train::RunResult full = train::train(cfg, comm, nullptr);
  Config half = cfg;
  half.training.steps = 5;
  half.checkpoint.every = 5;
  const train::RunResult first = train::train(half, comm, nullptr);
  EXPECT_GT(first.slots_moved, 0) << "the checkpoint holds the initial placement: untested";
  comm.barrier();
  Config rest_cfg = cfg;
  rest_cfg.checkpoint.resume = true;
  const train::RunResult same = train::train(rest_cfg, comm, nullptr, /*resume_from=*/5);
  ASSERT_EQ(same.loss.size(), 5U);
  for (std::size_t i = 0; i < same.loss.size(); ++i)
    EXPECT_EQ(same.loss[i], full.loss[5 + i]) << "step " << 5 + i << " (bitwise)";
  EXPECT_EQ(same.replica_mismatches, 0);
  comm.barrier();
  const comm::Comm self = comm::Comm::self();
  Config plain = rest_cfg;
  plain.routing.redundant_experts = 0;
  const train::RunResult one = train::train(plain, self, nullptr, /*resume_from=*/5);
  ASSERT_EQ(one.loss.size(), 5U);
  double worst = 0;
  for (std::size_t i = 0; i < one.loss.size(); ++i) {
    const double rel = std::abs(one.loss[i] - full.loss[5 + i]) / std::abs(full.loss[5 + i]);
    worst = std::max(worst, rel);
    EXPECT_LT(rel, 1e-12) << "step " << 5 + i;
  }
  if (comm.rank() == 0)
    std::printf("[eplb] checkpoint r=2 on %d ranks resumed on 1 rank with r=0: worst %.2e\n",
                comm.size(), worst);
  comm.barrier();
  if (comm.rank() == 0) std::filesystem::remove_all(dir);
}
