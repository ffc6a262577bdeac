// HDF5 writing helpers shared by the files of src/io (result file, route output, checkpoints,
// projections): fixed little-endian element types, string/scalar attributes, described datasets,
// extendible row-append columns. Private to src/io (includes <hdf5.h> through h5.hpp).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "h5.hpp"

namespace moesim::io::h5util {

using h5::check;

inline constexpr const char* kSchemaVersion = "1";
// 1-D /steps and /eval datasets grow one row at a time; 256 rows (2 KiB) per chunk keeps the
// number of chunks small without making a short run's file large.
inline constexpr hsize_t kRowChunk = 256;
// expert_load/expert_kept chunks hold up to 16 rows but stay below this size, so one chunk
// always fits HDF5's default 1 MiB per-dataset chunk cache and a one-row append never
// re-reads a chunk from disk.
inline constexpr hsize_t kMaxChunkBytes = 256 * 1024;

// File and memory HDF5 types of each C++ element type we store. File types are fixed
// little-endian so files are identical on every machine.
template <class T>
struct Elem;
template <>
struct Elem<std::int64_t> {
  static hid_t file() { return H5T_STD_I64LE; }
  static hid_t mem() { return H5T_NATIVE_INT64; }
};
template <>
struct Elem<std::int32_t> {
  static hid_t file() { return H5T_STD_I32LE; }
  static hid_t mem() { return H5T_NATIVE_INT32; }
};
template <>
struct Elem<std::uint64_t> {
  static hid_t file() { return H5T_STD_U64LE; }
  static hid_t mem() { return H5T_NATIVE_UINT64; }
};
template <>
struct Elem<double> {
  static hid_t file() { return H5T_IEEE_F64LE; }
  static hid_t mem() { return H5T_NATIVE_DOUBLE; }
};

inline std::string child_path(std::string_view parent, std::string_view name) {
  std::string out(parent);
  if (out.empty() || out.back() != '/') {
    out += '/';
  }
  out += name;
  return out;
}

inline std::string attr_label(std::string_view owner, std::string_view name) {
  std::string out(owner);
  out += " (attribute ";
  out += name;
  out += ")";
  return out;
}

inline std::string shape_text(std::span<const hsize_t> dims) {
  std::string out = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) {
    out += (i == 0 ? "" : ", ") + std::to_string(dims[i]);
  }
  return out + "]";
}

// Creation properties shared by every file we write. Library-version bounds v1.8..latest
// switch on version-2 object headers, which move an attribute larger than the 64 KiB
// object-header message limit (a long `config` INI text) into dense attribute storage
// instead of failing; files stay readable by HDF5 >= 1.8.
inline h5::Plist make_create_fapl(std::string_view file) {
  h5::Plist fapl(
      check(H5Pcreate(H5P_FILE_ACCESS), file, "", "creating the file access property list"));
  check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST), file, "",
        "setting the library version bounds");
  return fapl;
}

// A fixed-length, NUL-terminated UTF-8 scalar string attribute (h5py reads it as bytes).
inline void write_string_attr(hid_t loc, std::string_view file, std::string_view owner,
                              const char* name, const std::string& value) {
  const std::string label = attr_label(owner, name);
  h5::Type type(check(H5Tcopy(H5T_C_S1), file, label, "copying the string type"));
  check(H5Tset_size(type.get(), value.size() + 1), file, label, "sizing the string type");
  check(H5Tset_strpad(type.get(), H5T_STR_NULLTERM), file, label, "setting the string padding");
  check(H5Tset_cset(type.get(), H5T_CSET_UTF8), file, label, "setting the string character set");
  h5::Space space(check(H5Screate(H5S_SCALAR), file, label, "creating a scalar dataspace"));
  h5::Attr attr(check(H5Acreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                      file, label, "creating the attribute"));
  check(H5Awrite(attr.get(), type.get(), value.c_str()), file, label, "writing the attribute");
}

template <class T>
void write_scalar_attr(hid_t loc, std::string_view file, std::string_view owner, const char* name,
                       T value) {
  const std::string label = attr_label(owner, name);
  h5::Space space(check(H5Screate(H5S_SCALAR), file, label, "creating a scalar dataspace"));
  h5::Attr attr(check(H5Acreate2(loc, name, Elem<T>::file(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                      file, label, "creating the attribute"));
  check(H5Awrite(attr.get(), Elem<T>::mem(), &value), file, label, "writing the attribute");
}

// Rewrites an existing scalar attribute in place (the root `complete` flag).
template <class T>
void overwrite_scalar_attr(hid_t loc, std::string_view file, std::string_view owner,
                           const char* name, T value) {
  const std::string label = attr_label(owner, name);
  h5::Attr attr(check(H5Aopen(loc, name, H5P_DEFAULT), file, label, "opening the attribute"));
  check(H5Awrite(attr.get(), Elem<T>::mem(), &value), file, label, "writing the attribute");
}

inline h5::Group create_group(hid_t loc, std::string_view file, const std::string& full,
                              const char* name) {
  return h5::Group(check(H5Gcreate2(loc, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), file, full,
                         "creating the group"));
}

// An open dataset that knows its own full name, for error messages.
struct Column {
  h5::Dataset ds;
  std::string name;
};

// Every dataset carries a short `description` (and `units` where it has one), so a result
// file explains itself without outputs.md at hand.
inline void describe(hid_t ds, std::string_view file, std::string_view full,
                     const char* description, const char* units = nullptr) {
  write_string_attr(ds, file, full, "description", description);
  if (units != nullptr) {
    write_string_attr(ds, file, full, "units", units);
  }
}

// An extendible chunked dataset of shape [0, tail...], maxdims [unlimited, tail...].
inline Column create_extendible(hid_t loc, std::string_view file, std::string_view group,
                                const char* name, hid_t file_type, std::span<const hsize_t> tail,
                                hsize_t chunk_rows, const char* description,
                                const char* units = nullptr) {
  Column col{h5::Dataset{}, child_path(group, name)};
  std::array<hsize_t, 4> dims{}, maxdims{}, chunk{};
  const int rank = static_cast<int>(tail.size()) + 1;
  dims[0] = 0;
  maxdims[0] = H5S_UNLIMITED;
  chunk[0] = chunk_rows;
  for (std::size_t i = 0; i < tail.size(); ++i) {
    dims[i + 1] = maxdims[i + 1] = chunk[i + 1] = tail[i];
  }
  h5::Space space(check(H5Screate_simple(rank, dims.data(), maxdims.data()), file, col.name,
                        "creating the dataspace"));
  h5::Plist dcpl(
      check(H5Pcreate(H5P_DATASET_CREATE), file, col.name, "creating the creation property list"));
  check(H5Pset_chunk(dcpl.get(), rank, chunk.data()), file, col.name, "setting the chunk shape");
  col.ds = h5::Dataset(
      check(H5Dcreate2(loc, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
            file, col.name, "creating the dataset"));
  describe(col.ds.get(), file, col.name, description, units);
  return col;
}

// Grows `col` to row + 1 rows and writes row `row` (tail-shaped, from `data`).
inline void append_row(Column& col, std::string_view file, hsize_t row,
                       std::span<const hsize_t> tail, hid_t mem_type, const void* data) {
  std::array<hsize_t, 4> dims{}, start{}, count{};
  const int rank = static_cast<int>(tail.size()) + 1;
  dims[0] = row + 1;
  start[0] = row;
  count[0] = 1;
  for (std::size_t i = 0; i < tail.size(); ++i) {
    dims[i + 1] = count[i + 1] = tail[i];
  }
  check(H5Dset_extent(col.ds.get(), dims.data()), file, col.name, "extending the dataset");
  h5::Space fspace(check(H5Dget_space(col.ds.get()), file, col.name, "getting the dataspace"));
  check(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(),
                            nullptr),
        file, col.name, "selecting the new row");
  h5::Space mspace(check(H5Screate_simple(rank, count.data(), nullptr), file, col.name,
                         "creating the row dataspace"));
  check(H5Dwrite(col.ds.get(), mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, data), file,
        col.name, "writing a row");
}

// A fixed-size 1-D or 2-D dataset written in one go. Zero-length is allowed (h5py reads an
// empty array of the right dtype); nothing is written then.
template <class T>
void write_array(hid_t loc, std::string_view file, std::string_view group, const char* name,
                 std::span<const hsize_t> dims, const std::vector<T>& values,
                 const char* description) {
  const std::string full = child_path(group, name);
  h5::Space space(check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), file,
                        full, "creating the dataspace"));
  h5::Dataset ds(check(
      H5Dcreate2(loc, name, Elem<T>::file(), space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
      file, full, "creating the dataset"));
  if (!values.empty()) {
    check(H5Dwrite(ds.get(), Elem<T>::mem(), H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), file,
          full, "writing the dataset");
  }
  describe(ds.get(), file, full, description);
}

template <class T>
void write_vector(hid_t loc, std::string_view file, std::string_view group, const char* name,
                  const std::vector<T>& values, const char* description) {
  const std::array<hsize_t, 1> dims{values.size()};
  write_array(loc, file, group, name, std::span<const hsize_t>(dims), values, description);
}

}  // namespace moesim::io::h5util
