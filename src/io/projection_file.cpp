// moesim simulate's HDF5 output and its reader of run result files (projection_file.hpp).
#include "moesim/io/projection_file.hpp"

#include <cstring>
#include <stdexcept>

#include "h5.hpp"

namespace moesim::io {
namespace {

using h5::check;

void put_string_attr(hid_t loc, const std::string& file, const char* name,
                     const std::string& value) {
  h5::Type type(check(H5Tcopy(H5T_C_S1), file, name, "copying the string type"));
  check(H5Tset_size(type.get(), value.size() + 1), file, name, "sizing the string type");
  check(H5Tset_strpad(type.get(), H5T_STR_NULLTERM), file, name, "setting the string padding");
  check(H5Tset_cset(type.get(), H5T_CSET_UTF8), file, name, "setting the character set");
  h5::Space space(check(H5Screate(H5S_SCALAR), file, name, "creating a dataspace"));
  h5::Attr attr(check(H5Acreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                      file, name, "creating the attribute"));
  check(H5Awrite(attr.get(), type.get(), value.c_str()), file, name, "writing the attribute");
}

void put_int_attr(hid_t loc, const std::string& file, const char* name, std::int64_t value) {
  h5::Space space(check(H5Screate(H5S_SCALAR), file, name, "creating a dataspace"));
  h5::Attr attr(check(H5Acreate2(loc, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                      file, name, "creating the attribute"));
  check(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value), file, name, "writing the attribute");
}

std::int64_t get_int_attr(hid_t loc, const std::string& file, const char* name) {
  h5::Attr attr(check(H5Aopen(loc, name, H5P_DEFAULT), file, name, "opening the attribute"));
  std::int64_t v = 0;
  check(H5Aread(attr.get(), H5T_NATIVE_INT64, &v), file, name, "reading the attribute");
  return v;
}

std::string get_string_attr(hid_t loc, const std::string& file, const char* name) {
  h5::Attr attr(check(H5Aopen(loc, name, H5P_DEFAULT), file, name, "opening the attribute"));
  h5::Type type(check(H5Aget_type(attr.get()), file, name, "reading the attribute type"));
  const std::size_t size = H5Tget_size(type.get());
  if (H5Tis_variable_str(type.get()) > 0)
    throw std::runtime_error("HDF5 file '" + file + "', attribute '" + name +
                             "': a variable-length string (expected fixed-length)");
  std::string s(size, '\0');
  // Read with the stored type itself (ASCII or UTF-8), so no character-set conversion occurs.
  check(H5Aread(attr.get(), type.get(), s.data()), file, name, "reading the attribute");
  s.resize(std::strlen(s.c_str()));
  return s;
}

void write_column(hid_t group, const std::string& file, const std::string& gname,
                  const NamedColumn& c) {
  const std::string full = gname + "/" + c.name;
  hsize_t n = !c.f64.empty() ? c.f64.size() : !c.i64.empty() ? c.i64.size() : c.text.size();
  h5::Space space(check(H5Screate_simple(1, &n, nullptr), file, full, "creating a dataspace"));
  h5::Dataset ds;
  if (!c.text.empty()) {
    std::size_t width = 1;
    for (const auto& t : c.text) width = std::max(width, t.size() + 1);
    h5::Type type(check(H5Tcopy(H5T_C_S1), file, full, "copying the string type"));
    check(H5Tset_size(type.get(), width), file, full, "sizing the string type");
    check(H5Tset_strpad(type.get(), H5T_STR_NULLTERM), file, full, "setting the padding");
    std::vector<char> buf(width * c.text.size(), '\0');
    for (std::size_t i = 0; i < c.text.size(); ++i)
      std::memcpy(buf.data() + i * width, c.text[i].data(), c.text[i].size());
    ds = h5::Dataset(check(H5Dcreate2(group, c.name.c_str(), type.get(), space.get(), H5P_DEFAULT,
                                      H5P_DEFAULT, H5P_DEFAULT),
                           file, full, "creating the dataset"));
    check(H5Dwrite(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()), file, full,
          "writing the dataset");
  } else if (!c.i64.empty()) {
    ds = h5::Dataset(check(H5Dcreate2(group, c.name.c_str(), H5T_STD_I64LE, space.get(),
                                      H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                           file, full, "creating the dataset"));
    check(H5Dwrite(ds.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.i64.data()), file,
          full, "writing the dataset");
  } else {
    ds = h5::Dataset(check(H5Dcreate2(group, c.name.c_str(), H5T_IEEE_F64LE, space.get(),
                                      H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                           file, full, "creating the dataset"));
    if (n > 0)
      check(H5Dwrite(ds.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.f64.data()),
            file, full, "writing the dataset");
  }
  if (!c.description.empty()) put_string_attr(ds.get(), file, "description", c.description);
  if (!c.units.empty()) put_string_attr(ds.get(), file, "units", c.units);
}

void write_group(hid_t root, const std::string& file, const char* name,
                 const std::vector<NamedColumn>& cols) {
  if (cols.empty()) return;
  h5::Group g(check(H5Gcreate2(root, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), file, name,
                    "creating the group"));
  for (const auto& c : cols) write_column(g.get(), file, std::string("/") + name, c);
}

bool exists(hid_t loc, const char* path) { return H5Lexists(loc, path, H5P_DEFAULT) > 0; }

std::vector<double> read_f64(hid_t loc, const std::string& file, const std::string& name) {
  h5::Dataset ds(check(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), file, name, "opening"));
  h5::Space sp(check(H5Dget_space(ds.get()), file, name, "getting the dataspace"));
  const auto n = static_cast<std::size_t>(H5Sget_simple_extent_npoints(sp.get()));
  std::vector<double> v(n);
  if (n > 0)
    check(H5Dread(ds.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), file, name,
          "reading");
  return v;
}

std::vector<std::int64_t> read_i64(hid_t loc, const std::string& file, const std::string& name,
                                   std::vector<hsize_t>* dims) {
  h5::Dataset ds(check(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), file, name, "opening"));
  h5::Space sp(check(H5Dget_space(ds.get()), file, name, "getting the dataspace"));
  if (dims) {
    const int rank = H5Sget_simple_extent_ndims(sp.get());
    dims->assign(static_cast<std::size_t>(std::max(rank, 0)), 0);
    H5Sget_simple_extent_dims(sp.get(), dims->data(), nullptr);
  }
  const auto n = static_cast<std::size_t>(H5Sget_simple_extent_npoints(sp.get()));
  std::vector<std::int64_t> v(n);
  if (n > 0)
    check(H5Dread(ds.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), file, name,
          "reading");
  return v;
}

}  // namespace

void write_projection_file(const std::string& path, const ProjectionFile& f) {
  h5::ErrorSilencer quiet;
  h5::File file(check(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), path, "",
                      "creating the file"));
  const hid_t root = file.get();
  put_int_attr(root, path, "complete", 0);
  put_string_attr(root, path, "config", f.config_ini);
  put_string_attr(root, path, "machine", f.machine_ini);
  put_string_attr(root, path, "workload", f.workload);
  put_string_attr(root, path, "moesim_version", f.moesim_version);
  put_string_attr(root, path, "git_commit", f.git_commit);
  write_group(root, path, "projection", f.projection);
  write_group(root, path, "validation", f.validation);
  check(H5Fflush(root, H5F_SCOPE_GLOBAL), path, "", "flushing");
  {
    h5::Attr a(check(H5Aopen(root, "complete", H5P_DEFAULT), path, "complete", "opening"));
    const std::int64_t one = 1;
    check(H5Awrite(a.get(), H5T_NATIVE_INT64, &one), path, "complete", "writing");
  }
  check(file.close(), path, "", "closing the file");
}

MeasuredRun read_measured_run(const std::string& path) {
  h5::ErrorSilencer quiet;
  MeasuredRun r;
  r.path = path;
  h5::File file(
      check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), path, "", "opening the file"));
  const hid_t root = file.get();
  r.config_ini = get_string_attr(root, path, "config");
  r.ranks = get_int_attr(root, path, "ranks");
  if (H5Aexists(root, "nodes") > 0) r.nodes = get_int_attr(root, path, "nodes");
  r.complete = H5Aexists(root, "complete") > 0 && get_int_attr(root, path, "complete") == 1;
  for (const char* name : {"time_step", "time_gate", "time_dispatch", "time_expert", "time_combine",
                           "time_backward", "time_sync"}) {
    const std::string full = std::string("/steps/") + name;
    if (exists(root, "/steps") && exists(root, full.c_str()))
      r.steps[name] = read_f64(root, path, full);
  }
  if (exists(root, "/loads") && exists(root, "/loads/routed")) {
    std::vector<hsize_t> dims;
    r.loads_routed = read_i64(root, path, "/loads/routed", &dims);
    if (dims.size() != 4)
      throw std::runtime_error("HDF5 file '" + path + "', object '/loads/routed': expected 4-D");
    r.loads_layers = static_cast<std::int64_t>(dims[1]);
    r.loads_groups = static_cast<std::int64_t>(dims[2]);
    r.loads_experts = static_cast<std::int64_t>(dims[3]);
    r.loads_kept = read_i64(root, path, "/loads/kept", nullptr);
    r.loads_step = read_i64(root, path, "/loads/step", nullptr);
    if (exists(root, "/loads/group_size")) {
      const std::vector<std::int64_t> gs = read_i64(root, path, "/loads/group_size", nullptr);
      if (!gs.empty()) r.loads_group_size = gs[0];
    }
    // The sampled traffic matrix of the first loads sample's step (/traffic/tokens [T, P, P],
    // output.traffic_every), if that step was sampled.
    if (!r.loads_step.empty() && exists(root, "/traffic/tokens") && exists(root, "/traffic/step")) {
      std::vector<hsize_t> tdims;
      const std::vector<std::int64_t> all = read_i64(root, path, "/traffic/tokens", &tdims);
      const std::vector<std::int64_t> steps = read_i64(root, path, "/traffic/step", nullptr);
      const std::size_t cells = tdims.size() == 3 ? tdims[1] * tdims[2] : 0;
      for (std::size_t i = 0; i < steps.size() && cells > 0; ++i)
        if (steps[i] == r.loads_step[0] && (i + 1) * cells <= all.size())
          r.traffic_at_first_sample.assign(
              all.begin() + static_cast<std::ptrdiff_t>(i * cells),
              all.begin() + static_cast<std::ptrdiff_t>((i + 1) * cells));
    }
  }
  return r;
}

}  // namespace moesim::io
