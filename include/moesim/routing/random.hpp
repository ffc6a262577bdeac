// The routing randomness (noisy_topk noise, switch jitter, gshard random routing) and the
// hash rule's fixed expert, as pure functions of global keys. A draw depends on
// (training.seed, step, layer, global token id, purpose) and an index within that stream
// (the expert, the feature, ...), never on the rank or the order of evaluation: the same
// token gets the same draw on 1 or P ranks, and a training step never reuses another
// step's draws. Evaluation makes no draws at all.
#pragma once

#include <cstdint>

#include "moesim/util/rng.hpp"

namespace moesim::routing {

// Independent purposes get independent streams.
enum class DrawPurpose : std::uint64_t {
  noise = 1,           // noisy_topk: N(0,1) per (token, expert), index = expert
  jitter = 2,          // switch: U[1-eps, 1+eps] per (token, feature), index = feature
  random_routing = 3,  // gshard: U(0,1) per token, index 0
};

// The stream of one (token, purpose) at one (step, layer).
inline CounterRng draw_stream(std::uint64_t seed, std::int64_t step, std::int64_t layer,
                              std::int64_t token_id, DrawPurpose purpose) {
  return CounterRng(
      seed, Stream::routing, static_cast<std::uint64_t>(step),
      hash_key({static_cast<std::uint64_t>(layer), static_cast<std::uint64_t>(purpose)}),
      static_cast<std::uint64_t>(token_id));
}

// hash rule: expert = mix64(global token id) mod E (rng.hpp's SplitMix64 finaliser). A
// fixed function of the id alone: the same token goes to the same expert in every layer,
// step and run (Roller et al. 2021 hash a token's identity; here the identity is its id).
inline std::int32_t hash_expert(std::int64_t token_id, std::int64_t num_experts) {
  return static_cast<std::int32_t>(mix64(static_cast<std::uint64_t>(token_id)) %
                                   static_cast<std::uint64_t>(num_experts));
}

}  // namespace moesim::routing
