// moesim: the thin driver. Every phase is a named library function (moesim/cli/cli.hpp).
#include "moesim/cli/cli.hpp"
#include "moesim/comm/comm.hpp"

int main(int argc, char** argv) {
  using namespace moesim;
  comm::Environment mpi(&argc, &argv);
  const comm::Comm world = comm::Comm::world();
  return cli::guarded(world, [&] {
    const cli::Invocation inv = cli::parse_command_line(argc, argv);  // 1. command line
    if (inv.command == cli::Command::help || inv.command == cli::Command::version)
      return cli::print_help(inv, world);
    const Mode mode = inv.command == cli::Command::route       ? Mode::route
                      : inv.command == cli::Command::bench     ? Mode::bench
                      : inv.command == cli::Command::simulate  ? Mode::simulate
                      : inv.command == cli::Command::calibrate ? Mode::calibrate
                                                               : Mode::run;
    const Config cfg = cli::load_config(inv, world, mode);                     // 2. parameters
    if (mode == Mode::simulate) return cli::run_simulate(cfg, inv.overrides);  // no MPI peers
    if (mode == Mode::calibrate) return cli::run_calibrate(cfg, world);
    cli::echo_config(cfg, world);                                   // 3. echo
    if (mode == Mode::route) return cli::replay_trace(cfg, world);  // 4a. trace replay
    if (mode == Mode::bench) return cli::run_bench(cfg, world);     // 4b. benchmark
    return cli::run_experiment(cfg, world);                         // 4c. run + report
  });
}
