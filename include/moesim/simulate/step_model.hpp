// The step model of `moesim simulate`: one training step of a MoESim model as a sum of named
// terms, each a pure function of sizes and machine parameters (docs/simulate_model.md has the
// same formulas). Units: seconds, bytes, FLOP. No MPI, no I/O.
//
// Machine parameters (from a machine file, ClusterConfig): per level an alpha (latency of one
// message) and a beta (bandwidth); intra-node beta is per rank and direction, inter-node beta
// is per node (its NIC) and direction, shared by the node's ranks.
#pragma once

#include <cstdint>
#include <vector>

#include "moesim/config/config.hpp"

namespace moesim::simulate {

// Measured times of one expert shape (cluster.expert_table at one precision): rows ascending.
struct ExpertCurve {
  std::int64_t d_model = 0, d_ff = 0;
  std::vector<double> rows, fwd, bwd;  // rows, forward seconds, backward seconds
};

struct Machine {
  std::int64_t ranks_per_node = 1;         // R
  double alpha_intra = 0;                  // s per message inside a node
  double beta_intra = 1;                   // B/s per rank and direction inside a node
  double alpha_inter = 0;                  // s per message between nodes
  double beta_inter = 1;                   // B/s per node and direction between nodes
  double burst_bytes = 0;                  // token bucket of a burstable inter-node link (0: none)
  double beta_burst = 0;                   // B/s while the bucket holds tokens (> beta_inter)
  double flops = 1;                        // FLOP/s per rank at the run's precision
  double mem_bw = 1;                       // B/s per rank (bytes read + written)
  double route_per_score = 0;              // s of router work per token x expert
  double step_overhead = 0;                // s per step outside the modelled phases
  double optimizer_per_param = 0;          // s per parameter of an optimizer step (0: memory bound)
  double data_per_value = 0;               // s per token x input feature of the synthetic batch
  std::int64_t shared_cores = 0;           // cores all ranks share (0: a core per rank)
  std::vector<ExpertCurve> expert_curves;  // measured shapes at the run's precision (may be empty)
};

// Machine from a [cluster] section at `precision`; ranks_per_node > 0 overrides the file's.
Machine machine_from(const ClusterConfig& c, Precision precision, std::int64_t ranks_per_node = 0);

// ---- compute ---------------------------------------------------------------------------------
// gemm_time = max(2 m n k / F, (m k + k n + m n) * s / B_mem): roofline of C[m,n] = A[m,k] B[k,n]
// with element size s (compute bound for large m, memory bound for small m). 0 if any size is 0.
double gemm_time(double m, double n, double k, double elem, const Machine& M);

// stream_time = bytes / B_mem (element-wise passes; bytes = read + written).
double stream_time(double bytes, const Machine& M);

// gate_forward_time = gemm(n, E, d) + n E t_route  (logits = x Wg; softmax, rule, drop policy).
double gate_forward_time(double n, double d, double E, double elem, const Machine& M);
// gate_backward_time = gemm(d, E, n) + gemm(n, d, E) + n E t_route (dWg, dx, router backward).
double gate_backward_time(double n, double d, double E, double elem, const Machine& M);

// curve_time(r, R, T): piecewise-linear interpolation of measured times T at rows R (ascending,
// >= 1 point) — the GEMMs' efficiency changes with the rows, so one FLOP rate cannot fit every
// size. r <= 0: 0; 0 < r < R[0]: T[0] (the weights are read whatever the rows: a floor);
// R[i] <= r <= R[i+1]: T[i] + (r - R[i]) (T[i+1] - T[i]) / (R[i+1] - R[i]); r > R[last]:
// extrapolated with the last segment's slope (the large-rows regime is linear), or T[last] r /
// R[last] with a single point.
double curve_time(double rows, const std::vector<double>& R, const std::vector<double>& T);

// expert_forward_time(rows): the measured curve of this (d, f) when the machine has one
// (curve_time), else the roofline gemm(rows, f, d) + gemm(rows, d, f) + 2 rows f s / B_mem
// (h = x W1 + b1, a = act(h), y = a W2 + b2): one expert with `rows` tokens.
double expert_forward_time(double rows, double d, double f, double elem, const Machine& M);
// expert_backward_time(rows): the measured curve, else gemm(f, d, rows) [dW2] + gemm(rows, f, d)
//   [da] + gemm(d, f, rows) [dW1] + gemm(rows, d, f) [dx] + 3 rows f s / B_mem (act backward).
double expert_backward_time(double rows, double d, double f, double elem, const Machine& M);
// The measured curve of shape (d, f) in M, or nullptr.
const ExpertCurve* find_curve(const Machine& M, double d, double f);

// ---- communication ---------------------------------------------------------------------------
// level_time = messages * alpha + bytes / beta: one level of an exchange seen by one endpoint.
double level_time(double messages, double bytes, double alpha, double beta);

// What the busiest endpoints of one all-to-all see (max over ranks / nodes of each quantity).
struct ExchangeLoad {
  double intra_messages = 0;  // max over ranks of max(sent, received) intra-node messages
  double intra_bytes = 0;     // max over ranks of max(sent, received) intra-node bytes
  double inter_messages = 0;  // max over ranks of max(sent, received) inter-node messages
  double inter_bytes = 0;     // max over nodes of max(out, in) inter-node bytes (NIC share)
};
// exchange_time = max(level_time(intra), level_time(inter with beta per node) - burst_saving(
// inter bytes, tokens)): the two levels use different links and progress concurrently; each is
// set by its busiest endpoint. `tokens`: bytes the busiest node's token bucket holds (0: none).
double exchange_time(const ExchangeLoad& x, const Machine& M, double tokens = 0);

// ---- a burstable inter-node link (token bucket: tc-tbf on the emulated cluster, burst credits of
// cloud NICs). The bucket holds up to B = burst_bytes tokens per node and direction and refills
// at the link's rate beta while the link is idle; while it holds tokens the link sends at
// beta_burst, and the tokens then fall at beta_burst - beta. An exchange of S bytes starting with
// T tokens sends S_1 = T beta_burst / (beta_burst - beta) bytes at the burst rate, the rest at
// beta, so it saves
//   burst_saving(S, T) = min(S (1/beta - 1/beta_burst), T / beta)
// (the tokens' worth of link time, or every byte at the burst rate when S <= S_1) and leaves
//   bucket_drain(T, S) = max(0, T - S (1 - beta / beta_burst))
// tokens; idle time refills them:
//   bucket_refill(T, gap) = min(B, T + gap beta).
// Without a bucket (B = 0, every real NIC at its line rate) all three are 0.
double bucket_refill(double tokens, double gap, const Machine& M);
double burst_saving(double bytes, double tokens, const Machine& M);
double bucket_drain(double tokens, double bytes, const Machine& M);

// Uniform dense all-to-all on P ranks (R per node), `block` bytes per (src, dst) pair with
// src != dst (the capacity-padded exchange, and the uniform reference case):
//   intra = (R' - 1) messages and bytes, R' = min(R, P); inter = P - R' messages per rank,
//   R' (P - R') block bytes per node.
ExchangeLoad uniform_exchange_load(std::int64_t P, std::int64_t R, double block);

// Small all-to-all of the counts (Bruck): ceil(log2 P) rounds of alpha + (P b / 2) / beta, with
// the inter-node alpha/beta once there is more than one node.
double counts_exchange_time(std::int64_t P, std::int64_t R, double bytes_per_peer,
                            const Machine& M);

// Allreduce of `bytes` on P ranks: min(ring, recursive doubling) (MPI picks by size):
//   ring = 2 (P-1) alpha + 2 (P-1)/P bytes / beta_ring,   beta_ring = min(beta_intra, beta_inter)
//   tree = ceil(log2 P) (alpha + bytes / beta_tree),      beta_tree = min(beta_intra, beta_inter/R)
// alpha = inter-node alpha when the P ranks span nodes (`spans_nodes`), else intra.
double allreduce_ring_time(std::int64_t P, double bytes, bool spans_nodes, const Machine& M);
double allreduce_tree_time(std::int64_t P, double bytes, bool spans_nodes, const Machine& M);
double allreduce_time(std::int64_t P, double bytes, bool spans_nodes, const Machine& M);

// data_time = n D t_data: generating a rank's batch of n tokens with D input features (each a
// counter-based Gaussian draw; data.task), t_data from calibrate.
double data_time(double n, double input_dim, const Machine& M);

// optimizer_time = max(params * s * a / B_mem, params * t_param): memory bound with a = 7
// accesses for adam (read p g m v, write p m v), 5 for sgd with momentum (read p g v, write
// p v), or the calibrated time per parameter (sqrt and division make adam compute bound).
double optimizer_time(double params, double elem, OptimizerKind opt, const Machine& M);

// shared_cores_time(t_max, t_sum, P, C): when all P ranks share C < P cores (cluster.shared_cores,
// an emulated cluster on one machine), the expert times t_r were timed with every rank busy, at
// C/P of a core each: a rank alone needs W_r = t_r C / P. The scheduler shares the cores out
// (processor sharing: no rank runs on more than one core), so the busiest rank finishes at
//   max(W_max, sum W / C) = max(t_max C / P, t_sum / P)
// — the less loaded ranks finish early and leave it more than its share. C = 0 or P <= C: t_max.
double shared_cores_time(double t_max, double t_sum, std::int64_t P, std::int64_t C);

// rank_wait_time(busiest, least) = busiest - least: a collective timed on every rank and reported
// as the maximum over ranks includes the wait of the rank that arrived first, i.e. the spread of
// the work before it (the combine exchange after the experts).
double rank_wait_time(double busiest, double least);

// ---- the overlapped exchange (routing.overlap_degree) -------------------------------------------
// pipelined_time(to, back, compute, d): one exchange -> experts -> exchange pass as a pipeline of d
// chunks of whole experts (each chunk a 1/d share of every term). The first chunk's way to the
// experts and the last chunk's way back are exposed; in between the link (the other chunks' ways
// to and back) and the experts overlap, so the pass is set by whichever is longer:
//   T = to/d + max(compute + back/d, to + back - to/d).
// d = 1: to + compute + back (nothing hidden); d -> infinity: max(compute, to + back).
double pipelined_time(double to, double back, double compute, double d);

// ---- calibration ------------------------------------------------------------------------------
// Least squares y = a + b x on relative residuals (weights 1/y^2: message sizes span six orders
// of magnitude), refitted once without the points whose relative residual exceeds 3x the median
// (a loaded machine produces outliers); a < 0 is refitted through the origin. rel_rms: the
// relative RMS residual over all points. For alpha-beta: a = alpha (x messages), b = 1/beta.
struct LineFit {
  double a = 0, b = 0, rel_rms = 0;
};
LineFit fit_line(const std::vector<double>& x, const std::vector<double>& y);
// Hockney's two regimes: b (1/beta) from an unweighted least-squares line through the points of
// the bandwidth regime (x >= x_max / 4; at least the two largest), a (alpha) = the median over
// the latency regime (x <= 4096, else the smallest point) of y - b x, clamped at 0. MoE
// exchanges move megabytes, and a single line weighted over six orders of magnitude lets the
// middle (eager/rendezvous switch, a token bucket's burst) set beta: on the emulated 1 Gbit/s
// link it gave 0.21 GB/s where 1-4 MiB messages ran at 0.12-0.13. rel_rms over all points.
LineFit fit_hockney(const std::vector<double>& x, const std::vector<double>& y);

// A token bucket from an exchange timed back-to-back (t_busy) and after an idle link (t_idle) at
// busiest-node bytes S_i (ascending): saving_i = t_busy_i - t_idle_i fitted as
// c + k min(S, S_1) (burst_saving of a full bucket: k = 1/beta - 1/beta_burst up to the knee
// S_1 = B beta_burst / (beta_burst - beta)), weighted by 1/t_idle_i^2 (the noise is relative to
// the time), for each candidate knee (the sizes and their geometric midpoints) by least squares
// in (c, k), keeping the knee with the least weighted residual. c absorbs what an idle link
// costs small messages (not modelled: tens to hundreds of microseconds after idle). Accepted
// when k >= 0.1 / beta (the burst at least ~11 % faster than the link) and S_1 <= S_last / 4
// (the saving levels off inside the measured range); then beta_burst = 1 / (1/beta - k) (capped
// at 100 beta) and B = k S_1 beta (the plateau's saving in link time). rel_rms: the weighted
// (relative) residual RMS.
struct BucketFit {
  bool accepted = false;
  double bytes = 0, beta_burst = 0, k = 0, c = 0, knee = 0, rel_rms = 0;  // bytes: B
};
BucketFit fit_bucket(const std::vector<double>& sizes, const std::vector<double>& t_busy,
                     const std::vector<double>& t_idle, double beta);

}  // namespace moesim::simulate
