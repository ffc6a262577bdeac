// The GEMM interface (gemm.hpp): Eigen for double, oneDNN for float and bf16.
#include "moesim/experts/gemm.hpp"

#include <cpuid.h>
#include <omp.h>
#include <pthread.h>

#include <array>
#include <csignal>
#include <cstdlib>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <stdexcept>

#include "moesim/util/eigen_maps.hpp"

namespace moesim::experts {
namespace {

using eigen::CMapM;
using eigen::MapM;
using eigen::RowMat;
template <typename T>
using SMapM = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using CSMapM = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;

// C = alpha a b + beta C, written exactly as the layer's former Eigen expressions for
// alpha = 1 and beta in {0, 1} (bitwise the same float64 results).
template <typename CM, typename MA, typename MB>
void eigen_apply(double alpha, const MA& a, const MB& b, double beta, CM&& c) {
  if (beta == 0) {
    if (alpha == 1)
      c.noalias() = a * b;
    else
      c.noalias() = alpha * a * b;
    return;
  }
  if (beta != 1) c *= beta;
  if (alpha == 1)
    c.noalias() += a * b;
  else
    c.noalias() += alpha * a * b;
}

template <typename CM, typename MA>
void eigen_b(Op tb, std::int64_t N, std::int64_t K, double alpha, const MA& a, const double* B,
             std::int64_t ldb, double beta, CM&& c) {
  if (tb == Op::none) {
    if (ldb == N)
      eigen_apply(alpha, a, CMapM<double>(B, K, N), beta, c);
    else
      eigen_apply(alpha, a, CSMapM<double>(B, K, N, Eigen::OuterStride<>(ldb)), beta, c);
  } else {
    if (ldb == K)
      eigen_apply(alpha, a, CMapM<double>(B, N, K).transpose(), beta, c);
    else
      eigen_apply(alpha, a, CSMapM<double>(B, N, K, Eigen::OuterStride<>(ldb)).transpose(), beta,
                  c);
  }
}

template <typename CM>
void eigen_ab(Op ta, Op tb, std::int64_t M, std::int64_t N, std::int64_t K, double alpha,
              const double* A, std::int64_t lda, const double* B, std::int64_t ldb, double beta,
              CM&& c) {
  if (ta == Op::none) {
    if (lda == K)
      eigen_b(tb, N, K, alpha, CMapM<double>(A, M, K), B, ldb, beta, c);
    else
      eigen_b(tb, N, K, alpha, CSMapM<double>(A, M, K, Eigen::OuterStride<>(lda)), B, ldb, beta, c);
  } else {
    if (lda == M)
      eigen_b(tb, N, K, alpha, CMapM<double>(A, K, M).transpose(), B, ldb, beta, c);
    else
      eigen_b(tb, N, K, alpha, CSMapM<double>(A, K, M, Eigen::OuterStride<>(lda)).transpose(), B,
              ldb, beta, c);
  }
}

void check_dims(Op ta, Op tb, std::int64_t M, std::int64_t N, std::int64_t K, std::int64_t lda,
                std::int64_t ldb, std::int64_t ldc) {
  const std::int64_t acols = ta == Op::none ? K : M, bcols = tb == Op::none ? N : K;
  if (M < 0 || N < 0 || K < 0 || lda < acols || ldb < bcols || ldc < N)
    throw std::invalid_argument("gemm: negative size or leading dimension below the row length");
}

// C = beta C for an empty product (K = 0).
template <typename T>
void scale_c(std::int64_t M, std::int64_t N, T beta, T* C, std::int64_t ldc) {
  for (std::int64_t i = 0; i < M; ++i)
    for (std::int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0 ? T(0) : beta * C[i * ldc + j];
}

// Asynchronous signals are held back (blocked, then delivered at the end of the call)
// while a oneDNN kernel runs on this thread. oneDNN 2.6's JIT f32 GEMM kernels
// (jit_avx512_common_gemm_f32 / jit_avx_gemm_f32, used by dnnl_sgemm and by the run-time-dims
// f32 matmul whenever it picks the "nocopy" path with K above ~84) set the stack pointer to
// a heap workspace; a signal delivered then gets its frame written onto the heap, which
// glibc detects later as "free(): invalid pointer" (oneDNN issue 4845, fixed upstream by
// PR 4855 in 2026; Debian 12 ships 2.6.3). Our stop signals (SIGUSR1/SIGTERM) did exactly
// this once in regression_signal_resume. Synchronous fault signals stay unblocked. Cost: two
// pthread_sigmask calls per GEMM (~1 us against GEMMs of 0.01-10 ms). With
// OMP_NUM_THREADS > 1 a process-directed signal could still land on an OpenMP worker that
// did not inherit the mask; the model runs one thread per rank.
class SignalsHeldBack {
 public:
  SignalsHeldBack() { pthread_sigmask(SIG_BLOCK, &held(), &old_); }
  ~SignalsHeldBack() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  SignalsHeldBack(const SignalsHeldBack&) = delete;
  SignalsHeldBack& operator=(const SignalsHeldBack&) = delete;

 private:
  static const sigset_t& held() {
    static const sigset_t set = [] {
      sigset_t s;
      sigfillset(&s);
      for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS})
        sigdelset(&s, sig);
      return s;
    }();
    return set;
  }
  sigset_t old_;
};

// --- oneDNN state: engine, stream, thread count, bf16 matmul primitives ---
struct Dnnl {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  Dnnl() {
    if (std::getenv("OMP_NUM_THREADS") == nullptr) omp_set_num_threads(1);
  }
};
Dnnl& dnnl_state() {
  static Dnnl d;  // thread-safe one-time init
  return d;
}

struct MatmulKey {
  Op ta, tb;
  std::int64_t N, lda, ldb, ldc;
  float alpha, beta;
  bool operator==(const MatmulKey&) const = default;
};
struct MatmulEntry {
  MatmulKey key;
  dnnl::matmul prim;
};
// A fixed table: lookups never allocate. The model has a handful of call-site classes.
constexpr std::size_t kMaxPrimitives = 1024;
std::array<MatmulEntry, kMaxPrimitives> g_prims;
std::size_t g_nprims = 0;
std::mutex g_prims_mutex;

dnnl::memory::dims strides(Op t, std::int64_t ld) {
  return t == Op::none ? dnnl::memory::dims{ld, 1} : dnnl::memory::dims{1, ld};
}

const dnnl::matmul& bf16_primitive(const MatmulKey& k) {
  std::lock_guard<std::mutex> lock(g_prims_mutex);
  for (std::size_t i = 0; i < g_nprims; ++i)
    if (g_prims[i].key == k) return g_prims[i].prim;
  if (g_nprims == kMaxPrimitives) throw std::runtime_error("gemm: too many bf16 matmul shapes");
  using dt = dnnl::memory::data_type;
  const dnnl::memory::dim R = DNNL_RUNTIME_DIM_VAL;
  const dnnl::memory::desc a({R, R}, dt::bf16, strides(k.ta, k.lda));
  const dnnl::memory::desc b({R, k.N}, dt::bf16, strides(k.tb, k.ldb));
  const dnnl::memory::desc c({R, k.N}, dt::f32, dnnl::memory::dims{k.ldc, 1});
  dnnl::primitive_attr attr;
  if (k.alpha != 1.0f) attr.set_output_scales(0, {k.alpha});
  if (k.beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(k.beta);
    attr.set_post_ops(po);
  }
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, dnnl_state().eng);
  g_prims[g_nprims] = MatmulEntry{k, dnnl::matmul(pd)};
  return g_prims[g_nprims++].prim;
}

// A C-API memory object over a user buffer (creating one makes no operator-new call).
struct Mem {
  dnnl_memory_t m = nullptr;
  Mem(std::int64_t rows, std::int64_t cols, dnnl_data_type_t t, const dnnl_dims_t st,
      const void* p) {
    dnnl_memory_desc_t md;
    const dnnl_dims_t dims = {rows, cols};
    if (dnnl_memory_desc_init_by_strides(&md, 2, dims, t, st) != dnnl_success ||
        dnnl_memory_create(&m, &md, dnnl_state().eng.get(), const_cast<void*>(p)) != dnnl_success)
      throw std::runtime_error("gemm: oneDNN memory creation failed");
  }
  ~Mem() { dnnl_memory_destroy(m); }
  Mem(const Mem&) = delete;
  Mem& operator=(const Mem&) = delete;
};

}  // namespace

void to_bf16(const float* in, bf16* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = to_bf16(in[i]);
}
void to_float(const bf16* in, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = to_float(in[i]);
}

void gemm(Op ta, Op tb, std::int64_t M, std::int64_t N, std::int64_t K, double alpha,
          const double* A, std::int64_t lda, const double* B, std::int64_t ldb, double beta,
          double* C, std::int64_t ldc) {
  check_dims(ta, tb, M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (ldc == N)
    eigen_ab(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, MapM<double>(C, M, N));
  else
    eigen_ab(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta,
             SMapM<double>(C, M, N, Eigen::OuterStride<>(ldc)));
}

void gemm(Op ta, Op tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha, const float* A,
          std::int64_t lda, const float* B, std::int64_t ldb, float beta, float* C,
          std::int64_t ldc) {
  check_dims(ta, tb, M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_c(M, N, beta, C, ldc);
  dnnl_state();
  const SignalsHeldBack hold;
  const dnnl_status_t st = dnnl_sgemm(ta == Op::none ? 'N' : 'T', tb == Op::none ? 'N' : 'T', M, N,
                                      K, alpha, A, lda, B, ldb, beta, C, ldc);
  if (st != dnnl_success) throw std::runtime_error("gemm: dnnl_sgemm failed");
}

void gemm(Op ta, Op tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha, const bf16* A,
          std::int64_t lda, const bf16* B, std::int64_t ldb, float beta, float* C,
          std::int64_t ldc) {
  check_dims(ta, tb, M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_c(M, N, beta, C, ldc);
  const dnnl::matmul& prim = bf16_primitive(MatmulKey{ta, tb, N, lda, ldb, ldc, alpha, beta});
  const dnnl_dims_t sa = {ta == Op::none ? lda : 1, ta == Op::none ? 1 : lda};
  const dnnl_dims_t sb = {tb == Op::none ? ldb : 1, tb == Op::none ? 1 : ldb};
  const dnnl_dims_t sc = {ldc, 1};
  const Mem ma(M, K, dnnl_bf16, sa, A), mb(K, N, dnnl_bf16, sb, B), mc(M, N, dnnl_f32, sc, C);
  const dnnl_exec_arg_t args[] = {
      {DNNL_ARG_SRC, ma.m}, {DNNL_ARG_WEIGHTS, mb.m}, {DNNL_ARG_DST, mc.m}};
  Dnnl& d = dnnl_state();
  const SignalsHeldBack hold;
  if (dnnl_primitive_execute(prim.get(), d.strm.get(), 3, args) != dnnl_success ||
      dnnl_stream_wait(d.strm.get()) != dnnl_success)
    throw std::runtime_error("gemm: oneDNN bf16 matmul failed");
}

std::int64_t matmul_primitives_created() {
  std::lock_guard<std::mutex> lock(g_prims_mutex);
  return static_cast<std::int64_t>(g_nprims);
}

CpuInfo cpu_info() {
  CpuInfo info;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    info.avx512f = (b >> 16) & 1u;
    info.amx_bf16 = (d >> 22) & 1u;
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) info.avx512_bf16 = (a >> 5) & 1u;
  std::array<unsigned, 12> brand{};
  if (__get_cpuid(0x80000000u, &a, &b, &c, &d) && a >= 0x80000004u) {
    for (unsigned i = 0; i < 3; ++i)
      __get_cpuid(0x80000002u + i, &brand[4 * i], &brand[4 * i + 1], &brand[4 * i + 2],
                  &brand[4 * i + 3]);
    info.vendor_model = std::string(reinterpret_cast<const char*>(brand.data()), 48).c_str();
    info.vendor_model.erase(info.vendor_model.find_last_not_of(' ') + 1);
  }
  dnnl_state();
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::avx512_core_amx:
      info.dnnl_isa = "avx512_core_amx";
      break;
    case dnnl::cpu_isa::avx512_core_bf16:
      info.dnnl_isa = "avx512_core_bf16";
      break;
    case dnnl::cpu_isa::avx512_core_vnni:
      info.dnnl_isa = "avx512_core_vnni";
      break;
    case dnnl::cpu_isa::avx512_core:
      info.dnnl_isa = "avx512_core";
      break;
    case dnnl::cpu_isa::avx2_vnni:
      info.dnnl_isa = "avx2_vnni";
      break;
    case dnnl::cpu_isa::avx2:
      info.dnnl_isa = "avx2";
      break;
    default:
      info.dnnl_isa = "other";
      break;
  }
  const dnnl_version_t* v = dnnl_version();
  info.dnnl_version =
      std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  info.omp_threads = omp_get_max_threads();
  return info;
}

std::string kernel_name(bool bf16) {
  // The kernel oneDNN picks for the class of calls gemm() makes: run-time M and K.
  using dt = dnnl::memory::data_type;
  const dt t = bf16 ? dt::bf16 : dt::f32;
  const dnnl::memory::dim R = DNNL_RUNTIME_DIM_VAL, N = 512;
  const dnnl::memory::desc a({R, R}, t, dnnl::memory::dims{N, 1});
  const dnnl::memory::desc b({R, N}, t, dnnl::memory::dims{N, 1});
  const dnnl::memory::desc c({R, N}, dt::f32, dnnl::memory::dims{N, 1});
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), dnnl_state().eng);
  return std::string(bf16 ? "matmul " : "sgemm ") + pd.impl_info_str();
}

}  // namespace moesim::experts
