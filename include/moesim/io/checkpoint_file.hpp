// Checkpoint files: named float64 tensors plus a small header, written atomically (a
// temporary name, then rename) so that a crash never leaves a half-written checkpoint in
// place of a good one. Tensors are addressed by rank-independent names ("param/<name>",
// "m/<name>", ...), so a checkpoint can be read back at any rank count.
//
// Format 3 is sharded: every rank writes the tensors it owns into its own shard file (no
// rank gathers the model), and a small manifest at the checkpoint path lists the shards and
// which shard holds each tensor. The manifest is renamed into place last, so it commits the
// checkpoint: until then the previous manifest and its shards stay valid. Format 2 (one file
// with every tensor) is still read.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace moesim::io {

// 2: per-tensor and header checksums. 3: a manifest + per-rank shards (format 2 still read).
inline constexpr std::int64_t kCheckpointFormat = 3;

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

// The manifest's table of contents: shard files (paths relative to the manifest's directory)
// and, for every tensor, the shard that holds it.
struct CheckpointIndex {
  std::vector<std::string> shard_files;
  std::vector<std::string> names;
  std::vector<std::int32_t> shard_of;  // index into shard_files, per name
};

// FNV-1a 64 of the header fields (stored as the root attribute meta_checksum); a manifest's
// covers its index too.
std::uint64_t checkpoint_meta_checksum(const CheckpointMeta& meta,
                                       const CheckpointIndex* index = nullptr);

// Writes one checkpoint file (a shard, or a whole single-file checkpoint) a tensor at a time,
// so the caller needs one tensor's buffer, never the whole set: `path` + ".tmp", renamed to
// `path` by commit(). Destroyed uncommitted, it removes the temporary file.
class CheckpointWriter {
 public:
  explicit CheckpointWriter(std::string path);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;
  void add(const std::string& name, std::span<const double> values);
  void commit(const CheckpointMeta& meta);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes `path` + ".tmp", then renames it to `path`. Throws std::runtime_error.
void write_checkpoint(const std::string& path, const CheckpointMeta& meta,
                      const std::vector<CheckpointEntry>& entries);

// Writes the manifest of a sharded checkpoint (tmp + rename: this commits the checkpoint).
void write_checkpoint_manifest(const std::string& path, const CheckpointMeta& meta,
                               const CheckpointIndex& index);

class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& path);  // throws if unreadable or wrong format
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;
  [[nodiscard]] const CheckpointMeta& meta() const;
  [[nodiscard]] bool has(const std::string& name) const;
  // Shard files a manifest refers to (absolute or relative to the working directory); empty
  // for a single-file checkpoint.
  [[nodiscard]] std::vector<std::string> shard_paths() const;
  // Reads every tensor (of every shard) and checks its checksum. Throws naming the first
  // corrupt one. Holds one tensor at a time.
  void verify() const;
  // Reads tensor `name` into `out`; its length must match. Throws otherwise.
  void read(const std::string& name, std::span<double> out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moesim::io
