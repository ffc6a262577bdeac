// HDF5 result files of outputs.md. Written by one process (rank 0) with the default
// (serial) file driver: every metric is reduced to rank 0 before it is written, so no
// collective HDF5 calls are needed. The root attribute `complete` is 0 until finish().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moesim::io {

// Root attributes of a `moesim run` result file.
struct RunMetadata {
  std::string config_ini;  // fully resolved parameter file (INI text)
  std::string moesim_version;
  std::string git_commit;
  std::string created_utc;   // ISO 8601
  std::string slurm_job_id;  // "" outside Slurm
  std::int64_t ranks = 1;
  std::uint64_t seed = 0;
  std::int64_t layers = 1;        // L (shape of expert_load)
  std::int64_t num_experts = 1;   // E
  std::int64_t num_clusters = 0;  // K (cluster-task metrics; 0 = none)
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
  // Research metrics, written as /steps/<name> when non-empty:
  std::vector<double> load_imbalance;        // [L] max/mean of expert_load per layer
  std::vector<std::int64_t> traffic_tokens;  // [P*P] tokens sent from rank r (row) to s this step
  std::vector<std::int64_t> rank_rows;       // [L*P] rows each rank's routed experts computed
                                             //     (layer, rank) this step
  std::vector<double> base_epsilon;          // [L] routing.rule = base: final auction epsilon
                                             //     (largest over the layer's groups and ranks)
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

// /summary attributes and datasets.
struct Summary {
  double tokens_per_second = 0, step_time_median = 0, dropped_fraction_mean = 0;
  double wall_seconds = 0;
  std::int64_t ranks = 1;
  std::vector<std::int64_t> traffic_tokens;  // [P*P] row-major: tokens sent from rank r to s
  double base_epsilon = -1;  // routing.rule = base: largest final epsilon of the run, written as
                             // the root attribute base_epsilon (< 0: not written)
};

class ResultWriter {
 public:
  // Creates (truncates) `path`, writes the root attributes with complete = 0 and creates the
  // extendible /steps and /eval datasets. Throws std::runtime_error naming the path on failure.
  ResultWriter(const std::string& path, const RunMetadata& meta);
  // Resume: reopens an existing result file of the same shape, keeps the /steps rows with
  // step < resume_step and the /eval rows with step <= resume_step (a resumed run rewrites
  // the rest), sets complete = 0 and updates `ranks`. Throws if the file does not fit.
  ResultWriter(const std::string& path, const RunMetadata& meta, std::int64_t resume_step);
  ~ResultWriter();
  ResultWriter(const ResultWriter&) = delete;
  ResultWriter& operator=(const ResultWriter&) = delete;

  void append_step(const StepRecord& rec);  // extends every /steps dataset by one row
  void append_eval(const EvalRecord& rec);  // extends every /eval dataset by one row
  void flush();                             // H5Fflush: rows so far survive a kill
  void finish(const Summary& summary);      // writes /summary, then complete = 1, closes

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// `moesim route` input: /logits [T,E] (float32 or float64, read as double), optional
// /token_id [T] int64 (empty if absent). Throws std::runtime_error naming file and dataset.
struct Trace {
  std::int64_t tokens = 0;
  std::int64_t experts = 0;
  std::vector<double> logits;          // [T*E] row-major
  std::vector<std::int64_t> token_id;  // [T] or empty
};
Trace read_trace(const std::string& path);

// `moesim route` output (outputs.md).
struct RouteOutput {
  std::vector<std::int64_t> token;  // kept assignments, sorted by (token, expert)
  std::vector<std::int32_t> expert;
  std::vector<std::int32_t> slot;
  std::vector<double> weight;
  std::vector<std::int64_t> dropped_token;
  std::vector<std::int32_t> dropped_expert;
  std::vector<std::int64_t> load_routed;  // [E]
  std::vector<std::int64_t> load_kept;    // [E]
  std::int64_t capacity = -1;             // per (group, expert); -1 when dropless
  double aux_loss = 0, z_loss = 0, dropped_fraction = 0;
  double base_epsilon = -1;  // routing.rule = base: largest final epsilon (< 0: not written)
  // Replay of a router-choice trace (routing_trace.hpp), written as /trace/* when non-empty:
  std::vector<std::int64_t> trace_step, trace_layer;             // [R] each (step, layer)
  std::vector<std::int64_t> trace_load_routed, trace_load_kept;  // [R*E]
  std::string config_ini;
};
void write_route_output(const std::string& path, const RouteOutput& out);

}  // namespace moesim::io
