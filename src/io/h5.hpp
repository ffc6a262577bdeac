// Private RAII wrapper over HDF5 C handles for src/io only: every id is closed by its owner
// (also on the exception path), and every failed HDF5 call becomes a std::runtime_error that
// names the file and the object, instead of HDF5's multi-line error stack dump on stderr.
#pragma once

#include <hdf5.h>

#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace moesim::io::h5 {

// An owned HDF5 id closed by `Close`. One type per kind of id, so a dataset cannot be handed
// to H5Fclose by mistake.
template <herr_t (*Close)(hid_t)>
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  ~Handle() { reset(); }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
    }
    return *this;
  }

  [[nodiscard]] hid_t get() const { return id_; }
  [[nodiscard]] bool valid() const { return id_ >= 0; }

  // Destructor path: a close failure cannot be reported from here (and must not throw).
  void reset() noexcept {
    if (id_ >= 0) {
      (void)Close(id_);
      id_ = H5I_INVALID_HID;
    }
  }
  // Checked path: the caller wants to know whether the close (e.g. the final flush of a file)
  // succeeded. The id is released either way.
  herr_t close() noexcept {
    herr_t status = 0;
    if (id_ >= 0) {
      status = Close(id_);
      id_ = H5I_INVALID_HID;
    }
    return status;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
};

using File = Handle<H5Fclose>;
using Group = Handle<H5Gclose>;
using Dataset = Handle<H5Dclose>;
using Space = Handle<H5Sclose>;
using Plist = Handle<H5Pclose>;
using Attr = Handle<H5Aclose>;
using Type = Handle<H5Tclose>;
using Object = Handle<H5Oclose>;  // an object of not-yet-known kind (H5Oopen)

// Turns HDF5's automatic error-stack printing off for the current scope and restores the
// previous handler afterwards, so our exception message is the only report the user sees and
// other code in the process keeps whatever HDF5 error setting it had.
class ErrorSilencer {
 public:
  ErrorSilencer() noexcept {
    if (H5Eget_auto2(H5E_DEFAULT, &func_, &data_) < 0) {
      func_ = nullptr;
      data_ = nullptr;
    }
    (void)H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~ErrorSilencer() { (void)H5Eset_auto2(H5E_DEFAULT, func_, data_); }
  ErrorSilencer(const ErrorSilencer&) = delete;
  ErrorSilencer& operator=(const ErrorSilencer&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// The innermost message of the current HDF5 error stack (where the error was detected, e.g.
// "No such file or directory" from the file driver), or "" when the stack is empty. Must be
// called right after the failing call: the next HDF5 API call clears the stack.
inline std::string last_error() {
  std::string message;
  auto innermost = [](unsigned n, const H5E_error2_t* err, void* data) -> herr_t {
    if (n == 0 && err != nullptr && err->desc != nullptr) {
      *static_cast<std::string*>(data) = err->desc;
    }
    return 0;
  };
  (void)H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost, &message);
  return message;
}

// Throws "HDF5 file '<file>', object '<object>': <action> failed (<hdf5 reason>)".
[[noreturn]] inline void fail(std::string_view file, std::string_view object,
                              std::string_view action) {
  std::string msg = "HDF5 file '";
  msg += file;
  msg += "'";
  if (!object.empty()) {
    msg += ", object '";
    msg += object;
    msg += "'";
  }
  msg += ": ";
  msg += action;
  msg += " failed";
  if (std::string reason = last_error(); !reason.empty()) {
    msg += " (" + reason + ")";
  }
  throw std::runtime_error(msg);
}

// Every HDF5 call that returns an id (hid_t), a status (herr_t) or a tri-state (htri_t)
// signals failure with a negative value; pass it through check() to turn that into fail().
template <class T>
T check(T result, std::string_view file, std::string_view object, std::string_view action) {
  if (result < 0) {
    fail(file, object, action);
  }
  return result;
}

}  // namespace moesim::io::h5
