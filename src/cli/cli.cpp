// The moesim program's phases (cli.hpp): command line, parameters, echo, run, route.
#include "moesim/cli/cli.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <optional>
#include <span>
#include <sstream>

#include "moesim/bench/layer_bench.hpp"
#include "moesim/build_info.hpp"  // generated: MOESIM_VERSION, MOESIM_GIT_COMMIT
#include "moesim/dispatch/dispatcher.hpp"
#include "moesim/io/checkpoint_file.hpp"
#include "moesim/io/result_file.hpp"
#include "moesim/io/routing_trace.hpp"
#include "moesim/model/memory_estimate.hpp"
#include "moesim/routing/replay.hpp"
#include "moesim/routing/router.hpp"
#include "moesim/train/checkpoint.hpp"
#include "moesim/train/resume.hpp"
#include "moesim/train/trainer.hpp"
#include "moesim/util/file_lock.hpp"
#include "moesim/util/memory.hpp"
#include "moesim/util/paths.hpp"

namespace moesim::cli {
namespace {

constexpr const char* kUsage =
    "usage:\n"
    "  moesim run PARAMS.ini [--resume] [--section.key=value ...]\n"
    "                                                    train a distributed MoE model\n"
    "  moesim route [PARAMS.ini] --trace.input=IN.h5 --trace.output=OUT.h5 [--routing.key=value "
    "...]\n"
    "                                                    replay a router-logits trace (IN.h5)\n"
    "                                                    or a router-choice trace (IN.jsonl)\n"
    "  moesim bench PARAMS.ini [--section.key=value ...] time one MoE layer against pure GEMMs\n"
    "  moesim validate PARAMS.ini [--ranks=N] [--section.key=value ...]\n"
    "                                                    check parameters, paths and memory for\n"
    "                                                    a run on N ranks (default 1), print the\n"
    "                                                    resolved file; no MPI peers needed\n"
    "  moesim simulate PARAMS.ini --cluster.file=MACHINE.ini --simulate.ranks=16,256 "
    "--simulate.output=OUT.h5\n"
    "                                                    predict a step at virtual rank counts\n"
    "  moesim simulate --cluster.file=MACHINE.ini --simulate.validate=RUN1.h5,...\n"
    "                                                    predict measured runs, error per phase\n"
    "  mpirun -n P moesim calibrate [PARAMS.ini] --cluster.output=MACHINE.ini\n"
    "                                                    measure this machine, write a machine "
    "file\n"
    "  moesim --help | moesim run --help                 list every parameter\n"
    "  moesim --version\n"
    "Launch with MPI for more ranks: mpirun -n 2 moesim run experiments/quickstart.ini\n"
    "Exit codes: 0 success (or already complete), 1 runtime failure, 2 bad parameters or input\n"
    "files, 3 training diverged (non-finite loss/gradient), 75 stopped on a signal (resume "
    "later).\n";

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

std::string format_duration(double s) {
  char buf[32];
  if (s < 90)
    std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 5400)
    std::snprintf(buf, sizeof buf, "%.1fmin", s / 60);
  else
    std::snprintf(buf, sizeof buf, "%.1fh", s / 3600);
  return buf;
}

// Rank 0's view of the run: rows into the result file, a progress line every N steps.
// Rows are flushed before every checkpoint (the trainer asks), at the end, and at a step
// boundary at least every kFlushSeconds, so a killed run loses at most that much of its rows
// and never a row before its last checkpoint.
class RunReporter final : public train::Observer {
 public:
  static constexpr double kFlushSeconds = 10.0;
  RunReporter(io::ResultWriter& writer, const Config& cfg, std::int64_t start_step)
      : writer_(writer),
        cfg_(cfg),
        start_step_(start_step),
        start_(std::chrono::steady_clock::now()),
        last_flush_(start_) {}

  void on_step(const io::StepRecord& rec) override {
    writer_.append_step(rec);
    elapsed_ += rec.time_step;
    const std::int64_t done = rec.step + 1;
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - last_flush_).count() >
        kFlushSeconds)
      flush();
    const std::int64_t every = cfg_.output.log_every;
    if (every > 0 && (done % every == 0 || done == cfg_.training.steps)) {
      // Rates and ETA from this attempt's steps only (a resumed run starts mid-way).
      const auto here = static_cast<double>(done - start_step_);
      const double tps =
          static_cast<double>(cfg_.data.tokens_per_step) * here / std::max(elapsed_, 1e-12);
      const double eta =
          elapsed_ / std::max(here, 1.0) * static_cast<double>(cfg_.training.steps - done);
      std::printf(
          "step %6lld/%lld  loss %.5f  task %.5f  aux %.4f  z %.3f  dropped %5.2f%%  %9.0f tok/s  "
          "step %.1f ms  ETA %s\n",
          static_cast<long long>(done), static_cast<long long>(cfg_.training.steps), rec.loss,
          rec.task_loss, rec.aux_loss, rec.z_loss, 100.0 * rec.dropped_fraction, tps,
          1e3 * rec.time_step, format_duration(eta).c_str());
      std::fflush(stdout);
    }
  }
  void on_eval(const io::EvalRecord& rec) override {
    writer_.append_eval(rec);
    if (cfg_.output.log_every > 0) {
      std::printf("eval  step %6lld  loss %.5f  accuracy %.4f  macro-F1 %.4f  dropped %5.2f%%\n",
                  static_cast<long long>(rec.step), rec.loss, rec.accuracy, rec.macro_f1,
                  100.0 * rec.dropped_fraction);
      std::fflush(stdout);
    }
  }
  void on_checkpoint(std::int64_t /*step*/) override { flush(); }
  void on_traffic_begin(io::ResultWriter::Traffic kind, std::int64_t step,
                        std::int64_t ranks) override {
    writer_.traffic_begin(kind, step, ranks);
  }
  void on_traffic_rows(std::int64_t first_rank, std::int64_t count,
                       std::span<const std::int64_t> rows) override {
    writer_.traffic_rows(first_rank, count, rows);
  }
  void on_traffic_end() override { writer_.traffic_end(); }
  void flush() {
    writer_.flush();
    last_flush_ = std::chrono::steady_clock::now();
  }
  [[nodiscard]] double wall_seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  io::ResultWriter& writer_;
  const Config& cfg_;
  std::int64_t start_step_;
  std::chrono::steady_clock::time_point start_, last_flush_;
  double elapsed_ = 0;
};

// What the checkpoint file says about itself (header only; tensors are verified on load).
train::CheckpointState probe_checkpoint(const std::string& path) {
  train::CheckpointState st;
  std::error_code ec;
  st.exists = std::filesystem::exists(path, ec);
  if (!st.exists) return st;
  try {
    const io::CheckpointReader reader(path);
    reader.verify();  // every tensor against its checksum, before any work
    st.step = reader.meta().step;
    st.ranks = reader.meta().ranks;
    st.config_ini = reader.meta().config_ini;
    st.readable = true;
  } catch (const std::exception& e) {
    st.problem = e.what();
  }
  return st;
}

train::ResultState probe_result(const std::string& path) {
  const io::ResultFileState r = io::probe_result_file(path);
  train::ResultState st;
  st.exists = r.exists;
  st.readable = r.readable;
  st.problem = r.problem;
  st.complete = r.complete;
  st.rows = r.rows;
  st.contiguous = r.contiguous;
  st.config_ini = r.config_ini;
  return st;
}

// A ConfigError thrown on rank 0 reaches every rank (each throws the same error: exit 2).
void share_config_error(const comm::Comm& comm, const std::optional<ConfigError>& err) {
  std::string key = err ? err->key() : "", value = err ? err->value() : "",
              allowed = err ? err->allowed() : "";
  std::int64_t failed = err ? 1 : 0;
  comm.bcast(std::span<std::int64_t>(&failed, 1), 0);
  if (!failed) return;
  comm.bcast(key, 0);
  comm.bcast(value, 0);
  comm.bcast(allowed, 0);
  throw ConfigError(key, value, allowed);
}

}  // namespace

Invocation parse_command_line(int argc, char** argv) {
  Invocation inv;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) throw UsageError(std::string("missing command\n") + kUsage);
  const std::string& cmd = args[0];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    inv.command = Command::help;
    return inv;
  }
  if (cmd == "--version") {
    inv.command = Command::version;
    return inv;
  }
  if (cmd == "run")
    inv.command = Command::run;
  else if (cmd == "route")
    inv.command = Command::route;
  else if (cmd == "bench")
    inv.command = Command::bench;
  else if (cmd == "validate")
    inv.command = Command::validate;
  else if (cmd == "simulate")
    inv.command = Command::simulate;
  else if (cmd == "calibrate")
    inv.command = Command::calibrate;
  else
    throw UsageError("unknown command '" + cmd +
                     "': allowed are run, route, bench, validate, simulate, calibrate, --help, "
                     "--version\n" +
                     kUsage);
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      inv.command = Command::help;
      inv.help_topic = cmd;
      return inv;
    }
    if (a == "--resume") {  // shorthand used by job scripts and the README
      inv.overrides.push_back("--checkpoint.resume=true");
      continue;
    }
    if (inv.command == Command::validate && (a == "--ranks" || a.rfind("--ranks=", 0) == 0)) {
      std::string v;
      if (a == "--ranks") {
        if (i + 1 < args.size()) v = args[++i];
      } else {
        v = a.substr(8);
      }
      const char* end = v.c_str();
      errno = 0;
      const long n = v.empty() ? 0 : std::strtol(v.c_str(), const_cast<char**>(&end), 10);
      if (v.empty() || *end != '\0' || errno != 0 || n < 1 || n > (1 << 24))
        throw ConfigError("--ranks", v,
                          "an integer in [1, 16777216]: the MPI rank count to validate for");
      inv.ranks = static_cast<int>(n);
      continue;
    }
    if (a.rfind("--", 0) == 0) {
      inv.overrides.push_back(a);
      // "--key value" form: the value is the next token unless it is an option itself.
      if (a.find('=') == std::string::npos && i + 1 < args.size() &&
          args[i + 1].rfind("--", 0) != 0)
        inv.overrides.push_back(args[++i]);
      continue;
    }
    if (!inv.param_file.empty())
      throw UsageError("unexpected argument '" + a +
                       "': only one parameter file is allowed (got '" + inv.param_file + "')");
    inv.param_file = a;
  }
  if ((inv.command == Command::run || inv.command == Command::bench ||
       inv.command == Command::validate) &&
      inv.param_file.empty())
    throw UsageError("moesim " + cmd + " needs a parameter file\n" + kUsage);
  return inv;
}

int print_help(const Invocation& inv, const comm::Comm& comm) {
  if (comm.rank() != 0) return 0;
  if (inv.command == Command::version) {
    std::printf("moesim %s (git %s)\n", MOESIM_VERSION, MOESIM_GIT_COMMIT);
    return 0;
  }
  std::printf("%s\n%s", kUsage, help_text().c_str());
  return 0;
}

namespace {
// Paths (same file by identity, writable directories) and the per-rank memory estimate.
std::vector<ConfigProblem> preflight_problems(const Config& cfg, Mode mode,
                                              const std::string& param_file, int ranks) {
  std::vector<ConfigProblem> problems = util::check_paths(cfg, mode, param_file);
  if (mode == Mode::run) {
    // All ranks are assumed to share one node (the conservative case).
    for (auto& p : model::check_memory(cfg, ranks, ranks)) problems.push_back(std::move(p));
  }
  return problems;
}

// Why the parameter file cannot be used, or "" (rank 0 only).
std::string read_param_file(const std::string& path, std::string& text) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return "does not exist";
  if (fs::is_directory(st)) return "is a directory";
  if (!fs::is_regular_file(st)) return "is not a regular file";
  std::ifstream in(path, std::ios::binary);
  if (!in) return "cannot be opened for reading";
  std::ostringstream ss;
  ss << in.rdbuf();
  text = ss.str();
  if (text.empty()) return "is empty";
  return {};
}
}  // namespace

Config load_config(const Invocation& inv, const comm::Comm& comm, Mode mode) {
  std::string text, problem;
  if (comm.rank() == 0 && !inv.param_file.empty()) problem = read_param_file(inv.param_file, text);
  comm.bcast(problem, 0);
  if (!problem.empty())
    throw ConfigError(
        "parameter file", inv.param_file,
        "must be an existing, readable, non-empty regular INI file (it " + problem + ")");
  comm.bcast(text, 0);
  const int ranks = inv.command == Command::validate ? inv.ranks : comm.size();
  Config cfg = parse_and_validate(text, inv.param_file.empty() ? "<defaults>" : inv.param_file,
                                  inv.overrides, mode, ranks);
  // Filesystem and machine checks on rank 0 (it writes the files), before any work; the
  // problems travel as text so that every rank throws the same ConfigError.
  std::string found;
  if (comm.rank() == 0) {
    for (const ConfigProblem& p : preflight_problems(cfg, mode, inv.param_file, ranks))
      found += p.key + '\x1f' + p.value + '\x1f' + p.allowed + '\x1e';
  }
  comm.bcast(found, 0);
  std::vector<ConfigProblem> problems;
  for (std::size_t at = 0; at < found.size();) {
    const std::size_t a = found.find('\x1f', at), b = found.find('\x1f', a + 1),
                      e = found.find('\x1e', b + 1);
    problems.push_back(
        {found.substr(at, a - at), found.substr(a + 1, b - a - 1), found.substr(b + 1, e - b - 1)});
    at = e + 1;
  }
  if (!problems.empty()) throw ConfigError(std::move(problems));
  return cfg;
}

int print_validation(const Invocation& inv, const Config& cfg, const comm::Comm& comm) {
  if (comm.rank() != 0) return 0;
  // Everything but the resolved file is a '#' comment, so stdout is itself a parameter file.
  std::printf("# moesim validate: %s is valid for `moesim run` on %d MPI rank%s\n",
              inv.param_file.c_str(), inv.ranks, inv.ranks == 1 ? "" : "s");
  std::printf("# paths: checked (same-file pairs by identity, output directories writable)\n");
  const model::MemoryEstimate est = model::estimate_memory(cfg, inv.ranks);
  const model::MemoryAvailable avail = model::memory_available();
  std::printf(
      "# memory per rank (estimate, docs/memory.md): %s = parameters %s + optimizer %s + "
      "activations %s + exchange %s + data %s + allowance %s\n",
      model::format_bytes(est.total).c_str(), model::format_bytes(est.parameters).c_str(),
      model::format_bytes(est.optimizer).c_str(), model::format_bytes(est.activations).c_str(),
      model::format_bytes(est.exchange).c_str(), model::format_bytes(est.data).c_str(),
      model::format_bytes(est.allowance).c_str());
  if (avail.bytes >= 0)
    std::printf("# memory available: %s (%s), %s per rank with %d rank%s on one node\n",
                model::format_bytes(avail.bytes).c_str(), avail.source.c_str(),
                model::format_bytes(avail.bytes / inv.ranks).c_str(), inv.ranks,
                inv.ranks == 1 ? "" : "s");
  std::printf("%s", to_ini(cfg).c_str());
  std::fflush(stdout);
  return 0;
}

void echo_config(const Config& cfg, const comm::Comm& comm) {
  if (comm.rank() != 0 || !cfg.output.echo_config) return;
  std::printf("moesim %s (git %s), %d MPI rank%s\n%s\n", MOESIM_VERSION, MOESIM_GIT_COMMIT,
              comm.size(), comm.size() == 1 ? "" : "s", to_table(cfg).c_str());
  std::fflush(stdout);
}

int run_experiment(const Config& cfg, const comm::Comm& comm) {
  // Rank 0 owns the output: it takes the lock before touching anything, looks at what the
  // checkpoint and the result file say, and decides how this run starts (train/resume.hpp).
  // Every refusal is a ConfigError on every rank (exit 2) before any work.
  std::optional<FileLock> lock;
  std::unique_ptr<io::ResultWriter> writer;
  const comm::NodeMap node_map = comm.node_map();  // collective (MPI_Comm_split_type)
  // Bad input found from the node layout: before any work and before the result file.
  if (cfg.routing.dispatch == DispatchKind::hierarchical) dispatch::require_equal_nodes(node_map);
  const int nodes = node_map.nodes;
  train::StartDecision start;
  std::optional<ConfigError> refused;
  const std::string ckpt = train::checkpoint_path(cfg);
  if (comm.rank() == 0) {
    try {
      std::string holder;
      try {
        lock = FileLock::try_acquire(cfg.output.file, &holder);
      } catch (const std::exception& e) {
        throw ConfigError("output.file", cfg.output.file,
                          std::string("a writable path (") + e.what() + ")");
      }
      if (!lock)
        throw ConfigError("output.file", cfg.output.file,
                          "a result file no other run is writing: it is in use by " + holder +
                              " (lock " + cfg.output.file +
                              ".lock); wait for that run or choose another output.file");
      start = train::decide_start(cfg, probe_checkpoint(ckpt), probe_result(cfg.output.file));
    } catch (const ConfigError& e) {
      refused = e;
    }
  }
  share_config_error(comm, refused);
  std::int64_t decision[2] = {static_cast<std::int64_t>(start.kind), start.step};
  comm.bcast(std::span<std::int64_t>(decision, 2), 0);
  start.kind = static_cast<train::StartKind>(decision[0]);
  start.step = decision[1];
  if (comm.rank() == 0 && !start.note.empty()) {
    std::printf("%s\n", start.note.c_str());
    std::fflush(stdout);
  }
  if (start.kind == train::StartKind::already_complete) return 0;

  if (comm.rank() == 0) {
    io::RunMetadata meta;
    meta.nodes = nodes;
    meta.config_ini = to_ini(cfg);
    meta.moesim_version = MOESIM_VERSION;
    meta.git_commit = MOESIM_GIT_COMMIT;
    meta.created_utc = utc_now();
    meta.slurm_job_id = env_or_empty("SLURM_JOB_ID");
    meta.ranks = comm.size();
    meta.seed = cfg.training.seed;
    meta.layers = cfg.model.layers;
    meta.num_experts = cfg.routing.num_experts;
    meta.num_clusters = cfg.data.num_clusters;
    meta.tokens_per_step = cfg.data.tokens_per_step;
    try {
      if (start.remove_stale_checkpoint) {
        std::error_code ec;
        std::filesystem::remove(ckpt, ec);
      }
      writer = start.kind == train::StartKind::resume
                   ? std::make_unique<io::ResultWriter>(cfg.output.file, meta, start.step)
                   : std::make_unique<io::ResultWriter>(cfg.output.file, meta);
      io::AttemptInfo attempt;
      attempt.job_id =
          env_or_empty("SLURM_ARRAY_JOB_ID").empty()
              ? env_or_empty("SLURM_JOB_ID")
              : env_or_empty("SLURM_ARRAY_JOB_ID") + "_" + env_or_empty("SLURM_ARRAY_TASK_ID");
      attempt.start_utc = meta.created_utc;
      attempt.first_step = start.kind == train::StartKind::resume ? start.step : 0;
      attempt.ranks = comm.size();
      writer->begin_attempt(attempt);
    } catch (const io::ResumeGap& e) {
      refused = ConfigError("output.file", cfg.output.file,
                            std::string("a result file with every row before the checkpoint (") +
                                e.what() + "); remove the checkpoint " + ckpt + " to start afresh");
    } catch (const std::exception& e) {
      refused = ConfigError("output.file", cfg.output.file,
                            std::string("a writable file path (") + e.what() + ")");
    }
  }
  share_config_error(comm, refused);

  std::unique_ptr<RunReporter> reporter;
  if (writer)
    reporter = std::make_unique<RunReporter>(
        *writer, cfg, start.kind == train::StartKind::resume ? start.step : 0);
  train::install_stop_signal_handlers();  // SIGTERM / SIGUSR1: checkpoint at the next step, exit
  const train::RunResult res = train::train(
      cfg, comm, reporter.get(), start.kind == train::StartKind::resume ? start.step : 0);
  {  // every rank's peak memory, so rank 0's can be compared with the others' (docs/scale.md)
    const std::int64_t rss = util::peak_rss_bytes();
    std::vector<std::int64_t> all(comm.rank() == 0 ? static_cast<std::size_t>(comm.size()) : 0U);
    comm.gather(std::span<const std::int64_t>(&rss, 1), std::span<std::int64_t>(all), 0);
    if (writer && !all.empty()) {
      std::vector<std::int64_t> sorted = all;
      std::sort(sorted.begin(), sorted.end());
      writer->set_attempt_memory(all[0], sorted[sorted.size() / 2], sorted.back());
    }
  }
  if (res.preempted) {
    if (comm.rank() == 0) {
      writer->end_attempt("preempted", reporter->wall_seconds());  // complete stays 0
      std::printf(
          "stopped on request after step %lld: checkpoint %s written; continue with --resume\n",
          static_cast<long long>(res.start_step + static_cast<std::int64_t>(res.loss.size())),
          ckpt.c_str());
      std::fflush(stdout);
    }
    return train::kExitPreempted;
  }
  if (res.diverged) {
    if (comm.rank() == 0) {
      writer->end_attempt("diverged", reporter->wall_seconds());
      writer->mark_incomplete(res.diverged_reason);
      std::error_code ec;
      const bool have_ckpt = std::filesystem::exists(ckpt, ec);
      std::fprintf(stderr,
                   "moesim: error: %s; the result file %s stays incomplete (complete = 0)%s\n",
                   res.diverged_reason.c_str(), cfg.output.file.c_str(),
                   have_ckpt ? ("; the last good checkpoint " + ckpt + " is kept").c_str()
                             : "; no checkpoint was written before it");
      std::fflush(stderr);
    }
    return kExitDiverged;
  }

  if (comm.rank() == 0) {
    writer->end_attempt("complete", reporter->wall_seconds());
    const io::ResultWriter::Summary s = writer->finish();
    std::printf(
        "summary: %lld steps on %d ranks in %.2f s wall (%lld attempt%s) | loss %.5f -> %.5f | "
        "eval accuracy %.4f (macro-F1 %.4f) | dropped %.2f%% | %.0f tokens/s | median step %.2f "
        "ms | result %s\n",
        static_cast<long long>(s.steps), comm.size(), s.wall_seconds,
        static_cast<long long>(s.attempts), s.attempts == 1 ? "" : "s", s.first_loss, s.last_loss,
        s.eval_accuracy, s.eval_macro_f1, 100.0 * s.dropped_fraction_mean, s.tokens_per_second,
        1e3 * s.step_time_median, cfg.output.file.c_str());
    std::fflush(stdout);
  }
  return 0;
}

bool is_choice_trace(const std::string& path) {
  return path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
}

// moesim route on a router-choice trace (Megatron-Core JSONL, docs/routing_traces.md): the
// trace's top-k choices are the selection (no logits: no rule is applied, weights and the
// aux/z losses are unknown and written as NaN); capacity and the drop policy are replayed per
// group. A group never spans two records (one rank's tokens at one step and layer):
// routing.group_size = 0 makes each record one group (as Megatron applies capacity per rank).
void replay_choice_trace(const Config& cfg_in) {
  io::RoutingTrace trace;
  try {
    trace = io::read_routing_trace_jsonl(cfg_in.trace.input);
  } catch (const io::TraceFormatError& e) {
    throw ConfigError("trace.input", cfg_in.trace.input,
                      std::string("a Megatron-Core router trace (JSONL): ") + e.what());
  }
  Config cfg = cfg_in;
  const RoutingConfig& rc = cfg.routing;
  validate(cfg, Mode::route, 1);
  const std::int64_t E = rc.num_experts;
  if (trace.max_expert >= E) {
    std::int64_t line = 0;
    for (const auto& r : trace.records)
      if (line == 0 &&
          std::find(r.experts.begin(), r.experts.end(), trace.max_expert) != r.experts.end())
        line = r.line;
    throw ConfigError("routing.num_experts", std::to_string(E),
                      "an integer above the largest expert index in the trace (" +
                          std::to_string(trace.max_expert) + " at " + cfg.trace.input + ":" +
                          std::to_string(line) + ")");
  }
  if (rc.rule != RoutingRuleKind::topk && rc.rule != RoutingRuleKind::switch_top1)
    throw ConfigError("routing.rule", to_string(rc.rule),
                      "topk or switch for a router-choice trace (the trace's top-k choices are "
                      "the selection; rules that need logits cannot be replayed)");
  if (rc.drop_policy != DropPolicyKind::position &&
      rc.drop_policy != DropPolicyKind::choice_position)
    throw ConfigError("routing.drop_policy", to_string(rc.drop_policy),
                      "position or choice_position for a router-choice trace (probs and "
                      "priority need router probabilities, which the trace does not have)");
  const auto policy = routing::make_drop_policy(rc);
  io::RouteOutput out;
  out.load_routed.assign(static_cast<std::size_t>(E), 0);
  out.load_kept.assign(static_cast<std::size_t>(E), 0);
  out.aux_loss = out.z_loss = std::nan("");
  std::map<std::pair<std::int64_t, std::int64_t>, std::size_t> row_of;  // (step, layer) -> row
  std::vector<routing::Candidate> cands;
  std::int64_t first_token = 0, dropped = 0, total = 0, capacity_seen = -2;
  for (const io::RoutingTraceRecord& rec : trace.records) {
    const std::int64_t S = rc.group_size > 0 ? rc.group_size : rec.tokens;
    if (rec.tokens % S != 0)
      throw ConfigError("routing.group_size", std::to_string(rc.group_size),
                        "a divisor of every record's token count (" + cfg.trace.input + ":" +
                            std::to_string(rec.line) + " has " + std::to_string(rec.tokens) +
                            " tokens), or 0 (each record one group)");
    if (rc.rule == RoutingRuleKind::switch_top1 && rec.topk != 1)
      throw ConfigError("routing.rule", "switch",
                        "topk for a trace with topk = " + std::to_string(rec.topk) + " (" +
                            cfg.trace.input + ":" + std::to_string(rec.line) + ")");
    const std::int64_t C =
        rc.dropless ? -1 : routing::capacity(rec.topk, S, E, rc.capacity_factor, rc.min_capacity);
    // One capacity for the output attribute; -1 when records of different sizes disagree.
    capacity_seen = capacity_seen == -2 || capacity_seen == C ? C : -1;
    auto [it, added] = row_of.try_emplace({rec.step, rec.layer}, out.trace_step.size());
    if (added) {
      out.trace_step.push_back(rec.step);
      out.trace_layer.push_back(rec.layer);
      out.trace_load_routed.resize(out.trace_load_routed.size() + static_cast<std::size_t>(E), 0);
      out.trace_load_kept.resize(out.trace_load_kept.size() + static_cast<std::size_t>(E), 0);
    }
    const std::size_t row = it->second * static_cast<std::size_t>(E);
    for (std::int64_t g0 = 0; g0 < rec.tokens; g0 += S) {
      cands.clear();
      for (std::int64_t t = 0; t < S; ++t)
        for (std::int64_t c = 0; c < rec.topk; ++c)
          cands.push_back(
              routing::Candidate{static_cast<std::int32_t>(t),
                                 rec.experts[static_cast<std::size_t>((g0 + t) * rec.topk + c)],
                                 static_cast<std::int32_t>(c), std::nan(""), false, -1});
      policy->apply(cands, {}, S, E, C);
      // The output contract lists rows sorted by (token, expert).
      std::sort(cands.begin(), cands.end(), [](const auto& a, const auto& b) {
        return a.token != b.token ? a.token < b.token : a.expert < b.expert;
      });
      for (const routing::Candidate& c : cands) {
        const auto e = static_cast<std::size_t>(c.expert);
        ++out.load_routed[e];
        ++out.trace_load_routed[row + e];
        ++total;
        const std::int64_t tok = first_token + g0 + c.token;
        if (c.kept) {
          ++out.load_kept[e];
          ++out.trace_load_kept[row + e];
          out.token.push_back(tok);
          out.expert.push_back(c.expert);
          out.slot.push_back(c.slot);
          out.weight.push_back(c.weight);
        } else {
          ++dropped;
          out.dropped_token.push_back(tok);
          out.dropped_expert.push_back(c.expert);
        }
      }
    }
    first_token += rec.tokens;
  }
  out.capacity = capacity_seen;
  out.dropped_fraction = total > 0 ? static_cast<double>(dropped) / static_cast<double>(total) : 0;
  out.config_ini = to_ini(cfg);
  io::write_route_output(cfg.trace.output, out);
  std::printf(
      "route: router-choice trace %s: %zu records (%lld tokens, %zu (step, layer) pairs%s), "
      "%lld experts, capacity %lld, kept %zu, dropped %zu (%.2f%%) -> %s\n",
      cfg.trace.input.c_str(), trace.records.size(), static_cast<long long>(first_token),
      out.trace_step.size(),
      trace.skipped_mtp > 0
          ? (", " + std::to_string(trace.skipped_mtp) + " mtp records skipped").c_str()
          : "",
      static_cast<long long>(E), static_cast<long long>(out.capacity), out.token.size(),
      out.dropped_token.size(), 100.0 * out.dropped_fraction, cfg.trace.output.c_str());
}

int replay_trace(const Config& cfg_in, const comm::Comm& comm) {
  // Rank 0 does the work; the outcome is broadcast so every rank exits alike.
  std::string problem;
  std::int64_t code = 0;
  if (comm.rank() == 0) {
    try {
      if (is_choice_trace(cfg_in.trace.input)) {
        replay_choice_trace(cfg_in);
      } else {
        Config cfg = cfg_in;
        const bool e_given = cfg.given.count("routing.num_experts") != 0;
        // The trace's shape is checked before its data is read (nothing allocated yet): an
        // explicit routing.num_experts must match its width; otherwise the width is taken.
        const auto check_shape = [&](std::int64_t T, std::int64_t E) {
          if (e_given && cfg.routing.num_experts != E)
            throw ConfigError("routing.num_experts", std::to_string(cfg.routing.num_experts),
                              "must equal the trace's /logits width E = " + std::to_string(E) +
                                  " (trace.input = " + cfg.trace.input +
                                  "), or be left out to take it from the trace");
          Config shaped = cfg;
          shaped.routing.num_experts = E;
          routing::check_trace_shape(shaped, T, E);
          const std::int64_t need = routing::replay_memory_bytes(shaped, T, E);
          const model::MemoryAvailable avail = model::memory_available();
          if (avail.bytes >= 0 && need > avail.bytes)
            throw ConfigError("trace.input", cfg.trace.input,
                              "a trace that fits in memory: /logits [" + std::to_string(T) + ", " +
                                  std::to_string(E) + "] needs about " + model::format_bytes(need) +
                                  " to replay, " + model::format_bytes(avail.bytes) +
                                  " available (" + avail.source + ")");
        };
        io::Trace trace;
        try {
          trace = io::read_trace(cfg.trace.input, check_shape);
        } catch (const ConfigError&) {
          throw;
        } catch (const std::exception& e) {
          throw ConfigError("trace.input", cfg.trace.input,
                            std::string("a readable trace file: ") + e.what());
        }
        if (!e_given && cfg.routing.num_experts != trace.experts) {
          std::fprintf(stderr,
                       "moesim route: routing.num_experts = %lld taken from the trace's /logits "
                       "width\n",
                       static_cast<long long>(trace.experts));
        }
        cfg.routing.num_experts = trace.experts;
        cfg.given.insert("routing.num_experts");  // known now: validate checks k <= E
        validate(cfg, Mode::route, 1);
        const routing::ReplayResult r =
            routing::replay(cfg, trace.logits, trace.tokens, trace.experts, trace.token_id);
        io::RouteOutput out;
        out.token = r.token;
        out.expert = r.expert;
        out.slot = r.slot;
        out.weight = r.weight;
        out.dropped_token = r.dropped_token;
        out.dropped_expert = r.dropped_expert;
        out.load_routed = r.load_routed;
        out.load_kept = r.load_kept;
        out.capacity = r.capacity;
        out.aux_loss = r.aux_loss;
        out.z_loss = r.z_loss;
        out.dropped_fraction = r.dropped_fraction;
        out.base_epsilon = r.base_epsilon;
        out.config_ini = to_ini(cfg);
        io::write_route_output(cfg.trace.output, out);
        std::printf(
            "route: %lld tokens, %lld experts, %lld group%s of %lld, capacity %lld, kept %zu, "
            "dropped %zu (%.2f%%), aux %.6f, z %.6f -> %s\n",
            static_cast<long long>(r.tokens), static_cast<long long>(r.experts),
            static_cast<long long>(r.groups), r.groups == 1 ? "" : "s",
            static_cast<long long>(r.group_size), static_cast<long long>(out.capacity),
            out.token.size(), out.dropped_token.size(), 100.0 * out.dropped_fraction, out.aux_loss,
            out.z_loss, cfg.trace.output.c_str());
      }
    } catch (const ConfigError& e) {
      problem = e.what();
      code = kExitBadInput;
    } catch (const std::exception& e) {
      problem = e.what();
      code = kExitRuntime;
    }
  }
  comm.bcast(std::span<std::int64_t>(&code, 1), 0);
  comm.bcast(problem, 0);
  if (code != 0 && comm.rank() == 0) std::fprintf(stderr, "moesim: error: %s\n", problem.c_str());
  return static_cast<int>(code);
}

int run_bench(const Config& cfg, const comm::Comm& comm) {
  const bench::LayerBenchResult r = bench::bench_layer(cfg, comm);
  if (comm.rank() == 0) {
    const double tflops = r.useful_gflop_fwd / (r.fwd_ms * 1e-3) / comm.size();
    std::printf(
        "bench layer E=%lld d_model=%lld d_ff=%lld tokens=%lld k=%lld cf=%s %s ranks=%d: "
        "fwd %.2f ms (gemm %.2f ms, ratio %.3f) | fwd+bwd %.2f ms (gemm %.2f ms, ratio %.3f) | "
        "useful %.1f GFLOP/s per rank fwd | deterministic %s\n",
        static_cast<long long>(cfg.routing.num_experts), static_cast<long long>(cfg.model.d_model),
        static_cast<long long>(cfg.model.d_ff), static_cast<long long>(cfg.data.tokens_per_step),
        static_cast<long long>(cfg.routing.k), cfg.routing.capacity_factor.str().c_str(),
        to_string(cfg.model.precision), comm.size(), r.fwd_ms, r.fwd_gemm_ms,
        r.fwd_ms / r.fwd_gemm_ms, r.fwdbwd_ms, r.fwdbwd_gemm_ms, r.fwdbwd_ms / r.fwdbwd_gemm_ms,
        tflops, r.deterministic ? "yes" : "NO");
    std::printf(
        "bench phases (ms per fwd+bwd iteration, max over ranks, median): gate %.2f dispatch %.2f "
        "expert "
        "%.2f "
        "combine %.2f backward %.2f\n",
        r.phase_ms[0], r.phase_ms[1], r.phase_ms[2], r.phase_ms[3], r.phase_ms[4]);
    std::printf(
        "bench exchange (bytes per fwd+bwd iteration, all ranks): dispatch %s nodes %d "
        "inter-node %.0f intra-node %.0f (forward token dispatch inter-node %.0f)\n",
        to_string(cfg.routing.dispatch), r.nodes, r.bytes_inter_node, r.bytes_intra_node,
        r.bytes_token_dispatch_inter_node);
    // Rates: the layer (fwd+bwd = 3x the forward's useful flops) and the library's own GEMMs
    // at the same shapes, per rank; the measured peak beside them.
    const double P = comm.size(), gf = r.useful_gflop_fwd;
    const double lib_fwd = gf / (r.fwd_gemm_ms * 1e-3) / P;
    const double lib_all = 3 * gf / (r.fwdbwd_gemm_ms * 1e-3) / P;
    const bool bf16 = cfg.model.precision == Precision::bfloat16 && r.bf16_peak_gflops > 0;
    const double peak = bf16 ? r.bf16_peak_gflops : r.fma_peak_gflops;
    // The expert phase (forward) against the library's forward GEMMs timed in the same
    // fwd+bwd iterations: both medians of per-iteration maxima over ranks.
    const double expert_rate = r.phase_ms[2] > 0 ? gf / (r.phase_ms[2] * 1e-3) / P : 0;
    const double lib_expert = r.expert_fwd_gemm_ms > 0 ? gf / (r.expert_fwd_gemm_ms * 1e-3) / P : 0;
    if (r.overlap_degree > 1)
      std::printf(
          "bench overlap d=%d (vs d=1 in the same loop, ms per fwd+bwd iteration, max over ranks, "
          "median): step %.2f vs %.2f | exchange %.2f of %.2f not hidden | expert compute (d=1) "
          "%.2f | hidden %.0f%% of the exchange (step gain %.0f%%) | bitwise %s\n",
          r.overlap_degree, r.stepd_ms, r.step1_ms, r.exchanged_ms, r.exchange1_ms, r.expert1_ms,
          100 * r.hidden, 100 * r.step_gain, r.overlap_bitwise ? "yes" : "NO");
    std::printf("bench cpu: %s\n", r.cpu.c_str());
    std::printf(
        "bench %s: step (fwd+bwd) %.2f ms | %.0f tokens/s | useful %.1f GFLOP/s per rank | "
        "library GEMMs at the same shapes %.1f GFLOP/s per rank (fwd %.1f) | FMA peak %.1f "
        "GFLOP/s per core (bf16 dot %.1f)\n",
        to_string(cfg.model.precision), r.fwdbwd_ms,
        static_cast<double>(cfg.data.tokens_per_step) / (r.fwdbwd_ms * 1e-3),
        3 * gf / (r.fwdbwd_ms * 1e-3) / P, lib_all, lib_fwd, r.fma_peak_gflops, r.bf16_peak_gflops);
    std::printf(
        "bench ratios %s: expert phase %.1f GFLOP/s per rank = %.0f%% of the library's %.1f "
        "(target >= 85%%; %.0f%% of the %s peak %.1f) | layer / GEMMs %.3f fwd+bwd (target <= "
        "1.10) | library at %.0f%% of the %s peak\n",
        to_string(cfg.model.precision), expert_rate,
        lib_expert > 0 ? 100.0 * expert_rate / lib_expert : 0.0, lib_expert,
        peak > 0 ? 100.0 * expert_rate / peak : 0.0, bf16 ? "bf16 dot" : "FMA", peak,
        r.fwdbwd_ms / r.fwdbwd_gemm_ms, peak > 0 ? 100.0 * lib_all / peak : 0.0,
        bf16 ? "bf16 dot" : "FMA");
    std::fflush(stdout);
  }
  return r.deterministic ? 0 : kExitRuntime;
}

int guarded(const comm::Comm& comm, const std::function<int()>& body) {
  try {
    return body();
  } catch (const ConfigError& e) {
    if (comm.rank() == 0) std::fprintf(stderr, "moesim: error: %s\n", e.what());
    return kExitBadInput;
  } catch (const UsageError& e) {
    if (comm.rank() == 0) std::fprintf(stderr, "moesim: error: %s\n", e.what());
    return kExitBadInput;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moesim: fatal error on rank %d of %d: %s\n", comm.rank(), comm.size(),
                 e.what());
    std::fflush(stderr);
    comm::Environment::abort(kExitRuntime);
  }
}

}  // namespace moesim::cli
