// The `moesim run` result file of outputs.md (ResultWriter). Serial HDF5 only: rank 0 writes with
// the default sec2 driver, so nothing here is collective and nothing calls MPI.
#include "moesim/io/result_file.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstring>
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
namespace {

using namespace h5util;

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

// A column of buffered rows: one HDF5 dataset "<group>/<name>" of shape [rows, tail...].
// Rank-shaped columns (rank_axes) may grow along their tail axes when a run resumes on more
// ranks; their fill value -1 marks cells of ranks a step did not have.
struct Pending {
  hid_t file_type = -1, mem_type = -1;
  std::size_t elem = 0;            // bytes per element
  std::vector<hsize_t> tail;       // this attempt's row shape
  bool rank_axes = false;          // tail axes are rank axes (may grow)
  bool fill_negative = false;      // fill -1 (counts) / NaN (floats) for rows before creation
  std::string description, units;  // for a dataset created at flush time
  std::map<std::string, std::int64_t> int_attrs;  // attributes of a dataset created at flush
  hsize_t first_row = 0;                          // row index of the first buffered row
  hsize_t rows = 0;                               // buffered rows
  std::vector<unsigned char> data;                // rows x tail elements
};

template <class T>
void push(Pending& p, hsize_t row, std::span<const T> values) {
  if (p.rows == 0) p.first_row = row;
  if (p.first_row + p.rows != row)
    throw std::logic_error("result file: rows of one column must be appended in order");
  const auto* b = reinterpret_cast<const unsigned char*>(values.data());
  p.data.insert(p.data.end(), b, b + values.size() * sizeof(T));
  ++p.rows;
}

hsize_t cells_of(const std::vector<hsize_t>& tail) {
  hsize_t n = 1;
  for (hsize_t t : tail) n *= t;
  return n;
}

// Current extent of a dataset.
std::vector<hsize_t> extent(hid_t ds, std::string_view file, std::string_view name) {
  h5::Space space(check(H5Dget_space(ds), file, name, "getting the dataspace"));
  const int nd = check(H5Sget_simple_extent_ndims(space.get()), file, name, "reading the rank");
  std::vector<hsize_t> dims(static_cast<std::size_t>(nd));
  if (nd > 0)
    check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), file, name,
          "reading the shape");
  return dims;
}

bool link_exists(hid_t loc, const char* name) { return H5Lexists(loc, name, H5P_DEFAULT) > 0; }

// Creates an extendible chunked dataset [0, tail...] in `group`.
h5::Dataset create_column(hid_t group, std::string_view file, const std::string& full,
                          const char* name, const Pending& p) {
  const int rank = static_cast<int>(p.tail.size()) + 1;
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank), 0), maxdims(dims.size()),
      chunk(dims.size());
  maxdims[0] = H5S_UNLIMITED;
  const hsize_t cells = std::max<hsize_t>(cells_of(p.tail), 1);
  chunk[0] = std::clamp<hsize_t>(kMaxChunkBytes / (cells * p.elem), 1, kRowChunk);
  for (std::size_t i = 0; i < p.tail.size(); ++i) {
    dims[i + 1] = p.rank_axes ? 0 : p.tail[i];
    maxdims[i + 1] = p.rank_axes ? H5S_UNLIMITED : p.tail[i];
    chunk[i + 1] = std::max<hsize_t>(p.tail[i], 1);
  }
  h5::Space space(check(H5Screate_simple(rank, dims.data(), maxdims.data()), file, full,
                        "creating the dataspace"));
  h5::Plist dcpl(
      check(H5Pcreate(H5P_DATASET_CREATE), file, full, "creating the creation property list"));
  check(H5Pset_chunk(dcpl.get(), rank, chunk.data()), file, full, "setting the chunk shape");
  if (p.fill_negative || p.rank_axes) {
    if (p.mem_type == H5T_NATIVE_DOUBLE) {
      const double fill = std::numeric_limits<double>::quiet_NaN();
      check(H5Pset_fill_value(dcpl.get(), H5T_NATIVE_DOUBLE, &fill), file, full,
            "setting the fill");
    } else {
      const std::int64_t fill = -1;
      check(H5Pset_fill_value(dcpl.get(), H5T_NATIVE_INT64, &fill), file, full, "setting the fill");
    }
  }
  h5::Dataset ds(
      check(H5Dcreate2(group, name, p.file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
            file, full, "creating the dataset"));
  describe(ds.get(), file, full, p.description.c_str(),
           p.units.empty() ? nullptr : p.units.c_str());
  for (const auto& [attr, value] : p.int_attrs)
    write_scalar_attr<std::int64_t>(ds.get(), file, full, attr.c_str(), value);
  return ds;
}

// Appends the buffered rows of `p` to dataset `full` ("/steps/loss"), creating it if needed.
void write_pending(hid_t root, std::string_view file, const std::string& key, Pending& p) {
  if (p.rows == 0) return;
  const std::string full = "/" + key;
  const std::size_t slash = key.find('/');
  const std::string group_name = key.substr(0, slash), name = key.substr(slash + 1);
  h5::Group group(
      link_exists(root, group_name.c_str())
          ? check(H5Gopen2(root, group_name.c_str(), H5P_DEFAULT), file, "/" + group_name,
                  "opening the group")
          : check(H5Gcreate2(root, group_name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), file,
                  "/" + group_name, "creating the group"));
  h5::Dataset ds;
  if (link_exists(group.get(), name.c_str()))
    ds = h5::Dataset(
        check(H5Dopen2(group.get(), name.c_str(), H5P_DEFAULT), file, full, "opening the dataset"));
  else
    ds = create_column(group.get(), file, full, name.c_str(), p);
  std::vector<hsize_t> dims = extent(ds.get(), file, full);
  if (dims.size() != p.tail.size() + 1)
    throw std::runtime_error("result file '" + std::string(file) + "': dataset " + full + " has " +
                             std::to_string(dims.size()) + " axes; this run writes " +
                             std::to_string(p.tail.size() + 1));
  for (std::size_t i = 0; i < p.tail.size(); ++i) {
    if (dims[i + 1] == p.tail[i]) continue;
    if (!p.rank_axes && dims[i + 1] != p.tail[i])
      throw std::runtime_error("result file '" + std::string(file) + "': dataset " + full +
                               " has rows of shape " + shape_text(std::span(dims).subspan(1)) +
                               "; this run writes " + shape_text(p.tail));
    dims[i + 1] = std::max(dims[i + 1], p.tail[i]);  // a rank axis grows, never shrinks
  }
  dims[0] = std::max(dims[0], p.first_row + p.rows);
  check(H5Dset_extent(ds.get(), dims.data()), file, full, "extending the dataset");
  h5::Space fspace(check(H5Dget_space(ds.get()), file, full, "getting the dataspace"));
  std::vector<hsize_t> start(dims.size(), 0), count(dims.size());
  start[0] = p.first_row;
  count[0] = p.rows;
  for (std::size_t i = 0; i < p.tail.size(); ++i) count[i + 1] = p.tail[i];
  check(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(),
                            nullptr),
        file, full, "selecting the new rows");
  h5::Space mspace(check(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr),
                         file, full, "creating the memory dataspace"));
  if (cells_of(count) > 0)
    check(H5Dwrite(ds.get(), p.mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, p.data.data()),
          file, full, "writing rows");
  p.rows = 0;
  p.data.clear();
}

// Reads a whole dataset as T (HDF5 converts); empty if it does not exist.
template <class T>
std::vector<T> read_all(hid_t root, std::string_view file, const char* path,
                        std::vector<hsize_t>* dims_out = nullptr) {
  std::vector<T> v;
  if (!link_exists(root, path)) return v;
  h5::Dataset ds(check(H5Dopen2(root, path, H5P_DEFAULT), file, path, "opening the dataset"));
  const std::vector<hsize_t> dims = extent(ds.get(), file, path);
  if (dims_out) *dims_out = dims;
  v.resize(cells_of(dims));
  if (!v.empty())
    check(H5Dread(ds.get(), Elem<T>::mem(), H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), file, path,
          "reading the dataset");
  return v;
}

void resize_rows(hid_t root, std::string_view file, const std::string& path, hsize_t rows) {
  h5::Dataset ds(
      check(H5Dopen2(root, path.c_str(), H5P_DEFAULT), file, path, "opening the dataset"));
  std::vector<hsize_t> dims = extent(ds.get(), file, path);
  if (dims.empty() || dims[0] == rows) return;
  dims[0] = rows;
  check(H5Dset_extent(ds.get(), dims.data()), file, path, "truncating the dataset (resume)");
}

std::vector<std::string> children(hid_t group) {
  std::vector<std::string> names;
  auto collect = [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
    static_cast<std::vector<std::string>*>(data)->emplace_back(name);
    return 0;
  };
  hsize_t idx = 0;
  (void)H5Literate(group, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, +collect, &names);
  return names;
}

std::string read_string_attr(hid_t loc, std::string_view file, const char* name) {
  h5::Attr attr(check(H5Aopen(loc, name, H5P_DEFAULT), file, name, "opening the attribute"));
  h5::Type type(check(H5Aget_type(attr.get()), file, name, "reading the attribute type"));
  const std::size_t size = H5Tget_size(type.get());
  std::string s(size + 1, '\0');
  h5::Type mem(check(H5Tcopy(H5T_C_S1), file, name, "copying the string type"));
  check(H5Tset_size(mem.get(), size + 1), file, name, "sizing the string type");
  check(H5Tset_cset(mem.get(), H5Tget_cset(type.get())), file, name, "setting the character set");
  check(H5Aread(attr.get(), mem.get(), s.data()), file, name, "reading the attribute");
  s.resize(std::strlen(s.c_str()));
  return s;
}

std::int64_t read_int_attr(hid_t loc, std::string_view file, const char* name) {
  h5::Attr attr(check(H5Aopen(loc, name, H5P_DEFAULT), file, name, "opening the attribute"));
  std::int64_t v = 0;
  check(H5Aread(attr.get(), H5T_NATIVE_INT64, &v), file, name, "reading the attribute");
  return v;
}

void replace_string_attr(hid_t loc, std::string_view file, const char* name,
                         const std::string& value) {
  if (H5Aexists(loc, name) > 0)
    check(H5Adelete(loc, name), file, name, "removing the old attribute");
  write_string_attr(loc, file, "/", name, value);
}

// Fixed-length string cells of /attempts (h5py reads them as bytes).
constexpr std::size_t kTextCell = 64;
std::array<char, kTextCell> text_cell(const std::string& s) {
  std::array<char, kTextCell> c{};
  std::memcpy(c.data(), s.data(), std::min(s.size(), kTextCell - 1));
  return c;
}

double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// ---- streamed [P, P] traffic matrices ----

// Rows of a P-wide matrix per block of a streamed copy: about 1 MiB of values, at least one row.
hsize_t block_rows_for(hsize_t width) {
  return std::max<hsize_t>(1, (hsize_t{1} << 17) / std::max<hsize_t>(width, 1));
}

// An int64 matrix dataset with growable axes, fill -1 (cells of ranks a matrix did not have).
// lead_axis: a leading unlimited axis of samples ([0, W, W]); otherwise [W, W].
h5::Dataset create_matrix(hid_t group, std::string_view file, const std::string& full,
                          const char* name, hsize_t width, bool lead_axis,
                          const char* description) {
  const int rank = lead_axis ? 3 : 2;
  const hsize_t c = std::clamp<hsize_t>(width, 1, 128);
  std::vector<hsize_t> dims, maxdims(static_cast<std::size_t>(rank), H5S_UNLIMITED), chunk;
  if (lead_axis) {
    dims = {0, width, width};
    chunk = {1, c, c};
  } else {
    dims = {width, width};
    chunk = {c, c};
  }
  h5::Space space(check(H5Screate_simple(rank, dims.data(), maxdims.data()), file, full,
                        "creating the dataspace"));
  h5::Plist dcpl(
      check(H5Pcreate(H5P_DATASET_CREATE), file, full, "creating the creation property list"));
  check(H5Pset_chunk(dcpl.get(), rank, chunk.data()), file, full, "setting the chunk shape");
  const std::int64_t fill = -1;
  check(H5Pset_fill_value(dcpl.get(), H5T_NATIVE_INT64, &fill), file, full, "setting the fill");
  h5::Dataset ds(check(H5Dcreate2(group, name, Elem<std::int64_t>::file(), space.get(), H5P_DEFAULT,
                                  dcpl.get(), H5P_DEFAULT),
                       file, full, "creating the dataset"));
  describe(ds.get(), file, full, description);
  return ds;
}

// Reads or writes the hyperslab start/count of an int64 dataset.
void slab_io(hid_t ds, std::string_view file, std::string_view full,
             const std::vector<hsize_t>& start, const std::vector<hsize_t>& count,
             std::int64_t* data, bool write) {
  h5::Space fspace(check(H5Dget_space(ds), file, full, "getting the dataspace"));
  check(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(),
                            nullptr),
        file, full, "selecting a block");
  h5::Space mspace(check(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr),
                         file, full, "creating the memory dataspace"));
  if (cells_of(count) == 0) return;
  if (write)
    check(H5Dwrite(ds, H5T_NATIVE_INT64, mspace.get(), fspace.get(), H5P_DEFAULT, data), file, full,
          "writing a block");
  else
    check(H5Dread(ds, H5T_NATIVE_INT64, mspace.get(), fspace.get(), H5P_DEFAULT, data), file, full,
          "reading a block");
}

h5::Group open_or_create_group(hid_t root, std::string_view file, const char* name) {
  const std::string full = std::string("/") + name;
  return h5::Group(link_exists(root, name)
                       ? check(H5Gopen2(root, name, H5P_DEFAULT), file, full, "opening the group")
                       : check(H5Gcreate2(root, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), file,
                               full, "creating the group"));
}

void set_int_attr(hid_t loc, std::string_view file, std::string_view owner, const char* name,
                  std::int64_t v) {
  if (H5Aexists(loc, name) > 0)
    overwrite_scalar_attr<std::int64_t>(loc, file, owner, name, v);
  else
    write_scalar_attr<std::int64_t>(loc, file, owner, name, v);
}

const char* const kTotalSlot[2] = {"total_0", "total_1"};
constexpr const char* kTotalDescription =
    "tokens dispatched from rank r (row) to rank s (column), summed over the steps [first_step, "
    "through_step) (attributes: the whole run unless a resume could not continue the sum); the "
    "run keeps two alternating slots /traffic/total_0 and total_1, the one with the larger "
    "through_step is the newest (through_step -1: an update was interrupted); "
    "/summary/traffic_tokens is a link to the newest";
}  // namespace

// ======================= ResultWriter =======================

struct ResultWriter::Impl {
  std::string path;
  RunMetadata meta;
  std::array<hsize_t, 2> load_tail{};    // {L, E}
  hsize_t step_rows = 0, eval_rows = 0;  // rows so far (on disk + buffered)
  hsize_t loads_rows = 0;                // /loads samples so far
  hsize_t step_rows_disk = 0;
  std::int64_t last_step = -1;
  std::map<std::string, Pending> pending;  // "steps/loss" -> buffered rows
  // The current attempt: its /attempts row index and progress.
  hsize_t attempt_row = 0;
  bool attempt_open = false;
  AttemptInfo attempt;
  std::string attempt_end = "running";
  double attempt_wall = 0;
  std::int64_t attempt_last_step = 0;
  std::int64_t rss_rank0 = 0, rss_median = 0, rss_max = 0;
  bool finished = false;
  // Streamed traffic matrices (traffic_begin .. traffic_end).
  h5::File stream_file;
  bool streaming = false;
  Traffic stream_kind = Traffic::sample;
  std::int64_t stream_step = 0;
  hsize_t stream_ranks = 0, stream_width = 0;
  hsize_t traffic_samples = 0;        // /traffic/tokens rows so far
  int total_base = -1;                // slot holding the running sum (-1: none yet)
  hsize_t total_base_width = 0;       // its [W, W]
  std::int64_t total_first_step = 0;  // first step the running sum covers
  std::vector<std::int64_t> stream_buf, base_buf;

  void require_open(const char* what) const {
    if (finished)
      throw std::logic_error("ResultWriter::" + std::string(what) + ": result file '" + path +
                             "' was already finished");
  }

  template <class T>
  Pending& column(const std::string& key, std::vector<hsize_t> tail, const char* description,
                  const char* units = nullptr, bool rank_axes = false, bool fill = false) {
    Pending& p = pending[key];
    if (p.elem == 0) {
      p.file_type = Elem<T>::file();
      p.mem_type = Elem<T>::mem();
      p.elem = sizeof(T);
      p.description = description;
      p.units = units ? units : "";
      p.rank_axes = rank_axes;
      p.fill_negative = fill;
      p.tail = std::move(tail);
    } else if (p.tail != tail) {
      throw std::runtime_error("result file '" + path + "': " + key + " row has shape " +
                               shape_text(tail) + "; earlier rows " + shape_text(p.tail));
    }
    return p;
  }
  template <class T>
  void add(const std::string& key, hsize_t row, std::span<const T> values,
           std::vector<hsize_t> tail, const char* description, const char* units = nullptr,
           bool rank_axes = false, bool fill = false) {
    if (values.size() != cells_of(tail))
      throw std::runtime_error("result file '" + path + "': " + key + " row has " +
                               std::to_string(values.size()) + " values; expected " +
                               std::to_string(cells_of(tail)) + " " + shape_text(tail));
    push(column<T>(key, std::move(tail), description, units, rank_axes, fill), row, values);
  }

  h5::File open_rw() const {
    h5::Plist fapl = make_create_fapl(path);
    return h5::File(check(H5Fopen(path.c_str(), H5F_ACC_RDWR, fapl.get()), path, "/",
                          "opening the result file for writing"));
  }

  void write_attempt_row(hid_t root) {
    if (!attempt_open) return;
    const hsize_t r = attempt_row;
    auto put_i64 = [&](const char* name, std::int64_t v, const char* d) {
      Pending p;
      p.file_type = Elem<std::int64_t>::file();
      p.mem_type = Elem<std::int64_t>::mem();
      p.elem = sizeof(std::int64_t);
      p.description = d;
      push(p, r, std::span<const std::int64_t>(&v, 1));
      write_pending(root, path, std::string("attempts/") + name, p);
    };
    auto put_f64 = [&](const char* name, double v, const char* d, const char* u) {
      Pending p;
      p.file_type = Elem<double>::file();
      p.mem_type = Elem<double>::mem();
      p.elem = sizeof(double);
      p.description = d;
      p.units = u;
      push(p, r, std::span<const double>(&v, 1));
      write_pending(root, path, std::string("attempts/") + name, p);
    };
    h5::Type str(check(H5Tcopy(H5T_C_S1), path, "/attempts", "copying the string type"));
    check(H5Tset_size(str.get(), kTextCell), path, "/attempts", "sizing the string type");
    check(H5Tset_strpad(str.get(), H5T_STR_NULLTERM), path, "/attempts", "string padding");
    auto put_text = [&](const char* name, const std::string& v, const char* d) {
      Pending p;
      p.file_type = p.mem_type = str.get();
      p.elem = kTextCell;
      p.description = d;
      const std::array<char, kTextCell> cell = text_cell(v);
      push(p, r, std::span<const char>(cell.data(), cell.size()));
      write_pending(root, path, std::string("attempts/") + name, p);
    };
    put_text("job_id", attempt.job_id, "Slurm job id of the attempt (\"\" outside Slurm)");
    put_text("start_utc", attempt.start_utc, "when the attempt started (UTC, ISO 8601)");
    put_i64("first_step", attempt.first_step, "step the attempt started from");
    put_i64("last_step", attempt_last_step,
            "steps completed when the attempt last wrote its rows (its end, unless killed)");
    put_i64("ranks", attempt.ranks, "MPI ranks of the attempt");
    put_f64("wall_seconds", attempt_wall, "wall time of the attempt so far", "s");
    put_i64("peak_rss_rank0", rss_rank0,
            "peak resident set size of rank 0 in bytes (0: the attempt did not report it)");
    put_i64("peak_rss_median", rss_median,
            "median over the ranks of their peak resident set size, bytes (0: not reported)");
    put_i64("peak_rss_max", rss_max,
            "largest peak resident set size of any rank, bytes (0: not reported)");
    put_text("end", attempt_end,
             "how the attempt ended: complete, preempted, cancelled, diverged, failed, or running "
             "(still running, or killed without a chance to say so) / interrupted (found running "
             "by a later attempt)");
  }

  void flush_now() {
    h5::ErrorSilencer quiet;
    h5::File file = open_rw();
    const hid_t root = file.get();
    // /steps/step last: probe_result_file and resume count rows by it, so after a crash inside
    // this loop it is never ahead of the other columns.
    for (auto& [key, p] : pending)
      if (key != "steps/step") write_pending(root, path, key, p);
    if (auto it = pending.find("steps/step"); it != pending.end())
      write_pending(root, path, it->first, it->second);
    write_attempt_row(root);
    step_rows_disk = step_rows;
    check(file.close(), path, "/", "closing the result file (flush)");
  }
};

namespace {
// The datasets every result file has from the start (outputs.md), so that a file of a run
// killed before its first flush still shows the layout.
void create_skeleton(hid_t root, std::string_view f, std::array<hsize_t, 2> load_tail) {
  h5::Group steps = create_group(root, f, "/steps", "steps");
  const std::span<const hsize_t> scalar_row{};
  (void)create_extendible(steps.get(), f, "/steps", "step", Elem<std::int64_t>::file(), scalar_row,
                          kRowChunk, "step index");
  for (const auto& field : kStepF64)
    (void)create_extendible(steps.get(), f, "/steps", field.name, Elem<double>::file(), scalar_row,
                            kRowChunk, field.description, field.units);
  (void)create_extendible(steps.get(), f, "/steps", "bytes_alltoall", Elem<std::int64_t>::file(),
                          scalar_row, kRowChunk,
                          "bytes sent through all-to-all by all ranks in the step", "bytes");
  (void)create_extendible(steps.get(), f, "/steps", "ranks", Elem<std::int64_t>::file(), scalar_row,
                          kRowChunk,
                          "MPI ranks the step ran on (changes when a run resumes on "
                          "another rank count)");
  const hsize_t row_bytes = load_tail[0] * load_tail[1] * sizeof(std::int64_t);
  const hsize_t load_chunk_rows = std::clamp<hsize_t>(kMaxChunkBytes / row_bytes, 1, 16);
  (void)create_extendible(
      steps.get(), f, "/steps", "expert_load", Elem<std::int64_t>::file(), load_tail,
      load_chunk_rows,
      "assignments routed to each expert before capacity [step, MoE layer, expert]");
  (void)create_extendible(steps.get(), f, "/steps", "expert_kept", Elem<std::int64_t>::file(),
                          load_tail, load_chunk_rows,
                          "assignments kept after capacity [step, MoE layer, expert]");
  h5::Group eval = create_group(root, f, "/eval", "eval");
  (void)create_extendible(eval.get(), f, "/eval", "step", Elem<std::int64_t>::file(), scalar_row,
                          kRowChunk, "training step after which the evaluation ran");
  for (const auto& field : kEvalF64)
    (void)create_extendible(eval.get(), f, "/eval", field.name, Elem<double>::file(), scalar_row,
                            kRowChunk, field.description);
  (void)create_group(root, f, "/attempts", "attempts");
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
  // HDF5 chunks are limited to 4 GiB; a [1, L, E] chunk beyond that would be a config error.
  if (L > std::numeric_limits<std::uint32_t>::max() / E / sizeof(std::int64_t)) {
    throw std::runtime_error("result file '" + path +
                             "': layers x num_experts = " + std::to_string(L) + " x " +
                             std::to_string(E) + " is too large for one HDF5 chunk per step");
  }
  h5::ErrorSilencer quiet;
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->meta = meta;
  impl->load_tail = {L, E};
  const std::string_view f = impl->path;
  h5::Plist fapl = make_create_fapl(f);
  h5::File file(check(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), f, "/",
                      "creating the result file"));
  const hid_t root = file.get();
  write_string_attr(root, f, "/", "schema_version", kSchemaVersion);
  write_string_attr(root, f, "/", "moesim_version", meta.moesim_version);
  write_string_attr(root, f, "/", "git_commit", meta.git_commit);
  write_string_attr(root, f, "/", "config", meta.config_ini);
  write_string_attr(root, f, "/", "created_utc", meta.created_utc);
  write_string_attr(root, f, "/", "slurm_job_id", meta.slurm_job_id);
  write_scalar_attr<std::int64_t>(root, f, "/", "ranks", meta.ranks);
  write_scalar_attr<std::int64_t>(root, f, "/", "nodes", meta.nodes);
  write_scalar_attr<std::uint64_t>(root, f, "/", "seed", meta.seed);
  write_scalar_attr<std::int64_t>(root, f, "/", "complete", 0);
  create_skeleton(root, f, impl->load_tail);
  check(file.close(), f, "/", "closing the new result file");
  impl_ = std::move(impl);
}

ResultWriter::ResultWriter(const std::string& path, const RunMetadata& meta,
                           std::int64_t resume_step) {
  h5::ErrorSilencer quiet;
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->meta = meta;
  impl->load_tail = {static_cast<hsize_t>(meta.layers), static_cast<hsize_t>(meta.num_experts)};
  const std::string_view f = impl->path;
  h5::File file = impl->open_rw();
  const hid_t root = file.get();
  {  // the load datasets must have this run's [L, E]
    h5::Dataset ds(check(H5Dopen2(root, "/steps/expert_load", H5P_DEFAULT), f, "/steps/expert_load",
                         "opening the dataset (resume)"));
    const std::vector<hsize_t> dims = extent(ds.get(), f, "/steps/expert_load");
    if (dims.size() != 3 || dims[1] != impl->load_tail[0] || dims[2] != impl->load_tail[1])
      throw std::runtime_error(
          "result file '" + path + "' cannot be resumed: its expert_load is not [S, " +
          std::to_string(meta.layers) + ", " + std::to_string(meta.num_experts) + "]");
  }
  const std::vector<std::int64_t> steps = read_all<std::int64_t>(root, f, "/steps/step");
  const std::vector<std::int64_t> evals = read_all<std::int64_t>(root, f, "/eval/step");
  hsize_t keep_steps = 0, keep_evals = 0;
  while (keep_steps < steps.size() && steps[keep_steps] < resume_step) ++keep_steps;
  while (keep_evals < evals.size() && evals[keep_evals] <= resume_step) ++keep_evals;
  for (hsize_t i = 0; i < keep_steps; ++i)
    if (steps[i] != static_cast<std::int64_t>(i))
      throw ResumeGap("result file '" + path + "' has step " + std::to_string(steps[i]) +
                      " in row " + std::to_string(i) + ": its rows are not the steps 0, 1, ...");
  if (keep_steps != static_cast<hsize_t>(resume_step))
    throw ResumeGap("result file '" + path + "' has rows for steps 0.." +
                    std::to_string(static_cast<std::int64_t>(keep_steps) - 1) +
                    " only, but the checkpoint continues after step " +
                    std::to_string(resume_step - 1) + ": resuming would leave steps without rows");
  {
    h5::Group g(check(H5Gopen2(root, "steps", H5P_DEFAULT), f, "/steps", "opening the group"));
    for (const std::string& name : children(g.get()))
      resize_rows(root, f, "/steps/" + name, keep_steps);
  }
  {
    h5::Group g(check(H5Gopen2(root, "eval", H5P_DEFAULT), f, "/eval", "opening the group"));
    for (const std::string& name : children(g.get()))
      resize_rows(root, f, "/eval/" + name, keep_evals);
  }
  if (link_exists(root, "loads")) {  // sampled loads: keep the samples of steps before it
    const std::vector<std::int64_t> sampled = read_all<std::int64_t>(root, f, "/loads/step");
    hsize_t keep = 0;
    while (keep < sampled.size() && sampled[keep] < resume_step) ++keep;
    h5::Group g(check(H5Gopen2(root, "loads", H5P_DEFAULT), f, "/loads", "opening the group"));
    for (const std::string& name : children(g.get())) resize_rows(root, f, "/loads/" + name, keep);
    impl->loads_rows = keep;
  }
  impl->total_first_step = resume_step;
  if (link_exists(root, "traffic")) {
    // Sampled matrices: keep the samples of steps before it (like /loads).
    if (link_exists(root, "/traffic/step")) {
      const std::vector<std::int64_t> sampled = read_all<std::int64_t>(root, f, "/traffic/step");
      hsize_t keep = 0;
      while (keep < sampled.size() && sampled[keep] < resume_step) ++keep;
      resize_rows(root, f, "/traffic/step", keep);
      if (link_exists(root, "/traffic/tokens")) resize_rows(root, f, "/traffic/tokens", keep);
      impl->traffic_samples = keep;
    }
    // The running sum continues from the slot that covers exactly the steps before it.
    h5::Group g(check(H5Gopen2(root, "traffic", H5P_DEFAULT), f, "/traffic", "opening the group"));
    for (int i = 0; i < 2; ++i) {
      if (!link_exists(g.get(), kTotalSlot[i])) continue;
      h5::Dataset ds(check(H5Dopen2(g.get(), kTotalSlot[i], H5P_DEFAULT), f, "/traffic",
                           "opening the running traffic sum"));
      if (H5Aexists(ds.get(), "through_step") <= 0 ||
          read_int_attr(ds.get(), f, "through_step") != resume_step)
        continue;
      impl->total_base = i;
      impl->total_first_step = read_int_attr(ds.get(), f, "first_step");
      impl->total_base_width = extent(ds.get(), f, "/traffic")[0];
    }
  }
  if (!link_exists(root, "attempts")) (void)create_group(root, f, "/attempts", "attempts");
  {  // an attempt still marked "running" was killed without a chance to say so
    std::vector<hsize_t> dims;
    if (link_exists(root, "/attempts/end")) {
      h5::Dataset ds(check(H5Dopen2(root, "/attempts/end", H5P_DEFAULT), f, "/attempts/end",
                           "opening the dataset"));
      dims = extent(ds.get(), f, "/attempts/end");
      if (!dims.empty() && dims[0] > 0) {
        h5::Type str(check(H5Dget_type(ds.get()), f, "/attempts/end", "type"));
        std::vector<char> cells(dims[0] * kTextCell);
        check(H5Dread(ds.get(), str.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, cells.data()), f,
              "/attempts/end", "reading");
        for (hsize_t r = 0; r < dims[0]; ++r)
          if (std::strncmp(cells.data() + r * kTextCell, "running", kTextCell) == 0) {
            const std::array<char, kTextCell> c = text_cell("interrupted");
            std::copy(c.begin(), c.end(),
                      cells.begin() + static_cast<std::ptrdiff_t>(r * kTextCell));
          }
        check(H5Dwrite(ds.get(), str.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, cells.data()), f,
              "/attempts/end", "writing");
      }
      impl->attempt_row = dims.empty() ? 0 : dims[0];
    }
  }
  overwrite_scalar_attr<std::int64_t>(root, f, "/", "complete", 0);
  overwrite_scalar_attr<std::int64_t>(root, f, "/", "ranks", meta.ranks);
  if (H5Aexists(root, "nodes") > 0)
    overwrite_scalar_attr<std::int64_t>(root, f, "/", "nodes", meta.nodes);
  else
    write_scalar_attr<std::int64_t>(root, f, "/", "nodes", meta.nodes);
  if (link_exists(root, "summary"))  // written again by finish()
    check(H5Ldelete(root, "summary", H5P_DEFAULT), f, "/summary", "removing the old summary");
  if (H5Aexists(root, "incomplete_reason") > 0)
    check(H5Adelete(root, "incomplete_reason"), f, "/", "removing the old incomplete_reason");
  check(file.close(), f, "/", "closing the result file (resume)");
  impl->step_rows = impl->step_rows_disk = keep_steps;
  impl->eval_rows = keep_evals;
  impl->last_step = resume_step - 1;
  impl_ = std::move(impl);
}

ResultWriter::~ResultWriter() = default;  // the file is closed between flushes

void ResultWriter::begin_attempt(const AttemptInfo& attempt) {
  Impl& m = *impl_;
  m.require_open("begin_attempt");
  m.attempt = attempt;
  m.attempt_open = true;
  m.attempt_end = "running";
  m.attempt_last_step = attempt.first_step;
  m.flush_now();
}

void ResultWriter::set_attempt_memory(std::int64_t rank0, std::int64_t median, std::int64_t max) {
  Impl& m = *impl_;
  m.require_open("set_attempt_memory");
  m.rss_rank0 = rank0;
  m.rss_median = median;
  m.rss_max = max;
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
  const hsize_t L = m.load_tail[0], E = m.load_tail[1];
  const auto P = static_cast<hsize_t>(m.meta.ranks);
  // Every size is checked before any column takes a value: a rejected record leaves no row.
  auto require_size = [&](const char* what, std::size_t n, hsize_t want) {
    if (n != 0 && n != want)
      throw std::runtime_error("result file '" + m.path + "': step " + std::to_string(rec.step) +
                               " " + what + " row has " + std::to_string(n) + " values; expected " +
                               std::to_string(want));
  };
  require_size("load_imbalance", rec.load_imbalance.size(), L);
  require_size("tokens_sent", rec.tokens_sent.size(), P);
  require_size("base_epsilon", rec.base_epsilon.size(), L);
  require_size("rank_rows", rec.rank_rows.size(), L * P);
  const hsize_t row = m.step_rows;
  auto one_i64 = [](const std::int64_t& v) { return std::span<const std::int64_t>(&v, 1); };
  m.add<std::int64_t>("steps/step", row, one_i64(rec.step), {}, "step index");
  for (const auto& field : kStepF64)
    m.add<double>(std::string("steps/") + field.name, row,
                  std::span<const double>(&(rec.*(field.member)), 1), {}, field.description,
                  field.units);
  m.add<std::int64_t>("steps/bytes_alltoall", row, one_i64(rec.bytes_alltoall), {},
                      "bytes sent through all-to-all by all ranks in the step", "bytes");
  m.add<std::int64_t>("steps/bytes_inter_node", row, one_i64(rec.bytes_inter_node), {},
                      "bytes of bytes_alltoall that crossed a node boundary, all ranks", "bytes",
                      false, true);
  m.add<std::int64_t>("steps/bytes_intra_node", row, one_i64(rec.bytes_intra_node), {},
                      "bytes of bytes_alltoall that stayed on a node (incl. a rank to itself), "
                      "all ranks",
                      "bytes", false, true);
  m.add<std::int64_t>("steps/ranks", row, one_i64(m.meta.ranks), {}, "MPI ranks the step ran on");
  m.add<std::int64_t>("steps/expert_load", row, std::span<const std::int64_t>(rec.expert_load),
                      {L, E}, "assignments routed to each expert before capacity");
  m.add<std::int64_t>("steps/expert_kept", row, std::span<const std::int64_t>(rec.expert_kept),
                      {L, E}, "assignments kept after capacity");
  if (!rec.load_imbalance.empty())
    m.add<double>("steps/load_imbalance", row, std::span<const double>(rec.load_imbalance), {L},
                  "max / mean of expert_load over the experts of each MoE layer [step, layer]",
                  nullptr, false, true);
  if (!rec.tokens_sent.empty())
    m.add<std::int64_t>("steps/tokens_sent", row, std::span<const std::int64_t>(rec.tokens_sent),
                        {P},
                        "token rows each rank dispatched in the step, all layers, to every rank "
                        "including itself [step, rank]; -1: a rank the step did not have",
                        nullptr, true, true);
  if (!rec.rank_rows.empty())
    m.add<std::int64_t>("steps/rank_rows", row, std::span<const std::int64_t>(rec.rank_rows),
                        {L, P},
                        "rows (token-expert assignments) each rank's routed experts computed in "
                        "the step's forward [step, layer, rank]; -1: a rank the step did not have",
                        nullptr, true, true);
  if (!rec.base_epsilon.empty())
    m.add<double>("steps/base_epsilon", row, std::span<const double>(rec.base_epsilon), {L},
                  "routing.rule = base: final auction epsilon, largest over the layer's groups "
                  "(the assignment total is within group_size * epsilon of the optimum) "
                  "[step, layer]",
                  nullptr, false, true);
  if (!rec.loads_routed.empty()) {
    // /loads/{step, group_size}: [T]; /loads/{routed, kept}: [T, L, G, E] (output.loads_every).
    const auto G = static_cast<hsize_t>(rec.loads_groups);
    const hsize_t lrow = m.loads_rows;
    m.add<std::int64_t>("loads/step", lrow, one_i64(rec.step), {},
                        "training step of each loads sample");
    m.add<std::int64_t>("loads/group_size", lrow, one_i64(rec.loads_group_size), {},
                        "tokens per routing group of each loads sample");
    m.add<std::int64_t>("loads/routed", lrow, std::span<const std::int64_t>(rec.loads_routed),
                        {L, G, E},
                        "assignments routed to each expert per routing group, before capacity "
                        "[sample, layer, group, expert]; -1: a group the sample's run did not have "
                        "(a resume on another rank count with routing.group_size = 0)",
                        nullptr, true, true);
    m.add<std::int64_t>("loads/kept", lrow, std::span<const std::int64_t>(rec.loads_kept),
                        {L, G, E}, "assignments kept after capacity [sample, layer, group, expert]",
                        nullptr, true, true);
    m.loads_rows = lrow + 1;
  }
  m.step_rows = row + 1;
  m.last_step = rec.step;
  m.attempt_last_step = rec.step + 1;
}

void ResultWriter::append_eval(const EvalRecord& rec) {
  Impl& m = *impl_;
  m.require_open("append_eval");
  const hsize_t row = m.eval_rows;
  m.add<std::int64_t>("eval/step", row, std::span<const std::int64_t>(&rec.step, 1), {},
                      "training step after which the evaluation ran");
  for (const auto& field : kEvalF64)
    m.add<double>(std::string("eval/") + field.name, row,
                  std::span<const double>(&(rec.*(field.member)), 1), {}, field.description);
  const hsize_t L = m.load_tail[0], E = m.load_tail[1];
  if (!rec.specialization.empty())
    m.add<double>("eval/specialization", row, std::span<const double>(rec.specialization), {L},
                  "mean over clusters of the share of a cluster's tokens on its most frequent "
                  "first-choice expert [eval, layer]",
                  nullptr, false, true);
  if (!rec.cluster_expert_mi.empty())
    m.add<double>("eval/cluster_expert_mi", row, std::span<const double>(rec.cluster_expert_mi),
                  {L},
                  "mutual information (nats) between a token's cluster and its first-choice "
                  "expert [eval, layer]",
                  nullptr, false, true);
  if (!rec.cluster_expert.empty())
    m.add<std::int64_t>(
        "eval/cluster_expert", row, std::span<const std::int64_t>(rec.cluster_expert),
        {L, static_cast<hsize_t>(m.meta.num_clusters), E},
        "first-choice assignments of held-out tokens [eval, layer, cluster, expert]", nullptr,
        false, true);
  m.eval_rows = row + 1;
}

void ResultWriter::flush() {
  impl_->require_open("flush");
  impl_->flush_now();
}

void ResultWriter::end_attempt(const std::string& end, double wall_seconds) {
  Impl& m = *impl_;
  m.require_open("end_attempt");
  m.attempt_end = end;
  m.attempt_wall = wall_seconds;
  m.flush_now();
  m.attempt_open = false;
  ++m.attempt_row;
}

void ResultWriter::mark_incomplete(const std::string& reason) {
  Impl& m = *impl_;
  m.require_open("mark_incomplete");
  h5::ErrorSilencer quiet;
  h5::File file = m.open_rw();
  replace_string_attr(file.get(), m.path, "incomplete_reason", reason);
  check(file.close(), m.path, "/", "closing the result file");
}

std::int64_t ResultWriter::rows_written() const {
  return static_cast<std::int64_t>(impl_->step_rows_disk);
}

ResultWriter::Summary ResultWriter::finish() {
  Impl& m = *impl_;
  m.require_open("finish");
  m.flush_now();
  h5::ErrorSilencer quiet;
  const std::string_view f = m.path;
  h5::File file = m.open_rw();
  const hid_t root = file.get();
  // The summary describes the whole run, every attempt: it is computed from the file's rows.
  const std::vector<double> t = read_all<double>(root, f, "/steps/time_step");
  const std::vector<double> dropped = read_all<double>(root, f, "/steps/dropped_fraction");
  const std::vector<double> wall = read_all<double>(root, f, "/attempts/wall_seconds");
  const std::vector<double> loss = read_all<double>(root, f, "/steps/loss");
  double train_seconds = 0, dsum = 0, wall_seconds = 0;
  for (double v : t) train_seconds += v;
  for (double v : dropped) dsum += v;
  for (double v : wall) wall_seconds += v;
  const auto steps = static_cast<double>(t.size());
  Summary sum;
  sum.tokens_per_second =
      train_seconds > 0 ? static_cast<double>(m.meta.tokens_per_step) * steps / train_seconds : 0.0;
  sum.step_time_median = median_of(t);
  sum.dropped_fraction_mean = t.empty() ? 0.0 : dsum / steps;
  sum.train_seconds = train_seconds;
  sum.wall_seconds = wall_seconds;
  sum.steps = static_cast<std::int64_t>(t.size());
  sum.attempts = static_cast<std::int64_t>(wall.size());
  sum.first_loss = loss.empty() ? 0.0 : loss.front();
  sum.last_loss = loss.empty() ? 0.0 : loss.back();
  const std::vector<double> acc = read_all<double>(root, f, "/eval/accuracy");
  const std::vector<double> f1 = read_all<double>(root, f, "/eval/macro_f1");
  sum.eval_accuracy = acc.empty() ? 0.0 : acc.back();
  sum.eval_macro_f1 = f1.empty() ? 0.0 : f1.back();
  {
    h5::Group group = create_group(root, f, "/summary", "summary");
    const hid_t g = group.get();
    write_scalar_attr<double>(g, f, "/summary", "tokens_per_second", sum.tokens_per_second);
    write_scalar_attr<double>(g, f, "/summary", "step_time_median", sum.step_time_median);
    write_scalar_attr<double>(g, f, "/summary", "dropped_fraction_mean", sum.dropped_fraction_mean);
    write_scalar_attr<double>(g, f, "/summary", "train_seconds", train_seconds);
    write_scalar_attr<double>(g, f, "/summary", "wall_seconds", wall_seconds);
    write_scalar_attr<std::int64_t>(g, f, "/summary", "steps", static_cast<std::int64_t>(t.size()));
    write_scalar_attr<std::int64_t>(g, f, "/summary", "attempts",
                                    static_cast<std::int64_t>(wall.size()));
    write_scalar_attr<std::int64_t>(g, f, "/summary", "ranks", m.meta.ranks);
    write_string_attr(g, f, "/summary", "scope",
                      "every step of every attempt: tokens_per_second = tokens_per_step * steps / "
                      "train_seconds (sum of /steps/time_step); step_time_median over "
                      "/steps/time_step; wall_seconds sums /attempts/wall_seconds");
    // traffic_tokens [W, W]: the newest running sum itself (a hard link to its slot, so the
    // file holds no third P x P copy); its attributes first_step / through_step say which
    // steps it covers. Without any (a run of zero steps): zeros [P, P].
    if (m.total_base >= 0) {
      const std::string slot = std::string("/traffic/") + kTotalSlot[m.total_base];
      check(H5Lcreate_hard(root, slot.c_str(), g, "traffic_tokens", H5P_DEFAULT, H5P_DEFAULT), f,
            "/summary/traffic_tokens", "linking the run's traffic sum");
    } else {
      const auto P = static_cast<hsize_t>(m.meta.ranks);
      const std::array<hsize_t, 2> dims{P, P};
      write_array(g, f, "/summary", "traffic_tokens", dims, std::vector<std::int64_t>(P * P, 0),
                  "tokens sent from rank r (row) to rank s (column), summed over the run");
      h5::Dataset out(check(H5Dopen2(g, "traffic_tokens", H5P_DEFAULT), f,
                            "/summary/traffic_tokens", "opening the dataset"));
      write_scalar_attr<std::int64_t>(out.get(), f, "/summary/traffic_tokens", "first_step",
                                      m.total_first_step);
      write_scalar_attr<std::int64_t>(out.get(), f, "/summary/traffic_tokens", "through_step",
                                      m.total_first_step);
    }
  }
  {  // routing.rule = base: the largest final auction epsilon of the whole run
    const std::vector<double> eps = read_all<double>(root, f, "/steps/base_epsilon");
    double largest = -1;
    for (double e : eps)
      if (std::isfinite(e)) largest = std::max(largest, e);
    if (largest >= 0) {
      if (H5Aexists(root, "base_epsilon") > 0)
        overwrite_scalar_attr<double>(root, f, "/", "base_epsilon", largest);
      else
        write_scalar_attr<double>(root, f, "/", "base_epsilon", largest);
    }
  }
  // Everything else reaches the disk before `complete` says so: a crash between the two
  // flushes leaves a full file that still reads as incomplete, never the reverse.
  check(H5Fflush(root, H5F_SCOPE_LOCAL), f, "/", "flushing the result file");
  overwrite_scalar_attr<std::int64_t>(root, f, "/", "complete", 1);
  m.finished = true;
  check(file.close(), f, "/", "closing the result file");
  return sum;
}

void ResultWriter::traffic_begin(Traffic kind, std::int64_t step, std::int64_t ranks) {
  Impl& m = *impl_;
  m.require_open("traffic_begin");
  if (m.streaming) throw std::logic_error("ResultWriter::traffic_begin: a stream is open");
  h5::ErrorSilencer quiet;
  const std::string_view f = m.path;
  m.stream_file = m.open_rw();
  m.streaming = true;
  m.stream_kind = kind;
  m.stream_step = step;
  m.stream_ranks = static_cast<hsize_t>(ranks);
  try {
    const hid_t root = m.stream_file.get();
    h5::Group g = open_or_create_group(root, f, "traffic");
    if (kind == Traffic::sample) {
      if (!link_exists(g.get(), "step")) {
        const std::span<const hsize_t> scalar_row{};
        (void)create_extendible(g.get(), f, "/traffic", "step", Elem<std::int64_t>::file(),
                                scalar_row, kRowChunk, "training step of each sampled matrix");
      }
      h5::Dataset ds =
          link_exists(g.get(), "tokens")
              ? h5::Dataset(check(H5Dopen2(g.get(), "tokens", H5P_DEFAULT), f, "/traffic/tokens",
                                  "opening the dataset"))
              : create_matrix(g.get(), f, "/traffic/tokens", "tokens", m.stream_ranks, true,
                              "tokens dispatched from rank r (row) to rank s (column) "
                              "in the sampled step, all layers [sample, r, s] "
                              "(output.traffic_every); -1: a rank the step did not "
                              "have");
      std::vector<hsize_t> dims = extent(ds.get(), f, "/traffic/tokens");
      m.stream_width = std::max(dims[1], m.stream_ranks);
      dims = {m.traffic_samples + 1, m.stream_width, m.stream_width};
      check(H5Dset_extent(ds.get(), dims.data()), f, "/traffic/tokens", "extending the dataset");
    } else {
      const int target = m.total_base == 0 ? 1 : 0;
      const std::string full = std::string("/traffic/") + kTotalSlot[target];
      m.stream_width = std::max(m.total_base_width, m.stream_ranks);
      h5::Dataset ds = link_exists(g.get(), kTotalSlot[target])
                           ? h5::Dataset(check(H5Dopen2(g.get(), kTotalSlot[target], H5P_DEFAULT),
                                               f, full, "opening the dataset"))
                           : create_matrix(g.get(), f, full, kTotalSlot[target], m.stream_width,
                                           false, kTotalDescription);
      const std::vector<hsize_t> dims{m.stream_width, m.stream_width};
      check(H5Dset_extent(ds.get(), dims.data()), f, full, "sizing the running sum");
      // Invalid until traffic_end: a kill in between leaves the other slot as the newest.
      set_int_attr(ds.get(), f, full, "through_step", -1);
      set_int_attr(ds.get(), f, full, "first_step", m.total_first_step);
      check(H5Fflush(root, H5F_SCOPE_LOCAL), f, "/", "flushing the result file");
    }
  } catch (...) {
    m.stream_file = h5::File{};
    m.streaming = false;
    throw;
  }
}

void ResultWriter::traffic_rows(std::int64_t first_rank, std::int64_t count,
                                std::span<const std::int64_t> rows) {
  Impl& m = *impl_;
  if (!m.streaming) throw std::logic_error("ResultWriter::traffic_rows: no stream is open");
  h5::ErrorSilencer quiet;
  const std::string_view f = m.path;
  const auto first = static_cast<hsize_t>(first_rank), n = static_cast<hsize_t>(count);
  const hsize_t P = m.stream_ranks, W = m.stream_width;
  if (rows.size() != n * P || first + n > P)
    throw std::logic_error("ResultWriter::traffic_rows: rows [" + std::to_string(first) + ", " +
                           std::to_string(first + n) + ") of " + std::to_string(rows.size()) +
                           " values for " + std::to_string(P) + " ranks");
  try {
    const hid_t root = m.stream_file.get();
    if (m.stream_kind == Traffic::sample) {
      h5::Dataset ds(check(H5Dopen2(root, "/traffic/tokens", H5P_DEFAULT), f, "/traffic/tokens",
                           "opening the dataset"));
      m.stream_buf.assign(rows.begin(), rows.end());
      slab_io(ds.get(), f, "/traffic/tokens", {m.traffic_samples, first, 0}, {1, n, P},
              m.stream_buf.data(), true);
      return;
    }
    const int target = m.total_base == 0 ? 1 : 0;
    const std::string full = std::string("/traffic/") + kTotalSlot[target];
    m.stream_buf.assign(n * W, 0);
    for (hsize_t i = 0; i < n; ++i)
      std::copy_n(rows.begin() + static_cast<std::ptrdiff_t>(i * P), P,
                  m.stream_buf.begin() + static_cast<std::ptrdiff_t>(i * W));
    const hsize_t Wb = m.total_base_width;
    if (m.total_base >= 0 && first < Wb) {  // add the running sum so far
      const hsize_t nb = std::min(n, Wb - first);
      const std::string base = std::string("/traffic/") + kTotalSlot[m.total_base];
      h5::Dataset in(
          check(H5Dopen2(root, base.c_str(), H5P_DEFAULT), f, base, "opening the running sum"));
      m.base_buf.resize(nb * Wb);
      slab_io(in.get(), f, base, {first, 0}, {nb, Wb}, m.base_buf.data(), false);
      for (hsize_t i = 0; i < nb; ++i)
        for (hsize_t j = 0; j < Wb; ++j) m.stream_buf[i * W + j] += m.base_buf[i * Wb + j];
    }
    h5::Dataset out(
        check(H5Dopen2(root, full.c_str(), H5P_DEFAULT), f, full, "opening the running sum"));
    slab_io(out.get(), f, full, {first, 0}, {n, W}, m.stream_buf.data(), true);
  } catch (...) {
    m.stream_file = h5::File{};
    m.streaming = false;
    throw;
  }
}

void ResultWriter::traffic_end() {
  Impl& m = *impl_;
  if (!m.streaming) throw std::logic_error("ResultWriter::traffic_end: no stream is open");
  h5::ErrorSilencer quiet;
  const std::string_view f = m.path;
  try {
    const hid_t root = m.stream_file.get();
    if (m.stream_kind == Traffic::sample) {
      h5::Dataset ds(check(H5Dopen2(root, "/traffic/step", H5P_DEFAULT), f, "/traffic/step",
                           "opening the dataset"));
      std::vector<hsize_t> dims{m.traffic_samples + 1};
      check(H5Dset_extent(ds.get(), dims.data()), f, "/traffic/step", "extending the dataset");
      std::int64_t step = m.stream_step;
      slab_io(ds.get(), f, "/traffic/step", {m.traffic_samples}, {1}, &step, true);
      ++m.traffic_samples;
    } else {
      const int target = m.total_base == 0 ? 1 : 0;
      const std::string full = std::string("/traffic/") + kTotalSlot[target];
      h5::Dataset out(
          check(H5Dopen2(root, full.c_str(), H5P_DEFAULT), f, full, "opening the running sum"));
      const hsize_t P = m.stream_ranks, W = m.stream_width, Wb = m.total_base_width;
      if (m.total_base >= 0 && Wb > P) {  // ranks of an earlier attempt that this one lacks
        const std::string base = std::string("/traffic/") + kTotalSlot[m.total_base];
        h5::Dataset in(
            check(H5Dopen2(root, base.c_str(), H5P_DEFAULT), f, base, "opening the running sum"));
        const hsize_t B = block_rows_for(W);
        for (hsize_t r = P; r < Wb; r += B) {
          const hsize_t n = std::min(B, Wb - r);
          m.base_buf.resize(n * Wb);
          slab_io(in.get(), f, base, {r, 0}, {n, Wb}, m.base_buf.data(), false);
          slab_io(out.get(), f, full, {r, 0}, {n, Wb}, m.base_buf.data(), true);
        }
      }
      check(H5Fflush(root, H5F_SCOPE_LOCAL), f, "/", "flushing the result file");
      set_int_attr(out.get(), f, full, "through_step", m.stream_step);
      m.total_base = target;
      m.total_base_width = W;
    }
    check(m.stream_file.close(), f, "/", "closing the result file (traffic)");
  } catch (...) {
    m.stream_file = h5::File{};
    m.streaming = false;
    throw;
  }
  m.streaming = false;
}

ResultFileState probe_result_file(const std::string& path) {
  ResultFileState st;
  std::error_code ec;
  st.exists = std::filesystem::exists(path, ec);
  if (!st.exists) return st;
  h5::ErrorSilencer quiet;
  try {
    if (!std::filesystem::is_regular_file(path, ec)) throw std::runtime_error("not a regular file");
    const hid_t fid = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (fid < 0) throw std::runtime_error("not a readable HDF5 file (" + h5::last_error() + ")");
    h5::File file(fid);
    if (!link_exists(fid, "steps") || !link_exists(fid, "/steps/step"))
      throw std::runtime_error("no /steps/step dataset: not a moesim result file");
    st.config_ini = H5Aexists(fid, "config") > 0 ? read_string_attr(fid, path, "config") : "";
    st.complete = H5Aexists(fid, "complete") > 0 && read_int_attr(fid, path, "complete") == 1;
    const std::vector<std::int64_t> steps = read_all<std::int64_t>(fid, path, "/steps/step");
    st.rows = static_cast<std::int64_t>(steps.size());
    st.last_step = steps.empty() ? -1 : steps.back();
    for (std::size_t i = 0; i < steps.size(); ++i)
      if (steps[i] != static_cast<std::int64_t>(i)) st.contiguous = false;
    st.readable = true;
  } catch (const std::exception& e) {
    st.problem = e.what();
  }
  return st;
}

}  // namespace moesim::io
