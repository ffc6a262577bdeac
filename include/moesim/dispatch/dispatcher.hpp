// Token movement between the ranks that own tokens and the ranks that own experts.
//
// Words: *dispatch* sends each kept assignment's token row to the rank of its expert and
// lands it in that expert's contiguous slice; *combine* brings the expert's output rows
// back, in the order they were sent. Both run in four named stages:
//   pack (rows in send order: by destination rank, then expert, then group/token)
//   -> counts (exchange_counts: how many rows each peer sends each local expert)
//   -> alltoallv (rows travel)
//   -> unpack (source-major blocks reordered into expert-major slices).
// The same plan serves the backward pass: gradients travel the dispatch path to the
// experts and the combine path back.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "moesim/comm/comm.hpp"
#include "moesim/util/aligned.hpp"

namespace moesim::dispatch {

// Where experts live. The ranks form replica groups of G = min(E, P) consecutive ranks;
// every group hosts all E experts once, in contiguous blocks of E/G experts per rank.
// E >= P (E divisible by P): one group, plain expert parallelism. E < P (P divisible by E):
// P/E groups, each expert replicated on P/E ranks (expert-data parallelism); a token goes
// to the replica in its own rank's group, and replicas average their gradients.
struct Placement {
  std::int64_t num_experts = 1;  // E
  int ranks = 1;                 // P
  int rank = 0;                  // this rank
  [[nodiscard]] int group_ranks() const {
    return num_experts >= ranks ? ranks : static_cast<int>(num_experts);
  }
  [[nodiscard]] int replicas() const { return ranks / group_ranks(); }
  [[nodiscard]] std::int64_t per_rank() const { return num_experts / group_ranks(); }
  [[nodiscard]] int group() const { return rank / group_ranks(); }
  // The ranks that hold the same experts (one per replica group) share this id; they sum
  // their expert gradients. Equals the rank when E >= P (no replicas).
  [[nodiscard]] int replica_set() const { return rank % group_ranks(); }
  // The rank that computes `expert` for this rank's tokens: its replica in our group.
  [[nodiscard]] int owner(std::int64_t expert) const {
    return group() * group_ranks() + static_cast<int>(expert / per_rank());
  }
  [[nodiscard]] std::int64_t first_local() const { return (rank % group_ranks()) * per_rank(); }
};

// One layer's exchange plan for one step. The send side is filled by the caller (pack);
// exchange_counts fills the receive side.
struct Plan {
  // --- send side (this rank's kept assignments, in send order) ---
  std::vector<std::int32_t> send_token;       // local token row of each send row
  std::vector<std::int64_t> send_assignment;  // caller's index of the assignment (e.g. candidate)
  std::vector<int> send_per_expert;           // [E] rows this rank sends to each global expert
  std::vector<int> send_per_peer_expert;      // [P * E_local] rows to peer p's local expert j
  std::vector<int> send_rows;                 // [P] rows to each peer
  std::vector<int> send_displ;                // [P] first row of each peer's block
  // --- receive side ---
  std::vector<int> recv_per_peer_expert;    // [P * E_local] rows from peer p for local expert j
  std::vector<int> recv_rows;               // [P]
  std::vector<int> recv_displ;              // [P] source-major offsets
  std::vector<std::int64_t> expert_offset;  // [E_local + 1] expert-major slice offsets
  std::int64_t total_send = 0, total_recv = 0;
  std::int64_t padded_rows = 0;       // capacity-padded exchange: rows per (src, dst) block
  std::vector<std::int64_t> scratch;  // pack/unpack cursors, reused across steps
};

// Builds the send side of `plan` from per-assignment (local token, global expert) lists
// given in any order: rows are bucketed by expert, keeping the given order within an
// expert (stable), so send order = (rank, expert, given order).
void pack_plan(const std::vector<std::int32_t>& token, const std::vector<std::int32_t>& expert,
               const Placement& placement, Plan& plan);

// The dispatcher interface: interchangeable exchange implementations (alltoallv here;
// capacity-padded alltoall later). Buffers are caller-owned and sized by the plan.
template <typename T>
class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  [[nodiscard]] virtual const char* name() const = 0;
  // counts: fills the receive side of the plan (one small all-to-all).
  virtual void exchange_counts(Plan& plan) = 0;
  // Send-order rows [total_send x width] -> expert-major rows [total_recv x width].
  virtual void to_experts(Plan& plan, const T* send_order, T* expert_major, std::int64_t width) = 0;
  // Expert-major rows [total_recv x width] -> send-order rows [total_send x width].
  virtual void from_experts(Plan& plan, const T* expert_major, T* send_order,
                            std::int64_t width) = 0;
  // (The plan is non-const in to_experts/from_experts only for its scratch cursors.)
  // Bytes this rank handed to the all-to-all so far (all peers incl. itself).
  [[nodiscard]] std::int64_t bytes_sent() const { return bytes_sent_; }
  void reset_bytes() { bytes_sent_ = 0; }

 protected:
  std::int64_t bytes_sent_ = 0;
};

// Chooses the implementation routing.dispatch names.
template <typename T>
std::unique_ptr<Dispatcher<T>> make_dispatcher(bool padded, const comm::Comm& comm,
                                               Placement placement);

// MPI_Alltoallv of exactly the kept rows: no padding to capacity.
template <typename T>
class AlltoallvDispatcher final : public Dispatcher<T> {
 public:
  AlltoallvDispatcher(const comm::Comm& comm, Placement placement);
  const char* name() const override { return "alltoallv"; }
  void exchange_counts(Plan& plan) override;
  void to_experts(Plan& plan, const T* send_order, T* expert_major, std::int64_t width) override;
  void from_experts(Plan& plan, const T* expert_major, T* send_order, std::int64_t width) override;

 private:
  const comm::Comm& comm_;
  Placement placement_;
  AlignedVector<T> staging_;  // source-major rows; grows to the high-water mark, never shrinks
};

// MPI_Alltoall of fixed blocks of plan.padded_rows rows per (src, dst) pair: what a
// capacity-padded implementation (GShard / Switch on TPUs, DeepSpeed's default) sends.
// Same results as AlltoallvDispatcher; more bytes, no per-step count-dependent layout.
template <typename T>
class AlltoallPaddedDispatcher final : public Dispatcher<T> {
 public:
  AlltoallPaddedDispatcher(const comm::Comm& comm, Placement placement);
  const char* name() const override { return "alltoall_padded"; }
  void exchange_counts(Plan& plan) override;
  void to_experts(Plan& plan, const T* send_order, T* expert_major, std::int64_t width) override;
  void from_experts(Plan& plan, const T* expert_major, T* send_order, std::int64_t width) override;

 private:
  const comm::Comm& comm_;
  Placement placement_;
  AlignedVector<T> send_blocks_, recv_blocks_;  // [P x padded_rows x width], grow-only
};

// Gathers rows: out[i] = in[index[i]] for rows of `width` (the pack stage).
template <typename T>
void gather_rows(const T* in, const std::int32_t* index, std::int64_t n, std::int64_t width,
                 T* out);

}  // namespace moesim::dispatch
