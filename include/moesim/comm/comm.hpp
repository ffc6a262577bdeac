// The communication module: the only place that calls MPI. Everything above it talks to
// a small typed interface: a RAII communicator (duplicated, freed), reductions over
// typed spans and the all-to-all family used by token dispatch. MPI errors are returned
// (not fatal) on our communicators and turned into CommError exceptions; the driver
// catches them and ends the whole job (Environment::abort) so no rank waits forever.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace moesim::comm {

class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Element types that may cross the wire.
enum class DType { f32, f64, i32, i64, u64, u8 };

template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>)
    return DType::f32;
  else if constexpr (std::is_same_v<T, double>)
    return DType::f64;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return DType::i32;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return DType::i64;
  else if constexpr (std::is_same_v<T, std::uint64_t>)
    return DType::u64;
  else if constexpr (std::is_same_v<T, char> || std::is_same_v<T, std::uint8_t>)
    return DType::u8;
  else
    static_assert(sizeof(T) == 0, "type has no MPI mapping in moesim::comm");
}

enum class ReduceOp { sum, max, min };

// Which node (shared-memory domain) each rank of a communicator is on. Nodes are found with
// MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) and numbered by their lowest rank; local ranks
// follow the communicator's rank order inside a node.
struct NodeMap {
  int nodes = 1;               // number of nodes
  int node = 0;                // this rank's node
  int local_rank = 0;          // this rank's index inside its node
  int local_size = 1;          // ranks on this node
  std::vector<int> node_of;    // [P] node of every rank
  std::vector<int> local_of;   // [P] local rank of every rank
  std::vector<int> node_size;  // [nodes] ranks on every node
  // True when every node holds the same number of ranks.
  [[nodiscard]] bool uniform() const;
  // The rank with local rank `local` on `node` (-1 if there is none).
  [[nodiscard]] int rank_at(int node, int local) const;
  // Consecutive blocks of `ranks_per_node` ranks form a node (tests, MOESIM_RANKS_PER_NODE).
  static NodeMap blocks(int ranks, int rank, int ranks_per_node);
  // From every rank's node key (equal keys = same node).
  static NodeMap from_keys(const std::vector<int>& key, int rank);
};

// A set of outstanding non-blocking operations (MPI requests) with room for `capacity` of them,
// allocated once. Operations are started by Comm (e.g. ialltoallv_rows), which returns their
// index in the set; their buffers and count arrays must stay untouched until they complete.
// Open MPI moves data only while some MPI call runs, so callers that compute while messages
// travel call progress() now and then (docs/overlap.md).
class Requests {
 public:
  explicit Requests(int capacity = 0);
  ~Requests();
  Requests(Requests&&) noexcept;
  Requests& operator=(Requests&&) noexcept;
  Requests(const Requests&) = delete;
  Requests& operator=(const Requests&) = delete;
  void reserve(int capacity);      // grows the room (allocates only when it grows)
  [[nodiscard]] int size() const;  // operations started since the last clear()
  [[nodiscard]] int capacity() const;
  void progress();                 // drives every outstanding operation
  [[nodiscard]] bool test(int i);  // progresses; true once operation i completed
  void wait(int i);                // until operation i completed
  void wait_all();                 // until every started operation completed
  void clear();                    // forgets completed operations (none pending)

 private:
  friend class Comm;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// MPI_Init / MPI_Finalize for the process (one per program, created by main).
class Environment {
 public:
  Environment(int* argc, char*** argv);
  ~Environment();
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;
  // Ends every rank of the job with `code` (MPI_Abort on the world communicator).
  [[noreturn]] static void abort(int code);
  static double wtime();  // seconds, MPI_Wtime
};

// A duplicated communicator. Copying is disabled; moving is allowed.
class Comm {
 public:
  static Comm world();  // a duplicate of MPI_COMM_WORLD
  static Comm self();   // a duplicate of MPI_COMM_SELF (single-rank runs, tools)
  // Collective: the ranks with the same `color` form a new communicator, ordered by `key`.
  [[nodiscard]] Comm split(int color, int key) const;
  // Collective: the ranks that share memory (one node) form a new communicator
  // (MPI_Comm_split_type with MPI_COMM_TYPE_SHARED), ordered by rank.
  [[nodiscard]] Comm split_shared() const;
  // Blocking point-to-point of raw bytes (calibration ping-pong).
  void send_bytes(const void* data, std::size_t n, int dest, int tag) const;
  void recv_bytes(void* data, std::size_t n, int source, int tag) const;
  ~Comm();
  Comm(Comm&&) noexcept;
  Comm& operator=(Comm&&) noexcept;
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  [[nodiscard]] int rank() const;
  [[nodiscard]] int size() const;
  void barrier() const;
  // A barrier that sleeps while it waits (MPI_Ibarrier, tested every `poll_seconds`): ranks that
  // wait long give their core to the ranks still working (more ranks than cores).
  void barrier_sleeping(double poll_seconds) const;

  // Collective: the node of every rank (MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)). The
  // environment variable MOESIM_RANKS_PER_NODE=R instead declares consecutive blocks of R
  // ranks to be nodes: a test device to run the multi-node code paths on one machine
  // (then ranks of one "node" boundary still use shared memory; only the bookkeeping and
  // the algorithms see nodes). Invalid values throw CommError.
  [[nodiscard]] NodeMap node_map() const;

  // Every rank's `send` (same length everywhere) concatenated in rank order into `recv`.
  template <typename T>
  void allgather(std::span<const T> send, std::span<T> recv) const {
    allgather_raw(send.data(), recv.data(), send.size(), dtype_of<T>());
  }

  template <typename T>
  void allreduce(std::span<T> inout, ReduceOp op) const {
    allreduce_raw(inout.data(), inout.size(), dtype_of<T>(), op);
  }
  template <typename T>
  T allreduce(T value, ReduceOp op) const {
    allreduce_raw(&value, 1, dtype_of<T>(), op);
    return value;
  }
  template <typename T>
  void bcast(std::span<T> data, int root) const {
    bcast_raw(data.data(), data.size(), dtype_of<T>(), root);
  }
  void bcast(std::string& s, int root) const;

  // Gathers `send` (same length on every rank) to `root`; `recv` has size()*send.size()
  // elements on root and is ignored elsewhere.
  template <typename T>
  void gather(std::span<const T> send, std::span<T> recv, int root) const {
    gather_raw(send.data(), recv.data(), send.size(), dtype_of<T>(), root);
  }

  // Gathers every rank's `row` (same length everywhere) to `root`, a block of at most
  // `block_rows` ranks at a time: on root, `on_block(first_rank, ranks, rows)` receives the
  // rows of ranks [first_rank, first_rank + ranks), row-major. Root never holds more than one
  // block (P x P matrices at thousands of ranks); the other ranks send synchronously
  // (MPI_Ssend), so no row waits in root's unexpected-message queue. If `on_block` throws, root
  // still receives every row (no rank is left waiting) and rethrows at the end.
  template <typename T>
  void gather_rows_blocked(
      std::span<const T> row, int root, std::int64_t block_rows,
      const std::function<void(int, int, std::span<const T>)>& on_block) const {
    gather_rows_raw(row.data(), row.size() * sizeof(T), root, block_rows,
                    [&](int first, int ranks, const void* data) {
                      on_block(first, ranks,
                               std::span<const T>(static_cast<const T*>(data),
                                                  row.size() * static_cast<std::size_t>(ranks)));
                    });
  }

  // Gathers a variable number of bytes from every rank to `root`, concatenated in rank
  // order (empty on other ranks). For rare, bulky transfers such as checkpoints.
  [[nodiscard]] std::vector<char> gatherv_bytes(std::span<const char> send, int root) const;

  // Fixed-size all-to-all: `send` and `recv` hold size()*n elements, block p for peer p.
  template <typename T>
  void alltoall(std::span<const T> send, std::span<T> recv) const {
    alltoall_raw(send.data(), recv.data(), send.size() / static_cast<std::size_t>(size()),
                 dtype_of<T>());
  }

  // Fixed-size all-to-all of rows: `rows_per_peer` rows of `row_width` elements to and
  // from every peer (block p at row p * rows_per_peer).
  template <typename T>
  void alltoall_rows(const T* send, T* recv, std::int64_t rows_per_peer,
                     std::int64_t row_width) const {
    alltoall_rows_raw(send, recv, rows_per_peer, row_width, dtype_of<T>());
  }

  // Non-blocking alltoallv_rows (MPI_Ialltoallv) added to `requests`; returns its index there.
  // Every rank starts its non-blocking collectives on this communicator in the same order.
  template <typename T>
  int ialltoallv_rows(const T* send, const int* send_rows, const int* send_displ, T* recv,
                      const int* recv_rows, const int* recv_displ, std::int64_t row_width,
                      Requests& requests) const {
    return ialltoallv_raw(send, send_rows, send_displ, recv, recv_rows, recv_displ, row_width,
                          dtype_of<T>(), requests);
  }

  // Variable-size all-to-all of rows of `row_width` elements: counts and displacements
  // are in rows (a contiguous row datatype keeps counts small for wide rows).
  template <typename T>
  void alltoallv_rows(const T* send, std::span<const int> send_rows,
                      std::span<const int> send_displ, T* recv, std::span<const int> recv_rows,
                      std::span<const int> recv_displ, std::int64_t row_width) const {
    alltoallv_raw(send, send_rows.data(), send_displ.data(), recv, recv_rows.data(),
                  recv_displ.data(), row_width, dtype_of<T>());
  }

 private:
  struct Impl;
  explicit Comm(std::unique_ptr<Impl> impl);
  void allreduce_raw(void* data, std::size_t n, DType t, ReduceOp op) const;
  void bcast_raw(void* data, std::size_t n, DType t, int root) const;
  void gather_raw(const void* send, void* recv, std::size_t n, DType t, int root) const;
  void allgather_raw(const void* send, void* recv, std::size_t n, DType t) const;
  void gather_rows_raw(const void* row, std::size_t bytes, int root, std::int64_t block_rows,
                       const std::function<void(int, int, const void*)>& on_block) const;
  void alltoall_raw(const void* send, void* recv, std::size_t n_per_peer, DType t) const;
  void alltoall_rows_raw(const void* send, void* recv, std::int64_t rows, std::int64_t row_width,
                         DType t) const;
  void alltoallv_raw(const void* send, const int* scounts, const int* sdispl, void* recv,
                     const int* rcounts, const int* rdispl, std::int64_t row_width, DType t) const;
  int ialltoallv_raw(const void* send, const int* scounts, const int* sdispl, void* recv,
                     const int* rcounts, const int* rdispl, std::int64_t row_width, DType t,
                     Requests& requests) const;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moesim::comm
