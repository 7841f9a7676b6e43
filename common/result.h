// Result<T>: a value, or the errno explaining why there is none.
//
// One error convention runs through the whole project: an error is a
// NEGATIVE errno, exactly as the kernel's syscalls and io_uring's cqe->res
// report it, as FUSE's out.error carries it, and as Error{-EINVAL} spells it.
// So a ring result passes through unchanged (`if (r < 0) co_return Error{r}`)
// and only the 9P encoder flips the sign (Rlerror carries a positive ecode).
//
// Used on every hot path in place of exceptions; exceptions are for start-up
// and configuration only, caught in main.
#pragma once

#include <cassert>
#include <cerrno>
#include <cstddef>
#include <type_traits>
#include <utility>
#include <variant>

namespace fsd {

struct Error {
  int code;  // -errno
};

// The current errno (or another positive errno value) as an Error.
inline Error errno_error(int e = errno) { return Error{e > 0 ? -e : -EIO}; }

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Error e) : v_(e) { assert(e.code < 0); }  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  // -errno, or 0 when there is a value.
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
  Result(Error e) : err_(e.code) { assert(e.code < 0); }  // NOLINT
  bool ok() const { return err_ == 0; }
  explicit operator bool() const { return ok(); }
  int error() const { return err_; }

 private:
  int err_ = 0;
};

// From a syscall-style return: r >= 0 is success, r < 0 is -errno.
inline Result<void> from_res(int r) {
  if (r < 0) return Error{r};
  return {};
}

// The same, keeping the non-negative value (a byte count).
inline Result<size_t> count_of(long r) {
  if (r < 0) return Error{static_cast<int>(r)};
  return static_cast<size_t>(r);
}

}  // namespace fsd
