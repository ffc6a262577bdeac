// HDF5 result files of outputs.md. Written by one process (rank 0) with the default
// (serial) file driver: every metric is reduced to rank 0 before it is written, so no
// collective HDF5 calls are needed. The root attribute `complete` is 0 until finish().
// Rank-shaped datasets (e.g. /steps/tokens_sent [S, P]) grow along their rank axes when a run
// resumes on more ranks; cells of ranks a step did not have read as -1, and /steps/ranks says
// how many ranks each step ran on. Nothing per step is larger than O(P + L*E) (docs/outputs.md,
// "Size of a result file"): P x P traffic matrices are sampled (/traffic/tokens) or summed over
// the run, and streamed to the file a block of rows at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "moesim/io/trace_file.hpp"  // route files (kept here for existing includes)

namespace moesim::io {

// Root attributes of a `moesim run` result file.
struct RunMetadata {
  std::string config_ini;  // fully resolved parameter file (INI text)
  std::string moesim_version;
  std::string git_commit;
  std::string created_utc;   // ISO 8601
  std::string slurm_job_id;  // "" outside Slurm
  std::int64_t ranks = 1;
  std::int64_t nodes = 1;  // nodes (shared-memory domains) the ranks ran on
  std::uint64_t seed = 0;
  std::int64_t layers = 1;           // L (shape of expert_load)
  std::int64_t num_experts = 1;      // E
  std::int64_t num_clusters = 0;     // K (cluster-task metrics; 0 = none)
  std::int64_t tokens_per_step = 0;  // global tokens per step (for /summary tokens_per_second)
};

// One row of /steps/*.
struct StepRecord {
  std::int64_t step = 0;
  double loss = 0, task_loss = 0, aux_loss = 0, z_loss = 0, dropped_fraction = 0;
  double aux_gshard_loss = 0, importance_loss = 0, load_loss = 0;  // before their coefficients
  std::vector<std::int64_t> expert_load;  // [L*E] before capacity, row-major (layer, expert)
  std::vector<std::int64_t> expert_kept;  // [L*E] after capacity
  double time_step = 0, time_gate = 0, time_dispatch = 0, time_expert = 0, time_combine = 0,
         time_backward = 0, time_sync = 0;  // seconds, max over ranks
  std::int64_t bytes_alltoall = 0;          // all ranks, all all-to-alls of the step
  std::int64_t bytes_inter_node = 0;        // part of bytes_alltoall that crossed a node boundary
  std::int64_t bytes_intra_node = 0;        // part that stayed on a node (incl. to itself)
  // Research metrics, written as /steps/<name> when non-empty:
  std::vector<double> load_imbalance;     // [L] max/mean of expert_load per layer
  std::vector<std::int64_t> tokens_sent;  // [P] rows each rank dispatched this step (all
                                          //     layers, to every rank incl. itself)
  std::vector<std::int64_t> rank_rows;    // [L*P] rows each rank's routed experts computed
                                          //     (layer, rank) this step
  std::vector<double> base_epsilon;       // [L] routing.rule = base: final auction epsilon
                                          //     (largest over the layer's groups and ranks)
  // Sampled per-group loads (output.loads_every), written as /loads/* when non-empty:
  std::int64_t loads_groups = 0;           // G, routing groups per layer over all ranks
  std::int64_t loads_group_size = 0;       // tokens per routing group
  std::vector<std::int64_t> loads_routed;  // [L*G*E] candidates before capacity
  std::vector<std::int64_t> loads_kept;    // [L*G*E] after capacity
};

// One row of /eval/*.
struct EvalRecord {
  std::int64_t step = 0;
  double loss = 0, accuracy = 0, macro_f1 = 0, dropped_fraction = 0;
  // Router specialisation on the cluster task, written as /eval/<name> when non-empty:
  std::vector<double> specialization;        // [L] mean over clusters of the share of its tokens
                                             //     on its most frequent first-choice expert
  std::vector<double> cluster_expert_mi;     // [L] mutual information (nats), cluster vs expert
  std::vector<std::int64_t> cluster_expert;  // [L*K*E] first-choice counts (layer, cluster, expert)
};

// One attempt of a run (a job, or a requeue / resubmission of it): /attempts/* rows.
struct AttemptInfo {
  std::string job_id;           // SLURM_JOB_ID (with array index) or "" outside Slurm
  std::string start_utc;        // ISO 8601
  std::int64_t first_step = 0;  // the step it started from (0, or a checkpoint's step)
  std::int64_t ranks = 1;
};

// What an existing result file says about itself (probe_result_file): enough to decide
// whether a run may resume into it, is already complete, or must start afresh.
struct ResultFileState {
  bool exists = false;
  bool readable = false;        // opened and has the /steps skeleton of a result file
  std::string problem;          // why not readable
  bool complete = false;        // root attribute complete == 1
  std::int64_t rows = 0;        // /steps rows
  std::int64_t last_step = -1;  // /steps/step of the last row (-1: none)
  bool contiguous = true;       // /steps/step == 0, 1, ..., rows - 1
  std::string config_ini;       // root attribute config
};
ResultFileState probe_result_file(const std::string& path);

// Rank 0's writer of the result file. Rows are buffered in memory and written in batches by
// flush(), which opens the file, appends, and closes it again: between flushes the file on
// disk is closed and consistent, so a run killed at any moment (SIGKILL, node failure, OOM)
// leaves every row up to its last flush readable. The trainer flushes before every
// checkpoint, so a resumed run finds every row before its checkpoint's step.
class ResultWriter {
 public:
  // Creates (truncates) `path` with the root attributes, complete = 0 and the empty /steps and
  // /eval datasets. Throws std::runtime_error naming the path on failure.
  ResultWriter(const std::string& path, const RunMetadata& meta);
  // Resume: reopens an existing result file of the same shape, keeps the /steps rows with
  // step < resume_step and the /eval rows with step <= resume_step, and requires that the kept
  // step rows are exactly 0 .. resume_step - 1 (throws ResumeGap otherwise: rows were lost and
  // resuming would leave a hole). Sets complete = 0, updates `ranks`, removes /summary, and
  // marks an attempt left "running" by a killed job as "interrupted".
  ResultWriter(const std::string& path, const RunMetadata& meta, std::int64_t resume_step);
  ~ResultWriter();
  ResultWriter(const ResultWriter&) = delete;
  ResultWriter& operator=(const ResultWriter&) = delete;

  void begin_attempt(const AttemptInfo& attempt);  // a new /attempts row ("running"); flushed
  // Peak resident set sizes of the attempt (bytes): rank 0, the median and the largest over
  // all ranks (/attempts/peak_rss_rank0, peak_rss_median, peak_rss_max; 0 until set).
  void set_attempt_memory(std::int64_t rank0, std::int64_t median, std::int64_t max);
  void append_step(const StepRecord& rec);  // buffers one /steps row
  void append_eval(const EvalRecord& rec);  // buffers one /eval row
  void flush();  // writes the buffered rows and the attempt's progress; file closed after
  // Ends the attempt: `end` is "complete", "preempted", "cancelled", "diverged" or "failed";
  // `wall_seconds` its wall time. Flushes.
  void end_attempt(const std::string& end, double wall_seconds);
  // Root attribute `incomplete_reason` (complete stays 0): why the run did not finish.
  void mark_incomplete(const std::string& reason);
  // Writes /summary computed from the file's own rows over every attempt (so a resumed run's
  // summary describes the whole run), then complete = 1. Call after end_attempt("complete").
  // Returns what it wrote (for the summary line).
  struct Summary {
    double tokens_per_second = 0, step_time_median = 0, dropped_fraction_mean = 0;
    double train_seconds = 0, wall_seconds = 0;
    std::int64_t steps = 0, attempts = 0;
    double first_loss = 0, last_loss = 0;
    double eval_accuracy = 0, eval_macro_f1 = 0;  // the last /eval row (0 when none)
  };
  Summary finish();

  // Streamed [P, P] traffic matrices (tokens dispatched from rank r, the row, to rank s). Rank 0
  // receives them a block of rows at a time and never holds P x P; between begin and end the
  // file is open. `sample`: the matrix of one step, appended to /traffic/step [T] and
  // /traffic/tokens [T, P, P] (output.traffic_every). `total`: the tokens dispatched since the
  // previous total (deltas), added to the run's running sum, which is kept in two alternating
  // slots (/traffic/total_0, /traffic/total_1, attributes first_step and through_step) so that
  // the sum of the last checkpoint survives a kill during the next update; a resume from step c
  // continues the slot whose through_step is c. finish() copies the newest slot into
  // /summary/traffic_tokens.
  enum class Traffic { sample, total };
  void traffic_begin(Traffic kind, std::int64_t step, std::int64_t ranks);
  // Rows of ranks [first_rank, first_rank + count), each `ranks` values (row-major).
  void traffic_rows(std::int64_t first_rank, std::int64_t count,
                    std::span<const std::int64_t> rows);
  void traffic_end();
  [[nodiscard]] std::int64_t rows_written() const;  // /steps rows on disk

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The kept rows of a result file do not reach the step a run would resume from.
class ResumeGap : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace moesim::io
