// Unit tests of src/io/result_file.cpp: every file is read back with the raw HDF5 C API (not
// with our own code), so the tests check the on-disk contract of outputs.md, not a round trip
// through the same assumptions.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "moesim/io/result_file.hpp"
#include "moesim/simulate/projection.hpp"

namespace fs = std::filesystem;
using namespace moesim::io;

namespace {

// ---- raw HDF5 readers (test side) ----

// Closes an HDF5 id at scope exit; the tests must not leak ids between cases.
struct Id {
  hid_t id;
  herr_t (*close)(hid_t);
  Id(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  ~Id() {
    if (id >= 0) close(id);
  }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  operator hid_t() const { return id; }  // NOLINT: convenience for HDF5 calls
};

hid_t open_ro(const fs::path& p) {
  const hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) throw std::runtime_error("test: cannot open " + p.string());
  return f;
}

bool has_attr(hid_t loc, const std::string& obj, const std::string& name) {
  return H5Aexists_by_name(loc, obj.c_str(), name.c_str(), H5P_DEFAULT) > 0;
}

// Reads a fixed-length scalar string attribute and checks that it is one.
std::string attr_string(hid_t loc, const std::string& obj, const std::string& name) {
  Id a(H5Aopen_by_name(loc, obj.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (a < 0) throw std::runtime_error("test: no attribute " + obj + " " + name);
  Id t(H5Aget_type(a), H5Tclose);
  EXPECT_EQ(H5Tget_class(t), H5T_STRING) << name;
  EXPECT_EQ(H5Tis_variable_str(t), 0) << name;
  EXPECT_EQ(H5Tget_strpad(t), H5T_STR_NULLTERM) << name;
  Id s(H5Aget_space(a), H5Sclose);
  EXPECT_EQ(H5Sget_simple_extent_type(s), H5S_SCALAR) << name;
  std::string buf(H5Tget_size(t), '\0');
  EXPECT_GE(H5Aread(a, t, buf.data()), 0);
  return {buf.c_str()};
}

// Reads a scalar numeric attribute, checking its file type.
template <class T>
T attr_scalar(hid_t loc, const std::string& obj, const std::string& name, hid_t file_type,
              hid_t mem_type) {
  Id a(H5Aopen_by_name(loc, obj.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (a < 0) throw std::runtime_error("test: no attribute " + obj + " " + name);
  Id t(H5Aget_type(a), H5Tclose);
  EXPECT_GT(H5Tequal(t, file_type), 0) << obj << " " << name;
  Id s(H5Aget_space(a), H5Sclose);
  EXPECT_EQ(H5Sget_simple_extent_type(s), H5S_SCALAR) << name;
  T v{};
  EXPECT_GE(H5Aread(a, mem_type, &v), 0);
  return v;
}
std::int64_t attr_i64(hid_t loc, const std::string& obj, const std::string& name) {
  return attr_scalar<std::int64_t>(loc, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64);
}
double attr_f64(hid_t loc, const std::string& obj, const std::string& name) {
  return attr_scalar<double>(loc, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE);
}

struct Data {
  std::vector<hsize_t> dims;
  std::vector<double> f64;
  std::vector<std::int64_t> i64;
};

// Reads a whole dataset, checking that its file type is `file_type`; values land in f64
// (float types) or i64 (integer types).
Data read_ds(hid_t file, const std::string& name, hid_t file_type) {
  Data d;
  Id ds(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (ds < 0) throw std::runtime_error("test: no dataset " + name);
  Id t(H5Dget_type(ds), H5Tclose);
  EXPECT_GT(H5Tequal(t, file_type), 0) << name;
  Id s(H5Dget_space(ds), H5Sclose);
  d.dims.resize(static_cast<std::size_t>(H5Sget_simple_extent_ndims(s)));
  H5Sget_simple_extent_dims(s, d.dims.data(), nullptr);
  const auto n = static_cast<std::size_t>(H5Sget_simple_extent_npoints(s));
  if (H5Tget_class(t) == H5T_FLOAT) {
    d.f64.resize(n);
    if (n > 0) {
      EXPECT_GE(H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, d.f64.data()), 0);
    }
  } else {
    d.i64.resize(n);
    if (n > 0) {
      EXPECT_GE(H5Dread(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, d.i64.data()), 0);
    }
  }
  return d;
}

// ---- raw HDF5 writers for trace inputs ----

hid_t create_file(const fs::path& p) {
  const hid_t f = H5Fcreate(p.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) throw std::runtime_error("test: cannot create " + p.string());
  return f;
}

void put(hid_t file, const char* name, hid_t file_type, hid_t mem_type, std::vector<hsize_t> dims,
         const void* data) {
  Id s(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
  Id ds(H5Dcreate2(file, name, file_type, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  ASSERT_GE(ds, 0) << name;
  ASSERT_GE(H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0) << name;
}

// ---- fixtures ----

// Each test gets its own fresh directory under the system temp dir, removed afterwards.
class IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("moesim_test_io_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(counter++) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    // Neither the library nor the test may leave an HDF5 file or object id open.
    EXPECT_EQ(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  [[nodiscard]] fs::path file(const std::string& name) const { return dir_ / name; }

  fs::path dir_;
};

constexpr std::int64_t kL = 2, kE = 3, kP = 2;

RunMetadata meta() {
  RunMetadata m;
  m.config_ini = "[model]\nlayers = 2\n[routing]\nnum_experts = 3\n";
  m.moesim_version = "0.1.0";
  m.git_commit = "abcdef123456";
  m.created_utc = "2024-01-02T03:04:05Z";
  m.slurm_job_id = "";
  m.ranks = kP;
  m.seed = std::numeric_limits<std::uint64_t>::max() - 7;  // needs the unsigned type
  m.layers = kL;
  m.num_experts = kE;
  m.tokens_per_step = 100;
  return m;
}

StepRecord step(std::int64_t s) {
  StepRecord r;
  const double x = static_cast<double>(s);
  r.step = s;
  r.loss = 1.0 + x;
  r.task_loss = 0.5 + x;
  r.aux_loss = 0.25 + x;
  r.z_loss = 0.125 + x;
  r.dropped_fraction = 0.01 * x;
  for (std::int64_t i = 0; i < kL * kE; ++i) {
    r.expert_load.push_back(100 * s + i);
    r.expert_kept.push_back(100 * s + i / 2);
  }
  r.time_step = 1.5 + x;
  r.time_gate = 0.1 + x;
  r.time_dispatch = 0.2 + x;
  r.time_expert = 0.3 + x;
  r.time_combine = 0.4 + x;
  r.time_backward = 0.5 + x;
  r.time_sync = 0.6 + x;
  r.bytes_alltoall = (std::int64_t{1} << 40) + s;
  r.tokens_sent = {s + 1, 2 * s};  // [kP]
  return r;
}

EvalRecord eval(std::int64_t s) {
  EvalRecord r;
  r.step = s;
  r.loss = 2.0 + static_cast<double>(s);
  r.accuracy = 0.5;
  r.macro_f1 = 0.25;
  r.dropped_fraction = 0.125;
  return r;
}

// A run's end as the program does it: the attempt ends, then finish() writes /summary.
// Streams a [P, P] traffic matrix in row blocks of `block` ranks, as the trainer does.
void stream(ResultWriter& w, ResultWriter::Traffic kind, std::int64_t step, std::int64_t P,
            const std::vector<std::int64_t>& m, std::int64_t block = 1) {
  w.traffic_begin(kind, step, P);
  for (std::int64_t r = 0; r < P; r += block) {
    const std::int64_t n = std::min(block, P - r);
    w.traffic_rows(r, n,
                   std::span<const std::int64_t>(m).subspan(static_cast<std::size_t>(r * P),
                                                            static_cast<std::size_t>(n * P)));
  }
  w.traffic_end();
}

void finish_run(ResultWriter& w, double wall = 99.5) {
  AttemptInfo a;
  a.job_id = "42";
  a.start_utc = "2024-01-02T03:04:05Z";
  a.ranks = kP;
  w.begin_attempt(a);
  w.end_attempt("complete", wall);
  (void)w.finish();
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected std::runtime_error";
  return "";
}

// ======================= run result file =======================

TEST_F(IoTest, RunFileRoundTrip) {
  const fs::path p = file("run.h5");
  {
    ResultWriter w(p.string(), meta());
    for (std::int64_t s : {0, 5, 10}) w.append_step(step(s));
    w.append_eval(eval(5));
    w.flush();
    w.append_eval(eval(10));
    // The run's traffic sum, in two updates (the second adds to the first).
    stream(w, ResultWriter::Traffic::total, 6, kP, {1 + 6, 6, 9, 0});
    stream(w, ResultWriter::Traffic::total, 11, kP, {11, 0, 0, 60});
    stream(w, ResultWriter::Traffic::sample, 10, kP, {3, 1, 4, 1});
    finish_run(w);
  }
  Id f(open_ro(p), H5Fclose);

  EXPECT_EQ(attr_string(f, "/", "schema_version"), "1");
  EXPECT_EQ(attr_string(f, "/", "moesim_version"), "0.1.0");
  EXPECT_EQ(attr_string(f, "/", "git_commit"), "abcdef123456");
  EXPECT_EQ(attr_string(f, "/", "config"), meta().config_ini);
  EXPECT_EQ(attr_string(f, "/", "created_utc"), "2024-01-02T03:04:05Z");
  EXPECT_EQ(attr_string(f, "/", "slurm_job_id"), "");
  EXPECT_EQ(attr_i64(f, "/", "ranks"), kP);
  EXPECT_EQ(attr_scalar<std::uint64_t>(f, "/", "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64),
            meta().seed);
  EXPECT_EQ(attr_i64(f, "/", "complete"), 1);

  const std::vector<hsize_t> s3{3};
  const Data st = read_ds(f, "/steps/step", H5T_STD_I64LE);
  EXPECT_EQ(st.dims, s3);
  EXPECT_EQ(st.i64, (std::vector<std::int64_t>{0, 5, 10}));

  struct Col {
    const char* name;
    double StepRecord::*member;
  };
  const Col cols[] = {{"loss", &StepRecord::loss},
                      {"task_loss", &StepRecord::task_loss},
                      {"aux_loss", &StepRecord::aux_loss},
                      {"z_loss", &StepRecord::z_loss},
                      {"dropped_fraction", &StepRecord::dropped_fraction},
                      {"time_step", &StepRecord::time_step},
                      {"time_gate", &StepRecord::time_gate},
                      {"time_dispatch", &StepRecord::time_dispatch},
                      {"time_expert", &StepRecord::time_expert},
                      {"time_combine", &StepRecord::time_combine},
                      {"time_backward", &StepRecord::time_backward},
                      {"time_sync", &StepRecord::time_sync}};
  for (const auto& c : cols) {
    const std::string name = std::string("/steps/") + c.name;
    const Data d = read_ds(f, name, H5T_IEEE_F64LE);
    EXPECT_EQ(d.dims, s3) << name;
    ASSERT_EQ(d.f64.size(), 3u) << name;
    int row = 0;
    for (std::int64_t s : {0, 5, 10})
      EXPECT_EQ(d.f64[static_cast<std::size_t>(row++)], step(s).*(c.member)) << name;
    EXPECT_FALSE(attr_string(f, name, "description").empty()) << name;
    const bool is_time = std::string(c.name).starts_with("time_");
    EXPECT_EQ(has_attr(f, name, "units"), is_time) << name;
    if (is_time) {
      EXPECT_EQ(attr_string(f, name, "units"), "s") << name;
    }
  }

  const Data bytes = read_ds(f, "/steps/bytes_alltoall", H5T_STD_I64LE);
  EXPECT_EQ(bytes.dims, s3);
  EXPECT_EQ(bytes.i64, (std::vector<std::int64_t>{step(0).bytes_alltoall, step(5).bytes_alltoall,
                                                  step(10).bytes_alltoall}));

  for (const char* name : {"/steps/expert_load", "/steps/expert_kept"}) {
    const Data d = read_ds(f, name, H5T_STD_I64LE);
    EXPECT_EQ(d.dims, (std::vector<hsize_t>{3, kL, kE})) << name;
    std::vector<std::int64_t> want;
    for (std::int64_t s : {0, 5, 10}) {
      const StepRecord r = step(s);
      const auto& v = std::string(name).ends_with("load") ? r.expert_load : r.expert_kept;
      want.insert(want.end(), v.begin(), v.end());
    }
    EXPECT_EQ(d.i64, want) << name;
    EXPECT_FALSE(attr_string(f, name, "description").empty()) << name;
  }

  const std::vector<hsize_t> s2{2};
  const Data es = read_ds(f, "/eval/step", H5T_STD_I64LE);
  EXPECT_EQ(es.dims, s2);
  EXPECT_EQ(es.i64, (std::vector<std::int64_t>{5, 10}));
  EXPECT_EQ(read_ds(f, "/eval/loss", H5T_IEEE_F64LE).f64, (std::vector<double>{7.0, 12.0}));
  EXPECT_EQ(read_ds(f, "/eval/accuracy", H5T_IEEE_F64LE).f64, (std::vector<double>{0.5, 0.5}));
  EXPECT_EQ(read_ds(f, "/eval/macro_f1", H5T_IEEE_F64LE).f64, (std::vector<double>{0.25, 0.25}));
  EXPECT_EQ(read_ds(f, "/eval/dropped_fraction", H5T_IEEE_F64LE).f64,
            (std::vector<double>{0.125, 0.125}));

  // /summary is computed from the rows: steps 0, 5, 10 with time_step 1.5, 6.5, 11.5 s and
  // dropped_fraction 0, 0.05, 0.1; meta().tokens_per_step = 100.
  EXPECT_DOUBLE_EQ(attr_f64(f, "/summary", "tokens_per_second"), 100.0 * 3 / 19.5);
  EXPECT_EQ(attr_f64(f, "/summary", "step_time_median"), 6.5);
  EXPECT_DOUBLE_EQ(attr_f64(f, "/summary", "dropped_fraction_mean"), 0.05);
  EXPECT_EQ(attr_f64(f, "/summary", "wall_seconds"), 99.5);
  EXPECT_EQ(attr_f64(f, "/summary", "train_seconds"), 19.5);
  EXPECT_EQ(attr_i64(f, "/summary", "ranks"), kP);
  EXPECT_EQ(attr_i64(f, "/summary", "attempts"), 1);
  const Data tr = read_ds(f, "/summary/traffic_tokens", H5T_STD_I64LE);
  EXPECT_EQ(tr.dims, (std::vector<hsize_t>{kP, kP}));
  EXPECT_EQ(tr.i64, (std::vector<std::int64_t>{1 + 6 + 11, 6, 9, 60}));
  EXPECT_EQ(attr_i64(f, "/summary/traffic_tokens", "first_step"), 0);
  EXPECT_EQ(attr_i64(f, "/summary/traffic_tokens", "through_step"), 11);
  const Data ts = read_ds(f, "/traffic/tokens", H5T_STD_I64LE);
  EXPECT_EQ(ts.dims, (std::vector<hsize_t>{1, kP, kP}));
  EXPECT_EQ(ts.i64, (std::vector<std::int64_t>{3, 1, 4, 1}));
  EXPECT_EQ(read_ds(f, "/traffic/step", H5T_STD_I64LE).i64, (std::vector<std::int64_t>{10}));
  const Data sent = read_ds(f, "/steps/tokens_sent", H5T_STD_I64LE);
  EXPECT_EQ(sent.dims, (std::vector<hsize_t>{3, kP}));
  EXPECT_EQ(sent.i64, (std::vector<std::int64_t>{1, 0, 6, 10, 11, 20}));
  EXPECT_EQ(read_ds(f, "/steps/ranks", H5T_STD_I64LE).i64, (std::vector<std::int64_t>{kP, kP, kP}));
}

TEST_F(IoTest, RowsCrossChunkBoundaries) {
  // 600 rows span three 256-row chunks of the 1-D datasets and many 3-D chunks.
  const fs::path p = file("long.h5");
  {
    ResultWriter w(p.string(), meta());
    for (std::int64_t s = 0; s < 600; ++s) w.append_step(step(s));
    finish_run(w);
  }
  Id f(open_ro(p), H5Fclose);
  const Data st = read_ds(f, "/steps/step", H5T_STD_I64LE);
  ASSERT_EQ(st.i64.size(), 600u);
  for (std::int64_t s = 0; s < 600; ++s) EXPECT_EQ(st.i64[static_cast<std::size_t>(s)], s);
  const Data load = read_ds(f, "/steps/expert_load", H5T_STD_I64LE);
  EXPECT_EQ(load.dims, (std::vector<hsize_t>{600, kL, kE}));
  EXPECT_EQ(load.i64[599 * kL * kE + 4], 100 * 599 + 4);
  EXPECT_EQ(read_ds(f, "/eval/step", H5T_STD_I64LE).dims, std::vector<hsize_t>{0});
}

TEST_F(IoTest, IncompleteUntilFinish) {
  const fs::path p = file("partial.h5");
  const fs::path copy = file("snapshot.h5");
  {
    ResultWriter w(p.string(), meta());
    w.append_step(step(1));
    w.append_step(step(2));
    w.flush();
    // What is on disk right after flush() (as a killed run would leave it): a copy of the
    // bytes, opened independently of the writer's open handle.
    fs::copy_file(p, copy);
    {
      Id f(open_ro(copy), H5Fclose);
      EXPECT_EQ(attr_i64(f, "/", "complete"), 0);
      EXPECT_EQ(read_ds(f, "/steps/step", H5T_STD_I64LE).i64, (std::vector<std::int64_t>{1, 2}));
      EXPECT_EQ(read_ds(f, "/steps/expert_kept", H5T_STD_I64LE).dims,
                (std::vector<hsize_t>{2, kL, kE}));
    }
    w.append_step(step(3));
    // destroyed without finish() or flush(): the row of step 3 was only buffered
  }
  Id f(open_ro(p), H5Fclose);
  EXPECT_EQ(attr_i64(f, "/", "complete"), 0);
  EXPECT_EQ(read_ds(f, "/steps/step", H5T_STD_I64LE).i64, (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(H5Lexists(f, "/summary", H5P_DEFAULT), 0);
}

TEST_F(IoTest, LargeConfigAttribute) {
  // 200 KiB is beyond the 64 KiB limit of attributes kept in the object header.
  RunMetadata m = meta();
  m.config_ini.clear();
  for (int i = 0; m.config_ini.size() < 200 * 1024; ++i) {
    m.config_ini += "# line " + std::to_string(i) + " of a long parameter file\n";
  }
  const fs::path p = file("bigcfg.h5");
  {
    ResultWriter w(p.string(), m);
    w.append_step(step(0));
    finish_run(w);
  }
  Id f(open_ro(p), H5Fclose);
  EXPECT_EQ(attr_string(f, "/", "config"), m.config_ini);
  EXPECT_EQ(attr_i64(f, "/", "complete"), 1);
}

TEST_F(IoTest, SizeMismatchesThrow) {
  const fs::path p = file("bad.h5");
  ResultWriter w(p.string(), meta());

  StepRecord r = step(0);
  r.expert_load.pop_back();
  const std::string msg = error_of([&] { w.append_step(r); });
  EXPECT_NE(msg.find("expert_load of 5 values"), std::string::npos) << msg;
  EXPECT_NE(msg.find("2 x 3 = 6"), std::string::npos) << msg;
  EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;

  r = step(0);
  r.expert_kept.push_back(1);
  EXPECT_THROW(w.append_step(r), std::runtime_error);

  // A rejected record leaves no partial row behind.
  w.append_step(step(0));
  EXPECT_NE(error_of([&] { w.append_step(step(0)); }).find("strictly increasing"),
            std::string::npos);

  r = step(1);
  r.tokens_sent.pop_back();
  EXPECT_NE(error_of([&] { w.append_step(r); }).find("tokens_sent row has 1 values"),
            std::string::npos);

  finish_run(w);
  EXPECT_THROW(w.append_step(step(1)), std::logic_error);
  EXPECT_THROW((void)w.finish(), std::logic_error);

  Id f(open_ro(p), H5Fclose);
  EXPECT_EQ(read_ds(f, "/steps/step", H5T_STD_I64LE).i64, (std::vector<std::int64_t>{0}));
  EXPECT_EQ(attr_i64(f, "/", "complete"), 1);
}

TEST_F(IoTest, BadMetadataAndPathThrow) {
  RunMetadata m = meta();
  m.num_experts = 0;
  EXPECT_THROW(ResultWriter(file("x.h5").string(), m), std::runtime_error);
  const std::string bad = (dir_ / "no_such_dir" / "run.h5").string();
  const std::string msg = error_of([&] { ResultWriter w(bad, meta()); });
  EXPECT_NE(msg.find(bad), std::string::npos) << msg;
}

TEST_F(IoTest, ResumeKeepsRowsBeforeTheCheckpointAndRecordsAttempts) {
  const fs::path p = file("resume.h5");
  {
    ResultWriter w(p.string(), meta());
    AttemptInfo a;
    a.job_id = "7";
    a.ranks = kP;
    w.begin_attempt(a);
    for (std::int64_t s = 0; s < 6; ++s) w.append_step(step(s));
    w.append_eval(eval(0));
    w.append_eval(eval(4));
    w.flush();  // what a checkpoint of step 4 forces to disk
    w.append_step(step(6));
    // killed here: step 6 was never flushed, the attempt stays "running"
  }
  EXPECT_EQ(probe_result_file(p.string()).rows, 6);
  {
    ResultWriter w(p.string(), meta(), 4);  // resume from a checkpoint of step 4
    AttemptInfo a;
    a.job_id = "8";
    a.first_step = 4;
    a.ranks = kP;
    w.begin_attempt(a);
    for (std::int64_t s = 4; s < 8; ++s) w.append_step(step(s));
    w.end_attempt("complete", 2.0);
    (void)w.finish();
  }
  Id f(open_ro(p), H5Fclose);
  EXPECT_EQ(read_ds(f, "/steps/step", H5T_STD_I64LE).i64,
            (std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(read_ds(f, "/eval/step", H5T_STD_I64LE).i64, (std::vector<std::int64_t>{0, 4}));
  EXPECT_EQ(read_ds(f, "/attempts/first_step", H5T_STD_I64LE).i64,
            (std::vector<std::int64_t>{0, 4}));
  EXPECT_EQ(read_ds(f, "/attempts/last_step", H5T_STD_I64LE).i64,
            (std::vector<std::int64_t>{6, 8}));  // the killed attempt: its last flush
  EXPECT_EQ(attr_i64(f, "/summary", "steps"), 8);
  EXPECT_EQ(attr_i64(f, "/summary", "attempts"), 2);
}

TEST_F(IoTest, ResumeRefusesAGapAndProbeSeesIt) {
  const fs::path p = file("gap.h5");
  {
    ResultWriter w(p.string(), meta());
    for (std::int64_t s = 0; s < 3; ++s) w.append_step(step(s));
    w.flush();
  }
  const ResultFileState st = probe_result_file(p.string());
  EXPECT_TRUE(st.exists && st.readable && !st.complete && st.contiguous);
  EXPECT_EQ(st.rows, 3);
  EXPECT_EQ(st.config_ini, meta().config_ini);
  // A checkpoint of step 5 with rows for 0..2 only: resuming would leave steps 3, 4 empty.
  try {
    ResultWriter w(p.string(), meta(), 5);
    ADD_FAILURE() << "expected ResumeGap";
  } catch (const ResumeGap& e) {
    EXPECT_NE(std::string(e.what()).find("steps 0..2 only"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(probe_result_file(file("none.h5").string()).exists);
  std::ofstream(file("junk.h5")) << "not hdf5";
  const ResultFileState junk = probe_result_file(file("junk.h5").string());
  EXPECT_TRUE(junk.exists);
  EXPECT_FALSE(junk.readable);
  EXPECT_FALSE(junk.problem.empty());
}

TEST_F(IoTest, RankAxesGrowWhenAResumedRunHasMoreRanks) {
  const fs::path p = file("grow.h5");
  {
    ResultWriter w(p.string(), meta());
    w.append_step(step(0));  // 2 ranks: tokens_sent [2]
    stream(w, ResultWriter::Traffic::sample, 0, kP, {1, 2, 3, 0});
    w.flush();
    stream(w, ResultWriter::Traffic::total, 1, kP, {1, 2, 3, 0});  // as before checkpoint 1
  }
  RunMetadata m4 = meta();
  m4.ranks = 3;
  {
    ResultWriter w(p.string(), m4, 1);
    StepRecord r = step(1);
    r.tokens_sent = {7, 8, 9};  // [3]
    w.append_step(r);
    const std::vector<std::int64_t> m{1, 2, 3, 4, 5, 6, 7, 8, 9};  // [3 x 3]
    stream(w, ResultWriter::Traffic::sample, 1, 3, m, 2);
    stream(w, ResultWriter::Traffic::total, 2, 3, m, 2);
    (void)w.finish();
  }
  Id f(open_ro(p), H5Fclose);
  const Data sent = read_ds(f, "/steps/tokens_sent", H5T_STD_I64LE);
  EXPECT_EQ(sent.dims, (std::vector<hsize_t>{2, 3}));
  EXPECT_EQ(sent.i64, (std::vector<std::int64_t>{1, 0, -1, 7, 8, 9}));  // -1: no rank 2 at step 0
  const Data tr = read_ds(f, "/traffic/tokens", H5T_STD_I64LE);
  EXPECT_EQ(tr.dims, (std::vector<hsize_t>{2, 3, 3}));
  // Sample 0 (2 ranks): its 2 x 2 block, -1 where rank 2 did not exist.
  EXPECT_EQ(tr.i64, (std::vector<std::int64_t>{1, 2, -1, 3, 0, -1, -1, -1, -1,  //
                                               1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(read_ds(f, "/steps/ranks", H5T_STD_I64LE).i64, (std::vector<std::int64_t>{2, 3}));
  // The resume continued the sum of the slot through step 1 (its checkpoint's step).
  EXPECT_EQ(read_ds(f, "/summary/traffic_tokens", H5T_STD_I64LE).i64,
            (std::vector<std::int64_t>{2, 4, 3, 7, 5, 6, 7, 8, 9}));
  EXPECT_EQ(attr_i64(f, "/summary/traffic_tokens", "first_step"), 0);
  EXPECT_EQ(attr_i64(f, "/summary/traffic_tokens", "through_step"), 2);
}

// docs/scale.md's per-step size formula (simulate::result_bytes_per_step, also a column of
// moesim simulate) against what the writer really puts in /steps.
TEST_F(IoTest, PerStepBytesMatchTheScaleFormula) {
  const fs::path p = file("bytes.h5");
  constexpr std::int64_t kSteps = 3;
  {
    ResultWriter w(p.string(), meta());
    for (std::int64_t s = 0; s < kSteps; ++s) {
      StepRecord r = step(s);
      r.load_imbalance.assign(kL, 1.5);
      r.rank_rows.assign(kL * kP, 7);
      w.append_step(r);
    }
    w.flush();
  }
  Id f(open_ro(p), H5Fclose);
  Id steps(H5Gopen2(f, "/steps", H5P_DEFAULT), H5Gclose);
  hsize_t bytes = 0;
  auto add = [](hid_t g, const char* name, const H5L_info_t*, void* data) -> herr_t {
    const hid_t ds = H5Dopen2(g, name, H5P_DEFAULT);
    const hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds);
    *static_cast<hsize_t*>(data) +=
        static_cast<hsize_t>(H5Sget_simple_extent_npoints(sp)) * H5Tget_size(ty);
    H5Tclose(ty);
    H5Sclose(sp);
    H5Dclose(ds);
    return 0;
  };
  hsize_t idx = 0;
  ASSERT_GE(H5Literate(steps, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, +add, &bytes), 0);
  EXPECT_EQ(static_cast<double>(bytes),
            kSteps * moesim::simulate::result_bytes_per_step(kP, kL, kE, false));
}

TEST_F(IoTest, TrafficSumSurvivesAKillDuringItsUpdateAndFewerRanks) {
  const fs::path p = file("killed.h5");
  {
    ResultWriter w(p.string(), meta());
    for (std::int64_t s = 0; s < 4; ++s) w.append_step(step(s));
    w.flush();
    stream(w, ResultWriter::Traffic::total, 2, kP, {1, 1, 1, 1});  // checkpoint 2
    stream(w, ResultWriter::Traffic::total, 4, kP, {2, 2, 2, 2});  // checkpoint 4
    // The update for checkpoint 6 is killed after its first row block: its slot (the one of
    // step 2) is invalid, the slot of step 4 intact.
    w.traffic_begin(ResultWriter::Traffic::total, 6, kP);
    const std::vector<std::int64_t> row{100, 100};
    w.traffic_rows(0, 1, row);
  }  // killed: no traffic_end, no finish
  {  // resume from checkpoint 4 on one rank: continues the sum of step 4, rank 1's row kept
    RunMetadata m1 = meta();
    m1.ranks = 1;
    ResultWriter w(p.string(), m1, 4);
    StepRecord r = step(4);
    r.tokens_sent = {5};
    w.append_step(r);
    stream(w, ResultWriter::Traffic::total, 5, 1, {10});
    (void)w.finish();
  }
  {
    Id f(open_ro(p), H5Fclose);
    EXPECT_EQ(read_ds(f, "/summary/traffic_tokens", H5T_STD_I64LE).i64,
              (std::vector<std::int64_t>{13, 3, 3, 3}));
    EXPECT_EQ(attr_i64(f, "/summary/traffic_tokens", "first_step"), 0);
    EXPECT_EQ(attr_i64(f, "/summary/traffic_tokens", "through_step"), 5);
  }
  {  // resume from a step no slot ends at (an older checkpoint): the sum restarts there, and
     // says so
    ResultWriter w(p.string(), meta(), 3);
    stream(w, ResultWriter::Traffic::total, 4, kP, {1, 0, 0, 1});
    (void)w.finish();
  }
  Id f(open_ro(p), H5Fclose);
  EXPECT_EQ(read_ds(f, "/summary/traffic_tokens", H5T_STD_I64LE).i64,
            (std::vector<std::int64_t>{1, 0, 0, 1}));
  EXPECT_EQ(attr_i64(f, "/summary/traffic_tokens", "first_step"), 3);
  EXPECT_EQ(attr_i64(f, "/summary/traffic_tokens", "through_step"), 4);
}

// ======================= read_trace =======================

TEST_F(IoTest, TraceFloat32WithTokenIds) {
  const fs::path p = file("trace.h5");
  const std::vector<float> logits{0.5F, -1.25F, 3.0F, 0.1F, 2.0F, -0.75F, 1e-3F, 4.5F};  // [4, 2]
  const std::vector<std::int64_t> ids{7, 3, 9, 11};
  {
    Id f(create_file(p), H5Fclose);
    put(f, "logits", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {4, 2}, logits.data());
    put(f, "token_id", H5T_STD_I64LE, H5T_NATIVE_INT64, {4}, ids.data());
  }
  const Trace t = read_trace(p.string());
  EXPECT_EQ(t.tokens, 4);
  EXPECT_EQ(t.experts, 2);
  ASSERT_EQ(t.logits.size(), 8u);
  for (std::size_t i = 0; i < 8; ++i) EXPECT_EQ(t.logits[i], static_cast<double>(logits[i]));
  EXPECT_EQ(t.token_id, ids);
}

TEST_F(IoTest, TraceFloat64WithoutTokenIdsAndInt32Ids) {
  const fs::path p = file("trace64.h5");
  const std::vector<double> logits{0.1, 0.2, 0.3, 0.4, 0.5, 0.6};  // [2, 3]
  const std::vector<std::int32_t> ids{-4, 5};
  {
    Id f(create_file(p), H5Fclose);
    put(f, "logits", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {2, 3}, logits.data());
  }
  Trace t = read_trace(p.string());
  EXPECT_EQ(t.tokens, 2);
  EXPECT_EQ(t.experts, 3);
  EXPECT_EQ(t.logits, logits);
  EXPECT_TRUE(t.token_id.empty());
  {
    Id f(H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose);
    put(f, "token_id", H5T_STD_I32LE, H5T_NATIVE_INT32, {2}, ids.data());
  }
  t = read_trace(p.string());
  EXPECT_EQ(t.token_id, (std::vector<std::int64_t>{-4, 5}));
}

TEST_F(IoTest, TraceErrors) {
  const auto expect_error = [](const fs::path& p, const std::vector<std::string>& parts) {
    const std::string msg = error_of([&] { (void)read_trace(p.string()); });
    for (const auto& part : parts)
      EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
  };

  const fs::path missing = file("missing.h5");
  expect_error(missing, {"cannot open trace file '" + missing.string() + "'"});

  const fs::path text = file("text.h5");
  std::ofstream(text) << "this is not HDF5\n";
  expect_error(text, {"cannot open trace file '" + text.string() + "'"});

  const std::vector<double> d6{1, 2, 3, 4, 5, 6};
  const std::vector<std::int32_t> i6{1, 2, 3, 4, 5, 6};

  const fs::path nologits = file("nologits.h5");
  {
    Id f(create_file(nologits), H5Fclose);
    put(f, "scores", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {2, 3}, d6.data());
  }
  expect_error(nologits, {nologits.string(), "'/logits' not found"});

  const fs::path group = file("group.h5");
  {
    Id f(create_file(group), H5Fclose);
    Id g(H5Gcreate2(f, "logits", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  }
  expect_error(group, {"'/logits' is not a dataset"});

  const fs::path oned = file("oned.h5");
  {
    Id f(create_file(oned), H5Fclose);
    put(f, "logits", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {6}, d6.data());
  }
  expect_error(oned, {"'/logits'", "shape [6]", "2-D"});

  const fs::path ints = file("ints.h5");
  {
    Id f(create_file(ints), H5Fclose);
    put(f, "logits", H5T_STD_I32LE, H5T_NATIVE_INT32, {2, 3}, i6.data());
  }
  expect_error(ints, {"'/logits'", "int32", "float32 or float64"});

  const fs::path empty = file("empty.h5");
  {
    Id f(create_file(empty), H5Fclose);
    put(f, "logits", H5T_IEEE_F32LE, H5T_NATIVE_DOUBLE, {0, 3}, nullptr);
  }
  expect_error(empty, {"'/logits'", "shape [0, 3]", "at least one token"});

  const fs::path nan = file("nan.h5");
  {
    std::vector<double> v = d6;
    v[5] = std::nan("");  // token 1, expert 2 of [2, 3]
    Id f(create_file(nan), H5Fclose);
    put(f, "logits", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {2, 3}, v.data());
  }
  expect_error(nan, {"'/logits'", "non-finite", "nan", "token 1, expert 2"});

  const fs::path badids = file("badids.h5");
  {
    Id f(create_file(badids), H5Fclose);
    put(f, "logits", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {2, 3}, d6.data());
    put(f, "token_id", H5T_STD_I64LE, H5T_NATIVE_INT32, {3}, i6.data());
  }
  expect_error(badids, {"'/token_id'", "shape [3]", "expected [2]"});

  const fs::path floatids = file("floatids.h5");
  {
    Id f(create_file(floatids), H5Fclose);
    put(f, "logits", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {2, 3}, d6.data());
    put(f, "token_id", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {2}, d6.data());
  }
  expect_error(floatids, {"'/token_id'", "float64", "integer"});

  const fs::path bigids = file("bigids.h5");
  {
    const std::vector<std::uint64_t> u{1, std::uint64_t{1} << 63};  // the second exceeds int64
    Id f(create_file(bigids), H5Fclose);
    put(f, "logits", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {2, 3}, d6.data());
    put(f, "token_id", H5T_STD_U64LE, H5T_NATIVE_UINT64, {2}, u.data());
  }
  expect_error(bigids, {"'/token_id'", "uint64", "out of range"});
}

// ======================= route output =======================

RouteOutput route() {
  RouteOutput o;
  o.token = {0, 0, 1, 2};
  o.expert = {0, 2, 1, 2};
  o.slot = {0, 0, 0, 1};
  o.weight = {0.75, 0.25, 1.0, 0.5};
  o.dropped_token = {3};
  o.dropped_expert = {2};
  o.load_routed = {1, 1, 3};
  o.load_kept = {1, 1, 2};
  o.capacity = 2;
  o.aux_loss = 1.125;
  o.z_loss = 0.5;
  o.dropped_fraction = 0.2;
  o.config_ini = "[routing]\nrule = topk\n";
  return o;
}

TEST_F(IoTest, RouteOutputRoundTrip) {
  const fs::path p = file("route.h5");
  const RouteOutput o = route();
  write_route_output(p.string(), o);
  EXPECT_FALSE(fs::exists(p.string() + ".tmp"));
  Id f(open_ro(p), H5Fclose);
  EXPECT_EQ(attr_string(f, "/", "schema_version"), "1");
  EXPECT_EQ(attr_string(f, "/", "config"), o.config_ini);
  EXPECT_EQ(attr_i64(f, "/", "capacity"), 2);
  EXPECT_EQ(attr_f64(f, "/", "aux_loss"), 1.125);
  EXPECT_EQ(attr_f64(f, "/", "z_loss"), 0.5);
  EXPECT_EQ(attr_f64(f, "/", "dropped_fraction"), 0.2);
  EXPECT_EQ(read_ds(f, "/routing/token", H5T_STD_I64LE).i64, o.token);
  EXPECT_EQ(read_ds(f, "/routing/expert", H5T_STD_I32LE).i64,
            (std::vector<std::int64_t>{0, 2, 1, 2}));
  EXPECT_EQ(read_ds(f, "/routing/slot", H5T_STD_I32LE).i64,
            (std::vector<std::int64_t>{0, 0, 0, 1}));
  EXPECT_EQ(read_ds(f, "/routing/weight", H5T_IEEE_F64LE).f64, o.weight);
  EXPECT_EQ(read_ds(f, "/routing/dropped_token", H5T_STD_I64LE).i64, o.dropped_token);
  EXPECT_EQ(read_ds(f, "/routing/dropped_expert", H5T_STD_I32LE).i64,
            (std::vector<std::int64_t>{2}));
  EXPECT_EQ(read_ds(f, "/load/routed", H5T_STD_I64LE).i64, o.load_routed);
  EXPECT_EQ(read_ds(f, "/load/kept", H5T_STD_I64LE).i64, o.load_kept);
  EXPECT_EQ(read_ds(f, "/routing/token", H5T_STD_I64LE).dims, std::vector<hsize_t>{4});
}

TEST_F(IoTest, RouteOutputEmptyDroppedAndOverwrite) {
  const fs::path p = file("route.h5");
  write_route_output(p.string(), route());  // an older file at the same path gets replaced
  RouteOutput o = route();
  o.dropped_token.clear();
  o.dropped_expert.clear();
  o.capacity = -1;
  write_route_output(p.string(), o);
  Id f(open_ro(p), H5Fclose);
  const Data dt = read_ds(f, "/routing/dropped_token", H5T_STD_I64LE);
  EXPECT_EQ(dt.dims, std::vector<hsize_t>{0});
  EXPECT_TRUE(dt.i64.empty());
  const Data de = read_ds(f, "/routing/dropped_expert", H5T_STD_I32LE);
  EXPECT_EQ(de.dims, std::vector<hsize_t>{0});
  EXPECT_EQ(attr_i64(f, "/", "capacity"), -1);

  // A run where nothing was kept at all.
  RouteOutput none = route();
  none.token.clear();
  none.expert.clear();
  none.slot.clear();
  none.weight.clear();
  const fs::path q = file("none.h5");
  write_route_output(q.string(), none);
  Id g(open_ro(q), H5Fclose);
  EXPECT_EQ(read_ds(g, "/routing/weight", H5T_IEEE_F64LE).dims, std::vector<hsize_t>{0});
}

TEST_F(IoTest, RouteOutputValidation) {
  const fs::path p = file("route.h5");
  RouteOutput o = route();
  o.slot.pop_back();
  EXPECT_NE(error_of([&] { write_route_output(p.string(), o); }).find("slot 3"), std::string::npos);
  o = route();
  o.dropped_expert.push_back(1);
  EXPECT_THROW(write_route_output(p.string(), o), std::runtime_error);
  o = route();
  o.load_kept.pop_back();
  EXPECT_THROW(write_route_output(p.string(), o), std::runtime_error);
  o = route();
  o.expert[1] = 3;
  EXPECT_NE(error_of([&] { write_route_output(p.string(), o); }).find("expert[1] = 3"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p.string() + ".tmp"));

  // Unwritable destination: the error names the path and no temporary file is left.
  const std::string bad = (dir_ / "no_such_dir" / "route.h5").string();
  EXPECT_NE(error_of([&] { write_route_output(bad, route()); }).find(bad), std::string::npos);
}

}  // namespace
