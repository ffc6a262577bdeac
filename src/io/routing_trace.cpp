// Megatron-Core router-trace JSONL reader (routing_trace.hpp). A small strict JSON parser
// (objects, arrays, strings, numbers, true/false/null) per line; every error names the file,
// the line and what is wrong.
#include "moesim/io/routing_trace.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string_view>
#include <utility>

namespace moesim::io {
namespace {

struct JVal {
  enum Kind { null, boolean, integer, real, string, array, object } kind = null;
  std::int64_t i = 0;
  double d = 0;
  std::string s;
  std::vector<JVal> items;                        // array
  std::vector<std::pair<std::string, JVal>> obj;  // object, in order
  const JVal* get(std::string_view key) const {
    for (const auto& [k, v] : obj)
      if (k == key) return &v;
    return nullptr;
  }
};

const char* kind_name(JVal::Kind k) {
  switch (k) {
    case JVal::null:
      return "null";
    case JVal::boolean:
      return "a boolean";
    case JVal::integer:
      return "an integer";
    case JVal::real:
      return "a non-integer number";
    case JVal::string:
      return "a string";
    case JVal::array:
      return "an array";
    case JVal::object:
      return "an object";
  }
  return "?";
}

class Parser {
 public:
  explicit Parser(std::string_view text) : t_(text) {}
  // Throws std::string (the message without file/line) on a syntax error.
  JVal document() {
    JVal v = value(0);
    ws();
    if (p_ != t_.size()) fail("unexpected text after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw "invalid JSON at column " + std::to_string(p_ + 1) + ": " + what;
  }
  void ws() {
    while (p_ < t_.size() && (t_[p_] == ' ' || t_[p_] == '\t' || t_[p_] == '\r')) ++p_;
  }
  bool eat(char c) {
    ws();
    if (p_ < t_.size() && t_[p_] == c) {
      ++p_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail(std::string("expected '") + c + "'");
  }
  JVal value(int depth) {
    if (depth > 16) fail("nesting deeper than 16");
    ws();
    if (p_ >= t_.size()) fail("unexpected end of line");
    const char c = t_[p_];
    JVal v;
    if (c == '{') {
      ++p_;
      v.kind = JVal::object;
      if (eat('}')) return v;
      do {
        ws();
        if (p_ >= t_.size() || t_[p_] != '"') fail("expected a string key");
        std::string key = str();
        expect(':');
        v.obj.emplace_back(std::move(key), value(depth + 1));
      } while (eat(','));
      expect('}');
    } else if (c == '[') {
      ++p_;
      v.kind = JVal::array;
      if (eat(']')) return v;
      do v.items.push_back(value(depth + 1));
      while (eat(','));
      expect(']');
    } else if (c == '"') {
      v.kind = JVal::string;
      v.s = str();
    } else if (t_.substr(p_, 4) == "true" || t_.substr(p_, 5) == "false") {
      v.kind = JVal::boolean;
      v.i = t_[p_] == 't';
      p_ += v.i ? 4 : 5;
    } else if (t_.substr(p_, 4) == "null") {
      p_ += 4;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      number(v);
    } else {
      fail(std::string("unexpected character '") + c + "'");
    }
    return v;
  }
  std::string str() {
    ++p_;  // opening quote
    std::string out;
    while (p_ < t_.size() && t_[p_] != '"') {
      if (t_[p_] == '\\') {
        if (++p_ >= t_.size()) break;
        const char e = t_[p_];
        if (e == 'u') {  // kept verbatim: keys and values we read are ASCII
          if (p_ + 4 >= t_.size()) fail("truncated \\u escape");
          out += "\\u" + std::string(t_.substr(p_ + 1, 4));
          p_ += 4;
        } else {
          const std::string_view from = "\"\\/bfnrt", to = "\"\\/\b\f\n\r\t";
          const auto k = from.find(e);
          if (k == std::string_view::npos) fail(std::string("bad escape '\\") + e + "'");
          out += to[k];
        }
      } else {
        out += t_[p_];
      }
      ++p_;
    }
    if (p_ >= t_.size()) fail("unterminated string");
    ++p_;
    return out;
  }
  void number(JVal& v) {
    const std::size_t start = p_;
    if (t_[p_] == '-') ++p_;
    bool integral = true;
    while (p_ < t_.size() && ((t_[p_] >= '0' && t_[p_] <= '9') || t_[p_] == '.' || t_[p_] == 'e' ||
                              t_[p_] == 'E' || t_[p_] == '+' || t_[p_] == '-')) {
      if (t_[p_] == '.' || t_[p_] == 'e' || t_[p_] == 'E') integral = false;
      ++p_;
    }
    const std::string text(t_.substr(start, p_ - start));
    char* end = nullptr;
    errno = 0;
    if (integral) {
      v.kind = JVal::integer;
      v.i = std::strtoll(text.c_str(), &end, 10);
    } else {
      v.kind = JVal::real;
      v.d = std::strtod(text.c_str(), &end);
    }
    if (end != text.c_str() + text.size() || errno == ERANGE)
      fail("malformed number '" + text + "'");
  }
  std::string_view t_;
  std::size_t p_ = 0;
};

std::int64_t require_int(const JVal& o, const char* key, bool required, std::int64_t fallback,
                         const std::string& where) {
  const JVal* v = o.get(key);
  if (v == nullptr) {
    if (required) throw TraceFormatError(where + "missing key \"" + key + "\"");
    return fallback;
  }
  if (v->kind != JVal::integer)
    throw TraceFormatError(where + "\"" + key + "\" is " + kind_name(v->kind) +
                           ", expected an integer");
  if (v->i < 0)
    throw TraceFormatError(where + "\"" + key + "\" = " + std::to_string(v->i) + ", expected >= 0");
  return v->i;
}

}  // namespace

RoutingTrace read_routing_trace_jsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw TraceFormatError(path + ": cannot open the trace file for reading");
  RoutingTrace trace;
  std::string text;
  std::int64_t lineno = 0;
  while (std::getline(in, text)) {
    ++lineno;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank line
    const std::string where = path + ":" + std::to_string(lineno) + ": ";
    JVal doc;
    try {
      doc = Parser(text).document();
    } catch (const std::string& what) {
      throw TraceFormatError(where + what);
    }
    if (doc.kind != JVal::object)
      throw TraceFormatError(where + "the line is " + kind_name(doc.kind) +
                             ", expected a JSON object (one record per line)");
    if (const JVal* block = doc.get("block")) {
      if (block->kind != JVal::string || (block->s != "decoder" && block->s != "mtp"))
        throw TraceFormatError(where + "\"block\" must be \"decoder\" or \"mtp\"");
      if (block->s == "mtp") {
        ++trace.skipped_mtp;
        continue;
      }
    }
    RoutingTraceRecord r;
    r.line = lineno;
    r.step = require_int(doc, "step", true, 0, where);
    r.layer = require_int(doc, "layer", true, 0, where);
    r.rank = require_int(doc, "rank", false, 0, where);
    const JVal* top = doc.get("top_indices");
    if (top == nullptr) throw TraceFormatError(where + "missing key \"top_indices\"");
    if (top->kind != JVal::array)
      throw TraceFormatError(where + "\"top_indices\" is " + kind_name(top->kind) +
                             ", expected an array of [topk] arrays");
    r.tokens = static_cast<std::int64_t>(top->items.size());
    r.topk = r.tokens > 0 && top->items[0].kind == JVal::array
                 ? static_cast<std::int64_t>(top->items[0].items.size())
                 : 0;
    const std::int64_t topk = require_int(doc, "topk", false, r.topk, where);
    const std::int64_t tokens = require_int(doc, "num_tokens", false, r.tokens, where);
    if (tokens != r.tokens)
      throw TraceFormatError(where + "\"num_tokens\" = " + std::to_string(tokens) +
                             " but \"top_indices\" has " + std::to_string(r.tokens) + " rows");
    if (r.tokens == 0) throw TraceFormatError(where + "\"top_indices\" is empty (no tokens)");
    if (topk < 1) throw TraceFormatError(where + "\"topk\" = 0, expected >= 1");
    r.topk = topk;
    r.experts.reserve(static_cast<std::size_t>(r.tokens * r.topk));
    for (std::int64_t t = 0; t < r.tokens; ++t) {
      const JVal& row = top->items[static_cast<std::size_t>(t)];
      const std::string at = "top_indices[" + std::to_string(t) + "]";
      if (row.kind != JVal::array)
        throw TraceFormatError(where + at + " is " + kind_name(row.kind) +
                               ", expected an array of topk expert indices");
      if (static_cast<std::int64_t>(row.items.size()) != r.topk)
        throw TraceFormatError(where + at + " has " + std::to_string(row.items.size()) +
                               " entries, expected topk = " + std::to_string(r.topk));
      for (std::size_t c = 0; c < row.items.size(); ++c) {
        const JVal& x = row.items[c];
        if (x.kind != JVal::integer || x.i < 0 || x.i > 0x7fffffff)
          throw TraceFormatError(where + at + "[" + std::to_string(c) +
                                 "] is not an expert index (an integer >= 0)");
        for (std::size_t b = 0; b < c; ++b)
          if (row.items[b].i == x.i)
            throw TraceFormatError(where + at + " lists expert " + std::to_string(x.i) +
                                   " twice (top-k indices are distinct)");
        r.experts.push_back(static_cast<std::int32_t>(x.i));
        trace.max_expert = std::max(trace.max_expert, static_cast<std::int32_t>(x.i));
      }
    }
    trace.records.push_back(std::move(r));
  }
  if (in.bad()) throw TraceFormatError(path + ": read error");
  if (trace.records.empty())
    throw TraceFormatError(path + ": no decoder record (an empty trace, or only \"mtp\" records)");
  return trace;
}

std::vector<StepLayerChoices> choices_by_step_layer(const RoutingTrace& trace,
                                                    const std::string& path) {
  // (step, layer) -> record indices ordered by (rank, file order).
  std::map<std::pair<std::int64_t, std::int64_t>, std::vector<std::size_t>> groups;
  for (std::size_t i = 0; i < trace.records.size(); ++i)
    groups[{trace.records[i].step, trace.records[i].layer}].push_back(i);
  std::vector<StepLayerChoices> out;
  for (auto& [key, idx] : groups) {
    std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) {
      return trace.records[a].rank < trace.records[b].rank;
    });
    StepLayerChoices c;
    c.step = key.first;
    c.layer = key.second;
    c.topk = trace.records[idx[0]].topk;
    for (std::size_t i : idx) {
      const RoutingTraceRecord& r = trace.records[i];
      if (r.topk != c.topk)
        throw TraceFormatError(path + ":" + std::to_string(r.line) +
                               ": topk = " + std::to_string(r.topk) + " but line " +
                               std::to_string(trace.records[idx[0]].line) + " of the same step " +
                               std::to_string(c.step) + " and layer " + std::to_string(c.layer) +
                               " has topk = " + std::to_string(c.topk));
      c.tokens += r.tokens;
      c.experts.insert(c.experts.end(), r.experts.begin(), r.experts.end());
    }
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace moesim::io
