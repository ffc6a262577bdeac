// Trace replay (routing/replay.hpp), moved out of the CLI.
#include "moesim/routing/replay.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "moesim/routing/router.hpp"

namespace moesim::routing {

void check_trace_shape(const Config& cfg, std::int64_t T, std::int64_t E) {
  // (appended piece by piece: GCC 12 warns falsely on "[" + std::to_string(...))
  std::string shape = "[";
  shape.append(std::to_string(T)).append(", ").append(std::to_string(E)).append("]");
  if (T <= 0 || E <= 0)
    throw ConfigError(
        "trace.input", cfg.trace.input,
        "a trace whose /logits has at least one token and one expert (shape " + shape + ")");
  if (E > std::numeric_limits<std::int32_t>::max())
    throw ConfigError("trace.input", cfg.trace.input,
                      "a trace with at most 2^31-1 experts (/logits shape " + shape + ")");
  // T*E doubles of logits plus as many probabilities per group must be addressable.
  std::int64_t elems = 0, bytes = 0;
  if (__builtin_mul_overflow(T, E, &elems) || __builtin_mul_overflow(elems, 16, &bytes))
    throw ConfigError("trace.input", cfg.trace.input,
                      "a trace whose /logits [T, E] fits in memory: shape " + shape +
                          " has more than 2^63 bytes of logits");
  const std::int64_t S = cfg.routing.group_size > 0 ? cfg.routing.group_size : T;
  if (T % S != 0)
    throw ConfigError("routing.group_size", std::to_string(cfg.routing.group_size),
                      "a divisor of the trace's token count (" + std::to_string(T) + ")");
  if (cfg.routing.rule == RoutingRuleKind::base && S % E != 0)
    throw ConfigError(
        cfg.routing.group_size > 0 ? "routing.group_size" : "trace.input",
        cfg.routing.group_size > 0 ? std::to_string(cfg.routing.group_size) : cfg.trace.input,
        "routing groups of a multiple of the trace's " + std::to_string(E) +
            " experts when routing.rule = base (group of " + std::to_string(S) +
            " tokens; exactly S / E tokens per expert)");
}

std::int64_t replay_memory_bytes(const Config& cfg, std::int64_t T, std::int64_t E) {
  __extension__ typedef __int128 i128;
  const i128 S = cfg.routing.group_size > 0 ? cfg.routing.group_size : T;
  const i128 k = cfg.routing.rule == RoutingRuleKind::dense ||
                         cfg.routing.rule == RoutingRuleKind::expert_choice
                     ? E
                     : std::min<i128>(cfg.routing.k, E);
  const i128 assignments = static_cast<i128>(T) * k;                     // < 2^126: no overflow
  i128 bytes = static_cast<i128>(T) * E * 8 + static_cast<i128>(T) * 8;  // logits, token ids
  bytes += S * E * 8 + S * 8 * 4;                                        // probs, lse, scores
  bytes += S * k * static_cast<i128>(sizeof(Candidate)) * 4;             // candidates + sorted copy
  bytes += assignments * 2 * (8 + 4 + 4 + 8);                            // output rows (2x growth)
  constexpr i128 kMax = std::numeric_limits<std::int64_t>::max();
  return bytes > kMax ? std::numeric_limits<std::int64_t>::max() : static_cast<std::int64_t>(bytes);
}

ReplayResult replay(const Config& cfg, std::span<const double> logits, std::int64_t T,
                    std::int64_t E, std::span<const std::int64_t> token_id) {
  check_trace_shape(cfg, T, E);
  if (cfg.routing.num_experts != E || static_cast<std::int64_t>(logits.size()) != T * E ||
      (!token_id.empty() && static_cast<std::int64_t>(token_id.size()) != T))
    throw std::invalid_argument("routing::replay: logits/token_id/num_experts do not match");
  ReplayResult out;
  out.tokens = T;
  out.experts = E;
  const std::int64_t S = cfg.routing.group_size > 0 ? cfg.routing.group_size : T;
  out.group_size = S;
  out.groups = T / S;
  const Router router(cfg.routing, S);
  out.load_routed.assign(static_cast<std::size_t>(E), 0);
  out.load_kept.assign(static_cast<std::size_t>(E), 0);
  out.capacity = router.capacity(true);
  std::vector<double> probs(static_cast<std::size_t>(S * E));
  GroupRouting r;
  double aux = 0, z = 0;
  std::int64_t dropped = 0, total = 0;
  std::vector<Candidate> sorted;
  for (std::int64_t g = 0; g < out.groups; ++g) {
    const auto off = static_cast<std::size_t>(g * S * E);
    // Keys of the random rules and hash routing: the trace's token ids (or positions),
    // training.seed, step 0, layer 0.
    RouteContext ctx;
    ctx.training = true;
    ctx.seed = cfg.training.seed;
    ctx.first_token = g * S;
    if (!token_id.empty())
      ctx.token_ids =
          token_id.subspan(static_cast<std::size_t>(g * S), static_cast<std::size_t>(S));
    router.route(logits.subspan(off, static_cast<std::size_t>(S * E)), probs, ctx, r);
    aux += r.aux;
    z += r.z;
    if (cfg.routing.rule == RoutingRuleKind::base)
      out.base_epsilon = std::max(out.base_epsilon, r.base_epsilon);
    dropped += r.dropped;
    total += static_cast<std::int64_t>(r.cands.size());
    sorted = r.cands;
    std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
      return a.token != b.token ? a.token < b.token : a.expert < b.expert;
    });
    for (const Candidate& c : sorted) {
      const std::int64_t tok = g * S + c.token;
      ++out.load_routed[static_cast<std::size_t>(c.expert)];
      if (c.kept) {
        ++out.load_kept[static_cast<std::size_t>(c.expert)];
        out.token.push_back(tok);
        out.expert.push_back(c.expert);
        out.slot.push_back(c.slot);
        out.weight.push_back(c.weight);
      } else {
        out.dropped_token.push_back(tok);
        out.dropped_expert.push_back(c.expert);
      }
    }
  }
  const auto groups = static_cast<double>(out.groups);
  out.aux_loss = aux / groups;
  out.z_loss = z / groups;
  out.dropped_fraction =
      total > 0 ? static_cast<double>(dropped) / static_cast<double>(total) : 0.0;
  return out;
}

}  // namespace moesim::routing
