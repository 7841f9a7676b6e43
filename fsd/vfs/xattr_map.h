// XattrMap: renames, hides or refuses extended attributes between a
// client's view and the host's, per export, in virtiofsd's --xattrmap
// syntax, so that (say) a guest keeps its own security.* labels under a
// user.* prefix on the host without touching the host's.
//
// A rule is SEP type SEP scope SEP key SEP prepend SEP, SEP being its first
// character (":prefix:all:security.:user.guest.:"); rules follow one
// another, white space between them allowed. The first rule that matches
// decides:
//   scope  client: matches a client's name starting with `key`
//          server: matches a host name starting with `prepend`
//          all:    both
//   type   prefix: client names get `prepend` put before them; host names
//                  have it taken off
//          ok:     the name passes unchanged
//          bad:    a client's name is refused (EPERM); a host name is hidden
//          unsupported: likewise, with ENOTSUP
// ":map:KEY:PREPEND:", only as the last rule, stands for
// ":prefix:all:KEY:PREPEND:", then (with a KEY) ":bad:all:PREPEND:KEY:"
// and ":ok:all:::", or (without) ":bad:all:::".
// The rules must decide every name both ways: a client rule with an empty
// key and a server rule with an empty prepend must be among them.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace fsd {

class XattrMap {
 public:
  // Throws std::invalid_argument with a one-line message naming the rule.
  static XattrMap parse(std::string_view text);

  // The host name for a client's name, or -EPERM / -ENOTSUP.
  Result<std::string> to_host(std::string_view client) const;
  // The name a client sees for a host name; nullopt if hidden.
  std::optional<std::string> to_client(std::string_view host) const;
  const std::string& text() const { return text_; }

 private:
  enum Scope : unsigned { kClient = 1, kServer = 2 };
  enum class Type { kPrefix, kOk, kBad, kUnsupported };
  struct Rule {
    Type type;
    unsigned scope;
    std::string key, prepend;
  };
  const Rule* match(unsigned scope, std::string_view name) const;

  std::vector<Rule> rules_;
  std::string text_;
};

}  // namespace fsd
