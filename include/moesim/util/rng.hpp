// Counter-based random numbers: every draw is a pure function of a key tuple
// (seed, stream, ids..., counter), so results never depend on which rank draws them
// or in which order (DEVELOPERS.md: random streams keyed by global ids, never by rank).
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <numbers>
#include <string_view>

namespace moesim {

// Independent purposes get independent streams.
enum class Stream : std::uint64_t {
  data_train = 1,  // training tokens, keyed by global token id
  data_eval = 2,   // held-out tokens, keyed by eval token id
  init = 3,        // parameter initialisation, keyed by parameter name hash and element
  routing = 4,     // routing randomness (jitter, random routing), keyed by step/layer/token
};

// SplitMix64 finaliser: a bijective 64-bit mixer with full avalanche.
constexpr std::uint64_t mix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Hash of a key tuple; each element is absorbed through the mixer (order matters).
constexpr std::uint64_t hash_key(std::initializer_list<std::uint64_t> key) {
  std::uint64_t h = 0x6A09E667F3BCC908ULL;
  for (std::uint64_t v : key) h = mix64(h ^ mix64(v));
  return h;
}

// FNV-1a of a name, to key per-parameter streams by name rather than by position.
constexpr std::uint64_t hash_name(std::string_view s) {
  std::uint64_t h = 0xCBF29CE484222325ULL;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001B3ULL;
  return h;
}

// Uniform in the open interval (0, 1) with 53 random bits.
inline double uniform01(std::uint64_t bits) {
  return (static_cast<double>(bits >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

// A keyed stream: draw i is a function of (key, i) only.
class CounterRng {
 public:
  CounterRng(std::uint64_t seed, Stream stream, std::uint64_t a = 0, std::uint64_t b = 0,
             std::uint64_t c = 0)
      : key_(hash_key({seed, static_cast<std::uint64_t>(stream), a, b, c})) {}
  [[nodiscard]] std::uint64_t bits(std::uint64_t i) const { return mix64(key_ ^ mix64(i)); }
  [[nodiscard]] double uniform(std::uint64_t i) const { return uniform01(bits(i)); }
  // Standard normal via Box-Muller on draws 2i and 2i+1.
  [[nodiscard]] double normal(std::uint64_t i) const {
    const double u1 = uniform(2 * i), u2 = uniform(2 * i + 1);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  std::uint64_t key_;
};

}  // namespace moesim
