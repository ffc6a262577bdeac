// The `moesim route` input trace (read_trace): /logits [T,E] and optional /token_id [T].
#include "moesim/io/trace_file.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <filesystem>
#include <limits>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "h5_util.hpp"

namespace moesim::io {

using namespace h5util;

// ======================= read_trace =======================

namespace {

// "float32", "int64", "uint8", "string", ... for error messages.
std::string type_text(hid_t type) {
  const H5T_class_t cls = H5Tget_class(type);
  const std::string bits = std::to_string(H5Tget_size(type) * 8);
  switch (cls) {
    case H5T_INTEGER:
      return (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + bits;
    case H5T_FLOAT:
      return "float" + bits;
    case H5T_STRING:
      return "string";
    case H5T_COMPOUND:
      return "compound";
    case H5T_ENUM:
      return "enum";
    case H5T_ARRAY:
      return "array";
    case H5T_VLEN:
      return "variable-length";
    case H5T_BITFIELD:
      return "bitfield";
    case H5T_OPAQUE:
      return "opaque";
    case H5T_REFERENCE:
      return "reference";
    default:
      return "unknown type";
  }
}

[[noreturn]] void trace_error(std::string_view path, std::string_view what) {
  throw std::runtime_error("trace file '" + std::string(path) + "': " + std::string(what));
}

// Opens dataset `name` (e.g. "/logits"); distinguishes "absent" from "present but no dataset".
h5::Dataset open_trace_dataset(hid_t file, std::string_view path, const char* name) {
  const htri_t exists =
      check(H5Lexists(file, name, H5P_DEFAULT), path, name, "looking up the dataset");
  if (exists == 0) {
    trace_error(path, "dataset '" + std::string(name) + "' not found");
  }
  h5::Object obj(check(H5Oopen(file, name, H5P_DEFAULT), path, name, "opening the object"));
  if (H5Iget_type(obj.get()) != H5I_DATASET) {
    trace_error(path, "'" + std::string(name) + "' is not a dataset");
  }
  return h5::Dataset(check(H5Dopen2(file, name, H5P_DEFAULT), path, name, "opening the dataset"));
}

// Current dimensions of a dataset (empty for a scalar or null dataspace).
std::vector<hsize_t> dataset_dims(hid_t ds, std::string_view path, const char* name) {
  h5::Space space(check(H5Dget_space(ds), path, name, "getting the dataspace"));
  const int ndims = check(H5Sget_simple_extent_ndims(space.get()), path, name, "reading the rank");
  std::vector<hsize_t> dims(static_cast<std::size_t>(ndims));
  if (ndims > 0) {
    check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), path, name,
          "reading the shape");
  }
  return dims;
}

}  // namespace

Trace read_trace(const std::string& path) {
  h5::ErrorSilencer quiet;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    throw std::runtime_error("cannot open trace file '" + path + "': no such file");
  }
  const hid_t fid = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (fid < 0) {
    const std::string reason = h5::last_error();
    throw std::runtime_error("cannot open trace file '" + path + "': not a readable HDF5 file" +
                             (reason.empty() ? std::string() : " (" + reason + ")"));
  }
  h5::File file(fid);

  Trace trace;
  {
    h5::Dataset logits = open_trace_dataset(fid, path, "/logits");
    h5::Type type(check(H5Dget_type(logits.get()), path, "/logits", "getting the type"));
    const H5T_class_t cls =
        check(H5Tget_class(type.get()), path, "/logits", "getting the type class");
    const std::size_t size = H5Tget_size(type.get());
    if (cls != H5T_FLOAT || (size != 4 && size != 8)) {
      trace_error(path, "dataset '/logits' has type " + type_text(type.get()) +
                            "; allowed: float32 or float64");
    }
    const std::vector<hsize_t> dims = dataset_dims(logits.get(), path, "/logits");
    if (dims.size() != 2) {
      trace_error(path, "dataset '/logits' has shape " + shape_text(dims) +
                            "; expected 2-D [T, E] (tokens x experts)");
    }
    if (dims[0] == 0 || dims[1] == 0) {
      trace_error(path, "dataset '/logits' has shape " + shape_text(dims) +
                            "; needs at least one token and one expert");
    }
    trace.tokens = static_cast<std::int64_t>(dims[0]);
    trace.experts = static_cast<std::int64_t>(dims[1]);
    trace.logits.resize(dims[0] * dims[1]);
    // HDF5 converts float32 to double on the fly (exactly).
    check(H5Dread(logits.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                  trace.logits.data()),
          path, "/logits", "reading the dataset");
    for (std::size_t i = 0; i < trace.logits.size(); ++i) {
      const double v = trace.logits[i];
      if (!std::isfinite(v)) {
        trace_error(path, "dataset '/logits' has a non-finite value (" +
                              std::string(std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf")) +
                              ") at token " + std::to_string(i / dims[1]) + ", expert " +
                              std::to_string(i % dims[1]) + "; logits must be finite");
      }
    }
  }

  const htri_t has_ids =
      check(H5Lexists(fid, "/token_id", H5P_DEFAULT), path, "/token_id", "looking up the dataset");
  if (has_ids > 0) {
    h5::Dataset ids = open_trace_dataset(fid, path, "/token_id");
    h5::Type type(check(H5Dget_type(ids.get()), path, "/token_id", "getting the type"));
    if (H5Tget_class(type.get()) != H5T_INTEGER) {
      trace_error(path, "dataset '/token_id' has type " + type_text(type.get()) +
                            "; allowed: an integer type (int64)");
    }
    const std::vector<hsize_t> dims = dataset_dims(ids.get(), path, "/token_id");
    const auto T = static_cast<hsize_t>(trace.tokens);
    if (dims.size() != 1 || dims[0] != T) {
      trace_error(path, "dataset '/token_id' has shape " + shape_text(dims) + "; expected [" +
                            std::to_string(T) + "] (one id per row of /logits)");
    }
    trace.token_id.resize(T);
    // HDF5 would silently clamp a uint64 id above INT64_MAX; abort the conversion instead.
    h5::Plist dxpl(check(H5Pcreate(H5P_DATASET_XFER), path, "/token_id",
                         "creating the transfer property list"));
    auto no_overflow = [](H5T_conv_except_t except, hid_t, hid_t, void*, void*,
                          void*) -> H5T_conv_ret_t {
      return except == H5T_CONV_EXCEPT_RANGE_HI || except == H5T_CONV_EXCEPT_RANGE_LOW
                 ? H5T_CONV_ABORT
                 : H5T_CONV_UNHANDLED;
    };
    check(H5Pset_type_conv_cb(dxpl.get(), no_overflow, nullptr), path, "/token_id",
          "setting the conversion check");
    if (H5Dread(ids.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, dxpl.get(), trace.token_id.data()) <
        0) {
      trace_error(path,
                  "dataset '/token_id' (type " + type_text(type.get()) +
                      ") could not be read as int64: a value is out of range or the read failed");
    }
  }
  return trace;
}

}  // namespace moesim::io
