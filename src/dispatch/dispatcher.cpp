// pack -> counts -> alltoallv -> unpack, and the reverse (dispatcher.hpp).
#include "moesim/dispatch/dispatcher.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <utility>

namespace moesim::dispatch {

void pack_plan(const std::vector<std::int32_t>& token, const std::vector<std::int32_t>& expert,
               const Placement& placement, Plan& plan) {
  const std::size_t E = static_cast<std::size_t>(placement.num_experts);
  const std::size_t P = static_cast<std::size_t>(placement.ranks);
  const std::size_t n = token.size();
  plan.send_per_expert.assign(E, 0);
  for (std::int32_t e : expert) ++plan.send_per_expert[static_cast<std::size_t>(e)];
  // Counting sort by expert: stable, O(n + E).
  std::vector<std::int64_t>& cursor = plan.scratch;
  cursor.assign(E + 1, 0);
  for (std::size_t e = 0; e < E; ++e) cursor[e + 1] = cursor[e] + plan.send_per_expert[e];
  plan.send_token.resize(n);
  plan.send_assignment.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto row = static_cast<std::size_t>(cursor[static_cast<std::size_t>(expert[i])]++);
    plan.send_token[row] = token[i];
    plan.send_assignment[row] = static_cast<std::int64_t>(i);
  }
  plan.send_rows.assign(P, 0);
  plan.send_displ.assign(P, 0);
  const std::size_t per = static_cast<std::size_t>(placement.per_rank());
  // Only the ranks of our replica group receive from us: peer (g*G + i) hosts experts
  // [i*per, (i+1)*per).
  plan.send_per_peer_expert.assign(P * per, 0);
  const auto G = static_cast<std::size_t>(placement.group_ranks());
  const std::size_t first_peer = static_cast<std::size_t>(placement.group()) * G;
  for (std::size_t i = 0; i < G; ++i)
    for (std::size_t j = 0; j < per; ++j) {
      const int rows = plan.send_per_expert[i * per + j];
      plan.send_per_peer_expert[(first_peer + i) * per + j] = rows;
      plan.send_rows[first_peer + i] += rows;
    }
  for (std::size_t p = 1; p < P; ++p)
    plan.send_displ[p] = plan.send_displ[p - 1] + plan.send_rows[p - 1];
  plan.total_send = static_cast<std::int64_t>(n);
}

template <typename T>
void gather_rows(const T* in, const std::int32_t* index, std::int64_t n, std::int64_t width,
                 T* out) {
  const auto bytes = static_cast<std::size_t>(width) * sizeof(T);
  for (std::int64_t i = 0; i < n; ++i)
    std::memcpy(out + i * width, in + static_cast<std::int64_t>(index[i]) * width, bytes);
}

template <typename T>
AlltoallvDispatcher<T>::AlltoallvDispatcher(const comm::Comm& comm, Placement placement)
    : AlltoallvDispatcher(comm, placement, comm.node_map()) {}

template <typename T>
AlltoallvDispatcher<T>::AlltoallvDispatcher(const comm::Comm& comm, Placement placement,
                                            comm::NodeMap nodes)
    : Dispatcher<T>(std::move(nodes)), comm_(comm), placement_(placement) {
  if (placement_.ranks != comm_.size())
    throw std::invalid_argument("dispatcher: placement rank count differs from the communicator");
}

namespace {
// counts: one small MPI_Alltoall of [P x E_local] row counts, then the receive layout.
void exchange_plan_counts(const comm::Comm& comm, const Placement& placement, Plan& plan) {
  const std::size_t P = static_cast<std::size_t>(placement.ranks);
  const std::size_t per = static_cast<std::size_t>(placement.per_rank());
  plan.recv_per_peer_expert.assign(P * per, 0);
  comm.alltoall(std::span<const int>(plan.send_per_peer_expert),
                std::span<int>(plan.recv_per_peer_expert));
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
}
}  // namespace

template <typename T>
void AlltoallvDispatcher<T>::exchange_counts(Plan& plan) {
  exchange_plan_counts(comm_, placement_, plan);
  if (!chunk_send_rows_.empty()) chunk_layout(plan);  // set_chunks was called
}

namespace {
// Copies blocks between source-major (peer, expert) and expert-major (expert, peer) order.
// Peer p's rows start at row p * block in the source-major buffer, or at recv_displ[p]
// when block < 0 (the unpadded layout).
// Only local experts [j0, j1) when given (one chunk of the chunked exchange).
template <typename T, bool ToExpertMajor>
void reorder(Plan& plan, std::size_t P, std::size_t per, const T* src, T* dst, std::int64_t width,
             std::int64_t block = -1, std::size_t j0 = 0, std::size_t j1 = SIZE_MAX) {
  j1 = std::min(j1, per);
  std::vector<std::int64_t>& fill = plan.scratch;
  fill.assign(plan.expert_offset.begin(), plan.expert_offset.end() - 1);
  for (std::size_t p = 0; p < P; ++p) {
    std::int64_t source_row = block < 0 ? plan.recv_displ[p] : static_cast<std::int64_t>(p) * block;
    for (std::size_t j = 0; j < j0; ++j) source_row += plan.recv_per_peer_expert[p * per + j];
    for (std::size_t j = j0; j < j1; ++j) {
      const std::int64_t rows = plan.recv_per_peer_expert[p * per + j];
      const std::size_t bytes = static_cast<std::size_t>(rows * width) * sizeof(T);
      if (bytes > 0) {
        if constexpr (ToExpertMajor)
          std::memcpy(dst + fill[j] * width, src + source_row * width, bytes);
        else
          std::memcpy(dst + source_row * width, src + fill[j] * width, bytes);
      }
      fill[j] += rows;
      source_row += rows;
    }
  }
}
}  // namespace

template <typename T>
void AlltoallvDispatcher<T>::to_experts(Plan& plan, const T* send_order, T* expert_major,
                                        std::int64_t width) {
  const std::size_t P = static_cast<std::size_t>(placement_.ranks);
  const std::size_t per = static_cast<std::size_t>(placement_.per_rank());
  if (staging_.size() < static_cast<std::size_t>(plan.total_recv * width))
    staging_.resize(static_cast<std::size_t>(plan.total_recv * width));
  comm_.alltoallv_rows(send_order, plan.send_rows, plan.send_displ, staging_.data(), plan.recv_rows,
                       plan.recv_displ, width);
  this->count_rows(plan.send_rows.data(), width);
  reorder<T, true>(plan, P, per, staging_.data(), expert_major, width);
}

template <typename T>
void AlltoallvDispatcher<T>::from_experts(Plan& plan, const T* expert_major, T* send_order,
                                          std::int64_t width) {
  const std::size_t P = static_cast<std::size_t>(placement_.ranks);
  const std::size_t per = static_cast<std::size_t>(placement_.per_rank());
  if (staging_.size() < static_cast<std::size_t>(plan.total_recv * width))
    staging_.resize(static_cast<std::size_t>(plan.total_recv * width));
  reorder<T, false>(plan, P, per, expert_major, staging_.data(), width);
  comm_.alltoallv_rows(staging_.data(), plan.recv_rows, plan.recv_displ, send_order, plan.send_rows,
                       plan.send_displ, width);
  this->count_rows(plan.recv_rows.data(), width);
}

template <typename T>
void AlltoallvDispatcher<T>::set_chunks(int chunks) {
  const std::int64_t per = placement_.per_rank();
  if (chunks < 1 || chunks > per)
    throw std::invalid_argument("dispatcher: " + std::to_string(chunks) +
                                " chunks of whole experts, but this rank hosts " +
                                std::to_string(per) + " experts");
  chunks_ = chunks;
  // Balanced: chunk c = local experts [c * per / d, (c + 1) * per / d).
  chunk_bound_.assign(static_cast<std::size_t>(chunks) + 1, 0);
  for (int c = 0; c <= chunks; ++c) chunk_bound_[static_cast<std::size_t>(c)] = c * per / chunks;
  const auto n = static_cast<std::size_t>(chunks) * static_cast<std::size_t>(placement_.ranks);
  chunk_send_rows_.assign(n, 0);
  chunk_send_displ_.assign(n, 0);
  chunk_recv_rows_.assign(n, 0);
  chunk_recv_displ_.assign(n, 0);
  to_request_.assign(static_cast<std::size_t>(chunks), -1);
  requests_.reserve(2 * chunks);
}

template <typename T>
void AlltoallvDispatcher<T>::chunk_layout(const Plan& plan) {
  const auto P = static_cast<std::size_t>(placement_.ranks);
  const auto per = static_cast<std::size_t>(placement_.per_rank());
  for (std::size_t p = 0; p < P; ++p) {
    int sent = plan.send_displ[p], received = plan.recv_displ[p];
    for (int c = 0; c < chunks_; ++c) {
      const std::size_t i = static_cast<std::size_t>(c) * P + p;
      chunk_send_displ_[i] = sent;
      chunk_recv_displ_[i] = received;
      int s = 0, r = 0;
      for (auto j = static_cast<std::size_t>(chunk_bound_[static_cast<std::size_t>(c)]);
           j < static_cast<std::size_t>(chunk_bound_[static_cast<std::size_t>(c) + 1]); ++j) {
        s += plan.send_per_peer_expert[p * per + j];
        r += plan.recv_per_peer_expert[p * per + j];
      }
      chunk_send_rows_[i] = s;
      chunk_recv_rows_[i] = r;
      sent += s;
      received += r;
    }
  }
}

template <typename T>
void AlltoallvDispatcher<T>::start_to_experts(Plan& plan, int c, const T* send_order,
                                              std::int64_t width, bool token_rows) {
  const auto P = static_cast<std::size_t>(placement_.ranks);
  if (c == 0) {  // a new pass: nothing may be in flight while the staging grows
    requests_.clear();
    const auto n = static_cast<std::size_t>(plan.total_recv * width);
    if (staging_.size() < n) staging_.resize(n);
    if (back_staging_.size() < n) back_staging_.resize(n);
  }
  const std::size_t i = static_cast<std::size_t>(c) * P;
  to_request_[static_cast<std::size_t>(c)] = comm_.ialltoallv_rows(
      send_order, &chunk_send_rows_[i], &chunk_send_displ_[i], staging_.data(),
      &chunk_recv_rows_[i], &chunk_recv_displ_[i], width, requests_);
  const std::int64_t before = this->bytes_inter_;
  this->count_rows(&chunk_send_rows_[i], width);
  if (token_rows) this->bytes_tokens_inter_ += this->bytes_inter_ - before;
}

template <typename T>
void AlltoallvDispatcher<T>::finish_to_experts(Plan& plan, int c, T* expert_major,
                                               std::int64_t width) {
  requests_.wait(to_request_[static_cast<std::size_t>(c)]);
  reorder<T, true>(plan, static_cast<std::size_t>(placement_.ranks),
                   static_cast<std::size_t>(placement_.per_rank()), staging_.data(), expert_major,
                   width, -1, static_cast<std::size_t>(chunk_bound_[static_cast<std::size_t>(c)]),
                   static_cast<std::size_t>(chunk_bound_[static_cast<std::size_t>(c) + 1]));
}

template <typename T>
void AlltoallvDispatcher<T>::start_from_experts(Plan& plan, int c, const T* expert_major,
                                                T* send_order, std::int64_t width) {
  const auto P = static_cast<std::size_t>(placement_.ranks);
  reorder<T, false>(plan, P, static_cast<std::size_t>(placement_.per_rank()), expert_major,
                    back_staging_.data(), width, -1,
                    static_cast<std::size_t>(chunk_bound_[static_cast<std::size_t>(c)]),
                    static_cast<std::size_t>(chunk_bound_[static_cast<std::size_t>(c) + 1]));
  const std::size_t i = static_cast<std::size_t>(c) * P;
  comm_.ialltoallv_rows(back_staging_.data(), &chunk_recv_rows_[i], &chunk_recv_displ_[i],
                        send_order, &chunk_send_rows_[i], &chunk_send_displ_[i], width, requests_);
  this->count_rows(&chunk_recv_rows_[i], width);
}

template <typename T>
void AlltoallvDispatcher<T>::finish_from_experts() {
  requests_.wait_all();
  requests_.clear();
}

template <typename T>
AlltoallPaddedDispatcher<T>::AlltoallPaddedDispatcher(const comm::Comm& comm, Placement placement)
    : Dispatcher<T>(comm.node_map()), comm_(comm), placement_(placement) {
  if (placement_.ranks != comm_.size())
    throw std::invalid_argument("dispatcher: placement rank count differs from the communicator");
}

template <typename T>
void AlltoallPaddedDispatcher<T>::exchange_counts(Plan& plan) {
  // The padded format still needs to know which rows of a block are real; a real
  // implementation encodes that in the slot layout, we send the counts (a few ints).
  exchange_plan_counts(comm_, placement_, plan);
  for (std::size_t p = 0; p < plan.send_rows.size(); ++p)
    if (plan.send_rows[p] > plan.padded_rows || plan.recv_rows[p] > plan.padded_rows)
      throw std::logic_error(
          "alltoall_padded: a block holds more rows than its capacity padding (" +
          std::to_string(plan.padded_rows) + ")");
}

template <typename T>
void AlltoallPaddedDispatcher<T>::to_experts(Plan& plan, const T* send_order, T* expert_major,
                                             std::int64_t width) {
  const auto P = static_cast<std::size_t>(placement_.ranks);
  const std::int64_t B = plan.padded_rows;
  const auto n = static_cast<std::size_t>(static_cast<std::int64_t>(P) * B * width);
  if (send_blocks_.size() < n) send_blocks_.resize(n, T(0));
  if (recv_blocks_.size() < n) recv_blocks_.resize(n, T(0));
  for (std::size_t p = 0; p < P; ++p)
    if (plan.send_rows[p] > 0)  // (an empty send buffer may be a null pointer: no memcpy)
      std::memcpy(send_blocks_.data() + static_cast<std::int64_t>(p) * B * width,
                  send_order + static_cast<std::int64_t>(plan.send_displ[p]) * width,
                  static_cast<std::size_t>(plan.send_rows[p] * width) * sizeof(T));
  if (B > 0) comm_.alltoall_rows(send_blocks_.data(), recv_blocks_.data(), B, width);
  block_rows_.assign(P, static_cast<int>(B));
  this->count_rows(block_rows_.data(), width);
  reorder<T, true>(plan, P, static_cast<std::size_t>(placement_.per_rank()), recv_blocks_.data(),
                   expert_major, width, B);
}

template <typename T>
void AlltoallPaddedDispatcher<T>::from_experts(Plan& plan, const T* expert_major, T* send_order,
                                               std::int64_t width) {
  const auto P = static_cast<std::size_t>(placement_.ranks);
  const std::int64_t B = plan.padded_rows;
  const auto n = static_cast<std::size_t>(static_cast<std::int64_t>(P) * B * width);
  if (send_blocks_.size() < n) send_blocks_.resize(n, T(0));
  if (recv_blocks_.size() < n) recv_blocks_.resize(n, T(0));
  reorder<T, false>(plan, P, static_cast<std::size_t>(placement_.per_rank()), expert_major,
                    recv_blocks_.data(), width, B);
  if (B > 0) comm_.alltoall_rows(recv_blocks_.data(), send_blocks_.data(), B, width);
  block_rows_.assign(P, static_cast<int>(B));
  this->count_rows(block_rows_.data(), width);
  for (std::size_t p = 0; p < P; ++p)
    if (plan.send_rows[p] > 0)
      std::memcpy(send_order + static_cast<std::int64_t>(plan.send_displ[p]) * width,
                  send_blocks_.data() + static_cast<std::int64_t>(p) * B * width,
                  static_cast<std::size_t>(plan.send_rows[p] * width) * sizeof(T));
}

template <typename T>
std::unique_ptr<Dispatcher<T>> make_dispatcher(DispatchKind kind, const comm::Comm& comm,
                                               Placement placement) {
  switch (kind) {
    case DispatchKind::alltoall_padded:
      return std::make_unique<AlltoallPaddedDispatcher<T>>(comm, placement);
    case DispatchKind::hierarchical:
      return std::make_unique<HierarchicalDispatcher<T>>(comm, placement);
    case DispatchKind::alltoallv:
      break;
  }
  return std::make_unique<AlltoallvDispatcher<T>>(comm, placement);
}

template class AlltoallvDispatcher<float>;
template class AlltoallvDispatcher<double>;
template class AlltoallPaddedDispatcher<float>;
template class AlltoallPaddedDispatcher<double>;
template std::unique_ptr<Dispatcher<float>> make_dispatcher<float>(DispatchKind, const comm::Comm&,
                                                                   Placement);
template std::unique_ptr<Dispatcher<double>> make_dispatcher<double>(DispatchKind,
                                                                     const comm::Comm&, Placement);
template void gather_rows<float>(const float*, const std::int32_t*, std::int64_t, std::int64_t,
                                 float*);
template void gather_rows<double>(const double*, const std::int32_t*, std::int64_t, std::int64_t,
                                  double*);

}  // namespace moesim::dispatch
