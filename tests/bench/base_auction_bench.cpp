// Cost of the BASE balanced assignment (routing/base_assignment.hpp) per routing group:
// S tokens x E experts of N(0, sigma^2) logits (sigma = 1: an untrained router; sigma = 4 with
// every token preferring expert 0 by +3: a skewed one), the default tolerance 1e-6.
// Prints one row per (S, E): median CPU milliseconds per solve (this thread's CPU time, which a
// loaded machine inflates far less than wall time), median wall milliseconds, bids per token,
// final epsilon.
//   build/tests/base_auction_bench [repetitions]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <vector>

#include "moesim/routing/base_assignment.hpp"
#include "moesim/util/rng.hpp"

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 3;
  std::printf("%6s %4s %7s %10s %10s %10s %12s\n", "S", "E", "logits", "cpu_ms", "wall_ms",
              "bids/S", "final_eps");
  moesim::routing::BalancedAssignment solver;
  for (const std::int64_t S : {256, 1024, 4096, 8192}) {
    for (const std::int64_t E : {8, 16, 32, 64}) {
      for (const bool skew : {false, true}) {
        const moesim::CounterRng rng(static_cast<std::uint64_t>(S * 100 + E),
                                     moesim::Stream::routing);
        std::vector<double> h(static_cast<std::size_t>(S * E));
        for (std::size_t i = 0; i < h.size(); ++i) {
          h[i] = (skew ? 4.0 : 1.0) * rng.normal(i);
          if (skew && i % static_cast<std::size_t>(E) == 0) h[i] += 3.0;
        }
        std::vector<std::int32_t> a(static_cast<std::size_t>(S));
        std::vector<double> ms, cpu;
        double eps = 0;
        for (int r = 0; r < reps; ++r) {
          timespec c0{}, c1{};
          clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
          const auto t0 = std::chrono::steady_clock::now();
          eps = solver.solve(h, S, E, 1e-6, a);
          clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
          cpu.push_back(1e3 * static_cast<double>(c1.tv_sec - c0.tv_sec) +
                        1e-6 * static_cast<double>(c1.tv_nsec - c0.tv_nsec));
          ms.push_back(
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                  .count());
        }
        std::sort(ms.begin(), ms.end());
        std::sort(cpu.begin(), cpu.end());
        std::printf("%6lld %4lld %7s %10.3f %10.3f %10.1f %12.3e\n", static_cast<long long>(S),
                    static_cast<long long>(E), skew ? "skewed" : "normal", cpu[cpu.size() / 2],
                    ms[ms.size() / 2],
                    static_cast<double>(solver.last_bids()) / static_cast<double>(S), eps);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
