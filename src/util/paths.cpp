// Same-file detection by identity and output-path checks (util/paths.hpp).
#include "moesim/util/paths.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <system_error>

namespace moesim::util {

namespace fs = std::filesystem;

FileIdentity file_identity(const std::string& path) {
  FileIdentity id;
  struct stat st {};
  if (!path.empty() && ::stat(path.c_str(), &st) == 0) {
    id.exists = true;
    id.dev = static_cast<std::uint64_t>(st.st_dev);
    id.ino = static_cast<std::uint64_t>(st.st_ino);
    return id;
  }
  if (path.empty()) return id;
  std::error_code ec;
  const fs::path p(path);
  fs::path parent = p.parent_path();
  if (parent.empty()) parent = ".";
  const fs::path canon = fs::canonical(parent, ec);
  if (ec) return id;
  // A dangling symlink as the name: the file it would create is its target.
  struct stat lst {};
  if (::lstat(path.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode)) {
    const fs::path target = fs::read_symlink(p, ec);
    if (!ec) {
      const fs::path resolved = target.is_absolute() ? target : canon / target;
      return file_identity(resolved.lexically_normal().string());
    }
  }
  id.canonical = (canon / p.filename()).string();
  return id;
}

bool same_file(const FileIdentity& a, const FileIdentity& b) {
  if (a.exists != b.exists) return false;
  if (a.exists) return a.dev == b.dev && a.ino == b.ino;
  return !a.canonical.empty() && a.canonical == b.canonical;
}

std::string output_path_problem(const std::string& path) {
  if (path.empty()) return "it is empty";
  std::error_code ec;
  const fs::path p(path);
  fs::path dir = p.parent_path();
  if (dir.empty()) dir = ".";
  const fs::file_status ds = fs::status(dir, ec);
  if (ec || !fs::exists(ds)) return "its directory " + dir.string() + " does not exist";
  if (!fs::is_directory(ds)) return dir.string() + " is not a directory";
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    return "its directory " + dir.string() + " is not writable";
  const fs::file_status fst = fs::status(p, ec);
  if (!ec && fs::exists(fst)) {
    if (fs::is_directory(fst)) return "it is a directory";
    if (::access(path.c_str(), W_OK) != 0) return "the existing file is not writable";
  }
  return {};
}

std::vector<NamedPath> paths_of(const Config& cfg, Mode mode, const std::string& param_file) {
  std::vector<NamedPath> out;
  if (!param_file.empty()) out.push_back({"parameter file", param_file, false});
  if (mode == Mode::run) {
    // Same rule as train::checkpoint_path (train sits above config; this must not include it).
    const std::string ckpt =
        cfg.checkpoint.file.empty() ? cfg.output.file + ".ckpt" : cfg.checkpoint.file;
    const std::string ckpt_key = cfg.checkpoint.file.empty()
                                     ? "checkpoint.file (default output.file + \".ckpt\")"
                                     : "checkpoint.file";
    out.push_back({"output.file", cfg.output.file, true});
    out.push_back({"output.file + \".lock\"", cfg.output.file + ".lock", true});  // FileLock
    out.push_back({ckpt_key, ckpt, true});
    out.push_back({ckpt_key + " + \".tmp\"", ckpt + ".tmp", true});
  } else if (mode == Mode::route) {
    out.push_back({"trace.input", cfg.trace.input, false});
    out.push_back({"trace.output", cfg.trace.output, true});
    out.push_back({"trace.output + \".tmp\"", cfg.trace.output + ".tmp", true});
  }
  return out;
}

std::vector<ConfigProblem> check_paths(const Config& cfg, Mode mode,
                                       const std::string& param_file) {
  std::vector<ConfigProblem> problems;
  const std::vector<NamedPath> paths = paths_of(cfg, mode, param_file);
  std::vector<FileIdentity> ids;
  ids.reserve(paths.size());
  for (const auto& p : paths) ids.push_back(file_identity(p.path));
  for (std::size_t i = 0; i < paths.size(); ++i) {
    for (std::size_t j = i + 1; j < paths.size(); ++j) {
      if (!paths[i].written && !paths[j].written) continue;
      if (!same_file(ids[i], ids[j])) continue;
      problems.push_back(
          {paths[j].key, paths[j].path,
           "must name a different file than " + paths[i].key + " = " + paths[i].path +
               " (both name the same file" + (ids[i].exists ? "" : ", " + ids[i].canonical) + "; " +
               (paths[j].written ? paths[j].key : paths[i].key) + " would overwrite it)"});
    }
  }
  for (const auto& p : paths) {
    // The .tmp/.lock siblings live in the same directory as their file: checked with it.
    if (!p.written || p.key.find(" + \"") != std::string::npos) continue;
    const std::string why = output_path_problem(p.path);
    if (!why.empty())
      problems.push_back({p.key, p.path, "must be a writable file path (" + why + ")"});
  }
  return problems;
}

}  // namespace moesim::util
