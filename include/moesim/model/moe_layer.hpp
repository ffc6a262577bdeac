// One distributed MoE layer with a residual connection:
//   y_t = x_t + sum_{kept a of t} w_a * Expert_{e_a}(x_t)
// gate (gate.hpp: logits = x Wg, jitter, noise, expert bias) -> route (softmax, rule,
// capacity per group) -> pack -> dispatch -> experts -> combine, and the full backward
// through combine weights, experts, both all-to-alls, the router (softmax, rule weights,
// router losses) and the gate.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "moesim/comm/comm.hpp"
#include "moesim/config/config.hpp"
#include "moesim/dispatch/dispatcher.hpp"
#include "moesim/experts/expert_ffn.hpp"
#include "moesim/experts/gemm.hpp"
#include "moesim/model/gate.hpp"
#include "moesim/perf/timers.hpp"
#include "moesim/routing/router.hpp"
#include "moesim/util/aligned.hpp"
#include "moesim/util/params.hpp"

namespace moesim::model {

// What one forward pass of a layer observed on this rank (summed over its groups).
struct LayerStats {
  double aux_sum = 0;                 // sum over local groups of aux (before coefficient)
  double z_sum = 0;                   // sum over local groups of z
  double aux_gshard_sum = 0;          // sum over local groups of aux_gshard
  double importance_sum = 0;          // sum over local groups of importance CV^2
  double load_sum = 0;                // sum over local groups of load CV^2
  std::int64_t groups = 0;            // local groups
  std::int64_t assignments = 0;       // candidates (token, choice) before capacity
  std::int64_t dropped = 0;           // candidates dropped by capacity
  std::vector<std::int64_t> routed;   // [E] before capacity
  std::vector<std::int64_t> kept;     // [E] after capacity
  std::vector<std::int64_t> sent_to;  // [P] rows this rank dispatched to each rank
  double base_epsilon = 0;            // base rule: largest final auction epsilon of the groups
  std::int64_t rows_computed = 0;     // rows this rank's routed experts computed in the pass
};

template <typename T>
class MoELayer {
 public:
  // train_tokens / eval_tokens: this rank's tokens per pass (buffers and groups sized once).
  MoELayer(const Config& cfg, int index, const comm::Comm& comm, ParamStore<T>& store,
           std::int64_t train_tokens, std::int64_t eval_tokens);
  void bind(ParamStore<T>& store);

  // x [n x d] -> y [n x d]; n must be train_tokens (training) or eval_tokens.
  void forward(const T* x, T* y, std::int64_t n, bool training, perf::PhaseTimes* times,
               const PassInfo& pass = {});
  // dy [n x d] -> dx [n x d] for the last forward; accumulates parameter gradients.
  // scales: dL/d(each router loss of one group).
  void backward(const T* dy, T* dx, const routing::LossScales& scales);
  // Shorthand: aux_scale / z_scale only.
  void backward(const T* dy, T* dx, double aux_scale, double z_scale) {
    routing::LossScales s;
    s.aux = aux_scale;
    s.z = z_scale;
    backward(dy, dx, s);
  }
  // Aux-loss-free balancing: b_e += u * sign(mean load - load_e) from this layer's global
  // (all ranks) pre-capacity load [E] of the step. No-op unless routing.bias_update_rate > 0.
  void update_bias(std::span<const double> global_load) { gate_.update_bias(global_load); }
  // model.precision = bfloat16: re-round the bf16 copies of the expert weights from the fp32
  // master weights (after every optimizer update or checkpoint load). No-op otherwise.
  void refresh_low_precision() { experts_.refresh_low_precision(); }
  // The expert bias b [E] (state to checkpoint; used only when bias_update_rate > 0).
  [[nodiscard]] std::span<double> expert_bias() { return gate_.bias(); }

  [[nodiscard]] const LayerStats& stats() const { return stats_; }
  [[nodiscard]] const dispatch::Plan& plan() const { return plan_; }
  [[nodiscard]] const routing::Router& router(bool training) const {
    return training ? *router_train_ : *router_eval_;
  }
  [[nodiscard]] std::int64_t bytes_sent() const { return dispatcher_->bytes_sent(); }
  [[nodiscard]] std::int64_t bytes_inter_node() const { return dispatcher_->bytes_inter_node(); }
  [[nodiscard]] std::int64_t bytes_intra_node() const { return dispatcher_->bytes_intra_node(); }
  [[nodiscard]] std::int64_t bytes_token_dispatch_inter_node() const {
    return dispatcher_->bytes_token_dispatch_inter_node();
  }
  [[nodiscard]] int nodes() const { return dispatcher_->nodes().nodes; }
  void reset_bytes() { dispatcher_->reset_bytes(); }
  // Wall seconds this rank spent inside the exchange (forward and backward, every all-to-all
  // call incl. pack/unpack; with overlap_degree > 1 only the part not hidden behind the experts)
  // and in the expert computation, since the last reset (bench: fraction of exchange hidden).
  [[nodiscard]] double exchange_seconds() const { return exchange_s_; }
  [[nodiscard]] double expert_seconds() const { return expert_s_; }
  void reset_seconds() { exchange_s_ = expert_s_ = 0; }
  // Router probabilities [n x E] of the last forward (double), for metrics and tests.
  [[nodiscard]] const std::vector<double>& probs() const { return probs_; }
  [[nodiscard]] const std::vector<routing::GroupRouting>& groups() const { return groups_; }

  // --- Redundant experts (routing.redundant_experts = r > 0; docs/eplb.md) ---
  // This rank hosts slots [first, first + per) of the E + r slots (dispatch/eplb.hpp); a
  // slot's tensors carry the logical name of the expert it holds ("layer0.expert3.w1").
  [[nodiscard]] bool redundant() const { return r_ > 0; }
  [[nodiscard]] const dispatch::Placement& placement() const { return placement_; }
  // slot_expert[s]: the logical expert slot s holds ([E + r]; empty when r = 0).
  [[nodiscard]] std::span<const std::int64_t> slot_expert() const { return slot_expert_; }
  // Rows each expert computed (all ranks) since the last placement: the trainer adds every
  // step's global kept counts; rebalancing reads and clears it. Checkpointed state.
  [[nodiscard]] std::span<double> eplb_load() { return eplb_load_; }
  // Adopts a slot map without moving data (initial placement, checkpoint load before the
  // tensors are read): renames this rank's slot tensors, sets their checkpoint writers (the
  // lowest slot of each expert) and the replica lists.
  void set_slot_expert(std::span<const std::int64_t> map);
  // Collective: moves to the new map. A slot that changes expert receives the weights and
  // every optimizer state of that expert from its first holder under the old map (broadcast
  // through comm). `arenas`: the expert-kind arenas laid out like the store's (values, then
  // each optimizer state), in the same order on every rank.
  void rebalance(std::span<const std::int64_t> map, std::span<const std::span<T>> arenas);
  // Collective: gradients of every replicated expert summed over its replicas (one allreduce
  // of the replicated experts' gradients), so replicas stay bitwise identical.
  void sum_replica_grads();
  // Collective: the number of (replica, arena) pairs whose tensors differ bitwise from the
  // expert's first replica (0 when every replica holds the same weights and state).
  std::int64_t replica_mismatches(std::span<const std::span<T>> arenas);
  [[nodiscard]] const experts::ExpertBank<T>& expert_bank() const { return experts_; }

 private:
  void backward_experts_bf16(const T* dy, T* dx);  // combine + experts + exchanges, bf16
  // send-order rows -> expert_in (expert-major); compute(j0, j1) on local experts [j0, j1);
  // expert_out (expert-major) -> back (send order). One blocking exchange each way, or with
  // routing.overlap_degree = d > 1 a pipeline of d chunks of whole experts (bitwise the same).
  template <typename Compute>
  void exchange_and_compute(const T* send, T* expert_in, const T* expert_out, T* back,
                            std::int64_t width, bool token_rows, Compute&& compute,
                            perf::PhaseTimes* times);
  const comm::Comm& comm_;
  std::int64_t d_, f_, E_, index_;
  dispatch::Placement placement_;
  std::unique_ptr<routing::Router> router_train_, router_eval_;
  std::unique_ptr<dispatch::Dispatcher<T>> dispatcher_;
  experts::ExpertBank<T> experts_;
  std::int64_t shared_;                            // routing.shared_experts
  experts::ExpertBank<T> shared_bank_;             // the always-on experts (replicated parameters)
  std::vector<std::int64_t> shared_off_;           // [shared+1] row offsets j * n of the last pass
  AlignedVector<T> sh_in_, sh_h_, sh_a_, sh_out_;  // [shared * n x d|f], expert-major
  std::uint64_t seed_;
  Gate<T> gate_;  // router parameters, jitter, noise, expert bias (after the experts: the
                  // parameter registration order is that of before)

  // Saved by forward for backward (sizes grow to the high-water mark only).
  const T* x_ = nullptr;
  std::int64_t n_ = 0;
  bool training_ = true;
  std::vector<double> logits_, probs_;  // [n x E]
  std::vector<routing::GroupRouting> groups_;
  std::vector<routing::RouteContext> ctx_;  // per group, kept for backward
  std::vector<double> dnoise_;              // [n x E] dL/d(noise scale) from the router
  std::vector<std::int64_t> cand_offset_;   // first flat candidate index of each group
  std::vector<std::int32_t> kept_token_, kept_expert_;
  std::vector<double> kept_weight_;      // combine weight per kept assignment (pack order)
  std::vector<std::int64_t> kept_cand_;  // flat candidate index per kept assignment
  dispatch::Plan plan_;
  AlignedVector<T> send_, back_;                   // [send x d] packed rows; expert outputs back
  AlignedVector<T> ex_in_, ex_h_, ex_a_, ex_out_;  // expert-major [recv x d|f]
  std::vector<double> dweight_, dprobs_, dlogits_;
  bool aux_batch_;                  // routing.aux_scope = batch
  std::vector<double> batch_sums_;  // [2E+2] routed_e, sum_t p_t,e, groups, tokens (global)
  std::vector<double> batch_dp_;    // [E] d(global-batch aux)/dp_t,e per unit of scales.aux
  // model.precision = bfloat16 (T = float): tokens cross both all-to-alls as bf16 (pairs of
  // bf16 travel as one 32-bit word of T, so the dispatcher is unchanged and bytes_alltoall
  // halves); the experts read bf16 rows and bf16 weight copies and accumulate in fp32.
  // Redundant experts (r_ > 0): slot map, per-expert replica slots (CSR, ascending), the
  // per-group counts that pick a replica, and grow-never buffers sized once.
  std::int64_t r_ = 0;
  ParamStore<T>* store_ = nullptr;
  std::string prefix_;                               // "layerN"
  std::int64_t expert_size_ = 0;                     // W1 + b1 + W2 + b2 elements of one expert
  std::vector<std::int64_t> slot_expert_, old_map_;  // [E + r]
  std::vector<std::int64_t> rep_off_, rep_slot_;     // [E + 1], [E + r]
  std::vector<std::int64_t> rep_index_;              // [E] row in rep_buf_ (-1: one replica)
  std::int64_t multi_ = 0;                           // experts with more than one replica
  std::vector<std::int64_t> slot_count_;             // [E + r] rows given to a slot in a group
  std::vector<std::int32_t> kept_slot_;              // slot per kept assignment
  std::vector<double> eplb_load_;                    // [E]
  AlignedVector<T> rep_buf_;                         // [r x expert_size_]
  AlignedVector<T> move_tmp_, move_stage_;           // [3 x size], [per x 3 x size]
  std::int32_t pick_slot(std::int64_t expert, std::int64_t group_id);
  bool bf16_ = false;
  AlignedVector<experts::bf16> send16_, back16_;              // [send x d]
  AlignedVector<experts::bf16> ex_in16_, ex_out16_, ex_a16_;  // [recv x d|d|f]
  LayerStats stats_;
  double exchange_s_ = 0, expert_s_ = 0;
};

}  // namespace moesim::model
