// Checkpoint / restart of a training run: parameters, optimizer state and the step count
// (every random stream is keyed by the step, so nothing else is needed to continue
// bitwise). Tensors are stored under their rank-independent names, so a run can resume on
// a different number of ranks: each rank reads the experts it now hosts.
#pragma once

#include <cstdint>
#include <string>

#include "moesim/comm/comm.hpp"
#include "moesim/config/config.hpp"
#include "moesim/model/model.hpp"
#include "moesim/train/optimizer.hpp"

namespace moesim::train {

// The checkpoint path of a run: checkpoint.file, or output.file + ".ckpt".
std::string checkpoint_path(const Config& cfg);

// Collective: gathers every rank's expert tensors to rank 0, which writes the file
// atomically (tmp + rename).
template <typename T>
void save_checkpoint(const std::string& path, std::int64_t step, model::Model<T>& model,
                     Optimizer<T>& opt, const Config& cfg, const comm::Comm& comm);

// Collective: every rank reads the tensors it hosts. Returns the step to continue from.
// Any rank's failure (missing tensor, shape mismatch) throws on every rank.
template <typename T>
std::int64_t load_checkpoint(const std::string& path, model::Model<T>& model, Optimizer<T>& opt,
                             const comm::Comm& comm);

// Asynchronous stop requests (SIGTERM, SIGUSR1: Slurm preemption / time limit warning).
// The handler only sets a flag; the trainer checks it at step boundaries.
void install_stop_signal_handlers();
bool stop_requested();
void request_stop();        // for tests
void clear_stop_request();  // for tests

// Exit code of a run that stopped early on request after writing its checkpoint
// (EX_TEMPFAIL: "try again later" — a job script requeues on it).
inline constexpr int kExitPreempted = 75;

}  // namespace moesim::train
