// Trainable parameters in two flat arenas: *replicated* ones (same on every rank, their
// gradients allreduced in one call) and *expert* ones (live on the expert's rank only).
// Modules register tensors by name, then the store allocates once; values are
// initialised from a stream keyed by the tensor's name, so an expert's weights are the
// same whichever rank hosts it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "moesim/util/aligned.hpp"

namespace moesim {

enum class ParamKind { replicated, expert };

template <typename T>
class ParamStore {
 public:
  struct Entry {
    std::string name;  // globally unique, rank independent ("layer0.expert5.w1")
    ParamKind kind;
    std::int64_t offset = 0;  // within its arena
    std::int64_t size = 0;
    double init_std = 0;  // N(0, init_std^2); 0 = zeros
    // This rank writes the tensor into checkpoints: exactly one rank per logical name
    // (replicated: rank 0; replicas of an expert: the first one). Set by the model.
    bool checkpoint_writer = true;
  };

  // Registers a tensor; returns its id. Only before allocate().
  int add(std::string name, ParamKind kind, std::int64_t size, double init_std);
  void allocate();
  // Values from the keyed init stream.
  void initialize(std::uint64_t seed);

  [[nodiscard]] T* value(int id) { return arena(entries_[id].kind).data() + entries_[id].offset; }
  [[nodiscard]] T* grad(int id) { return garena(entries_[id].kind).data() + entries_[id].offset; }
  [[nodiscard]] const T* value(int id) const { return const_cast<ParamStore*>(this)->value(id); }
  // Id of the tensor called `name`, or -1 if this store does not hold it.
  [[nodiscard]] int find(const std::string& name) const {
    for (std::size_t i = 0; i < entries_.size(); ++i)
      if (entries_[i].name == name) return static_cast<int>(i);
    return -1;
  }
  [[nodiscard]] const Entry& entry(int id) const { return entries_[static_cast<std::size_t>(id)]; }
  // Redundant experts: a slot's tensors take the logical name of the expert it now holds.
  void rename(int id, const std::string& name) {
    entries_[static_cast<std::size_t>(id)].name = name;
  }
  void set_checkpoint_writer(int id, bool writer) {
    entries_[static_cast<std::size_t>(id)].checkpoint_writer = writer;
  }
  [[nodiscard]] const std::vector<Entry>& entries() const { return entries_; }

  [[nodiscard]] std::span<T> values(ParamKind k) { return arena(k); }
  [[nodiscard]] std::span<T> grads(ParamKind k) { return garena(k); }
  void zero_grads();

 private:
  AlignedVector<T>& arena(ParamKind k) { return k == ParamKind::replicated ? rep_ : exp_; }
  AlignedVector<T>& garena(ParamKind k) {
    return k == ParamKind::replicated ? rep_grad_ : exp_grad_;
  }
  std::vector<Entry> entries_;
  std::int64_t rep_size_ = 0, exp_size_ = 0;
  AlignedVector<T> rep_, exp_, rep_grad_, exp_grad_;  // tensors start on 64-byte boundaries
  bool allocated_ = false;
};

}  // namespace moesim
