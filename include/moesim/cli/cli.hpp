// The phases of the `moesim` program, each a named function so that main() reads as a
// list: parse the command line, load + validate the parameters, echo them, then run an
// experiment or replay a routing trace. Errors in user input are ConfigError/UsageError
// (exit code 2 on every rank); anything else ends the whole job.
#pragma once

#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "moesim/comm/comm.hpp"
#include "moesim/config/config.hpp"

namespace moesim::cli {

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Command { run, route, bench, help, version };

struct Invocation {
  Command command = Command::help;
  std::string param_file;              // empty: defaults only
  std::vector<std::string> overrides;  // "--section.key=value" tokens
  std::string help_topic;              // "run" / "route" for `moesim run --help`
};

inline constexpr int kExitBadInput = 2;
inline constexpr int kExitRuntime = 1;
// A run stopped at a non-finite loss or gradient (complete = 0, last good checkpoint kept).
inline constexpr int kExitDiverged = 3;

// moesim run PARAMS.ini [--section.key=value ...] | moesim route [PARAMS.ini] --trace.* ...
// | moesim --help | moesim run --help | moesim --version.
Invocation parse_command_line(int argc, char** argv);

// Prints usage / the key reference on rank 0.
int print_help(const Invocation& inv, const comm::Comm& comm);

// Rank 0 reads the parameter file and broadcasts its text, so every rank parses the
// same bytes and fails (or succeeds) identically. Throws ConfigError.
Config load_config(const Invocation& inv, const comm::Comm& comm, Mode mode);

// The resolved configuration as a table on rank 0.
void echo_config(const Config& cfg, const comm::Comm& comm);

// `moesim run`: trains, writes the HDF5 result file, prints progress and a summary.
int run_experiment(const Config& cfg, const comm::Comm& comm);

// `moesim route`: replays a logits trace through the router on rank 0 (outputs.md).
int replay_trace(const Config& cfg, const comm::Comm& comm);

// `moesim bench`: one MoE layer vs pure GEMMs of the same useful FLOPs (bench/layer_bench.hpp).
int run_bench(const Config& cfg, const comm::Comm& comm);

// Runs `body`; converts errors into a message printed once and an exit code:
// ConfigError/UsageError -> 2 on every rank; other exceptions -> MPI_Abort(1).
int guarded(const comm::Comm& comm, const std::function<int()>& body);

}  // namespace moesim::cli
