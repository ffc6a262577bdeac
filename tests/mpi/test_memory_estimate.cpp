// The per-rank memory estimate (model/memory_estimate.hpp) against what a run really allocates:
//  - parameters and optimizer state: exactly the ParamStore arenas and the Optimizer's state;
//  - the whole estimate: an upper bound of the peak C++ heap of a real training run (counted
//    by a replacement operator new/delete), and for dense routing (every token to every
//    expert, so the worst case happens) not more than 2x that peak.
// Not counted on either side: malloc inside MPI and Eigen's GEMM workspace.
#include <gtest/gtest.h>
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <new>
#include <string>

#include "moesim/comm/comm.hpp"
#include "moesim/model/memory_estimate.hpp"
#include "moesim/model/model.hpp"
#include "moesim/train/optimizer.hpp"
#include "moesim/train/trainer.hpp"

#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace {
std::atomic<long long> g_live{0}, g_peak{0};
void* counted(void* p) {
  if (p == nullptr) throw std::bad_alloc();
  const long long now = g_live.fetch_add(static_cast<long long>(malloc_usable_size(p))) +
                        static_cast<long long>(malloc_usable_size(p));
  long long peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
  return p;
}
void uncounted(void* p) {
  if (p == nullptr) return;
  g_live.fetch_sub(static_cast<long long>(malloc_usable_size(p)));
  std::free(p);
}
}  // namespace

void* operator new(std::size_t n) { return counted(std::malloc(n == 0 ? 1 : n)); }
void* operator new(std::size_t n, std::align_val_t a) {
  const auto al = static_cast<std::size_t>(a);
  return counted(std::aligned_alloc(al, (n + al - 1) / al * al));
}
void operator delete(void* p) noexcept { uncounted(p); }
void operator delete(void* p, std::size_t) noexcept { uncounted(p); }
void operator delete(void* p, std::align_val_t) noexcept { uncounted(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { uncounted(p); }

using namespace moesim;

namespace {

Config small(const comm::Comm& comm, std::int64_t d = 24) {
  Config cfg;
  cfg.model.d_model = d;
  cfg.model.d_ff = 40;
  cfg.model.layers = 2;
  cfg.routing.num_experts = 2 * comm.size();
  cfg.training.steps = 2;
  cfg.training.eval_every = 1;
  cfg.data.tokens_per_step = 64 * comm.size();
  cfg.data.eval_tokens = 96 * comm.size();
  cfg.data.input_dim = 12;
  cfg.data.num_clusters = 4;
  cfg.output.log_every = 0;
  cfg.output.echo_config = false;
  return cfg;
}

template <typename T>
void expect_exact_parameters(Config cfg, const comm::Comm& comm, const std::string& label) {
  validate(cfg, Mode::run, comm.size());
  const model::MemoryEstimate est = model::estimate_memory(cfg, comm.size());
  model::Model<T> m(cfg, comm, cfg.data.tokens_per_step / comm.size(),
                    cfg.data.eval_tokens / comm.size());
  ParamStore<T>& store = m.params();
  const auto rep = static_cast<std::int64_t>(store.values(ParamKind::replicated).size());
  const auto exp = static_cast<std::int64_t>(store.values(ParamKind::expert).size());
  EXPECT_EQ(est.replicated_elements, rep) << label;
  EXPECT_EQ(est.expert_elements, exp) << label;
  const auto grads = static_cast<std::int64_t>(store.grads(ParamKind::replicated).size() +
                                               store.grads(ParamKind::expert).size());
  EXPECT_EQ(est.parameters, static_cast<std::int64_t>(sizeof(T)) * (rep + exp + grads)) << label;
  train::Optimizer<T> opt(cfg.training, store);
  std::int64_t state = 0;
  for (int s = 0; s < opt.state_slots(); ++s)
    state += static_cast<std::int64_t>(opt.state(s, ParamKind::replicated).size() +
                                       opt.state(s, ParamKind::expert).size());
  EXPECT_EQ(est.optimizer, static_cast<std::int64_t>(sizeof(T)) * state) << label;
}

// Peak C++ heap of a short real run above what was live before it.
long long run_peak(const Config& cfg, const comm::Comm& comm) {
  comm.barrier();
  const long long base = g_live.load();
  g_peak.store(base);
  (void)train::train(cfg, comm, nullptr);
  return g_peak.load() - base;
}

}  // namespace

TEST(MemoryEstimate, ParametersAndOptimizerStateAreExact) {
  const comm::Comm comm = comm::Comm::world();
  Config cfg = small(comm);
  expect_exact_parameters<float>(cfg, comm, "topk adam float32");
  cfg.model.precision = Precision::float64;
  cfg.training.optimizer = OptimizerKind::sgd;
  cfg.routing.rule = RoutingRuleKind::noisy_topk;
  expect_exact_parameters<double>(cfg, comm, "noisy_topk sgd float64");
  cfg = small(comm);
  cfg.routing.rule = RoutingRuleKind::hash;  // no gate
  cfg.routing.k = 1;
  cfg.routing.aux_loss_coef = 0;
  expect_exact_parameters<float>(cfg, comm, "hash");
  if (comm.size() > 1) {
    cfg = small(comm);
    cfg.routing.num_experts = 1;  // fewer experts than ranks: one replica per rank
    cfg.routing.k = 1;
    expect_exact_parameters<float>(cfg, comm, "replicated expert");
  }
}

TEST(MemoryEstimate, BoundsThePeakHeapOfARealRun) {
  const comm::Comm comm = comm::Comm::world();
  struct Case {
    const char* label;
    void (*set)(Config&);
    bool worst_case_happens;
  };
  const Case cases[] = {
      {"topk", [](Config&) {}, false},
      {"dense (every token to every expert)",
       [](Config& c) { c.routing.rule = RoutingRuleKind::dense; }, true},
      {"switch + jitter, groups of 16",
       [](Config& c) {
         c.routing.rule = RoutingRuleKind::switch_top1;
         c.routing.k = 1;
         c.routing.jitter_eps = 0.1;
         c.routing.group_size = 16;
       },
       false},
      {"alltoall_padded, float64, sgd",
       [](Config& c) {
         c.routing.dispatch = DispatchKind::alltoall_padded;
         c.model.precision = Precision::float64;
         c.training.optimizer = OptimizerKind::sgd;
       },
       false},
      {"noisy_topk dropless",
       [](Config& c) {
         c.routing.rule = RoutingRuleKind::noisy_topk;
         c.routing.dropless = true;
       },
       false},
  };
  for (const Case& k : cases) {
    // Large enough that the proportional terms dominate the fixed 1 MiB allowance.
    Config cfg = small(comm, 96);
    cfg.data.tokens_per_step = 2048 * comm.size();
    cfg.data.eval_tokens = 1024 * comm.size();
    k.set(cfg);
    validate(cfg, Mode::run, comm.size());
    const model::MemoryEstimate est = model::estimate_memory(cfg, comm.size());
    const long long peak = run_peak(cfg, comm);
    EXPECT_GT(peak, est.parameters + est.optimizer) << k.label;
    EXPECT_LE(peak, est.total) << k.label << ": estimate " << est.total << " (params "
                               << est.parameters << ", optimizer " << est.optimizer
                               << ", activations " << est.activations << ", exchange "
                               << est.exchange << ", data " << est.data << ")";
    if (k.worst_case_happens) {
      EXPECT_GE(2 * peak, est.total) << k.label << ": peak " << peak;
    }
  }
}

TEST(MemoryEstimate, HugeSizesOverflowInsteadOfWrapping) {
  Config cfg;
  cfg.routing.dispatch = DispatchKind::alltoall_padded;
  cfg.routing.min_capacity = std::numeric_limits<std::int64_t>::max() - 5;
  model::MemoryEstimate est = model::estimate_memory(cfg, 1);
  EXPECT_TRUE(est.overflow);
  EXPECT_NE(est.overflow_what.find("routing.min_capacity"), std::string::npos);
  EXPECT_FALSE(model::check_memory(cfg, 1, 1).empty());
  // Without padding the layer still sizes its receive side as experts x groups x C rows.
  cfg.routing.dispatch = DispatchKind::alltoallv;
  est = model::estimate_memory(cfg, 1);
  EXPECT_TRUE(est.overflow);
  EXPECT_NE(est.overflow_what.find("routing.min_capacity"), std::string::npos);
  cfg.routing.min_capacity = 1'000'000;  // large but representable: only no drops, finite
  est = model::estimate_memory(cfg, 1);
  EXPECT_FALSE(est.overflow);
  EXPECT_LT(est.total, std::int64_t{1} << 30);
  // 1e8 tokens: far beyond any node, refused with the keys that drive it.
  cfg.routing.min_capacity = 0;
  cfg.data.tokens_per_step = 100'000'000;
  est = model::estimate_memory(cfg, 1);
  EXPECT_FALSE(est.overflow);
  EXPECT_GT(est.total, std::int64_t{1} << 36);
  const auto problems = model::check_memory(cfg, 1, 1);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].key.find("data.tokens_per_step"), std::string::npos) << problems[0].key;
  EXPECT_NE(problems[0].value.find("estimate"), std::string::npos) << problems[0].value;
  // Saturation: every key at its maximum still gives an answer, never a wrapped number.
  cfg.model.d_ff = cfg.model.layers = cfg.data.eval_tokens = cfg.data.input_dim =
      std::numeric_limits<std::int64_t>::max();
  est = model::estimate_memory(cfg, 1);
  EXPECT_TRUE(est.overflow);
  EXPECT_EQ(est.total, std::numeric_limits<std::int64_t>::max());
}
