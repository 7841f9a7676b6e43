// IdMap: translates user or group ids between a client's view (a guest's,
// or a 9P client's) and the host's, per export, in virtiofsd's
// --translate-uid/--translate-gid terms. An id no rule covers maps to
// itself, so an empty map changes nothing and costs nothing.
//
// Rules (source ranges of one direction may not overlap; a range that runs
// past 4294967295 ends there):
//   guest:G:H:N         client ids [G, G+N) are host ids [H, H+N)
//   host:H:G:N          host ids [H, H+N) show as client ids [G, G+N)
//   map:G:H:N           both of the above
//   squash-guest:G:H:N  client ids [G, G+N) all become host id H
//   squash-host:H:G:N   host ids [H, H+N) all show as client id G
//   forbid-guest:G:N    client ids [G, G+N) may not be used: a request
//                       acting as one, or a chown to one, fails with EPERM
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fsd {

class IdMap {
 public:
  // Adds one rule. Throws std::invalid_argument with a one-line message
  // naming the rule (not the flag: the caller adds that).
  void add(std::string_view rule);
  bool empty() const { return to_host_.empty() && to_client_.empty(); }
  // The host id for a client's id; nullopt if the id is forbidden.
  std::optional<uint32_t> to_host(uint32_t client) const;
  // The id a client sees for a host id.
  uint32_t to_client(uint32_t host) const;
  // The rules as given, for logs.
  const std::vector<std::string>& rules() const { return rules_; }

 private:
  struct Range {
    uint64_t from = 0, end = 0;  // [from, end)
    enum class Kind { kShift, kSquash, kForbid } kind = Kind::kShift;
    uint32_t to = 0;  // kShift: the target of `from`; kSquash: the one target
  };
  static void insert(std::vector<Range>& ranges, Range r, std::string_view rule, const char* direction);
  static const Range* find(const std::vector<Range>& ranges, uint32_t id);

  std::vector<Range> to_host_, to_client_;  // sorted by `from`, disjoint
  std::vector<std::string> rules_;
};

}  // namespace fsd
