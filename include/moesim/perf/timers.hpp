// Named phase timers: a RAII scope adds its wall time to one phase of a PhaseTimes;
// the trainer reduces them over ranks (max) once per step.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>

namespace moesim::perf {

enum class Phase : std::size_t { gate, dispatch, expert, combine, backward, sync, count };

struct PhaseTimes {
  std::array<double, static_cast<std::size_t>(Phase::count)> seconds{};
  double& operator[](Phase p) { return seconds[static_cast<std::size_t>(p)]; }
  double operator[](Phase p) const { return seconds[static_cast<std::size_t>(p)]; }
  void reset() { seconds.fill(0.0); }
};

class ScopedTimer {
 public:
  // A null target makes the timer a no-op (evaluation passes, tests).
  ScopedTimer(PhaseTimes* target, Phase phase)
      : target_(target), phase_(phase), start_(std::chrono::steady_clock::now()) {}
  ~ScopedTimer() {
    if (target_)
      (*target_)[phase_] +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  PhaseTimes* target_;
  Phase phase_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace moesim::perf
