// Exclusive output ownership by a POSIX record lock (file_lock.hpp).
#include "moesim/util/file_lock.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <utility>

namespace moesim {
namespace {

std::string owner_text() {
  char host[256] = {};
  (void)gethostname(host, sizeof host - 1);
  const char* job = std::getenv("SLURM_JOB_ID");
  char when[32] = {};
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return "pid " + std::to_string(getpid()) + " on " + host +
         (job ? std::string(", Slurm job ") + job : std::string()) + ", since " + when;
}

}  // namespace

std::optional<FileLock> FileLock::try_acquire(const std::string& path, std::string* holder) {
  const std::string lock_path = path + ".lock";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    throw std::runtime_error("cannot create the lock file '" + lock_path +
                             "': " + std::strerror(errno));
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (::fcntl(fd, F_OFD_SETLK, &fl) != 0) {
    const int err = errno;
    if (holder) {
      char buf[512] = {};
      const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
      *holder = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string("unknown");
      while (!holder->empty() && (holder->back() == '\n' || holder->back() == '\0'))
        holder->pop_back();
    }
    ::close(fd);
    if (err == EACCES || err == EAGAIN) return std::nullopt;
    throw std::runtime_error("cannot lock '" + lock_path + "': " + std::strerror(err));
  }
  const std::string who = owner_text() + "\n";
  if (::ftruncate(fd, 0) == 0) (void)::pwrite(fd, who.data(), who.size(), 0);
  return FileLock(fd, lock_path);
}

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the record lock
}

FileLock::FileLock(FileLock&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), lock_path_(std::move(other.lock_path_)) {}

FileLock& FileLock::operator=(FileLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    lock_path_ = std::move(other.lock_path_);
  }
  return *this;
}

}  // namespace moesim
