// The gate of one MoE layer: the router's parameters and what touches the router input x.
//   logits = x Wg (a replicated [d x E] parameter "layerN.gate"), and per rule:
//   - switch (routing.jitter_eps > 0): in training the router sees x * u, u ~ U[1-eps, 1+eps]
//     per (token, feature), keyed by (seed, step, layer, global token id); the experts see x;
//   - noisy_topk: noise scale softplus(x W_noise) ("layerN.noise", replicated, zero-initialised
//     as Shazeer et al. 2017), training only;
//   - aux-loss-free balancing (routing.bias_update_rate > 0): the expert bias b [E] (state,
//     identical on every rank) the routing rule adds for selection;
//   - hash routing: no gate (learned() = false, no parameters).
// Forward writes the logits (double) the router reads; backward takes dL/dlogits (and
// dL/dnoise_std) from the router and accumulates the gate's parameter gradients and dL/dx.
// The layer reads gate -> route -> pack -> dispatch -> experts -> combine.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "moesim/config/config.hpp"
#include "moesim/util/aligned.hpp"
#include "moesim/util/params.hpp"

namespace moesim::model {

// Which tokens a pass holds: keys the routing randomness and hash experts (random.hpp).
struct PassInfo {
  std::int64_t step = 0;         // training step (evaluation: unused)
  std::int64_t first_token = 0;  // global id of this rank's first token in the pass
                                 // (training: step * B + rank * N; evaluation: rank * N_eval)
};

template <typename T>
class Gate {
 public:
  // Registers the gate's parameters of layer `index` (none when !learned); max_tokens: the
  // most tokens of one pass on this rank (buffers reserved once).
  Gate(const Config& cfg, int index, ParamStore<T>& store, bool learned, std::int64_t max_tokens);
  void bind(ParamStore<T>& store);

  [[nodiscard]] bool learned() const { return learned_; }
  // logits [n x E] of x [n x d] (untouched when !learned). Remembers x and the pass for
  // backward.
  void forward(const T* x, std::int64_t n, bool training, const PassInfo& pass,
               std::span<double> logits);
  // Whether the last forward drew router noise (noisy_topk in training), and its scale
  // softplus(x W_noise) [n x E] (empty otherwise).
  [[nodiscard]] bool noise_active() const { return noise_; }
  [[nodiscard]] std::span<const double> noise_std() const {
    return noise_ ? std::span<const double>(noise_std_) : std::span<const double>{};
  }
  // dlogits [n x E], dnoise [n x E] (noise_active() only) of the last forward: accumulates
  // dWg (and dW_noise) and adds the gate's part of dL/dx to dx [n x d].
  void backward(std::span<const double> dlogits, std::span<const double> dnoise, T* dx);

  // Aux-loss-free balancing: b_e += u * sign(mean load - load_e) (routing/losses.hpp).
  void update_bias(std::span<const double> global_load);
  [[nodiscard]] std::span<double> bias() { return bias_; }
  // The bias the routing rule adds (empty when bias_update_rate = 0).
  [[nodiscard]] std::span<const double> routing_bias() const {
    return bias_rate_ > 0 ? std::span<const double>(bias_) : std::span<const double>{};
  }

 private:
  std::int64_t d_, E_;
  int index_;
  std::uint64_t seed_;
  bool learned_;       // false for hash routing (no router)
  bool noisy_;         // noisy_topk: W_noise
  double jitter_eps_;  // switch: router-input jitter (0 = off)
  double bias_rate_;   // aux-loss-free balancing rate u (0 = off)
  int gate_id_ = -1, noise_id_ = -1;
  T* wg_ = nullptr;  // [d x E], replicated
  T* gwg_ = nullptr;
  T* wn_ = nullptr;  // [d x E], replicated (noisy_topk)
  T* gwn_ = nullptr;
  std::vector<double> bias_;  // [E] expert bias (aux-loss-free balancing)
  // Saved by forward for backward (sizes grow to the high-water mark only).
  const T* x_ = nullptr;
  std::int64_t n_ = 0;
  bool jitter_ = false, noise_ = false;  // of the last forward
  AlignedVector<T> logits_t_;            // [n x E] in T (gate GEMM output; later dlogits)
  AlignedVector<T> noise_raw_t_;         // [n x E] x W_noise (later its gradient)
  std::vector<double> noise_std_;        // [n x E] softplus(x W_noise)
  AlignedVector<T> jit_x_, jit_u_;       // [n x d] jittered router input and the factors
};

}  // namespace moesim::model
