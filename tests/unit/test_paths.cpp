// Same-file detection by identity and output-path checks (util/paths.hpp, issue 7 item 6).
// Works in a fresh temporary directory (the test's working directory is changed to it).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "moesim/config/config.hpp"
#include "moesim/util/paths.hpp"

namespace moesim::util {
namespace {

namespace fs = std::filesystem;

class Paths : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = (fs::temp_directory_path() / "moesim_paths_XXXXXX").string();
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    old_ = fs::current_path();
    fs::current_path(dir_);
    fs::create_directory("sub");
  }
  void TearDown() override {
    fs::current_path(old_);
    fs::remove_all(dir_);
  }
  static void touch(const std::string& p) { std::ofstream(p) << "x"; }
  static bool has(const std::vector<ConfigProblem>& ps, const std::string& key,
                  const std::string& text) {
    for (const auto& p : ps)
      if (p.key.find(key) != std::string::npos &&
          (p.value.find(text) != std::string::npos || p.allowed.find(text) != std::string::npos))
        return true;
    return false;
  }
  fs::path dir_, old_;
};

TEST_F(Paths, NotYetExistingFilesMatchHoweverSpelled) {
  const FileIdentity a = file_identity("x.h5");
  EXPECT_FALSE(a.exists);
  EXPECT_EQ(a.canonical, (fs::canonical(dir_) / "x.h5").string());
  for (const std::string& other :
       std::vector<std::string>{"./x.h5", "sub/../x.h5", (dir_ / "x.h5").string()})
    EXPECT_TRUE(same_file(a, file_identity(other))) << other;
  EXPECT_FALSE(same_file(a, file_identity("sub/x.h5")));
  EXPECT_FALSE(same_file(a, file_identity("y.h5")));
  // A missing parent directory: no identity, and never "the same" as anything.
  EXPECT_FALSE(same_file(file_identity("nodir/x.h5"), file_identity("nodir/x.h5")));
  // Through a symlinked directory.
  fs::create_directory_symlink("sub", "link_to_sub");
  EXPECT_TRUE(same_file(file_identity("sub/z.h5"), file_identity("link_to_sub/z.h5")));
}

TEST_F(Paths, ExistingFilesMatchByInodeThroughLinks) {
  touch("f.ini");
  fs::create_hard_link("f.ini", "sub/hard.ini");
  fs::create_symlink(dir_ / "f.ini", "sym.ini");
  const FileIdentity f = file_identity("f.ini");
  EXPECT_TRUE(f.exists);
  EXPECT_TRUE(same_file(f, file_identity("sub/hard.ini")));
  EXPECT_TRUE(same_file(f, file_identity("sym.ini")));
  EXPECT_TRUE(same_file(f, file_identity("./sub/../f.ini")));
  touch("g.ini");
  EXPECT_FALSE(same_file(f, file_identity("g.ini")));
  // A dangling symlink names the file it would create.
  fs::create_symlink(dir_ / "new.h5", "dangling.h5");
  EXPECT_TRUE(same_file(file_identity("dangling.h5"), file_identity("new.h5")));
}

TEST_F(Paths, RunPathPairsAreRefusedNamingBothKeys) {
  touch("params.ini");
  fs::create_symlink("params.ini", "params_link.ini");
  Config c;
  c.output.file = "out.h5";
  c.checkpoint.file = "./out.h5";  // checkpoint = result file
  auto ps = check_paths(c, Mode::run, "params.ini");
  ASSERT_EQ(ps.size(), 1u);
  EXPECT_EQ(ps[0].key, "checkpoint.file");
  EXPECT_NE(ps[0].allowed.find("output.file = out.h5"), std::string::npos) << ps[0].allowed;

  c.checkpoint.file = "params_link.ini";  // checkpoint = parameter file (through a symlink)
  ps = check_paths(c, Mode::run, "params.ini");
  EXPECT_TRUE(has(ps, "checkpoint.file", "parameter file = params.ini")) << ps.size();

  c.checkpoint.file = "";
  c.output.file = "sub/../params.ini";  // the result would overwrite the parameter file
  ps = check_paths(c, Mode::run, "params.ini");
  EXPECT_TRUE(has(ps, "output.file", "parameter file")) << ps.size();

  c.output.file = "x.h5";
  c.checkpoint.file = "";
  EXPECT_TRUE(check_paths(c, Mode::run, "params.ini").empty());
  // output.file = checkpoint.file + ".tmp": writing the checkpoint would replace the result.
  c.checkpoint.file = "ck.h5";
  c.output.file = "sub/../ck.h5.tmp";
  ps = check_paths(c, Mode::run, "");
  EXPECT_TRUE(has(ps, "checkpoint.file + \".tmp\"", "output.file = sub/../ck.h5.tmp"))
      << (ps.empty() ? "" : ps[0].allowed);
}

TEST_F(Paths, RoutePathPairs) {
  touch("trace.h5");
  Config c;
  c.trace.input = "trace.h5";
  c.trace.output = "./trace.h5";
  auto ps = check_paths(c, Mode::route, "");
  ASSERT_EQ(ps.size(), 1u);
  EXPECT_EQ(ps[0].key, "trace.output");
  EXPECT_NE(ps[0].allowed.find("trace.input = trace.h5"), std::string::npos);
  c.trace.output = "routed.h5";
  EXPECT_TRUE(check_paths(c, Mode::route, "").empty());
  // Reading the same file twice is harmless: a trace that is also the parameter file's name.
  EXPECT_TRUE(check_paths(c, Mode::route, "trace.h5").empty());
}

TEST_F(Paths, OutputDirectoriesMustExistAndBeDirectories) {
  touch("plain");
  Config c;
  c.output.file = "out.h5";
  c.checkpoint.file = "missing_dir/ck.h5";
  auto ps = check_paths(c, Mode::run, "");
  ASSERT_EQ(ps.size(), 1u);
  EXPECT_EQ(ps[0].key, "checkpoint.file");
  EXPECT_NE(ps[0].allowed.find("does not exist"), std::string::npos) << ps[0].allowed;
  c.checkpoint.file = "plain/ck.h5";
  ps = check_paths(c, Mode::run, "");
  ASSERT_EQ(ps.size(), 1u);
  EXPECT_NE(ps[0].allowed.find("not a directory"), std::string::npos) << ps[0].allowed;
  c.checkpoint.file = "";
  c.output.file = "sub";
  ps = check_paths(c, Mode::run, "");
  EXPECT_TRUE(has(ps, "output.file", "is a directory"));
  EXPECT_EQ(output_path_problem("sub/new.h5"), "");
}

}  // namespace
}  // namespace moesim::util
