// Model forward/backward (model.hpp).
#include "moesim/model/model.hpp"

#include <algorithm>
#include <cmath>

#include "moesim/data/cluster_task.hpp"
#include "moesim/util/eigen_maps.hpp"

namespace moesim::model {
namespace {
using eigen::CMapM;
using eigen::CMapRow;
using eigen::MapM;
using eigen::MapRow;
using eigen::RowMat;
constexpr std::int64_t C = data::kNumClasses;
}  // namespace

template <typename T>
Model<T>::Model(const Config& cfg, const comm::Comm& comm, std::int64_t train_tokens,
                std::int64_t eval_tokens)
    : cfg_(cfg), in_dim_(cfg.data.input_dim), d_(cfg.model.d_model) {
  const double s = cfg.model.init_scale;
  w_in_ = store_.add("input.w", ParamKind::replicated, in_dim_ * d_,
                     s / std::sqrt(static_cast<double>(in_dim_)));
  b_in_ = store_.add("input.b", ParamKind::replicated, d_, 0.0);
  for (int l = 0; l < cfg.model.layers; ++l)
    layers_.push_back(
        std::make_unique<MoELayer<T>>(cfg, l, comm, store_, train_tokens, eval_tokens));
  w_head_ =
      store_.add("head.w", ParamKind::replicated, d_ * C, s / std::sqrt(static_cast<double>(d_)));
  b_head_ = store_.add("head.b", ParamKind::replicated, C, 0.0);
  // Replicated tensors are identical everywhere: rank 0 writes them into checkpoints.
  for (std::size_t id = 0; id < store_.entries().size(); ++id)
    if (store_.entry(static_cast<int>(id)).kind == ParamKind::replicated)
      store_.set_checkpoint_writer(static_cast<int>(id), comm.rank() == 0);
  store_.allocate();
  store_.initialize(cfg.training.seed);
  for (auto& layer : layers_) layer->bind(store_);
  const std::int64_t n = std::max(train_tokens, eval_tokens);
  act_.assign(static_cast<std::size_t>(cfg.model.layers) + 1,
              AlignedVector<T>(static_cast<std::size_t>(n * d_)));
  logits_.resize(static_cast<std::size_t>(n * C));
  class_probs_.resize(static_cast<std::size_t>(n * C));
  grad_a_.resize(static_cast<std::size_t>(n * d_));
  grad_b_.resize(static_cast<std::size_t>(n * d_));
}

template <typename T>
ForwardSums Model<T>::forward(const T* inputs, const std::int32_t* labels, std::int64_t n,
                              bool training, perf::PhaseTimes* times, const PassInfo& pass) {
  inputs_ = inputs;
  labels_ = labels;
  n_ = n;
  MapM<T> h0(act_[0].data(), n, d_);
  h0.noalias() = CMapM<T>(inputs, n, in_dim_) * CMapM<T>(store_.value(w_in_), in_dim_, d_);
  h0.rowwise() += CMapRow<T>(store_.value(b_in_), d_);
  for (std::size_t l = 0; l < layers_.size(); ++l)
    layers_[l]->forward(act_[l].data(), act_[l + 1].data(), n, training, times, pass);
  MapM<T> logits(logits_.data(), n, C);
  logits.noalias() = CMapM<T>(act_.back().data(), n, d_) * CMapM<T>(store_.value(w_head_), d_, C);
  logits.rowwise() += CMapRow<T>(store_.value(b_head_), C);

  ForwardSums sums;
  for (std::int64_t t = 0; t < n; ++t) {
    const T* z = logits_.data() + t * C;
    double m = static_cast<double>(z[0]);
    for (std::int64_t c = 1; c < C; ++c) m = std::max(m, static_cast<double>(z[c]));
    double s = 0;
    for (std::int64_t c = 0; c < C; ++c) s += std::exp(static_cast<double>(z[c]) - m);
    const double lse = m + std::log(s);
    std::int64_t pred = 0;
    for (std::int64_t c = 0; c < C; ++c) {
      class_probs_[static_cast<std::size_t>(t * C + c)] = std::exp(static_cast<double>(z[c]) - lse);
      if (z[c] > z[pred]) pred = c;
    }
    const std::int32_t y = labels[t];
    sums.ce_sum += lse - static_cast<double>(z[y]);
    sums.correct += pred == y ? 1 : 0;
    ++sums.confusion[static_cast<std::size_t>(y * C + pred)];
  }
  return sums;
}

template <typename T>
void Model<T>::backward(std::int64_t global_tokens, std::int64_t global_groups) {
  const std::int64_t n = n_;
  // dCE/dlogits = (softmax - onehot) / B  (mean over the global batch).
  const double inv_b = 1.0 / static_cast<double>(global_tokens);
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t c = 0; c < C; ++c)
      logits_[static_cast<std::size_t>(t * C + c)] = static_cast<T>(
          (class_probs_[static_cast<std::size_t>(t * C + c)] - (labels_[t] == c ? 1.0 : 0.0)) *
          inv_b);
  CMapM<T> dlogits(logits_.data(), n, C);
  MapM<T>(store_.grad(w_head_), d_, C).noalias() +=
      CMapM<T>(act_.back().data(), n, d_).transpose() * dlogits;
  MapRow<T>(store_.grad(b_head_), C) += dlogits.colwise().sum();
  MapM<T>(grad_a_.data(), n, d_).noalias() =
      dlogits * CMapM<T>(store_.value(w_head_), d_, C).transpose();

  // Each logged router loss is a mean over layers and groups: dL/d(one group's value).
  const double per_group =
      1.0 / (static_cast<double>(layers_.size()) * static_cast<double>(global_groups));
  routing::LossScales scales;
  scales.aux = cfg_.routing.aux_loss_coef * per_group;
  scales.aux_gshard = cfg_.routing.aux_gshard_loss_coef * per_group;
  scales.importance = cfg_.routing.importance_loss_coef * per_group;
  scales.load = cfg_.routing.load_loss_coef * per_group;
  scales.z = cfg_.routing.z_loss_coef * per_group;
  T* dy = grad_a_.data();
  T* dx = grad_b_.data();
  for (std::size_t l = layers_.size(); l-- > 0;) {
    layers_[l]->backward(dy, dx, scales);
    std::swap(dy, dx);
  }
  CMapM<T> dh0(dy, n, d_);
  MapM<T>(store_.grad(w_in_), in_dim_, d_).noalias() +=
      CMapM<T>(inputs_, n, in_dim_).transpose() * dh0;
  MapRow<T>(store_.grad(b_in_), d_) += dh0.colwise().sum();
}

template class Model<float>;
template class Model<double>;

}  // namespace moesim::model
