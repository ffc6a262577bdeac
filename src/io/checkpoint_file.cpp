// HDF5 checkpoint files (checkpoint_file.hpp). Layout: root attributes format_version,
// step, optimizer_steps, ranks, precision, config and meta_checksum (FNV-1a 64 of those);
// one 1-D float64 dataset per tensor, its name used as the HDF5 path (groups are created for
// the "kind/" prefixes), each with a `checksum` attribute (FNV-1a 64 of its values' bytes).
// Reading verifies both, so flipped bytes are found before training resumes from them.
#include "moesim/io/checkpoint_file.hpp"

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

std::uint64_t checkpoint_meta_checksum(const CheckpointMeta& m) {
  std::uint64_t h = kFnvOffset;
  for (std::int64_t v : {m.format_version, m.step, m.optimizer_steps, m.ranks})
    h = fnv1a64(&v, sizeof v, h);
  h = fnv1a64(m.precision, h);
  return fnv1a64(m.config_ini, h);
}

void write_checkpoint(const std::string& path, const CheckpointMeta& meta,
                      const std::vector<CheckpointEntry>& entries) {
  h5::ErrorSilencer quiet;
  const std::string tmp = path + ".tmp";
  try {
    {
      h5::Plist lcpl(check(H5Pcreate(H5P_LINK_CREATE), tmp, "", "creating link properties"));
      check(H5Pset_create_intermediate_group(lcpl.get(), 1), tmp, "",
            "setting intermediate groups");
      h5::File file(check(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), tmp, "",
                          "creating the checkpoint file"));
      const hid_t root = file.get();
      put_int(root, tmp, "format_version", meta.format_version);
      put_int(root, tmp, "step", meta.step);
      put_int(root, tmp, "optimizer_steps", meta.optimizer_steps);
      put_int(root, tmp, "ranks", meta.ranks);
      put_string(root, tmp, "precision", meta.precision);
      put_string(root, tmp, "config", meta.config_ini);
      put_u64(root, tmp, "meta_checksum", checkpoint_meta_checksum(meta));
      for (const CheckpointEntry& e : entries) {
        const hsize_t n = e.data.size();
        h5::Space space(
            check(H5Screate_simple(1, &n, nullptr), tmp, e.name, "creating the dataspace"));
        h5::Dataset ds(check(H5Dcreate2(root, e.name.c_str(), H5T_IEEE_F64LE, space.get(),
                                        lcpl.get(), H5P_DEFAULT, H5P_DEFAULT),
                             tmp, e.name, "creating the dataset"));
        if (n > 0)
          check(H5Dwrite(ds.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, e.data.data()),
                tmp, e.name, "writing the dataset");
        put_u64(ds.get(), tmp, "checksum", fnv1a64(e.data.data(), e.data.size() * sizeof(double)));
      }
      check(H5Fflush(file.get(), H5F_SCOPE_GLOBAL), tmp, "", "flushing");
      check(file.close(), tmp, "", "closing");
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec)
      throw std::runtime_error("cannot rename checkpoint '" + tmp + "' to '" + path +
                               "': " + ec.message());
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

struct CheckpointReader::Impl {
  std::string path;
  h5::File file;
  CheckpointMeta meta;
};

CheckpointReader::CheckpointReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  h5::ErrorSilencer quiet;
  impl_->path = path;
  impl_->file = h5::File(check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), path, "",
                               "opening the checkpoint"));
  const hid_t root = impl_->file.get();
  CheckpointMeta& m = impl_->meta;
  m.format_version = get_int(root, path, "format_version");
  if (m.format_version != kCheckpointFormat)
    throw std::runtime_error("checkpoint '" + path + "' has format_version " +
                             std::to_string(m.format_version) + "; this build reads format " +
                             std::to_string(kCheckpointFormat));
  m.step = get_int(root, path, "step");
  m.optimizer_steps = get_int(root, path, "optimizer_steps");
  m.ranks = get_int(root, path, "ranks");
  m.precision = get_string(root, path, "precision");
  m.config_ini = get_string(root, path, "config");
  if (get_u64(root, path, "meta_checksum") != checkpoint_meta_checksum(m))
    throw std::runtime_error("checkpoint '" + path +
                             "' is corrupt: its header (step, config, ...) does not match its "
                             "checksum");
}

CheckpointReader::~CheckpointReader() = default;

const CheckpointMeta& CheckpointReader::meta() const { return impl_->meta; }

bool CheckpointReader::has(const std::string& name) const {
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
