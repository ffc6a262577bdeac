// Start decisions of a run (train/resume.hpp) and exclusive output ownership (util/file_lock.hpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "moesim/config/config.hpp"
#include "moesim/train/resume.hpp"
#include "moesim/util/file_lock.hpp"

namespace {

using namespace moesim;
using namespace moesim::train;

Config cfg(bool resume, std::int64_t steps = 100) {
  Config c;
  c.training.steps = steps;
  c.checkpoint.resume = resume;
  c.output.file = "/tmp/x.h5";
  return c;
}

CheckpointState ckpt_at(std::int64_t step, const Config& c) {
  CheckpointState s;
  s.exists = s.readable = true;
  s.step = step;
  s.config_ini = to_ini(c);
  return s;
}

ResultState result_rows(std::int64_t rows, const Config& c, bool complete = false) {
  ResultState r;
  r.exists = r.readable = true;
  r.rows = rows;
  r.complete = complete;
  r.config_ini = to_ini(c);
  return r;
}

std::string refusal(const Config& c, const CheckpointState& k, const ResultState& r) {
  try {
    (void)decide_start(c, k, r);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(Resume, WithoutResumeAlwaysFreshAndRemovesAStaleCheckpoint) {
  const Config c = cfg(false);
  const StartDecision d = decide_start(c, ckpt_at(40, c), result_rows(50, c));
  EXPECT_EQ(d.kind, StartKind::fresh);
  EXPECT_TRUE(d.remove_stale_checkpoint);
  EXPECT_FALSE(decide_start(c, {}, {}).remove_stale_checkpoint);
}

TEST(Resume, ResumesIntoAFileWithEveryRowBeforeTheCheckpoint) {
  const Config c = cfg(true);
  const StartDecision d = decide_start(c, ckpt_at(40, c), result_rows(47, c));
  EXPECT_EQ(d.kind, StartKind::resume);
  EXPECT_EQ(d.step, 40);
}

TEST(Resume, FinishedRunIsANoOp) {
  const Config c = cfg(true);
  EXPECT_EQ(decide_start(c, ckpt_at(100, c), result_rows(100, c, true)).kind,
            StartKind::already_complete);
  EXPECT_EQ(decide_start(c, {}, result_rows(100, c, true)).kind, StartKind::already_complete);
  // More training.steps continues a finished run from its final checkpoint.
  const Config more = cfg(true, 150);
  const StartDecision d = decide_start(more, ckpt_at(100, c), result_rows(100, c, true));
  EXPECT_EQ(d.kind, StartKind::resume);
  EXPECT_EQ(d.step, 100);
}

TEST(Resume, RefusesLostRowsAMissingFileAndStepsOutOfRange) {
  const Config c = cfg(true);
  EXPECT_NE(refusal(c, ckpt_at(40, c), result_rows(30, c)).find("every step before"),
            std::string::npos);
  EXPECT_NE(refusal(c, ckpt_at(40, c), ResultState{}).find("missing"), std::string::npos);
  ResultState broken;
  broken.exists = true;
  broken.problem = "not a readable HDF5 file";
  EXPECT_NE(refusal(c, ckpt_at(40, c), broken).find("not a readable HDF5 file"), std::string::npos);
  const std::string past = refusal(cfg(true, 20), ckpt_at(40, c), result_rows(40, c));
  EXPECT_NE(past.find("training.steps"), std::string::npos) << past;
  EXPECT_NE(past.find("40"), std::string::npos) << past;
  CheckpointState negative = ckpt_at(-3, c);
  EXPECT_NE(refusal(c, negative, result_rows(40, c)).find("step >= 0"), std::string::npos);
  CheckpointState corrupt;
  corrupt.exists = true;
  corrupt.problem = "tensor 'param/x' does not match its checksum";
  EXPECT_NE(refusal(c, corrupt, result_rows(40, c)).find("checksum"), std::string::npos);
}

TEST(Resume, ACheckpointOfAnotherRunIsRefusedNamingKeyAndBothValues) {
  const Config c = cfg(true);
  Config other = c;
  other.training.seed = 7;
  other.routing.rule = RoutingRuleKind::switch_top1;
  other.routing.k = 1;
  const std::string msg = refusal(c, ckpt_at(40, other), result_rows(45, c));
  EXPECT_NE(msg.find("training.seed: was 7, now 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("routing.rule: was switch, now topk"), std::string::npos) << msg;
  EXPECT_NE(msg.find("routing.k: was 1, now 2"), std::string::npos) << msg;
  // ... and a result file of another run, too.
  EXPECT_NE(refusal(c, ckpt_at(40, c), result_rows(45, other)).find("training.seed"),
            std::string::npos);
}

TEST(Resume, CadencePathsAndStepsMayDiffer) {
  const Config c = cfg(true);
  Config later = c;
  later.training.steps = 300;
  later.training.eval_every = 7;
  later.output.log_every = 1;
  later.output.file = "/tmp/elsewhere.h5";
  later.checkpoint.every = 3;
  later.routing.dispatch = DispatchKind::alltoall_padded;
  later.routing.redundant_experts = 4;  // redundant experts: summation order only (docs/eplb.md)
  later.routing.rebalance_every = 7;
  later.routing.overlap_degree = 2;  // scheduling only (bitwise the same run)
  EXPECT_TRUE(trajectory_differences(to_ini(c), later).empty());
  Config lr = c;
  lr.training.learning_rate = 0.5;
  ASSERT_EQ(trajectory_differences(to_ini(c), lr).size(), 1u);
  EXPECT_FALSE(may_differ_on_resume("training.learning_rate"));
  EXPECT_TRUE(may_differ_on_resume("checkpoint.file"));
}

TEST(FileLock, SecondOwnerIsRefusedAndToldWhoHoldsIt) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("moesim_lock_test_" + std::to_string(getpid())))
          .string();
  std::string holder;
  auto first = FileLock::try_acquire(path, &holder);
  ASSERT_TRUE(first.has_value());
  auto second = FileLock::try_acquire(path, &holder);
  EXPECT_FALSE(second.has_value());
  EXPECT_NE(holder.find("pid " + std::to_string(getpid())), std::string::npos) << holder;
  first.reset();  // released: the next owner gets it
  EXPECT_TRUE(FileLock::try_acquire(path, &holder).has_value());
  std::filesystem::remove(path + ".lock");
  EXPECT_THROW((void)FileLock::try_acquire("/nonexistent_dir_moesim/x.h5", &holder),
               std::runtime_error);
}

}  // namespace
