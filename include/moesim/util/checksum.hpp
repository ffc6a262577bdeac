// FNV-1a 64-bit checksums of byte ranges: cheap, deterministic and good enough to detect
// flipped bytes in a checkpoint (not a cryptographic hash).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace moesim {

inline constexpr std::uint64_t kFnvOffset = 14695981039346656037ull;

inline std::uint64_t fnv1a64(const void* data, std::size_t bytes, std::uint64_t hash = kFnvOffset) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) {
    hash ^= p[i];
    hash *= 1099511628211ull;
  }
  return hash;
}
inline std::uint64_t fnv1a64(std::string_view s, std::uint64_t hash = kFnvOffset) {
  return fnv1a64(s.data(), s.size(), hash);
}

}  // namespace moesim
