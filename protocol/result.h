// Result<T>: a value, or a positive errno explaining why there is none.
//
// Used on every hot path in place of exceptions (design.md, convention 5).
// Errors are stored as positive errno values; `Result<T>::error()` returns it.
// Constructing from `Error{e}` requires e > 0.
#pragma once

#include <cassert>
#include <cerrno>
#include <type_traits>
#include <utility>
#include <variant>

namespace fsd {

struct Error {
  int code;  // positive errno
};

// Turns a syscall-style return (>= 0 value, or -errno) into an Error.
inline Error errno_error(int e = errno) { return Error{e > 0 ? e : EIO}; }

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Error e) : v_(e) { assert(e.code > 0); }  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  int error() const { return ok() ? 0 : std::get<1>(v_).code; }

  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error e) : err_(e.code) { assert(e.code > 0); }  // NOLINT
  bool ok() const { return err_ == 0; }
  explicit operator bool() const { return ok(); }
  int error() const { return err_; }

 private:
  int err_ = 0;
};

// From a syscall return: r >= 0 is success, r < 0 is -errno (io_uring's cqe->res convention).
inline Result<void> from_res(int r) {
  if (r < 0) return Error{-r};
  return {};
}

}  // namespace fsd

// Propagates an error from a Result-returning expression; yields its value otherwise.
// Usage: auto fd = FSD_TRY(open_thing());
#define FSD_TRY(expr)                                           \
  ({                                                            \
    auto fsd_try_r_ = (expr);                                   \
    if (!fsd_try_r_.ok()) return ::fsd::Error{fsd_try_r_.error()}; \
    std::move(fsd_try_r_).value();                              \
  })
