// One distributed MoE layer with a residual connection:
//   y_t = x_t + sum_{kept a of t} w_a * Expert_{e_a}(x_t)
// gate (logits = x Wg, softmax, rule, capacity per group) -> dispatch -> experts ->
// combine, and the full backward through combine weights, experts, both all-to-alls and
// the router (softmax, top-k weights, aux and z losses).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moesim/comm/comm.hpp"
#include "moesim/config/config.hpp"
#include "moesim/dispatch/dispatcher.hpp"
#include "moesim/experts/expert_ffn.hpp"
#include "moesim/perf/timers.hpp"
#include "moesim/routing/router.hpp"
#include "moesim/util/aligned.hpp"
#include "moesim/util/params.hpp"

namespace moesim::model {

// What one forward pass of a layer observed on this rank (summed over its groups).
struct LayerStats {
  double aux_sum = 0;                  // sum over local groups of aux (before coefficient)
  double z_sum = 0;                    // sum over local groups of z
  std::int64_t groups = 0;             // local groups
  std::int64_t assignments = 0;        // candidates (token, choice) before capacity
  std::int64_t dropped = 0;            // candidates dropped by capacity
  std::vector<std::int64_t> routed;    // [E] before capacity
  std::vector<std::int64_t> kept;      // [E] after capacity
  std::vector<std::int64_t> sent_to;   // [P] rows this rank dispatched to each rank
};

template <typename T>
class MoELayer {
 public:
  // train_tokens / eval_tokens: this rank's tokens per pass (buffers and groups sized once).
  MoELayer(const Config& cfg, int index, const comm::Comm& comm, ParamStore<T>& store,
           std::int64_t train_tokens, std::int64_t eval_tokens);
  void bind(ParamStore<T>& store);

  // x [n x d] -> y [n x d]; n must be train_tokens (training) or eval_tokens.
  void forward(const T* x, T* y, std::int64_t n, bool training, perf::PhaseTimes* times);
  // dy [n x d] -> dx [n x d] for the last forward; accumulates parameter gradients.
  // aux_scale / z_scale: dL/d(aux of one group), dL/d(z of one group).
  void backward(const T* dy, T* dx, double aux_scale, double z_scale);

  [[nodiscard]] const LayerStats& stats() const { return stats_; }
  [[nodiscard]] const dispatch::Plan& plan() const { return plan_; }
  [[nodiscard]] const routing::Router& router(bool training) const {
    return training ? *router_train_ : *router_eval_;
  }
  [[nodiscard]] std::int64_t bytes_sent() const { return dispatcher_->bytes_sent(); }
  void reset_bytes() { dispatcher_->reset_bytes(); }
  // Router probabilities [n x E] of the last forward (double), for metrics and tests.
  [[nodiscard]] const std::vector<double>& probs() const { return probs_; }
  [[nodiscard]] const std::vector<routing::GroupRouting>& groups() const { return groups_; }

 private:
  const comm::Comm& comm_;
  std::int64_t d_, f_, E_, index_;
  dispatch::Placement placement_;
  std::unique_ptr<routing::Router> router_train_, router_eval_;
  std::unique_ptr<dispatch::Dispatcher<T>> dispatcher_;
  experts::ExpertBank<T> experts_;
  int gate_id_;
  T* wg_ = nullptr;   // [d x E], replicated
  T* gwg_ = nullptr;

  // Saved by forward for backward (sizes grow to the high-water mark only).
  const T* x_ = nullptr;
  std::int64_t n_ = 0;
  bool training_ = true;
  AlignedVector<T> logits_t_;         // [n x E] in T (gate GEMM output; later dlogits)
  std::vector<double> logits_, probs_;  // [n x E]
  std::vector<routing::GroupRouting> groups_;
  std::vector<std::int64_t> cand_offset_;  // first flat candidate index of each group
  std::vector<std::int32_t> kept_token_, kept_expert_;
  std::vector<double> kept_weight_;    // combine weight per kept assignment (pack order)
  std::vector<std::int64_t> kept_cand_;  // flat candidate index per kept assignment
  dispatch::Plan plan_;
  AlignedVector<T> send_, back_;       // [send x d] packed rows; expert outputs back
  AlignedVector<T> ex_in_, ex_h_, ex_a_, ex_out_;  // expert-major [recv x d|f]
  std::vector<double> dweight_, dprobs_, dlogits_;
  LayerStats stats_;
};

}  // namespace moesim::model
