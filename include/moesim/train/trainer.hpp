// The training loop: per step generate this rank's share of the global batch, forward,
// backward, allreduce replicated gradients, update, reduce the step's metrics; evaluate
// on held-out tokens every `eval_every` steps. Metrics are handed to an Observer on
// rank 0 (output and progress live above this module and implement it).
#pragma once

#include <cstdint>
#include <string>
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
  // Called before a checkpoint of `step` steps is written: rows up to it must reach the disk
  // first, so that a resume from that checkpoint finds every row before it.
  virtual void on_checkpoint(std::int64_t step) = 0;
  // A streamed P x P traffic matrix (io::ResultWriter::traffic_begin/rows/end): a sample of
  // `step`, or the running sum through `step`. Default: ignored.
  virtual void on_traffic_begin(io::ResultWriter::Traffic /*kind*/, std::int64_t /*step*/,
                                std::int64_t /*ranks*/) {}
  virtual void on_traffic_rows(std::int64_t /*first_rank*/, std::int64_t /*count*/,
                               std::span<const std::int64_t> /*rows*/) {}
  virtual void on_traffic_end() {}
};

struct RunResult {
  std::vector<double> loss;  // per step of this attempt (identical on every rank)
  std::vector<double> task_loss, aux_loss, z_loss, dropped_fraction;  // per step, likewise
  std::vector<io::EvalRecord> evals;                                  // evaluations of this attempt
  std::int64_t start_step = 0;  // > 0 when resumed from a checkpoint
  bool preempted = false;       // stopped early on a signal (checkpoint written)
  bool diverged = false;        // stopped at a non-finite loss or gradient (no checkpoint)
  std::string diverged_reason;  // "training diverged at step N: loss nan ..."
  // Redundant experts: (replica, arena) pairs that differ bitwise from their expert's first
  // replica at the end of the run (checked once; 0 expected; -1 without redundant experts).
  std::int64_t replica_mismatches = -1;
  std::int64_t slots_moved = 0;  // redundant experts: slots that changed expert in rebalances
};

// Runs cfg.training.steps steps at the precision cfg.model.precision selects; with
// resume_from > 0 first loads the checkpoint at checkpoint_path(cfg) (whose step it is; the
// caller decided that with decide_start). `observer` may be null (ignored on ranks other than 0).
RunResult train(const Config& cfg, const comm::Comm& comm, Observer* observer,
                std::int64_t resume_from = 0);

}  // namespace moesim::train
