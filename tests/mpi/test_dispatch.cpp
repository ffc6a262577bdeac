// Dispatch -> combine is the identity for any counts, including ranks and experts that
// receive nothing, for both exchanges (alltoallv and capacity-padded alltoall) and for
// both layouts (E >= P, and E < P with expert replicas); every row lands in its expert's
// slice on the replica of the sender's group.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "moesim/comm/comm.hpp"
#include "moesim/dispatch/dispatcher.hpp"
#include "moesim/util/rng.hpp"

using namespace moesim;

namespace {

// Row content encodes (source rank, local token, expert, column) so misplacement shows.
double code(int rank, int token, int expert, int col) {
  return rank * 1e6 + token * 1e2 + expert + col * 1e-3;
}

void round_trip(const comm::Comm& comm, std::int64_t E, int pattern, bool padded) {
  const int P = comm.size(), r = comm.rank();
  const dispatch::Placement placement{E, P, r};
  const std::int64_t width = 3;
  // Assignments of this rank: pattern 0 random, 1 nothing at all from odd ranks,
  // 2 everything to expert 0 (all other ranks/experts receive nothing).
  std::vector<std::int32_t> token, expert;
  const CounterRng rng(11, Stream::routing, static_cast<std::uint64_t>(r),
                       static_cast<std::uint64_t>(pattern));
  const int n = 5 + 3 * r;
  for (int t = 0; t < n; ++t) {
    if (pattern == 1 && r % 2 == 1) break;
    const int choices =
        pattern == 2 ? 1 : 1 + static_cast<int>(rng.bits(static_cast<std::uint64_t>(t)) % 2);
    for (int c = 0; c < choices; ++c) {
      token.push_back(t);
      expert.push_back(pattern == 2 ? 0
                                    : static_cast<std::int32_t>(
                                          rng.bits(1000 + static_cast<std::uint64_t>(t * 2 + c)) %
                                          static_cast<std::uint64_t>(E)));
    }
  }
  dispatch::Plan plan;
  dispatch::pack_plan(token, expert, placement, plan);
  std::vector<double> send(static_cast<std::size_t>(plan.total_send * width));
  for (std::int64_t i = 0; i < plan.total_send; ++i) {
    const auto a = static_cast<std::size_t>(plan.send_assignment[static_cast<std::size_t>(i)]);
    for (int c = 0; c < width; ++c)
      send[static_cast<std::size_t>(i * width + c)] = code(r, token[a], expert[a], c);
  }
  // Rows only go to the sender's replica group.
  for (int p = 0; p < P; ++p)
    if (p / placement.group_ranks() != placement.group()) {
      EXPECT_EQ(plan.send_rows[static_cast<std::size_t>(p)], 0);
    }
  // Padding: the largest block of any (src, dst) pair, plus slack.
  int biggest = 0;
  for (int rows : plan.send_rows) biggest = std::max(biggest, rows);
  plan.padded_rows = comm.allreduce<std::int64_t>(biggest, comm::ReduceOp::max) + 2;
  const auto disp_ptr = dispatch::make_dispatcher<double>(padded, comm, placement);
  dispatch::Dispatcher<double>& disp = *disp_ptr;
  disp.exchange_counts(plan);
  std::vector<double> ex(static_cast<std::size_t>(plan.total_recv * width), -1.0);
  disp.to_experts(plan, send.data(), ex.data(), width);
  // Every row in local expert j's slice was meant for expert first_local + j.
  const std::int64_t first = placement.first_local();
  for (std::int64_t j = 0; j < placement.per_rank(); ++j)
    for (std::int64_t row = plan.expert_offset[static_cast<std::size_t>(j)];
         row < plan.expert_offset[static_cast<std::size_t>(j) + 1]; ++row) {
      const double v = ex[static_cast<std::size_t>(row * width)];
      const auto e = static_cast<std::int64_t>(std::llround(std::fmod(v, 100.0)));  // column 0
      EXPECT_EQ(e, first + j) << "row " << row;
    }
  // Count conservation: rows received == rows all ranks sent to me.
  std::vector<std::int64_t> to_peer(static_cast<std::size_t>(P), 0);
  for (std::size_t i = 0; i < token.size(); ++i)
    ++to_peer[static_cast<std::size_t>(placement.owner(expert[i]))];
  comm.allreduce(std::span<std::int64_t>(to_peer), comm::ReduceOp::sum);
  EXPECT_EQ(plan.total_recv, to_peer[static_cast<std::size_t>(r)]);
  // Transform at the expert, bring back, and check the identity (after undoing it).
  for (double& v : ex) v = 2.0 * v + 1.0;
  std::vector<double> back(send.size(), -1.0);
  disp.from_experts(plan, ex.data(), back.data(), width);
  for (std::size_t i = 0; i < send.size(); ++i)
    EXPECT_DOUBLE_EQ((back[i] - 1.0) / 2.0, send[i]) << i;
  const std::int64_t expected_bytes = padded ? 2 * P * plan.padded_rows * width * 8
                                             : (plan.total_send + plan.total_recv) * width * 8;
  EXPECT_EQ(disp.bytes_sent(), expected_bytes);
}

}  // namespace

TEST(Dispatch, RoundTripIsIdentity) {
  const comm::Comm comm = comm::Comm::world();
  for (bool padded : {false, true})
    for (std::int64_t per : {1, 2, 3})
      for (int pattern : {0, 1, 2}) round_trip(comm, per * comm.size(), pattern, padded);
}

TEST(Dispatch, RoundTripWithExpertReplicas) {
  const comm::Comm comm = comm::Comm::world();
  for (std::int64_t E = 1; E < comm.size(); ++E) {
    if (comm.size() % E != 0) continue;
    for (bool padded : {false, true})
      for (int pattern : {0, 1, 2}) round_trip(comm, E, pattern, padded);
  }
}

TEST(Dispatch, PlacementOfReplicas) {
  // 2 experts on 6 ranks: groups {0,1}, {2,3}, {4,5}; expert e of group g on rank 2g + e.
  for (int r = 0; r < 6; ++r) {
    const dispatch::Placement pl{2, 6, r};
    EXPECT_EQ(pl.replicas(), 3);
    EXPECT_EQ(pl.per_rank(), 1);
    EXPECT_EQ(pl.owner(0), 2 * (r / 2));
    EXPECT_EQ(pl.owner(1), 2 * (r / 2) + 1);
    EXPECT_EQ(pl.first_local(), r % 2);
  }
  const dispatch::Placement plain{8, 2, 1};
  EXPECT_EQ(plain.replicas(), 1);
  EXPECT_EQ(plain.owner(3), 0);
  EXPECT_EQ(plain.owner(4), 1);
  EXPECT_EQ(plain.first_local(), 4);
}

TEST(Dispatch, PackPlanOrdersByExpertStably) {
  dispatch::Plan plan;
  const std::vector<std::int32_t> token = {0, 0, 1, 2, 3, 3}, expert = {3, 1, 1, 0, 3, 2};
  dispatch::pack_plan(token, expert, dispatch::Placement{4, 2, 0}, plan);
  EXPECT_EQ(plan.send_token, (std::vector<std::int32_t>{2, 0, 1, 3, 0, 3}));
  EXPECT_EQ(plan.send_assignment, (std::vector<std::int64_t>{3, 1, 2, 5, 0, 4}));
  EXPECT_EQ(plan.send_rows, (std::vector<int>{3, 3}));
  EXPECT_EQ(plan.send_displ, (std::vector<int>{0, 3}));
}
