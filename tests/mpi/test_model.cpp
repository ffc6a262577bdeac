// The distributed MoE model against math and against a single-rank reference:
//  - layer forward at P ranks == a plain per-token loop over the routed experts,
//  - a one-expert MoE layer == x + the dense FFN,
//  - finite-difference gradient checks of every entry of every trainable parameter
//    (double precision), at 1, 2 and 4 ranks,
//  - the same run on P ranks gives the same loss curve as on 1 rank (tolerance below),
//  - all of the above for every routing rule (dense, topk, noisy_topk, switch with jitter,
//    gshard with random routing, expert_choice, hash, topk with the expert bias), drop
//    policy and router loss.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "moesim/comm/comm.hpp"
#include "moesim/data/cluster_task.hpp"
#include "moesim/model/model.hpp"
#include "moesim/routing/random.hpp"
#include "moesim/train/trainer.hpp"

using namespace moesim;

namespace {

Config small_config() {
  Config cfg;
  cfg.model.d_model = 6;
  cfg.model.d_ff = 10;
  cfg.model.layers = 2;
  cfg.model.precision = Precision::float64;
  cfg.routing.num_experts = 4;
  cfg.routing.k = 2;
  cfg.routing.capacity_factor = Rational{1, 1};
  cfg.routing.group_size = 8;
  cfg.routing.aux_loss_coef = 0.1;
  cfg.routing.z_loss_coef = 0.01;
  cfg.data.tokens_per_step = 32;
  cfg.data.eval_tokens = 32;
  cfg.data.input_dim = 8;
  cfg.data.num_clusters = 4;
  cfg.training.seed = 5;
  return cfg;
}

// Experts must divide over the ranks: scale E to a multiple of P.
void fit_to_ranks(Config& cfg, int P) {
  if (cfg.routing.num_experts % P != 0)
    cfg.routing.num_experts = P * ((cfg.routing.num_experts + P - 1) / P);
  cfg.routing.k = std::min(cfg.routing.k, cfg.routing.num_experts);
}

struct Batch {
  std::vector<double> x;
  std::vector<std::int32_t> y;
};

Batch make_batch(const Config& cfg, std::int64_t first, std::int64_t n) {
  Batch b{std::vector<double>(static_cast<std::size_t>(n * cfg.data.input_dim)),
          std::vector<std::int32_t>(static_cast<std::size_t>(n))};
  data::ClusterTask(cfg.data, cfg.training.seed)
      .generate(Stream::data_train, first, n, b.x.data(), b.y.data(), nullptr);
  return b;
}

// The global objective, reduced over ranks exactly as the trainer does. Token ids (which
// key the routing randomness) are those of step 0: rank r's first token is r * n.
double global_loss(model::Model<double>& m, const Config& cfg, const comm::Comm& comm,
                   const Batch& b, std::int64_t n) {
  const model::ForwardSums s =
      m.forward(b.x.data(), b.y.data(), n, true, nullptr, model::PassInfo{0, comm.rank() * n});
  std::vector<double> v{s.ce_sum, 0.0, 0.0, 0.0, 0.0, 0.0};
  for (int l = 0; l < m.num_layers(); ++l) {
    const model::LayerStats& st = m.layer(l).stats();
    v[1] += st.aux_sum;
    v[2] += st.z_sum;
    v[3] += st.aux_gshard_sum;
    v[4] += st.importance_sum;
    v[5] += st.load_sum;
  }
  comm.allreduce(std::span<double>(v), comm::ReduceOp::sum);
  const double groups =
      static_cast<double>(cfg.data.tokens_per_step / cfg.routing.group_size) * m.num_layers();
  const RoutingConfig& r = cfg.routing;
  return v[0] / static_cast<double>(cfg.data.tokens_per_step) +
         (r.aux_loss_coef * v[1] + r.z_loss_coef * v[2] + r.aux_gshard_loss_coef * v[3] +
          r.importance_loss_coef * v[4] + r.load_loss_coef * v[5]) /
             groups;
}

// Test hooks that put a model in a state its initialisation does not reach.
using Prepare = std::function<void(model::Model<double>&)>;

// noisy_topk: W_noise starts at zero (Shazeer); give it random values, the same on every rank.
void randomise_noise(model::Model<double>& m) {
  for (int l = 0; l < m.num_layers(); ++l) {
    const int id = m.params().find("layer" + std::to_string(l) + ".noise");
    ASSERT_GE(id, 0);
    const CounterRng rng(77, Stream::init, static_cast<std::uint64_t>(l));
    for (std::int64_t i = 0; i < m.params().entry(id).size; ++i)
      m.params().value(id)[i] = 0.6 * rng.normal(static_cast<std::uint64_t>(i));
  }
}

// Aux-loss-free balancing: a non-zero expert bias, the same on every rank.
void set_bias(model::Model<double>& m) {
  for (int l = 0; l < m.num_layers(); ++l) {
    std::span<double> b = m.layer(l).expert_bias();
    for (std::size_t e = 0; e < b.size(); ++e)
      b[e] = 0.08 * static_cast<double>((e * 5 + static_cast<std::size_t>(l)) % 4) - 0.1;
  }
}

double ffn(const double* x, const double* w1, const double* b1, const double* w2, const double* b2,
           int d, int f, int out, Activation act) {
  double y = b2[out];
  for (int j = 0; j < f; ++j) {
    double h = b1[j];
    for (int i = 0; i < d; ++i) h += x[i] * w1[i * f + j];
    double a = 0;
    if (act == Activation::relu)
      a = h > 0 ? h : 0;
    else
      a = 0.5 * h * (1 + std::tanh(0.7978845608028654 * (h + 0.044715 * h * h * h)));
    y += a * w2[j * d + out];
  }
  return y;
}

// Checks d(global_loss)/d(theta) for every entry of every tensor against central differences.
void gradient_check(Config cfg, const std::string& label, const Prepare& prepare = nullptr) {
  const comm::Comm comm = comm::Comm::world();
  fit_to_ranks(cfg, comm.size());
  const std::int64_t B = cfg.data.tokens_per_step, P = comm.size(), N = B / P;
  const Batch b = make_batch(cfg, comm.rank() * N, N);
  model::Model<double> m(cfg, comm, N, N);
  if (prepare) prepare(m);
  // All tensor names in a single-rank layout: the FD loop visits each on every rank.
  const comm::Comm self = comm::Comm::self();
  model::Model<double> all(cfg, self, B, B);

  m.params().zero_grads();
  global_loss(m, cfg, comm, b, N);
  m.backward(B, B / cfg.routing.group_size);
  comm.allreduce(m.params().grads(ParamKind::replicated), comm::ReduceOp::sum);
  const std::vector<double> rep_grad(m.params().grads(ParamKind::replicated).begin(),
                                     m.params().grads(ParamKind::replicated).end());
  const std::vector<double> exp_grad(m.params().grads(ParamKind::expert).begin(),
                                     m.params().grads(ParamKind::expert).end());

  const double eps = 1e-6;
  int checked = 0, failed = 0;
  double worst = 0, largest = 0;
  bool stop = false;  // decided collectively: a rank leaving the loop alone would hang the rest
  for (const auto& entry : all.params().entries()) {
    if (stop) break;
    const int id = m.params().find(entry.name);
    for (std::int64_t i = 0; i < entry.size; ++i) {
      // Every rank visits the same entries (the single-rank list), so this is collective.
      if (comm.allreduce<std::int64_t>(failed > 10 ? 1 : 0, comm::ReduceOp::max) > 0) {
        stop = true;
        break;
      }
      double* v = id >= 0 ? m.params().value(id) + i : nullptr;
      const double saved = v ? *v : 0.0;
      if (v) *v = saved + eps;
      const double lp = global_loss(m, cfg, comm, b, N);
      if (v) *v = saved - eps;
      const double lm = global_loss(m, cfg, comm, b, N);
      if (v) *v = saved;
      if (!v) continue;
      const auto& e = m.params().entry(id);
      const double g =
          (e.kind == ParamKind::replicated ? rep_grad
                                           : exp_grad)[static_cast<std::size_t>(e.offset + i)];
      const double fd = (lp - lm) / (2 * eps);
      // Central differences at eps = 1e-6 carry ~1e-10 absolute round-off on an O(1)
      // loss; gradients here are 1e-5..1e-1, so 1e-6 relative + 1e-9 absolute is tight.
      const double diff = std::abs(g - fd);
      worst = std::max(worst, diff);
      largest = std::max(largest, std::abs(g));
      ++checked;
      if (diff > 1e-9 + 1e-6 * std::abs(fd)) {
        ++failed;
        ADD_FAILURE() << label << ": " << entry.name << "[" << i << "] analytic " << g << " fd "
                      << fd;
      }
    }
  }
  const std::int64_t total_checked = comm.allreduce<std::int64_t>(checked, comm::ReduceOp::sum);
  EXPECT_GT(total_checked, 500) << label;
  if (comm.rank() == 0)
    std::printf(
        "[gradcheck %s] P=%d entries checked on rank 0: %d, worst |analytic - fd| %.2e (largest "
        "|grad| %.2e)\n",
        label.c_str(), comm.size(), checked, worst, largest);
}

}  // namespace

namespace {

// Layer forward at P ranks == the single-rank layer == a plain loop over the routed experts
// (whose input is x itself: switch's jitter reaches the router only).
void layer_matches_plain_loop(Config cfg, const std::string& label, bool expect_drops,
                              const Prepare& prepare = nullptr) {
  SCOPED_TRACE(label);
  const comm::Comm comm = comm::Comm::world();
  cfg.model.layers = 1;
  fit_to_ranks(cfg, comm.size());
  const std::int64_t B = cfg.data.tokens_per_step, N = B / comm.size();
  const Batch mine = make_batch(cfg, comm.rank() * N, N);
  const Batch full = make_batch(cfg, 0, B);
  model::Model<double> dist(cfg, comm, N, N);
  if (prepare) prepare(dist);
  dist.forward(mine.x.data(), mine.y.data(), N, true, nullptr,
               model::PassInfo{3, 3 * B + comm.rank() * N});
  const comm::Comm self = comm::Comm::self();
  model::Model<double> ref(cfg, self, B, B);
  if (prepare) prepare(ref);
  ref.forward(full.x.data(), full.y.data(), B, true, nullptr, model::PassInfo{3, 3 * B});
  const auto d = static_cast<int>(cfg.model.d_model), f = static_cast<int>(cfg.model.d_ff);
  if (expect_drops) {
    ASSERT_GT(ref.layer(0).stats().dropped, 0);  // capacity is exercised
  }
  // Plain loop: y_t = x_t + sum over kept candidates of w * FFN_e(x_t).
  const double* x = ref.activation(0);
  std::vector<double> y(x, x + B * d);
  const auto& groups = ref.layer(0).groups();
  const std::int64_t S = cfg.routing.group_size;
  auto& ps = ref.params();
  for (std::size_t g = 0; g < groups.size(); ++g)
    for (const auto& c : groups[g].cands) {
      if (!c.kept) continue;
      const std::string p = "layer0.expert" + std::to_string(c.expert);
      const std::int64_t t = static_cast<std::int64_t>(g) * S + c.token;
      for (int o = 0; o < d; ++o)
        y[static_cast<std::size_t>(t * d + o)] +=
            c.weight * ffn(x + t * d, ps.value(ps.find(p + ".w1")), ps.value(ps.find(p + ".b1")),
                           ps.value(ps.find(p + ".w2")), ps.value(ps.find(p + ".b2")), d, f, o,
                           cfg.model.activation);
    }
  for (std::int64_t i = 0; i < B * d; ++i)
    EXPECT_NEAR(ref.activation(1)[i], y[static_cast<std::size_t>(i)], 1e-12);
  // The distributed rank's rows equal the reference rows.
  for (std::int64_t i = 0; i < N * d; ++i)
    EXPECT_NEAR(dist.activation(1)[i], ref.activation(1)[comm.rank() * N * d + i], 1e-12);
}

// Configurations of every rule (with their extras) for the layer, gradient and curve tests.
struct RuleCase {
  std::string label;
  Config cfg;
  Prepare prepare;
  bool drops;  // capacity drops something in the small configuration
};

std::vector<RuleCase> rule_cases() {
  std::vector<RuleCase> cases;
  const auto add = [&](const std::string& label, const std::function<void(Config&)>& set,
                       Prepare prepare = nullptr, bool drops = false) {
    Config cfg = small_config();
    set(cfg);
    cases.push_back({label, cfg, std::move(prepare), drops});
  };
  add("dense", [](Config& c) {
    c.routing.rule = RoutingRuleKind::dense;
    c.routing.aux_gshard_loss_coef = 0.05;
    c.routing.importance_loss_coef = 0.2;
  });
  add(
      "noisy_topk",
      [](Config& c) {
        c.routing.rule = RoutingRuleKind::noisy_topk;
        c.routing.importance_loss_coef = 0.1;
        c.routing.load_loss_coef = 0.1;
      },
      randomise_noise, true);
  add(
      "switch-jitter",
      [](Config& c) {
        c.routing.rule = RoutingRuleKind::switch_top1;
        c.routing.k = 1;
        c.routing.jitter_eps = 0.3;
        c.routing.drop_policy = DropPolicyKind::priority;
      },
      nullptr, true);
  add(
      "gshard",
      [](Config& c) {
        c.routing.rule = RoutingRuleKind::gshard;
        c.routing.drop_policy = DropPolicyKind::choice_position;
        c.routing.capacity_factor = Rational{3, 4};
        c.routing.aux_gshard_loss_coef = 0.1;
      },
      nullptr, true);
  add("expert_choice", [](Config& c) {
    c.routing.rule = RoutingRuleKind::expert_choice;
    c.routing.importance_loss_coef = 0.1;
  });
  add(
      "hash",
      [](Config& c) {
        c.routing.rule = RoutingRuleKind::hash;
        c.routing.k = 1;
        c.routing.aux_loss_coef = 0;
        c.routing.z_loss_coef = 0;
      },
      nullptr, true);
  add(
      "topk-bias-priority",
      [](Config& c) {
        c.routing.bias_update_rate = 0.01;
        c.routing.renormalize = true;
        c.routing.drop_policy = DropPolicyKind::priority;
      },
      set_bias, true);
  return cases;
}

}  // namespace

TEST(Model, DistributedLayerMatchesPlainLoop) {
  layer_matches_plain_loop(small_config(), "topk", true);
}

TEST(Model, DistributedLayerMatchesPlainLoopEveryRule) {
  for (const RuleCase& rc : rule_cases())
    layer_matches_plain_loop(rc.cfg, rc.label, rc.drops, rc.prepare);
}

// switch's jitter: the router sees x * u with u = 1 - eps + 2 eps U(0,1) drawn from the
// (seed, step, layer, token) stream, per feature; evaluation sees x.
TEST(Model, SwitchJitterRoutesOnTheJitteredInput) {
  Config cfg = small_config();
  cfg.model.layers = 1;
  cfg.routing.rule = RoutingRuleKind::switch_top1;
  cfg.routing.k = 1;
  cfg.routing.dropless = true;
  cfg.routing.jitter_eps = 0.9;
  cfg.model.init_scale = 3.0;
  const comm::Comm self = comm::Comm::self();
  const std::int64_t B = cfg.data.tokens_per_step, E = cfg.routing.num_experts,
                     d = cfg.model.d_model;
  const Batch b = make_batch(cfg, 0, B);
  model::Model<double> m(cfg, self, B, B);
  const double* wg = m.params().value(m.params().find("layer0.gate"));
  int changed = 0;
  for (bool training : {true, false}) {
    m.forward(b.x.data(), b.y.data(), B, training, nullptr, model::PassInfo{7, 1000});
    const double* x = m.activation(0);
    const auto& cands = m.layer(0).groups();
    for (std::int64_t t = 0; t < B; ++t) {
      const CounterRng rng =
          routing::draw_stream(cfg.training.seed, 7, 0, 1000 + t, routing::DrawPurpose::jitter);
      std::vector<double> h(static_cast<std::size_t>(E), 0.0),
          clean(static_cast<std::size_t>(E), 0.0);
      for (std::int64_t j = 0; j < d; ++j) {
        const double u =
            training ? 1 - 0.9 + 1.8 * rng.uniform(static_cast<std::uint64_t>(j)) : 1.0;
        for (std::int64_t e = 0; e < E; ++e) {
          h[static_cast<std::size_t>(e)] += x[t * d + j] * u * wg[j * E + e];
          clean[static_cast<std::size_t>(e)] += x[t * d + j] * wg[j * E + e];
        }
      }
      const auto argmax = [](const std::vector<double>& v) {
        return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
      };
      const std::int64_t S = cfg.routing.group_size;
      const routing::Candidate& c =
          cands[static_cast<std::size_t>(t / S)].cands[static_cast<std::size_t>(t % S)];
      EXPECT_EQ(c.expert, argmax(h)) << "token " << t << " training " << training;
      double z = 0;
      for (double v : h) z += std::exp(v);
      EXPECT_NEAR(c.weight, std::exp(h[static_cast<std::size_t>(c.expert)]) / z, 1e-12);
      if (training && argmax(h) != argmax(clean)) ++changed;
    }
  }
  EXPECT_GT(changed, 0);  // the jitter did change some routing decisions
}

TEST(Model, OneExpertMoEIsTheDenseFFN) {
  Config cfg = small_config();
  cfg.model.layers = 1;
  cfg.routing.num_experts = 1;
  cfg.routing.k = 1;
  cfg.routing.dropless = true;
  cfg.routing.z_loss_coef = 0.0;  // z-loss would (rightly) pull on the single logit
  for (Activation act : {Activation::relu, Activation::gelu}) {
    cfg.model.activation = act;
    const comm::Comm self = comm::Comm::self();
    const std::int64_t B = cfg.data.tokens_per_step;
    const Batch b = make_batch(cfg, 0, B);
    model::Model<double> m(cfg, self, B, B);
    m.forward(b.x.data(), b.y.data(), B, true, nullptr);
    auto& ps = m.params();
    const auto d = static_cast<int>(cfg.model.d_model), f = static_cast<int>(cfg.model.d_ff);
    const double* x = m.activation(0);
    for (std::int64_t t = 0; t < B; ++t)
      for (int o = 0; o < d; ++o) {
        const double dense =
            x[t * d + o] + ffn(x + t * d, ps.value(ps.find("layer0.expert0.w1")),
                               ps.value(ps.find("layer0.expert0.b1")),
                               ps.value(ps.find("layer0.expert0.w2")),
                               ps.value(ps.find("layer0.expert0.b2")), d, f, o, act);
        EXPECT_NEAR(m.activation(1)[t * d + o], dense, 1e-12);
      }
    // With one expert the weight is softmax of one logit = 1 and aux is constant (= 1):
    // without z-loss no gradient reaches the gate.
    ps.zero_grads();
    m.backward(B, B / cfg.routing.group_size);
    const int gate = ps.find("layer0.gate");
    for (std::int64_t i = 0; i < ps.entry(gate).size; ++i)
      EXPECT_NEAR(ps.grad(gate)[i], 0.0, 1e-15);
  }
}

TEST(Model, GradientsTopKPositionReluWithDrops) {
  Config cfg = small_config();
  gradient_check(cfg, "topk2-position-relu");
}

TEST(Model, GradientsSwitchProbsGelu) {
  Config cfg = small_config();
  cfg.routing.rule = RoutingRuleKind::switch_top1;
  cfg.routing.k = 1;
  cfg.routing.drop_policy = DropPolicyKind::probs;
  cfg.routing.capacity_factor = Rational{125, 100};
  cfg.model.activation = Activation::gelu;
  gradient_check(cfg, "switch-probs-gelu");
}

TEST(Model, GradientsTopKRenormalisedDropless) {
  Config cfg = small_config();
  cfg.routing.renormalize = true;
  cfg.routing.dropless = true;
  cfg.model.layers = 1;
  gradient_check(cfg, "topk2-renorm-dropless");
}

// Every rule, with the router losses each case turns on (rule_cases()).
TEST(Model, GradientsEveryRule) {
  for (const RuleCase& rc : rule_cases()) gradient_check(rc.cfg, rc.label, rc.prepare);
}

// Loss curves on P ranks vs 1 rank (every rank also runs the 1-rank reference alone).
// Only floating-point summation order differs: we require 1e-9 relative in float64.
namespace {
Config curve_config(Config cfg) {
  cfg.routing.num_experts = 4;
  cfg.data.tokens_per_step = 64;
  cfg.data.eval_tokens = 64;
  cfg.training.steps = 12;
  cfg.training.eval_every = 4;
  cfg.training.learning_rate = 3e-3;
  return cfg;
}

void same_loss_curve(const Config& cfg, const std::string& label) {
  SCOPED_TRACE(label);
  const comm::Comm comm = comm::Comm::world();
  const train::RunResult dist = train::train(cfg, comm, nullptr);
  const comm::Comm self = comm::Comm::self();
  const train::RunResult ref = train::train(cfg, self, nullptr);
  ASSERT_EQ(dist.loss.size(), ref.loss.size());
  double worst = 0;
  for (std::size_t i = 0; i < ref.loss.size(); ++i) {
    const double rel = std::abs(dist.loss[i] - ref.loss[i]) / std::abs(ref.loss[i]);
    worst = std::max(worst, rel);
    EXPECT_LT(rel, 1e-9) << "step " << i << ": " << dist.loss[i] << " vs " << ref.loss[i];
    EXPECT_DOUBLE_EQ(dist.dropped_fraction[i], ref.dropped_fraction[i]) << "step " << i;
  }
  ASSERT_EQ(dist.evals.size(), ref.evals.size());
  for (std::size_t i = 0; i < ref.evals.size(); ++i) {
    EXPECT_NEAR(dist.evals[i].loss, ref.evals[i].loss, 1e-9 * std::abs(ref.evals[i].loss));
    EXPECT_DOUBLE_EQ(dist.evals[i].accuracy, ref.evals[i].accuracy);
  }
  EXPECT_LT(ref.loss.back(), ref.loss.front());  // it trains
  if (comm.rank() == 0)
    std::printf("[rank invariance %s] P=%d worst relative loss difference %.2e\n", label.c_str(),
                comm.size(), worst);
}
}  // namespace

TEST(Model, SameLossCurveForAnyRankCount) { same_loss_curve(curve_config(small_config()), "topk"); }

TEST(Model, SameLossCurveForAnyRankCountEveryRule) {
  for (const RuleCase& rc : rule_cases()) same_loss_curve(curve_config(rc.cfg), rc.label);
  // The remaining drop policies with topk.
  for (auto policy : {DropPolicyKind::choice_position, DropPolicyKind::probs}) {
    Config cfg = small_config();
    cfg.routing.drop_policy = policy;
    same_loss_curve(curve_config(cfg), std::string("topk-") + to_string(policy));
  }
}

// The expert bias is live state: with a rate it changes the run (identically on all ranks,
// SameLossCurveForAnyRankCountEveryRule), and starts at zero so the first step is unchanged.
TEST(Model, ExpertBiasUpdateChangesTheRun) {
  Config cfg = curve_config(small_config());
  const comm::Comm self = comm::Comm::self();
  const train::RunResult off = train::train(cfg, self, nullptr);
  cfg.routing.bias_update_rate = 0.05;
  const train::RunResult on = train::train(cfg, self, nullptr);
  EXPECT_EQ(on.loss.front(), off.loss.front());
  bool differs = false;
  for (std::size_t i = 1; i < on.loss.size(); ++i) differs = differs || on.loss[i] != off.loss[i];
  EXPECT_TRUE(differs);
}
