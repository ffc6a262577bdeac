// The training loop: per step generate this rank's share of the global batch, forward,
// backward, allreduce replicated gradients, update, reduce the step's metrics; evaluate
// on held-out tokens every `eval_every` steps. Metrics are handed to an Observer on
// rank 0 (output and progress live above this module and implement it).
#pragma once

#include <cstdint>
#include <vector>

#include "moesim/comm/comm.hpp"
#include "moesim/config/config.hpp"
#include "moesim/io/result_file.hpp"

namespace moesim::train {

// Receives each step's and evaluation's reduced metrics (called on rank 0 only).
class Observer {
 public:
  virtual ~Observer() = default;
  virtual void on_step(const io::StepRecord& rec) = 0;
  virtual void on_eval(const io::EvalRecord& rec) = 0;
};

struct RunResult {
  std::vector<double> loss;  // per step (identical on every rank)
  std::vector<double> task_loss, aux_loss, z_loss, dropped_fraction;
  std::vector<io::EvalRecord> evals;
  double train_seconds = 0;      // sum of step times (max over ranks)
  double tokens_per_second = 0;  // trained tokens / train_seconds
  double step_time_median = 0;
  double dropped_fraction_mean = 0;
  std::vector<std::int64_t> traffic_tokens;  // [P x P] on rank 0 (empty elsewhere)
  std::int64_t start_step = 0;               // > 0 when resumed from a checkpoint
  bool preempted = false;                    // stopped early on a signal (checkpoint written)
  double base_epsilon = -1;  // routing.rule = base: largest final auction epsilon (else -1)
};

// Runs cfg.training.steps steps at the precision cfg.model.precision selects.
// `observer` may be null (and is ignored on ranks other than 0).
RunResult train(const Config& cfg, const comm::Comm& comm, Observer* observer);

}  // namespace moesim::train
