// "Allocate once per run, not per step": after warm-up, a training step of a MoE layer
// (forward + backward with dispatch and combine) makes no C++ heap allocation.
// Counted: global operator new, plain and aligned (every container of ours). Not counted:
// malloc inside MPI and Eigen's GEMM workspace, which are outside our containers.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "moesim/comm/comm.hpp"
#include "moesim/model/moe_layer.hpp"
#include "moesim/util/rng.hpp"

// Our replacement new uses malloc and delete uses free, a matched pair; GCC 12 cannot see
// that through inlining (false -Wmismatched-new-delete).
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};
}  // namespace

void* operator new(std::size_t n) {
  if (g_counting.load(std::memory_order_relaxed))
    g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a) {
  if (g_counting.load(std::memory_order_relaxed))
    g_allocations.fetch_add(1, std::memory_order_relaxed);
  const auto al = static_cast<std::size_t>(a);
  if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

using namespace moesim;

namespace {
struct AllocCase {
  const char* label;
  RoutingRuleKind rule;
  DropPolicyKind policy;
  std::int64_t k = 2;
  double jitter = 0, bias_rate = 0;
  DispatchKind dispatch = DispatchKind::alltoallv;
  std::int64_t expert_groups = 1, group_limit = 0;
  std::int64_t redundant = 0;  // routing.redundant_experts (replica choice, gradient sums)
  std::int64_t overlap = 1;    // routing.overlap_degree (chunked non-blocking exchange)
};
}  // namespace

TEST(Allocation, SteadyStateLayerStepAllocatesNothing) {
  const comm::Comm comm = comm::Comm::world();
  const AllocCase cases[] = {
      {"topk/position", RoutingRuleKind::topk, DropPolicyKind::position},
      {"topk/probs", RoutingRuleKind::topk, DropPolicyKind::probs},
      {"topk+bias/priority", RoutingRuleKind::topk, DropPolicyKind::priority, 2, 0, 0.01},
      {"noisy_topk/position", RoutingRuleKind::noisy_topk, DropPolicyKind::position},
      {"gshard/choice_position", RoutingRuleKind::gshard, DropPolicyKind::choice_position},
      {"switch+jitter/priority", RoutingRuleKind::switch_top1, DropPolicyKind::priority, 1, 0.1},
      {"dense", RoutingRuleKind::dense, DropPolicyKind::position},
      {"expert_choice", RoutingRuleKind::expert_choice, DropPolicyKind::position},
      {"hash", RoutingRuleKind::hash, DropPolicyKind::probs, 1},
      {"topk/hierarchical", RoutingRuleKind::topk, DropPolicyKind::position, 2, 0, 0,
       DispatchKind::hierarchical},
      {"topk/group_limit", RoutingRuleKind::topk, DropPolicyKind::position, 1, 0, 0,
       DispatchKind::hierarchical, 2, 1},
      {"topk/redundant_experts", RoutingRuleKind::topk, DropPolicyKind::position, 2, 0, 0,
       DispatchKind::alltoallv, 1, 0, comm.size()},
      {"topk/overlap_degree", RoutingRuleKind::topk, DropPolicyKind::position, 2, 0, 0,
       DispatchKind::alltoallv, 1, 0, 0, 2},
  };
  for (const AllocCase& ac : cases) {
    const DropPolicyKind policy = ac.policy;
    Config cfg;
    cfg.model.d_model = 16;
    cfg.model.d_ff = 32;
    cfg.routing.num_experts = 2 * comm.size();
    cfg.routing.rule = ac.rule;
    cfg.routing.k = ac.k;
    cfg.routing.jitter_eps = ac.jitter;
    cfg.routing.bias_update_rate = ac.bias_rate;
    cfg.routing.drop_policy = policy;
    cfg.routing.group_size = 16;
    cfg.routing.dispatch = ac.dispatch;
    cfg.routing.expert_groups = ac.expert_groups;
    cfg.routing.group_limit = ac.group_limit;
    cfg.routing.redundant_experts = ac.redundant;
    cfg.routing.overlap_degree = ac.overlap;
    const std::int64_t N = 64;
    ParamStore<float> store;
    model::MoELayer<float> layer(cfg, 0, comm, store, N, N);
    store.allocate();
    store.initialize(3);
    layer.bind(store);
    std::vector<float> x(N * 16), y(x.size()), dx(x.size());
    std::vector<double> load(static_cast<std::size_t>(cfg.routing.num_experts));
    long counted = 0;
    for (int step = 0; step < 8; ++step) {
      // Different tokens every step, so routing (and all counts) change.
      const CounterRng rng(1, Stream::data_train, static_cast<std::uint64_t>(step),
                           static_cast<std::uint64_t>(comm.rank()));
      for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.normal(i));
      // Steps 0-4 warm the buffers up to their high-water marks. The layer sizes its own
      // buffers from the capacity bound at construction; the dispatcher's staging buffer
      // still grows to the largest receive count seen, which random routing can move.
      if (step == 5) {
        g_allocations = 0;
        g_counting = true;
      }
      store.zero_grads();
      const std::int64_t first = (step * comm.size() + comm.rank()) * N;
      layer.forward(x.data(), y.data(), N, true, nullptr, model::PassInfo{step, first});
      layer.backward(y.data(), dx.data(), routing::LossScales{0.01, 0.02, 0.03, 0.04, 0.001, {}});
      layer.sum_replica_grads();
      std::fill(load.begin(), load.end(), static_cast<double>(step));
      load[0] += 1.0;  // unbalanced: the bias moves
      layer.update_bias(load);
    }
    g_counting = false;
    counted = g_allocations.load();
    EXPECT_EQ(counted, 0) << "operator new calls in 3 steady-state steps, " << ac.label
                          << ", policy " << to_string(policy);
  }
}
