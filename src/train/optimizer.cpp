// SGD-momentum and Adam(W) updates (optimizer.hpp).
#include "moesim/train/optimizer.hpp"

#include <cmath>

namespace moesim::train {

template <typename T>
Optimizer<T>::Optimizer(const TrainingConfig& cfg, ParamStore<T>& store) : cfg_(cfg) {
  m_rep_.assign(store.values(ParamKind::replicated).size(), T(0));
  m_exp_.assign(store.values(ParamKind::expert).size(), T(0));
  if (cfg.optimizer == OptimizerKind::adam) {
    v_rep_.assign(m_rep_.size(), T(0));
    v_exp_.assign(m_exp_.size(), T(0));
  }
}

template <typename T>
void Optimizer<T>::update(std::span<T> p, std::span<const T> g, std::vector<T>& m,
                          std::vector<T>& v) const {
  const double lr = cfg_.learning_rate, wd = cfg_.weight_decay;
  if (cfg_.optimizer == OptimizerKind::sgd) {
    const T mu = static_cast<T>(cfg_.momentum);
    for (std::size_t i = 0; i < p.size(); ++i) {
      const T grad = g[i] + static_cast<T>(wd) * p[i];
      m[i] = mu * m[i] + grad;
      p[i] -= static_cast<T>(lr) * m[i];
    }
    return;
  }
  const double b1 = cfg_.beta1, b2 = cfg_.beta2;
  const double c1 = 1.0 / (1.0 - std::pow(b1, static_cast<double>(t_)));
  const double c2 = 1.0 / (1.0 - std::pow(b2, static_cast<double>(t_)));
  const T tb1 = static_cast<T>(b1), tb2 = static_cast<T>(b2), eps = static_cast<T>(cfg_.epsilon);
  const T tc1 = static_cast<T>(c1), tc2 = static_cast<T>(c2), tlr = static_cast<T>(lr),
          twd = static_cast<T>(wd);
  for (std::size_t i = 0; i < p.size(); ++i) {
    m[i] = tb1 * m[i] + (T(1) - tb1) * g[i];
    v[i] = tb2 * v[i] + (T(1) - tb2) * g[i] * g[i];
    p[i] -= tlr * ((m[i] * tc1) / (std::sqrt(v[i] * tc2) + eps) + twd * p[i]);
  }
}

template <typename T>
void Optimizer<T>::step(ParamStore<T>& store) {
  ++t_;
  update(store.values(ParamKind::replicated), store.grads(ParamKind::replicated), m_rep_, v_rep_);
  update(store.values(ParamKind::expert), store.grads(ParamKind::expert), m_exp_, v_exp_);
}

template class Optimizer<float>;
template class Optimizer<double>;

}  // namespace moesim::train
