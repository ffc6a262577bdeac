// "Allocate once per run, not per step": after warm-up, a training step of a MoE layer
// (forward + backward with dispatch and combine) makes no C++ heap allocation.
// Counted: global operator new, plain and aligned (every container of ours). Not counted:
// malloc inside MPI and Eigen's GEMM workspace, which are outside our containers.
#include <gtest/gtest.h>

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
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
  const auto al = static_cast<std::size_t>(a);
  if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

using namespace moesim;

TEST(Allocation, SteadyStateLayerStepAllocatesNothing) {
  const comm::Comm comm = comm::Comm::world();
  for (auto policy : {DropPolicyKind::position, DropPolicyKind::probs}) {
    Config cfg;
    cfg.model.d_model = 16;
    cfg.model.d_ff = 32;
    cfg.routing.num_experts = 2 * comm.size();
    cfg.routing.k = 2;
    cfg.routing.drop_policy = policy;
    cfg.routing.group_size = 16;
    const std::int64_t N = 64;
    ParamStore<float> store;
    model::MoELayer<float> layer(cfg, 0, comm, store, N, N);
    store.allocate();
    store.initialize(3);
    layer.bind(store);
    std::vector<float> x(N * 16), y(x.size()), dx(x.size());
    long counted = 0;
    for (int step = 0; step < 6; ++step) {
      // Different tokens every step, so routing (and all counts) change.
      const CounterRng rng(1, Stream::data_train, static_cast<std::uint64_t>(step), static_cast<std::uint64_t>(comm.rank()));
      for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.normal(i));
      if (step == 3) {  // steps 0-2 warm the buffers up to their high-water marks
        g_allocations = 0;
        g_counting = true;
      }
      store.zero_grads();
      layer.forward(x.data(), y.data(), N, true, nullptr);
      layer.backward(y.data(), dx.data(), 0.01, 0.001);
    }
    g_counting = false;
    counted = g_allocations.load();
    EXPECT_EQ(counted, 0) << "operator new calls in 3 steady-state steps, policy " << to_string(policy);
  }
}
