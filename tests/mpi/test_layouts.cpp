// Parallel layouts: the capacity-padded MPI_Alltoall exchange gives bitwise the same run as
// the variable-size MPI_Alltoallv one (only the bytes differ), and fewer experts than ranks
// (each expert replicated on P/E ranks, gradients averaged within its replicas) gives the
// same loss curve as one rank hosting every expert (float64, 1e-9 relative).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "moesim/comm/comm.hpp"
#include "moesim/train/trainer.hpp"

using namespace moesim;

namespace {
Config tiny() {
  Config cfg;
  cfg.model.d_model = 8;
  cfg.model.d_ff = 16;
  cfg.model.layers = 2;
  cfg.model.precision = Precision::float64;
  cfg.routing.k = 2;
  cfg.routing.capacity_factor = Rational{1, 1};
  cfg.routing.group_size = 8;
  cfg.routing.aux_loss_coef = 0.05;
  cfg.data.tokens_per_step = 32;
  cfg.data.eval_tokens = 32;
  cfg.data.input_dim = 8;
  cfg.training.steps = 8;
  cfg.training.eval_every = 4;
  cfg.training.learning_rate = 5e-3;
  return cfg;
}
}  // namespace

TEST(Layouts, PaddedAlltoallEqualsAlltoallv) {
  const comm::Comm comm = comm::Comm::world();
  Config cfg = tiny();
  cfg.routing.num_experts = 2 * comm.size();
  const train::RunResult v = train::train(cfg, comm, nullptr);
  cfg.routing.dispatch = DispatchKind::alltoall_padded;
  const train::RunResult padded = train::train(cfg, comm, nullptr);
  ASSERT_EQ(v.loss.size(), padded.loss.size());
  for (std::size_t i = 0; i < v.loss.size(); ++i)
    EXPECT_EQ(v.loss[i], padded.loss[i]) << "step " << i;
  for (std::size_t i = 0; i < v.evals.size(); ++i)
    EXPECT_EQ(v.evals[i].accuracy, padded.evals[i].accuracy);
}

TEST(Layouts, ExpertReplicasGiveTheSameCurveAsOneRank) {
  const comm::Comm comm = comm::Comm::world();
  ASSERT_GT(comm.size(), 1) << "registered at 2 and 4 ranks: needs more ranks than experts";
  for (std::int64_t E = 1; E < comm.size(); ++E) {
    if (comm.size() % E != 0) continue;
    Config cfg = tiny();
    cfg.routing.num_experts = E;
    cfg.routing.k = std::min<std::int64_t>(2, E);
    const train::RunResult dist = train::train(cfg, comm, nullptr);
    const comm::Comm self = comm::Comm::self();
    const train::RunResult ref = train::train(cfg, self, nullptr);
    ASSERT_EQ(dist.loss.size(), ref.loss.size());
    double worst = 0;
    for (std::size_t i = 0; i < ref.loss.size(); ++i) {
      const double rel = std::abs(dist.loss[i] - ref.loss[i]) / std::abs(ref.loss[i]);
      worst = std::max(worst, rel);
      EXPECT_LT(rel, 1e-9) << "E=" << E << " step " << i;
      EXPECT_EQ(dist.dropped_fraction[i], ref.dropped_fraction[i]);
    }
    EXPECT_LT(ref.loss.back(), ref.loss.front());
    if (comm.rank() == 0)
      std::printf(
          "[replicas] E=%lld on P=%d (%lld replicas each): worst relative loss difference vs 1 "
          "rank %.2e\n",
          static_cast<long long>(E), comm.size(), static_cast<long long>(comm.size() / E), worst);
  }
}
