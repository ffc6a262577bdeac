// The training loop (trainer.hpp).
#include "moesim/train/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <span>

#include "moesim/data/cluster_task.hpp"
#include "moesim/dispatch/dispatcher.hpp"
#include "moesim/dispatch/eplb.hpp"
#include "moesim/metrics/routing_metrics.hpp"
#include "moesim/model/model.hpp"
#include "moesim/perf/timers.hpp"
#include "moesim/train/checkpoint.hpp"
#include "moesim/train/optimizer.hpp"

namespace moesim::train {
namespace {

using Clock = std::chrono::steady_clock;

// A flat buffer of doubles reduced in one collective, addressed by named slots laid out once.
class ReductionSlots {
 public:
  std::size_t add(std::size_t n) {  // returns the first index of n new slots
    const std::size_t at = size_;
    size_ += n;
    return at;
  }
  void reset() { v_.assign(size_, 0.0); }  // keeps capacity: no allocation after the first
  double& operator[](std::size_t i) { return v_[i]; }
  double operator[](std::size_t i) const { return v_[i]; }
  std::span<double> values() { return v_; }
  std::span<const double> slice(std::size_t at, std::size_t n) const {
    return std::span<const double>(v_).subspan(at, n);
  }

 private:
  std::size_t size_ = 0;
  std::vector<double> v_;
};

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
        placement_{cfg.routing.num_experts + cfg.routing.redundant_experts, comm.size(),
                   comm.rank()},
        // Expert replicas (fewer experts than ranks) sum gradients within their set.
        replica_comm_(comm.split(placement_.replica_set(), comm.rank())),
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
    // Named slots of the per-step reductions (one SUM allreduce, one MAX allreduce).
    const auto LE = static_cast<std::size_t>(L_ * E_);
    slot_.ce = sums_.add(1);
    slot_.aux = sums_.add(1);
    slot_.z = sums_.add(1);
    slot_.aux_gshard = sums_.add(1);
    slot_.importance = sums_.add(1);
    slot_.load = sums_.add(1);
    slot_.dropped = sums_.add(1);
    slot_.assignments = sums_.add(1);
    slot_.bytes = sums_.add(1);
    slot_.bytes_inter = sums_.add(1);
    slot_.bytes_intra = sums_.add(1);
    slot_.routed = sums_.add(LE);
    slot_.kept = sums_.add(LE);
    slot_.phase = maxes_.add(static_cast<std::size_t>(perf::Phase::count));
    slot_.stop = maxes_.add(1);
    slot_.local_step = maxes_.add(1);
    slot_.nonfinite = maxes_.add(1);
    slot_.base_epsilon = maxes_.add(static_cast<std::size_t>(L_));
    sums_.reset();
    maxes_.reset();
  }

  RunResult run(std::int64_t resume_from) {
    RunResult res;
    const std::int64_t steps = cfg_.training.steps;
    res.start_step =
        resume_from > 0 ? load_checkpoint(checkpoint_path(cfg_), model_, opt_, comm_) : 0;
    totalled_through_ = res.start_step;
    model_.refresh_low_precision();  // bf16 copies from the (possibly loaded) master weights
    if (res.start_step == 0) evaluate(0, res);
    const std::int64_t every_ckpt = cfg_.checkpoint.every;
    for (std::int64_t step = res.start_step; step < steps; ++step) {
      io::StepRecord rec = train_step(step);
      res.loss.push_back(rec.loss);
      res.task_loss.push_back(rec.task_loss);
      res.aux_loss.push_back(rec.aux_loss);
      res.z_loss.push_back(rec.z_loss);
      res.dropped_fraction.push_back(rec.dropped_fraction);
      if (observer_) observer_->on_step(rec);
      const std::int64_t done = step + 1;
      if (diverged_) {  // stop here: no evaluation, no checkpoint of a broken state
        res.diverged = true;
        res.diverged_reason = divergence_message(step, rec);
        break;
      }
      const std::int64_t every = cfg_.training.eval_every;
      if ((every > 0 && done % every == 0) || done == steps) evaluate(done, res);
      // Periodic checkpoints, a final one (so a finished run can be extended with more
      // training.steps), and one when a stop was requested.
      const bool periodic = every_ckpt > 0 && (done % every_ckpt == 0 || done == steps);
      if (periodic || stop_all_) {
        if (observer_) observer_->on_checkpoint(done);  // rows reach the disk first
        update_traffic_total(done);                     // the sum that resumes with it
        save_checkpoint(checkpoint_path(cfg_), done, model_, opt_, cfg_, comm_);
      }
      // Redundant experts: re-place the slots from the last N steps' loads (before the
      // checkpoint, which then holds the new map and an empty window).
      const std::int64_t every_rebalance = cfg_.routing.rebalance_every;
      if (cfg_.routing.redundant_experts > 0 && every_rebalance > 0 && done % every_rebalance == 0)
        res.slots_moved += rebalance();
      if (stop_all_ && done < steps) {  // preempted: the checkpoint lets a requeued job continue
        res.preempted = true;
        break;
      }
    }
    // The run's traffic sum through its last step (unless a checkpoint just wrote it); a
    // diverged run is incomplete and keeps the sum of its last checkpoint.
    if (!res.diverged &&
        totalled_through_ != res.start_step + static_cast<std::int64_t>(res.loss.size()))
      update_traffic_total(res.start_step + static_cast<std::int64_t>(res.loss.size()));
    if (cfg_.routing.redundant_experts > 0) {
      res.replica_mismatches = 0;
      const std::vector<std::span<T>> arenas = expert_arenas();
      for (int l = 0; l < L_; ++l)
        res.replica_mismatches += model_.layer(l).replica_mismatches(arenas);
    }
    return res;
  }

 private:
  // The expert-kind arenas: values, then each optimizer state (same layout).
  std::vector<std::span<T>> expert_arenas() {
    std::vector<std::span<T>> arenas{model_.params().values(ParamKind::expert)};
    for (int s = 0; s < opt_.state_slots(); ++s) arenas.push_back(opt_.state(s, ParamKind::expert));
    return arenas;
  }

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
      // Redundant experts: the replicas of an expert sum their gradients.
      for (int l = 0; l < L_; ++l) model_.layer(l).sum_replica_grads();
      opt_.step(model_.params());
      model_.refresh_low_precision();  // bf16 copies of the expert weights
    }
    const double local_step = std::chrono::duration<double>(Clock::now() - t0).count();

    // One SUM allreduce of every count (exact in double below 2^53) and one MAX of times.
    sums_.reset();
    for (int l = 0; l < L_; ++l) {
      const model::LayerStats& st = model_.layer(l).stats();
      sums_[slot_.aux] += st.aux_sum;
      sums_[slot_.z] += st.z_sum;
      sums_[slot_.aux_gshard] += st.aux_gshard_sum;
      sums_[slot_.importance] += st.importance_sum;
      sums_[slot_.load] += st.load_sum;
      sums_[slot_.dropped] += static_cast<double>(st.dropped);
      sums_[slot_.assignments] += static_cast<double>(st.assignments);
      for (std::int64_t e = 0; e < E_; ++e) {
        const auto i = static_cast<std::size_t>(l * E_ + e);
        sums_[slot_.routed + i] = static_cast<double>(st.routed[static_cast<std::size_t>(e)]);
        sums_[slot_.kept + i] = static_cast<double>(st.kept[static_cast<std::size_t>(e)]);
      }
      for (int p = 0; p < P_; ++p)
        traffic_[static_cast<std::size_t>(p)] += st.sent_to[static_cast<std::size_t>(p)];
      sums_[slot_.bytes] += static_cast<double>(model_.layer(l).bytes_sent());
      sums_[slot_.bytes_inter] += static_cast<double>(model_.layer(l).bytes_inter_node());
      sums_[slot_.bytes_intra] += static_cast<double>(model_.layer(l).bytes_intra_node());
    }
    sums_[slot_.ce] = sums.ce_sum;
    comm_.allreduce(sums_.values(), comm::ReduceOp::sum);
    // Redundant experts: the rows each expert computed (global kept counts) since the last
    // placement.
    if (cfg_.routing.redundant_experts > 0)
      for (int l = 0; l < L_; ++l) {
        const std::span<double> w = model_.layer(l).eplb_load();
        for (std::int64_t e = 0; e < E_; ++e)
          w[static_cast<std::size_t>(e)] +=
              sums_[slot_.kept + static_cast<std::size_t>(l * E_ + e)];
      }
    // Aux-loss-free balancing: every rank updates b from the same global loads.
    for (int l = 0; l < L_; ++l)
      model_.layer(l).update_bias(sums_.slice(slot_.routed + static_cast<std::size_t>(l * E_),
                                              static_cast<std::size_t>(E_)));
    maxes_.reset();
    for (std::size_t ph = 0; ph < times.seconds.size(); ++ph)
      maxes_[slot_.phase + ph] = times.seconds[ph];
    maxes_[slot_.stop] = stop_requested() ? 1.0 : 0.0;  // a signal on any rank stops every rank
    maxes_[slot_.local_step] = local_step;
    maxes_[slot_.nonfinite] = gradients_finite() ? 0.0 : 1.0;
    const bool base = cfg_.routing.rule == RoutingRuleKind::base;
    if (base)  // the final auction epsilon per layer, largest over the ranks
      for (int l = 0; l < L_; ++l)
        maxes_[slot_.base_epsilon + static_cast<std::size_t>(l)] =
            model_.layer(l).stats().base_epsilon;
    comm_.allreduce(maxes_.values(), comm::ReduceOp::max);
    stop_all_ = maxes_[slot_.stop] > 0;

    io::StepRecord rec;
    rec.step = step;
    const double groups = static_cast<double>(global_groups_) * static_cast<double>(L_);
    rec.task_loss = sums_[slot_.ce] / static_cast<double>(B_);
    rec.aux_loss = sums_[slot_.aux] / groups;
    rec.z_loss = sums_[slot_.z] / groups;
    rec.aux_gshard_loss = sums_[slot_.aux_gshard] / groups;
    rec.importance_loss = sums_[slot_.importance] / groups;
    rec.load_loss = sums_[slot_.load] / groups;
    const RoutingConfig& rc = cfg_.routing;
    rec.loss = rec.task_loss + rc.aux_loss_coef * rec.aux_loss +
               rc.aux_gshard_loss_coef * rec.aux_gshard_loss +
               rc.importance_loss_coef * rec.importance_loss + rc.load_loss_coef * rec.load_loss +
               rc.z_loss_coef * rec.z_loss;
    const double assignments = sums_[slot_.assignments];
    rec.dropped_fraction = assignments > 0 ? sums_[slot_.dropped] / assignments : 0.0;
    const auto LE = static_cast<std::size_t>(L_ * E_);
    rec.expert_load.resize(LE);
    rec.expert_kept.resize(LE);
    for (std::size_t i = 0; i < LE; ++i) {
      rec.expert_load[i] = static_cast<std::int64_t>(sums_[slot_.routed + i]);
      rec.expert_kept[i] = static_cast<std::int64_t>(sums_[slot_.kept + i]);
    }
    rec.bytes_alltoall = static_cast<std::int64_t>(sums_[slot_.bytes]);
    rec.bytes_inter_node = static_cast<std::int64_t>(sums_[slot_.bytes_inter]);
    rec.bytes_intra_node = static_cast<std::int64_t>(sums_[slot_.bytes_intra]);
    auto phase = [&](Phase p) { return maxes_[slot_.phase + static_cast<std::size_t>(p)]; };
    rec.time_gate = phase(Phase::gate);
    rec.time_dispatch = phase(Phase::dispatch);
    rec.time_expert = phase(Phase::expert);
    rec.time_combine = phase(Phase::combine);
    rec.time_backward = phase(Phase::backward);
    rec.time_sync = phase(Phase::sync);
    rec.time_step = maxes_[slot_.local_step];
    if (base) {
      const auto eps = maxes_.slice(slot_.base_epsilon, static_cast<std::size_t>(L_));
      rec.base_epsilon.assign(eps.begin(), eps.end());
    }
    diverged_ = maxes_[slot_.nonfinite] > 0 || !std::isfinite(rec.loss);
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
    // O(P) per step: what each rank sent. The P x P matrix is sampled (output.traffic_every)
    // and summed over the run (update_traffic_total), both streamed a block of rows at a time.
    std::int64_t sent = 0;
    for (const std::int64_t v : step_sent_) sent += v;
    if (comm_.rank() == 0) rec.tokens_sent.assign(static_cast<std::size_t>(P_), 0);
    comm_.gather(std::span<const std::int64_t>(&sent, 1), std::span<std::int64_t>(rec.tokens_sent),
                 0);
    if (cfg_.output.traffic_every > 0 && step % cfg_.output.traffic_every == 0)
      stream_traffic(io::ResultWriter::Traffic::sample, step, step_sent_);
    // Rows each rank's routed experts computed, per layer: gathered [P, L], written [L, P].
    rows_local_.assign(static_cast<std::size_t>(L_), 0);
    for (int l = 0; l < L_; ++l)
      rows_local_[static_cast<std::size_t>(l)] = model_.layer(l).stats().rows_computed;
    if (comm_.rank() == 0) rows_all_.assign(static_cast<std::size_t>(P_ * L_), 0);
    comm_.gather(std::span<const std::int64_t>(rows_local_), std::span<std::int64_t>(rows_all_), 0);
    if (comm_.rank() == 0) {
      rec.rank_rows.resize(static_cast<std::size_t>(L_ * P_));
      for (int l = 0; l < L_; ++l)
        for (int p = 0; p < P_; ++p)
          rec.rank_rows[static_cast<std::size_t>(l * P_ + p)] =
              rows_all_[static_cast<std::size_t>(p * L_ + l)];
    }
    if (cfg_.output.loads_every > 0 && step % cfg_.output.loads_every == 0) record_loads(rec);
    return rec;
  }

  // Every layer: the slot map of its window's loads, weights and optimizer state moved to it.
  // Returns the number of slots (all layers) that changed expert.
  std::int64_t rebalance() {
    const std::vector<std::span<T>> arenas = expert_arenas();
    std::int64_t moved = 0;
    for (int l = 0; l < L_; ++l) {
      model::MoELayer<T>& layer = model_.layer(l);
      const std::vector<std::int64_t> map =
          dispatch::eplb_placement(layer.eplb_load(), cfg_.routing.redundant_experts, P_);
      for (std::size_t s = 0; s < map.size(); ++s)
        moved += map[s] != layer.slot_expert()[s] ? 1 : 0;
      layer.rebalance(map, arenas);
      std::fill(layer.eplb_load().begin(), layer.eplb_load().end(), 0.0);
    }
    model_.refresh_low_precision();
    return moved;
  }

  // Collective: streams every rank's `row` of a P x P traffic matrix to rank 0's observer, a
  // block of rows at a time (rank 0 holds ~1 MiB of it, never P x P). A failure on rank 0
  // (the result file) is rethrown after every rank's row was received.
  void stream_traffic(io::ResultWriter::Traffic kind, std::int64_t step,
                      std::span<const std::int64_t> row) {
    std::exception_ptr failure;
    bool open = false;
    if (observer_) {
      try {
        observer_->on_traffic_begin(kind, step, P_);
        open = true;
      } catch (...) {
        failure = std::current_exception();
      }
    }
    const std::int64_t block = std::max<std::int64_t>(1, (std::int64_t{1} << 17) / P_);
    try {
      comm_.gather_rows_blocked<std::int64_t>(
          row, 0, block, [&](int first, int n, std::span<const std::int64_t> rows) {
            if (open) observer_->on_traffic_rows(first, n, rows);
          });
      if (open) observer_->on_traffic_end();
    } catch (...) {
      if (!failure) failure = std::current_exception();
    }
    if (failure) std::rethrow_exception(failure);
  }

  // Collective: adds the traffic since the last update to the result file's running sum,
  // which then covers the steps before `through_step` (a checkpoint of that step resumes it).
  void update_traffic_total(std::int64_t through_step) {
    stream_traffic(io::ResultWriter::Traffic::total, through_step, traffic_);
    std::fill(traffic_.begin(), traffic_.end(), 0);
    totalled_through_ = through_step;
  }

  // Per-(layer, group, expert) routed and kept counts of this step into rec.loads_* on rank 0
  // (moesim simulate's run: workload). Groups are numbered globally: rank r holds r*Gl..
  void record_loads(io::StepRecord& rec) {
    const std::int64_t Gl = global_groups_ / P_;
    const std::size_t cells = static_cast<std::size_t>(L_ * Gl * E_);
    loads_local_.assign(2 * cells, 0);
    for (int l = 0; l < L_; ++l) {
      const auto& groups = model_.layer(l).groups();
      for (std::int64_t g = 0; g < Gl; ++g)
        for (std::int64_t e = 0; e < E_; ++e) {
          const auto i = static_cast<std::size_t>((l * Gl + g) * E_ + e);
          loads_local_[i] = groups[static_cast<std::size_t>(g)].routed[static_cast<std::size_t>(e)];
          loads_local_[cells + i] =
              groups[static_cast<std::size_t>(g)].kept[static_cast<std::size_t>(e)];
        }
    }
    if (comm_.rank() == 0) loads_all_.assign(2 * cells * static_cast<std::size_t>(P_), 0);
    comm_.gather(std::span<const std::int64_t>(loads_local_), std::span<std::int64_t>(loads_all_),
                 0);
    if (comm_.rank() != 0) return;
    rec.loads_groups = global_groups_;
    rec.loads_group_size = B_ / global_groups_;
    const std::size_t total = cells * static_cast<std::size_t>(P_);
    rec.loads_routed.assign(total, 0);
    rec.loads_kept.assign(total, 0);
    for (int r = 0; r < P_; ++r)
      for (int l = 0; l < L_; ++l)
        for (std::int64_t g = 0; g < Gl; ++g)
          for (std::int64_t e = 0; e < E_; ++e) {
            const auto src = static_cast<std::size_t>(r) * 2 * cells +
                             static_cast<std::size_t>((l * Gl + g) * E_ + e);
            const auto dst = static_cast<std::size_t>((l * global_groups_ + r * Gl + g) * E_ + e);
            rec.loads_routed[dst] = loads_all_[src];
            rec.loads_kept[dst] = loads_all_[src + cells];
          }
  }

  // Every gradient entry finite? One pass in double (NaN and Inf propagate into the sum; a sum
  // beyond 1e308 of finite float gradients is a divergence too).
  bool gradients_finite() {
    double total = 0;
    for (const ParamKind k : {ParamKind::replicated, ParamKind::expert})
      for (const T g : model_.params().grads(k)) total += static_cast<double>(g);
    return std::isfinite(total);
  }

  std::string divergence_message(std::int64_t step, const io::StepRecord& rec) const {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "training diverged at step %lld: loss %g (task %g, aux %g, z %g)%s",
                  static_cast<long long>(step), rec.loss, rec.task_loss, rec.aux_loss, rec.z_loss,
                  maxes_[slot_.nonfinite] > 0 ? ", non-finite gradients" : "");
    return buf;
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
  dispatch::Placement placement_;  // where experts live (the one owner of the replica layout)
  comm::Comm replica_comm_;        // the ranks holding the same experts (size 1 unless E < P)
  model::Model<T> model_;
  Optimizer<T> opt_;
  AlignedVector<T> x_, xe_;
  std::vector<std::int32_t> y_, ye_, ce_;  // labels; ce_: clusters of the held-out tokens
  std::vector<std::int64_t> step_sent_, cluster_expert_;  // metric scratch
  std::vector<std::int64_t> rows_local_, rows_all_;       // rank_rows gather buffers
  std::vector<std::int64_t> traffic_;  // rows this rank dispatched to each rank since the last
                                       // update_traffic_total
  std::int64_t totalled_through_ = 0;  // steps the result file's traffic sum covers
  std::vector<std::int64_t> loads_local_, loads_all_;  // record_loads scratch (sampled steps)
  // Per-step reductions with named slots (allocated once in the constructor).
  struct Slots {
    std::size_t ce, aux, z, aux_gshard, importance, load, dropped, assignments, bytes;
    std::size_t bytes_inter, bytes_intra;  // the step's bytes by level (node boundary or not)
    std::size_t routed, kept;              // [L*E] each
    std::size_t phase, stop, local_step, nonfinite;  // MAX reduction
    std::size_t base_epsilon;                        // [L] MAX: routing.rule = base
  } slot_{};
  ReductionSlots sums_, maxes_;
  bool stop_all_ = false;  // some rank was asked to stop (signal)
  bool diverged_ = false;  // the last step had a non-finite loss or gradient
};

}  // namespace

RunResult train(const Config& cfg, const comm::Comm& comm, Observer* observer,
                std::int64_t resume_from) {
  if (cfg.model.precision == Precision::float64)
    return Trainer<double>(cfg, comm, observer).run(resume_from);
  return Trainer<float>(cfg, comm, observer).run(resume_from);
}

}  // namespace moesim::train
