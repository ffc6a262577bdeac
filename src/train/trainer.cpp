// The training loop (trainer.hpp).
#include "moesim/train/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <span>

#include "moesim/data/cluster_task.hpp"
#include "moesim/metrics/routing_metrics.hpp"
#include "moesim/model/model.hpp"
#include "moesim/perf/timers.hpp"
#include "moesim/train/checkpoint.hpp"
#include "moesim/train/optimizer.hpp"

namespace moesim::train {
namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

template <typename T>
class Trainer {
 public:
  Trainer(const Config& cfg, const comm::Comm& comm, Observer* observer)
      : cfg_(cfg),
        comm_(comm),
        observer_(comm.rank() == 0 ? observer : nullptr),
        P_(comm.size()),
        B_(cfg.data.tokens_per_step),
        N_(B_ / P_),
        Be_(cfg.data.eval_tokens),
        Ne_(Be_ / P_),
        L_(cfg.model.layers),
        E_(cfg.routing.num_experts),
        task_(cfg.data, cfg.training.seed),
        // Expert replicas (fewer experts than ranks) average gradients within their set.
        replica_comm_(comm.split(
            comm.rank() % std::min<int>(comm.size(), static_cast<int>(cfg.routing.num_experts)),
            comm.rank())),
        model_(cfg, comm, N_, Ne_),
        opt_(cfg.training, model_.params()) {
    const std::int64_t S = cfg.routing.group_size > 0 ? cfg.routing.group_size : N_;
    global_groups_ = B_ / S;
    const auto D = static_cast<std::size_t>(cfg.data.input_dim);
    x_.resize(static_cast<std::size_t>(N_) * D);
    y_.resize(static_cast<std::size_t>(N_));
    xe_.resize(static_cast<std::size_t>(Ne_) * D);
    ye_.resize(static_cast<std::size_t>(Ne_));
    // The held-out set is fixed for the run: eval token ids [0, eval_tokens).
    ce_.resize(static_cast<std::size_t>(Ne_));
    task_.generate(Stream::data_eval, comm.rank() * Ne_, Ne_, xe_.data(), ye_.data(), ce_.data());
    traffic_.assign(static_cast<std::size_t>(P_), 0);
  }

  RunResult run() {
    RunResult res;
    const std::int64_t steps = cfg_.training.steps;
    std::vector<double> step_times;
    res.start_step = maybe_resume();
    if (res.start_step == 0) evaluate(0, res);
    const std::int64_t every_ckpt = cfg_.checkpoint.every;
    for (std::int64_t step = res.start_step; step < steps; ++step) {
      io::StepRecord rec = train_step(step);
      res.loss.push_back(rec.loss);
      res.task_loss.push_back(rec.task_loss);
      res.aux_loss.push_back(rec.aux_loss);
      res.z_loss.push_back(rec.z_loss);
      res.dropped_fraction.push_back(rec.dropped_fraction);
      step_times.push_back(rec.time_step);
      if (observer_) observer_->on_step(rec);
      const std::int64_t done = step + 1;
      const std::int64_t every = cfg_.training.eval_every;
      if ((every > 0 && done % every == 0) || done == steps) evaluate(done, res);
      const bool periodic = every_ckpt > 0 && done % every_ckpt == 0;
      if (periodic || stop_all_)
        save_checkpoint(checkpoint_path(cfg_), done, model_, opt_, cfg_, comm_);
      if (stop_all_ &&
          done < steps) {  // preempted: the checkpoint above lets a requeued job continue
        res.preempted = true;
        break;
      }
    }
    for (double t : step_times) res.train_seconds += t;
    res.tokens_per_second =
        res.train_seconds > 0 ? static_cast<double>(B_ * steps) / res.train_seconds : 0;
    res.step_time_median = median(step_times);
    double dsum = 0;
    for (double d : res.dropped_fraction) dsum += d;
    res.dropped_fraction_mean =
        res.dropped_fraction.empty() ? 0 : dsum / static_cast<double>(res.dropped_fraction.size());
    if (comm_.rank() == 0) res.traffic_tokens.assign(static_cast<std::size_t>(P_ * P_), 0);
    comm_.gather(std::span<const std::int64_t>(traffic_),
                 std::span<std::int64_t>(res.traffic_tokens), 0);
    return res;
  }

 private:
  io::StepRecord train_step(std::int64_t step) {
    using perf::Phase;
    perf::PhaseTimes times;
    const auto t0 = Clock::now();
    for (int l = 0; l < L_; ++l) model_.layer(l).reset_bytes();
    task_.generate(Stream::data_train, step * B_ + comm_.rank() * N_, N_, x_.data(), y_.data(),
                   nullptr);
    model_.params().zero_grads();
    const model::ForwardSums sums =
        model_.forward(x_.data(), y_.data(), N_, true, &times,
                       model::PassInfo{step, step * B_ + comm_.rank() * N_});
    {
      perf::ScopedTimer timer(&times, Phase::backward);
      model_.backward(B_, global_groups_);
    }
    {
      perf::ScopedTimer timer(&times, Phase::sync);
      // Replicated parameters: one fused allreduce of the whole gradient arena.
      comm_.allreduce(model_.params().grads(ParamKind::replicated), comm::ReduceOp::sum);
      if (replica_comm_.size() > 1)
        replica_comm_.allreduce(model_.params().grads(ParamKind::expert), comm::ReduceOp::sum);
      opt_.step(model_.params());
      model_.refresh_low_precision();  // bf16 copies of the expert weights
    }
    const double local_step = std::chrono::duration<double>(Clock::now() - t0).count();

    // One SUM allreduce of every count (exact in double below 2^53) and one MAX of times.
    const auto LE = static_cast<std::size_t>(L_ * E_);
    std::vector<double>& sum = sum_;       // member: no per-step allocation
    const std::size_t extra = 5 + 2 * LE;  // aux_gshard, importance, load sums
    sum.assign(extra + 3 + 1, 0.0);
    sum[0] = sums.ce_sum;
    for (int l = 0; l < L_; ++l) {
      const model::LayerStats& st = model_.layer(l).stats();
      sum[1] += st.aux_sum;
      sum[2] += st.z_sum;
      sum[extra] += st.aux_gshard_sum;
      sum[extra + 1] += st.importance_sum;
      sum[extra + 2] += st.load_sum;
      sum[3] += static_cast<double>(st.dropped);
      sum[4] += static_cast<double>(st.assignments);
      for (std::int64_t e = 0; e < E_; ++e) {
        sum[5 + static_cast<std::size_t>(l * E_ + e)] =
            static_cast<double>(st.routed[static_cast<std::size_t>(e)]);
        sum[5 + LE + static_cast<std::size_t>(l * E_ + e)] =
            static_cast<double>(st.kept[static_cast<std::size_t>(e)]);
      }
      for (int p = 0; p < P_; ++p)
        traffic_[static_cast<std::size_t>(p)] += st.sent_to[static_cast<std::size_t>(p)];
    }
    double bytes = 0;
    for (int l = 0; l < L_; ++l) bytes += static_cast<double>(model_.layer(l).bytes_sent());
    sum.back() = bytes;
    comm_.allreduce(std::span<double>(sum), comm::ReduceOp::sum);
    // Aux-loss-free balancing: every rank updates b from the same global loads.
    for (int l = 0; l < L_; ++l)
      model_.layer(l).update_bias(std::span<const double>(sum).subspan(
          5 + static_cast<std::size_t>(l * E_), static_cast<std::size_t>(E_)));
    std::vector<double>& mx = max_;
    mx.assign(times.seconds.begin(), times.seconds.end());
    mx.push_back(stop_requested() ? 1.0 : 0.0);  // a signal on any rank stops every rank
    mx.push_back(local_step);
    comm_.allreduce(std::span<double>(mx), comm::ReduceOp::max);
    stop_all_ = mx[mx.size() - 2] > 0;

    io::StepRecord rec;
    rec.step = step;
    const double groups = static_cast<double>(global_groups_) * static_cast<double>(L_);
    rec.task_loss = sum[0] / static_cast<double>(B_);
    rec.aux_loss = sum[1] / groups;
    rec.z_loss = sum[2] / groups;
    rec.aux_gshard_loss = sum[extra] / groups;
    rec.importance_loss = sum[extra + 1] / groups;
    rec.load_loss = sum[extra + 2] / groups;
    const RoutingConfig& rc = cfg_.routing;
    rec.loss = rec.task_loss + rc.aux_loss_coef * rec.aux_loss +
               rc.aux_gshard_loss_coef * rec.aux_gshard_loss +
               rc.importance_loss_coef * rec.importance_loss + rc.load_loss_coef * rec.load_loss +
               rc.z_loss_coef * rec.z_loss;
    rec.dropped_fraction = sum[4] > 0 ? sum[3] / sum[4] : 0.0;
    rec.expert_load.resize(LE);
    rec.expert_kept.resize(LE);
    for (std::size_t i = 0; i < LE; ++i) {
      rec.expert_load[i] = static_cast<std::int64_t>(sum[5 + i]);
      rec.expert_kept[i] = static_cast<std::int64_t>(sum[5 + LE + i]);
    }
    rec.bytes_alltoall = static_cast<std::int64_t>(sum.back());
    rec.time_gate = mx[static_cast<std::size_t>(Phase::gate)];
    rec.time_dispatch = mx[static_cast<std::size_t>(Phase::dispatch)];
    rec.time_expert = mx[static_cast<std::size_t>(Phase::expert)];
    rec.time_combine = mx[static_cast<std::size_t>(Phase::combine)];
    rec.time_backward = mx[static_cast<std::size_t>(Phase::backward)];
    rec.time_sync = mx[static_cast<std::size_t>(Phase::sync)];
    rec.time_step = mx.back();
    // Research metrics: per-layer load imbalance, and this step's rank x rank traffic.
    for (int l = 0; l < L_; ++l)
      rec.load_imbalance.push_back(metrics::load_imbalance(
          std::span<const std::int64_t>(rec.expert_load)
              .subspan(static_cast<std::size_t>(l * E_), static_cast<std::size_t>(E_))));
    step_sent_.assign(static_cast<std::size_t>(P_), 0);
    for (int l = 0; l < L_; ++l)
      for (int p = 0; p < P_; ++p)
        step_sent_[static_cast<std::size_t>(p)] +=
            model_.layer(l).stats().sent_to[static_cast<std::size_t>(p)];
    if (comm_.rank() == 0) rec.traffic_tokens.assign(static_cast<std::size_t>(P_ * P_), 0);
    comm_.gather(std::span<const std::int64_t>(step_sent_),
                 std::span<std::int64_t>(rec.traffic_tokens), 0);
    return rec;
  }

  // checkpoint.resume with an existing checkpoint: load it and return its step (else 0).
  std::int64_t maybe_resume() {
    if (!cfg_.checkpoint.resume) return 0;
    const std::string path = checkpoint_path(cfg_);
    std::int64_t exists = 0;
    if (comm_.rank() == 0) exists = std::filesystem::exists(path) ? 1 : 0;
    comm_.bcast(std::span<std::int64_t>(&exists, 1), 0);
    if (!exists) return 0;  // nothing to resume: a fresh start (first attempt of a job)
    const std::int64_t step = load_checkpoint(path, model_, opt_, comm_);
    model_.refresh_low_precision();
    return step;
  }

  void evaluate(std::int64_t done, RunResult& res) {
    const model::ForwardSums s = model_.forward(xe_.data(), ye_.data(), Ne_, false, nullptr,
                                                model::PassInfo{done, comm_.rank() * Ne_});
    std::vector<double> v{s.ce_sum, static_cast<double>(s.correct), 0.0, 0.0};
    for (int l = 0; l < L_; ++l) {
      v[2] += static_cast<double>(model_.layer(l).stats().dropped);
      v[3] += static_cast<double>(model_.layer(l).stats().assignments);
    }
    for (std::int64_t c : s.confusion) v.push_back(static_cast<double>(c));
    comm_.allreduce(std::span<double>(v), comm::ReduceOp::sum);
    io::EvalRecord rec;
    rec.step = done;
    rec.loss = v[0] / static_cast<double>(Be_);
    rec.accuracy = v[1] / static_cast<double>(Be_);
    rec.dropped_fraction = v[3] > 0 ? v[2] / v[3] : 0.0;
    // Macro F1 over the classes: F1_c = 2 TP / (2 TP + FP + FN); confusion is [true][pred].
    double f1 = 0;
    constexpr int C = data::kNumClasses;
    for (int c = 0; c < C; ++c) {
      const double tp = v[4 + static_cast<std::size_t>(c * C + c)];
      double fp = 0, fn = 0;
      for (int o = 0; o < C; ++o) {
        if (o == c) continue;
        fp += v[4 + static_cast<std::size_t>(o * C + c)];
        fn += v[4 + static_cast<std::size_t>(c * C + o)];
      }
      f1 += (2 * tp + fp + fn) > 0 ? 2 * tp / (2 * tp + fp + fn) : 0.0;
    }
    rec.macro_f1 = f1 / C;
    // Router specialisation: first-choice expert of each held-out token vs its cluster.
    const std::int64_t K = cfg_.data.num_clusters;
    cluster_expert_.assign(static_cast<std::size_t>(L_ * K * E_), 0);
    for (int l = 0; l < L_; ++l) {
      const std::int64_t S = model_.layer(l).router(false).group_tokens();
      const auto& groups = model_.layer(l).groups();
      for (std::size_t g = 0; g < groups.size(); ++g)
        for (const auto& c : groups[g].cands) {
          if (c.choice != 0) continue;
          const std::int64_t t = static_cast<std::int64_t>(g) * S + c.token;
          ++cluster_expert_[static_cast<std::size_t>(
              (l * K + ce_[static_cast<std::size_t>(t)]) * E_ + c.expert)];
        }
    }
    comm_.allreduce(std::span<std::int64_t>(cluster_expert_), comm::ReduceOp::sum);
    for (int l = 0; l < L_; ++l) {
      const auto table =
          std::span<const std::int64_t>(cluster_expert_)
              .subspan(static_cast<std::size_t>(l * K * E_), static_cast<std::size_t>(K * E_));
      rec.specialization.push_back(metrics::specialization(table, K, E_));
      rec.cluster_expert_mi.push_back(metrics::mutual_information(table, K, E_));
    }
    rec.cluster_expert = cluster_expert_;
    res.evals.push_back(rec);
    if (observer_) observer_->on_eval(rec);
  }

  const Config& cfg_;
  const comm::Comm& comm_;
  Observer* observer_;
  int P_;
  std::int64_t B_, N_, Be_, Ne_;
  int L_;
  std::int64_t E_;
  std::int64_t global_groups_ = 1;
  data::ClusterTask task_;
  comm::Comm replica_comm_;  // the ranks holding the same experts (size 1 unless E < P)
  model::Model<T> model_;
  Optimizer<T> opt_;
  AlignedVector<T> x_, xe_;
  std::vector<std::int32_t> y_, ye_, ce_;  // labels; ce_: clusters of the held-out tokens
  std::vector<std::int64_t> step_sent_, cluster_expert_;  // metric scratch
  std::vector<std::int64_t> traffic_;  // rows this rank dispatched to each rank, whole run
  std::vector<double> sum_, max_;      // per-step reduction buffers
  bool stop_all_ = false;              // some rank was asked to stop (signal)
};

}  // namespace

RunResult train(const Config& cfg, const comm::Comm& comm, Observer* observer) {
  if (cfg.model.precision == Precision::float64) return Trainer<double>(cfg, comm, observer).run();
  return Trainer<float>(cfg, comm, observer).run();
}

}  // namespace moesim::train
