// The `moesim run` result file of outputs.md (ResultWriter). Serial HDF5 only: rank 0 writes with
// the default sec2 driver, so nothing here is collective and nothing calls MPI.
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
  // Everything else reaches the disk before `complete` says so: a crash between the two
  // flushes leaves a full file that still reads as incomplete, never the reverse.
  check(H5Fflush(m.file.get(), H5F_SCOPE_LOCAL), f, "/", "flushing the result file");
  overwrite_scalar_attr<std::int64_t>(m.file.get(), f, "/", "complete", 1);
  m.finished = true;  // from here on the handles are released, whatever close reports
  if (m.close_all() < 0) {
    h5::fail(f, "/", "closing the result file");
  }
}

}  // namespace moesim::io
