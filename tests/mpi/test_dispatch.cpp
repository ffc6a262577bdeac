// Dispatch -> combine is the identity for any counts, including ranks and experts that
// receive nothing; every row lands in its expert's slice, in (source rank, send) order.
#include <gtest/gtest.h>

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

void round_trip(const comm::Comm& comm, std::int64_t E, int pattern) {
  const int P = comm.size(), r = comm.rank();
  const dispatch::Placement placement{E, P};
  const std::int64_t width = 3;
  // Assignments of this rank: pattern 0 random, 1 nothing at all from odd ranks,
  // 2 everything to expert 0 (all other ranks/experts receive nothing).
  std::vector<std::int32_t> token, expert;
  const CounterRng rng(11, Stream::routing, static_cast<std::uint64_t>(r), static_cast<std::uint64_t>(pattern));
  const int n = 5 + 3 * r;
  for (int t = 0; t < n; ++t) {
    if (pattern == 1 && r % 2 == 1) break;
    const int choices = pattern == 2 ? 1 : 1 + static_cast<int>(rng.bits(static_cast<std::uint64_t>(t)) % 2);
    for (int c = 0; c < choices; ++c) {
      token.push_back(t);
      expert.push_back(pattern == 2 ? 0 : static_cast<std::int32_t>(rng.bits(1000 + static_cast<std::uint64_t>(t * 2 + c)) % static_cast<std::uint64_t>(E)));
    }
  }
  dispatch::Plan plan;
  dispatch::pack_plan(token, expert, placement, plan);
  std::vector<double> send(static_cast<std::size_t>(plan.total_send * width));
  for (std::int64_t i = 0; i < plan.total_send; ++i) {
    const auto a = static_cast<std::size_t>(plan.send_assignment[static_cast<std::size_t>(i)]);
    for (int c = 0; c < width; ++c) send[static_cast<std::size_t>(i * width + c)] = code(r, token[a], expert[a], c);
  }
  dispatch::AlltoallvDispatcher<double> disp(comm, placement);
  disp.exchange_counts(plan);
  std::vector<double> ex(static_cast<std::size_t>(plan.total_recv * width), -1.0);
  disp.to_experts(plan, send.data(), ex.data(), width);
  // Every row in local expert j's slice was meant for expert first_local + j.
  const std::int64_t first = placement.first_local(r);
  for (std::int64_t j = 0; j < placement.per_rank(); ++j)
    for (std::int64_t row = plan.expert_offset[static_cast<std::size_t>(j)]; row < plan.expert_offset[static_cast<std::size_t>(j) + 1]; ++row) {
      const double v = ex[static_cast<std::size_t>(row * width)];
      const auto e = static_cast<std::int64_t>(std::llround(std::fmod(v, 100.0)));  // column 0
      EXPECT_EQ(e, first + j) << "row " << row;
    }
  // Count conservation: rows received == rows all ranks sent to my experts.
  std::vector<std::int64_t> per_expert(static_cast<std::size_t>(E), 0);
  for (std::int32_t e : expert) ++per_expert[static_cast<std::size_t>(e)];
  comm.allreduce(std::span<std::int64_t>(per_expert), comm::ReduceOp::sum);
  std::int64_t mine = 0;
  for (std::int64_t j = 0; j < placement.per_rank(); ++j) mine += per_expert[static_cast<std::size_t>(first + j)];
  EXPECT_EQ(plan.total_recv, mine);
  // Transform at the expert, bring back, and check the identity (after undoing it).
  for (double& v : ex) v = 2.0 * v + 1.0;
  std::vector<double> back(send.size(), -1.0);
  disp.from_experts(plan, ex.data(), back.data(), width);
  for (std::size_t i = 0; i < send.size(); ++i) EXPECT_DOUBLE_EQ((back[i] - 1.0) / 2.0, send[i]) << i;
  EXPECT_EQ(disp.bytes_sent(), (plan.total_send + plan.total_recv) * width * 8);
}

}  // namespace

TEST(Dispatch, RoundTripIsIdentity) {
  const comm::Comm comm = comm::Comm::world();
  for (std::int64_t per : {1, 2, 3})
    for (int pattern : {0, 1, 2}) round_trip(comm, per * comm.size(), pattern);
}

TEST(Dispatch, PackPlanOrdersByExpertStably) {
  dispatch::Plan plan;
  const std::vector<std::int32_t> token = {0, 0, 1, 2, 3, 3}, expert = {3, 1, 1, 0, 3, 2};
  dispatch::pack_plan(token, expert, dispatch::Placement{4, 2}, plan);
  EXPECT_EQ(plan.send_token, (std::vector<std::int32_t>{2, 0, 1, 3, 0, 3}));
  EXPECT_EQ(plan.send_assignment, (std::vector<std::int64_t>{3, 1, 2, 5, 0, 4}));
  EXPECT_EQ(plan.send_rows, (std::vector<int>{3, 3}));
  EXPECT_EQ(plan.send_displ, (std::vector<int>{0, 3}));
}
