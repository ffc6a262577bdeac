// The step model's terms (step_model.hpp; formulas also in docs/simulate_model.md).
#include "moesim/simulate/step_model.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace moesim::simulate {

Machine machine_from(const ClusterConfig& c, Precision precision, std::int64_t ranks_per_node) {
  Machine m;
  m.ranks_per_node = ranks_per_node > 0 ? ranks_per_node : c.ranks_per_node;
  m.alpha_intra = c.intra_latency_us * 1e-6;
  m.beta_intra = c.intra_bandwidth_GBps * 1e9;
  m.alpha_inter = c.inter_latency_us * 1e-6;
  m.beta_inter = c.inter_bandwidth_GBps * 1e9;
  if (c.inter_burst_bytes > 0 && c.inter_burst_GBps > c.inter_bandwidth_GBps) {
    m.burst_bytes = c.inter_burst_bytes;
    m.beta_burst = c.inter_burst_GBps * 1e9;
  }
  const double f64 = c.gemm_GFLOPs_float64 > 0 ? c.gemm_GFLOPs_float64 : 0.5 * c.gemm_GFLOPs;
  m.flops = (precision == Precision::float64 ? f64 : c.gemm_GFLOPs) * 1e9;
  m.mem_bw = c.memory_bandwidth_GBps * 1e9;
  m.route_per_score = c.route_ns_per_score * 1e-9;
  m.step_overhead = c.step_overhead_us * 1e-6;
  m.optimizer_per_param = c.optimizer_ns_per_param * 1e-9;
  m.data_per_value = c.data_ns_per_value * 1e-9;
  m.shared_cores = c.shared_cores;
  // bfloat16 experts run bf16 GEMMs; only a bfloat16 entry of the table describes them.
  for (const ExpertTimePoint& p : parse_expert_table(c.expert_table)) {
    if (p.precision != precision) continue;
    if (m.expert_curves.empty() || m.expert_curves.back().d_model != p.d_model ||
        m.expert_curves.back().d_ff != p.d_ff)
      m.expert_curves.push_back(ExpertCurve{p.d_model, p.d_ff, {}, {}, {}});
    ExpertCurve& cv = m.expert_curves.back();  // points arrive sorted by shape, then rows
    cv.rows.push_back(static_cast<double>(p.rows));
    cv.fwd.push_back(p.fwd_s);
    cv.bwd.push_back(p.bwd_s);
  }
  return m;
}

double curve_time(double rows, const std::vector<double>& R, const std::vector<double>& T) {
  if (rows <= 0 || R.empty()) return 0.0;
  if (rows < R.front()) return T.front();
  const std::size_t n = R.size();
  if (n == 1) return T[0] * rows / R[0];
  std::size_t i = 0;
  while (i + 2 < n && rows > R[i + 1]) ++i;  // segment [R[i], R[i+1]]; the last one extrapolates
  return T[i] + (rows - R[i]) * (T[i + 1] - T[i]) / (R[i + 1] - R[i]);
}

const ExpertCurve* find_curve(const Machine& M, double d, double f) {
  for (const ExpertCurve& c : M.expert_curves)
    if (static_cast<double>(c.d_model) == d && static_cast<double>(c.d_ff) == f) return &c;
  return nullptr;
}

double gemm_time(double m, double n, double k, double elem, const Machine& M) {
  if (m <= 0 || n <= 0 || k <= 0) return 0.0;
  const double compute = 2.0 * m * n * k / M.flops;
  const double memory = (m * k + k * n + m * n) * elem / M.mem_bw;
  return std::max(compute, memory);
}

double stream_time(double bytes, const Machine& M) { return bytes / M.mem_bw; }

double data_time(double n, double input_dim, const Machine& M) {
  return n * input_dim * M.data_per_value;
}

double gate_forward_time(double n, double d, double E, double elem, const Machine& M) {
  return gemm_time(n, E, d, elem, M) + n * E * M.route_per_score;
}

double gate_backward_time(double n, double d, double E, double elem, const Machine& M) {
  return gemm_time(d, E, n, elem, M) + gemm_time(n, d, E, elem, M) + n * E * M.route_per_score;
}

double expert_forward_time(double rows, double d, double f, double elem, const Machine& M) {
  if (rows <= 0) return 0.0;
  if (const ExpertCurve* c = find_curve(M, d, f)) return curve_time(rows, c->rows, c->fwd);
  return gemm_time(rows, f, d, elem, M) + gemm_time(rows, d, f, elem, M) +
         stream_time(2.0 * rows * f * elem, M);
}

double expert_backward_time(double rows, double d, double f, double elem, const Machine& M) {
  if (rows <= 0) return 0.0;
  if (const ExpertCurve* c = find_curve(M, d, f)) return curve_time(rows, c->rows, c->bwd);
  return gemm_time(f, d, rows, elem, M) + gemm_time(rows, f, d, elem, M) +
         gemm_time(d, f, rows, elem, M) + gemm_time(rows, d, f, elem, M) +
         stream_time(3.0 * rows * f * elem, M);
}

double level_time(double messages, double bytes, double alpha, double beta) {
  return messages * alpha + bytes / beta;
}

double exchange_time(const ExchangeLoad& x, const Machine& M, double tokens) {
  const double intra = level_time(x.intra_messages, x.intra_bytes, M.alpha_intra, M.beta_intra);
  const double inter = level_time(x.inter_messages, x.inter_bytes, M.alpha_inter, M.beta_inter) -
                       burst_saving(x.inter_bytes, tokens, M);
  return std::max(intra, inter);
}

double bucket_refill(double tokens, double gap, const Machine& M) {
  if (M.burst_bytes <= 0) return 0.0;
  return std::min(M.burst_bytes, tokens + std::max(gap, 0.0) * M.beta_inter);
}

double burst_saving(double bytes, double tokens, const Machine& M) {
  if (M.burst_bytes <= 0 || M.beta_burst <= M.beta_inter || tokens <= 0 || bytes <= 0) return 0.0;
  return std::min(bytes * (1.0 / M.beta_inter - 1.0 / M.beta_burst), tokens / M.beta_inter);
}

double bucket_drain(double tokens, double bytes, const Machine& M) {
  if (M.burst_bytes <= 0 || M.beta_burst <= M.beta_inter) return 0.0;
  return std::max(0.0, tokens - bytes * (1.0 - M.beta_inter / M.beta_burst));
}

ExchangeLoad uniform_exchange_load(std::int64_t P, std::int64_t R, double block) {
  const std::int64_t Rn = std::min(R, P);
  ExchangeLoad x;
  x.intra_messages = static_cast<double>(Rn - 1);
  x.intra_bytes = static_cast<double>(Rn - 1) * block;
  x.inter_messages = static_cast<double>(P - Rn);
  x.inter_bytes = static_cast<double>(Rn) * static_cast<double>(P - Rn) * block;
  return x;
}

namespace {
double ceil_log2(std::int64_t P) {
  double r = 0;
  for (std::int64_t v = 1; v < P; v *= 2) r += 1;
  return r;
}
}  // namespace

double counts_exchange_time(std::int64_t P, std::int64_t R, double bytes_per_peer,
                            const Machine& M) {
  if (P <= 1) return 0.0;
  const bool inter = P > R;
  const double alpha = inter ? M.alpha_inter : M.alpha_intra;
  const double beta =
      inter ? std::min(M.beta_intra, M.beta_inter / static_cast<double>(R)) : M.beta_intra;
  return ceil_log2(P) * (alpha + 0.5 * static_cast<double>(P) * bytes_per_peer / beta);
}

double allreduce_ring_time(std::int64_t P, double bytes, bool spans_nodes, const Machine& M) {
  if (P <= 1 || bytes <= 0) return 0.0;
  const double alpha = spans_nodes ? M.alpha_inter : M.alpha_intra;
  const double beta = spans_nodes ? std::min(M.beta_intra, M.beta_inter) : M.beta_intra;
  const double p = static_cast<double>(P);
  return 2.0 * (p - 1.0) * alpha + 2.0 * (p - 1.0) / p * bytes / beta;
}

double allreduce_tree_time(std::int64_t P, double bytes, bool spans_nodes, const Machine& M) {
  if (P <= 1 || bytes <= 0) return 0.0;
  const double alpha = spans_nodes ? M.alpha_inter : M.alpha_intra;
  const double beta =
      spans_nodes ? std::min(M.beta_intra, M.beta_inter / static_cast<double>(M.ranks_per_node))
                  : M.beta_intra;
  return ceil_log2(P) * (alpha + bytes / beta);
}

double allreduce_time(std::int64_t P, double bytes, bool spans_nodes, const Machine& M) {
  return std::min(allreduce_ring_time(P, bytes, spans_nodes, M),
                  allreduce_tree_time(P, bytes, spans_nodes, M));
}

double optimizer_time(double params, double elem, OptimizerKind opt, const Machine& M) {
  const double accesses = opt == OptimizerKind::adam ? 7.0 : 5.0;
  return std::max(stream_time(params * elem * accesses, M), params * M.optimizer_per_param);
}

double rank_wait_time(double busiest, double least) { return std::max(0.0, busiest - least); }

double shared_cores_time(double t_max, double t_sum, std::int64_t P, std::int64_t C) {
  if (C <= 0 || P <= C) return t_max;
  const double p = static_cast<double>(P), c = static_cast<double>(C);
  return std::max(t_max * c / p, t_sum / p);
}

double pipelined_time(double to, double back, double compute, double d) {
  if (d <= 1) return to + compute + back;
  return to / d + std::max(compute + back / d, to + back - to / d);
}

namespace {
// Relative RMS residual of the fit over all points.
double relative_rms(const LineFit& f, const std::vector<double>& x, const std::vector<double>& y) {
  double r = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double e = (f.a + f.b * x[i] - y[i]) / y[i];
    r += e * e;
  }
  return std::sqrt(r / static_cast<double>(x.size()));
}
}  // namespace

LineFit fit_line(const std::vector<double>& x, const std::vector<double>& y) {
  auto solve = [&](const std::vector<bool>& use) {
    double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (!use[i]) continue;
      const double w = 1.0 / (y[i] * y[i]);
      sw += w;
      sx += w * x[i];
      sy += w * y[i];
      sxx += w * x[i] * x[i];
      sxy += w * x[i] * y[i];
    }
    LineFit f;
    const double den = sw * sxx - sx * sx;
    f.b = den != 0 ? (sw * sxy - sx * sy) / den : 0;
    f.a = sw > 0 ? (sy - f.b * sx) / sw : 0;
    if (f.a < 0) {  // a negative latency is unphysical: refit through the origin
      f.a = 0;
      f.b = sxx > 0 ? sxy / sxx : 0;
    }
    return f;
  };
  std::vector<bool> use(x.size(), true);
  LineFit f = solve(use);
  std::vector<double> rel(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) rel[i] = std::abs((f.a + f.b * x[i] - y[i]) / y[i]);
  std::vector<double> sorted = rel;
  std::sort(sorted.begin(), sorted.end());
  const double med = sorted[sorted.size() / 2];
  for (std::size_t i = 0; i < x.size(); ++i) use[i] = rel[i] <= 3.0 * med + 1e-12;
  f = solve(use);
  f.rel_rms = relative_rms(f, x, y);
  return f;
}

LineFit fit_hockney(const std::vector<double>& x, const std::vector<double>& y) {
  LineFit f;
  if (x.empty() || x.size() != y.size()) return f;
  const double xmax = *std::max_element(x.begin(), x.end());
  std::vector<std::size_t> big;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (x[i] >= xmax / 4.0) big.push_back(i);
  if (big.size() < 2) {  // the two largest points
    std::vector<std::size_t> order(x.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](std::size_t a, std::size_t b) { return x[a] > x[b]; });
    big.assign(order.begin(), order.begin() + std::min<std::size_t>(2, order.size()));
  }
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const std::size_t i : big) {
    sx += x[i];
    sy += y[i];
    sxx += x[i] * x[i];
    sxy += x[i] * y[i];
  }
  const double n = static_cast<double>(big.size());
  const double den = n * sxx - sx * sx;
  f.b = den > 0 ? (n * sxy - sx * sy) / den : (sxx > 0 ? sxy / sxx : 0.0);
  if (f.b <= 0) f.b = sxx > 0 ? sxy / sxx : 0.0;  // through the origin
  std::vector<double> small;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (x[i] <= 4096.0) small.push_back(y[i] - f.b * x[i]);
  if (small.empty()) {
    const auto i = static_cast<std::size_t>(std::min_element(x.begin(), x.end()) - x.begin());
    small.push_back(y[i] - f.b * x[i]);
  }
  std::sort(small.begin(), small.end());
  f.a = std::max(0.0, small[small.size() / 2]);
  f.rel_rms = relative_rms(f, x, y);
  return f;
}

BucketFit fit_bucket(const std::vector<double>& sizes, const std::vector<double>& t_busy,
                     const std::vector<double>& t_idle, double beta) {
  BucketFit best;
  const std::size_t n = std::min({sizes.size(), t_busy.size(), t_idle.size()});
  if (n < 3 || beta <= 0) return best;
  std::vector<double> candidates(sizes.begin(), sizes.begin() + static_cast<std::ptrdiff_t>(n));
  for (std::size_t i = 0; i + 1 < n; ++i) candidates.push_back(std::sqrt(sizes[i] * sizes[i + 1]));
  double best_rss = std::numeric_limits<double>::infinity();
  for (double B : candidates) {
    // weighted least squares of y = c + k m: normal equations in (c, k)
    double sw = 0, sm = 0, smm = 0, sy = 0, smy = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const double w = 1.0 / (t_idle[i] * t_idle[i]), m = std::min(sizes[i], B);
      const double y = t_busy[i] - t_idle[i];
      sw += w;
      sm += w * m;
      smm += w * m * m;
      sy += w * y;
      smy += w * m * y;
    }
    const double det = sw * smm - sm * sm;
    if (!(det > 0)) continue;
    const double k = (sw * smy - sm * sy) / det, c = (sy - k * sm) / sw;
    double rss = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const double r = (t_busy[i] - t_idle[i] - c - k * std::min(sizes[i], B)) / t_idle[i];
      rss += r * r;
    }
    if (rss < best_rss) {
      best_rss = rss;
      best.knee = B;
      best.k = k;
      best.c = c;
    }
  }
  if (!std::isfinite(best_rss)) return BucketFit{};
  best.rel_rms = std::sqrt(best_rss / static_cast<double>(n));
  best.accepted = best.k >= 0.1 / beta && best.knee <= sizes[n - 1] / 4;
  if (best.accepted) {
    best.beta_burst = 1.0 / std::max(1.0 / beta - best.k, 1.0 / (100.0 * beta));
    best.bytes = best.k * best.knee * beta;
  }
  return best;
}

}  // namespace moesim::simulate
