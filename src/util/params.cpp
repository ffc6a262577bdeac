// ParamStore: registration, one allocation, keyed initialisation.
#include "moesim/util/params.hpp"

#include <algorithm>
#include <stdexcept>

#include "moesim/util/rng.hpp"

namespace moesim {

template <typename T>
int ParamStore<T>::add(std::string name, ParamKind kind, std::int64_t size, double init_std) {
  if (allocated_) throw std::logic_error("ParamStore::add after allocate: " + name);
  std::int64_t& used = kind == ParamKind::replicated ? rep_size_ : exp_size_;
  // Every tensor starts on a 64-byte boundary (see aligned.hpp); the padding stays zero.
  constexpr auto per_line = static_cast<std::int64_t>(kBufferAlignment / sizeof(T));
  used = (used + per_line - 1) / per_line * per_line;
  entries_.push_back(Entry{std::move(name), kind, used, size, init_std});
  used += size;
  return static_cast<int>(entries_.size() - 1);
}

template <typename T>
void ParamStore<T>::allocate() {
  rep_.assign(static_cast<std::size_t>(rep_size_), T(0));
  rep_grad_.assign(static_cast<std::size_t>(rep_size_), T(0));
  exp_.assign(static_cast<std::size_t>(exp_size_), T(0));
  exp_grad_.assign(static_cast<std::size_t>(exp_size_), T(0));
  allocated_ = true;
}

template <typename T>
void ParamStore<T>::initialize(std::uint64_t seed) {
  for (std::size_t id = 0; id < entries_.size(); ++id) {
    const Entry& e = entries_[id];
    T* v = value(static_cast<int>(id));
    if (e.init_std == 0) {
      std::fill(v, v + e.size, T(0));
      continue;
    }
    const CounterRng rng(seed, Stream::init, hash_name(e.name));
    for (std::int64_t i = 0; i < e.size; ++i)
      v[i] = static_cast<T>(e.init_std * rng.normal(static_cast<std::uint64_t>(i)));
  }
}

template <typename T>
void ParamStore<T>::zero_grads() {
  std::fill(rep_grad_.begin(), rep_grad_.end(), T(0));
  std::fill(exp_grad_.begin(), exp_grad_.end(), T(0));
}

template class ParamStore<float>;
template class ParamStore<double>;

}  // namespace moesim
