// The process's peak resident set size (getrusage ru_maxrss): what /attempts/peak_rss_* record,
// so every run reports rank 0's memory beside the other ranks' (docs/scale.md).
#pragma once

#include <sys/resource.h>

#include <cstdint>

namespace moesim::util {

// Peak RSS of this process so far, in bytes (Linux reports ru_maxrss in KiB).
inline std::int64_t peak_rss_bytes() {
  rusage u{};
  if (getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return static_cast<std::int64_t>(u.ru_maxrss) * 1024;
}

}  // namespace moesim::util
