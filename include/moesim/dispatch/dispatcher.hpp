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
#include <stdexcept>
#include <string>
#include <vector>

#include "moesim/comm/comm.hpp"
#include "moesim/config/config.hpp"
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
  // The forward dispatch of token rows: like to_experts, with the promise that send rows
  // of the same plan.send_token are equal (copies of one token), so an implementation may
  // send a token once per destination node (the hierarchical exchange de-duplicates).
  // Gradients (backward) do not keep that promise and use to_experts.
  // bytes_token_dispatch_inter_node() counts what these calls send across nodes.
  void to_experts_token_rows(Plan& plan, const T* send_order, T* expert_major, std::int64_t width) {
    const std::int64_t before = bytes_inter_;
    token_rows(plan, send_order, expert_major, width);
    bytes_tokens_inter_ += bytes_inter_ - before;
  }
  // --- The chunked, non-blocking exchange (routing.overlap_degree = d > 1; docs/overlap.md) ---
  // set_chunks(d) splits every rank's local experts into d chunks of whole experts, chunk c =
  // local experts [chunk_begin(c), chunk_begin(c + 1)) (the same split on every rank; each
  // expert's rows stay one slice, so its GEMMs keep their shapes and results stay bitwise).
  // Per step, after exchange_counts and in the same chunk order on every rank:
  //   start_to_experts(c)   starts moving chunk c's send-order rows to their experts;
  //   finish_to_experts(c)  waits for them and lands them in their expert-major slices;
  //   start_from_experts(c) starts moving chunk c's expert-major rows back into send order;
  //   finish_from_experts() waits for everything started; progress() drives the messages in
  //   flight (Open MPI moves data only inside MPI calls).
  // Buffers passed to a start call stay untouched until its finish. Only the alltoallv
  // exchange implements this (the config refuses the others before any work).
  virtual void set_chunks(int chunks) {
    if (chunks != 1)
      throw std::logic_error(std::string("dispatcher ") + name() + ": no chunked exchange");
  }
  [[nodiscard]] virtual int chunks() const { return 1; }
  [[nodiscard]] virtual std::int64_t chunk_begin(int c) const {
    (void)c;
    throw std::logic_error("dispatcher: no chunked exchange");
  }
  virtual void start_to_experts(Plan& plan, int c, const T* send_order, std::int64_t width,
                                bool token_rows) {
    (void)plan, (void)c, (void)send_order, (void)width, (void)token_rows;
    throw std::logic_error("dispatcher: no chunked exchange");
  }
  virtual void finish_to_experts(Plan& plan, int c, T* expert_major, std::int64_t width) {
    (void)plan, (void)c, (void)expert_major, (void)width;
    throw std::logic_error("dispatcher: no chunked exchange");
  }
  virtual void start_from_experts(Plan& plan, int c, const T* expert_major, T* send_order,
                                  std::int64_t width) {
    (void)plan, (void)c, (void)expert_major, (void)send_order, (void)width;
    throw std::logic_error("dispatcher: no chunked exchange");
  }
  virtual void finish_from_experts() {}
  virtual void progress() {}

  // (The plan is non-const in to_experts/from_experts only for its scratch cursors.)
  // Bytes this rank handed to the all-to-all so far (all peers incl. itself), and their
  // split: to ranks on another node / on this node (incl. itself).
  [[nodiscard]] std::int64_t bytes_sent() const { return bytes_inter_ + bytes_intra_; }
  [[nodiscard]] std::int64_t bytes_inter_node() const { return bytes_inter_; }
  [[nodiscard]] std::int64_t bytes_intra_node() const { return bytes_intra_; }
  // The part of bytes_inter_node() sent by to_experts_token_rows (the forward token dispatch,
  // the one a token-level de-duplication and node-limited routing shrink).
  [[nodiscard]] std::int64_t bytes_token_dispatch_inter_node() const { return bytes_tokens_inter_; }
  void reset_bytes() { bytes_inter_ = bytes_intra_ = bytes_tokens_inter_ = 0; }
  [[nodiscard]] const comm::NodeMap& nodes() const { return nodes_; }

 protected:
  explicit Dispatcher(comm::NodeMap nodes) : nodes_(std::move(nodes)) {}
  // The implementation of to_experts_token_rows (default: to_experts).
  virtual void token_rows(Plan& plan, const T* send_order, T* expert_major, std::int64_t width) {
    to_experts(plan, send_order, expert_major, width);
  }
  // Adds rows[p] * width elements per peer p of the world communicator to the byte counts.
  void count_rows(const int* rows, std::int64_t width) {
    for (std::size_t p = 0; p < nodes_.node_of.size(); ++p) {
      const std::int64_t b =
          static_cast<std::int64_t>(rows[p]) * width * static_cast<std::int64_t>(sizeof(T));
      (nodes_.node_of[p] == nodes_.node ? bytes_intra_ : bytes_inter_) += b;
    }
  }
  comm::NodeMap nodes_;
  std::int64_t bytes_inter_ = 0, bytes_intra_ = 0, bytes_tokens_inter_ = 0;
};

// Chooses the implementation routing.dispatch names (collective: finds the nodes).
template <typename T>
std::unique_ptr<Dispatcher<T>> make_dispatcher(DispatchKind kind, const comm::Comm& comm,
                                               Placement placement);
template <typename T>
std::unique_ptr<Dispatcher<T>> make_dispatcher(bool padded, const comm::Comm& comm,
                                               Placement placement) {
  return make_dispatcher<T>(padded ? DispatchKind::alltoall_padded : DispatchKind::alltoallv, comm,
                            placement);
}

// MPI_Alltoallv of exactly the kept rows: no padding to capacity.
template <typename T>
class AlltoallvDispatcher final : public Dispatcher<T> {
 public:
  AlltoallvDispatcher(const comm::Comm& comm, Placement placement);
  // With an explicit node map (byte split only; tests compare against emulated nodes).
  AlltoallvDispatcher(const comm::Comm& comm, Placement placement, comm::NodeMap nodes);
  const char* name() const override { return "alltoallv"; }
  void exchange_counts(Plan& plan) override;
  void to_experts(Plan& plan, const T* send_order, T* expert_major, std::int64_t width) override;
  void from_experts(Plan& plan, const T* expert_major, T* send_order, std::int64_t width) override;
  // The chunked exchange: one MPI_Ialltoallv per chunk and direction, over the same send
  // buffer and source-major staging as the blocking exchange (a chunk's rows for one peer are
  // contiguous in both, since rows are ordered by peer, then local expert).
  void set_chunks(int chunks) override;
  [[nodiscard]] int chunks() const override { return chunks_; }
  [[nodiscard]] std::int64_t chunk_begin(int c) const override {
    return chunk_bound_[static_cast<std::size_t>(c)];
  }
  void start_to_experts(Plan& plan, int c, const T* send_order, std::int64_t width,
                        bool token_rows) override;
  void finish_to_experts(Plan& plan, int c, T* expert_major, std::int64_t width) override;
  void start_from_experts(Plan& plan, int c, const T* expert_major, T* send_order,
                          std::int64_t width) override;
  void finish_from_experts() override;
  void progress() override { requests_.progress(); }

 private:
  void chunk_layout(const Plan& plan);  // per-chunk counts and displacements of the plan
  const comm::Comm& comm_;
  Placement placement_;
  AlignedVector<T> staging_;  // source-major rows; grows to the high-water mark, never shrinks
  // Chunked exchange: chunk bounds [chunks + 1]; per chunk and peer [chunks x P] the rows this
  // rank sends (and receives back) and their first row in send order, the rows it receives
  // (and returns) and their first row in source-major staging; the return staging; requests.
  int chunks_ = 1;
  std::vector<std::int64_t> chunk_bound_{0, 0};
  std::vector<int> chunk_send_rows_, chunk_send_displ_, chunk_recv_rows_, chunk_recv_displ_;
  AlignedVector<T> back_staging_;
  comm::Requests requests_;
  std::vector<int> to_request_;  // [chunks] index in requests_ of chunk c's way to the experts
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
  std::vector<int> block_rows_;                 // [P] padded_rows each (byte counts)
};

// Throws ConfigError (routing.dispatch = hierarchical) unless every node holds the same
// number of ranks. Called by the driver before any work, and by the dispatcher.
void require_equal_nodes(const comm::NodeMap& nodes);

// The two-level exchange (routing.dispatch = hierarchical; docs/multinode_cluster.md).
// Nodes hold L ranks each (the same L on every node). A row from rank (node a, local l) to
// rank (node b, local m) travels
//   1. inter-node: to the relay (b, l), the rank with the sender's local rank on the target
//      node, in one exchange among the ranks of local rank l (one message per node pair and
//      local rank, L times larger than the flat ones; the relay of the own node is oneself);
//   2. intra-node: from the relay (b, l) to (b, m) in one exchange among the ranks of node b.
// Forward dispatch (to_experts_token_rows) sends a token that has several experts on node b
// once to the relay, which copies it to each of them: each token row crosses a node
// boundary at most once per (node pair, token). Gradients and expert outputs (different
// rows per assignment) travel undeduplicated; the combine path is the exact reverse.
// Rows are only copied, never combined: results are bitwise those of alltoallv.
template <typename T>
class HierarchicalDispatcher final : public Dispatcher<T> {
 public:
  // `nodes` defaults to comm.node_map(); tests pass NodeMap::blocks to emulate nodes.
  HierarchicalDispatcher(const comm::Comm& comm, Placement placement);
  HierarchicalDispatcher(const comm::Comm& comm, Placement placement, comm::NodeMap nodes);
  const char* name() const override { return "hierarchical"; }
  void exchange_counts(Plan& plan) override;
  void to_experts(Plan& plan, const T* send_order, T* expert_major, std::int64_t width) override;
  void from_experts(Plan& plan, const T* expert_major, T* send_order, std::int64_t width) override;
  // Rows this rank's last forward dispatch sent across node boundaries before/after
  // de-duplication (tests and bench).
  [[nodiscard]] std::int64_t last_inter_rows() const { return last_inter_rows_; }
  [[nodiscard]] std::int64_t last_inter_unique() const { return last_inter_unique_; }

 private:
  void token_rows(Plan& plan, const T* send_order, T* expert_major, std::int64_t width) override;
  void dispatch(Plan& plan, const T* send_order, T* expert_major, std::int64_t width, bool dedup);
  comm::Comm node_comm_, cross_comm_;
  Placement placement_;
  int N_ = 1, L_ = 1;
  std::vector<int> rank_at_;  // [N * L] world rank of (node, local)
  // Send side, per target node n: rows (send order), unique tokens, and per row the index of
  // its unique token; the send-order row of every unique token.
  std::vector<int> node_rows_, node_uniq_, node_rows_displ_, node_uniq_displ_;
  std::vector<int> row_uniq_, uniq_row_;
  std::vector<int> mark_, pos_;  // per local token: last node seen, its unique index
  // Relay side: per source node n' [L * per + 2] counts (l_d, j), rows, unique rows.
  std::vector<int> cross_counts_, cross_send_counts_, relay_idx_, relay_idx_displ_;
  std::vector<int> a_send_cnt_, a_send_displ_, a_recv_cnt_, a_recv_displ_;
  std::vector<int> b_send_cnt_, b_send_displ_, b_recv_cnt_, b_recv_displ_;
  std::vector<int> node_counts_send_, node_counts_recv_;
  std::vector<std::int64_t> dest_off_;  // [P * per] expert-major row of block (source, expert)
  AlignedVector<T> a_send_, a_recv_, b_send_, b_recv_;
  std::int64_t last_inter_rows_ = 0, last_inter_unique_ = 0;
};

// Gathers rows: out[i] = in[index[i]] for rows of `width` (the pack stage).
template <typename T>
void gather_rows(const T* in, const std::int32_t* index, std::int64_t n, std::int64_t width,
                 T* out);

}  // namespace moesim::dispatch
