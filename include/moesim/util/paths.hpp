// Paths a run reads and writes: same-file detection by identity (not by spelling) and
// "can this output be created" checks, run before any work (issue 7 item 6).
//
// Identity: an existing file is its (st_dev, st_ino) from stat(2), so hard links, symlinks,
// "./x", "x" and "dir/../x" all match; a file that does not exist yet is the canonical
// absolute path of its (existing) parent directory + its name.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moesim/config/config.hpp"

namespace moesim::util {

struct FileIdentity {
  bool exists = false;    // stat() succeeded: dev/ino are set
  std::uint64_t dev = 0;  // st_dev
  std::uint64_t ino = 0;  // st_ino
  std::string canonical;  // !exists: canonical parent + "/" + name ("" if the parent is missing)
};

// The identity of `path` (never throws).
FileIdentity file_identity(const std::string& path);

// True when both name the same file (existing: same dev+ino; new: same canonical path).
bool same_file(const FileIdentity& a, const FileIdentity& b);

// Why `path` cannot be created or overwritten, or "" if it can: its directory must exist, be a
// directory and be writable (access W_OK|X_OK); the path itself must not be a directory, and
// an existing file must be writable.
std::string output_path_problem(const std::string& path);

// A path the program uses, with the key that names it.
struct NamedPath {
  std::string key;   // "output.file", "checkpoint.file + \".tmp\"", "parameter file", ...
  std::string path;  // as given (or derived)
  bool written;      // the program creates or overwrites it
};

// The paths `moesim run` (mode run) or `moesim route` (mode route) uses: the parameter file
// (if any), output.file and its ".lock" (util/file_lock.hpp), checkpoint.file (default
// output.file + ".ckpt") and its ".tmp" sibling; trace.input, trace.output and its ".tmp" sibling.
// bench: the parameter file only.
std::vector<NamedPath> paths_of(const Config& cfg, Mode mode, const std::string& param_file);

// Every pair of paths (at least one written) that names the same file, and every written path
// that cannot be created: one problem each, naming both keys and values.
std::vector<ConfigProblem> check_paths(const Config& cfg, Mode mode, const std::string& param_file);

}  // namespace moesim::util
