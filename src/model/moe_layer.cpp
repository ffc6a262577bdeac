// The distributed MoE layer: forward and backward (moe_layer.hpp).
#include "moesim/model/moe_layer.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "moesim/dispatch/eplb.hpp"
#include "moesim/experts/gemm.hpp"
#include "moesim/routing/losses.hpp"
#include "moesim/routing/random.hpp"
#include "moesim/util/eigen_maps.hpp"

namespace moesim::model {
namespace {

using eigen::CMapM;
using eigen::MapM;
using eigen::RowMat;

// Grow-only sizing: after the first steps no buffer is reallocated.
template <typename V>
void ensure(V& v, std::int64_t n) {
  if (static_cast<std::int64_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

std::int64_t group_tokens(const RoutingConfig& r, std::int64_t share) {
  return r.group_size > 0 ? r.group_size : share;
}

// A bf16 buffer as the T words the dispatcher moves (bf16 mode runs with T = float: a
// word carries two bf16 values; MPI and the dispatcher's copies move the bytes unchanged).
template <typename T>
T* words(AlignedVector<experts::bf16>& v) {
  return reinterpret_cast<T*>(v.data());
}

}  // namespace

template <typename T>
MoELayer<T>::MoELayer(const Config& cfg, int index, const comm::Comm& comm, ParamStore<T>& store,
                      std::int64_t train_tokens, std::int64_t eval_tokens)
    : comm_(comm),
      d_(cfg.model.d_model),
      f_(cfg.model.d_ff),
      E_(cfg.routing.num_experts),
      index_(index),
      // Redundant experts: E + r slots placed like E + r experts (one replica group).
      placement_{cfg.routing.num_experts + cfg.routing.redundant_experts, comm.size(), comm.rank()},
      router_train_(
          std::make_unique<routing::Router>(cfg.routing, group_tokens(cfg.routing, train_tokens))),
      router_eval_(
          std::make_unique<routing::Router>(cfg.routing, group_tokens(cfg.routing, eval_tokens))),
      dispatcher_(dispatch::make_dispatcher<T>(cfg.routing.dispatch, comm, placement_)),
      experts_(store, "layer" + std::to_string(index), placement_.first_local(),
               placement_.per_rank(), cfg.model.d_model, cfg.model.d_ff, cfg.model.activation,
               cfg.model.init_scale, ParamKind::expert,
               cfg.model.precision == Precision::bfloat16 && std::is_same_v<T, float>),
      shared_(cfg.routing.shared_experts),
      shared_bank_(store, "layer" + std::to_string(index) + ".shared", 0,
                   cfg.routing.shared_experts, cfg.model.d_model, cfg.model.d_ff,
                   cfg.model.activation, cfg.model.init_scale, ParamKind::replicated),
      seed_(cfg.training.seed),
      gate_(cfg, index, store, router_train_->rule().learned(),
            std::max(train_tokens, eval_tokens)),
      aux_batch_(cfg.routing.aux_scope == AuxScope::batch && router_train_->rule().learned()),
      bf16_(cfg.model.precision == Precision::bfloat16 && std::is_same_v<T, float>) {
  batch_sums_.resize(static_cast<std::size_t>(2 * E_ + 2));
  r_ = cfg.routing.redundant_experts;
  store_ = &store;
  prefix_ = "layer" + std::to_string(index);
  expert_size_ = 2 * d_ * f_ + f_ + d_;
  if (r_ > 0) {
    const std::int64_t slots = E_ + r_;
    old_map_.resize(static_cast<std::size_t>(slots));
    slot_count_.resize(static_cast<std::size_t>(slots));
    eplb_load_.assign(static_cast<std::size_t>(E_), 0.0);
    rep_buf_.resize(static_cast<std::size_t>(r_ * expert_size_));
    move_tmp_.resize(static_cast<std::size_t>(3 * expert_size_));
    move_stage_.resize(static_cast<std::size_t>(placement_.per_rank() * 3 * expert_size_));
    // Before allocate() and initialize(): replicas of an expert get its name, hence its values.
    set_slot_expert(dispatch::eplb_initial_placement(E_, r_, comm.size()));
  } else {
    // Expert replica groups (E < P): the first group writes the experts into checkpoints.
    for (std::int64_t j = 0; j < experts_.count(); ++j)
      for (const int id : experts_.tensor_ids(j))
        store.set_checkpoint_writer(id, placement_.group() == 0);
  }
  batch_dp_.resize(static_cast<std::size_t>(E_));
  if (cfg.routing.overlap_degree > 1) {  // the chunked pipeline (docs/overlap.md)
    dispatcher_->set_chunks(static_cast<int>(cfg.routing.overlap_degree));
    experts_.set_progress([](void* d) { static_cast<dispatch::Dispatcher<T>*>(d)->progress(); },
                          dispatcher_.get());
  }
  const std::int64_t n = std::max(train_tokens, eval_tokens);
  if (shared_ > 0) {
    ensure(sh_in_, shared_ * n * d_);
    ensure(sh_out_, shared_ * n * d_);
    ensure(sh_h_, shared_ * n * f_);
    ensure(sh_a_, shared_ * n * f_);
    shared_off_.resize(static_cast<std::size_t>(shared_) + 1);
  }
  logits_.reserve(static_cast<std::size_t>(n * E_));
  probs_.reserve(static_cast<std::size_t>(n * E_));
  // Training-step buffers sized once for the most they can hold: the send side holds at
  // most train_tokens * (most candidates per token) rows; the receive side, when there is
  // a capacity C, at most (local experts) x (groups of all ranks) x C rows. Steps then stay
  // allocation-free even when routing moves load between experts (hash, random routing);
  // dropless routing still grows the receive side on demand.
  const std::int64_t kmax = router_train_->max_choices();
  const auto send_max = static_cast<std::size_t>(train_tokens * kmax);
  kept_token_.reserve(send_max);
  kept_expert_.reserve(send_max);
  if (r_ > 0) kept_slot_.reserve(send_max);
  kept_weight_.reserve(send_max);
  kept_cand_.reserve(send_max);
  dweight_.reserve(send_max);
  plan_.send_token.reserve(send_max);
  plan_.send_assignment.reserve(send_max);
  ensure(send_, train_tokens * kmax * d_);
  ensure(back_, train_tokens * kmax * d_);
  if (const std::int64_t C = router_train_->capacity(true); C >= 0) {
    const std::int64_t groups = train_tokens * comm.size() / router_train_->group_tokens();
    const std::int64_t rows =
        std::min(placement_.per_rank() * groups * C, train_tokens * comm.size() * kmax);
    ensure(ex_in_, rows * d_);
    ensure(ex_out_, rows * d_);
    ensure(ex_h_, rows * f_);
    ensure(ex_a_, rows * f_);
    if (bf16_) {
      ensure(ex_in16_, rows * d_);
      ensure(ex_out16_, rows * d_);
      ensure(ex_a16_, rows * f_);
    }
  }
  if (bf16_) {
    ensure(send16_, train_tokens * kmax * d_);
    ensure(back16_, train_tokens * kmax * d_);
  }
}

template <typename T>
void MoELayer<T>::bind(ParamStore<T>& store) {
  experts_.bind(store);
  shared_bank_.bind(store);
  gate_.bind(store);
}

template <typename T>
void MoELayer<T>::set_slot_expert(std::span<const std::int64_t> map) {
  const std::int64_t slots = E_ + r_;
  if (r_ <= 0 || static_cast<std::int64_t>(map.size()) != slots)
    throw std::logic_error("MoELayer::set_slot_expert: not a map of E + r slots");
  std::vector<std::int64_t> count(static_cast<std::size_t>(E_), 0);
  for (const std::int64_t e : map) {
    if (e < 0 || e >= E_) throw std::logic_error("MoELayer::set_slot_expert: expert out of range");
    ++count[static_cast<std::size_t>(e)];
  }
  for (const std::int64_t c : count)
    if (c == 0) throw std::logic_error("MoELayer::set_slot_expert: an expert has no slot");
  slot_expert_.assign(map.begin(), map.end());
  // Replica lists (slots ascending per expert) and the row of each replicated expert.
  rep_off_.assign(static_cast<std::size_t>(E_) + 1, 0);
  for (std::int64_t e = 0; e < E_; ++e)
    rep_off_[static_cast<std::size_t>(e) + 1] =
        rep_off_[static_cast<std::size_t>(e)] + count[static_cast<std::size_t>(e)];
  rep_slot_.assign(static_cast<std::size_t>(slots), 0);
  std::vector<std::int64_t> cursor(rep_off_.begin(), rep_off_.end() - 1);
  for (std::int64_t s = 0; s < slots; ++s)
    rep_slot_[static_cast<std::size_t>(
        cursor[static_cast<std::size_t>(map[static_cast<std::size_t>(s)])]++)] = s;
  rep_index_.assign(static_cast<std::size_t>(E_), -1);
  multi_ = 0;
  for (std::int64_t e = 0; e < E_; ++e)
    if (count[static_cast<std::size_t>(e)] > 1) rep_index_[static_cast<std::size_t>(e)] = multi_++;
  // This rank's slots: logical names and checkpoint writers.
  static const char* const kSuffix[] = {".w1", ".b1", ".w2", ".b2"};
  const std::int64_t first = placement_.first_local();
  for (std::int64_t j = 0; j < experts_.count(); ++j) {
    const std::int64_t s = first + j;
    const std::int64_t e = map[static_cast<std::size_t>(s)];
    const bool writer =
        rep_slot_[static_cast<std::size_t>(rep_off_[static_cast<std::size_t>(e)])] == s;
    const std::array<int, 4> ids = experts_.tensor_ids(j);
    for (std::size_t t = 0; t < ids.size(); ++t) {
      store_->rename(ids[t], prefix_ + ".expert" + std::to_string(e) + kSuffix[t]);
      store_->set_checkpoint_writer(ids[t], writer);
    }
  }
}

template <typename T>
std::int32_t MoELayer<T>::pick_slot(std::int64_t expert, std::int64_t group_id) {
  // The replica with the fewest rows given so far in this group; ties go to the first in the
  // order that starts at replica (global group id mod replicas), so that experts with one
  // row per group still spread over their replicas (a fixed "lowest slot" tie rule would
  // send every such row to the first replica).
  const auto b = static_cast<std::size_t>(rep_off_[static_cast<std::size_t>(expert)]);
  const auto c = static_cast<std::size_t>(rep_off_[static_cast<std::size_t>(expert) + 1]) - b;
  const auto start = static_cast<std::size_t>(group_id) % c;
  std::int64_t best = rep_slot_[b + start];
  for (std::size_t t = 1; t < c; ++t) {
    const std::int64_t s = rep_slot_[b + (start + t) % c];
    if (slot_count_[static_cast<std::size_t>(s)] < slot_count_[static_cast<std::size_t>(best)])
      best = s;
  }
  ++slot_count_[static_cast<std::size_t>(best)];
  return static_cast<std::int32_t>(best);
}

template <typename T>
void MoELayer<T>::sum_replica_grads() {
  if (r_ <= 0 || multi_ == 0) return;
  const std::size_t n = static_cast<std::size_t>(multi_ * expert_size_);
  std::fill_n(rep_buf_.begin(), n, T(0));
  const std::int64_t first = placement_.first_local();
  // Add, per local slot of a replicated expert, its gradient into the expert's row; sum over
  // all ranks; every replica takes the same sum.
  for (int pass = 0; pass < 2; ++pass) {
    for (std::int64_t j = 0; j < experts_.count(); ++j) {
      const std::int64_t row =
          rep_index_[static_cast<std::size_t>(slot_expert_[static_cast<std::size_t>(first + j)])];
      if (row < 0) continue;
      T* buf = rep_buf_.data() + row * expert_size_;
      for (const int id : experts_.tensor_ids(j)) {
        T* g = store_->grad(id);
        const std::int64_t size = store_->entry(id).size;
        if (pass == 0)
          for (std::int64_t i = 0; i < size; ++i) buf[i] += g[i];
        else
          std::copy_n(buf, size, g);
        buf += size;
      }
    }
    if (pass == 0) comm_.allreduce(std::span<T>(rep_buf_.data(), n), comm::ReduceOp::sum);
  }
}

template <typename T>
void MoELayer<T>::rebalance(std::span<const std::int64_t> map,
                            std::span<const std::span<T>> arenas) {
  if (r_ <= 0) return;
  const std::int64_t slots = E_ + r_;
  if (static_cast<std::int64_t>(map.size()) != slots || arenas.size() > 3)
    throw std::logic_error("MoELayer::rebalance: bad map or arenas");
  std::copy(slot_expert_.begin(), slot_expert_.end(), old_map_.begin());
  const std::int64_t first = placement_.first_local();
  const std::int64_t per = placement_.per_rank();
  const std::int64_t chunk = static_cast<std::int64_t>(arenas.size()) * expert_size_;
  // Copies slot j's tensors out of (or into) every arena, as one chunk.
  auto io = [&](std::int64_t j, T* chunk_data, bool out) {
    T* c = chunk_data;
    for (const std::span<T>& a : arenas)
      for (const int id : experts_.tensor_ids(j)) {
        const auto& e = store_->entry(id);
        T* v = a.data() + e.offset;
        if (out)
          std::copy_n(v, e.size, c);
        else
          std::copy_n(c, e.size, v);
        c += e.size;
      }
  };
  // Experts in ascending order; each one a new slot needs is broadcast once from its first
  // old holder, before any slot is overwritten (staged per receiving slot).
  for (std::int64_t e = 0; e < E_; ++e) {
    bool needed = false;
    for (std::int64_t s = 0; s < slots; ++s)
      needed = needed || (map[static_cast<std::size_t>(s)] == e &&
                          old_map_[static_cast<std::size_t>(s)] != e);
    if (!needed) continue;
    const std::int64_t src =
        rep_slot_[static_cast<std::size_t>(rep_off_[static_cast<std::size_t>(e)])];
    const int root = static_cast<int>(src / per);
    if (comm_.rank() == root) io(src - first, move_tmp_.data(), true);
    comm_.bcast(std::span<T>(move_tmp_.data(), static_cast<std::size_t>(chunk)), root);
    for (std::int64_t j = 0; j < per; ++j) {
      const auto s = static_cast<std::size_t>(first + j);
      if (map[s] == e && old_map_[s] != e)
        std::copy_n(move_tmp_.data(), chunk, move_stage_.data() + j * chunk);
    }
  }
  for (std::int64_t j = 0; j < per; ++j) {
    const auto s = static_cast<std::size_t>(first + j);
    if (map[s] != old_map_[s]) io(j, move_stage_.data() + j * chunk, false);
  }
  set_slot_expert(map);
}

template <typename T>
std::int64_t MoELayer<T>::replica_mismatches(std::span<const std::span<T>> arenas) {
  if (r_ <= 0) return 0;
  const std::int64_t first = placement_.first_local();
  const std::int64_t per = placement_.per_rank();
  std::int64_t bad = 0;
  for (std::int64_t e = 0; e < E_; ++e) {
    const auto b = static_cast<std::size_t>(rep_off_[static_cast<std::size_t>(e)]);
    const auto end = static_cast<std::size_t>(rep_off_[static_cast<std::size_t>(e) + 1]);
    if (end - b < 2) continue;
    const std::int64_t src = rep_slot_[b];
    const int root = static_cast<int>(src / per);
    for (const std::span<T>& a : arenas) {
      const std::array<int, 4> ids = experts_.tensor_ids(comm_.rank() == root ? src - first : 0);
      T* c = move_tmp_.data();
      for (const int id : ids) {
        const auto& t = store_->entry(id);
        if (comm_.rank() == root) std::copy_n(a.data() + t.offset, t.size, c);
        c += t.size;
      }
      comm_.bcast(std::span<T>(move_tmp_.data(), static_cast<std::size_t>(expert_size_)), root);
      for (std::size_t i = b + 1; i < end; ++i) {
        const std::int64_t s = rep_slot_[i];
        if (s / per != comm_.rank()) continue;
        const T* ref = move_tmp_.data();
        for (const int id : experts_.tensor_ids(s - first)) {
          const auto& t = store_->entry(id);
          if (std::memcmp(ref, a.data() + t.offset, static_cast<std::size_t>(t.size) * sizeof(T)) !=
              0) {
            ++bad;
            break;
          }
          ref += t.size;
        }
      }
    }
  }
  return comm_.allreduce<std::int64_t>(bad, comm::ReduceOp::sum);
}

template <typename T>
void MoELayer<T>::forward(const T* x, T* y, std::int64_t n, bool training, perf::PhaseTimes* times,
                          const PassInfo& pass) {
  using perf::Phase;
  const routing::Router& router = training ? *router_train_ : *router_eval_;
  const std::int64_t S = router.group_tokens();
  if (n % S != 0)
    throw std::logic_error("MoELayer: token count is not a multiple of the group size");
  const std::int64_t G = n / S;
  const auto E = static_cast<std::size_t>(E_);
  x_ = x;
  n_ = n;
  training_ = training;

  {  // gate (logits, gate.hpp), then route per group
    perf::ScopedTimer timer(times, Phase::gate);
    logits_.resize(static_cast<std::size_t>(n * E_));
    probs_.resize(static_cast<std::size_t>(n * E_));
    gate_.forward(x, n, training, pass, logits_);
    const bool noise = gate_.noise_active();
    groups_.resize(static_cast<std::size_t>(G));
    ctx_.resize(static_cast<std::size_t>(G));
    cand_offset_.assign(static_cast<std::size_t>(G) + 1, 0);
    stats_.aux_sum = stats_.z_sum = 0;
    stats_.aux_gshard_sum = stats_.importance_sum = stats_.load_sum = 0;
    stats_.assignments = stats_.dropped = 0;
    stats_.base_epsilon = 0;
    stats_.routed.assign(E, 0);  // assign() keeps capacity: no allocation after step 1
    stats_.kept.assign(E, 0);
    stats_.groups = G;
    kept_token_.clear();
    kept_expert_.clear();
    kept_slot_.clear();
    kept_weight_.clear();
    kept_cand_.clear();
    for (std::int64_t g = 0; g < G; ++g) {
      const auto off = static_cast<std::size_t>(g * S * E_);
      const auto len = static_cast<std::size_t>(S * E_);
      routing::GroupRouting& r = groups_[static_cast<std::size_t>(g)];
      routing::RouteContext& ctx = ctx_[static_cast<std::size_t>(g)];
      ctx.training = training;
      ctx.seed = seed_;
      ctx.step = pass.step;
      ctx.layer = index_;
      // Evaluation tokens live in their own id space (hash experts differ from training's).
      ctx.first_token = (training ? 0 : routing::kEvalTokenIdBase) + pass.first_token + g * S;
      ctx.noise_std = noise ? gate_.noise_std().subspan(off, len) : std::span<const double>{};
      ctx.bias = gate_.routing_bias();
      router.route(std::span<const double>(logits_).subspan(off, len),
                   std::span<double>(probs_).subspan(off, len), ctx, r);
      cand_offset_[static_cast<std::size_t>(g) + 1] =
          cand_offset_[static_cast<std::size_t>(g)] + static_cast<std::int64_t>(r.cands.size());
      stats_.aux_sum += r.aux;
      stats_.z_sum += r.z;
      stats_.aux_gshard_sum += r.aux_gshard;
      stats_.importance_sum += r.importance;
      stats_.load_sum += r.load;
      stats_.dropped += r.dropped;
      stats_.base_epsilon = std::max(stats_.base_epsilon, r.base_epsilon);
      stats_.assignments += static_cast<std::int64_t>(r.cands.size());
      for (std::size_t e = 0; e < E; ++e) {
        stats_.routed[e] += r.routed[e];
        stats_.kept[e] += r.kept[e];
      }
      // Redundant experts: each kept assignment goes to a replica of its expert (per group).
      if (r_ > 0) std::fill(slot_count_.begin(), slot_count_.end(), 0);
      const std::int64_t group_id = ctx.first_token / S;  // global: rank-count independent
      for (std::size_t i = 0; i < r.cands.size(); ++i) {
        const routing::Candidate& c = r.cands[i];
        if (!c.kept) continue;
        kept_token_.push_back(static_cast<std::int32_t>(g * S + c.token));
        kept_expert_.push_back(c.expert);
        if (r_ > 0) kept_slot_.push_back(pick_slot(c.expert, group_id));
        kept_weight_.push_back(c.weight);
        kept_cand_.push_back(cand_offset_[static_cast<std::size_t>(g)] +
                             static_cast<std::int64_t>(i));
      }
    }
  }
  if (aux_batch_) {
    // Global-batch balance (routing.aux_scope = batch): f_e and P_e over every token of the
    // layer on all ranks, aux = (E/k) sum_e f_e P_e. One allreduce of [routed_e, sum p_e,
    // groups, tokens]. stats_.aux_sum = local groups * aux, so the trainer's mean over all
    // groups is aux itself; batch_dp_ keeps (E/k) R_e / N^2 * G for the backward.
    std::fill(batch_sums_.begin(), batch_sums_.end(), 0.0);
    for (std::size_t e = 0; e < E; ++e) batch_sums_[e] = static_cast<double>(stats_.routed[e]);
    for (std::int64_t t = 0; t < n; ++t)
      for (std::size_t e = 0; e < E; ++e)
        batch_sums_[E + e] += probs_[static_cast<std::size_t>(t) * E + e];
    batch_sums_[2 * E] = static_cast<double>(G);
    batch_sums_[2 * E + 1] = static_cast<double>(n);
    comm_.allreduce(std::span<double>(batch_sums_), comm::ReduceOp::sum);
    const double groups = batch_sums_[2 * E], N = batch_sums_[2 * E + 1];
    const double ek =
        static_cast<double>(E_) / router.rule().choices_per_token(S, E_, router.capacity(training));
    double aux = 0;
    for (std::size_t e = 0; e < E; ++e) {
      aux += batch_sums_[e] * batch_sums_[E + e];
      batch_dp_[e] = groups * ek * batch_sums_[e] / (N * N);
    }
    stats_.aux_sum = static_cast<double>(G) * ek * aux / (N * N);
  }
  {  // dispatch: pack -> counts -> alltoallv -> unpack
    perf::ScopedTimer timer(times, Phase::dispatch);
    dispatch::pack_plan(kept_token_, r_ > 0 ? kept_slot_ : kept_expert_, placement_, plan_);
    if (bf16_) {  // gather + round to bf16 in one pass
      ensure(send16_, plan_.total_send * d_);
      if constexpr (std::is_same_v<T, float>)
        for (std::int64_t i = 0; i < plan_.total_send; ++i)
          experts::to_bf16(
              x + static_cast<std::int64_t>(plan_.send_token[static_cast<std::size_t>(i)]) * d_,
              send16_.data() + i * d_, d_);
    } else {
      ensure(send_, plan_.total_send * d_);
      dispatch::gather_rows(x, plan_.send_token.data(), plan_.total_send, d_, send_.data());
    }
    // Capacity padding (alltoall_padded): a (src, dst) block holds at most C rows per
    // destination expert and local group.
    plan_.padded_rows =
        std::max<std::int64_t>(router.capacity(training), 0) * placement_.per_rank() * G;
    dispatcher_->exchange_counts(plan_);
    stats_.rows_computed = plan_.total_recv;
    const std::int64_t rows = plan_.total_recv;
    if (!bf16_) ensure(ex_in_, rows * d_);
    ensure(ex_h_, rows * f_);
    ensure(ex_a_, rows * f_);
    ensure(ex_out_, rows * d_);
    if (bf16_) {
      ensure(ex_in16_, rows * d_);
      ensure(ex_a16_, rows * f_);
      ensure(ex_out16_, rows * d_);
      ensure(back16_, plan_.total_send * d_);
    } else {
      ensure(back_, plan_.total_send * d_);
    }
  }
  // dispatch -> experts -> combine's way back (as a pipeline of chunks when overlap_degree > 1).
  // Forward rows are token copies: the hierarchical exchange sends each once per node.
  auto compute = [&](std::int64_t j0, std::int64_t j1) {
    if (bf16_) {
      if constexpr (std::is_same_v<T, float>)
        experts_.forward_bf16(ex_in16_.data(), plan_.expert_offset, ex_h_.data(), ex_a16_.data(),
                              ex_out_.data(), ex_out16_.data(), j0, j1);
    } else {
      experts_.forward(ex_in_.data(), plan_.expert_offset, ex_h_.data(), ex_a_.data(),
                       ex_out_.data(), j0, j1);
    }
  };
  if (bf16_)
    exchange_and_compute(words<T>(send16_), words<T>(ex_in16_), words<T>(ex_out16_),
                         words<T>(back16_), d_ / 2, true, compute, times);
  else
    exchange_and_compute(send_.data(), ex_in_.data(), ex_out_.data(), back_.data(), d_, true,
                         compute, times);
  {  // combine: y = x + sum_a w_a * expert_out_a
    perf::ScopedTimer timer(times, Phase::combine);
    std::copy_n(x, n * d_, y);
    if (bf16_) {
      for (std::int64_t i = 0; i < plan_.total_send; ++i) {
        const auto a = static_cast<std::size_t>(plan_.send_assignment[static_cast<std::size_t>(i)]);
        const T w = static_cast<T>(kept_weight_[a]);
        T* yt = y + static_cast<std::int64_t>(kept_token_[a]) * d_;
        const experts::bf16* b = back16_.data() + i * d_;
        for (std::int64_t j = 0; j < d_; ++j) yt[j] += w * static_cast<T>(experts::to_float(b[j]));
      }
    } else {
      for (std::int64_t i = 0; i < plan_.total_send; ++i) {
        const auto a = static_cast<std::size_t>(plan_.send_assignment[static_cast<std::size_t>(i)]);
        const T w = static_cast<T>(kept_weight_[a]);
        T* yt = y + static_cast<std::int64_t>(kept_token_[a]) * d_;
        const T* b = back_.data() + i * d_;
        for (std::int64_t j = 0; j < d_; ++j) yt[j] += w * b[j];
      }
    }
    stats_.sent_to.assign(plan_.send_rows.begin(), plan_.send_rows.end());
  }
  if (shared_ > 0) {  // shared experts: every token, weight 1, local (replicated parameters)
    perf::ScopedTimer timer(times, Phase::expert);
    for (std::int64_t j = 0; j < shared_; ++j) {
      std::copy_n(x, n * d_, sh_in_.data() + j * n * d_);
      shared_off_[static_cast<std::size_t>(j) + 1] = (j + 1) * n;
    }
    shared_off_[0] = 0;
    shared_bank_.forward(sh_in_.data(), shared_off_, sh_h_.data(), sh_a_.data(), sh_out_.data());
    for (std::int64_t j = 0; j < shared_; ++j) {
      const T* o = sh_out_.data() + j * n * d_;
      for (std::int64_t i = 0; i < n * d_; ++i) y[i] += o[i];
    }
  }
}

template <typename T>
template <typename Compute>
void MoELayer<T>::exchange_and_compute(const T* send, T* expert_in, const T* expert_out, T* back,
                                       std::int64_t width, bool token_rows, Compute&& compute,
                                       perf::PhaseTimes* times) {
  using perf::Phase;
  // Each stage adds its wall time to a phase (when timed) and to the exchange or expert total.
  auto stage = [&](Phase phase, auto&& body) {
    const auto t0 = std::chrono::steady_clock::now();
    body();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (times != nullptr) (*times)[phase] += s;
    (phase == Phase::expert ? expert_s_ : exchange_s_) += s;
  };
  const int chunks = dispatcher_->chunks();
  if (chunks == 1) {
    stage(Phase::dispatch, [&] {
      if (token_rows)
        dispatcher_->to_experts_token_rows(plan_, send, expert_in, width);
      else
        dispatcher_->to_experts(plan_, send, expert_in, width);
    });
    stage(Phase::expert, [&] { compute(0, -1); });
    stage(Phase::combine, [&] { dispatcher_->from_experts(plan_, expert_out, back, width); });
    return;
  }
  // The pipeline: chunk c + 1 travels to its experts and chunk c - 1's outputs travel back
  // while chunk c's experts compute (the experts drive the messages between their GEMMs).
  // The dispatch and combine phases then hold the exchange time that was not hidden.
  // (Starting every chunk at once instead was measured on the emulated 1 Gbit/s link: no
  // better within the noise, and it puts all chunks in flight at once; docs/overlap.md.)
  stage(Phase::dispatch, [&] { dispatcher_->start_to_experts(plan_, 0, send, width, token_rows); });
  for (int c = 0; c < chunks; ++c) {
    stage(Phase::dispatch, [&] {
      dispatcher_->finish_to_experts(plan_, c, expert_in, width);
      if (c + 1 < chunks) dispatcher_->start_to_experts(plan_, c + 1, send, width, token_rows);
    });
    stage(Phase::expert,
          [&] { compute(dispatcher_->chunk_begin(c), dispatcher_->chunk_begin(c + 1)); });
    stage(Phase::combine,
          [&] { dispatcher_->start_from_experts(plan_, c, expert_out, back, width); });
  }
  stage(Phase::combine, [&] { dispatcher_->finish_from_experts(); });
}

template <typename T>
void MoELayer<T>::backward(const T* dy, T* dx, const routing::LossScales& scales) {
  const routing::Router& router = training_ ? *router_train_ : *router_eval_;
  const std::int64_t S = router.group_tokens();
  const std::int64_t G = n_ / S;
  const std::int64_t n = n_;
  std::copy_n(dy, n * d_, dx);  // residual path

  // Combine backward: dL/dw_a = <dy_t, expert_out_a>, dL/dexpert_out_a = w_a dy_t.
  dweight_.assign(static_cast<std::size_t>(cand_offset_.back()), 0.0);
  if (bf16_) {
    if constexpr (std::is_same_v<T, float>) backward_experts_bf16(dy, dx);
  } else {
    for (std::int64_t i = 0; i < plan_.total_send; ++i) {
      const auto a = static_cast<std::size_t>(plan_.send_assignment[static_cast<std::size_t>(i)]);
      const T w = static_cast<T>(kept_weight_[a]);
      const T* dyt = dy + static_cast<std::int64_t>(kept_token_[a]) * d_;
      const T* b = back_.data() + i * d_;
      T* s = send_.data() + i * d_;
      double dot = 0;
      for (std::int64_t j = 0; j < d_; ++j) {
        dot += static_cast<double>(dyt[j]) * static_cast<double>(b[j]);
        s[j] = w * dyt[j];
      }
      dweight_[static_cast<std::size_t>(kept_cand_[a])] = dot;
    }
    // Gradients travel the dispatch path to the experts and the combine path back.
    exchange_and_compute(
        send_.data(), ex_out_.data(), ex_in_.data(), send_.data(), d_, false,
        [&](std::int64_t j0, std::int64_t j1) {
          experts_.backward(ex_in_.data(), ex_h_.data(), ex_a_.data(), ex_out_.data(),
                            plan_.expert_offset, j0, j1);
        },
        nullptr);
    for (std::int64_t i = 0; i < plan_.total_send; ++i) {
      const auto a = static_cast<std::size_t>(plan_.send_assignment[static_cast<std::size_t>(i)]);
      T* dxt = dx + static_cast<std::int64_t>(kept_token_[a]) * d_;
      const T* s = send_.data() + i * d_;
      for (std::int64_t j = 0; j < d_; ++j) dxt[j] += s[j];
    }
  }

  if (shared_ > 0) {  // shared experts: dL/dout_j = dy for each j; dx += sum_j dL/dx_j
    for (std::int64_t j = 0; j < shared_; ++j) std::copy_n(dy, n * d_, sh_out_.data() + j * n * d_);
    shared_bank_.backward(sh_in_.data(), sh_h_.data(), sh_a_.data(), sh_out_.data(), shared_off_);
    for (std::int64_t j = 0; j < shared_; ++j) {
      const T* g = sh_in_.data() + j * n * d_;
      for (std::int64_t i = 0; i < n * d_; ++i) dx[i] += g[i];
    }
  }

  if (!gate_.learned()) return;  // hash: no router, nothing more flows back
  // Router backward per group, then through the gate GEMM (and W_noise's).
  const bool noise = gate_.noise_active();
  dlogits_.resize(static_cast<std::size_t>(n * E_));
  dnoise_.resize(noise ? static_cast<std::size_t>(n * E_) : 0);
  ensure(dprobs_, S * E_);
  routing::LossScales sc = scales;
  if (aux_batch_) {  // d(coef/L * aux_batch)/dp_t,e = scales.aux * G_global * (E/k) R_e / N^2
    for (double& v : batch_dp_) v *= scales.aux;
    sc.aux_batch_dp = batch_dp_;
    sc.aux = 0;
  }
  for (std::int64_t g = 0; g < G; ++g) {
    const auto off = static_cast<std::size_t>(g * S * E_);
    const auto len = static_cast<std::size_t>(S * E_);
    const routing::GroupRouting& r = groups_[static_cast<std::size_t>(g)];
    router.backward(
        ctx_[static_cast<std::size_t>(g)], std::span<const double>(logits_).subspan(off, len),
        std::span<const double>(probs_).subspan(off, len), r,
        std::span<const double>(dweight_).subspan(
            static_cast<std::size_t>(cand_offset_[static_cast<std::size_t>(g)]), r.cands.size()),
        sc, std::span<double>(dprobs_).first(len), std::span<double>(dlogits_).subspan(off, len),
        noise ? std::span<double>(dnoise_).subspan(off, len) : std::span<double>{});
  }
  gate_.backward(dlogits_, dnoise_, dx);
}

template <typename T>
void MoELayer<T>::backward_experts_bf16(const T* dy, T* dx) {
  using experts::bf16;
  // Combine backward in fp32 (dL/dw from the bf16 expert outputs that were combined),
  // gradient rows w * dy rounded to bf16 for the all-to-all.
  for (std::int64_t i = 0; i < plan_.total_send; ++i) {
    const auto a = static_cast<std::size_t>(plan_.send_assignment[static_cast<std::size_t>(i)]);
    const T w = static_cast<T>(kept_weight_[a]);
    const T* dyt = dy + static_cast<std::int64_t>(kept_token_[a]) * d_;
    const bf16* b = back16_.data() + i * d_;
    bf16* s = send16_.data() + i * d_;
    double dot = 0;
    for (std::int64_t j = 0; j < d_; ++j) {
      dot += static_cast<double>(dyt[j]) * static_cast<double>(experts::to_float(b[j]));
      s[j] = experts::to_bf16(static_cast<float>(w * dyt[j]));
    }
    dweight_[static_cast<std::size_t>(kept_cand_[a])] = dot;
  }
  exchange_and_compute(
      words<T>(send16_), words<T>(ex_out16_), words<T>(ex_in16_), words<T>(send16_), d_ / 2, false,
      [&](std::int64_t j0, std::int64_t j1) {
        if constexpr (std::is_same_v<T, float>)
          experts_.backward_bf16(ex_in16_.data(), ex_h_.data(), ex_a16_.data(), ex_a_.data(),
                                 ex_out16_.data(), plan_.expert_offset, ex_out_.data(), j0, j1);
      },
      nullptr);
  for (std::int64_t i = 0; i < plan_.total_send; ++i) {
    const auto a = static_cast<std::size_t>(plan_.send_assignment[static_cast<std::size_t>(i)]);
    T* dxt = dx + static_cast<std::int64_t>(kept_token_[a]) * d_;
    const bf16* s = send16_.data() + i * d_;
    for (std::int64_t j = 0; j < d_; ++j) dxt[j] += static_cast<T>(experts::to_float(s[j]));
  }
}

template class MoELayer<float>;
template class MoELayer<double>;

}  // namespace moesim::model
