// Per-rank memory estimate (model/memory_estimate.hpp). The formula mirrors the allocations of
// ParamStore (util/params.cpp), Optimizer (train/optimizer.cpp), Model and MoELayer
// (model/*.cpp), the dispatchers (dispatch/dispatcher.cpp) and the trainer's batches
// (train/trainer.cpp); docs/memory.md states it term by term. Keep them in step.
#include "moesim/model/memory_estimate.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>

#include "moesim/routing/router.hpp"
#include "moesim/util/aligned.hpp"

namespace moesim::model {
namespace {

__extension__ typedef __int128 i128;
// Saturation point: far above INT64_MAX, far below the i128 limit, so a product of two
// saturated values cannot wrap.
constexpr i128 kSat = static_cast<i128>(1) << 100;
constexpr i128 kI64Max = std::numeric_limits<std::int64_t>::max();

i128 sat(i128 v) { return v > kSat ? kSat : v; }
i128 mul(i128 a, i128 b) {
  if (a == 0 || b == 0) return 0;
  if (a >= kSat || b >= kSat) return kSat;
  // both < 2^100: check a * b against kSat without overflowing i128
  if (a > kSat / b) return kSat;
  return a * b;
}
i128 mul(std::initializer_list<i128> xs) {
  i128 r = 1;
  for (i128 x : xs) r = mul(r, x);
  return r;
}
i128 add(i128 a, i128 b) { return sat(a + b); }
i128 ceil_div(i128 a, i128 b) { return b <= 0 ? kSat : (a + b - 1) / b; }

std::int64_t to_i64(i128 v) {
  return v > kI64Max ? std::numeric_limits<std::int64_t>::max() : static_cast<std::int64_t>(v);
}

}  // namespace

std::string format_bytes(std::int64_t b) {
  char buf[64];
  const double v = static_cast<double>(b);
  if (v >= 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f GiB", v / (1024.0 * 1024 * 1024));
  else if (v >= 1024.0 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f MiB", v / (1024.0 * 1024));
  else
    std::snprintf(buf, sizeof buf, "%.1f KiB", v / 1024.0);
  return buf;
}

MemoryEstimate estimate_memory(const Config& cfg, int ranks) {
  MemoryEstimate est;
  const i128 P = std::max(ranks, 1);
  const i128 T = cfg.model.precision == Precision::float64 ? 8 : 4;  // element bytes
  const i128 per_line = static_cast<i128>(kBufferAlignment) / T;
  const i128 d = cfg.model.d_model, f = cfg.model.d_ff, L = cfg.model.layers;
  const i128 D = cfg.data.input_dim, E = cfg.routing.num_experts;
  const RoutingRuleKind rule = cfg.routing.rule;
  const i128 n = cfg.data.tokens_per_step / P;  // train tokens per rank
  const i128 ne = cfg.data.eval_tokens / P;     // eval tokens per rank
  const i128 nmax = std::max(n, ne);

  // --- parameters: ParamStore arenas (values + gradients) -------------------------------------
  // Registration order of Model: input.w, input.b, per layer (gate, noise | experts), head.
  // Every tensor starts on a 64-byte boundary; layers are alike, so one layer's block times L.
  auto up = [&](i128 x) { return ceil_div(x, per_line) * per_line; };
  // experts hosted per rank (E < P: one replica each; redundant experts: (E + r) / P slots)
  const i128 r_slots = cfg.routing.redundant_experts;
  const i128 local = r_slots > 0 ? (E + r_slots) / P : (E >= P ? E / P : 1);
  i128 rep_layer = 0;
  if (rule != RoutingRuleKind::hash) rep_layer = add(rep_layer, up(mul(d, E)));        // gate
  if (rule == RoutingRuleKind::noisy_topk) rep_layer = add(rep_layer, up(mul(d, E)));  // noise
  i128 rep = up(add(up(mul(D, d)), d));  // input.w, input.b
  rep = add(rep, mul(L, rep_layer));
  rep = add(up(add(rep, mul(d, 2))), 2);  // head.w (2 classes), head.b
  // expert arena: per hosted expert w1, b1, w2, b2; the arena's last tensor is not padded
  const i128 expert_unit = add(add(up(mul(d, f)), up(f)), add(up(mul(f, d)), up(d)));
  const i128 exp = mul({L, local, expert_unit}) - (up(d) - d);
  // ParamStore pads the end of an arena only through the next tensor: none after the last.
  const i128 params = mul({2, add(rep, exp), T});
  const i128 optim = mul({cfg.training.optimizer == OptimizerKind::adam ? 2 : 1, add(rep, exp), T});

  // --- routing sizes per pass (train and eval) ------------------------------------------------
  // k_eff: assignments per token (dense: E; expert_choice: E*C/S per group).
  struct Pass {
    i128 tokens, S, G_local, C, per_expert_group, assignments;
  };
  auto pass = [&](i128 tokens, const Rational& cf) {
    Pass p{};
    p.tokens = tokens;
    p.S = cfg.routing.group_size > 0 ? static_cast<i128>(cfg.routing.group_size) : tokens;
    p.G_local = p.S > 0 ? tokens / p.S : 0;
    const bool dropless = cfg.routing.dropless || cf.num == 0 || rule == RoutingRuleKind::dense;
    const i128 k = rule == RoutingRuleKind::dense ? E : static_cast<i128>(cfg.routing.k);
    if (dropless) {
      p.C = -1;
      p.per_expert_group = p.S;
    } else {
      const i128 kk = rule == RoutingRuleKind::expert_choice ? 1 : k;
      const i128 c =
          ceil_div(mul({kk, p.S, static_cast<i128>(cf.num)}), mul(E, static_cast<i128>(cf.den)));
      p.C = std::max<i128>(c, cfg.routing.min_capacity);
      if (rule == RoutingRuleKind::expert_choice) p.C = std::min(p.C, p.S);
      p.per_expert_group = std::min(p.C, p.S);  // an expert takes a token at most once per group
    }
    p.assignments = rule == RoutingRuleKind::expert_choice ? mul({E, p.per_expert_group, p.G_local})
                                                           : mul(tokens, std::min(k, E));
    return p;
  };
  const Pass tr = pass(n, cfg.routing.capacity_factor);
  const Pass ev = pass(ne, cfg.routing.eval_capacity_factor);

  // --- activations: Model + per-layer router state (saved for backward) -----------------------
  i128 act = 0;
  act = add(act, mul({L + 1, nmax, d, T}));  // act_ [L+1][n x d]
  act = add(act, mul({nmax, 2, T}));         // logits_
  act = add(act, mul({nmax, 2, 8}));         // class_probs_ (double)
  act = add(act, mul({2, nmax, d, T}));      // grad_a_, grad_b_
  // Buffers sized for training first and grown for evaluation: a grown std::vector holds
  // max(2 x old, new) elements (libstdc++ growth), which `grown` bounds.
  auto grown = [](i128 first, i128 second) {
    return second > first ? std::max(mul(2, first), second) : first;
  };
  const i128 A = grown(tr.assignments, ev.assignments);
  i128 layer = 0;
  layer = add(layer, mul({nmax, E, T}));              // logits_t_ (reserved for max(n, ne))
  layer = add(layer, mul({nmax, E, 8 * 2}));          // logits_, probs_ (double, reserved)
  layer = add(layer, mul({grown(n, ne), E, 8 * 2}));  // dlogits_, dprobs_ (double)
  if (rule == RoutingRuleKind::noisy_topk) layer = add(layer, mul({grown(n, ne), E, T + 16}));
  if (cfg.routing.jitter_eps > 0) layer = add(layer, mul({2, grown(n, ne), d, T}));
  // candidates (push_back: up to 2x), kept token/expert/weight/candidate lists and dweight
  layer = add(layer, mul(mul(2, A), static_cast<i128>(sizeof(routing::Candidate))));
  layer = add(layer, mul(A, 4 + 4 + 8 + 8 + 8 + 8 + 8));  // + plan send_token/send_assignment
  act = add(act, mul(L, layer));

  // --- exchange: send/back rows, expert buffers, dispatcher staging at worst-case capacity -----
  auto recv_rows = [&](const Pass& p) {
    // every local expert full in every group of every rank, and never more than all assignments
    const i128 groups_global = mul(p.G_local, P);
    const i128 full = mul({local, p.per_expert_group, groups_global});
    return std::min(full, mul(p.assignments, P));
  };
  i128 recv = grown(recv_rows(tr), recv_rows(ev));
  if (cfg.routing.dispatch == DispatchKind::alltoall_padded) {
    // the padded layout receives whole blocks: P x C x (local experts) x (local groups) rows
    auto pad_rows = [&](const Pass& p) {
      return mul({P, std::max<i128>(p.C, 0), local, p.G_local});
    };
    recv = std::max(recv, grown(pad_rows(tr), pad_rows(ev)));
  }
  const i128 send = A;  // kept assignments of this rank <= its candidates
  i128 ex = 0;
  ex = add(ex, mul({2, send, d, T}));                       // send_, back_
  ex = add(ex, mul({recv, add(mul(2, d), mul(2, f)), T}));  // ex_in_, ex_out_; ex_h_, ex_a_
  i128 padded_rows = 0;
  if (cfg.routing.dispatch == DispatchKind::alltoall_padded) {
    auto pad = [&](const Pass& p) { return mul({std::max<i128>(p.C, 0), local, p.G_local}); };
    padded_rows = std::max(pad(tr), pad(ev));
    ex = add(ex, mul({2, P, grown(pad(tr), pad(ev)), d, T}));  // send_blocks_, recv_blocks_
  } else {
    ex = add(ex, mul({grown(std::max(tr.assignments, recv_rows(tr)),
                            std::max(ev.assignments, recv_rows(ev))),
                      d, T}));  // staging_
  }
  const i128 exch = mul(L, ex);

  // --- data: training and evaluation batches --------------------------------------------------
  i128 data = 0;
  data = add(data, mul({n, D, T}));
  data = add(data, mul(n, 4));
  data = add(data, mul({ne, D, T}));
  data = add(data, mul(ne, 4 + 8));

  // --- bookkeeping: per-step result rows kept for the summary, the routing statistics, and a
  // fixed allowance for everything of constant size (names, config copies, metrics, MPI
  // wrappers); measured in tests/mpi/test_memory_estimate.cpp.
  const i128 steps = std::max<std::int64_t>(cfg.training.steps, 0);
  i128 book = static_cast<i128>(1) << 20;
  book = add(book, mul(steps, 8 * 8));                      // per-step values in RunResult
  book = add(book, mul({L, E, 8 * 8}));                     // per-layer per-expert statistics
  book = add(book, mul({L, E, cfg.data.num_clusters, 8}));  // cluster x expert counts
  data = add(data, book);

  // Allowance for what is not modelled term by term: transient old+new copies while a grow-only
  // buffer grows, growth rounding and small per-pass vectors. 25 % of activations + exchange;
  // tests/mpi/test_memory_estimate.cpp checks the total bounds the real peak.
  const i128 allowance = add(act, exch) / 4;
  const i128 total = add(add(add(params, optim), add(act, exch)), add(data, allowance));
  est.parameters = to_i64(params);
  est.optimizer = to_i64(optim);
  est.activations = to_i64(act);
  est.exchange = to_i64(exch);
  est.data = to_i64(data);
  est.allowance = to_i64(allowance);
  est.total = to_i64(total);
  est.replicated_elements = to_i64(rep);
  est.expert_elements = to_i64(exp);
  est.local_experts = to_i64(local);
  est.recv_rows = to_i64(recv);
  est.padded_rows = to_i64(padded_rows);

  // MoELayer sizes its receive side as (local experts) x (groups of all ranks) x C rows.
  const i128 layer_rows = std::max(mul({std::max<i128>(tr.C, 0), local, mul(tr.G_local, P)}),
                                   mul({std::max<i128>(ev.C, 0), local, mul(ev.G_local, P)}));
  if (mul(layer_rows, std::max(d, f)) > kI64Max) {
    est.overflow = true;
    est.overflow_what =
        "the expert buffer rows (capacity x experts per rank x groups of all ranks x "
        "max(model.d_model, model.d_ff); driven by routing.min_capacity, "
        "routing.capacity_factor, routing.eval_capacity_factor)";
  } else if (padded_rows > kI64Max || mul({P, padded_rows, d}) > kI64Max) {
    est.overflow = true;
    est.overflow_what =
        "the capacity padding of routing.dispatch = alltoall_padded (capacity x experts per rank "
        "x groups per rank x ranks x model.d_model; driven by routing.min_capacity, "
        "routing.capacity_factor, routing.eval_capacity_factor)";
  } else if (total > kI64Max) {
    est.overflow = true;
    est.overflow_what = "the per-rank memory in bytes";
  }
  // Which keys make the biggest part big.
  const i128 parts[] = {params + optim, act, exch, data};
  const std::size_t biggest = static_cast<std::size_t>(
      std::max_element(std::begin(parts), std::end(parts)) - std::begin(parts));
  const char* keys[] = {
      "model.d_model, model.d_ff, model.layers, routing.num_experts (per rank), data.input_dim, "
      "training.optimizer, model.precision",
      "data.tokens_per_step, data.eval_tokens, model.d_model, model.layers, routing.num_experts, "
      "routing.k, model.precision",
      "data.tokens_per_step, data.eval_tokens, routing.capacity_factor, "
      "routing.eval_capacity_factor, routing.min_capacity, routing.dispatch, model.d_model, "
      "model.d_ff, model.layers",
      "data.tokens_per_step, data.eval_tokens, data.input_dim, model.precision"};
  est.driving_keys = keys[biggest];
  if (est.overflow && est.overflow_what.find("padding") == std::string::npos)
    est.overflow_what += " (driven by " + est.driving_keys + ")";
  return est;
}

namespace {
std::int64_t read_number(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  if (!(in >> s) || s == "max") return -1;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  return (end != nullptr && *end == '\0' && v >= 0) ? static_cast<std::int64_t>(v) : -1;
}
}  // namespace

MemoryAvailable memory_available() {
  MemoryAvailable out;
  auto take = [&](std::int64_t bytes, const std::string& source) {
    if (bytes < 0) return;
    if (out.bytes < 0 || bytes < out.bytes) {
      out.bytes = bytes;
      out.source = source;
    }
  };
  {
    std::ifstream in("/proc/meminfo");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("MemAvailable:", 0) != 0) continue;
      std::istringstream ss(line.substr(13));
      long long kb = -1;
      if (ss >> kb && kb >= 0)
        take(static_cast<std::int64_t>(kb) * 1024, "MemAvailable (/proc/meminfo)");
    }
  }
  // cgroup v2, then v1 (a limit above 2^60 means "none").
  const std::int64_t v2max = read_number("/sys/fs/cgroup/memory.max");
  if (v2max >= 0) {
    const std::int64_t cur =
        std::max<std::int64_t>(read_number("/sys/fs/cgroup/memory.current"), 0);
    take(std::max<std::int64_t>(v2max - cur, 0), "cgroup v2 memory.max - memory.current");
  }
  const std::int64_t v1max = read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes");
  if (v1max >= 0 && v1max < (std::int64_t{1} << 60)) {
    const std::int64_t use =
        std::max<std::int64_t>(read_number("/sys/fs/cgroup/memory/memory.usage_in_bytes"), 0);
    take(std::max<std::int64_t>(v1max - use, 0), "cgroup v1 memory.limit_in_bytes - usage");
  }
  if (const char* env = std::getenv("MOESIM_MEMORY_LIMIT")) {
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0' && v >= 0) {
      out.bytes = static_cast<std::int64_t>(v);
      out.source = "MOESIM_MEMORY_LIMIT";
    }
  }
  return out;
}

std::vector<ConfigProblem> check_memory(const Config& cfg, int ranks, int ranks_per_node) {
  std::vector<ConfigProblem> problems;
  const MemoryEstimate est = estimate_memory(cfg, ranks);
  if (est.overflow) {
    problems.push_back({"(sizes)", est.overflow_what,
                        "must fit in 64-bit integers: reduce the keys that drive it"});
    return problems;
  }
  const MemoryAvailable avail = memory_available();
  if (avail.bytes < 0) return problems;  // nothing to compare with: not a reason to refuse
  const int share = std::max(ranks_per_node, 1);
  const std::int64_t per_rank = avail.bytes / share;
  if (est.total > per_rank) {
    problems.push_back(
        {"(memory per rank: " + est.driving_keys + ")", "estimate " + format_bytes(est.total),
         "must fit in the memory available per rank, " + format_bytes(per_rank) + " (" +
             avail.source + " " + format_bytes(avail.bytes) + " / " + std::to_string(share) +
             " rank" + (share == 1 ? "" : "s") + " assumed on this node); parameters " +
             format_bytes(est.parameters) + ", optimizer " + format_bytes(est.optimizer) +
             ", activations " + format_bytes(est.activations) + ", exchange " +
             format_bytes(est.exchange) + ", data " + format_bytes(est.data) + ", allowance " +
             format_bytes(est.allowance) + " (docs/memory.md)"});
  }
  return problems;
}

}  // namespace moesim::model
