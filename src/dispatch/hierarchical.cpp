// The two-level (node-aware) exchange: inter-node to the same-local-rank relay, then
// intra-node to the expert's rank (dispatcher.hpp, docs/multinode_cluster.md).
#include <algorithm>
#include <cstring>
#include <span>
#include <string>

#include "moesim/dispatch/dispatcher.hpp"

namespace moesim::dispatch {
namespace {

void prefix(const std::vector<int>& count, std::vector<int>& displ) {
  displ.assign(count.size(), 0);
  for (std::size_t i = 1; i < count.size(); ++i) displ[i] = displ[i - 1] + count[i - 1];
}

// Resizes with 50 % headroom, so that sizes that wander from step to step stop allocating
// after the first steps (allocation once per run, tests/mpi/test_alloc.cpp).
void fit(std::vector<int>& v, std::size_t n) {
  if (v.capacity() < n) v.reserve(n + n / 2);
  v.resize(n);
}

template <typename T>
void grow(AlignedVector<T>& v, std::int64_t rows, std::int64_t width) {
  const auto n = static_cast<std::size_t>(rows * width);
  if (v.size() < n) v.resize(n + n / 2);
}

template <typename T>
void copy_rows(T* dst, const T* src, std::int64_t rows, std::int64_t width) {
  if (rows > 0) std::memcpy(dst, src, static_cast<std::size_t>(rows * width) * sizeof(T));
}

}  // namespace

void require_equal_nodes(const comm::NodeMap& m) {
  if (m.uniform()) return;
  std::string sizes;
  for (int s : m.node_size) {
    if (!sizes.empty()) sizes.push_back(',');
    sizes.append(std::to_string(s));
  }
  throw ConfigError(
      "routing.dispatch", "hierarchical",
      "the same number of ranks on every node (found ranks per node " + sizes + "; use alltoallv)");
}

template <typename T>
HierarchicalDispatcher<T>::HierarchicalDispatcher(const comm::Comm& comm, Placement placement)
    : HierarchicalDispatcher(comm, placement, comm.node_map()) {}

template <typename T>
HierarchicalDispatcher<T>::HierarchicalDispatcher(const comm::Comm& comm, Placement placement,
                                                  comm::NodeMap nodes)
    : Dispatcher<T>(std::move(nodes)),
      node_comm_(comm.split(this->nodes_.node, this->nodes_.local_rank)),
      cross_comm_(comm.split(this->nodes_.local_rank, this->nodes_.node)),
      placement_(placement) {
  const comm::NodeMap& m = this->nodes_;
  if (placement_.ranks != comm.size() || static_cast<int>(m.node_of.size()) != comm.size())
    throw std::invalid_argument("dispatcher: placement rank count differs from the communicator");
  require_equal_nodes(m);
  N_ = m.nodes;
  L_ = m.local_size;
  rank_at_.assign(static_cast<std::size_t>(N_ * L_), -1);
  for (std::size_t p = 0; p < m.node_of.size(); ++p)
    rank_at_[static_cast<std::size_t>(m.node_of[p] * L_ + m.local_of[p])] = static_cast<int>(p);
}

// counts: the send side per target node (with de-duplication of tokens), then
//   cross exchange (among ranks of my local rank) of [L * per counts, rows, unique rows]
//   per node pair and of the row -> unique-token index lists,
//   node exchange (among ranks of my node) of the relayed counts: every receiver learns
//   recv_per_peer_expert as the flat exchange would give it.
template <typename T>
void HierarchicalDispatcher<T>::exchange_counts(Plan& plan) {
  const auto N = static_cast<std::size_t>(N_);
  const auto L = static_cast<std::size_t>(L_);
  const auto P = static_cast<std::size_t>(placement_.ranks);
  const auto per = static_cast<std::size_t>(placement_.per_rank());
  const std::size_t K = L * per + 2;

  // --- send side per target node: rows in (local rank, expert, order), unique tokens ---
  int max_token = -1;
  for (std::int32_t t : plan.send_token) max_token = std::max(max_token, static_cast<int>(t));
  fit(mark_, static_cast<std::size_t>(max_token + 1));
  std::fill(mark_.begin(), mark_.end(), -1);
  fit(pos_, mark_.size());
  node_rows_.assign(N, 0);
  node_uniq_.assign(N, 0);
  fit(row_uniq_, static_cast<std::size_t>(plan.total_send));
  fit(uniq_row_, static_cast<std::size_t>(plan.total_send));
  cross_send_counts_.assign(N * K, 0);
  int rows_total = 0, uniq_total = 0;
  for (std::size_t n = 0; n < N; ++n) {
    for (std::size_t l = 0; l < L; ++l) {
      const auto p = static_cast<std::size_t>(rank_at_[n * L + l]);
      for (std::size_t j = 0; j < per; ++j)
        cross_send_counts_[n * K + l * per + j] = plan.send_per_peer_expert[p * per + j];
      const int first = plan.send_displ[p];
      for (int r = first; r < first + plan.send_rows[p]; ++r) {
        const auto t = static_cast<std::size_t>(plan.send_token[static_cast<std::size_t>(r)]);
        if (mark_[t] != static_cast<int>(n)) {
          mark_[t] = static_cast<int>(n);
          pos_[t] = node_uniq_[n]++;
          uniq_row_[static_cast<std::size_t>(uniq_total++)] = r;
        }
        row_uniq_[static_cast<std::size_t>(rows_total++)] = pos_[t];
        ++node_rows_[n];
      }
    }
    cross_send_counts_[n * K + L * per] = node_rows_[n];
    cross_send_counts_[n * K + L * per + 1] = node_uniq_[n];
  }
  prefix(node_rows_, node_rows_displ_);
  prefix(node_uniq_, node_uniq_displ_);

  cross_counts_.assign(N * K, 0);
  cross_comm_.alltoall(std::span<const int>(cross_send_counts_), std::span<int>(cross_counts_));
  // The row -> unique index lists travel to the relays (ints, with the counts).
  relay_idx_displ_.assign(N, 0);
  a_recv_cnt_.assign(N, 0);
  for (std::size_t n = 0; n < N; ++n) a_recv_cnt_[n] = cross_counts_[n * K + L * per];
  prefix(a_recv_cnt_, relay_idx_displ_);
  fit(relay_idx_, static_cast<std::size_t>(relay_idx_displ_.back() + a_recv_cnt_.back()));
  cross_comm_.alltoallv_rows(row_uniq_.data(), std::span<const int>(node_rows_),
                             std::span<const int>(node_rows_displ_), relay_idx_.data(),
                             std::span<const int>(a_recv_cnt_),
                             std::span<const int>(relay_idx_displ_), 1);

  // --- relay -> receivers: counts (source node, expert) for each target local rank ---
  node_counts_send_.assign(L * N * per, 0);
  b_send_cnt_.assign(L, 0);
  for (std::size_t l = 0; l < L; ++l)
    for (std::size_t n = 0; n < N; ++n)
      for (std::size_t j = 0; j < per; ++j) {
        const int c = cross_counts_[n * K + l * per + j];
        node_counts_send_[(l * N + n) * per + j] = c;
        b_send_cnt_[l] += c;
      }
  prefix(b_send_cnt_, b_send_displ_);
  node_counts_recv_.assign(L * N * per, 0);
  node_comm_.alltoall(std::span<const int>(node_counts_send_), std::span<int>(node_counts_recv_));

  // --- receive side in the flat plan's terms ---
  plan.recv_per_peer_expert.assign(P * per, 0);
  b_recv_cnt_.assign(L, 0);
  for (std::size_t l = 0; l < L; ++l)
    for (std::size_t n = 0; n < N; ++n) {
      const auto s = static_cast<std::size_t>(rank_at_[n * L + l]);
      for (std::size_t j = 0; j < per; ++j) {
        const int c = node_counts_recv_[(l * N + n) * per + j];
        plan.recv_per_peer_expert[s * per + j] = c;
        b_recv_cnt_[l] += c;
      }
    }
  prefix(b_recv_cnt_, b_recv_displ_);
  plan.recv_rows.assign(P, 0);
  plan.recv_displ.assign(P, 0);
  plan.expert_offset.assign(per + 1, 0);
  for (std::size_t p = 0; p < P; ++p) {
    for (std::size_t j = 0; j < per; ++j) {
      plan.recv_rows[p] += plan.recv_per_peer_expert[p * per + j];
      plan.expert_offset[j + 1] += plan.recv_per_peer_expert[p * per + j];
    }
    if (p > 0) plan.recv_displ[p] = plan.recv_displ[p - 1] + plan.recv_rows[p - 1];
  }
  for (std::size_t j = 0; j < per; ++j) plan.expert_offset[j + 1] += plan.expert_offset[j];
  plan.total_recv = plan.expert_offset[per];
  // Expert-major row of every (source rank, expert) block: sources in rank order, as the
  // flat exchange lays them out.
  dest_off_.assign(P * per, 0);
  for (std::size_t j = 0; j < per; ++j) {
    std::int64_t at = plan.expert_offset[j];
    for (std::size_t p = 0; p < P; ++p) {
      dest_off_[p * per + j] = at;
      at += plan.recv_per_peer_expert[p * per + j];
    }
  }
}

template <typename T>
void HierarchicalDispatcher<T>::to_experts(Plan& plan, const T* send_order, T* expert_major,
                                           std::int64_t width) {
  dispatch(plan, send_order, expert_major, width, false);
}

template <typename T>
void HierarchicalDispatcher<T>::token_rows(Plan& plan, const T* send_order, T* expert_major,
                                           std::int64_t width) {
  dispatch(plan, send_order, expert_major, width, true);
}

template <typename T>
void HierarchicalDispatcher<T>::dispatch(Plan& plan, const T* send_order, T* expert_major,
                                         std::int64_t width, bool dedup) {
  const auto N = static_cast<std::size_t>(N_);
  const auto L = static_cast<std::size_t>(L_);
  const auto per = static_cast<std::size_t>(placement_.per_rank());
  const std::size_t K = L * per + 2;
  const auto me = static_cast<std::size_t>(this->nodes_.node);
  const auto esz = static_cast<std::int64_t>(sizeof(T));

  // 1. inter-node: rows (or unique token rows) per target node, to the same-local-rank relay.
  a_send_cnt_.assign(dedup ? node_uniq_.begin() : node_rows_.begin(),
                     dedup ? node_uniq_.end() : node_rows_.end());
  prefix(a_send_cnt_, a_send_displ_);
  a_recv_cnt_.assign(N, 0);
  for (std::size_t n = 0; n < N; ++n)
    a_recv_cnt_[n] = cross_counts_[n * K + L * per + (dedup ? 1 : 0)];
  prefix(a_recv_cnt_, a_recv_displ_);
  const std::int64_t a_send_total = a_send_displ_.back() + a_send_cnt_.back();
  const std::int64_t a_recv_total = a_recv_displ_.back() + a_recv_cnt_.back();
  grow(a_send_, a_send_total, width);
  grow(a_recv_, a_recv_total, width);
  if (dedup) {
    for (std::int64_t u = 0; u < a_send_total; ++u)
      copy_rows(
          a_send_.data() + u * width,
          send_order + static_cast<std::int64_t>(uniq_row_[static_cast<std::size_t>(u)]) * width, 1,
          width);
  } else {
    std::int64_t at = 0;
    for (std::size_t n = 0; n < N; ++n)
      for (std::size_t l = 0; l < L; ++l) {
        const auto p = static_cast<std::size_t>(rank_at_[n * L + l]);
        copy_rows(a_send_.data() + at * width, send_order + plan.send_displ[p] * width,
                  plan.send_rows[p], width);
        at += plan.send_rows[p];
      }
  }
  cross_comm_.alltoallv_rows(a_send_.data(), std::span<const int>(a_send_cnt_),
                             std::span<const int>(a_send_displ_), a_recv_.data(),
                             std::span<const int>(a_recv_cnt_), std::span<const int>(a_recv_displ_),
                             width);
  last_inter_rows_ = last_inter_unique_ = 0;
  for (std::size_t n = 0; n < N; ++n) {
    const std::int64_t b = a_send_cnt_[n] * width * esz;
    (n == me ? this->bytes_intra_ : this->bytes_inter_) += b;
    if (n != me) {
      last_inter_rows_ += node_rows_[n];
      last_inter_unique_ += node_uniq_[n];
    }
  }

  // 2. relay: expand to every target local rank, ordered (source node, expert, order).
  const std::int64_t b_send_total = b_send_displ_.back() + b_send_cnt_.back();
  const std::int64_t b_recv_total = b_recv_displ_.back() + b_recv_cnt_.back();
  grow(b_send_, b_send_total, width);
  grow(b_recv_, b_recv_total, width);
  {
    std::int64_t at = 0;
    for (std::size_t l = 0; l < L; ++l)
      for (std::size_t n = 0; n < N; ++n) {
        // Source n's list for this node is ordered (target local rank, expert, order).
        std::int64_t off = 0;
        for (std::size_t q = 0; q < l * per; ++q) off += cross_counts_[n * K + q];
        std::int64_t rows = 0;
        for (std::size_t j = 0; j < per; ++j) rows += cross_counts_[n * K + l * per + j];
        const T* src = a_recv_.data() + static_cast<std::int64_t>(a_recv_displ_[n]) * width;
        if (dedup) {
          const int* idx = relay_idx_.data() + relay_idx_displ_[n] + off;
          for (std::int64_t r = 0; r < rows; ++r)
            copy_rows(b_send_.data() + (at + r) * width, src + idx[r] * width, 1, width);
        } else {
          copy_rows(b_send_.data() + at * width, src + off * width, rows, width);
        }
        at += rows;
      }
  }
  node_comm_.alltoallv_rows(b_send_.data(), std::span<const int>(b_send_cnt_),
                            std::span<const int>(b_send_displ_), b_recv_.data(),
                            std::span<const int>(b_recv_cnt_), std::span<const int>(b_recv_displ_),
                            width);
  this->bytes_intra_ += b_send_total * width * esz;

  // 3. receiver: blocks (relay l: source node, expert) into expert-major slices.
  std::int64_t at = 0;
  for (std::size_t l = 0; l < L; ++l)
    for (std::size_t n = 0; n < N; ++n) {
      const auto s = static_cast<std::size_t>(rank_at_[n * L + l]);
      for (std::size_t j = 0; j < per; ++j) {
        const int c = plan.recv_per_peer_expert[s * per + j];
        copy_rows(expert_major + dest_off_[s * per + j] * width, b_recv_.data() + at * width, c,
                  width);
        at += c;
      }
    }
}

// The exact reverse of the undeduplicated dispatch.
template <typename T>
void HierarchicalDispatcher<T>::from_experts(Plan& plan, const T* expert_major, T* send_order,
                                             std::int64_t width) {
  const auto N = static_cast<std::size_t>(N_);
  const auto L = static_cast<std::size_t>(L_);
  const auto per = static_cast<std::size_t>(placement_.per_rank());
  const std::size_t K = L * per + 2;
  const auto me = static_cast<std::size_t>(this->nodes_.node);
  const auto esz = static_cast<std::int64_t>(sizeof(T));
  const std::int64_t b_send_total = b_send_displ_.back() + b_send_cnt_.back();
  const std::int64_t b_recv_total = b_recv_displ_.back() + b_recv_cnt_.back();
  grow(b_send_, b_send_total, width);
  grow(b_recv_, b_recv_total, width);
  // 3'. receiver -> relays.
  std::int64_t at = 0;
  for (std::size_t l = 0; l < L; ++l)
    for (std::size_t n = 0; n < N; ++n) {
      const auto s = static_cast<std::size_t>(rank_at_[n * L + l]);
      for (std::size_t j = 0; j < per; ++j) {
        const int c = plan.recv_per_peer_expert[s * per + j];
        copy_rows(b_recv_.data() + at * width, expert_major + dest_off_[s * per + j] * width, c,
                  width);
        at += c;
      }
    }
  node_comm_.alltoallv_rows(b_recv_.data(), std::span<const int>(b_recv_cnt_),
                            std::span<const int>(b_recv_displ_), b_send_.data(),
                            std::span<const int>(b_send_cnt_), std::span<const int>(b_send_displ_),
                            width);
  this->bytes_intra_ += b_recv_total * width * esz;

  // 2'. relay: back into each source node's list order (target local rank, expert, order).
  a_recv_cnt_.assign(N, 0);
  for (std::size_t n = 0; n < N; ++n) a_recv_cnt_[n] = cross_counts_[n * K + L * per];
  prefix(a_recv_cnt_, a_recv_displ_);
  const std::int64_t a_recv_total = a_recv_displ_.back() + a_recv_cnt_.back();
  const std::int64_t a_send_total = node_rows_displ_.back() + node_rows_.back();
  grow(a_recv_, a_recv_total, width);
  grow(a_send_, a_send_total, width);
  {
    std::int64_t from = 0;
    for (std::size_t l = 0; l < L; ++l)
      for (std::size_t n = 0; n < N; ++n) {
        std::int64_t off = 0;
        for (std::size_t q = 0; q < l * per; ++q) off += cross_counts_[n * K + q];
        std::int64_t rows = 0;
        for (std::size_t j = 0; j < per; ++j) rows += cross_counts_[n * K + l * per + j];
        copy_rows(a_recv_.data() + (a_recv_displ_[n] + off) * width, b_send_.data() + from * width,
                  rows, width);
        from += rows;
      }
  }
  cross_comm_.alltoallv_rows(a_recv_.data(), std::span<const int>(a_recv_cnt_),
                             std::span<const int>(a_recv_displ_), a_send_.data(),
                             std::span<const int>(node_rows_),
                             std::span<const int>(node_rows_displ_), width);
  for (std::size_t n = 0; n < N; ++n) {
    const std::int64_t b = a_recv_cnt_[n] * width * esz;
    (n == me ? this->bytes_intra_ : this->bytes_inter_) += b;
  }
  // 1'. source: per target node back into send order.
  std::int64_t from = 0;
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t l = 0; l < L; ++l) {
      const auto p = static_cast<std::size_t>(rank_at_[n * L + l]);
      copy_rows(send_order + plan.send_displ[p] * width, a_send_.data() + from * width,
                plan.send_rows[p], width);
      from += plan.send_rows[p];
    }
}

template class HierarchicalDispatcher<float>;
template class HierarchicalDispatcher<double>;

}  // namespace moesim::dispatch
