// HDF5 checkpoint files (checkpoint_file.hpp). Layout: root attributes format_version,
// step, optimizer_steps, ranks, precision, config and meta_checksum (FNV-1a 64 of those);
// one 1-D float64 dataset per tensor, its name used as the HDF5 path (groups are created for
// the "kind/" prefixes), each with a `checksum` attribute (FNV-1a 64 of its values' bytes).
// Reading verifies both, so flipped bytes are found before training resumes from them.
// A format-3 manifest has the same root attributes plus /index/name, /index/shard (the shard
// of each tensor) and /shards/file (shard paths relative to the manifest's directory); its
// meta_checksum covers the index. Each shard is a file of the single-file layout.
#include "moesim/io/checkpoint_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

#include "h5.hpp"
#include "moesim/util/checksum.hpp"

namespace moesim::io {
namespace {

using h5::check;

void put_string(hid_t loc, const std::string& file, const char* name, const std::string& value) {
  h5::Type type(check(H5Tcopy(H5T_C_S1), file, name, "copying the string type"));
  check(H5Tset_size(type.get(), value.size() + 1), file, name, "sizing the string type");
  check(H5Tset_strpad(type.get(), H5T_STR_NULLTERM), file, name, "setting the string padding");
  h5::Space space(check(H5Screate(H5S_SCALAR), file, name, "creating a dataspace"));
  h5::Attr attr(check(H5Acreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                      file, name, "creating the attribute"));
  check(H5Awrite(attr.get(), type.get(), value.c_str()), file, name, "writing the attribute");
}

void put_int(hid_t loc, const std::string& file, const char* name, std::int64_t value) {
  h5::Space space(check(H5Screate(H5S_SCALAR), file, name, "creating a dataspace"));
  h5::Attr attr(check(H5Acreate2(loc, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                      file, name, "creating the attribute"));
  check(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value), file, name, "writing the attribute");
}

void put_u64(hid_t loc, const std::string& file, const char* name, std::uint64_t value) {
  h5::Space space(check(H5Screate(H5S_SCALAR), file, name, "creating a dataspace"));
  h5::Attr attr(check(H5Acreate2(loc, name, H5T_STD_U64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                      file, name, "creating the attribute"));
  check(H5Awrite(attr.get(), H5T_NATIVE_UINT64, &value), file, name, "writing the attribute");
}

std::uint64_t get_u64(hid_t loc, const std::string& file, const char* name) {
  h5::Attr attr(check(H5Aopen(loc, name, H5P_DEFAULT), file, name, "opening the attribute"));
  std::uint64_t v = 0;
  check(H5Aread(attr.get(), H5T_NATIVE_UINT64, &v), file, name, "reading the attribute");
  return v;
}

std::int64_t get_int(hid_t loc, const std::string& file, const char* name) {
  h5::Attr attr(check(H5Aopen(loc, name, H5P_DEFAULT), file, name, "opening the attribute"));
  std::int64_t v = 0;
  check(H5Aread(attr.get(), H5T_NATIVE_INT64, &v), file, name, "reading the attribute");
  return v;
}

std::string get_string(hid_t loc, const std::string& file, const char* name) {
  h5::Attr attr(check(H5Aopen(loc, name, H5P_DEFAULT), file, name, "opening the attribute"));
  h5::Type type(check(H5Aget_type(attr.get()), file, name, "reading the attribute type"));
  const std::size_t size = H5Tget_size(type.get());
  std::string s(size, '\0');
  h5::Type mem(check(H5Tcopy(H5T_C_S1), file, name, "copying the string type"));
  check(H5Tset_size(mem.get(), size), file, name, "sizing the string type");
  check(H5Aread(attr.get(), mem.get(), s.data()), file, name, "reading the attribute");
  s.resize(std::strlen(s.c_str()));
  return s;
}

}  // namespace

std::uint64_t checkpoint_meta_checksum(const CheckpointMeta& m, const CheckpointIndex* index) {
  std::uint64_t h = kFnvOffset;
  for (std::int64_t v : {m.format_version, m.step, m.optimizer_steps, m.ranks})
    h = fnv1a64(&v, sizeof v, h);
  h = fnv1a64(m.precision, h);
  h = fnv1a64(m.config_ini, h);
  if (index) {
    for (const std::string& f : index->shard_files) h = fnv1a64(f + '\n', h);
    for (std::size_t i = 0; i < index->names.size(); ++i) {
      h = fnv1a64(index->names[i] + '\n', h);
      const std::int32_t s = index->shard_of[i];
      h = fnv1a64(&s, sizeof s, h);
    }
  }
  return h;
}

namespace {

void put_meta(hid_t root, const std::string& file, const CheckpointMeta& meta,
              const CheckpointIndex* index) {
  put_int(root, file, "format_version", meta.format_version);
  put_int(root, file, "step", meta.step);
  put_int(root, file, "optimizer_steps", meta.optimizer_steps);
  put_int(root, file, "ranks", meta.ranks);
  put_string(root, file, "precision", meta.precision);
  put_string(root, file, "config", meta.config_ini);
  put_u64(root, file, "meta_checksum", checkpoint_meta_checksum(meta, index));
}

// A 1-D dataset of variable-length strings (h5py reads them as str).
void put_strings(hid_t loc, const std::string& file, const char* name,
                 const std::vector<std::string>& values) {
  h5::Type type(check(H5Tcopy(H5T_C_S1), file, name, "copying the string type"));
  check(H5Tset_size(type.get(), H5T_VARIABLE), file, name, "sizing the string type");
  check(H5Tset_cset(type.get(), H5T_CSET_UTF8), file, name, "setting the character set");
  const hsize_t n = values.size();
  h5::Space space(check(H5Screate_simple(1, &n, nullptr), file, name, "creating the dataspace"));
  h5::Dataset ds(
      check(H5Dcreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
            file, name, "creating the dataset"));
  std::vector<const char*> ptr;
  ptr.reserve(values.size());
  for (const std::string& v : values) ptr.push_back(v.c_str());
  if (n > 0)
    check(H5Dwrite(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptr.data()), file, name,
          "writing the dataset");
}

std::vector<std::string> get_strings(hid_t loc, const std::string& file, const char* name) {
  h5::Dataset ds(check(H5Dopen2(loc, name, H5P_DEFAULT), file, name, "opening the dataset"));
  h5::Space space(check(H5Dget_space(ds.get()), file, name, "reading the dataspace"));
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  h5::Type type(check(H5Tcopy(H5T_C_S1), file, name, "copying the string type"));
  check(H5Tset_size(type.get(), H5T_VARIABLE), file, name, "sizing the string type");
  check(H5Tset_cset(type.get(), H5T_CSET_UTF8), file, name, "setting the character set");
  std::vector<char*> ptr(static_cast<std::size_t>(std::max<hssize_t>(n, 0)), nullptr);
  std::vector<std::string> out;
  if (ptr.empty()) return out;
  check(H5Dread(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptr.data()), file, name,
        "reading the dataset");
  for (char* p : ptr) out.emplace_back(p ? p : "");
  (void)H5Dvlen_reclaim(type.get(), space.get(), H5P_DEFAULT, ptr.data());
  return out;
}

// fsync(2) of a file or directory; a failure names the path (a checkpoint that may not be on
// disk must not be reported as written).
void sync_path(const std::string& p, bool directory) {
  const int fd = ::open(p.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0)
    throw std::runtime_error("cannot open '" + p +
                             "' to flush it to disk: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // EINVAL: a file system without fsync for directories (some network file systems).
  if (rc != 0 && !(directory && err == EINVAL))
    throw std::runtime_error("cannot flush '" + p + "' to disk: " + std::strerror(err));
}

// The commit of a checkpoint file: its data reach the disk before the rename, and the rename
// itself (the directory entry) after it, so a power loss leaves the old or the new file, never
// a renamed file whose blocks were not yet written.
void rename_into_place(const std::string& tmp, const std::string& path) {
  sync_path(tmp, false);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec)
    throw std::runtime_error("cannot rename checkpoint '" + tmp + "' to '" + path +
                             "': " + ec.message());
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  sync_path(dir.empty() ? std::string(".") : dir.string(), true);
}

}  // namespace

struct CheckpointWriter::Impl {
  std::string path, tmp;
  h5::File file;
  h5::Plist lcpl;
  bool committed = false;
};

CheckpointWriter::CheckpointWriter(std::string path) : impl_(std::make_unique<Impl>()) {
  h5::ErrorSilencer quiet;
  Impl& m = *impl_;
  m.path = std::move(path);
  m.tmp = m.path + ".tmp";
  m.lcpl = h5::Plist(check(H5Pcreate(H5P_LINK_CREATE), m.tmp, "", "creating link properties"));
  check(H5Pset_create_intermediate_group(m.lcpl.get(), 1), m.tmp, "",
        "setting intermediate groups");
  m.file = h5::File(check(H5Fcreate(m.tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), m.tmp,
                          "", "creating the checkpoint file"));
}

CheckpointWriter::~CheckpointWriter() {
  if (impl_ && !impl_->committed) {
    impl_->file.reset();
    std::remove(impl_->tmp.c_str());
  }
}

void CheckpointWriter::add(const std::string& name, std::span<const double> values) {
  h5::ErrorSilencer quiet;
  Impl& m = *impl_;
  const hsize_t n = values.size();
  h5::Space space(check(H5Screate_simple(1, &n, nullptr), m.tmp, name, "creating the dataspace"));
  h5::Dataset ds(check(H5Dcreate2(m.file.get(), name.c_str(), H5T_IEEE_F64LE, space.get(),
                                  m.lcpl.get(), H5P_DEFAULT, H5P_DEFAULT),
                       m.tmp, name, "creating the dataset"));
  if (n > 0)
    check(H5Dwrite(ds.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()),
          m.tmp, name, "writing the dataset");
  put_u64(ds.get(), m.tmp, "checksum", fnv1a64(values.data(), values.size() * sizeof(double)));
}

void CheckpointWriter::commit(const CheckpointMeta& meta) {
  h5::ErrorSilencer quiet;
  Impl& m = *impl_;
  put_meta(m.file.get(), m.tmp, meta, nullptr);
  check(H5Fflush(m.file.get(), H5F_SCOPE_GLOBAL), m.tmp, "", "flushing");
  check(m.file.close(), m.tmp, "", "closing");
  rename_into_place(m.tmp, m.path);
  m.committed = true;
}

void write_checkpoint(const std::string& path, const CheckpointMeta& meta,
                      const std::vector<CheckpointEntry>& entries) {
  CheckpointWriter w(path);
  for (const CheckpointEntry& e : entries) w.add(e.name, e.data);
  w.commit(meta);
}

void write_checkpoint_manifest(const std::string& path, const CheckpointMeta& meta,
                               const CheckpointIndex& index) {
  if (index.names.size() != index.shard_of.size())
    throw std::logic_error("checkpoint manifest: names and shard_of differ in length");
  h5::ErrorSilencer quiet;
  const std::string tmp = path + ".tmp";
  try {
    {
      h5::File file(check(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), tmp, "",
                          "creating the checkpoint manifest"));
      const hid_t root = file.get();
      put_meta(root, tmp, meta, &index);
      h5::Group shards(check(H5Gcreate2(root, "shards", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), tmp,
                             "/shards", "creating the group"));
      put_strings(shards.get(), tmp, "file", index.shard_files);
      h5::Group idx(check(H5Gcreate2(root, "index", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), tmp,
                          "/index", "creating the group"));
      put_strings(idx.get(), tmp, "name", index.names);
      const hsize_t n = index.shard_of.size();
      h5::Space space(
          check(H5Screate_simple(1, &n, nullptr), tmp, "/index/shard", "creating the dataspace"));
      h5::Dataset ds(check(H5Dcreate2(idx.get(), "shard", H5T_STD_I32LE, space.get(), H5P_DEFAULT,
                                      H5P_DEFAULT, H5P_DEFAULT),
                           tmp, "/index/shard", "creating the dataset"));
      if (n > 0)
        check(H5Dwrite(ds.get(), H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                       index.shard_of.data()),
              tmp, "/index/shard", "writing the dataset");
      check(H5Fflush(root, H5F_SCOPE_GLOBAL), tmp, "", "flushing");
      check(file.close(), tmp, "", "closing");
    }
    rename_into_place(tmp, path);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

struct CheckpointReader::Impl {
  std::string path;
  h5::File file;
  CheckpointMeta meta;
  // A manifest: its shards (opened on first use) and the shard of each tensor.
  bool manifest = false;
  std::vector<std::string> shard_paths;
  std::map<std::string, std::int32_t> shard_of;
  mutable std::vector<std::unique_ptr<CheckpointReader>> shards;

  const CheckpointReader& shard(std::int32_t i) const {
    auto& r = shards[static_cast<std::size_t>(i)];
    if (!r) {
      try {
        r = std::make_unique<CheckpointReader>(shard_paths[static_cast<std::size_t>(i)]);
      } catch (const std::exception& e) {
        throw std::runtime_error("checkpoint '" + path + "': shard " + std::to_string(i) + ": " +
                                 e.what());
      }
      if (r->meta().step != meta.step || r->impl_->manifest)
        throw std::runtime_error("checkpoint '" + path + "' is inconsistent: shard '" +
                                 shard_paths[static_cast<std::size_t>(i)] + "' is of step " +
                                 std::to_string(r->meta().step) + ", the manifest of step " +
                                 std::to_string(meta.step));
    }
    return *r;
  }
};

CheckpointReader::CheckpointReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  h5::ErrorSilencer quiet;
  impl_->path = path;
  impl_->file = h5::File(check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), path, "",
                               "opening the checkpoint"));
  const hid_t root = impl_->file.get();
  CheckpointMeta& m = impl_->meta;
  m.format_version = get_int(root, path, "format_version");
  if (m.format_version != kCheckpointFormat && m.format_version != 2)
    throw std::runtime_error(
        "checkpoint '" + path + "' has format_version " + std::to_string(m.format_version) +
        "; this build reads formats 2 and " + std::to_string(kCheckpointFormat));
  m.step = get_int(root, path, "step");
  m.optimizer_steps = get_int(root, path, "optimizer_steps");
  m.ranks = get_int(root, path, "ranks");
  m.precision = get_string(root, path, "precision");
  m.config_ini = get_string(root, path, "config");
  CheckpointIndex index;
  impl_->manifest = H5Lexists(root, "index", H5P_DEFAULT) > 0;
  if (impl_->manifest) {
    index.shard_files = get_strings(root, path, "/shards/file");
    index.names = get_strings(root, path, "/index/name");
    h5::Dataset ds(check(H5Dopen2(root, "/index/shard", H5P_DEFAULT), path, "/index/shard",
                         "opening the dataset"));
    index.shard_of.resize(index.names.size());
    if (!index.shard_of.empty())
      check(
          H5Dread(ds.get(), H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, index.shard_of.data()),
          path, "/index/shard", "reading the dataset");
  }
  if (get_u64(root, path, "meta_checksum") !=
      checkpoint_meta_checksum(m, impl_->manifest ? &index : nullptr))
    throw std::runtime_error("checkpoint '" + path +
                             "' is corrupt: its header (step, config, ...) does not match its "
                             "checksum");
  if (impl_->manifest) {
    const std::filesystem::path dir = std::filesystem::path(path).parent_path();
    for (const std::string& f : index.shard_files) impl_->shard_paths.push_back((dir / f).string());
    impl_->shards.resize(index.shard_files.size());
    for (std::size_t i = 0; i < index.names.size(); ++i) {
      const std::int32_t sh = index.shard_of[i];
      if (sh < 0 || static_cast<std::size_t>(sh) >= index.shard_files.size())
        throw std::runtime_error("checkpoint '" + path + "' is corrupt: tensor '" + index.names[i] +
                                 "' in shard " + std::to_string(sh) + " of " +
                                 std::to_string(index.shard_files.size()));
      impl_->shard_of[index.names[i]] = sh;
    }
  }
}

CheckpointReader::~CheckpointReader() = default;

const CheckpointMeta& CheckpointReader::meta() const { return impl_->meta; }

std::vector<std::string> CheckpointReader::shard_paths() const { return impl_->shard_paths; }

bool CheckpointReader::has(const std::string& name) const {
  if (impl_->manifest) return impl_->shard_of.count(name) > 0;
  h5::ErrorSilencer quiet;
  // Walk the path one link at a time: H5Lexists fails on a missing intermediate group.
  std::size_t pos = 0;
  while (true) {
    pos = name.find('/', pos);
    const std::string prefix = name.substr(0, pos);
    if (H5Lexists(impl_->file.get(), prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (pos == std::string::npos) return true;
    ++pos;
  }
}

void CheckpointReader::verify() const {
  if (impl_->manifest) {
    for (std::size_t i = 0; i < impl_->shards.size(); ++i)
      impl_->shard(static_cast<std::int32_t>(i)).verify();
    for (const auto& [name, sh] : impl_->shard_of)
      if (!impl_->shard(sh).has(name))
        throw std::runtime_error("checkpoint '" + impl_->path + "' is inconsistent: shard '" +
                                 impl_->shard_paths[static_cast<std::size_t>(sh)] +
                                 "' has no tensor '" + name + "'");
    return;
  }
  h5::ErrorSilencer quiet;
  std::vector<std::string> names;
  auto visit = [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
    static_cast<std::vector<std::string>*>(data)->push_back(name);
    return 0;
  };
  check(H5Lvisit(impl_->file.get(), H5_INDEX_NAME, H5_ITER_NATIVE, +visit, &names), impl_->path, "",
        "listing the tensors");
  std::vector<double> buf;
  for (const std::string& name : names) {
    h5::Object obj(check(H5Oopen(impl_->file.get(), name.c_str(), H5P_DEFAULT), impl_->path, name,
                         "opening the object"));
    if (H5Iget_type(obj.get()) != H5I_DATASET) continue;
    h5::Dataset ds(check(H5Dopen2(impl_->file.get(), name.c_str(), H5P_DEFAULT), impl_->path, name,
                         "opening the dataset"));
    h5::Space space(check(H5Dget_space(ds.get()), impl_->path, name, "reading the dataspace"));
    buf.resize(
        static_cast<std::size_t>(std::max<hssize_t>(H5Sget_simple_extent_npoints(space.get()), 0)));
    read(name, buf);
  }
}

void CheckpointReader::read(const std::string& name, std::span<double> out) const {
  h5::ErrorSilencer quiet;
  const std::string& path = impl_->path;
  if (!has(name))
    throw std::runtime_error("checkpoint '" + path + "' has no tensor '" + name + "'");
  if (impl_->manifest) {
    impl_->shard(impl_->shard_of.at(name)).read(name, out);
    return;
  }
  h5::Dataset ds(check(H5Dopen2(impl_->file.get(), name.c_str(), H5P_DEFAULT), path, name,
                       "opening the dataset"));
  h5::Space space(check(H5Dget_space(ds.get()), path, name, "reading the dataspace"));
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n < 0 || static_cast<std::size_t>(n) != out.size())
    throw std::runtime_error("checkpoint '" + path + "' tensor '" + name + "' has " +
                             std::to_string(n) + " values; expected " + std::to_string(out.size()) +
                             " (a different model shape?)");
  if (n > 0)
    check(H5Dread(ds.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), path,
          name, "reading the dataset");
  if (H5Aexists(ds.get(), "checksum") <= 0 ||
      get_u64(ds.get(), path, "checksum") != fnv1a64(out.data(), out.size() * sizeof(double)))
    throw std::runtime_error("checkpoint '" + path + "' is corrupt: tensor '" + name +
                             "' does not match its checksum");
}

}  // namespace moesim::io
