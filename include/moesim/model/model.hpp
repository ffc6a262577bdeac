// The trained network: input projection -> L residual MoE layers -> classification head,
// with softmax cross-entropy. The loss it differentiates is
//   L = mean_t CE_t + sum over router losses r of r_coef * r,
// r in {aux, aux_gshard, importance, load, z}, each the mean over layers of (mean over all
// routing groups of the batch), i.e. exactly loss = task_loss + sum coef * logged value
// (outputs.md columns).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "moesim/comm/comm.hpp"
#include "moesim/config/config.hpp"
#include "moesim/model/moe_layer.hpp"
#include "moesim/perf/timers.hpp"
#include "moesim/util/aligned.hpp"
#include "moesim/util/params.hpp"

namespace moesim::model {

// Local (this rank's) sums of one forward pass; the trainer reduces them.
struct ForwardSums {
  double ce_sum = 0;                        // sum of cross-entropy over local tokens
  std::int64_t correct = 0;                 // argmax == label
  std::array<std::int64_t, 4> confusion{};  // [true][pred] counts, 2 classes
};

template <typename T>
class Model {
 public:
  Model(const Config& cfg, const comm::Comm& comm, std::int64_t train_tokens,
        std::int64_t eval_tokens);

  // inputs [n x input_dim], labels [n]. pass: step and global id of the first token
  // (keys the routing randomness and hash experts; see MoELayer).
  ForwardSums forward(const T* inputs, const std::int32_t* labels, std::int64_t n, bool training,
                      perf::PhaseTimes* times, const PassInfo& pass = {});
  // Backward of the last (training) forward. global_tokens: batch size over all ranks;
  // global_groups: routing groups per layer over all ranks.
  void backward(std::int64_t global_tokens, std::int64_t global_groups);

  [[nodiscard]] ParamStore<T>& params() { return store_; }
  // Re-derives low-precision weight copies (model.precision = bfloat16) from the master
  // weights: after every optimizer step and checkpoint load.
  void refresh_low_precision() {
    for (auto& l : layers_) l->refresh_low_precision();
  }
  // Activation entering layer l (l = num_layers(): the head's input), [n x d_model].
  [[nodiscard]] const T* activation(int l) const {
    return act_[static_cast<std::size_t>(l)].data();
  }
  [[nodiscard]] int num_layers() const { return static_cast<int>(layers_.size()); }
  [[nodiscard]] MoELayer<T>& layer(int i) { return *layers_[static_cast<std::size_t>(i)]; }
  [[nodiscard]] const MoELayer<T>& layer(int i) const {
    return *layers_[static_cast<std::size_t>(i)];
  }

 private:
  Config cfg_;
  std::int64_t in_dim_, d_;
  ParamStore<T> store_;
  int w_in_, b_in_, w_head_, b_head_;
  std::vector<std::unique_ptr<MoELayer<T>>> layers_;
  const T* inputs_ = nullptr;
  const std::int32_t* labels_ = nullptr;
  std::int64_t n_ = 0;
  std::vector<AlignedVector<T>> act_;  // [L+1] activations [n x d]
  AlignedVector<T> logits_;            // [n x 2]
  std::vector<double> class_probs_;    // [n x 2]
  AlignedVector<T> grad_a_, grad_b_;   // [n x d] ping-pong gradients
};

}  // namespace moesim::model
