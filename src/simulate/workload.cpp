// Workload generators and recorded loads (workload.hpp).
#include "moesim/simulate/workload.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <numeric>

#include "moesim/util/rng.hpp"

namespace moesim::simulate {
namespace {

constexpr const char* kAllowed =
    "must be one of uniform | zipf:S (S > 0) | lognormal:SIGMA (SIGMA >= 0) | hot:F (0 < F < 1) "
    "| rotate, optionally followed by +rotate, or run:FILE.h5 or trace:FILE.h5";

// Stream tags of the simulator's draws (not one of the run's streams).
constexpr std::uint64_t kTagPermutation = 0x5349'4D50'4552'4D00ULL;
constexpr std::uint64_t kTagLognormal = 0x5349'4D4C'4F47'4E00ULL;
constexpr std::uint64_t kTagHot = 0x5349'4D48'4F54'0000ULL;
constexpr std::uint64_t kTagTokens = 0x5349'4D54'4F4B'0000ULL;

// A seeded permutation of 0..E-1 (Fisher-Yates on keyed draws).
std::vector<std::int64_t> permutation(std::int64_t E, std::uint64_t seed, std::int64_t layer) {
  std::vector<std::int64_t> perm(static_cast<std::size_t>(E));
  std::iota(perm.begin(), perm.end(), std::int64_t{0});
  const CounterRng rng(seed, static_cast<Stream>(kTagPermutation),
                       static_cast<std::uint64_t>(layer));
  for (std::int64_t i = E - 1; i > 0; --i) {
    const auto j = static_cast<std::int64_t>(rng.bits(static_cast<std::uint64_t>(i)) %
                                             static_cast<std::uint64_t>(i + 1));
    std::swap(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
  }
  return perm;
}

// Walker's alias table for O(1) draws from p.
struct Alias {
  std::vector<double> prob;
  std::vector<std::int32_t> alias;
  std::vector<double> cdf;  // prefix sums (exact exclusion draws)
  std::vector<double> p;
  void build(const std::vector<double>& probs) {
    const std::size_t n = probs.size();
    p = probs;
    prob.assign(n, 0.0);
    alias.assign(n, 0);
    cdf.resize(n + 1);
    cdf[0] = 0;
    for (std::size_t i = 0; i < n; ++i) cdf[i + 1] = cdf[i] + probs[i];
    std::vector<std::int32_t> small, large;
    std::vector<double> scaled(n);
    for (std::size_t i = 0; i < n; ++i) {
      scaled[i] = probs[i] * static_cast<double>(n);
      (scaled[i] < 1.0 ? small : large).push_back(static_cast<std::int32_t>(i));
    }
    while (!small.empty() && !large.empty()) {
      const std::int32_t s = small.back(), l = large.back();
      small.pop_back();
      prob[static_cast<std::size_t>(s)] = scaled[static_cast<std::size_t>(s)];
      alias[static_cast<std::size_t>(s)] = l;
      scaled[static_cast<std::size_t>(l)] += scaled[static_cast<std::size_t>(s)] - 1.0;
      if (scaled[static_cast<std::size_t>(l)] < 1.0) {
        large.pop_back();
        small.push_back(l);
      }
    }
    for (std::int32_t i : large) prob[static_cast<std::size_t>(i)] = 1.0;
    for (std::int32_t i : small) prob[static_cast<std::size_t>(i)] = 1.0;
  }
  // One 64-bit draw: the high 32 bits pick the column (multiply-shift), the low 32 bits decide
  // between the column and its alias.
  [[nodiscard]] std::int32_t draw(std::uint64_t bits) const {
    const auto i = static_cast<std::size_t>(((bits >> 32) * prob.size()) >> 32);
    const double u = (static_cast<double>(bits & 0xFFFFFFFFULL) + 0.5) * (1.0 / 4294967296.0);
    return u < prob[i] ? static_cast<std::int32_t>(i) : alias[i];
  }
  // Exact draw from p restricted to the experts not in `chosen` (by inverse CDF, skipping the
  // chosen experts' intervals in increasing order).
  [[nodiscard]] std::int32_t draw_excluding(double u, const std::int32_t* chosen, int m) const {
    std::int32_t ex[64];
    double mass = 0;
    for (int i = 0; i < m; ++i) {
      ex[i] = chosen[i];
      mass += p[static_cast<std::size_t>(chosen[i])];
    }
    std::sort(ex, ex + m);
    double x = u * (cdf.back() - mass);
    // Map x in the reduced line onto the full line: every excluded interval before the
    // position shifts it right by its width.
    for (int i = 0; i < m; ++i) {
      if (x >= cdf[static_cast<std::size_t>(ex[i])])
        x += p[static_cast<std::size_t>(ex[i])];
      else
        break;
    }
    auto it = std::upper_bound(cdf.begin() + 1, cdf.end(), x);
    auto e = static_cast<std::int64_t>(it - cdf.begin()) - 1;
    e = std::clamp<std::int64_t>(e, 0, static_cast<std::int64_t>(p.size()) - 1);
    // Round-off guard: never return an excluded or zero-probability expert.
    for (std::int64_t step = 0; step < static_cast<std::int64_t>(p.size()); ++step) {
      const auto c = static_cast<std::int32_t>((e + step) % static_cast<std::int64_t>(p.size()));
      bool taken = p[static_cast<std::size_t>(c)] <= 0;
      for (int i = 0; i < m && !taken; ++i) taken = ex[i] == c;
      if (!taken) return c;
    }
    return static_cast<std::int32_t>(e);
  }
};

class SyntheticSource final : public LoadSource {
 public:
  SyntheticSource(Workload w, std::int64_t E, std::int64_t S, std::int64_t k, std::uint64_t seed)
      : w_(std::move(w)), E_(E), S_(S), k_(k), seed_(seed) {}

  void begin_layer(std::int64_t step, std::int64_t layer) override {
    step_ = step;
    layer_ = layer;
    // Tables depend on (layer, step) only through the rotation for uniform-free workloads.
    const std::int64_t key_step = w_.rotate ? step : 0;
    if (built_ && built_layer_ == layer && built_step_ == key_step) return;
    alias_.build(expert_probabilities(w_, E_, seed_, layer, step));
    built_ = true;
    built_layer_ = layer;
    built_step_ = key_step;
  }

  void group_routed(std::int64_t /*step*/, std::int64_t /*layer*/, std::int64_t group,
                    std::vector<std::int32_t>& routed,
                    std::vector<std::int32_t>& touched) override {
    const CounterRng rng(seed_, static_cast<Stream>(kTagTokens), static_cast<std::uint64_t>(step_),
                         static_cast<std::uint64_t>(layer_), static_cast<std::uint64_t>(group));
    std::int32_t chosen[64];
    const std::int64_t k = std::min<std::int64_t>(k_, E_);
    for (std::int64_t t = 0; t < S_; ++t) {
      for (std::int64_t j = 0; j < k; ++j) {
        const std::uint64_t base = static_cast<std::uint64_t>((t * k + j) * 8);
        std::int32_t e = -1;
        // Rejection from the alias table (a few tries), then the exact exclusion draw.
        for (int attempt = 0; attempt < 3 && e < 0; ++attempt) {
          const std::int32_t c = alias_.draw(rng.bits(base + static_cast<unsigned>(attempt)));
          bool dup = false;
          for (std::int64_t i = 0; i < j; ++i) dup = dup || chosen[i] == c;
          if (!dup) e = c;
        }
        if (e < 0) e = alias_.draw_excluding(rng.uniform(base + 7), chosen, static_cast<int>(j));
        chosen[j] = e;
        if (routed[static_cast<std::size_t>(e)]++ == 0) touched.push_back(e);
      }
    }
  }

 private:
  Workload w_;
  std::int64_t E_, S_, k_;
  std::uint64_t seed_;
  std::int64_t step_ = 0, layer_ = 0;
  Alias alias_;
  bool built_ = false;
  std::int64_t built_layer_ = -1, built_step_ = -1;
};

class ShiftedSource final : public LoadSource {
 public:
  ShiftedSource(LoadSource& inner, std::int64_t offset) : inner_(inner), offset_(offset) {}
  void begin_layer(std::int64_t step, std::int64_t layer) override {
    inner_.begin_layer(step + offset_, layer);
  }
  void group_routed(std::int64_t step, std::int64_t layer, std::int64_t group,
                    std::vector<std::int32_t>& routed,
                    std::vector<std::int32_t>& touched) override {
    inner_.group_routed(step + offset_, layer, group, routed, touched);
  }

 private:
  LoadSource& inner_;
  std::int64_t offset_;
};

class RecordedSource final : public LoadSource {
 public:
  RecordedSource(const RecordedLoads& l, std::int64_t E) : l_(l), E_(E) {}
  void begin_layer(std::int64_t step, std::int64_t layer) override {
    sample_ = step % l_.steps;
    layer_ = layer % l_.layers;
  }
  void group_routed(std::int64_t, std::int64_t, std::int64_t group,
                    std::vector<std::int32_t>& routed,
                    std::vector<std::int32_t>& touched) override {
    // Recorded group g mod G; with E = m * E_rec experts, recorded expert e stands for the m
    // experts e + E_rec * j, and its count c is split evenly over them (c / m each, the
    // remainder to consecutive copies starting at a group-dependent offset), so every group
    // keeps its size and the recorded popularity of each expert class.
    const std::int64_t g = group % l_.groups;
    const std::int64_t m = E_ / l_.experts;
    const std::int64_t* row =
        l_.routed.data() + ((sample_ * l_.layers + layer_) * l_.groups + g) * l_.experts;
    for (std::int64_t e = 0; e < l_.experts; ++e) {
      const std::int64_t c = row[e];
      if (c == 0) continue;
      const std::int64_t base = c / m, rem = c % m;
      const std::int64_t off = (group * 7919 + e) % m;
      const std::int64_t copies = base > 0 ? m : rem;
      for (std::int64_t j = 0; j < copies; ++j) {
        const std::int64_t n = base + (j < rem ? 1 : 0);
        const auto x = static_cast<std::size_t>(e + l_.experts * ((j + off) % m));
        if (routed[x] == 0) touched.push_back(static_cast<std::int32_t>(x));
        routed[x] += static_cast<std::int32_t>(n);
      }
    }
  }

 private:
  const RecordedLoads& l_;
  std::int64_t E_;
  std::int64_t sample_ = 0, layer_ = 0;
};

class FixedSource final : public LoadSource {
 public:
  FixedSource(std::int64_t E, std::int64_t n) : E_(E), n_(n) {}
  void begin_layer(std::int64_t, std::int64_t) override {}
  void group_routed(std::int64_t, std::int64_t, std::int64_t, std::vector<std::int32_t>& routed,
                    std::vector<std::int32_t>& touched) override {
    if (n_ <= 0) return;
    for (std::int64_t e = 0; e < E_; ++e) {
      routed[static_cast<std::size_t>(e)] = static_cast<std::int32_t>(n_);
      touched.push_back(static_cast<std::int32_t>(e));
    }
  }

 private:
  std::int64_t E_, n_;
};

bool parse_number(const std::string& s, double& out) {
  if (s.empty()) return false;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && end == s.data() + s.size() && std::isfinite(out);
}

}  // namespace

Workload parse_workload(const std::string& text) {
  Workload w;
  w.text = text;
  if (text.rfind("trace:", 0) == 0) {
    w.kind = WorkloadKind::trace;
    w.file = text.substr(6);
    if (w.file.empty()) throw ConfigError("simulate.workload", text, kAllowed);
    return w;
  }
  if (text.rfind("run:", 0) == 0) {
    w.kind = WorkloadKind::run;
    w.file = text.substr(4);
    if (w.file.empty()) throw ConfigError("simulate.workload", text, kAllowed);
    return w;
  }
  std::string base = text;
  const std::string suffix = "+rotate";
  if (base.size() > suffix.size() &&
      base.compare(base.size() - suffix.size(), suffix.size(), suffix) == 0) {
    w.rotate = true;
    base.erase(base.size() - suffix.size());
  }
  if (base == "rotate") {
    w.kind = WorkloadKind::zipf;
    w.param = 1.0;
    w.rotate = true;
    return w;
  }
  if (base == "uniform") return w;
  const auto colon = base.find(':');
  if (colon == std::string::npos) throw ConfigError("simulate.workload", text, kAllowed);
  const std::string name = base.substr(0, colon);
  double v = 0;
  if (!parse_number(base.substr(colon + 1), v))
    throw ConfigError("simulate.workload", text, kAllowed);
  w.param = v;
  if (name == "zipf" && v > 0)
    w.kind = WorkloadKind::zipf;
  else if (name == "lognormal" && v >= 0)
    w.kind = WorkloadKind::lognormal;
  else if (name == "hot" && v > 0 && v < 1)
    w.kind = WorkloadKind::hot;
  else
    throw ConfigError("simulate.workload", text, kAllowed);
  return w;
}

std::vector<double> expert_probabilities(const Workload& w, std::int64_t E, std::uint64_t seed,
                                         std::int64_t layer, std::int64_t step) {
  std::vector<double> p(static_cast<std::size_t>(E), 1.0 / static_cast<double>(E));
  if (w.kind == WorkloadKind::uniform || w.kind == WorkloadKind::run ||
      w.kind == WorkloadKind::trace)
    return p;
  std::vector<double> weight(static_cast<std::size_t>(E));
  if (w.kind == WorkloadKind::zipf) {
    const std::vector<std::int64_t> perm = permutation(E, seed, layer);
    for (std::int64_t r = 0; r < E; ++r)
      weight[static_cast<std::size_t>(perm[static_cast<std::size_t>(r)])] =
          std::pow(static_cast<double>(r + 1), -w.param);
  } else if (w.kind == WorkloadKind::lognormal) {
    const CounterRng rng(seed, static_cast<Stream>(kTagLognormal),
                         static_cast<std::uint64_t>(layer));
    for (std::int64_t e = 0; e < E; ++e)
      weight[static_cast<std::size_t>(e)] =
          std::exp(w.param * rng.normal(static_cast<std::uint64_t>(e)));
  } else {  // hot
    const CounterRng rng(seed, static_cast<Stream>(kTagHot), static_cast<std::uint64_t>(layer));
    const auto hot = static_cast<std::int64_t>(rng.bits(0) % static_cast<std::uint64_t>(E));
    for (std::int64_t e = 0; e < E; ++e)
      weight[static_cast<std::size_t>(e)] =
          E == 1 ? 1.0 : (e == hot ? w.param : (1.0 - w.param) / static_cast<double>(E - 1));
  }
  double sum = 0;
  for (double x : weight) sum += x;
  const std::int64_t shift = w.rotate ? step % E : 0;
  for (std::int64_t e = 0; e < E; ++e)
    p[static_cast<std::size_t>((e + shift) % E)] = weight[static_cast<std::size_t>(e)] / sum;
  return p;
}

std::unique_ptr<LoadSource> make_synthetic_source(const Workload& w, std::int64_t E, std::int64_t S,
                                                  std::int64_t k, std::uint64_t seed) {
  return std::make_unique<SyntheticSource>(w, E, S, k, seed);
}

std::unique_ptr<LoadSource> make_recorded_source(const RecordedLoads& loads, std::int64_t E) {
  return std::make_unique<RecordedSource>(loads, E);
}

std::unique_ptr<LoadSource> make_fixed_source(std::int64_t E, std::int64_t per_expert) {
  return std::make_unique<FixedSource>(E, per_expert);
}

std::unique_ptr<LoadSource> make_shifted_source(LoadSource& inner, std::int64_t offset) {
  return std::make_unique<ShiftedSource>(inner, offset);
}

}  // namespace moesim::simulate
