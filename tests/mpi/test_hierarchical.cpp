// The hierarchical (two-level) exchange against the flat alltoallv: the same receive plan
// and bitwise the same rows in both directions (float32 and float64), for every way of
// cutting the ranks into nodes (the real MPI_Comm_split_type nodes, consecutive blocks of
// L ranks, round-robin nodes), with expert replicas, empty ranks and hot experts; the byte
// split by node level; and the forward de-duplication (each token crosses to a remote node
// once, whatever number of its experts live there).
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "moesim/comm/comm.hpp"
#include "moesim/dispatch/dispatcher.hpp"
#include "moesim/util/rng.hpp"

using namespace moesim;

namespace {
// memcmp of n bytes; n = 0 compares nothing (empty vectors may hand out null pointers, which
// memcmp must not receive).
bool same_bytes(const void* a, const void* b, std::size_t n) {
  return n == 0 || std::memcmp(a, b, n) == 0;
}
}  // namespace

namespace {

struct Case {
  std::string name;
  comm::NodeMap nodes;
};

std::vector<Case> node_cases(const comm::Comm& comm) {
  const int P = comm.size(), r = comm.rank();
  std::vector<Case> cases{{"real nodes", comm.node_map()}};
  for (int L = 1; L <= P; ++L)
    if (P % L == 0)
      cases.push_back({"blocks of " + std::to_string(L), comm::NodeMap::blocks(P, r, L)});
  for (int N = 2; N <= P; ++N)
    if (P % N == 0) {
      std::vector<int> key(static_cast<std::size_t>(P));
      for (int p = 0; p < P; ++p) key[static_cast<std::size_t>(p)] = p % N;
      cases.push_back({"round-robin over " + std::to_string(N), comm::NodeMap::from_keys(key, r)});
    }
  return cases;
}

// Assignments of this rank. pattern 0: 1-3 distinct random experts per token; 1: odd ranks
// send nothing; 2: every token to experts 0 and E-1 (hot experts, many on one node).
void assignments(int r, std::int64_t E, int pattern, std::vector<std::int32_t>& token,
                 std::vector<std::int32_t>& expert) {
  const CounterRng rng(17, Stream::routing, static_cast<std::uint64_t>(r),
                       static_cast<std::uint64_t>(pattern));
  const int n = 6 + 5 * r;
  for (int t = 0; t < n; ++t) {
    if (pattern == 1 && r % 2 == 1) break;
    std::set<std::int32_t> chosen;
    if (pattern == 2) {
      chosen = {0, static_cast<std::int32_t>(E - 1)};
    } else {
      const int choices = 1 + static_cast<int>(rng.bits(static_cast<std::uint64_t>(t)) % 3);
      for (int c = 0; c < choices; ++c)
        chosen.insert(
            static_cast<std::int32_t>(rng.bits(1000 + static_cast<std::uint64_t>(t * 3 + c)) %
                                      static_cast<std::uint64_t>(E)));
    }
    for (std::int32_t e : chosen) {
      token.push_back(t);
      expert.push_back(e);
    }
  }
}

template <typename T>
void compare(const comm::Comm& comm, std::int64_t E, int pattern, const Case& c) {
  SCOPED_TRACE(c.name + ", E = " + std::to_string(E) + ", pattern " + std::to_string(pattern));
  const int P = comm.size(), r = comm.rank();
  const dispatch::Placement placement{E, P, r};
  const std::int64_t width = 5;
  std::vector<std::int32_t> token, expert;
  assignments(r, E, pattern, token, expert);
  dispatch::Plan flat_plan, hier_plan;
  dispatch::pack_plan(token, expert, placement, flat_plan);
  dispatch::pack_plan(token, expert, placement, hier_plan);
  dispatch::AlltoallvDispatcher<T> flat(comm, placement, c.nodes);
  dispatch::HierarchicalDispatcher<T> hier(comm, placement, c.nodes);
  flat.exchange_counts(flat_plan);
  hier.exchange_counts(hier_plan);
  ASSERT_EQ(hier_plan.recv_per_peer_expert, flat_plan.recv_per_peer_expert);
  ASSERT_EQ(hier_plan.expert_offset, flat_plan.expert_offset);
  ASSERT_EQ(hier_plan.recv_rows, flat_plan.recv_rows);
  ASSERT_EQ(hier_plan.total_recv, flat_plan.total_recv);
  const auto S = static_cast<std::size_t>(flat_plan.total_send * width);
  const auto R = static_cast<std::size_t>(flat_plan.total_recv * width);

  // Forward: token rows (copies of one random row per token), de-duplicated path.
  const CounterRng vals(5, Stream::data_train, static_cast<std::uint64_t>(r));
  std::vector<T> send(S), ex_flat(R, T(-7)), ex_hier(R, T(-9));
  for (std::int64_t i = 0; i < flat_plan.total_send; ++i)
    for (std::int64_t j = 0; j < width; ++j)
      send[static_cast<std::size_t>(i * width + j)] =
          static_cast<T>(vals.normal(static_cast<std::uint64_t>(
              flat_plan.send_token[static_cast<std::size_t>(i)] * width + j)));
  flat.to_experts_token_rows(flat_plan, send.data(), ex_flat.data(), width);
  hier.to_experts_token_rows(hier_plan, send.data(), ex_hier.data(), width);
  EXPECT_TRUE(same_bytes(ex_flat.data(), ex_hier.data(), R * sizeof(T))) << "token rows";

  // Each token crosses to a remote node once: independent count of (remote node, token).
  std::set<std::pair<int, int>> crossings;
  std::int64_t remote_rows = 0;
  for (std::size_t a = 0; a < token.size(); ++a) {
    const int node = c.nodes.node_of[static_cast<std::size_t>(placement.owner(expert[a]))];
    if (node == c.nodes.node) continue;
    crossings.insert({node, token[a]});
    ++remote_rows;
  }
  EXPECT_EQ(hier.last_inter_rows(), remote_rows);
  EXPECT_EQ(hier.last_inter_unique(), static_cast<std::int64_t>(crossings.size()));
  EXPECT_EQ(hier.bytes_inter_node(), static_cast<std::int64_t>(crossings.size()) * width *
                                         static_cast<std::int64_t>(sizeof(T)));
  EXPECT_EQ(flat.bytes_inter_node(), remote_rows * width * static_cast<std::int64_t>(sizeof(T)));
  EXPECT_EQ(hier.bytes_token_dispatch_inter_node(), hier.bytes_inter_node());
  EXPECT_EQ(flat.bytes_token_dispatch_inter_node(), flat.bytes_inter_node());

  // Gradients: different rows per assignment, undeduplicated path.
  flat.reset_bytes();
  hier.reset_bytes();
  for (std::size_t i = 0; i < S; ++i) send[i] = static_cast<T>(vals.normal(1000000 + i));
  flat.to_experts(flat_plan, send.data(), ex_flat.data(), width);
  hier.to_experts(hier_plan, send.data(), ex_hier.data(), width);
  EXPECT_TRUE(same_bytes(ex_flat.data(), ex_hier.data(), R * sizeof(T))) << "gradient rows";

  // Combine: random expert-major rows back to send order.
  std::vector<T> ex(R), back_flat(S, T(-1)), back_hier(S, T(-2));
  for (std::size_t i = 0; i < R; ++i) ex[i] = static_cast<T>(vals.normal(2000000 + i));
  flat.from_experts(flat_plan, ex.data(), back_flat.data(), width);
  hier.from_experts(hier_plan, ex.data(), back_hier.data(), width);
  EXPECT_TRUE(same_bytes(back_flat.data(), back_hier.data(), S * sizeof(T))) << "combine";
  // Without de-duplication every row crosses once, as in the flat exchange (summed over
  // ranks: on the way back the relay, not the expert's rank, sends across).
  EXPECT_EQ(comm.allreduce<std::int64_t>(hier.bytes_inter_node(), comm::ReduceOp::sum),
            comm.allreduce<std::int64_t>(flat.bytes_inter_node(), comm::ReduceOp::sum));
  // A one-node cut sends nothing across nodes.
  if (c.nodes.nodes == 1) {
    EXPECT_EQ(hier.bytes_inter_node(), 0);
  }
}

template <typename T>
void all_cases() {
  const comm::Comm comm = comm::Comm::world();
  const int P = comm.size();
  std::vector<std::int64_t> experts{static_cast<std::int64_t>(P), 2 * static_cast<std::int64_t>(P),
                                    3 * static_cast<std::int64_t>(P)};
  for (std::int64_t E = 1; E < P; ++E)
    if (P % E == 0) experts.push_back(E);  // expert replicas
  for (const Case& c : node_cases(comm))
    for (std::int64_t E : experts)
      for (int pattern : {0, 1, 2}) compare<T>(comm, E, pattern, c);
}

}  // namespace

TEST(Hierarchical, BitwiseEqualToAlltoallvFloat64) { all_cases<double>(); }
TEST(Hierarchical, BitwiseEqualToAlltoallvFloat32) { all_cases<float>(); }

TEST(Hierarchical, NodeMaps) {
  const comm::NodeMap b = comm::NodeMap::blocks(6, 4, 2);
  EXPECT_EQ(b.nodes, 3);
  EXPECT_EQ(b.node, 2);
  EXPECT_EQ(b.local_rank, 0);
  EXPECT_EQ(b.local_size, 2);
  EXPECT_EQ(b.node_of, (std::vector<int>{0, 0, 1, 1, 2, 2}));
  EXPECT_EQ(b.rank_at(1, 1), 3);
  EXPECT_TRUE(b.uniform());
  // Keys are numbered by their lowest rank; local ranks follow rank order.
  const comm::NodeMap k = comm::NodeMap::from_keys({7, 3, 7, 3, 9}, 2);
  EXPECT_EQ(k.node_of, (std::vector<int>{0, 1, 0, 1, 2}));
  EXPECT_EQ(k.local_of, (std::vector<int>{0, 0, 1, 1, 0}));
  EXPECT_EQ(k.node_size, (std::vector<int>{2, 2, 1}));
  EXPECT_EQ(k.local_rank, 1);
  EXPECT_FALSE(k.uniform());
  // On one machine without MOESIM_RANKS_PER_NODE every rank is on one node.
  const comm::Comm comm = comm::Comm::world();
  const comm::NodeMap real = comm.node_map();
  EXPECT_EQ(static_cast<int>(real.node_of.size()), comm.size());
  EXPECT_EQ(real.nodes * real.local_size, comm.size());
}

TEST(Hierarchical, UnequalNodesAreRefused) {
  const comm::Comm comm = comm::Comm::world();
  if (comm.size() < 3) GTEST_SKIP() << "unequal nodes need 3 or more ranks";
  std::vector<int> key(static_cast<std::size_t>(comm.size()), 1);
  key[0] = 0;  // node 0 = rank 0 alone, node 1 = the rest
  const comm::NodeMap m = comm::NodeMap::from_keys(key, comm.rank());
  ASSERT_FALSE(m.uniform());
  EXPECT_THROW((dispatch::HierarchicalDispatcher<double>(
                   comm, dispatch::Placement{comm.size(), comm.size(), comm.rank()}, m)),
               ConfigError);
}
