// Router-loss building blocks and the expert-bias update (losses.hpp).
#include "moesim/routing/losses.hpp"

namespace moesim::routing {

namespace {
struct Moments {
  double mean = 0, var = 0;
};
Moments moments(std::span<const double> x) {
  Moments m;
  if (x.empty()) return m;
  const double n = static_cast<double>(x.size());
  for (double v : x) m.mean += v;
  m.mean /= n;
  for (double v : x) m.var += (v - m.mean) * (v - m.mean);
  m.var /= n;
  return m;
}
}  // namespace

double cv_squared(std::span<const double> x) {
  if (x.size() < 2) return 0.0;
  const Moments m = moments(x);
  return m.mean == 0 ? 0.0 : m.var / (m.mean * m.mean);
}

void cv_squared_backward(std::span<const double> x, double scale, std::span<double> dx) {
  if (x.size() < 2 || scale == 0) return;
  const Moments m = moments(x);
  if (m.mean == 0) return;
  // d(V/m^2) = dV/m^2 - 2 V dm / m^3 with dV/dx_e = (2/n)(x_e - m), dm/dx_e = 1/n.
  const double n = static_cast<double>(x.size());
  const double m2 = m.mean * m.mean, m3 = m2 * m.mean;
  for (std::size_t e = 0; e < x.size(); ++e)
    dx[e] += scale * (2.0 / n) * ((x[e] - m.mean) / m2 - m.var / m3);
}

void update_expert_bias(std::span<double> bias, std::span<const double> load, double rate) {
  if (load.empty() || rate == 0) return;
  double mean = 0;
  for (double l : load) mean += l;
  mean /= static_cast<double>(load.size());
  for (std::size_t e = 0; e < bias.size(); ++e) {
    const double gap = mean - load[e];
    bias[e] += rate * (gap > 0 ? 1.0 : gap < 0 ? -1.0 : 0.0);
  }
}

}  // namespace moesim::routing
