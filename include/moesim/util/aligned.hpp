// 64-byte aligned buffers for everything Eigen computes on. Eigen's vectorised kernels
// peel a scalar prologue up to the next aligned address, so the summation order of a
// reduction depends on where a buffer happens to start: with malloc's 16-byte alignment
// two identical runs could round differently. Fixing every base address at 64 bytes (a
// cache line, the widest SIMD register) makes runs bitwise repeatable.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace moesim {

inline constexpr std::size_t kBufferAlignment = 64;

template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() noexcept = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) noexcept {}  // NOLINT: rebind converts implicitly
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{kBufferAlignment}));
  }
  void deallocate(T* p, std::size_t) noexcept {
    ::operator delete (p, std::align_val_t{kBufferAlignment});
  }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const noexcept {
    return true;
  }
};

template <typename T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

}  // namespace moesim
