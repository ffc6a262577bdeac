// Optimizers over the flat parameter arenas: SGD with momentum (L2 weight decay) and
// Adam with decoupled weight decay (AdamW when weight_decay > 0). Elementwise, so the
// replicated arena stays identical on every rank given identical (allreduced) gradients.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "moesim/config/config.hpp"
#include "moesim/util/params.hpp"

namespace moesim::train {

template <typename T>
class Optimizer {
 public:
  Optimizer(const TrainingConfig& cfg, ParamStore<T>& store);
  void step(ParamStore<T>& store);  // one update from the store's gradients
  [[nodiscard]] std::int64_t steps_taken() const { return t_; }
  // State for checkpoints: slot 0 = momentum / Adam m, slot 1 = Adam v (empty for sgd),
  // laid out like the store's arena of `kind` (same offsets as the parameters).
  [[nodiscard]] int state_slots() const { return v_rep_.empty() ? 1 : 2; }
  [[nodiscard]] std::span<T> state(int slot, ParamKind kind) {
    if (slot == 0)
      return kind == ParamKind::replicated ? std::span<T>(m_rep_) : std::span<T>(m_exp_);
    return kind == ParamKind::replicated ? std::span<T>(v_rep_) : std::span<T>(v_exp_);
  }
  void set_steps_taken(std::int64_t t) { t_ = t; }

 private:
  void update(std::span<T> p, std::span<const T> g, std::vector<T>& m, std::vector<T>& v) const;
  TrainingConfig cfg_;
  std::int64_t t_ = 0;
  std::vector<T> m_rep_, v_rep_, m_exp_, v_exp_;  // first / second moments (sgd: m only)
};

}  // namespace moesim::train
