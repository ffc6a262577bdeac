// Exclusive ownership of an output file for the lifetime of a run: a POSIX record lock
// (fcntl F_OFD_SETLK: owned by the open file, so two runs in one process exclude each other too;
// NFS maps it to a POSIX lock) on "<path>.lock". The kernel drops the lock when the process ends,
// however it ends, so a killed run never leaves a stale lock; the lock file itself stays (its
// content names the last owner, for the message of a refused run).
#pragma once

#include <optional>
#include <string>

namespace moesim {

class FileLock {
 public:
  // Takes the lock of `path` ("<path>.lock") or returns nullopt when another process holds
  // it; `holder` then describes that process (pid, host, job, start). Throws
  // std::runtime_error when the lock file cannot be created at all (e.g. missing directory).
  static std::optional<FileLock> try_acquire(const std::string& path, std::string* holder);
  ~FileLock();
  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  [[nodiscard]] const std::string& lock_path() const { return lock_path_; }

 private:
  FileLock(int fd, std::string lock_path) : fd_(fd), lock_path_(std::move(lock_path)) {}
  int fd_ = -1;
  std::string lock_path_;
};

}  // namespace moesim
