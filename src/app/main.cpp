// moesim: the thin driver. Every phase is a named library function (moesim/cli/cli.hpp).
#include <cstdio>
#include <cstdlib>
#include <string>

#include "moesim/cli/cli.hpp"
#include "moesim/comm/comm.hpp"

namespace {
// MOESIM_EXIT_STATUS_FILE=PATH: rank 0 writes its exit code there (atomically, before MPI is
// finalised). For launchers that hide it: Open MPI's mpirun exits 1 once it got SIGTERM itself,
// even when every rank wrote its checkpoint and returned 75 (jobscripts/lib.sh reads the file).
void write_exit_status(int code) {
  const char* path = std::getenv("MOESIM_EXIT_STATUS_FILE");
  if (path == nullptr || *path == '\0') return;
  const std::string tmp = std::string(path) + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return;
  const bool ok = std::fprintf(f, "%d\n", code) > 0;
  if (std::fclose(f) == 0 && ok) std::rename(tmp.c_str(), path);
}
}  // namespace

int main(int argc, char** argv) {
  using namespace moesim;
  comm::Environment mpi(&argc, &argv);
  const comm::Comm world = comm::Comm::world();
  const int code = cli::guarded(world, [&] {
    const cli::Invocation inv = cli::parse_command_line(argc, argv);  // 1. command line
    if (inv.command == cli::Command::help || inv.command == cli::Command::version)
      return cli::print_help(inv, world);
    const Mode mode = inv.command == cli::Command::route       ? Mode::route
                      : inv.command == cli::Command::bench     ? Mode::bench
                      : inv.command == cli::Command::simulate  ? Mode::simulate
                      : inv.command == cli::Command::calibrate ? Mode::calibrate
                                                               : Mode::run;
    const Config cfg = cli::load_config(inv, world, mode);  // 2. parameters, paths, memory
    if (inv.command == cli::Command::validate) return cli::print_validation(inv, cfg, world);
    if (mode == Mode::simulate) return cli::run_simulate(cfg, inv.overrides);  // no MPI peers
    if (mode == Mode::calibrate) return cli::run_calibrate(cfg, world);
    cli::echo_config(cfg, world);                                   // 3. echo
    if (mode == Mode::route) return cli::replay_trace(cfg, world);  // 4a. trace replay
    if (mode == Mode::bench) return cli::run_bench(cfg, world);     // 4b. benchmark
    return cli::run_experiment(cfg, world);                         // 4c. run + report
  });
  if (world.rank() == 0) write_exit_status(code);
  return code;
}
