// Router traces from other frameworks: Megatron-Core's RouterTracer JSONL
// (megatron/core/transformer/moe/router_tracer: `router_trace_rank{R}.jsonl`, written with
// `--moe-routing-trace-path`), one JSON object per line and (step, layer, rank):
//   {"step": 0, "stage": "pre_dispatch", "block": "decoder", "layer": 3, "rank": 0,
//    "num_tokens": 4, "topk": 2, "top_indices": [[5, 1], [0, 7], [2, 5], [5, 6]]}
// The exact accepted format and what replaying it can and cannot do: docs/routing_traces.md.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace moesim::io {

// A malformed trace: the message names the file, the line and what is wrong.
class TraceFormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One line of the trace: the top-k expert indices of `tokens` tokens at one (step, layer) on
// one rank, in the order the router listed them (Megatron: by descending score).
struct RoutingTraceRecord {
  std::int64_t line = 0;  // 1-based line in the file
  std::int64_t step = 0, layer = 0, rank = 0;
  std::int64_t tokens = 0, topk = 0;
  std::vector<std::int32_t> experts;  // [tokens * topk] row-major
};

struct RoutingTrace {
  std::vector<RoutingTraceRecord> records;  // decoder records in file order
  std::int64_t skipped_mtp = 0;             // "block": "mtp" records (not replayed)
  std::int32_t max_expert = -1;             // largest expert index seen
};

// Reads and checks a whole JSONL trace. Throws TraceFormatError("FILE:LINE: what") on the
// first malformed line, and when the file cannot be read or holds no decoder record.
RoutingTrace read_routing_trace_jsonl(const std::string& path);

// The choices of one (step, layer): the records of every rank concatenated in rank order
// (then file order), so token t of the result is a position in the global micro-batch.
struct StepLayerChoices {
  std::int64_t step = 0, layer = 0;
  std::int64_t tokens = 0, topk = 0;
  std::vector<std::int32_t> experts;  // [tokens * topk]
};
// Sorted by (step, layer). Throws TraceFormatError if one (step, layer) mixes top-k values.
std::vector<StepLayerChoices> choices_by_step_layer(const RoutingTrace& trace,
                                                    const std::string& path);

}  // namespace moesim::io
