// The `moesim route` output file (write_route_output), written under a temporary name and renamed.
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
#include "moesim/io/trace_file.hpp"

namespace moesim::io {

using namespace h5util;

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
