#include "fsd/vfs/id_map.h"

#include <algorithm>
#include <charconv>
#include <stdexcept>

namespace fsd {
namespace {

constexpr uint64_t kIdSpace = uint64_t{1} << 32;

std::vector<uint64_t> numbers_of(std::string_view fields, std::string_view rule) {
  std::vector<uint64_t> out;
  while (true) {
    auto colon = fields.find(':');
    std::string_view f = fields.substr(0, colon);
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(f.data(), f.data() + f.size(), v);
    if (f.empty() || ec != std::errc() || end != f.data() + f.size() || v >= kIdSpace)
      throw std::invalid_argument("'" + std::string(rule) + "': '" + std::string(f) + "' is not an id (0 to 4294967295)");
    out.push_back(v);
    if (colon == std::string_view::npos) return out;
    fields.remove_prefix(colon + 1);
  }
}

}  // namespace

void IdMap::insert(std::vector<Range>& ranges, Range r, std::string_view rule, const char* direction) {
  auto at = std::lower_bound(ranges.begin(), ranges.end(), r.from, [](const Range& x, uint64_t v) { return x.from < v; });
  bool overlaps = (at != ranges.end() && at->from < r.end) || (at != ranges.begin() && std::prev(at)->end > r.from);
  if (overlaps)
    throw std::invalid_argument("'" + std::string(rule) + "': its " + direction + " range overlaps an earlier rule's");
  ranges.insert(at, r);
}

void IdMap::add(std::string_view rule) {
  auto colon = rule.find(':');
  if (colon == std::string_view::npos)
    throw std::invalid_argument("'" + std::string(rule) +
                                "': expected guest|host|map|squash-guest|squash-host:FROM:TO:COUNT or forbid-guest:FROM:COUNT");
  std::string_view type = rule.substr(0, colon);
  auto n = numbers_of(rule.substr(colon + 1), rule);
  bool forbid = type == "forbid-guest";
  if (n.size() != (forbid ? 2u : 3u))
    throw std::invalid_argument("'" + std::string(rule) + "': " + std::string(type) + " takes " +
                                (forbid ? "FROM:COUNT" : "FROM:TO:COUNT"));
  uint64_t count = n.back();
  if (count == 0) throw std::invalid_argument("'" + std::string(rule) + "': an empty range (COUNT 0)");
  auto range = [&](uint64_t from) { return std::pair{from, std::min(from + count, kIdSpace)}; };
  auto target = [&](uint64_t to) {
    // A shifted range must land inside the id space as a whole.
    if (to + (std::min(n[0] + count, kIdSpace) - n[0]) > kIdSpace)
      throw std::invalid_argument("'" + std::string(rule) + "': the target range runs past 4294967295");
    return static_cast<uint32_t>(to);
  };
  using K = Range::Kind;
  if (type == "guest" || type == "map") {
    auto [f, e] = range(n[0]);
    insert(to_host_, {f, e, K::kShift, target(n[1])}, rule, "guest");
  }
  if (type == "host") {
    auto [f, e] = range(n[0]);
    insert(to_client_, {f, e, K::kShift, target(n[1])}, rule, "host");
  } else if (type == "map") {
    uint64_t to = n[1];
    auto [f, e] = range(to);
    insert(to_client_, {f, e, K::kShift, static_cast<uint32_t>(n[0])}, rule, "host");
  } else if (type == "squash-guest") {
    auto [f, e] = range(n[0]);
    insert(to_host_, {f, e, K::kSquash, static_cast<uint32_t>(n[1])}, rule, "guest");
  } else if (type == "squash-host") {
    auto [f, e] = range(n[0]);
    insert(to_client_, {f, e, K::kSquash, static_cast<uint32_t>(n[1])}, rule, "host");
  } else if (forbid) {
    auto [f, e] = range(n[0]);
    insert(to_host_, {f, e, K::kForbid, 0}, rule, "guest");
  } else if (type != "guest") {
    throw std::invalid_argument("'" + std::string(rule) + "': unknown type '" + std::string(type) +
                                "' (guest, host, map, squash-guest, squash-host, forbid-guest)");
  }
  rules_.emplace_back(rule);
}

const IdMap::Range* IdMap::find(const std::vector<Range>& ranges, uint32_t id) {
  auto at = std::upper_bound(ranges.begin(), ranges.end(), uint64_t{id}, [](uint64_t v, const Range& x) { return v < x.from; });
  if (at == ranges.begin()) return nullptr;
  const Range& r = *std::prev(at);
  return id < r.end ? &r : nullptr;
}

std::optional<uint32_t> IdMap::to_host(uint32_t client) const {
  const Range* r = find(to_host_, client);
  if (r == nullptr) return client;
  switch (r->kind) {
    case Range::Kind::kShift: return static_cast<uint32_t>(r->to + (client - r->from));
    case Range::Kind::kSquash: return r->to;
    case Range::Kind::kForbid: return std::nullopt;
  }
  return std::nullopt;
}

uint32_t IdMap::to_client(uint32_t host) const {
  const Range* r = find(to_client_, host);
  if (r == nullptr) return host;
  return r->kind == Range::Kind::kShift ? static_cast<uint32_t>(r->to + (host - r->from)) : r->to;
}

}  // namespace fsd
