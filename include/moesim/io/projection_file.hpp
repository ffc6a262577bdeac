// HDF5 files of `moesim simulate` (simulate.md: root attributes, /projection, /validation) and
// the parts of `moesim run` result files the simulator reads (stored config, ranks, per-phase
// step times, the per-group loads /loads/*). Serial HDF5, one process.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moesim::io {

// One 1-D dataset: exactly one of f64 / i64 / text is used.
struct NamedColumn {
  std::string name;
  std::string description;
  std::string units;
  std::vector<double> f64;
  std::vector<std::int64_t> i64;
  std::vector<std::string> text;
};

struct ProjectionFile {
  std::string config_ini;   // root attribute `config`
  std::string machine_ini;  // root attribute `machine`
  std::string workload;     // root attribute `workload`
  std::string moesim_version, git_commit;
  std::vector<NamedColumn> projection;  // /projection/<name>; empty: no group
  std::vector<NamedColumn> validation;  // /validation/<name>; empty: no group
};

// Creates (truncates) `path`; `complete` = 1 is written last. Throws std::runtime_error.
void write_projection_file(const std::string& path, const ProjectionFile& f);

// A measured `moesim run` result file, as the simulator needs it.
struct MeasuredRun {
  std::string path;
  std::string config_ini;  // root attribute `config`
  std::int64_t ranks = 1;  // root attribute `ranks`
  std::int64_t nodes = 1;  // root attribute `nodes` if present, else 1
  bool complete = false;
  std::map<std::string, std::vector<double>> steps;  // /steps/time_* columns
  // /loads/* (empty when the run did not record them): [T, L, G, E]
  std::vector<std::int64_t> loads_step, loads_routed, loads_kept;
  std::int64_t loads_layers = 0, loads_groups = 0, loads_experts = 0, loads_group_size = 0;
  // /traffic/tokens [P*P] of the step of the first loads sample (empty if not sampled)
  std::vector<std::int64_t> traffic_at_first_sample;
};
// Throws std::runtime_error naming the file and object.
MeasuredRun read_measured_run(const std::string& path);

}  // namespace moesim::io
