// The Megatron-Core router-trace JSONL loader (io/routing_trace.hpp): a well-formed trace
// (blank lines, mtp records, several ranks), the (step, layer) grouping, and every kind of
// malformed line rejected with file, line and what is wrong.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "moesim/io/routing_trace.hpp"

using moesim::io::choices_by_step_layer;
using moesim::io::read_routing_trace_jsonl;
using moesim::io::TraceFormatError;

namespace {

// A trace file in the test's temporary directory, removed when the test is done. The name
// carries the process id: two test runs at once (CI's two builds, two clones) must not read each
// other's files, and none may be left behind (they were, under fixed names, until 2026-11-30).
struct TraceFile {
  std::string path;
  TraceFile(const std::string& name, const std::string& text)
      : path(::testing::TempDir() + "moesim_trace_" + name + "_" + std::to_string(::getpid()) +
             ".jsonl") {
    std::ofstream(path) << text;
  }
  ~TraceFile() { std::remove(path.c_str()); }
  TraceFile(const TraceFile&) = delete;
  TraceFile& operator=(const TraceFile&) = delete;
};

std::string error_of(const std::string& name, const std::string& text) {
  const TraceFile file(name, text);
  try {
    (void)read_routing_trace_jsonl(file.path);
  } catch (const TraceFormatError& e) {
    return e.what();
  }
  return "(no error)";
}

const char* kGood =
    R"({"step": 1, "stage": "pre_dispatch", "block": "decoder", "layer": 0, "rank": 1, "num_tokens": 2, "topk": 2, "top_indices": [[3, 0], [2, 1]]})"
    "\n"
    R"({"step": 0, "stage": "pre_dispatch", "block": "decoder", "layer": 2, "rank": 0, "num_tokens": 3, "topk": 2, "top_indices": [[1, 3], [0, 2], [5, 4]]})"
    "\n\n"
    R"({"step": 0, "block": "mtp", "mtp_idx": 0, "layer": 0, "rank": 0, "num_tokens": 1, "topk": 2, "top_indices": [[1, 0]]})"
    "\n"
    R"({"step": 1, "layer": 0, "rank": 0, "top_indices": [[7, 6]], "hs_offset": 0, "extra": {"a": [1.5, null, true, "x\"y"]}})"
    "\n";

}  // namespace

TEST(RoutingTraceJsonl, ReadsMegatronRecords) {
  const TraceFile file("good", kGood);
  const auto trace = read_routing_trace_jsonl(file.path);
  ASSERT_EQ(trace.records.size(), 3U);
  EXPECT_EQ(trace.skipped_mtp, 1);
  EXPECT_EQ(trace.max_expert, 7);
  const auto& r = trace.records[1];
  EXPECT_EQ(r.line, 2);
  EXPECT_EQ(r.step, 0);
  EXPECT_EQ(r.layer, 2);
  EXPECT_EQ(r.tokens, 3);
  EXPECT_EQ(r.topk, 2);
  EXPECT_EQ(r.experts, (std::vector<std::int32_t>{1, 3, 0, 2, 5, 4}));
  EXPECT_EQ(trace.records[2].line, 5);  // blank line counted
  EXPECT_EQ(trace.records[2].tokens, 1);

  // Grouped by (step, layer), ranks in order: step 1 layer 0 = rank 0's token, then rank 1's.
  const auto groups = choices_by_step_layer(trace, file.path);
  ASSERT_EQ(groups.size(), 2U);
  EXPECT_EQ(groups[0].step, 0);
  EXPECT_EQ(groups[0].layer, 2);
  EXPECT_EQ(groups[1].step, 1);
  EXPECT_EQ(groups[1].tokens, 3);
  EXPECT_EQ(groups[1].experts, (std::vector<std::int32_t>{7, 6, 3, 0, 2, 1}));
}

TEST(RoutingTraceJsonl, MalformedLinesNameFileLineAndProblem) {
  const std::string ok = R"({"step": 0, "layer": 0, "top_indices": [[0, 1]]})"
                         "\n";
  struct Case {
    std::string name, text, expected;
  };
  const std::vector<Case> cases = {
      {"syntax",
       ok + R"({"step": 0, "layer": 0, "top_indices": [[0, 1]})"
            "\n",
       ":2: invalid JSON at column"},
      {"not_object", "[1, 2]\n", ":1: the line is an array, expected a JSON object"},
      {"no_step",
       R"({"layer": 0, "top_indices": [[0]]})"
       "\n",
       ":1: missing key \"step\""},
      {"no_top",
       R"({"step": 0, "layer": 0})"
       "\n",
       ":1: missing key \"top_indices\""},
      {"neg_layer",
       R"({"step": 0, "layer": -1, "top_indices": [[0]]})"
       "\n",
       "\"layer\" = -1, expected >= 0"},
      {"str_step",
       R"({"step": "0", "layer": 0, "top_indices": [[0]]})"
       "\n",
       "\"step\" is a string, expected an integer"},
      {"ragged",
       R"({"step": 0, "layer": 0, "top_indices": [[0, 1], [2]]})"
       "\n",
       "top_indices[1] has 1 entries, expected topk = 2"},
      {"topk_mismatch",
       R"({"step": 0, "layer": 0, "topk": 3, "top_indices": [[0, 1]]})"
       "\n",
       "top_indices[0] has 2 entries, expected topk = 3"},
      {"tokens_mismatch",
       R"({"step": 0, "layer": 0, "num_tokens": 5, "top_indices": [[0, 1]]})"
       "\n",
       "\"num_tokens\" = 5 but \"top_indices\" has 1 rows"},
      {"negative_expert",
       R"({"step": 0, "layer": 0, "top_indices": [[0, -2]]})"
       "\n",
       "top_indices[0][1] is not an expert index"},
      {"float_expert",
       R"({"step": 0, "layer": 0, "top_indices": [[0.5, 1]]})"
       "\n",
       "top_indices[0][0] is not an expert index"},
      {"duplicate",
       R"({"step": 0, "layer": 0, "top_indices": [[3, 3]]})"
       "\n",
       "lists expert 3 twice"},
      {"empty_rows",
       R"({"step": 0, "layer": 0, "top_indices": []})"
       "\n",
       "is empty"},
      {"bad_block",
       R"({"step": 0, "layer": 0, "block": "encoder", "top_indices": [[0]]})"
       "\n",
       "\"block\" must be"},
      {"empty_file", "\n\n", "no decoder record"},
  };
  for (const Case& c : cases) {
    const std::string msg = error_of(c.name, c.text);
    EXPECT_NE(msg.find("moesim_trace_" + c.name + "_"), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expected), std::string::npos) << c.name << ": " << msg;
  }
  const std::string missing = ::testing::TempDir() + "moesim_trace_does_not_exist.jsonl";
  std::remove(missing.c_str());
  EXPECT_THROW(read_routing_trace_jsonl(missing), TraceFormatError);
}

TEST(RoutingTraceJsonl, OneStepLayerMustKeepOneTopK) {
  const TraceFile file("mixed_k", R"({"step": 0, "layer": 0, "rank": 0, "top_indices": [[0, 1]]})"
                                  "\n"
                                  R"({"step": 0, "layer": 0, "rank": 1, "top_indices": [[0]]})"
                                  "\n");
  const auto trace = read_routing_trace_jsonl(file.path);
  try {
    (void)choices_by_step_layer(trace, file.path);
    ADD_FAILURE() << "no error";
  } catch (const TraceFormatError& e) {
    EXPECT_NE(std::string(e.what()).find(":2: topk = 1 but line 1"), std::string::npos) << e.what();
  }
}
