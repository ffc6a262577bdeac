// Checkpoint / restart: an interrupted and resumed run gives bitwise the same loss curve as
// an uninterrupted one; a run resumed on a different number of ranks reproduces the curve
// within floating-point tolerance (float64: 1e-12 relative); a stop request on any rank
// stops every rank at the same step boundary.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "moesim/comm/comm.hpp"
#include "moesim/train/checkpoint.hpp"
#include "moesim/train/trainer.hpp"

using namespace moesim;

namespace {

Config tiny(Precision precision, OptimizerKind opt) {
  Config cfg;
  cfg.model.d_model = 8;
  cfg.model.d_ff = 16;
  cfg.model.layers = 2;
  cfg.model.precision = precision;
  cfg.routing.num_experts = 4;
  cfg.routing.k = 2;
  cfg.routing.capacity_factor = Rational{1, 1};
  cfg.routing.group_size = 8;
  cfg.routing.z_loss_coef = 1e-3;
  cfg.data.tokens_per_step = 32;
  cfg.data.eval_tokens = 32;
  cfg.data.input_dim = 8;
  cfg.training.steps = 10;
  cfg.training.eval_every = 5;
  cfg.training.optimizer = opt;
  cfg.training.learning_rate = 5e-3;
  return cfg;
}

// A per-test directory every rank agrees on (rank 0 names it).
std::string shared_dir(const comm::Comm& comm, const std::string& tag) {
  std::string dir;
  if (comm.rank() == 0) {
    dir = (std::filesystem::temp_directory_path() /
           ("moesim_ckpt_" + tag + "_" + std::to_string(::getpid())))
              .string();
    std::filesystem::create_directories(dir);
  }
  comm.bcast(dir, 0);
  return dir;
}

// Uninterrupted run vs a run stopped by a request after its first step and resumed.
void interrupted_equals_uninterrupted(Precision precision, OptimizerKind opt,
                                      const std::string& tag, double bias_rate = 0.0) {
  const comm::Comm comm = comm::Comm::world();
  const std::string dir = shared_dir(comm, tag);
  Config cfg = tiny(precision, opt);
  cfg.routing.bias_update_rate = bias_rate;  // router state (expert bias) must be restored too
  if (cfg.routing.num_experts % comm.size() != 0) cfg.routing.num_experts = 4 * comm.size();
  cfg.checkpoint.file = dir + "/run.ckpt";
  const train::RunResult full = train::train(cfg, comm, nullptr);

  // Stop request raised on the last rank only: every rank must stop after the same step.
  if (comm.rank() == comm.size() - 1) train::request_stop();
  const train::RunResult first = train::train(cfg, comm, nullptr);
  train::clear_stop_request();
  ASSERT_TRUE(first.preempted);
  ASSERT_EQ(first.loss.size(), 1U);
  cfg.checkpoint.resume = true;
  const train::RunResult rest = train::train(cfg, comm, nullptr, /*resume_from=*/1);
  ASSERT_FALSE(rest.preempted);
  EXPECT_EQ(rest.start_step, 1);
  ASSERT_EQ(first.loss.size() + rest.loss.size(), full.loss.size());
  for (std::size_t i = 0; i < full.loss.size(); ++i) {
    const double resumed = i == 0 ? first.loss[0] : rest.loss[i - 1];
    EXPECT_EQ(resumed, full.loss[i]) << "step " << i << " (bitwise)";
  }
  ASSERT_FALSE(rest.evals.empty());
  EXPECT_EQ(rest.evals.back().loss, full.evals.back().loss);
  if (comm.rank() == 0) std::filesystem::remove_all(dir);
}

}  // namespace

TEST(Checkpoint, ResumedRunIsBitwiseIdenticalAdamFloat32) {
  interrupted_equals_uninterrupted(Precision::float32, OptimizerKind::adam, "adam32");
}

TEST(Checkpoint, ResumedRunIsBitwiseIdenticalSgdFloat64) {
  interrupted_equals_uninterrupted(Precision::float64, OptimizerKind::sgd, "sgd64");
}

TEST(Checkpoint, ResumedRunIsBitwiseIdenticalWithExpertBias) {
  interrupted_equals_uninterrupted(Precision::float64, OptimizerKind::adam, "bias", 0.05);
}

// Written by P ranks at step 5, resumed by each rank alone (1 rank hosting every expert).
TEST(Checkpoint, ResumeOnADifferentRankCount) {
  const comm::Comm comm = comm::Comm::world();
  const std::string dir = shared_dir(comm, "ranks");
  Config cfg = tiny(Precision::float64, OptimizerKind::adam);
  cfg.routing.num_experts = 4 * comm.size();
  cfg.checkpoint.file = dir + "/run.ckpt";
  const comm::Comm self = comm::Comm::self();
  const train::RunResult full = train::train(cfg, self, nullptr);  // reference on 1 rank

  Config half = cfg;
  half.training.steps = 5;
  half.checkpoint.every = 5;
  train::train(half, comm, nullptr);  // P ranks write the step-5 checkpoint
  comm.barrier();
  Config rest_cfg = cfg;
  rest_cfg.checkpoint.resume = true;
  rest_cfg.checkpoint.file = dir + "/run.ckpt";
  // Each rank resumes on its own (reading concurrently); none writes (every = 0).
  const train::RunResult rest = train::train(rest_cfg, self, nullptr, /*resume_from=*/5);
  EXPECT_EQ(rest.start_step, 5);
  ASSERT_EQ(rest.loss.size(), 5U);
  double worst = 0;
  for (std::size_t i = 0; i < rest.loss.size(); ++i) {
    const double rel = std::abs(rest.loss[i] - full.loss[5 + i]) / std::abs(full.loss[5 + i]);
    worst = std::max(worst, rel);
    EXPECT_LT(rel, 1e-12) << "step " << 5 + i;
  }
  if (comm.rank() == 0)
    std::printf(
        "[checkpoint] written on %d ranks, resumed on 1: worst relative loss difference %.2e\n",
        comm.size(), worst);
  comm.barrier();
  if (comm.rank() == 0) std::filesystem::remove_all(dir);
}

TEST(Checkpoint, MissingOrMismatchedCheckpointFailsOnEveryRank) {
  const comm::Comm comm = comm::Comm::world();
  const std::string dir = shared_dir(comm, "bad");
  Config cfg = tiny(Precision::float64, OptimizerKind::adam);
  cfg.routing.num_experts = 4 * comm.size();
  cfg.checkpoint.file = dir + "/run.ckpt";
  cfg.training.steps = 2;
  cfg.checkpoint.every = 2;
  train::train(cfg, comm, nullptr);
  // Resuming with another model width must fail everywhere, naming the tensor.
  Config wider = cfg;
  wider.model.d_ff = 24;
  wider.checkpoint.resume = true;
  wider.training.steps = 4;
  try {
    train::train(wider, comm, nullptr, /*resume_from=*/2);
    ADD_FAILURE() << "resume with a different d_ff did not fail";
  } catch (const ConfigError& e) {  // bad input (exit 2 on every rank), not a crash
    EXPECT_EQ(e.key(), "checkpoint.file");
    EXPECT_NE(std::string(e.what()).find("expected"), std::string::npos) << e.what();
  }
  comm.barrier();
  if (comm.rank() == 0) std::filesystem::remove_all(dir);
}
