// Traffic from loads, and the step model summed over layers (projection.hpp).
#include "moesim/simulate/projection.hpp"

#include <algorithm>
#include <limits>
#include <sstream>

#include "moesim/routing/router.hpp"

namespace moesim::simulate {
namespace {

std::string str(std::int64_t v) { return std::to_string(v); }

[[noreturn]] void bad_ranks(std::int64_t P, const std::string& why) {
  throw ConfigError("simulate.ranks", str(P), why);
}

// Per-rank and per-node accumulators of one (step, layer), sized once for P ranks.
struct LayerTraffic {
  std::vector<double> send_intra, recv_intra, send_inter, recv_inter, send_rows, recv_rows;
  std::vector<std::int32_t> msend_intra, mrecv_intra, msend_inter, mrecv_inter;
  std::vector<double> node_out, node_in;
  // hierarchical: A = inter-node stage between ranks of the same local index, B = intra stage
  std::vector<double> a_send, a_recv, b_send, b_recv;
  std::vector<std::int32_t> a_msend, a_mrecv, b_msend, b_mrecv;
  std::vector<std::int64_t> node_stamp, a_rstamp, pair_stamp;  // distinct-peer markers
  std::vector<double> expert_rows;                             // [P * E_local]

  void reset(std::int64_t P, std::int64_t nodes, std::int64_t R, std::int64_t local) {
    for (auto* v : {&send_intra, &recv_intra, &send_inter, &recv_inter, &send_rows, &recv_rows,
                    &a_send, &a_recv, &b_send, &b_recv})
      v->assign(static_cast<std::size_t>(P), 0.0);
    for (auto* v : {&msend_intra, &mrecv_intra, &msend_inter, &mrecv_inter, &a_msend, &a_mrecv,
                    &b_msend, &b_mrecv})
      v->assign(static_cast<std::size_t>(P), 0);
    node_out.assign(static_cast<std::size_t>(nodes), 0.0);
    node_in.assign(static_cast<std::size_t>(nodes), 0.0);
    node_stamp.assign(static_cast<std::size_t>(nodes), -1);
    a_rstamp.assign(static_cast<std::size_t>(P), -1);
    pair_stamp.assign(static_cast<std::size_t>(P * R), 0);
    expert_rows.assign(static_cast<std::size_t>(P * local), 0.0);
  }
};

template <class V>
double vmax(const V& v) {
  double m = 0;
  for (auto x : v) m = std::max(m, static_cast<double>(x));
  return m;
}
template <class V>
double vmax2(const V& a, const V& b) {
  return std::max(vmax(a), vmax(b));
}

// One layer's exchange: `first` (flat, padded, or the hierarchical's inter-node stage A), the
// hierarchical's intra-node stage B (`second`) and its relay copy (`extra`), and the pack/unpack.
struct LayerExchange {
  ExchangeLoad first, second;
  bool two_stage = false;
  double extra = 0, pack = 0;
  // one direction's time with `tokens` in the busiest node's bucket (only stage A crosses nodes)
  double time(double tokens, const Machine& M) const {
    return pack + exchange_time(first, M, tokens) +
           (two_stage ? exchange_time(second, M) + extra : 0.0);
  }
  // One exchange after `idle` seconds of idle link: the bucket (`tokens`) is refilled, used and
  // drained in that order; returns the exchange's time.
  double after_idle(double idle, double& tokens, const Machine& M) const {
    tokens = bucket_refill(tokens, idle, M);
    const double t = time(tokens, M);
    tokens = bucket_drain(tokens, first.inter_bytes, M);
    return t;
  }
};

// What the backward pass needs of each layer, kept from the forward pass of the same step.
struct LayerRecord {
  LayerExchange ex;
  bool pipelined = false;
  double expert_bwd = 0, bwd_local = 0;
};

double elem_bytes(const Config& cfg) {
  return cfg.model.precision == Precision::float64 ? 8.0 : 4.0;
}

}  // namespace

std::vector<std::int64_t> parse_ranks(const std::string& text) {
  std::vector<std::int64_t> out;
  std::istringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto b = item.find_first_not_of(" \t");
    const auto e = item.find_last_not_of(" \t");
    item = b == std::string::npos ? std::string() : item.substr(b, e - b + 1);
    std::int64_t v = 0;
    std::size_t used = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || v < 1 || v > (std::int64_t{1} << 20))
      throw ConfigError(
          "simulate.ranks", text,
          "must be comma-separated integers in [1, 1048576] (bad item '" + item + "')");
    out.push_back(v);
  }
  if (out.empty()) throw ConfigError("simulate.ranks", text, "must list at least one rank count");
  return out;
}

Scenario make_scenario_sized(const Config& cfg, std::int64_t P, std::int64_t ranks_per_node,
                             std::int64_t B, std::int64_t E) {
  Scenario sc;
  sc.ranks = P;
  sc.tokens = B;
  sc.experts = E;
  if (E < 1) bad_ranks(P, "gives " + str(E) + " experts; need at least 1");
  if (E % P != 0 && P % E != 0)
    bad_ranks(P, "cannot place " + str(E) +
                     " experts: the expert count must be divisible by the rank count or divide it");
  if (B % P != 0)
    bad_ranks(P, "does not divide the " + str(B) + " tokens per step (data.tokens_per_step)");
  const std::int64_t share = B / P;
  sc.group_size = cfg.routing.group_size > 0 ? cfg.routing.group_size : share;
  if (share % sc.group_size != 0)
    bad_ranks(P, "splits the " + str(B) + " tokens into " + str(share) +
                     " per rank, which routing.group_size = " + str(sc.group_size) +
                     " does not divide (groups must stay whole)");
  sc.ranks_per_node = std::min(ranks_per_node, P);
  if (P % sc.ranks_per_node != 0)
    bad_ranks(P, "is not a multiple of the ranks per node (" + str(sc.ranks_per_node) + ")");
  RoutingConfig rc = cfg.routing;
  rc.num_experts = E;
  if (rc.k > E) rc.k = E;
  sc.capacity =
      rc.dropless ? -1 : routing::make_rule(rc)->capacity(sc.group_size, E, rc.capacity_factor, rc);
  const std::string& a = cfg.simulate.algorithm;
  sc.algorithm = a == "hierarchical"                                     ? Algorithm::hierarchical
                 : a == "padded"                                         ? Algorithm::padded
                 : a == "flat"                                           ? Algorithm::flat
                 : cfg.routing.dispatch == DispatchKind::alltoall_padded ? Algorithm::padded
                 : cfg.routing.dispatch == DispatchKind::hierarchical    ? Algorithm::hierarchical
                                                                         : Algorithm::flat;
  if (sc.algorithm == Algorithm::padded && sc.capacity < 0)
    throw ConfigError("simulate.algorithm", "padded",
                      "needs a capacity to pad to (routing.capacity_factor > 0, not dropless)");
  return sc;
}

Scenario make_scenario(const Config& cfg, std::int64_t P, std::int64_t ranks_per_node) {
  std::int64_t B = cfg.data.tokens_per_step, E = cfg.routing.num_experts;
  if (cfg.simulate.scaling == "weak") {
    const std::int64_t base = cfg.simulate.base_ranks;
    if ((B * P) % base != 0 || (E * P) % base != 0)
      bad_ranks(P, "weak scaling from simulate.base_ranks = " + str(base) +
                       " needs tokens and experts to scale to whole numbers");
    B = B * P / base;
    E = E * P / base;
  }
  return make_scenario_sized(cfg, P, ranks_per_node, B, E);
}

std::unique_ptr<LoadSource> make_source(const Config& cfg, const Scenario& sc, const Workload& w,
                                        const RecordedLoads* recorded) {
  const RoutingRuleKind rule = cfg.routing.rule;
  if (rule == RoutingRuleKind::dense) return make_fixed_source(sc.experts, sc.group_size);
  if (rule == RoutingRuleKind::expert_choice)
    return make_fixed_source(sc.experts, std::min(sc.capacity, sc.group_size));
  if (w.kind == WorkloadKind::run || w.kind == WorkloadKind::trace) {
    if (recorded == nullptr) throw ConfigError("simulate.workload", w.text, "no recorded loads");
    if (recorded->group_size != sc.group_size)
      throw ConfigError("simulate.workload", w.text,
                        "recorded with routing groups of " + str(recorded->group_size) +
                            " tokens; this projection has groups of " + str(sc.group_size) +
                            " (set routing.group_size to the run's)");
    if (sc.experts % recorded->experts != 0)
      throw ConfigError("simulate.workload", w.text,
                        "recorded with " + str(recorded->experts) +
                            " experts, which does not divide the projection's " + str(sc.experts));
    return make_recorded_source(*recorded, sc.experts);
  }
  std::int64_t k = cfg.routing.k;
  if (rule == RoutingRuleKind::switch_top1 || rule == RoutingRuleKind::hash) k = 1;
  if (rule == RoutingRuleKind::gshard) k = 2;
  Workload ww = w;
  if (rule == RoutingRuleKind::hash) ww = Workload{};  // hash routing is uniform by design
  return make_synthetic_source(ww, sc.experts, sc.group_size, std::min(k, sc.experts),
                               cfg.simulate.seed);
}

Projection project(const Config& cfg, const Scenario& sc, const Machine& M0, LoadSource& src,
                   std::int64_t steps, std::vector<std::int64_t>* traffic) {
  Machine M = M0;
  M.ranks_per_node = sc.ranks_per_node;
  const std::int64_t P = sc.ranks, R = sc.ranks_per_node, nodes = sc.nodes();
  const std::int64_t E = sc.experts, B = sc.tokens, S = sc.group_size;
  const std::int64_t L = cfg.model.layers;
  const double d = static_cast<double>(cfg.model.d_model), f = static_cast<double>(cfg.model.d_ff);
  const double in_dim = static_cast<double>(cfg.data.input_dim);
  const double s = elem_bytes(cfg);
  const double rb = d * s;  // bytes per token row
  const std::int64_t n_tok = B / P;
  const double n = static_cast<double>(n_tok);
  const std::int64_t groups_per_rank = n_tok / S;
  const std::int64_t group_ranks = std::min(E, P);
  const std::int64_t local = E / group_ranks;  // experts per rank
  // routing.overlap_degree: chunks of whole local experts (runs refuse d > local; clamp for
  // projections to rank counts with fewer experts per rank).
  const double chunks =
      static_cast<double>(std::min<std::int64_t>(cfg.routing.overlap_degree, local));
  const std::int64_t replicas = P / group_ranks;
  const std::int64_t C = sc.capacity;
  const bool has_gate = cfg.routing.rule != RoutingRuleKind::hash;

  if (traffic) traffic->assign(static_cast<std::size_t>(P * P), 0);
  LayerTraffic lt;
  std::vector<std::int32_t> routed(static_cast<std::size_t>(E), 0), touched;
  std::vector<double> dst_rows(static_cast<std::size_t>(P), 0.0);
  std::vector<std::int64_t> dst_touched;
  touched.reserve(static_cast<std::size_t>(std::min<std::int64_t>(E, 1 << 20)));

  Projection out;
  out.ranks = P;
  out.nodes = nodes;
  out.experts = E;
  out.tokens = B;
  double routed_total = 0, kept_total = 0, imbalance_sum = 0, wait_sum = 0;
  std::int64_t stamp = 0;
  std::vector<LayerRecord> rec(static_cast<std::size_t>(L));
  // A burstable inter-node link: the busiest node's bucket starts full and `idle` seconds of
  // link idleness precede the next exchange (step_model.hpp, bucket_*).
  double tokens = M.burst_bytes, idle = 0.0;

  for (std::int64_t step = 0; step < steps; ++step) {
    for (std::int64_t layer = 0; layer < L; ++layer) {
      ++stamp;
      lt.reset(P, nodes, R, local);
      src.begin_layer(step, layer);
      for (std::int64_t r = 0; r < P; ++r) {
        const std::int64_t rgroup = r / group_ranks;  // replica group of this source rank
        for (std::int64_t g = r * groups_per_rank; g < (r + 1) * groups_per_rank; ++g) {
          touched.clear();
          src.group_routed(step, layer, g, routed, touched);
          for (std::int32_t e : touched) {
            const std::int64_t c = routed[static_cast<std::size_t>(e)];
            routed[static_cast<std::size_t>(e)] = 0;
            const std::int64_t kept = C < 0 ? c : std::min(c, C);
            routed_total += static_cast<double>(c);
            kept_total += static_cast<double>(kept);
            if (kept == 0) continue;
            // Placement::owner: the replica of e in this rank's group.
            const std::int64_t dst = rgroup * group_ranks + e / local;
            lt.expert_rows[static_cast<std::size_t>(dst * local + e % local)] +=
                static_cast<double>(kept);
            if (dst_rows[static_cast<std::size_t>(dst)] == 0) dst_touched.push_back(dst);
            dst_rows[static_cast<std::size_t>(dst)] += static_cast<double>(kept);
          }
        }
        const std::int64_t nn = r / R, i = r % R;
        for (std::int64_t dst : dst_touched) {
          const double c = dst_rows[static_cast<std::size_t>(dst)];
          dst_rows[static_cast<std::size_t>(dst)] = 0;
          const auto ur = static_cast<std::size_t>(r), ud = static_cast<std::size_t>(dst);
          if (traffic && step == 0)
            (*traffic)[ur * static_cast<std::size_t>(P) + ud] += static_cast<std::int64_t>(c);
          lt.send_rows[ur] += c;
          lt.recv_rows[ud] += c;
          if (dst == r) continue;  // a local copy: counted in pack/unpack, not on any link
          const std::int64_t m = dst / R, j = dst % R;
          auto stage_b = [&](std::int64_t from, double rows) {
            // intra-node forwarding on node m from local rank (from % R) to j
            const auto uf = static_cast<std::size_t>(from);
            lt.b_send[uf] += rows;
            lt.b_recv[ud] += rows;
            auto& ps =
                lt.pair_stamp[uf * static_cast<std::size_t>(R) + static_cast<std::size_t>(j)];
            if (ps != stamp) {
              ps = stamp;
              ++lt.b_msend[uf];
              ++lt.b_mrecv[ud];
            }
          };
          if (m == nn) {
            lt.send_intra[ur] += c;
            lt.recv_intra[ud] += c;
            ++lt.msend_intra[ur];
            ++lt.mrecv_intra[ud];
            stage_b(r, c);
          } else {
            lt.send_inter[ur] += c;
            lt.recv_inter[ud] += c;
            ++lt.msend_inter[ur];
            ++lt.mrecv_inter[ud];
            lt.node_out[static_cast<std::size_t>(nn)] += c;
            lt.node_in[static_cast<std::size_t>(m)] += c;
            const std::int64_t via = m * R + i;  // same local index on the destination node
            const auto uv = static_cast<std::size_t>(via);
            lt.a_send[ur] += c;
            lt.a_recv[uv] += c;
            if (lt.node_stamp[static_cast<std::size_t>(m)] != r) {
              lt.node_stamp[static_cast<std::size_t>(m)] = r;
              ++lt.a_msend[ur];
            }
            if (lt.a_rstamp[uv] != r) {
              lt.a_rstamp[uv] = r;
              ++lt.a_mrecv[uv];
            }
            if (via != dst) stage_b(via, c);
          }
        }
        dst_touched.clear();
      }

      // ---- times of this layer (slowest rank per term) ----
      // The exchange of this layer's traffic (the same rows move four times: dispatch and combine,
      // forward and backward), as a function of the tokens in the busiest node's bucket.
      LayerExchange& ex = rec[static_cast<std::size_t>(layer)].ex;
      ex = LayerExchange{};
      double pack_rows = 0, intra_b = 0, inter_b = 0;
      if (sc.algorithm == Algorithm::padded) {
        const double padded =
            static_cast<double>(std::max<std::int64_t>(C, 0) * local * groups_per_rank);
        ex.first = uniform_exchange_load(P, R, padded * rb);
        pack_rows = 2.0 * static_cast<double>(P) * padded;
        intra_b = static_cast<double>(P * (R - 1)) * padded * rb;
        inter_b = static_cast<double>(P * (P - R)) * padded * rb;
      } else {
        for (std::int64_t r = 0; r < P; ++r)
          pack_rows = std::max(pack_rows, lt.send_rows[static_cast<std::size_t>(r)] +
                                              lt.recv_rows[static_cast<std::size_t>(r)]);
        ExchangeLoad flat;
        flat.intra_messages = vmax2(lt.msend_intra, lt.mrecv_intra);
        flat.intra_bytes = vmax2(lt.send_intra, lt.recv_intra) * rb;
        flat.inter_messages = vmax2(lt.msend_inter, lt.mrecv_inter);
        flat.inter_bytes = vmax2(lt.node_out, lt.node_in) * rb;
        double sum_intra = 0, sum_inter = 0, sum_b = 0;
        for (std::int64_t r = 0; r < P; ++r) {
          sum_intra += lt.send_intra[static_cast<std::size_t>(r)];
          sum_inter += lt.send_inter[static_cast<std::size_t>(r)];
          sum_b += lt.b_send[static_cast<std::size_t>(r)];
        }
        if (sc.algorithm == Algorithm::flat) {
          ex.first = flat;
          intra_b = sum_intra * rb;
        } else {
          ex.first.inter_messages = vmax2(lt.a_msend, lt.a_mrecv);
          ex.first.inter_bytes = flat.inter_bytes;
          ex.second.intra_messages = vmax2(lt.b_msend, lt.b_mrecv);
          ex.second.intra_bytes = vmax2(lt.b_send, lt.b_recv) * rb;
          ex.two_stage = true;
          ex.extra = stream_time(2.0 * vmax(lt.b_send) * rb, M);
        }
        inter_b = sum_inter * rb;
      }
      ex.pack = stream_time(2.0 * pack_rows * rb, M);
      const double counts = counts_exchange_time(P, R, 4.0 * static_cast<double>(local), M);
      const double send_max = vmax(lt.send_rows);
      double expert_fwd = 0, expert_bwd = 0, rows_max = 0, rows_sum = 0, fwd_sum = 0, bwd_sum = 0;
      double expert_fwd_min = std::numeric_limits<double>::infinity();
      for (std::int64_t r = 0; r < P; ++r) {
        double fw = 0, bw = 0, rows = 0;
        for (std::int64_t j = 0; j < local; ++j) {
          const double x = lt.expert_rows[static_cast<std::size_t>(r * local + j)];
          fw += expert_forward_time(x, d, f, s, M);
          bw += expert_backward_time(x, d, f, s, M);
          rows += x;
        }
        expert_fwd = std::max(expert_fwd, fw);
        expert_fwd_min = std::min(expert_fwd_min, fw);
        expert_bwd = std::max(expert_bwd, bw);
        fwd_sum += fw;
        bwd_sum += bw;
        rows_max = std::max(rows_max, rows);
        rows_sum += rows;
      }
      // ranks sharing cores (cluster.shared_cores): the busiest rank gets the cores the others
      // leave when they finish
      expert_fwd = shared_cores_time(expert_fwd, fwd_sum, P, M.shared_cores);
      expert_bwd = shared_cores_time(expert_bwd, bwd_sum, P, M.shared_cores);
      imbalance_sum += rows_sum > 0 ? rows_max / (rows_sum / static_cast<double>(P)) : 1.0;
      const double Ed = static_cast<double>(E);
      const double gate_fwd = has_gate ? gate_forward_time(n, d, Ed, s, M) : n * M.route_per_score;
      out.time_gate += gate_fwd;
      // The exchange around the experts: blocking, or with routing.overlap_degree = d (flat
      // exchange only, as in runs) a pipeline of d chunks whose exposed part is split between
      // dispatch and combine (runs time them the same way: the waits that were not hidden).
      // A burstable link's bucket refills while the link idles (here: the gate before the
      // dispatch, the experts before the combine) and speeds up the next exchange; the pipeline
      // keeps the link busy, so there it is spent and not modelled.
      const bool pipelined = chunks > 1 && sc.algorithm == Algorithm::flat;
      rec[static_cast<std::size_t>(layer)].pipelined = pipelined;
      double to_experts = 0, back = 0, bwd_pipelined = 0;
      if (pipelined) {
        const double way = ex.time(0.0, M);
        const double fwd_exposed = pipelined_time(way, way, expert_fwd, chunks) - expert_fwd;
        bwd_pipelined = pipelined_time(way, way, expert_bwd, chunks) - expert_bwd;
        to_experts = back = 0.5 * fwd_exposed;
        tokens = 0.0;
      } else {
        to_experts = ex.after_idle(idle + gate_fwd, tokens, M);
        back = ex.after_idle(expert_fwd, tokens, M);
      }
      idle = 0.0;
      out.time_dispatch += counts + to_experts;
      out.time_expert += expert_fwd;
      // combine: exchange back, y = x (copy) + sum_a w_a out_a (read y, read row, write y).
      // rank_wait: phases are timed per rank and reduced with max, and the rank with the least
      // expert work enters the combine exchange first and waits there for the busiest one.
      const double wait = P > 1 ? rank_wait_time(expert_fwd, expert_fwd_min) : 0.0;
      out.time_combine +=
          back + stream_time(3.0 * send_max * rb, M) + stream_time(2.0 * n * rb, M) + wait;
      wait_sum += wait;
      // backward: combine backward (dot + scale), both exchanges (below, in the backward's layer
      // order, or the pipeline's), experts, scatter-add, gate
      const double bwd_local = stream_time(6.0 * send_max * rb, M) + stream_time(2.0 * n * rb, M) +
                               (has_gate ? gate_backward_time(n, d, Ed, s, M) : 0.0);
      rec[static_cast<std::size_t>(layer)].expert_bwd = expert_bwd;
      rec[static_cast<std::size_t>(layer)].bwd_local = bwd_local;
      out.time_backward += bwd_pipelined + expert_bwd + bwd_local;
      out.bytes_intra_node += 4.0 * intra_b;  // dispatch + combine, forward and backward
      out.bytes_inter_node += 4.0 * inter_b;
    }
    // The backward's exchanges, last layer first: gradients to the experts after the layer's
    // local backward work, back after its expert backward.
    for (std::int64_t layer = L - 1; layer >= 0; --layer) {
      const LayerRecord& lr = rec[static_cast<std::size_t>(layer)];
      if (lr.pipelined) continue;
      const double to = lr.ex.after_idle(lr.bwd_local, tokens, M);
      out.time_backward += to + lr.ex.after_idle(lr.expert_bwd, tokens, M);
    }
    // ---- outside the layers (once per step) ----
    // the batch (data.task), input projection and head forward, their backward; gradient sync;
    // optimizer
    const double other = data_time(n, in_dim, M) + gemm_time(n, d, in_dim, s, M) +
                         gemm_time(n, 2, d, s, M) + stream_time(2.0 * n * in_dim * s, M) +
                         M.step_overhead;
    out.time_other += other;
    out.time_backward +=
        gemm_time(in_dim, d, n, s, M) + gemm_time(d, 2, n, s, M) + gemm_time(n, d, 2, s, M);
    const double gate_params = has_gate ? d * static_cast<double>(E) : 0.0;
    const double noise_params = cfg.routing.rule == RoutingRuleKind::noisy_topk ? gate_params : 0;
    const double rep_params =
        in_dim * d + d + static_cast<double>(L) * (gate_params + noise_params) + 2.0 * d + 2.0;
    const double expert_params = static_cast<double>(L * local) * (2.0 * d * f + d + f);
    const double sync =
        allreduce_time(P, rep_params * s, nodes > 1, M) +
        (replicas > 1 ? allreduce_time(replicas, expert_params * s, P > R, M) : 0.0) +
        optimizer_time(rep_params + expert_params, s, cfg.training.optimizer, M);
    out.time_sync += sync;
    idle = sync + other;  // before the next step's first exchange (the gradient sync is small)
  }
  const double st = static_cast<double>(steps);
  for (double* t :
       {&out.time_gate, &out.time_dispatch, &out.time_expert, &out.time_combine, &out.time_backward,
        &out.time_sync, &out.time_other, &out.bytes_intra_node, &out.bytes_inter_node})
    *t /= st;
  out.time_combine_wait = wait_sum / st;
  // The step is one rank's path through all phases (runs record the maximum over ranks of each
  // rank's own step time). The combine's rank wait is in the phase (each phase is the maximum
  // over ranks, and there the least busy rank waits) but not on the step's path: the rank that
  // waits there spent that much less in the experts, so counting it in both would count the
  // spread twice.
  out.time_step = out.time_gate + out.time_dispatch + out.time_expert + out.time_combine +
                  out.time_backward + out.time_sync + out.time_other - out.time_combine_wait;
  out.load_imbalance = imbalance_sum / (st * static_cast<double>(L));
  out.dropped_fraction = routed_total > 0 ? (routed_total - kept_total) / routed_total : 0.0;
  out.result_bytes_per_step =
      result_bytes_per_step(P, L, E, cfg.routing.rule == RoutingRuleKind::base);
  out.traffic_matrix_bytes = 8.0 * static_cast<double>(P) * static_cast<double>(P);
  return out;
}

}  // namespace moesim::simulate
