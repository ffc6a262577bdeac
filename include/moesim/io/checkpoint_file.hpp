// Checkpoint files: named float64 tensors plus a small header, written atomically (a
// temporary name, then rename) so that a crash never leaves a half-written checkpoint in
// place of a good one. Tensors are addressed by rank-independent names ("param/<name>",
// "m/<name>", ...), so a checkpoint can be read back at any rank count.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace moesim::io {

// 2: per-tensor and header checksums.
inline constexpr std::int64_t kCheckpointFormat = 2;

struct CheckpointMeta {
  std::int64_t format_version = kCheckpointFormat;
  std::int64_t step = 0;             // optimizer steps completed
  std::int64_t optimizer_steps = 0;  // the optimizer's own counter (Adam bias correction)
  std::int64_t ranks = 1;            // rank count that wrote it (information only)
  std::string precision;             // "float32" / "float64": values are stored as float64
  std::string config_ini;            // the run's resolved parameters
};

struct CheckpointEntry {
  std::string name;          // e.g. "param/layer0.expert3.w1"
  std::vector<double> data;  // exact for float32 values
};

// FNV-1a 64 of the header fields (stored as the root attribute meta_checksum).
std::uint64_t checkpoint_meta_checksum(const CheckpointMeta& meta);

// Writes `path` + ".tmp", then renames it to `path`. Throws std::runtime_error.
void write_checkpoint(const std::string& path, const CheckpointMeta& meta,
                      const std::vector<CheckpointEntry>& entries);

class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& path);  // throws if unreadable or wrong format
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;
  [[nodiscard]] const CheckpointMeta& meta() const;
  [[nodiscard]] bool has(const std::string& name) const;
  // Reads every tensor and checks its checksum. Throws naming the first corrupt one.
  void verify() const;
  // Reads tensor `name` into `out`; its length must match. Throws otherwise.
  void read(const std::string& name, std::span<double> out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moesim::io
