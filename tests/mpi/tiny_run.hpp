// A tiny float64 training run shared by the MPI tests that compare whole runs (2 layers,
// d_model 8, E = 4 top-2 with capacity 1, groups of 8, 32 tokens per step, 8 Adam steps with an
// evaluation every 4, no checkpoints): fast at 1, 2 and 4 ranks, with drops.
#pragma once

#include "moesim/config/config.hpp"

namespace moesim::test_support {

inline Config tiny_run_config() {
  Config cfg;
  cfg.model.d_model = 8;
  cfg.model.d_ff = 16;
  cfg.model.layers = 2;
  cfg.model.precision = Precision::float64;
  cfg.routing.num_experts = 4;
  cfg.routing.k = 2;
  cfg.routing.capacity_factor = Rational{1, 1};
  cfg.routing.group_size = 8;
  cfg.routing.aux_loss_coef = 0.01;
  cfg.data.tokens_per_step = 32;
  cfg.data.eval_tokens = 32;
  cfg.data.input_dim = 8;
  cfg.training.steps = 8;
  cfg.training.eval_every = 4;
  cfg.training.learning_rate = 5e-3;
  cfg.checkpoint.every = 0;
  return cfg;
}

}  // namespace moesim::test_support
