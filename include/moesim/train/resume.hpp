// Where a `moesim run` starts: afresh, from a checkpoint, or not at all because the run is
// already complete. Pure decisions over what the checkpoint and the result file say about
// themselves (probed by the caller), so every rule is unit-testable without files or MPI.
// A refusal is a ConfigError naming the key (or file) and both values: exit 2 before any work.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moesim/config/config.hpp"

namespace moesim::train {

// What the checkpoint file at checkpoint_path(cfg) says about itself.
struct CheckpointState {
  bool exists = false;
  bool readable = false;   // header read and its checksum verified
  std::string problem;     // why not readable
  std::int64_t step = 0;   // steps it completed
  std::int64_t ranks = 0;  // ranks that wrote it
  std::string config_ini;  // the run's resolved parameters when it was written
};

// What the result file at output.file says about itself (io::probe_result_file).
struct ResultState {
  bool exists = false;
  bool readable = false;
  std::string problem;
  bool complete = false;
  std::int64_t rows = 0;   // /steps rows
  bool contiguous = true;  // rows are steps 0, 1, ...
  std::string config_ini;
};

enum class StartKind {
  fresh,             // step 0; a new result file (an existing one is replaced)
  resume,            // continue from the checkpoint's step into the existing result file
  already_complete,  // --resume of a finished run: nothing to do, nothing touched
};

struct StartDecision {
  StartKind kind = StartKind::fresh;
  std::int64_t step = 0;                 // resume: the checkpoint's step
  std::string note;                      // one line for the user (rank 0 prints it)
  bool remove_stale_checkpoint = false;  // fresh run over an old checkpoint of this output
};

// Keys that may differ between the run that wrote a checkpoint and the run resuming from it:
// they do not change the trajectory (cadence, paths, the number of steps, the exchange
// algorithm, which is bitwise-equivalent; the redundant-expert slots, which change only the
// summation order of expert gradients). Everything else must match.
bool may_differ_on_resume(const std::string& key);

// One line per trajectory-changing key whose values differ ("key: checkpoint X, now Y").
// `stored_ini` is a resolved config as stored in a checkpoint or result file.
std::vector<std::string> trajectory_differences(const std::string& stored_ini, const Config& now);

// The rules (docs/lifecycle.md):
// - without --resume: fresh (a stale checkpoint of this output is removed when the run will
//   not overwrite it by itself, so a later --resume cannot pick up another run's state);
// - --resume without a checkpoint: a complete result file of the same trajectory with all
//   training.steps rows -> already_complete; otherwise fresh;
// - --resume with a checkpoint: it must be readable, of the same trajectory, with
//   0 <= step <= training.steps; the result file must exist, be readable, be of the same
//   trajectory and hold rows for every step before the checkpoint (else refused: resuming would
//   lose rows); complete with training.steps rows -> already_complete; else resume.
StartDecision decide_start(const Config& now, const CheckpointState& ckpt,
                           const ResultState& result);

}  // namespace moesim::train
