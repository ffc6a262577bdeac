// `moesim simulate`: projections of one training step to virtual rank counts, and validation
// against measured run result files (docs/simulate.md). One process; no MPI calls.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <sstream>

#include "moesim/build_info.hpp"
#include "moesim/cli/cli.hpp"
#include "moesim/io/projection_file.hpp"
#include "moesim/io/result_file.hpp"
#include "moesim/routing/router.hpp"
#include "moesim/simulate/projection.hpp"

namespace moesim::cli {
namespace {

std::string read_text(const std::string& path, const char* key) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(key, path, "an existing, readable file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string csv_path(const std::string& h5) {
  const auto dot = h5.rfind('.');
  const auto slash = h5.rfind('/');
  if (dot != std::string::npos && (slash == std::string::npos || dot > slash))
    return h5.substr(0, dot) + ".csv";
  return h5 + ".csv";
}

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

simulate::RecordedLoads to_loads(const io::MeasuredRun& r, std::int64_t group_size) {
  simulate::RecordedLoads l;
  l.steps = static_cast<std::int64_t>(r.loads_step.size());
  l.layers = r.loads_layers;
  l.groups = r.loads_groups;
  l.experts = r.loads_experts;
  l.group_size = r.loads_group_size > 0 ? r.loads_group_size : group_size;
  l.step = r.loads_step;
  l.routed = r.loads_routed;
  l.kept = r.loads_kept;
  return l;
}

// trace:FILE.h5 -> one sample of per-group loads: the file's logits routed in groups of S
// tokens with this config's routing keys (as `moesim route` does), training capacity.
simulate::RecordedLoads loads_from_trace(const Config& cfg, const std::string& text,
                                         const std::string& path) {
  io::Trace trace;
  try {
    trace = io::read_trace(path);
  } catch (const std::exception& e) {
    throw ConfigError("simulate.workload", text, std::string("a readable trace file: ") + e.what());
  }
  const std::int64_t T = trace.tokens, E = trace.experts;
  const std::int64_t S = cfg.routing.group_size > 0 ? cfg.routing.group_size : T;
  if (T % S != 0)
    throw ConfigError(
        "simulate.workload", text,
        "a trace whose token count (" + std::to_string(T) + ") routing.group_size divides");
  RoutingConfig rc = cfg.routing;
  rc.num_experts = E;
  if (rc.k > E) rc.k = E;
  const routing::Router router(rc, S);
  simulate::RecordedLoads l;
  l.steps = 1;
  l.layers = 1;
  l.groups = T / S;
  l.experts = E;
  l.group_size = S;
  l.step = {0};
  l.routed.assign(static_cast<std::size_t>(l.groups * E), 0);
  l.kept.assign(l.routed.size(), 0);
  std::vector<double> probs(static_cast<std::size_t>(S * E));
  routing::GroupRouting r;
  for (std::int64_t g = 0; g < l.groups; ++g) {
    routing::RouteContext ctx;
    ctx.training = true;
    ctx.seed = cfg.training.seed;
    ctx.first_token = g * S;
    if (!trace.token_id.empty())
      ctx.token_ids = std::span<const std::int64_t>(trace.token_id)
                          .subspan(static_cast<std::size_t>(g * S), static_cast<std::size_t>(S));
    router.route(std::span<const double>(trace.logits)
                     .subspan(static_cast<std::size_t>(g * S * E), static_cast<std::size_t>(S * E)),
                 probs, ctx, r);
    for (std::int64_t e = 0; e < E; ++e) {
      l.routed[static_cast<std::size_t>(g * E + e)] = r.routed[static_cast<std::size_t>(e)];
      l.kept[static_cast<std::size_t>(g * E + e)] = r.kept[static_cast<std::size_t>(e)];
    }
  }
  return l;
}

double median_after_warmup(const std::vector<double>& v) {
  if (v.empty()) return 0.0;
  std::vector<double> x(v.begin() + (v.size() > 2 ? 1 : 0), v.end());
  std::sort(x.begin(), x.end());
  const std::size_t n = x.size();
  return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

constexpr const char* kPhases[] = {"gate", "dispatch", "expert", "combine", "backward", "sync"};

double phase_of(const simulate::Projection& p, const std::string& phase) {
  if (phase == "step") return p.time_step;
  if (phase == "gate") return p.time_gate;
  if (phase == "dispatch") return p.time_dispatch;
  if (phase == "expert") return p.time_expert;
  if (phase == "combine") return p.time_combine;
  if (phase == "backward") return p.time_backward;
  return p.time_sync;
}

}  // namespace

Config with_machine_file(const Config& cfg_in, const std::vector<std::string>& overrides) {
  Config cfg = cfg_in;
  const std::string text = read_text(cfg.cluster.file, "cluster.file");
  // The machine file's [cluster] keys, then the command line again (it wins).
  Config m = parse_config(text, cfg.cluster.file, overrides);
  const ClusterConfig keep = cfg.cluster;
  cfg.cluster = m.cluster;
  cfg.cluster.file = keep.file;
  cfg.cluster.output = keep.output;
  validate(cfg, Mode::simulate, 1);
  return cfg;
}

int run_simulate(const Config& cfg_cli, const std::vector<std::string>& overrides) {
  const Config cfg = with_machine_file(cfg_cli, overrides);
  const std::string machine_ini = read_text(cfg.cluster.file, "cluster.file");
  io::ProjectionFile file;
  file.config_ini = to_ini(cfg);
  file.machine_ini = machine_ini;
  file.workload = cfg.simulate.workload;
  file.moesim_version = MOESIM_VERSION;
  file.git_commit = MOESIM_GIT_COMMIT;

  // Everything the user typed is checked before any work (exit 2, no output file).
  const simulate::Workload workload = simulate::parse_workload(cfg.simulate.workload);
  const std::int64_t R =
      cfg.simulate.ranks_per_node > 0 ? cfg.simulate.ranks_per_node : cfg.cluster.ranks_per_node;
  const bool validating = !cfg.simulate.validate.empty();

  if (!validating) {
    const std::vector<std::int64_t> ranks = simulate::parse_ranks(cfg.simulate.ranks);
    simulate::RecordedLoads recorded;
    if (workload.kind == simulate::WorkloadKind::run) {
      io::MeasuredRun run;
      try {
        run = io::read_measured_run(workload.file);
      } catch (const std::exception& e) {
        throw ConfigError("simulate.workload", workload.text,
                          std::string("a readable moesim run result file (") + e.what() + ")");
      }
      if (run.loads_routed.empty())
        throw ConfigError("simulate.workload", workload.text,
                          "a run result file with recorded loads (/loads/routed); this one has "
                          "none (older run, or output.loads_every = 0)");
      const Config rc = parse_config(run.config_ini, workload.file, {});
      recorded =
          to_loads(run, rc.routing.group_size > 0
                            ? rc.routing.group_size
                            : rc.data.tokens_per_step / std::max<std::int64_t>(run.ranks, 1));
    }
    if (workload.kind == simulate::WorkloadKind::trace)
      recorded = loads_from_trace(cfg, workload.text, workload.file);
    std::vector<simulate::Scenario> scenarios;
    for (std::int64_t P : ranks) scenarios.push_back(simulate::make_scenario(cfg, P, R));
    const simulate::Machine M = simulate::machine_from(cfg.cluster, cfg.model.precision, R);

    std::vector<simulate::Projection> rows;
    std::vector<double> wall, cpu;  // seconds per projection (wall clock, process CPU)
    std::printf(
        "moesim simulate: %s, workload %s, %s scaling, machine %s (%lld ranks/node)\n"
        "%8s %6s %8s %9s %10s %9s %9s %9s %9s %9s %9s %9s %7s %7s %9s %9s\n",
        cfg.simulate.algorithm.empty() ? to_string(cfg.routing.dispatch)
                                       : cfg.simulate.algorithm.c_str(),
        workload.text.c_str(), cfg.simulate.scaling.c_str(), cfg.cluster.file.c_str(),
        static_cast<long long>(R), "ranks", "nodes", "experts", "tokens", "step_ms", "gate",
        "dispatch", "expert", "combine", "backward", "sync", "other", "imbal", "drop%", "wall_s",
        "cpu_s");
    for (const simulate::Scenario& sc : scenarios) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::clock_t c0 = std::clock();
      auto src = simulate::make_source(cfg, sc, workload, &recorded);
      const simulate::Projection p = simulate::project(cfg, sc, M, *src, cfg.simulate.steps);
      wall.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      cpu.push_back(static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC);
      rows.push_back(p);
      std::printf(
          "%8lld %6lld %8lld %9lld %10.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f "
          "%7.3f %7.2f %9.3f %9.3f\n",
          static_cast<long long>(p.ranks), static_cast<long long>(p.nodes),
          static_cast<long long>(p.experts), static_cast<long long>(p.tokens), 1e3 * p.time_step,
          1e3 * p.time_gate, 1e3 * p.time_dispatch, 1e3 * p.time_expert, 1e3 * p.time_combine,
          1e3 * p.time_backward, 1e3 * p.time_sync, 1e3 * p.time_other, p.load_imbalance,
          100.0 * p.dropped_fraction, wall.back(), cpu.back());
      std::fflush(stdout);
    }
    auto col = [&](const char* name, const char* desc, const char* units, auto get) {
      io::NamedColumn c;
      c.name = name;
      c.description = desc;
      c.units = units;
      for (const auto& p : rows) c.f64.push_back(get(p));
      file.projection.push_back(std::move(c));
    };
    auto icol = [&](const char* name, const char* desc, auto get) {
      io::NamedColumn c;
      c.name = name;
      c.description = desc;
      for (const auto& p : rows) c.i64.push_back(get(p));
      file.projection.push_back(std::move(c));
    };
    using P = simulate::Projection;
    icol("ranks", "virtual MPI ranks", [](const P& p) { return p.ranks; });
    icol("nodes", "nodes (ranks / ranks_per_node)", [](const P& p) { return p.nodes; });
    icol("experts", "experts per MoE layer at this rank count",
         [](const P& p) { return p.experts; });
    icol("tokens", "global tokens per step at this rank count",
         [](const P& p) { return p.tokens; });
    col("time_step", "predicted step time (sum of the phases + other)", "s",
        [](const P& p) { return p.time_step; });
    col("time_gate", "gate phase, slowest rank", "s", [](const P& p) { return p.time_gate; });
    col("time_dispatch", "dispatch phase, slowest rank", "s",
        [](const P& p) { return p.time_dispatch; });
    col("time_expert", "expert phase, slowest rank", "s", [](const P& p) { return p.time_expert; });
    col("time_combine", "combine phase, slowest rank", "s",
        [](const P& p) { return p.time_combine; });
    col("time_backward", "backward phase, slowest rank", "s",
        [](const P& p) { return p.time_backward; });
    col("time_sync", "gradient allreduce + optimizer, slowest rank", "s",
        [](const P& p) { return p.time_sync; });
    col("time_other", "batch generation, input projection and head outside the phases", "s",
        [](const P& p) { return p.time_other; });
    col("time_combine_wait",
        "part of time_combine spent waiting for the busiest rank's experts (not on the step's "
        "path: time_step = phases + time_other - time_combine_wait)",
        "s", [](const P& p) { return p.time_combine_wait; });
    col("bytes_intra_node", "bytes over intra-node links, one step, all ranks", "B",
        [](const P& p) { return p.bytes_intra_node; });
    col("bytes_inter_node", "bytes over inter-node links, one step, all ranks", "B",
        [](const P& p) { return p.bytes_inter_node; });
    col("load_imbalance", "max/mean expert rows computed per rank", "",
        [](const P& p) { return p.load_imbalance; });
    col("dropped_fraction", "dropped / routed assignments", "",
        [](const P& p) { return p.dropped_fraction; });
    col("result_bytes_per_step",
        "bytes moesim run writes to /steps per step at this rank count (docs/scale.md)", "B",
        [](const P& p) { return p.result_bytes_per_step; });
    col("traffic_matrix_bytes",
        "bytes of one P x P traffic matrix (a /traffic/tokens sample or a running-sum slot)", "B",
        [](const P& p) { return p.traffic_matrix_bytes; });
    {
      io::NamedColumn c;
      c.name = "simulate_seconds";
      c.description = "wall seconds this projection took (one process)";
      c.units = "s";
      c.f64 = wall;
      file.projection.push_back(std::move(c));
      io::NamedColumn u;
      u.name = "simulate_cpu_seconds";
      u.description = "process CPU seconds this projection took (one core)";
      u.units = "s";
      u.f64 = cpu;
      file.projection.push_back(std::move(u));
    }
  } else {
    // Validation: each measured run with its own config, rank count and node layout.
    std::vector<std::string> names;
    std::vector<std::int64_t> ranks_col, traffic_col;
    std::map<std::string, std::vector<double>> measured, predicted;
    std::printf("%-40s %6s %-9s %12s %12s %8s\n", "run", "ranks", "phase", "measured_ms",
                "predicted_ms", "error%");
    for (const std::string& path : split(cfg.simulate.validate)) {
      io::MeasuredRun run;
      try {
        run = io::read_measured_run(path);
      } catch (const std::exception& e) {
        throw ConfigError("simulate.validate", path,
                          std::string("readable moesim run result files (") + e.what() + ")");
      }
      if (run.steps.count("time_step") == 0 || run.steps["time_step"].empty())
        throw ConfigError("simulate.validate", path, "run result files with /steps/time_step rows");
      Config rc = parse_config(run.config_ini, path, {});
      rc.cluster = cfg.cluster;
      rc.simulate = cfg.simulate;
      const std::int64_t Rr = std::max<std::int64_t>(1, (run.ranks + run.nodes - 1) / run.nodes);
      const simulate::Scenario sc = simulate::make_scenario_sized(
          rc, run.ranks, Rr, rc.data.tokens_per_step, rc.routing.num_experts);
      simulate::RecordedLoads recorded;
      simulate::Workload w = workload;
      if (!run.loads_routed.empty()) {
        recorded = to_loads(run, sc.group_size);
        w.kind = simulate::WorkloadKind::run;
        w.text = "run:" + path;
      }
      const simulate::Machine M = simulate::machine_from(rc.cluster, rc.model.precision, Rr);
      auto src = simulate::make_source(rc, sc, w, &recorded);
      // The phases: the mean over the run's recorded load samples after the first (the measured
      // statistic is the median over the steps after the first, and the loads drift while the
      // router trains: 1.04 -> 1.19 rows imbalance over a 30-step layer run); the traffic check
      // below: the first sample, the one /traffic/tokens holds. Without loads (or with one
      // sample) simulate.steps steps of the workload.
      std::vector<std::int64_t> traffic;
      simulate::Projection p = simulate::project(rc, sc, M, *src, rc.simulate.steps, &traffic);
      if (w.kind == simulate::WorkloadKind::run && recorded.steps >= 2) {
        const auto later = simulate::make_shifted_source(*src, 1);
        p = simulate::project(rc, sc, M, *later, recorded.steps - 1);
      }
      // The traffic the model derives from the recorded loads at the run's rank count must be
      // the one the run measured (/traffic/tokens at the first loads sample).
      std::int64_t match = -1;  // -1: not checkable (no loads or no traffic rows)
      if (!run.loads_routed.empty() && !run.traffic_at_first_sample.empty())
        match = traffic == run.traffic_at_first_sample ? 1 : 0;
      traffic_col.push_back(match);
      names.push_back(path);
      ranks_col.push_back(run.ranks);
      std::vector<std::string> phases{"step"};
      for (const char* ph : kPhases) phases.emplace_back(ph);
      for (const std::string& ph : phases) {
        const double m = median_after_warmup(run.steps["time_" + ph]);
        const double q = phase_of(p, ph);
        measured[ph].push_back(m);
        predicted[ph].push_back(q);
        std::printf("%-40s %6lld %-9s %12.4f %12.4f %8.1f\n", path.c_str(),
                    static_cast<long long>(run.ranks), ph.c_str(), 1e3 * m, 1e3 * q,
                    m > 0 ? 100.0 * (q - m) / m : 0.0);
      }
      std::printf("%-40s %6s loads: %s; traffic from the loads == measured traffic_tokens: %s\n",
                  "", "", w.text.c_str(),
                  match == 1   ? "yes"
                  : match == 0 ? "NO"
                               : "not checkable");
    }
    io::NamedColumn run_col;
    run_col.name = "run";
    run_col.description = "measured run result file";
    run_col.text = names;
    file.validation.push_back(run_col);
    io::NamedColumn rk;
    rk.name = "ranks";
    rk.description = "MPI ranks of the run";
    rk.i64 = ranks_col;
    file.validation.push_back(rk);
    io::NamedColumn tm;
    tm.name = "traffic_matches_run";
    tm.description =
        "1: the rank x rank rows derived from the run's recorded loads equal its measured "
        "/traffic/tokens at the first loads sample; 0: they differ; -1: not checkable";
    tm.i64 = traffic_col;
    file.validation.push_back(tm);
    std::vector<std::string> phases{"step"};
    for (const char* ph : kPhases) phases.emplace_back(ph);
    for (const std::string& ph : phases) {
      io::NamedColumn a, b;
      a.name = "measured_time_" + ph;
      a.description = "median over steps (first excluded) of the run's /steps/time_" + ph;
      a.units = "s";
      a.f64 = measured[ph];
      b.name = "predicted_time_" + ph;
      b.description = "the step model's prediction";
      b.units = "s";
      b.f64 = predicted[ph];
      file.validation.push_back(a);
      file.validation.push_back(b);
    }
  }

  if (!cfg.simulate.output.empty()) {
    try {
      io::write_projection_file(cfg.simulate.output, file);
    } catch (const std::exception& e) {
      throw ConfigError("simulate.output", cfg.simulate.output,
                        std::string("a writable file path (") + e.what() + ")");
    }
    // The CSV beside it: one row per projection (or validation) row.
    const auto& cols = file.projection.empty() ? file.validation : file.projection;
    std::ofstream csv(csv_path(cfg.simulate.output));
    for (std::size_t i = 0; i < cols.size(); ++i) csv << (i ? "," : "") << cols[i].name;
    csv << "\n";
    const std::size_t n = cols.empty()           ? 0
                          : !cols[0].i64.empty() ? cols[0].i64.size()
                          : !cols[0].f64.empty() ? cols[0].f64.size()
                                                 : cols[0].text.size();
    for (std::size_t r = 0; r < n; ++r) {
      for (std::size_t i = 0; i < cols.size(); ++i) {
        csv << (i ? "," : "");
        if (!cols[i].text.empty())
          csv << cols[i].text[r];
        else if (!cols[i].i64.empty())
          csv << cols[i].i64[r];
        else {
          char buf[32];
          std::snprintf(buf, sizeof buf, "%.6g", cols[i].f64[r]);
          csv << buf;
        }
      }
      csv << "\n";
    }
    std::printf("wrote %s and %s\n", cfg.simulate.output.c_str(),
                csv_path(cfg.simulate.output).c_str());
  }
  return 0;
}

}  // namespace moesim::cli
