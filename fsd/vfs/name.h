// Name: one path component a client named, copied into fsd's memory and
// checked there, so that the check and the host call that uses it see the
// same bytes (a client's buffer, guest memory above all, may change in
// between). Every name a host call takes (mkdirat, mknodat, symlinkat,
// linkat, renameat2, unlinkat, openat2 with O_CREAT, statx of a child) is
// a Name's c_str().
#pragma once

#include <array>
#include <cerrno>
#include <climits>
#include <cstring>
#include <string_view>

#include "common/result.h"

namespace fsd {

class Name {
 public:
  // The copy of `s`, if it is one plain component: EINVAL for "", ".",
  // "..", or a name holding '/' or NUL; ENAMETOOLONG past NAME_MAX bytes.
  static Result<Name> of(std::string_view s) {
    if (s.size() > NAME_MAX) return Error{-ENAMETOOLONG};
    Name n;
    std::memcpy(n.buf_.data(), s.data(), s.size());
    n.buf_[s.size()] = '\0';
    n.len_ = s.size();
    // From here on only the copy is looked at.
    std::string_view mine = n.view();
    if (mine.empty() || mine == "." || mine == ".." || mine.find('/') != std::string_view::npos ||
        std::memchr(mine.data(), '\0', mine.size()) != nullptr)
      return Error{-EINVAL};
    return n;
  }
  const char* c_str() const { return buf_.data(); }
  std::string_view view() const { return {buf_.data(), len_}; }

 private:
  Name() = default;
  std::array<char, NAME_MAX + 1> buf_;
  size_t len_ = 0;
};

}  // namespace fsd
