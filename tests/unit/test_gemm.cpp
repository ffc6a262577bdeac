// experts/gemm.hpp against a naive triple loop in double, for the three implementations
// (Eigen double, oneDNN float, oneDNN bf16 x bf16 -> float): every transpose combination,
// alpha and beta (incl. beta = 0 over a NaN-filled C), padded leading dimensions, odd and
// empty sizes. Tolerance: a float32 sum of K products has error <= K * 2^-24 * sum|a||b|
// (the standard worst-case bound, gamma_K); we allow 2 K 2^-24 of |alpha| sum|a||b| +
// |beta||c| per entry (bf16 inputs are exact in float, so the same bound holds for the
// bf16 GEMM measured against the double product of the bf16-rounded inputs); double gets
// 2 K 2^-53 of the same.
#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "moesim/experts/gemm.hpp"
#include "moesim/util/rng.hpp"

using namespace moesim;
using experts::bf16;
using experts::Op;

namespace {

struct Shape {
  std::int64_t M, N, K;
};

template <typename In>
In from_double(double v) {
  if constexpr (std::is_same_v<In, bf16>)
    return experts::to_bf16(static_cast<float>(v));
  else
    return static_cast<In>(v);
}
template <typename In>
double to_double(In v) {
  if constexpr (std::is_same_v<In, bf16>)
    return static_cast<double>(experts::to_float(v));
  else
    return static_cast<double>(v);
}

// One case: In = input type, Out = C's type.
template <typename In, typename Out>
void check(Op ta, Op tb, Shape s, double alpha, double beta, std::int64_t pad, double unit) {
  const std::int64_t M = s.M, N = s.N, K = s.K;
  const std::int64_t ar = ta == Op::none ? M : K, ac = ta == Op::none ? K : M;
  const std::int64_t br = tb == Op::none ? K : N, bc = tb == Op::none ? N : K;
  const std::int64_t lda = ac + pad, ldb = bc + pad, ldc = N + pad;
  const CounterRng rng(7, Stream::init, static_cast<std::uint64_t>(M * 1000003 + N * 1009 + K));
  std::vector<In> A(static_cast<std::size_t>(std::max<std::int64_t>(ar * lda, 1)));
  std::vector<In> B(static_cast<std::size_t>(std::max<std::int64_t>(br * ldb, 1)));
  const double sentinel = 12345.0;
  std::vector<Out> C(static_cast<std::size_t>(std::max<std::int64_t>(M * ldc, 1)),
                     static_cast<Out>(sentinel));
  std::uint64_t ctr = 0;
  for (auto& v : A) v = from_double<In>(rng.normal(ctr++));
  for (auto& v : B) v = from_double<In>(rng.normal(ctr++));
  for (std::int64_t i = 0; i < M; ++i)
    for (std::int64_t j = 0; j < N; ++j)
      C[static_cast<std::size_t>(i * ldc + j)] =
          beta == 0 ? std::numeric_limits<Out>::quiet_NaN() : static_cast<Out>(rng.normal(ctr++));
  const std::vector<Out> C0 = C;
  const auto a = [&](std::int64_t i, std::int64_t k) {
    return to_double(ta == Op::none ? A[static_cast<std::size_t>(i * lda + k)]
                                    : A[static_cast<std::size_t>(k * lda + i)]);
  };
  const auto b = [&](std::int64_t k, std::int64_t j) {
    return to_double(tb == Op::none ? B[static_cast<std::size_t>(k * ldb + j)]
                                    : B[static_cast<std::size_t>(j * ldb + k)]);
  };
  experts::gemm(ta, tb, M, N, K, static_cast<Out>(alpha), A.data(), lda, B.data(), ldb,
                static_cast<Out>(beta), C.data(), ldc);
  for (std::int64_t i = 0; i < M; ++i) {
    for (std::int64_t j = 0; j < N + pad; ++j) {
      const auto idx = static_cast<std::size_t>(i * ldc + j);
      if (j >= N) {  // padding between rows: never written
        ASSERT_EQ(static_cast<double>(C[idx]), sentinel) << "padding written at " << i << "," << j;
        continue;
      }
      double ref = 0, mag = 0;
      for (std::int64_t k = 0; k < K; ++k) {
        ref += a(i, k) * b(k, j);
        mag += std::abs(a(i, k) * b(k, j));
      }
      const double c0 = beta == 0 ? 0.0 : static_cast<double>(C0[idx]);
      ref = alpha * ref + beta * c0;
      const double tol =
          2.0 * static_cast<double>(K + 2) * unit * (std::abs(alpha) * mag + std::abs(beta * c0));
      ASSERT_NEAR(static_cast<double>(C[idx]), ref, tol)
          << "M=" << M << " N=" << N << " K=" << K << " ta=" << (ta == Op::transpose)
          << " tb=" << (tb == Op::transpose) << " alpha=" << alpha << " beta=" << beta
          << " pad=" << pad << " at " << i << "," << j;
    }
  }
}

const Shape kShapes[] = {{0, 5, 3},    {4, 0, 3},    {3, 4, 0},      {1, 1, 1},   {7, 13, 5},
                         {33, 17, 65}, {64, 48, 32}, {129, 31, 257}, {5, 70, 200}};

template <typename In, typename Out>
void sweep(double unit) {
  for (const Shape& s : kShapes)
    for (Op ta : {Op::none, Op::transpose})
      for (Op tb : {Op::none, Op::transpose})
        for (double alpha : {1.0, -0.5})
          for (double beta : {0.0, 1.0, 0.75})
            for (std::int64_t pad : {0, 3}) check<In, Out>(ta, tb, s, alpha, beta, pad, unit);
}

}  // namespace

TEST(Gemm, EigenDoubleMatchesNaiveLoop) { sweep<double, double>(std::ldexp(1.0, -53)); }
TEST(Gemm, OneDnnFloatMatchesNaiveLoop) { sweep<float, float>(std::ldexp(1.0, -24)); }
TEST(Gemm, OneDnnBf16MatchesNaiveLoopOfRoundedInputs) { sweep<bf16, float>(std::ldexp(1.0, -24)); }

TEST(Gemm, Bf16PrimitivesAreCreatedOncePerCallSiteClass) {
  // Same class (transposes, N, leading dimensions, alpha, beta), many M and K: one primitive.
  std::vector<bf16> A(300 * 64, experts::to_bf16(1.0f)), B(300 * 64, experts::to_bf16(0.5f));
  std::vector<float> C(300 * 64);
  experts::gemm(Op::none, Op::none, 3, 16, 5, 1.0f, A.data(), 64, B.data(), 16, 0.0f, C.data(), 16);
  const std::int64_t before = experts::matmul_primitives_created();
  for (std::int64_t m : {1, 7, 100, 299})
    for (std::int64_t k : {1, 9, 64})
      experts::gemm(Op::none, Op::none, m, 16, k, 1.0f, A.data(), 64, B.data(), 16, 0.0f, C.data(),
                    16);
  EXPECT_EQ(experts::matmul_primitives_created(), before);
  EXPECT_FLOAT_EQ(C[0], 0.5f * 64);  // last call: K = 64, 1 * 0.5 summed
}

TEST(Gemm, Bf16RoundsToNearestEven) {
  EXPECT_EQ(experts::to_bf16(1.0f).bits, 0x3f80);
  EXPECT_EQ(experts::to_bf16(1.0f + std::ldexp(1.0f, -8)).bits, 0x3f80);      // tie -> even
  EXPECT_EQ(experts::to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)).bits, 0x3f82);  // tie -> even (up)
  EXPECT_EQ(experts::to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -12)).bits, 0x3f81);
  EXPECT_EQ(experts::to_float(experts::to_bf16(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isnan(experts::to_float(experts::to_bf16(std::nanf("")))));
  EXPECT_TRUE(std::isinf(experts::to_float(experts::to_bf16(INFINITY))));
}

namespace {
std::atomic<long> g_signals{0};
extern "C" void count_signal(int) { g_signals.fetch_add(1, std::memory_order_relaxed); }
}  // namespace

// oneDNN 2.6's JIT f32 GEMM (the "nocopy" kernels behind dnnl_sgemm and the run-time-dims
// f32 matmul, for K above ~84) points the stack pointer at a heap workspace; a signal that
// arrives while the kernel runs has its frame pushed onto the heap, which glibc later
// detects in free() (oneDNN issue 4845, fixed upstream in 2026 by PR 4855; Debian ships
// 2.6.3). The stop signals (SIGUSR1/SIGTERM, checkpoint.cpp) hit exactly this: it aborted
// regression_signal_resume once. Here a thread signals the GEMM thread every ~20 us while
// it runs float32 (and bf16) GEMMs of that class; the process must survive and the
// results stay exact (small integers times powers of two).
TEST(Gemm, SignalsDuringTheKernelCorruptNothing) {
  struct sigaction sa {
  }, old{};
  sa.sa_handler = count_signal;
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR2, &sa, &old), 0);
  const pthread_t target = pthread_self();
  std::atomic<bool> stop{false};
  std::thread sender([&] {
    while (!stop.load()) {
      pthread_kill(target, SIGUSR2);
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  });
  const std::int64_t M = 160, N = 128, K = 512;
  std::vector<float> A(M * K, 0.5f), B(K * N, 0.25f), C(M * N);
  std::vector<bf16> A16(M * K, experts::to_bf16(0.5f)), B16(K * N, experts::to_bf16(0.25f));
  bool exact = true;
  for (int it = 0; it < 400 && exact; ++it) {
    std::vector<float> traffic(static_cast<std::size_t>(1000 + it));  // heap use around the GEMM
    const Op tb = it % 2 ? Op::transpose : Op::none;
    experts::gemm(Op::none, tb, M, N, K, 1.0f, A.data(), K, B.data(), tb == Op::none ? N : K, 0.0f,
                  C.data(), N);
    exact = exact && C[0] == 0.125f * K && C[M * N - 1] == 0.125f * K;
    if (it % 8 == 0) {
      experts::gemm(Op::none, Op::none, M, N, K, 1.0f, A16.data(), K, B16.data(), N, 0.0f, C.data(),
                    N);
      exact = exact && C[0] == 0.125f * K && C[M * N - 1] == 0.125f * K;
    }
    traffic[0] = 1.0f;
  }
  stop = true;
  sender.join();
  sigaction(SIGUSR2, &old, nullptr);
  EXPECT_TRUE(exact);
  EXPECT_GT(g_signals.load(), 0);  // signals were delivered (between the GEMMs)
}

// The branch-free to_bf16 (vectorised in the expert loops) against a straightforward
// reference, for every sign/exponent/upper-mantissa pattern with the lower 16 bits at the
// rounding boundaries (ties, just below/above, extremes): NaN quieted, overflow to inf,
// denormals rounded like any other value. Both the scalar and the array form.
TEST(Gemm, Bf16ConversionMatchesReferenceOnBoundaryPatterns) {
  const auto reference = [](std::uint32_t u) -> std::uint16_t {
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
    const std::uint32_t lower = u & 0xffffu, upper = u >> 16;
    const bool up = lower > 0x8000u || (lower == 0x8000u && (upper & 1u));
    return static_cast<std::uint16_t>(upper + (up ? 1u : 0u));
  };
  std::vector<float> in;
  std::vector<std::uint16_t> want;
  for (std::uint32_t hi = 0; hi < 0x10000u; ++hi)
    for (std::uint32_t lo : {0x0u, 0x1u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) {
      const std::uint32_t u = hi << 16 | lo;
      float f;
      std::memcpy(&f, &u, 4);
      in.push_back(f);
      want.push_back(reference(u));
    }
  std::vector<bf16> out(in.size());
  experts::to_bf16(in.data(), out.data(), static_cast<std::int64_t>(in.size()));
  std::size_t bad = 0;
  for (std::size_t i = 0; i < in.size(); ++i)
    bad += out[i].bits != want[i] || experts::to_bf16(in[i]).bits != want[i];
  EXPECT_EQ(bad, 0u);
}

TEST(Gemm, RejectsLeadingDimensionBelowRowLength) {
  std::vector<float> A(100), B(100), C(100);
  EXPECT_THROW(
      experts::gemm(Op::none, Op::none, 4, 4, 4, 1.0f, A.data(), 3, B.data(), 4, 0.0f, C.data(), 4),
      std::invalid_argument);
}

TEST(Gemm, ReportsCpuAndKernel) {
  const experts::CpuInfo info = experts::cpu_info();
  EXPECT_FALSE(info.dnnl_version.empty());
  EXPECT_GE(info.omp_threads, 1);
  EXPECT_NE(experts::kernel_name(false).find("sgemm"), std::string::npos);
  std::printf("cpu: %s avx512f=%d avx512_bf16=%d amx_bf16=%d oneDNN %s isa %s; f32 %s; bf16 %s\n",
              info.vendor_model.c_str(), info.avx512f, info.avx512_bf16, info.amx_bf16,
              info.dnnl_version.c_str(), info.dnnl_isa.c_str(), experts::kernel_name(false).c_str(),
              experts::kernel_name(true).c_str());
}
