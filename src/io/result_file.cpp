// HDF5 files of outputs.md: the `moesim run` result file (ResultWriter), the `moesim route`
// trace input (read_trace) and route output (write_route_output). Serial HDF5 only: one process
// writes with the default sec2 driver, so nothing here is collective and nothing calls MPI.
#include "moesim/io/result_file.hpp"

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

#include "h5.hpp"

namespace moesim::io {
namespace {

using h5::check;

constexpr const char* kSchemaVersion = "1";
// 1-D /steps and /eval datasets grow one row at a time; 256 rows (2 KiB) per chunk keeps the
// number of chunks small without making a short run's file large.
constexpr hsize_t kRowChunk = 256;
// expert_load/expert_kept chunks hold up to 16 rows but stay below this size, so one chunk
// always fits HDF5's default 1 MiB per-dataset chunk cache and a one-row append never
// re-reads a chunk from disk.
constexpr hsize_t kMaxChunkBytes = 256 * 1024;

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

std::string child_path(std::string_view parent, std::string_view name) {
  std::string out(parent);
  if (out.empty() || out.back() != '/') {
    out += '/';
  }
  out += name;
  return out;
}

std::string attr_label(std::string_view owner, std::string_view name) {
  std::string out(owner);
  out += " (attribute ";
  out += name;
  out += ")";
  return out;
}

std::string shape_text(std::span<const hsize_t> dims) {
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
h5::Plist make_create_fapl(std::string_view file) {
  h5::Plist fapl(
      check(H5Pcreate(H5P_FILE_ACCESS), file, "", "creating the file access property list"));
  check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST), file, "",
        "setting the library version bounds");
  return fapl;
}

// A fixed-length, NUL-terminated UTF-8 scalar string attribute (h5py reads it as bytes).
void write_string_attr(hid_t loc, std::string_view file, std::string_view owner, const char* name,
                       const std::string& value) {
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

h5::Group create_group(hid_t loc, std::string_view file, const std::string& full,
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
void describe(hid_t ds, std::string_view file, std::string_view full, const char* description,
              const char* units = nullptr) {
  write_string_attr(ds, file, full, "description", description);
  if (units != nullptr) {
    write_string_attr(ds, file, full, "units", units);
  }
}

// An extendible chunked dataset of shape [0, tail...], maxdims [unlimited, tail...].
Column create_extendible(hid_t loc, std::string_view file, std::string_view group, const char* name,
                         hid_t file_type, std::span<const hsize_t> tail, hsize_t chunk_rows,
                         const char* description, const char* units = nullptr) {
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
void append_row(Column& col, std::string_view file, hsize_t row, std::span<const hsize_t> tail,
                hid_t mem_type, const void* data) {
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

// ---- the run result file layout (outputs.md) ----

struct StepF64 {
  const char* name;
  double StepRecord::*member;
  const char* description;
  const char* units;
};
constexpr std::array<StepF64, 15> kStepF64{{
    {"loss", &StepRecord::loss,
     "total loss = task + sum of coef * router losses, mean over the global batch", nullptr},
    {"task_loss", &StepRecord::task_loss, "task loss alone", nullptr},
    {"aux_loss", &StepRecord::aux_loss,
     "load-balance loss before its coefficient, mean over MoE layers", nullptr},
    {"z_loss", &StepRecord::z_loss, "router z-loss before its coefficient", nullptr},
    {"aux_gshard_loss", &StepRecord::aux_gshard_loss,
     "GShard load-balance loss (first choices) before its coefficient, mean over MoE layers",
     nullptr},
    {"importance_loss", &StepRecord::importance_loss,
     "importance loss CV^2 (Shazeer et al. 2017) before its coefficient, mean over MoE layers",
     nullptr},
    {"load_loss", &StepRecord::load_loss,
     "load loss CV^2 (Shazeer et al. 2017) before its coefficient, mean over MoE layers", nullptr},
    {"dropped_fraction", &StepRecord::dropped_fraction,
     "dropped (token, choice) assignments / all assignments", nullptr},
    {"time_step", &StepRecord::time_step, "wall seconds of the whole step, max over ranks", "s"},
    {"time_gate", &StepRecord::time_gate, "seconds in the gate phase, max over ranks", "s"},
    {"time_dispatch", &StepRecord::time_dispatch, "seconds in the dispatch phase, max over ranks",
     "s"},
    {"time_expert", &StepRecord::time_expert, "seconds in the expert phase, max over ranks", "s"},
    {"time_combine", &StepRecord::time_combine, "seconds in the combine phase, max over ranks",
     "s"},
    {"time_backward", &StepRecord::time_backward, "seconds in the backward phase, max over ranks",
     "s"},
    {"time_sync", &StepRecord::time_sync, "seconds in the synchronisation phase, max over ranks",
     "s"},
}};

struct EvalF64 {
  const char* name;
  double EvalRecord::*member;
  const char* description;
};
constexpr std::array<EvalF64, 4> kEvalF64{{
    {"loss", &EvalRecord::loss, "evaluation loss"},
    {"accuracy", &EvalRecord::accuracy, "evaluation accuracy (classification tasks)"},
    {"macro_f1", &EvalRecord::macro_f1,
     "evaluation macro-averaged F1 score (classification tasks)"},
    {"dropped_fraction", &EvalRecord::dropped_fraction,
     "dropped assignments / all assignments during evaluation"},
}};

}  // namespace

// ======================= ResultWriter =======================

struct ResultWriter::Impl {
  std::string path;
  std::int64_t ranks = 1;
  std::array<hsize_t, 2> load_tail{};  // {L, E}
  // Declared before the objects in it, so it is destroyed last (HDF5 would keep the file open
  // until its last object closes anyway); close_all() also closes in this order explicitly.
  h5::File file;
  h5::Group steps, eval;
  Column step_step, step_bytes, expert_load, expert_kept;
  std::vector<Column> step_f64;  // parallel to kStepF64
  Column eval_step;
  std::vector<Column> eval_f64;  // parallel to kEvalF64
  hsize_t step_rows = 0, eval_rows = 0;
  std::int64_t clusters = 0;
  // Research-metric datasets, created on first use ("steps/<name>", "eval/<name>").
  std::map<std::string, Column> extra;
  std::int64_t last_step = 0;
  bool finished = false;

  void require_open(const char* what) const {
    if (finished) {
      throw std::logic_error("ResultWriter::" + std::string(what) + ": result file '" + path +
                             "' was already finished and closed");
    }
  }

  // Releases every object, then the file; returns the file's close status (the final flush).
  herr_t close_all() noexcept {
    for (Column* c : {&step_step, &step_bytes, &expert_load, &expert_kept, &eval_step}) {
      c->ds.reset();
    }
    for (auto& c : step_f64) c.ds.reset();
    for (auto& c : eval_f64) c.ds.reset();
    for (auto& [name, c] : extra) c.ds.reset();
    steps.reset();
    eval.reset();
    return file.close();
  }
};

namespace {
// One row of a research-metric dataset, created on first use with a fill value (NaN for
// floats, -1 for counts), so the rows of steps before it existed read as "not measured".
template <class T>
void write_extra(std::map<std::string, Column>& extra, hid_t group, std::string_view file,
                 const std::string& group_name, const char* name, const std::vector<hsize_t>& tail,
                 hsize_t row, const std::vector<T>& values, const char* description) {
  hsize_t cells = 1;
  for (hsize_t t : tail) cells *= t;
  const std::string key = group_name + "/" + name;
  if (values.size() != cells)
    throw std::runtime_error("result file '" + std::string(file) + "': " + key + " row has " +
                             std::to_string(values.size()) + " values; expected " +
                             std::to_string(cells));
  auto it = extra.find(key);
  if (it == extra.end()) {
    Column col{h5::Dataset{}, "/" + key};
    std::array<hsize_t, 4> dims{}, maxdims{}, chunk{};
    const int rank = static_cast<int>(tail.size()) + 1;
    maxdims[0] = H5S_UNLIMITED;
    chunk[0] = std::clamp<hsize_t>(kMaxChunkBytes / (cells * sizeof(T)), 1, kRowChunk);
    for (std::size_t i = 0; i < tail.size(); ++i)
      dims[i + 1] = maxdims[i + 1] = chunk[i + 1] = tail[i];
    h5::Space space(check(H5Screate_simple(rank, dims.data(), maxdims.data()), file, col.name,
                          "creating the dataspace"));
    h5::Plist dcpl(check(H5Pcreate(H5P_DATASET_CREATE), file, col.name,
                         "creating the creation property list"));
    check(H5Pset_chunk(dcpl.get(), rank, chunk.data()), file, col.name, "setting the chunk shape");
    const T fill = std::is_floating_point_v<T>
                       ? static_cast<T>(std::numeric_limits<double>::quiet_NaN())
                       : T(-1);
    check(H5Pset_fill_value(dcpl.get(), Elem<T>::mem(), &fill), file, col.name,
          "setting the fill value");
    col.ds = h5::Dataset(check(
        H5Dcreate2(group, name, Elem<T>::file(), space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
        file, col.name, "creating the dataset"));
    describe(col.ds.get(), file, col.name, description);
    it = extra.emplace(key, std::move(col)).first;
  }
  append_row(it->second, file, row, tail, Elem<T>::mem(), values.data());
}

// Names of the datasets in `group` that are not in `known` (the research-metric ones).
std::vector<std::string> other_datasets(hid_t group, const std::vector<std::string>& known) {
  std::vector<std::string> names;
  auto collect = [](hid_t, const char* name, const H5L_info_t*,
                    void* data) -> herr_t {  // HDF5 1.10 API
    static_cast<std::vector<std::string>*>(data)->emplace_back(name);
    return 0;
  };
  hsize_t idx = 0;
  (void)H5Literate(group, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, +collect, &names);
  std::vector<std::string> out;
  for (const auto& n : names)
    if (std::find(known.begin(), known.end(), n) == known.end()) out.push_back(n);
  return out;
}
}  // namespace

ResultWriter::ResultWriter(const std::string& path, const RunMetadata& meta) {
  if (meta.layers < 1 || meta.num_experts < 1 || meta.ranks < 1) {
    throw std::runtime_error("result file '" + path +
                             "': invalid metadata: layers = " + std::to_string(meta.layers) +
                             ", num_experts = " + std::to_string(meta.num_experts) +
                             ", ranks = " + std::to_string(meta.ranks) + " (all must be >= 1)");
  }
  const auto L = static_cast<hsize_t>(meta.layers);
  const auto E = static_cast<hsize_t>(meta.num_experts);
  const hsize_t row_bytes = L * E * sizeof(std::int64_t);
  // HDF5 chunks are limited to 4 GiB; a [1, L, E] chunk beyond that would be a config error.
  if (L > std::numeric_limits<std::uint32_t>::max() / E / sizeof(std::int64_t)) {
    throw std::runtime_error("result file '" + path +
                             "': layers x num_experts = " + std::to_string(L) + " x " +
                             std::to_string(E) + " is too large for one HDF5 chunk per step");
  }

  h5::ErrorSilencer quiet;  // declared first: outlives every handle below, even on unwinding
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->ranks = meta.ranks;
  impl->clusters = meta.num_clusters;
  impl->load_tail = {L, E};
  const std::string_view f = impl->path;

  h5::Plist fapl = make_create_fapl(f);
  impl->file = h5::File(check(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), f,
                              "/", "creating the result file"));
  const hid_t root = impl->file.get();

  write_string_attr(root, f, "/", "schema_version", kSchemaVersion);
  write_string_attr(root, f, "/", "moesim_version", meta.moesim_version);
  write_string_attr(root, f, "/", "git_commit", meta.git_commit);
  write_string_attr(root, f, "/", "config", meta.config_ini);
  write_string_attr(root, f, "/", "created_utc", meta.created_utc);
  write_string_attr(root, f, "/", "slurm_job_id", meta.slurm_job_id);
  write_scalar_attr<std::int64_t>(root, f, "/", "ranks", meta.ranks);
  write_scalar_attr<std::uint64_t>(root, f, "/", "seed", meta.seed);
  write_scalar_attr<std::int64_t>(root, f, "/", "complete", 0);

  impl->steps = create_group(root, f, "/steps", "steps");
  const hid_t steps = impl->steps.get();
  const std::span<const hsize_t> scalar_row{};
  impl->step_step = create_extendible(steps, f, "/steps", "step", Elem<std::int64_t>::file(),
                                      scalar_row, kRowChunk, "step index");
  for (const auto& field : kStepF64) {
    impl->step_f64.push_back(create_extendible(steps, f, "/steps", field.name, Elem<double>::file(),
                                               scalar_row, kRowChunk, field.description,
                                               field.units));
  }
  impl->step_bytes = create_extendible(
      steps, f, "/steps", "bytes_alltoall", Elem<std::int64_t>::file(), scalar_row, kRowChunk,
      "bytes sent through all-to-all by all ranks in the step", "bytes");
  const hsize_t load_chunk_rows = std::clamp<hsize_t>(kMaxChunkBytes / row_bytes, 1, 16);
  impl->expert_load = create_extendible(
      steps, f, "/steps", "expert_load", Elem<std::int64_t>::file(), impl->load_tail,
      load_chunk_rows,
      "assignments routed to each expert before capacity [step, MoE layer, expert]");
  impl->expert_kept = create_extendible(
      steps, f, "/steps", "expert_kept", Elem<std::int64_t>::file(), impl->load_tail,
      load_chunk_rows, "assignments kept after capacity [step, MoE layer, expert]");

  impl->eval = create_group(root, f, "/eval", "eval");
  const hid_t eval = impl->eval.get();
  impl->eval_step =
      create_extendible(eval, f, "/eval", "step", Elem<std::int64_t>::file(), scalar_row, kRowChunk,
                        "training step after which the evaluation ran");
  for (const auto& field : kEvalF64) {
    impl->eval_f64.push_back(create_extendible(eval, f, "/eval", field.name, Elem<double>::file(),
                                               scalar_row, kRowChunk, field.description));
  }

  // The empty skeleton with complete = 0 reaches the disk before the first step.
  check(H5Fflush(root, H5F_SCOPE_LOCAL), f, "/", "flushing the result file");
  impl_ = std::move(impl);
}

namespace {
Column open_column(hid_t loc, std::string_view file, std::string_view group, const char* name) {
  Column col{h5::Dataset{}, child_path(group, name)};
  col.ds = h5::Dataset(
      check(H5Dopen2(loc, name, H5P_DEFAULT), file, col.name, "opening the dataset (resume)"));
  return col;
}

// Number of leading rows of a 1-D int64 `step` column whose value passes `keep`.
template <class Keep>
hsize_t leading_rows(const Column& col, std::string_view file, Keep keep) {
  h5::Space space(check(H5Dget_space(col.ds.get()), file, col.name, "getting the dataspace"));
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  std::vector<std::int64_t> v(static_cast<std::size_t>(std::max<hssize_t>(n, 0)));
  if (!v.empty())
    check(H5Dread(col.ds.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), file,
          col.name, "reading the step column");
  hsize_t rows = 0;
  while (rows < v.size() && keep(v[rows])) ++rows;
  return rows;
}

void truncate_rows(Column& col, std::string_view file, hsize_t rows) {
  h5::Space space(check(H5Dget_space(col.ds.get()), file, col.name, "getting the dataspace"));
  std::array<hsize_t, 4> dims{};
  const int rank = check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), file,
                         col.name, "reading the shape");
  (void)rank;
  dims[0] = rows;
  check(H5Dset_extent(col.ds.get(), dims.data()), file, col.name,
        "truncating the dataset (resume)");
}
}  // namespace

ResultWriter::ResultWriter(const std::string& path, const RunMetadata& meta,
                           std::int64_t resume_step) {
  h5::ErrorSilencer quiet;
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->ranks = meta.ranks;
  impl->clusters = meta.num_clusters;
  impl->load_tail = {static_cast<hsize_t>(meta.layers), static_cast<hsize_t>(meta.num_experts)};
  const std::string_view f = impl->path;
  h5::Plist fapl = make_create_fapl(f);
  impl->file = h5::File(check(H5Fopen(path.c_str(), H5F_ACC_RDWR, fapl.get()), f, "/",
                              "reopening the result file to resume"));
  const hid_t root = impl->file.get();
  impl->steps =
      h5::Group(check(H5Gopen2(root, "steps", H5P_DEFAULT), f, "/steps", "opening the group"));
  impl->eval =
      h5::Group(check(H5Gopen2(root, "eval", H5P_DEFAULT), f, "/eval", "opening the group"));
  const hid_t steps = impl->steps.get(), eval = impl->eval.get();
  impl->step_step = open_column(steps, f, "/steps", "step");
  for (const auto& field : kStepF64)
    impl->step_f64.push_back(open_column(steps, f, "/steps", field.name));
  impl->step_bytes = open_column(steps, f, "/steps", "bytes_alltoall");
  impl->expert_load = open_column(steps, f, "/steps", "expert_load");
  impl->expert_kept = open_column(steps, f, "/steps", "expert_kept");
  impl->eval_step = open_column(eval, f, "/eval", "step");
  for (const auto& field : kEvalF64)
    impl->eval_f64.push_back(open_column(eval, f, "/eval", field.name));
  {  // the load datasets must have this run's [L, E]
    h5::Space space(check(H5Dget_space(impl->expert_load.ds.get()), f, "/steps/expert_load",
                          "getting the dataspace"));
    std::array<hsize_t, 4> dims{};
    if (H5Sget_simple_extent_ndims(space.get()) != 3 ||
        check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), f, "/steps/expert_load",
              "shape") != 3 ||
        dims[1] != impl->load_tail[0] || dims[2] != impl->load_tail[1])
      throw std::runtime_error(
          "result file '" + path + "' cannot be resumed: its expert_load is not [S, " +
          std::to_string(meta.layers) + ", " + std::to_string(meta.num_experts) + "]");
  }
  const hsize_t keep_steps =
      leading_rows(impl->step_step, f, [&](std::int64_t s) { return s < resume_step; });
  const hsize_t keep_evals =
      leading_rows(impl->eval_step, f, [&](std::int64_t s) { return s <= resume_step; });
  for (Column* c : {&impl->step_step, &impl->step_bytes, &impl->expert_load, &impl->expert_kept})
    truncate_rows(*c, f, keep_steps);
  for (auto& c : impl->step_f64) truncate_rows(c, f, keep_steps);
  truncate_rows(impl->eval_step, f, keep_evals);
  for (auto& c : impl->eval_f64) truncate_rows(c, f, keep_evals);
  {  // research-metric datasets: whatever else the groups hold
    std::vector<std::string> known_steps{"step", "bytes_alltoall", "expert_load", "expert_kept"};
    for (const auto& field : kStepF64) known_steps.emplace_back(field.name);
    std::vector<std::string> known_eval{"step"};
    for (const auto& field : kEvalF64) known_eval.emplace_back(field.name);
    for (const auto& name : other_datasets(steps, known_steps)) {
      Column c = open_column(steps, f, "/steps", name.c_str());
      truncate_rows(c, f, keep_steps);
      impl->extra.emplace("steps/" + name, std::move(c));
    }
    for (const auto& name : other_datasets(eval, known_eval)) {
      Column c = open_column(eval, f, "/eval", name.c_str());
      truncate_rows(c, f, keep_evals);
      impl->extra.emplace("eval/" + name, std::move(c));
    }
  }
  impl->step_rows = keep_steps;
  impl->eval_rows = keep_evals;
  impl->last_step = resume_step - 1;
  overwrite_scalar_attr<std::int64_t>(root, f, "/", "complete", 0);
  overwrite_scalar_attr<std::int64_t>(root, f, "/", "ranks", meta.ranks);
  if (H5Lexists(root, "summary", H5P_DEFAULT) > 0)  // written again by finish()
    check(H5Ldelete(root, "summary", H5P_DEFAULT), f, "/summary", "removing the old summary");
  check(H5Fflush(root, H5F_SCOPE_LOCAL), f, "/", "flushing the result file");
  impl_ = std::move(impl);
}

ResultWriter::~ResultWriter() {
  // Error path (no finish()): close whatever is open, leaving complete = 0. Never throws.
  if (impl_ && !impl_->finished) {
    h5::ErrorSilencer quiet;
    (void)impl_->close_all();
  }
}

void ResultWriter::append_step(const StepRecord& rec) {
  Impl& m = *impl_;
  m.require_open("append_step");
  const std::size_t cells = m.load_tail[0] * m.load_tail[1];
  if (rec.expert_load.size() != cells || rec.expert_kept.size() != cells) {
    throw std::runtime_error(
        "result file '" + m.path + "': step " + std::to_string(rec.step) + " has expert_load of " +
        std::to_string(rec.expert_load.size()) + " values and expert_kept of " +
        std::to_string(rec.expert_kept.size()) +
        " values; expected layers x num_experts = " + std::to_string(m.load_tail[0]) + " x " +
        std::to_string(m.load_tail[1]) + " = " + std::to_string(cells));
  }
  // Plots and checks index rows by step; a repeated or decreasing step is a caller bug.
  if (m.step_rows > 0 && rec.step <= m.last_step) {
    throw std::runtime_error("result file '" + m.path + "': step " + std::to_string(rec.step) +
                             " appended after step " + std::to_string(m.last_step) +
                             "; steps must be strictly increasing");
  }

  h5::ErrorSilencer quiet;
  const std::string_view f = m.path;
  const hsize_t row = m.step_rows;
  const std::span<const hsize_t> scalar_row{};
  append_row(m.step_step, f, row, scalar_row, H5T_NATIVE_INT64, &rec.step);
  for (std::size_t i = 0; i < kStepF64.size(); ++i) {
    const double value = rec.*(kStepF64[i].member);
    append_row(m.step_f64[i], f, row, scalar_row, H5T_NATIVE_DOUBLE, &value);
  }
  append_row(m.step_bytes, f, row, scalar_row, H5T_NATIVE_INT64, &rec.bytes_alltoall);
  append_row(m.expert_load, f, row, m.load_tail, H5T_NATIVE_INT64, rec.expert_load.data());
  append_row(m.expert_kept, f, row, m.load_tail, H5T_NATIVE_INT64, rec.expert_kept.data());
  if (!rec.load_imbalance.empty())
    write_extra(m.extra, m.steps.get(), f, "steps", "load_imbalance", {m.load_tail[0]}, row,
                rec.load_imbalance,
                "max / mean of expert_load over the experts of each MoE layer [step, layer]");
  if (!rec.traffic_tokens.empty()) {
    const auto P = static_cast<hsize_t>(m.ranks);
    write_extra(m.extra, m.steps.get(), f, "steps", "traffic_tokens", {P, P}, row,
                rec.traffic_tokens,
                "tokens dispatched from rank r (row) to rank s (column) in the step, all layers "
                "[step, r, s]");
  }
  if (!rec.rank_rows.empty())
    write_extra(m.extra, m.steps.get(), f, "steps", "rank_rows",
                {m.load_tail[0], static_cast<hsize_t>(m.ranks)}, row, rec.rank_rows,
                "rows (token-expert assignments) each rank's routed experts computed in the "
                "step's forward [step, layer, rank]");
  if (!rec.base_epsilon.empty())
    write_extra(m.extra, m.steps.get(), f, "steps", "base_epsilon", {m.load_tail[0]}, row,
                rec.base_epsilon,
                "routing.rule = base: final auction epsilon, largest over the layer's groups "
                "(the assignment total is within group_size * epsilon of the optimum) "
                "[step, layer]");
  m.step_rows = row + 1;
  m.last_step = rec.step;
}

void ResultWriter::append_eval(const EvalRecord& rec) {
  Impl& m = *impl_;
  m.require_open("append_eval");
  h5::ErrorSilencer quiet;
  const std::string_view f = m.path;
  const hsize_t row = m.eval_rows;
  const std::span<const hsize_t> scalar_row{};
  append_row(m.eval_step, f, row, scalar_row, H5T_NATIVE_INT64, &rec.step);
  for (std::size_t i = 0; i < kEvalF64.size(); ++i) {
    const double value = rec.*(kEvalF64[i].member);
    append_row(m.eval_f64[i], f, row, scalar_row, H5T_NATIVE_DOUBLE, &value);
  }
  const hsize_t L = m.load_tail[0], E = m.load_tail[1];
  if (!rec.specialization.empty())
    write_extra(m.extra, m.eval.get(), f, "eval", "specialization", {L}, row, rec.specialization,
                "mean over clusters of the share of a cluster's tokens on its most frequent "
                "first-choice expert [eval, layer]");
  if (!rec.cluster_expert_mi.empty())
    write_extra(m.extra, m.eval.get(), f, "eval", "cluster_expert_mi", {L}, row,
                rec.cluster_expert_mi,
                "mutual information (nats) between a token's cluster and its first-choice expert "
                "[eval, layer]");
  if (!rec.cluster_expert.empty())
    write_extra(m.extra, m.eval.get(), f, "eval", "cluster_expert",
                {L, static_cast<hsize_t>(m.clusters), E}, row, rec.cluster_expert,
                "first-choice assignments of held-out tokens [eval, layer, cluster, expert]");
  m.eval_rows = row + 1;
}

void ResultWriter::flush() {
  Impl& m = *impl_;
  m.require_open("flush");
  h5::ErrorSilencer quiet;
  check(H5Fflush(m.file.get(), H5F_SCOPE_LOCAL), m.path, "/", "flushing the result file");
}

void ResultWriter::finish(const Summary& summary) {
  Impl& m = *impl_;
  m.require_open("finish");
  if (summary.ranks != m.ranks) {
    throw std::runtime_error("result file '" + m.path + "': summary is for " +
                             std::to_string(summary.ranks) + " ranks but the run has " +
                             std::to_string(m.ranks));
  }
  const auto P = static_cast<hsize_t>(m.ranks);
  if (summary.traffic_tokens.size() != P * P) {
    throw std::runtime_error("result file '" + m.path + "': summary traffic_tokens has " +
                             std::to_string(summary.traffic_tokens.size()) +
                             " values; expected ranks x ranks = " + std::to_string(P) + " x " +
                             std::to_string(P) + " = " + std::to_string(P * P));
  }

  h5::ErrorSilencer quiet;
  const std::string_view f = m.path;
  {
    h5::Group group = create_group(m.file.get(), f, "/summary", "summary");
    const hid_t g = group.get();
    write_scalar_attr<double>(g, f, "/summary", "tokens_per_second", summary.tokens_per_second);
    write_scalar_attr<double>(g, f, "/summary", "step_time_median", summary.step_time_median);
    write_scalar_attr<double>(g, f, "/summary", "dropped_fraction_mean",
                              summary.dropped_fraction_mean);
    write_scalar_attr<double>(g, f, "/summary", "wall_seconds", summary.wall_seconds);
    write_scalar_attr<std::int64_t>(g, f, "/summary", "ranks", summary.ranks);
    const std::array<hsize_t, 2> dims{P, P};
    write_array(g, f, "/summary", "traffic_tokens", dims, summary.traffic_tokens,
                "tokens sent from rank r (row) to rank s (column), summed over the run");
  }
  if (summary.base_epsilon >= 0) {  // routing.rule = base (a resumed run rewrites it)
    if (H5Aexists(m.file.get(), "base_epsilon") > 0)
      overwrite_scalar_attr<double>(m.file.get(), f, "/", "base_epsilon", summary.base_epsilon);
    else
      write_scalar_attr<double>(m.file.get(), f, "/", "base_epsilon", summary.base_epsilon);
  }
  // Everything else reaches the disk before `complete` says so: a crash between the two
  // flushes leaves a full file that still reads as incomplete, never the reverse.
  check(H5Fflush(m.file.get(), H5F_SCOPE_LOCAL), f, "/", "flushing the result file");
  overwrite_scalar_attr<std::int64_t>(m.file.get(), f, "/", "complete", 1);
  m.finished = true;  // from here on the handles are released, whatever close reports
  if (m.close_all() < 0) {
    h5::fail(f, "/", "closing the result file");
  }
}

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

// ======================= write_route_output =======================

namespace {

void validate_route_output(const std::string& path, const RouteOutput& out) {
  const std::size_t n = out.token.size();
  if (out.expert.size() != n || out.slot.size() != n || out.weight.size() != n) {
    throw std::runtime_error(
        "route output '" + path + "': kept-assignment arrays differ in length: token " +
        std::to_string(n) + ", expert " + std::to_string(out.expert.size()) + ", slot " +
        std::to_string(out.slot.size()) + ", weight " + std::to_string(out.weight.size()));
  }
  if (out.dropped_expert.size() != out.dropped_token.size()) {
    throw std::runtime_error("route output '" + path +
                             "': dropped arrays differ in length: dropped_token " +
                             std::to_string(out.dropped_token.size()) + ", dropped_expert " +
                             std::to_string(out.dropped_expert.size()));
  }
  if (out.load_routed.empty() || out.load_routed.size() != out.load_kept.size()) {
    throw std::runtime_error(
        "route output '" + path + "': load arrays must both have E >= 1 entries: routed " +
        std::to_string(out.load_routed.size()) + ", kept " + std::to_string(out.load_kept.size()));
  }
  const auto E = static_cast<std::int64_t>(out.load_routed.size());
  auto check_experts = [&](const std::vector<std::int32_t>& experts, const char* name) {
    for (std::size_t i = 0; i < experts.size(); ++i) {
      if (experts[i] < 0 || experts[i] >= E) {
        throw std::runtime_error("route output '" + path + "': " + name + "[" + std::to_string(i) +
                                 "] = " + std::to_string(experts[i]) +
                                 " is not an expert index in [0, " + std::to_string(E) + ")");
      }
    }
  };
  check_experts(out.expert, "expert");
  check_experts(out.dropped_expert, "dropped_expert");
}

void write_route_file(const std::string& file_path, const RouteOutput& out) {
  const std::string_view f = file_path;
  h5::Plist fapl = make_create_fapl(f);
  h5::File file(check(H5Fcreate(file_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), f, "/",
                      "creating the route output file"));
  const hid_t root = file.get();
  write_string_attr(root, f, "/", "schema_version", kSchemaVersion);
  write_scalar_attr<std::int64_t>(root, f, "/", "capacity", out.capacity);
  write_scalar_attr<double>(root, f, "/", "aux_loss", out.aux_loss);
  write_scalar_attr<double>(root, f, "/", "z_loss", out.z_loss);
  write_scalar_attr<double>(root, f, "/", "dropped_fraction", out.dropped_fraction);
  if (out.base_epsilon >= 0)
    write_scalar_attr<double>(root, f, "/", "base_epsilon", out.base_epsilon);
  write_string_attr(root, f, "/", "config", out.config_ini);
  {
    h5::Group g = create_group(root, f, "/routing", "routing");
    write_vector(g.get(), f, "/routing", "token", out.token,
                 "token of each kept assignment, sorted by (token, expert)");
    write_vector(g.get(), f, "/routing", "expert", out.expert, "expert of each kept assignment");
    write_vector(g.get(), f, "/routing", "slot", out.slot,
                 "index of the assignment in its expert's buffer within its routing group");
    write_vector(g.get(), f, "/routing", "weight", out.weight,
                 "combine weight of each kept assignment");
    write_vector(g.get(), f, "/routing", "dropped_token", out.dropped_token,
                 "token of each dropped assignment");
    write_vector(g.get(), f, "/routing", "dropped_expert", out.dropped_expert,
                 "expert of each dropped assignment");
  }
  {
    h5::Group g = create_group(root, f, "/load", "load");
    write_vector(g.get(), f, "/load", "routed", out.load_routed,
                 "assignments per expert before capacity");
    write_vector(g.get(), f, "/load", "kept", out.load_kept,
                 "assignments per expert after capacity");
  }
  if (!out.trace_step.empty()) {
    h5::Group g = create_group(root, f, "/trace", "trace");
    const auto R = static_cast<hsize_t>(out.trace_step.size());
    const auto E = static_cast<hsize_t>(out.load_routed.size());
    write_vector(g.get(), f, "/trace", "step", out.trace_step, "step of each (step, layer) row");
    write_vector(g.get(), f, "/trace", "layer", out.trace_layer, "layer of each (step, layer) row");
    const std::array<hsize_t, 2> dims{R, E};
    write_array(g.get(), f, "/trace", "load_routed", dims, out.trace_load_routed,
                "assignments per expert before capacity, all ranks [row, expert]");
    write_array(g.get(), f, "/trace", "load_kept", dims, out.trace_load_kept,
                "assignments per expert after capacity, all ranks [row, expert]");
  }
  check(file.close(), f, "/", "closing the route output file");
}

}  // namespace

void write_route_output(const std::string& path, const RouteOutput& out) {
  validate_route_output(path, out);
  // Written under a temporary name and renamed: a crash never leaves a half file at `path`.
  const std::string tmp = path + ".tmp";
  h5::ErrorSilencer quiet;
  try {
    write_route_file(tmp, out);
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw std::runtime_error("route output: cannot rename '" + tmp + "' to '" + path +
                             "': " + ec.message());
  }
}

}  // namespace moesim::io
