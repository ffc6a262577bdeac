// MPI behind the typed interface of comm.hpp. Our communicators use MPI_ERRORS_RETURN so
// that every failure becomes a CommError naming the call, instead of MPI's default abort
// without context.
#include "moesim/comm/comm.hpp"

// Only the C API: keep Open MPI's deprecated C++ bindings (and their warnings) out.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <string>
#include <thread>
#include <utility>

namespace moesim::comm {
namespace {

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw CommError(std::string("MPI error in ") + what + ": " +
                  std::string(msg, static_cast<std::size_t>(len)));
}

MPI_Datatype to_mpi(DType t) {
  switch (t) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::f64:
      return MPI_DOUBLE;
    case DType::i32:
      return MPI_INT32_T;
    case DType::i64:
      return MPI_INT64_T;
    case DType::u64:
      return MPI_UINT64_T;
    case DType::u8:
      return MPI_BYTE;
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op to_mpi(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return MPI_SUM;
    case ReduceOp::max:
      return MPI_MAX;
    case ReduceOp::min:
      return MPI_MIN;
  }
  return MPI_OP_NULL;
}

int to_int_count(std::size_t n, const char* what) {
  if (n > static_cast<std::size_t>(INT_MAX))
    throw CommError(std::string(what) + ": message of " + std::to_string(n) +
                    " elements exceeds the MPI int count limit");
  return static_cast<int>(n);
}

}  // namespace

// ---------------------------------------------------------------------------------------
Environment::Environment(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) MPI_Init(argc, argv);
}

Environment::~Environment() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void Environment::abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

double Environment::wtime() { return MPI_Wtime(); }

// ---------------------------------------------------------------------------------------
struct Comm::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0;
  int size = 1;
  // Contiguous row types, created on first use per (element type, width), freed with us.
  std::map<std::pair<DType, std::int64_t>, MPI_Datatype> row_types;

  explicit Impl(MPI_Comm parent) {
    check(MPI_Comm_dup(parent, &comm), "MPI_Comm_dup");
    check(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
    check(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  }
  ~Impl() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    for (auto& [key, type] : row_types) MPI_Type_free(&type);
    if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
  }
  MPI_Datatype row_type(DType t, std::int64_t width) {
    auto it = row_types.find({t, width});
    if (it != row_types.end()) return it->second;
    MPI_Datatype type = MPI_DATATYPE_NULL;
    check(MPI_Type_contiguous(to_int_count(static_cast<std::size_t>(width), "row type"), to_mpi(t),
                              &type),
          "MPI_Type_contiguous");
    check(MPI_Type_commit(&type), "MPI_Type_commit");
    row_types.emplace(std::make_pair(t, width), type);
    return type;
  }
};

Comm::Comm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Comm::~Comm() = default;
Comm::Comm(Comm&&) noexcept = default;
Comm& Comm::operator=(Comm&&) noexcept = default;

Comm Comm::world() { return Comm(std::make_unique<Impl>(MPI_COMM_WORLD)); }
Comm Comm::self() { return Comm(std::make_unique<Impl>(MPI_COMM_SELF)); }

Comm Comm::split(int color, int key) const {
  MPI_Comm part = MPI_COMM_NULL;
  check(MPI_Comm_split(impl_->comm, color, key, &part), "MPI_Comm_split");
  auto impl = std::make_unique<Impl>(part);  // duplicates `part` with our error handler
  MPI_Comm_free(&part);
  return Comm(std::move(impl));
}

Comm Comm::split_shared() const {
  MPI_Comm part = MPI_COMM_NULL;
  check(MPI_Comm_split_type(impl_->comm, MPI_COMM_TYPE_SHARED, impl_->rank, MPI_INFO_NULL, &part),
        "MPI_Comm_split_type");
  auto impl = std::make_unique<Impl>(part);
  MPI_Comm_free(&part);
  return Comm(std::move(impl));
}

void Comm::send_bytes(const void* data, std::size_t n, int dest, int tag) const {
  check(MPI_Send(data, to_int_count(n, "MPI_Send"), MPI_BYTE, dest, tag, impl_->comm), "MPI_Send");
}

void Comm::recv_bytes(void* data, std::size_t n, int source, int tag) const {
  check(MPI_Recv(data, to_int_count(n, "MPI_Recv"), MPI_BYTE, source, tag, impl_->comm,
                 MPI_STATUS_IGNORE),
        "MPI_Recv");
}

int Comm::rank() const { return impl_->rank; }
int Comm::size() const { return impl_->size; }

void Comm::barrier() const { check(MPI_Barrier(impl_->comm), "MPI_Barrier"); }

void Comm::barrier_sleeping(double poll_seconds) const {
  MPI_Request req = MPI_REQUEST_NULL;
  check(MPI_Ibarrier(impl_->comm, &req), "MPI_Ibarrier");
  int done = 0;
  for (;;) {
    check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (done) return;
    std::this_thread::sleep_for(std::chrono::duration<double>(poll_seconds));
  }
}

void Comm::allreduce_raw(void* data, std::size_t n, DType t, ReduceOp op) const {
  if (n == 0) return;
  check(MPI_Allreduce(MPI_IN_PLACE, data, to_int_count(n, "MPI_Allreduce"), to_mpi(t), to_mpi(op),
                      impl_->comm),
        "MPI_Allreduce");
}

void Comm::bcast_raw(void* data, std::size_t n, DType t, int root) const {
  if (n == 0) return;
  check(MPI_Bcast(data, to_int_count(n, "MPI_Bcast"), to_mpi(t), root, impl_->comm), "MPI_Bcast");
}

void Comm::bcast(std::string& s, int root) const {
  std::int64_t len = static_cast<std::int64_t>(s.size());
  bcast_raw(&len, 1, DType::i64, root);
  s.resize(static_cast<std::size_t>(len));
  bcast_raw(s.data(), s.size(), DType::u8, root);
}

void Comm::gather_raw(const void* send, void* recv, std::size_t n, DType t, int root) const {
  const int count = to_int_count(n, "MPI_Gather");
  check(MPI_Gather(send, count, to_mpi(t), recv, count, to_mpi(t), root, impl_->comm),
        "MPI_Gather");
}

std::vector<char> Comm::gatherv_bytes(std::span<const char> send, int root) const {
  const int mine = to_int_count(send.size(), "MPI_Gatherv");
  std::vector<int> counts(impl_->rank == root ? static_cast<std::size_t>(impl_->size) : 0U);
  check(MPI_Gather(&mine, 1, MPI_INT, counts.data(), 1, MPI_INT, root, impl_->comm), "MPI_Gather");
  std::vector<int> displ(counts.size(), 0);
  std::size_t total = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    displ[r] = to_int_count(total, "MPI_Gatherv");
    total += static_cast<std::size_t>(counts[r]);
  }
  std::vector<char> out(total);
  check(MPI_Gatherv(send.data(), mine, MPI_BYTE, out.data(), counts.data(), displ.data(), MPI_BYTE,
                    root, impl_->comm),
        "MPI_Gatherv");
  return out;
}

void Comm::gather_rows_raw(const void* row, std::size_t bytes, int root, std::int64_t block_rows,
                           const std::function<void(int, int, const void*)>& on_block) const {
  constexpr int kTag = 7301;  // only this function uses it on this communicator
  const int P = impl_->size;
  const int count = to_int_count(bytes, "MPI_Ssend");
  if (impl_->rank != root) {
    check(MPI_Ssend(row, count, MPI_BYTE, root, kTag, impl_->comm), "MPI_Ssend");
    return;
  }
  const int B = static_cast<int>(std::clamp<std::int64_t>(block_rows, 1, P));
  std::vector<char> block(bytes * static_cast<std::size_t>(B));
  std::vector<MPI_Request> req(static_cast<std::size_t>(B));
  std::exception_ptr failure;
  for (int first = 0; first < P; first += B) {
    const int n = std::min(B, P - first);
    int posted = 0;
    for (int i = 0; i < n; ++i) {
      char* dst = block.data() + bytes * static_cast<std::size_t>(i);
      if (first + i == root) {
        if (bytes) std::memcpy(dst, row, bytes);
        continue;
      }
      check(MPI_Irecv(dst, count, MPI_BYTE, first + i, kTag, impl_->comm,
                      &req[static_cast<std::size_t>(posted++)]),
            "MPI_Irecv");
    }
    check(MPI_Waitall(posted, req.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    if (failure) continue;  // keep receiving: every rank's send must complete
    try {
      on_block(first, n, block.data());
    } catch (...) {
      failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
}

void Comm::allgather_raw(const void* send, void* recv, std::size_t n, DType t) const {
  const int count = to_int_count(n, "MPI_Allgather");
  check(MPI_Allgather(send, count, to_mpi(t), recv, count, to_mpi(t), impl_->comm),
        "MPI_Allgather");
}

// ---------------------------------------------------------------------------------------
bool NodeMap::uniform() const {
  return std::all_of(node_size.begin(), node_size.end(),
                     [&](int s) { return s == node_size.front(); });
}

int NodeMap::rank_at(int n, int local) const {
  for (std::size_t p = 0; p < node_of.size(); ++p)
    if (node_of[p] == n && local_of[p] == local) return static_cast<int>(p);
  return -1;
}

NodeMap NodeMap::from_keys(const std::vector<int>& key, int rank) {
  NodeMap m;
  const std::size_t P = key.size();
  m.node_of.assign(P, -1);
  m.local_of.assign(P, 0);
  m.node_size.clear();
  std::map<int, int> id;  // key -> node id, in order of the key's lowest rank
  for (std::size_t p = 0; p < P; ++p) {
    auto it = id.find(key[p]);
    if (it == id.end()) {
      it = id.emplace(key[p], static_cast<int>(m.node_size.size())).first;
      m.node_size.push_back(0);
    }
    const int n = it->second;
    m.node_of[p] = n;
    m.local_of[p] = m.node_size[static_cast<std::size_t>(n)]++;
  }
  m.nodes = static_cast<int>(m.node_size.size());
  m.node = m.node_of[static_cast<std::size_t>(rank)];
  m.local_rank = m.local_of[static_cast<std::size_t>(rank)];
  m.local_size = m.node_size[static_cast<std::size_t>(m.node)];
  return m;
}

NodeMap NodeMap::blocks(int ranks, int rank, int ranks_per_node) {
  std::vector<int> key(static_cast<std::size_t>(ranks));
  for (int p = 0; p < ranks; ++p) key[static_cast<std::size_t>(p)] = p / ranks_per_node;
  return from_keys(key, rank);
}

NodeMap Comm::node_map() const {
  const char* fake = std::getenv("MOESIM_RANKS_PER_NODE");
  if (fake != nullptr && *fake != '\0') {
    char* end = nullptr;
    const long r = std::strtol(fake, &end, 10);
    if (*end != '\0' || r < 1 || r > impl_->size || impl_->size % r != 0)
      throw CommError(std::string("MOESIM_RANKS_PER_NODE = '") + fake +
                      "' is not allowed: a divisor of the rank count " +
                      std::to_string(impl_->size));
    return NodeMap::blocks(impl_->size, impl_->rank, static_cast<int>(r));
  }
  // The lowest rank of each shared-memory domain is its key.
  MPI_Comm shared = MPI_COMM_NULL;
  check(MPI_Comm_split_type(impl_->comm, MPI_COMM_TYPE_SHARED, impl_->rank, MPI_INFO_NULL, &shared),
        "MPI_Comm_split_type");
  int lowest = impl_->rank;
  const int rc = MPI_Allreduce(MPI_IN_PLACE, &lowest, 1, MPI_INT, MPI_MIN, shared);
  MPI_Comm_free(&shared);
  check(rc, "MPI_Allreduce");
  std::vector<int> key(static_cast<std::size_t>(impl_->size));
  allgather_raw(&lowest, key.data(), 1, DType::i32);
  return NodeMap::from_keys(key, impl_->rank);
}

void Comm::alltoall_raw(const void* send, void* recv, std::size_t n_per_peer, DType t) const {
  const int count = to_int_count(n_per_peer, "MPI_Alltoall");
  check(MPI_Alltoall(send, count, to_mpi(t), recv, count, to_mpi(t), impl_->comm), "MPI_Alltoall");
}

void Comm::alltoall_rows_raw(const void* send, void* recv, std::int64_t rows,
                             std::int64_t row_width, DType t) const {
  MPI_Datatype row = impl_->row_type(t, row_width);
  check(
      MPI_Alltoall(send, to_int_count(static_cast<std::size_t>(rows), "MPI_Alltoall"), row, recv,
                   to_int_count(static_cast<std::size_t>(rows), "MPI_Alltoall"), row, impl_->comm),
      "MPI_Alltoall");
}

void Comm::alltoallv_raw(const void* send, const int* scounts, const int* sdispl, void* recv,
                         const int* rcounts, const int* rdispl, std::int64_t row_width,
                         DType t) const {
  MPI_Datatype row = impl_->row_type(t, row_width);
  check(MPI_Alltoallv(send, scounts, sdispl, row, recv, rcounts, rdispl, row, impl_->comm),
        "MPI_Alltoallv");
}

// ---------------------------------------------------------------------------------------
struct Requests::Impl {
  std::vector<MPI_Request> reqs;  // [capacity]; MPI_REQUEST_NULL once completed
  std::size_t used = 0;
};

Requests::Requests(int capacity) : impl_(std::make_unique<Impl>()) { reserve(capacity); }
Requests::~Requests() = default;
Requests::Requests(Requests&&) noexcept = default;
Requests& Requests::operator=(Requests&&) noexcept = default;

void Requests::reserve(int capacity) {
  if (capacity > static_cast<int>(impl_->reqs.size()))
    impl_->reqs.resize(static_cast<std::size_t>(capacity), MPI_REQUEST_NULL);
}
int Requests::size() const { return static_cast<int>(impl_->used); }
int Requests::capacity() const { return static_cast<int>(impl_->reqs.size()); }

void Requests::progress() {
  if (impl_->used == 0) return;
  int done = 0;
  check(MPI_Testall(static_cast<int>(impl_->used), impl_->reqs.data(), &done, MPI_STATUSES_IGNORE),
        "MPI_Testall");
}

bool Requests::test(int i) {
  MPI_Request& r = impl_->reqs.at(static_cast<std::size_t>(i));
  if (r == MPI_REQUEST_NULL) return true;
  int done = 0;
  check(MPI_Test(&r, &done, MPI_STATUS_IGNORE), "MPI_Test");
  return done != 0;
}

void Requests::wait(int i) {
  check(MPI_Wait(&impl_->reqs.at(static_cast<std::size_t>(i)), MPI_STATUS_IGNORE), "MPI_Wait");
}

void Requests::wait_all() {
  if (impl_->used == 0) return;
  check(MPI_Waitall(static_cast<int>(impl_->used), impl_->reqs.data(), MPI_STATUSES_IGNORE),
        "MPI_Waitall");
}

void Requests::clear() {
  for (std::size_t i = 0; i < impl_->used; ++i)
    if (impl_->reqs[i] != MPI_REQUEST_NULL)
      throw CommError("Requests::clear: operation " + std::to_string(i) + " has not completed");
  impl_->used = 0;
}

int Comm::ialltoallv_raw(const void* send, const int* scounts, const int* sdispl, void* recv,
                         const int* rcounts, const int* rdispl, std::int64_t row_width, DType t,
                         Requests& requests) const {
  MPI_Datatype row = impl_->row_type(t, row_width);
  Requests::Impl& r = *requests.impl_;
  if (r.used >= r.reqs.size())
    throw CommError("MPI_Ialltoallv: the request set is full (" + std::to_string(r.reqs.size()) +
                    " outstanding operations)");
  MPI_Request* req = &r.reqs[r.used];
  check(MPI_Ialltoallv(send, scounts, sdispl, row, recv, rcounts, rdispl, row, impl_->comm, req),
        "MPI_Ialltoallv");
  return static_cast<int>(r.used++);
}

}  // namespace moesim::comm
