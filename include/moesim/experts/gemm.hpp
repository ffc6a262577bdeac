// One small GEMM interface for every dense product of the model's hot path:
//   C = alpha * op(A) * op(B) + beta * C
// on row-major buffers with leading dimensions (the row stride, in elements): op(A) is
// [M x K] (A is [M x K] with lda >= K, or [K x M] with lda >= M when transposed), op(B)
// is [K x N], C is [M x N] with ldc >= N. M, N or K may be 0 (then C = beta * C).
//
// Implementations (chosen by the element type, never by a flag):
//  - double: Eigen 3.4 maps, written as the very expressions the layer used before, so
//    float64 results (those of every correctness test) are bitwise what they were.
//  - float: oneDNN's single-precision GEMM (dnnl_sgemm, its JIT AVX-512 kernel). It needs
//    no primitive objects and makes no heap allocation per call; a dnnl::matmul execute
//    makes 4 (its argument map), which would break "no allocation in steady-state steps".
//  - bf16 x bf16 -> float (mixed precision): a dnnl::matmul primitive with bf16 source and
//    weights and f32 destination (fp32 accumulation), one primitive per call site class
//    (transposes, N, leading dimensions, alpha, beta) with the run-time dimensions M and K
//    (DNNL_RUNTIME_DIM_VAL), created on first use and reused for every later step.
// oneDNN runs one thread per rank: unless OMP_NUM_THREADS is set, the first oneDNN call
// sets the OpenMP thread count of the calling thread to 1 (ranks share the cores).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace moesim::experts {

enum class Op { none, transpose };

// bfloat16: the upper 16 bits of an IEEE float (8 exponent bits, 7 mantissa bits).
struct bf16 {
  std::uint16_t bits;
};
// Round to nearest even (NaN stays NaN, quieted). Written without a branch (both results,
// then a select) so that loops calling it vectorise; the value is the same either way.
inline bf16 to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const std::uint32_t quiet_nan = (u >> 16) | 0x40u;
  return bf16{static_cast<std::uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded)};
}
inline float to_float(bf16 b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
void to_bf16(const float* in, bf16* out, std::int64_t n);
void to_float(const bf16* in, float* out, std::int64_t n);

void gemm(Op ta, Op tb, std::int64_t M, std::int64_t N, std::int64_t K, double alpha,
          const double* A, std::int64_t lda, const double* B, std::int64_t ldb, double beta,
          double* C, std::int64_t ldc);
void gemm(Op ta, Op tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha, const float* A,
          std::int64_t lda, const float* B, std::int64_t ldb, float beta, float* C,
          std::int64_t ldc);
void gemm(Op ta, Op tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha, const bf16* A,
          std::int64_t lda, const bf16* B, std::int64_t ldb, float beta, float* C,
          std::int64_t ldc);

// What the machine and the library offer, detected at run time.
struct CpuInfo {
  std::string vendor_model;  // CPUID brand string
  bool avx512f = false, avx512_bf16 = false, amx_bf16 = false;
  std::string dnnl_isa;      // oneDNN's effective ISA
  std::string dnnl_version;  // e.g. "2.6.3"
  int omp_threads = 0;       // OpenMP threads oneDNN may use on this rank
};
CpuInfo cpu_info();
// oneDNN's kernel (impl_info_str) for gemm()'s calls: "sgemm gemm:jit" / "matmul gemm:jit"
// (run-time M and K select oneDNN's JIT GEMM; dnnl_sgemm uses the same f32 kernel).
std::string kernel_name(bool bf16);
// Number of cached bf16 matmul primitives (tests: they are created once, not per step).
std::int64_t matmul_primitives_created();

}  // namespace moesim::experts
