// Router-loss building blocks (routing.md "Router losses") and the aux-loss-free bias
// update, as plain functions so that tests can check them against their closed forms.
#pragma once

#include <cstdint>
#include <span>

namespace moesim::routing {

// CV^2 = Var / mean^2 of x (population variance, as Shazeer et al. 2017's cv_squared,
// without their 1e-10 in the denominator). 0 when there is one value or the mean is 0.
double cv_squared(std::span<const double> x);

// dx_e += scale * d CV^2 / d x_e = scale * (2/n) ((x_e - m) / m^2 - Var / m^3).
void cv_squared_backward(std::span<const double> x, double scale, std::span<double> dx);

// Aux-loss-free balancing (DeepSeek-V3): b_e += u * sign(mean_e load - load_e), with
// sign(0) = 0. `load` is the global (all ranks) pre-capacity load of one layer, so every
// rank computes the same update.
void update_expert_bias(std::span<double> bias, std::span<const double> load, double rate);

}  // namespace moesim::routing
