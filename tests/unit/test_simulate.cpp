// moesim simulate: each step-model term against its closed form, the traffic of hand-made
// loads, capacity drops against hand cases, and the workload generators' statistics against
// their definitions.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "moesim/routing/router.hpp"
#include "moesim/simulate/projection.hpp"
#include "moesim/simulate/step_model.hpp"
#include "moesim/simulate/workload.hpp"

namespace moesim::simulate {
namespace {

Machine test_machine() {
  Machine M;
  M.ranks_per_node = 4;
  M.alpha_intra = 2e-6;
  M.beta_intra = 5e9;
  M.alpha_inter = 7e-6;
  M.beta_inter = 12e9;
  M.flops = 1e11;
  M.mem_bw = 2e10;
  M.route_per_score = 3e-9;
  return M;
}

TEST(StepModel, GemmIsComputeBoundForLargeAndMemoryBoundForSmallM) {
  const Machine M = test_machine();
  // 1024^3: 2 * 2^30 FLOP / 1e11 = 21.47 ms vs 3 * 2^20 * 4 B / 2e10 = 0.63 ms.
  EXPECT_DOUBLE_EQ(gemm_time(1024, 1024, 1024, 4, M), 2.0 * 1073741824.0 / 1e11);
  // m = 1: 2 * 2^20 / 1e11 = 21 us vs (1024 + 2^20 + 1024) * 4 / 2e10 = 210 us.
  EXPECT_DOUBLE_EQ(gemm_time(1, 1024, 1024, 4, M), (1024.0 + 1048576.0 + 1024.0) * 4.0 / 2e10);
  EXPECT_EQ(gemm_time(0, 1024, 1024, 4, M), 0.0);
}

TEST(StepModel, ExpertTermsAreTwoForwardAndFourBackwardGemms) {
  Machine M = test_machine();
  M.mem_bw = 1e30;  // pure compute: closed forms 4 r d f / F and 8 r d f / F
  const double r = 512, d = 256, f = 1024;
  EXPECT_NEAR(expert_forward_time(r, d, f, 4, M), 4 * r * d * f / M.flops, 1e-15);
  EXPECT_NEAR(expert_backward_time(r, d, f, 4, M), 8 * r * d * f / M.flops, 1e-15);
  EXPECT_EQ(expert_forward_time(0, d, f, 4, M), 0.0);
}

TEST(StepModel, GateIsGemmPlusRouterWorkPerScore) {
  Machine M = test_machine();
  M.mem_bw = 1e30;
  EXPECT_NEAR(gate_forward_time(4096, 512, 8, 4, M), 2.0 * 4096 * 512 * 8 / 1e11 + 4096 * 8 * 3e-9,
              1e-15);
}

TEST(StepModel, UniformExchangeOnOneNodeIsAlphaPlusBytesOverBeta) {
  const Machine M = test_machine();
  const double b = 1 << 20;
  // Two ranks on one node: one message of b bytes each way.
  EXPECT_DOUBLE_EQ(exchange_time(uniform_exchange_load(2, 4, b), M), 2e-6 + b / 5e9);
  // Four ranks on one node: 3 messages, 3 b bytes per rank.
  EXPECT_DOUBLE_EQ(exchange_time(uniform_exchange_load(4, 4, b), M), 3 * 2e-6 + 3 * b / 5e9);
}

TEST(StepModel, UniformExchangeAcrossNodesIsSetByTheNicShare) {
  const Machine M = test_machine();
  const double b = 1 << 16;
  // 16 ranks, 4 per node: per rank 12 inter-node messages; per node 4 * 12 blocks through the
  // NIC; intra: 3 messages of b. The inter level dominates here.
  const double inter = 12 * 7e-6 + 4.0 * 12.0 * b / 12e9;
  const double intra = 3 * 2e-6 + 3 * b / 5e9;
  ASSERT_GT(inter, intra);
  EXPECT_DOUBLE_EQ(exchange_time(uniform_exchange_load(16, 4, b), M), inter);
}

TEST(StepModel, AllreduceRingAndTreeClosedForms) {
  const Machine M = test_machine();
  const double bytes = 8e6;
  EXPECT_DOUBLE_EQ(allreduce_ring_time(8, bytes, false, M),
                   2 * 7 * 2e-6 + 2.0 * 7.0 / 8.0 * bytes / 5e9);
  EXPECT_DOUBLE_EQ(allreduce_tree_time(8, bytes, false, M), 3 * (2e-6 + bytes / 5e9));
  // Large messages take the ring, tiny ones the tree.
  EXPECT_DOUBLE_EQ(allreduce_time(8, bytes, false, M), allreduce_ring_time(8, bytes, false, M));
  EXPECT_DOUBLE_EQ(allreduce_time(8, 64, false, M), allreduce_tree_time(8, 64, false, M));
  // Across nodes: inter alpha, ring beta = min(beta_intra, beta_inter).
  EXPECT_DOUBLE_EQ(allreduce_ring_time(16, bytes, true, M),
                   2 * 15 * 7e-6 + 2.0 * 15.0 / 16.0 * bytes / 5e9);
  EXPECT_EQ(allreduce_time(1, bytes, false, M), 0.0);
}

TEST(StepModel, OptimizerIsMemoryBound) {
  const Machine M = test_machine();
  EXPECT_DOUBLE_EQ(optimizer_time(1e6, 4, OptimizerKind::adam, M), 1e6 * 4 * 7 / 2e10);
  EXPECT_DOUBLE_EQ(optimizer_time(1e6, 4, OptimizerKind::sgd, M), 1e6 * 4 * 5 / 2e10);
  Machine slow = M;
  slow.optimizer_per_param = 5e-9;  // calibrated: 5 ns per parameter beats 1.4 ns of traffic
  EXPECT_DOUBLE_EQ(optimizer_time(1e6, 4, OptimizerKind::adam, slow), 1e6 * 5e-9);
}

TEST(StepModel, PipelinedTimeClosedForms) {
  // d = 1: nothing hidden.
  EXPECT_DOUBLE_EQ(pipelined_time(2, 3, 5, 1), 10);
  // Compute-bound, d = 4: first quarter in, all compute, last quarter back.
  EXPECT_DOUBLE_EQ(pipelined_time(1, 1, 10, 4), 0.25 + 10 + 0.25);
  // Link-bound, d = 4: the link never idles after the first chunk: to + back in all.
  EXPECT_DOUBLE_EQ(pipelined_time(10, 10, 1, 4), 20);
  // Many chunks: the longer of the link and the experts.
  EXPECT_NEAR(pipelined_time(3, 3, 4, 1e9), 6, 1e-8);
  EXPECT_NEAR(pipelined_time(1, 1, 4, 1e9), 4, 1e-8);
}

// A burstable link (token bucket): refill at the link's rate up to B while idle; while tokens last
// the link sends at the burst rate and they fall at (burst - beta); without a bucket nothing
// changes.
TEST(StepModel, TokenBucketClosedForms) {
  Machine M = test_machine();
  ExchangeLoad x;
  x.inter_messages = 3;
  x.inter_bytes = 1e6;
  const double plain = exchange_time(x, M, 5e5);  // no bucket: tokens are ignored
  EXPECT_DOUBLE_EQ(plain, 3 * M.alpha_inter + 1e6 / M.beta_inter);
  EXPECT_DOUBLE_EQ(bucket_refill(10, 1.0, M), 0.0);
  EXPECT_DOUBLE_EQ(burst_saving(1e6, 5e5, M), 0.0);
  M.burst_bytes = 4e5;
  M.beta_burst = 48e9;                                               // 4x the link
  EXPECT_DOUBLE_EQ(bucket_refill(1e5, 1e-5, M), 1e5 + 1e-5 * 12e9);  // 2.2e5 < B
  EXPECT_DOUBLE_EQ(bucket_refill(1e5, 1.0, M), 4e5);                 // capped at B
  // 4e5 tokens carry S_1 = 4e5 * 48 / 36 bytes at the burst rate, so 1e6 bytes save the tokens'
  // worth of link time (4e5 / beta) and empty the bucket
  EXPECT_NEAR(exchange_time(x, M, 4e5), 3 * M.alpha_inter + 6e5 / 12e9, 1e-18);
  EXPECT_DOUBLE_EQ(bucket_drain(4e5, 1e6, M), 0.0);
  // fewer bytes than S_1: all of them at the burst rate, tokens fall at (48 - 12) / 48 per byte
  x.inter_bytes = 1e5;
  EXPECT_NEAR(exchange_time(x, M, 4e5), 3 * M.alpha_inter + 1e5 / 48e9, 1e-18);
  EXPECT_DOUBLE_EQ(bucket_drain(4e5, 1e5, M), 4e5 - 0.75e5);
  EXPECT_DOUBLE_EQ(exchange_time(x, M, 0), 3 * M.alpha_inter + 1e5 / 12e9);
  // machine files: a bucket needs a rate above the link's (validate refuses otherwise)
  ClusterConfig c;
  c.inter_bandwidth_GBps = 0.125;
  c.inter_burst_bytes = 125000;
  c.inter_burst_GBps = 0.5;
  const Machine m = machine_from(c, Precision::float32);
  EXPECT_DOUBLE_EQ(m.burst_bytes, 125000);
  EXPECT_DOUBLE_EQ(m.beta_burst, 0.5e9);
  c.inter_burst_bytes = 0;
  EXPECT_DOUBLE_EQ(machine_from(c, Precision::float32).burst_bytes, 0.0);
}

TEST(StepModel, MachineFromClusterConvertsUnits) {
  ClusterConfig c;
  c.intra_latency_us = 1.5;
  c.intra_bandwidth_GBps = 20;
  c.gemm_GFLOPs = 80;
  c.gemm_GFLOPs_float64 = 0;
  const Machine m32 = machine_from(c, Precision::float32);
  const Machine m64 = machine_from(c, Precision::float64, 3);
  EXPECT_DOUBLE_EQ(m32.alpha_intra, 1.5e-6);
  EXPECT_DOUBLE_EQ(m32.beta_intra, 20e9);
  EXPECT_DOUBLE_EQ(m32.flops, 80e9);
  EXPECT_DOUBLE_EQ(m64.flops, 40e9);
  EXPECT_EQ(m64.ranks_per_node, 3);
}

TEST(StepModel, CurveTimeInterpolatesMeasuredPoints) {
  const std::vector<double> R{8, 16, 64}, T{1.0, 1.5, 4.5};
  EXPECT_EQ(curve_time(0, R, T), 0.0);
  EXPECT_DOUBLE_EQ(curve_time(3, R, T), 1.0);  // below the first point: its time (floor)
  EXPECT_DOUBLE_EQ(curve_time(8, R, T), 1.0);  // on the points
  EXPECT_DOUBLE_EQ(curve_time(64, R, T), 4.5);
  EXPECT_DOUBLE_EQ(curve_time(12, R, T), 1.25);        // 1 + 4 (0.5 / 8)
  EXPECT_DOUBLE_EQ(curve_time(40, R, T), 3.0);         // 1.5 + 24 (3 / 48)
  EXPECT_DOUBLE_EQ(curve_time(160, R, T), 10.5);       // 4.5 + 96 (3 / 48): the last slope
  EXPECT_DOUBLE_EQ(curve_time(20, {10}, {2.0}), 4.0);  // one point: proportional
}

TEST(StepModel, ExpertTimesComeFromTheMeasuredCurveOfTheirShapeAndPrecision) {
  ClusterConfig c;
  c.gemm_GFLOPs = 100;
  c.memory_bandwidth_GBps = 1e12;  // roofline = pure compute
  c.expert_table =
      "float32 256x1024 8 0.1 0.3; float32 256x1024 64 0.8 2.4;"
      "float64 256x1024 8 0.2 0.6; float32 64x256 8 0.01 0.03";
  const Machine m32 = machine_from(c, Precision::float32);
  ASSERT_EQ(m32.expert_curves.size(), 2u);
  EXPECT_DOUBLE_EQ(expert_forward_time(32, 256, 1024, 4, m32), (0.1 + 24.0 * 0.7 / 56.0) * 1e-3);
  EXPECT_DOUBLE_EQ(expert_backward_time(128, 256, 1024, 4, m32), (2.4 + 64.0 * 2.1 / 56.0) * 1e-3);
  EXPECT_DOUBLE_EQ(expert_forward_time(16, 64, 256, 4, m32), 0.02e-3);  // one point
  // A shape without a curve: the roofline 4 r d f / F.
  EXPECT_NEAR(expert_forward_time(32, 128, 512, 4, m32), 4.0 * 32 * 128 * 512 / 100e9, 1e-15);
  const Machine m64 = machine_from(c, Precision::float64);
  ASSERT_EQ(m64.expert_curves.size(), 1u);
  EXPECT_DOUBLE_EQ(expert_backward_time(8, 256, 1024, 8, m64), 0.6e-3);
  // bfloat16 has no entry: roofline at gemm_GFLOPs.
  EXPECT_TRUE(machine_from(c, Precision::bfloat16).expert_curves.empty());
}

// A hand-made load source: every group routes `counts[e]` to expert e.
class HandSource final : public LoadSource {
 public:
  explicit HandSource(std::vector<std::int32_t> c) : counts(std::move(c)) {}
  void begin_layer(std::int64_t, std::int64_t) override {}
  void group_routed(std::int64_t, std::int64_t, std::int64_t, std::vector<std::int32_t>& routed,
                    std::vector<std::int32_t>& touched) override {
    for (std::size_t e = 0; e < counts.size(); ++e)
      if (counts[e] > 0) {
        routed[e] = counts[e];
        touched.push_back(static_cast<std::int32_t>(e));
      }
  }
  std::vector<std::int32_t> counts;
};

Config small_config() {
  Config cfg;
  cfg.model.d_model = 64;
  cfg.model.d_ff = 256;
  cfg.model.layers = 1;
  cfg.routing.num_experts = 4;
  cfg.routing.k = 2;
  cfg.routing.capacity_factor = Rational{1, 1};
  cfg.routing.group_size = 8;
  cfg.data.tokens_per_step = 32;
  cfg.simulate.scaling = "strong";
  return cfg;
}

TEST(Projection, CapacityDropsMatchAHandCase) {
  // S = 8, E = 4, k = 2, cf = 1: C = ceil(2 * 8 * 1 / 4) = 4 (routing's own function).
  const Config cfg = small_config();
  ASSERT_EQ(routing::capacity(2, 8, 4, cfg.routing.capacity_factor, 0), 4);
  const Scenario sc = make_scenario(cfg, 2, 2);
  EXPECT_EQ(sc.capacity, 4);
  HandSource src({6, 2, 4, 4});  // 16 assignments per group, expert 0 over by 2
  const Projection p = project(cfg, sc, test_machine(), src, 1);
  EXPECT_DOUBLE_EQ(p.dropped_fraction, 2.0 / 16.0);
}

TEST(Projection, TrafficMatrixFollowsThePlacement) {
  // 32 tokens, groups of 8 -> 4 groups; P = 2: ranks own groups {0,1} and {2,3}; experts
  // {0,1} on rank 0, {2,3} on rank 1. Kept per group: {4,2,4,4} -> to rank 0: 6, to rank 1: 8.
  const Config cfg = small_config();
  const Scenario sc = make_scenario(cfg, 2, 2);
  HandSource src({6, 2, 4, 4});
  std::vector<std::int64_t> traffic;
  project(cfg, sc, test_machine(), src, 1, &traffic);
  ASSERT_EQ(traffic.size(), 4u);
  EXPECT_EQ(traffic[0], 12);  // 2 groups x 6 rows, rank 0 -> rank 0
  EXPECT_EQ(traffic[1], 16);
  EXPECT_EQ(traffic[2], 12);
  EXPECT_EQ(traffic[3], 16);
  // E < P: 2 experts on 4 ranks -> replica groups {0,1}, {2,3}; rank 2's rows stay in {2,3}.
  Config c2 = cfg;
  c2.routing.num_experts = 2;
  c2.routing.k = 1;
  const Scenario s2 = make_scenario(c2, 4, 4);
  HandSource src2({3, 4});  // C = ceil(1 * 8 * 1 / 2) = 4: nothing dropped
  project(c2, s2, test_machine(), src2, 1, &traffic);
  ASSERT_EQ(traffic.size(), 16u);
  EXPECT_EQ(traffic[2 * 4 + 2], 3);
  EXPECT_EQ(traffic[2 * 4 + 3], 4);
  EXPECT_EQ(traffic[2 * 4 + 0], 0);
  EXPECT_EQ(traffic[0 * 4 + 1], 4);
}

TEST(Projection, DispatchOfABalancedExchangeIsItsClosedForm) {
  // Every group sends 2 rows to each of 4 experts (no drops): each rank holds one group and
  // sends 4 rows to each other rank; P = 4 on one node.
  Config cfg = small_config();
  cfg.data.tokens_per_step = 32;
  const Scenario sc = make_scenario(cfg, 4, 4);
  HandSource src({4, 4, 4, 4});  // per group of 8 tokens, k = 2: 16 assignments, C = 4
  const Machine M = test_machine();
  const Projection p = project(cfg, sc, M, src, 1);
  const double rb = 64 * 4;  // bytes per row
  // Each rank: 4 rows to itself, 4 rows to each of 3 peers; receives the same.
  const double exch = 3 * M.alpha_intra + 3 * 4 * rb / M.beta_intra;
  const double pack = 2.0 * (16 + 16) * rb / M.mem_bw;
  const double counts = 2 * (M.alpha_intra + 0.5 * 4 * 4.0 / M.beta_intra);  // log2(4) rounds
  EXPECT_NEAR(p.time_dispatch, pack + counts + exch, 1e-15);
  EXPECT_DOUBLE_EQ(p.load_imbalance, 1.0);
  EXPECT_DOUBLE_EQ(p.bytes_inter_node, 0.0);
  EXPECT_DOUBLE_EQ(p.bytes_intra_node, 4.0 * 4 * 3 * 4 * rb);  // 4 exchanges x 4 ranks x 12 rows
  // Expert phase: 16 rows on the one local expert of each rank.
  EXPECT_NEAR(p.time_expert, expert_forward_time(16, 64, 256, 4, M), 1e-15);
}

// routing.overlap_degree = d: the forward exchange around the experts becomes pipelined_time's
// exposed part (split between dispatch and combine), the expert phase is unchanged, and a d above
// the experts per rank counts as that many chunks.
TEST(Projection, OverlapDegreePipelinesTheExchangeAroundTheExperts) {
  Config cfg = small_config();
  const Scenario sc = make_scenario(cfg, 2, 2);  // E = 4 on 2 ranks: 2 experts per rank
  HandSource src({4, 4, 4, 4});
  Machine M = test_machine();
  M.beta_intra = 2e6;  // a slow link, so the exchange is worth hiding
  const Projection p1 = project(cfg, sc, M, src, 1);
  cfg.routing.overlap_degree = 2;
  const Projection p2 = project(cfg, sc, M, src, 1);
  cfg.routing.overlap_degree = 8;  // clamped to the 2 local experts
  const Projection p8 = project(cfg, sc, M, src, 1);
  const double rb = 64 * 4;
  // Each rank: 16 rows to itself, 16 to the peer (1 message), 32 rows packed each way.
  const double way = M.alpha_intra + 16 * rb / M.beta_intra + 2.0 * 32 * rb / M.mem_bw;
  const double fwd = p1.time_expert;
  EXPECT_DOUBLE_EQ(p2.time_expert, fwd);
  const double hidden = 2 * way - (pipelined_time(way, way, fwd, 2) - fwd);
  EXPECT_GT(hidden, 0);
  EXPECT_NEAR((p1.time_dispatch + p1.time_combine) - (p2.time_dispatch + p2.time_combine), hidden,
              1e-12 * p1.time_step);
  EXPECT_LT(p2.time_backward, p1.time_backward);
  EXPECT_DOUBLE_EQ(p8.time_step, p2.time_step);
  // The hierarchical exchange is never pipelined (runs refuse the combination).
  Scenario hier = sc;
  hier.algorithm = Algorithm::hierarchical;
  cfg.routing.overlap_degree = 1;
  const Projection h1 = project(cfg, hier, M, src, 1);
  cfg.routing.overlap_degree = 2;
  EXPECT_DOUBLE_EQ(project(cfg, hier, M, src, 1).time_step, h1.time_step);
}

// Across 2 nodes (1 rank each) with a token bucket of half the exchange: the bucket is full
// before the first dispatch (the link idled), so half its bytes leave at the burst rate; the
// dispatch drains it, and the combine finds what refilled at the link's rate during the experts.
// The pipelined exchange keeps the link busy: no saving is modelled there.
TEST(Projection, ABurstableLinkSpeedsUpTheExchangeAfterIdleTime) {
  Config cfg = small_config();
  const Scenario sc = make_scenario(cfg, 2, 1);  // 2 nodes, experts {0,1} and {2,3}
  HandSource src({4, 4, 4, 4});                  // each rank sends 16 rows to the other node
  Machine M = test_machine();
  M.beta_inter = 1e6;  // slow: 4096 B take 4 ms, the experts ~10 us refill ~10 B
  const Projection plain = project(cfg, sc, M, src, 1);
  const double rb = 64 * 4, bytes = 16 * rb;
  M.burst_bytes = bytes / 2;
  M.beta_burst = 1e8;
  const Projection b = project(cfg, sc, M, src, 1);
  const double per_byte = 1 / M.beta_inter - 1 / M.beta_burst;
  // the full bucket (bytes / 2 tokens) saves its worth of link time: bytes / 2 / beta
  ASSERT_LT(bytes / 2 / M.beta_inter, bytes * per_byte);
  EXPECT_NEAR(plain.time_dispatch - b.time_dispatch, bytes / 2 / M.beta_inter, 1e-12);
  // the dispatch empties it; the experts refill time_expert x beta tokens, worth time_expert
  ASSERT_EQ(bucket_drain(bytes / 2, bytes, M), 0.0);
  ASSERT_LT(b.time_expert * M.beta_inter, bytes / 2);
  EXPECT_NEAR(plain.time_combine - b.time_combine, b.time_expert, 1e-12);
  EXPECT_GT(plain.time_backward - b.time_backward, 0.0);
  EXPECT_LT(plain.time_backward - b.time_backward, bytes / M.beta_inter);
  EXPECT_NEAR(plain.time_step - b.time_step,
              (plain.time_dispatch - b.time_dispatch) + (plain.time_combine - b.time_combine) +
                  (plain.time_backward - b.time_backward),
              1e-12);
  EXPECT_DOUBLE_EQ(b.bytes_inter_node, plain.bytes_inter_node);
  cfg.routing.overlap_degree = 2;
  const Projection o = project(cfg, sc, M, src, 1);
  M.burst_bytes = 0;
  EXPECT_DOUBLE_EQ(o.time_step, project(cfg, sc, M, src, 1).time_step);
}

// The combine exchange, timed per rank and reported as the maximum, includes the wait of the rank
// with less expert work: rank 0 hosts experts {0, 1} with 16 and 0 rows, rank 1 experts {2, 3}
// with 16 each, so rank 0 waits one expert's forward time.
TEST(Projection, CombineWaitsForTheBusiestRank) {
  const Config cfg = small_config();
  const Scenario sc = make_scenario(cfg, 2, 2);
  HandSource src({4, 0, 4, 4});  // per group of 8 tokens (C = 4: nothing dropped)
  Machine M = test_machine();
  M.beta_intra = 1e30;  // the exchange is its message latency alone
  M.mem_bw = 1e30;      // no pack, copy or weighted-sum time
  const Projection p = project(cfg, sc, M, src, 1);
  const double f16 = expert_forward_time(16, 64, 256, 4, M);
  EXPECT_NEAR(p.time_expert, 2 * f16, 1e-15);
  EXPECT_NEAR(p.time_combine, M.alpha_intra + rank_wait_time(2 * f16, f16), 1e-15);
  EXPECT_DOUBLE_EQ(rank_wait_time(3, 5), 0);
  // The step is one rank's path: the wait is in the combine phase but not in the step (rank 0
  // waits there exactly as long as it computed less), so step = phases - wait.
  const double phases = p.time_gate + p.time_dispatch + p.time_expert + p.time_combine +
                        p.time_backward + p.time_sync + p.time_other;
  EXPECT_NEAR(p.time_step, phases - rank_wait_time(2 * f16, f16), 1e-15);
}

// Ranks sharing cores (processor sharing): the expert times were timed with every rank busy; the
// busiest rank finishes at max(t_max C / P, t_sum / P).
TEST(StepModel, SharedCoresClosedForms) {
  EXPECT_DOUBLE_EQ(shared_cores_time(10, 13, 4, 2), 5);  // t_max C / P: it runs alone at the end
  EXPECT_DOUBLE_EQ(shared_cores_time(5, 20, 4, 2), 5);   // balanced: the calibrated time
  EXPECT_DOUBLE_EQ(shared_cores_time(6, 20, 4, 2), 5.0);
  EXPECT_DOUBLE_EQ(shared_cores_time(10, 13, 2, 2), 10);  // a core per rank
  EXPECT_DOUBLE_EQ(shared_cores_time(10, 13, 4, 0), 10);  // a cluster
}

// The hand case above with both ranks on one core: rank 0 (16 rows) and rank 1 (32 rows) were
// timed at half a core each (f16 and 2 f16). Rank 0 finishes at f16, when rank 1 has done half
// its work; the rest takes 0.5 f16 on the whole core: rank 1 ends at 1.5 f16, rank 0 waits 0.5 f16.
TEST(Projection, RanksSharingACoreShareOutTheExpertTime) {
  const Config cfg = small_config();
  const Scenario sc = make_scenario(cfg, 2, 2);
  HandSource src({4, 0, 4, 4});
  Machine M = test_machine();
  M.beta_intra = 1e30;
  M.mem_bw = 1e30;
  const double f16 = expert_forward_time(16, 64, 256, 4, M);
  M.shared_cores = 1;
  const Projection p = project(cfg, sc, M, src, 1);
  EXPECT_NEAR(p.time_expert, 1.5 * f16, 1e-15);
  EXPECT_NEAR(p.time_combine_wait, 0.5 * f16, 1e-15);
  EXPECT_NEAR(p.time_combine, M.alpha_intra + 0.5 * f16, 1e-15);
  M.shared_cores = 2;  // a core per rank: unchanged
  const Projection q = project(cfg, sc, M, src, 1);
  EXPECT_NEAR(q.time_expert, 2 * f16, 1e-15);
}

TEST(Projection, TheBatchCostsItsCalibratedTimePerValue) {
  const Config cfg = small_config();
  const Scenario sc = make_scenario(cfg, 2, 2);
  HandSource src({4, 4, 4, 4});
  Machine M = test_machine();
  const Projection a = project(cfg, sc, M, src, 1);
  M.data_per_value = 25e-9;
  const Projection b = project(cfg, sc, M, src, 1);
  const double n = static_cast<double>(cfg.data.tokens_per_step) / 2;  // tokens per rank
  const double want = n * static_cast<double>(cfg.data.input_dim) * 25e-9;
  EXPECT_DOUBLE_EQ(data_time(n, static_cast<double>(cfg.data.input_dim), M), want);
  EXPECT_NEAR(b.time_other - a.time_other, want, 1e-15);
  EXPECT_NEAR(b.time_step - a.time_step, want, 1e-15);
}

TEST(Projection, PaddedExchangeSendsCapacityBlocks) {
  Config cfg = small_config();
  cfg.simulate.algorithm = "padded";
  const Scenario sc = make_scenario(cfg, 2, 2);
  HandSource src({1, 0, 0, 0});
  const Machine M = test_machine();
  const Projection p = project(cfg, sc, M, src, 1);
  // Block per (src, dst) = C * local experts * local groups = 4 * 2 * 2 = 16 rows.
  const double rb = 64 * 4;
  EXPECT_DOUBLE_EQ(p.bytes_intra_node, 4.0 * 2 * 16 * rb);
}

TEST(Projection, HierarchicalUsesOneInterNodeMessagePerNode) {
  // 8 ranks, 2 per node, uniform: flat sends 6 inter-node messages per rank, hierarchical 3.
  Config cfg = small_config();
  cfg.routing.num_experts = 8;
  cfg.routing.k = 8;
  cfg.routing.capacity_factor = Rational{0, 1};
  cfg.data.tokens_per_step = 64;
  Machine M = test_machine();
  M.beta_inter = 1e30;
  M.beta_intra = 1e30;
  M.mem_bw = 1e30;
  HandSource src({1, 1, 1, 1, 1, 1, 1, 1});
  Scenario flat = make_scenario(cfg, 8, 2);
  Scenario hier = flat;
  hier.algorithm = Algorithm::hierarchical;
  const Projection pf = project(cfg, flat, M, src, 1);
  const Projection ph = project(cfg, hier, M, src, 1);
  const double counts = counts_exchange_time(8, 2, 4.0, M);
  EXPECT_NEAR(pf.time_dispatch - counts, std::max(6 * M.alpha_inter, 1 * M.alpha_intra), 1e-15);
  EXPECT_NEAR(ph.time_dispatch - counts, 3 * M.alpha_inter + 1 * M.alpha_intra, 1e-15);
}

// Validation predicts each run with its own exchange: without simulate.algorithm, the run's
// routing.dispatch decides (a hierarchical run was predicted as flat before).
TEST(Projection, TheRunsDispatchChoosesTheAlgorithm) {
  Config cfg = small_config();
  EXPECT_EQ(make_scenario(cfg, 4, 2).algorithm, Algorithm::flat);
  cfg.routing.dispatch = DispatchKind::hierarchical;
  EXPECT_EQ(make_scenario(cfg, 4, 2).algorithm, Algorithm::hierarchical);
  cfg.routing.dispatch = DispatchKind::alltoall_padded;
  EXPECT_EQ(make_scenario(cfg, 4, 2).algorithm, Algorithm::padded);
  cfg.simulate.algorithm = "flat";  // an explicit choice wins
  EXPECT_EQ(make_scenario(cfg, 4, 2).algorithm, Algorithm::flat);
}

TEST(Projection, ScenarioErrorsNameTheRankCount) {
  Config cfg = small_config();
  EXPECT_THROW(make_scenario(cfg, 3, 1), ConfigError);  // 4 experts on 3 ranks
  try {
    make_scenario(cfg, 64, 1);  // 32 tokens on 64 ranks
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.key(), "simulate.ranks");
    EXPECT_EQ(e.value(), "64");
  }
  cfg.simulate.scaling = "weak";
  cfg.simulate.base_ranks = 2;
  const Scenario sc = make_scenario(cfg, 16, 4);
  EXPECT_EQ(sc.tokens, 32 * 8);
  EXPECT_EQ(sc.experts, 4 * 8);
  EXPECT_EQ(sc.group_size, 8);
  EXPECT_THROW(parse_ranks("16,x"), ConfigError);
  EXPECT_EQ(parse_ranks("1, 16,256"), (std::vector<std::int64_t>{1, 16, 256}));
}

TEST(Workload, ParseAcceptsTheContractNamesAndRejectsOthers) {
  EXPECT_EQ(parse_workload("uniform").kind, WorkloadKind::uniform);
  EXPECT_EQ(parse_workload("zipf:1.2").kind, WorkloadKind::zipf);
  EXPECT_DOUBLE_EQ(parse_workload("zipf:1.2").param, 1.2);
  EXPECT_EQ(parse_workload("lognormal:0.5").kind, WorkloadKind::lognormal);
  EXPECT_EQ(parse_workload("hot:0.3").kind, WorkloadKind::hot);
  EXPECT_TRUE(parse_workload("rotate").rotate);
  EXPECT_TRUE(parse_workload("hot:0.3+rotate").rotate);
  EXPECT_EQ(parse_workload("run:x.h5").file, "x.h5");
  for (const char* bad : {"zipf", "zipf:-1", "hot:1.5", "lognormal:x", "gauss:1", "run:", ""}) {
    try {
      parse_workload(bad);
      ADD_FAILURE() << bad;
    } catch (const ConfigError& e) {
      EXPECT_EQ(e.key(), "simulate.workload");
    }
  }
}

TEST(Workload, PopularityVectorsMatchTheirDefinitions) {
  const std::int64_t E = 4096;
  // zipf: sorted p_e = r^-S / H_{E,S}.
  const auto pz = expert_probabilities(parse_workload("zipf:1.5"), E, 7, 0, 0);
  std::vector<double> sorted = pz;
  std::sort(sorted.rbegin(), sorted.rend());
  double H = 0;
  for (std::int64_t r = 1; r <= E; ++r) H += std::pow(static_cast<double>(r), -1.5);
  EXPECT_NEAR(sorted[0], 1.0 / H, 1e-12);
  EXPECT_NEAR(sorted[9], std::pow(10.0, -1.5) / H, 1e-12);
  // lognormal: log p_e has standard deviation SIGMA (sample of E experts).
  const auto pl = expert_probabilities(parse_workload("lognormal:0.8"), E, 7, 0, 0);
  double m = 0, v = 0;
  for (double p : pl) m += std::log(p);
  m /= static_cast<double>(E);
  for (double p : pl) v += (std::log(p) - m) * (std::log(p) - m);
  EXPECT_NEAR(std::sqrt(v / static_cast<double>(E - 1)), 0.8, 0.04);
  // hot: one expert F, the rest equal.
  const auto ph = expert_probabilities(parse_workload("hot:0.25"), 16, 7, 0, 0);
  EXPECT_NEAR(*std::max_element(ph.begin(), ph.end()), 0.25, 1e-12);
  EXPECT_NEAR(*std::min_element(ph.begin(), ph.end()), 0.75 / 15, 1e-12);
  // rotate: the popularity moves by one expert per step.
  const auto r0 = expert_probabilities(parse_workload("zipf:1+rotate"), 16, 7, 0, 0);
  const auto r1 = expert_probabilities(parse_workload("zipf:1+rotate"), 16, 7, 0, 1);
  for (int e = 0; e < 16; ++e)
    EXPECT_DOUBLE_EQ(r1[static_cast<std::size_t>((e + 1) % 16)], r0[static_cast<std::size_t>(e)]);
}

// Routed counts of `groups` groups, summed per expert.
std::vector<double> sample_totals(const std::string& w, std::int64_t E, std::int64_t S,
                                  std::int64_t k, std::int64_t groups, std::uint64_t seed = 3) {
  auto src = make_synthetic_source(parse_workload(w), E, S, k, seed);
  std::vector<std::int32_t> routed(static_cast<std::size_t>(E), 0), touched;
  std::vector<double> total(static_cast<std::size_t>(E), 0.0);
  src->begin_layer(0, 0);
  for (std::int64_t g = 0; g < groups; ++g) {
    touched.clear();
    src->group_routed(0, 0, g, routed, touched);
    std::int64_t sum = 0;
    for (std::int32_t e : touched) {
      EXPECT_LE(routed[static_cast<std::size_t>(e)], S);  // k distinct experts per token
      sum += routed[static_cast<std::size_t>(e)];
      total[static_cast<std::size_t>(e)] += routed[static_cast<std::size_t>(e)];
      routed[static_cast<std::size_t>(e)] = 0;
    }
    EXPECT_EQ(sum, S * k);  // every token makes exactly k choices
  }
  return total;
}

TEST(Workload, GeneratorsReproduceTheirMeansAndSkew) {
  // uniform: mean per (group, expert) is S k / E exactly; spread is binomial-like.
  const std::int64_t E = 16, S = 256, G = 400;
  const auto u = sample_totals("uniform", E, S, 2, G);
  for (double t : u) EXPECT_NEAR(t / G, S * 2.0 / E, 1.0);
  // hot:F with k = 1: the hot expert receives the fraction F of all assignments.
  const auto h = sample_totals("hot:0.4", E, S, 1, G);
  const double all = std::accumulate(h.begin(), h.end(), 0.0);
  EXPECT_NEAR(*std::max_element(h.begin(), h.end()) / all, 0.4, 0.005);
  // zipf:1 with k = 1: the top expert's share is 1 / H_E.
  const auto z = sample_totals("zipf:1", E, S, 1, G);
  double H = 0;
  for (int r = 1; r <= E; ++r) H += 1.0 / r;
  EXPECT_NEAR(*std::max_element(z.begin(), z.end()) / (S * G), 1.0 / H, 0.005);
  // k distinct choices even when one expert is very hot (sampling without replacement).
  sample_totals("hot:0.95", 4, 64, 3, 20);
}

TEST(Workload, LoadsDoNotDependOnTheRankCount) {
  // Strong scaling with a fixed group size: drops and bytes per step come from the same
  // per-group loads on 2 and 4 ranks.
  Config cfg = small_config();
  cfg.data.tokens_per_step = 256;
  cfg.routing.num_experts = 4;
  const Workload w = parse_workload("zipf:1.2");
  const Scenario s2 = make_scenario(cfg, 2, 4), s4 = make_scenario(cfg, 4, 4);
  auto a = make_source(cfg, s2, w, nullptr);
  auto b = make_source(cfg, s4, w, nullptr);
  const Projection p2 = project(cfg, s2, test_machine(), *a, 2);
  const Projection p4 = project(cfg, s4, test_machine(), *b, 2);
  EXPECT_GT(p2.dropped_fraction, 0.0);
  EXPECT_DOUBLE_EQ(p2.dropped_fraction, p4.dropped_fraction);
  // Same seed, same result (bitwise).
  auto c = make_source(cfg, s4, w, nullptr);
  const Projection p4b = project(cfg, s4, test_machine(), *c, 2);
  EXPECT_EQ(p4.time_step, p4b.time_step);
}

}  // namespace
}  // namespace moesim::simulate

namespace moesim::simulate {
namespace {

TEST(Calibration, FitRecoversAlphaBetaAndRejectsAnOutlier) {
  // t = 2 us + bytes / 5 GB/s exactly.
  std::vector<double> x{8, 512, 4096, 32768, 262144, 1048576, 4194304}, y;
  for (double b : x) y.push_back(2e-6 + b / 5e9);
  LineFit f = fit_line(x, y);
  EXPECT_NEAR(f.a, 2e-6, 1e-12);
  EXPECT_NEAR(1.0 / f.b, 5e9, 1e3);
  EXPECT_LT(f.rel_rms, 1e-9);
  // One preempted measurement (100x) must not move the fit.
  y[2] *= 100;
  f = fit_line(x, y);
  EXPECT_NEAR(f.a, 2e-6, 1e-10);
  EXPECT_NEAR(1.0 / f.b, 5e9, 5e6);
  EXPECT_NEAR(f.rel_rms, 0.99 / std::sqrt(7.0), 1e-6);  // the residual still reports it
}

}  // namespace
}  // namespace moesim::simulate

namespace moesim::simulate {
namespace {

// Hockney: beta from the bandwidth regime, alpha from the latency regime. A token bucket's burst
// makes mid-sized messages fast; the fit must still give the large messages' bandwidth.
TEST(Calibration, HockneyFitTakesBetaFromLargeMessages) {
  const double alpha = 30e-6, beta = 125e6;
  std::vector<double> x{8, 512, 4096, 32768, 262144, 1048576, 4194304}, y;
  for (const double b : x) y.push_back(alpha + b / beta);
  y[3] = alpha + 32768 / 1e9;   // burst: 8x faster
  y[4] = alpha + 262144 / 2e8;  // burst: 1.6x faster
  const simulate::LineFit h = simulate::fit_hockney(x, y);
  EXPECT_NEAR(1.0 / h.b, beta, 1e-6 * beta);
  EXPECT_NEAR(h.a, alpha, 1e-12);
  const simulate::LineFit l = simulate::fit_line(x, y);
  EXPECT_GT(1.0 / l.b, 1.2 * beta);  // the weighted single line is fooled by the burst
  // Exact data: both regimes agree with the line.
  std::vector<double> z;
  for (const double b : x) z.push_back(alpha + b / beta);
  const simulate::LineFit e = simulate::fit_hockney(x, z);
  EXPECT_NEAR(1.0 / e.b, beta, 1e-6 * beta);
  EXPECT_NEAR(e.rel_rms, 0.0, 1e-9);
}

// The emulated 1 Gbit/s link's bucket (125 kB, burst 4x the rate) from times with relative
// noise and a 150 us after-idle penalty (TCP's restart); a plain link (the same times with and
// without idle, up to noise) and a link whose idle saving grows with the size (no plateau: a
// different beta, not a bucket) give no bucket.
TEST(Calibration, BucketFitFindsTheBurstAndRejectsAPlainLink) {
  const double beta = 0.125e9, B = 100000, bb = 0.5e9, alpha = 20e-6;
  Machine M;
  M.beta_inter = beta;
  M.burst_bytes = B;
  M.beta_burst = bb;
  std::vector<double> S, busy, idle, same, growing;
  const double noise[] = {-0.04, 0.03, -0.02, 0.04, -0.03, 0.02, -0.04, 0.01, 0.03, -0.01};
  for (int i = 0; i < 10; ++i) {
    const double s = 16384.0 * std::pow(2.0, i);  // 16 KiB .. 8 MiB
    S.push_back(s);
    busy.push_back(alpha + s / beta);
    idle.push_back((alpha + 150e-6 + s / beta - burst_saving(s, B, M)) * (1 + noise[i]));
    same.push_back(busy.back() * (1 + noise[i]));
    growing.push_back((alpha + 0.7 * s / beta) * (1 + noise[i]));
  }
  const BucketFit f = fit_bucket(S, busy, idle, beta);
  ASSERT_TRUE(f.accepted);
  EXPECT_NEAR(f.bytes, B, 0.3 * B);  // the knee candidates are the sizes and their midpoints
  EXPECT_NEAR(f.beta_burst, bb, 0.3 * bb);
  EXPECT_NEAR(f.c, -150e-6, 60e-6);
  EXPECT_FALSE(fit_bucket(S, busy, same, beta).accepted);
  EXPECT_DOUBLE_EQ(fit_bucket(S, busy, same, beta).bytes, 0.0);
  EXPECT_FALSE(fit_bucket(S, busy, growing, beta).accepted);
}

TEST(Workload, RecordedLoadsSplitOverMoreExpertsKeepEveryClassShare) {
  RecordedLoads l;
  l.steps = 1;
  l.layers = 1;
  l.groups = 2;
  l.experts = 2;
  l.group_size = 4;
  l.step = {0};
  l.routed = {5, 2, 1, 6};  // group 0: {5, 2}; group 1: {1, 6}
  l.kept = l.routed;
  std::vector<std::int32_t> routed(4, 0), touched;
  auto same = make_recorded_source(l, 2);  // E = E_rec: the recorded counts themselves
  same->begin_layer(0, 0);
  same->group_routed(0, 0, 3, routed, touched);  // group 3 -> recorded group 1
  EXPECT_EQ(routed[0], 1);
  EXPECT_EQ(routed[1], 6);
  std::fill(routed.begin(), routed.end(), 0);
  touched.clear();
  auto split = make_recorded_source(l, 4);  // m = 2: expert e stands for e and e + 2
  split->begin_layer(0, 0);
  split->group_routed(0, 0, 0, routed, touched);
  EXPECT_EQ(routed[0] + routed[2], 5);
  EXPECT_EQ(routed[1] + routed[3], 2);
  EXPECT_LE(std::abs(routed[0] - routed[2]), 1);  // split evenly
  EXPECT_EQ(routed[1], 1);
  EXPECT_EQ(routed[3], 1);
  EXPECT_EQ(touched.size(), 4u);
}

}  // namespace
}  // namespace moesim::simulate
