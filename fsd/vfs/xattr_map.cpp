#include "fsd/vfs/xattr_map.h"

#include <cctype>
#include <stdexcept>

namespace fsd {

XattrMap XattrMap::parse(std::string_view text) {
  XattrMap m;
  m.text_ = std::string(text);
  size_t at = 0, number = 0;
  bool saw_map = false;
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument("rule " + std::to_string(number) + " of '" + std::string(text) + "': " + why);
  };
  while (true) {
    while (at < text.size() && std::isspace(static_cast<unsigned char>(text[at]))) at++;
    if (at == text.size()) break;
    number++;
    if (saw_map) fail("nothing may follow a map rule");
    char sep = text[at++];
    auto field = [&]() {
      auto end = text.find(sep, at);
      if (end == std::string_view::npos) fail(std::string("unterminated: every field ends with '") + sep + "'");
      std::string f(text.substr(at, end - at));
      at = end + 1;
      return f;
    };
    std::string type = field();
    if (type == "map") {
      std::string key = field(), prepend = field();
      m.rules_.push_back({Type::kPrefix, kClient | kServer, key, prepend});
      if (!key.empty()) {
        m.rules_.push_back({Type::kBad, kClient | kServer, prepend, key});
        m.rules_.push_back({Type::kOk, kClient | kServer, "", ""});
      } else {
        m.rules_.push_back({Type::kBad, kClient | kServer, "", ""});
      }
      saw_map = true;
      continue;
    }
    Rule r{};
    if (type == "prefix") r.type = Type::kPrefix;
    else if (type == "ok") r.type = Type::kOk;
    else if (type == "bad") r.type = Type::kBad;
    else if (type == "unsupported") r.type = Type::kUnsupported;
    else fail("unknown type '" + type + "' (prefix, ok, bad, unsupported, map)");
    std::string scope = field();
    if (scope == "client") r.scope = kClient;
    else if (scope == "server") r.scope = kServer;
    else if (scope == "all") r.scope = kClient | kServer;
    else fail("unknown scope '" + scope + "' (client, server, all)");
    r.key = field();
    r.prepend = field();
    m.rules_.push_back(std::move(r));
  }
  if (m.rules_.empty()) throw std::invalid_argument("'" + std::string(text) + "': no rules");
  // Every name must meet a rule, both ways: a catch-all for each scope.
  bool client_all = false, server_all = false;
  for (const auto& r : m.rules_) {
    client_all |= (r.scope & kClient) && r.key.empty();
    server_all |= (r.scope & kServer) && r.prepend.empty();
  }
  if (!client_all || !server_all)
    throw std::invalid_argument("'" + std::string(text) + "': some names meet no rule; end with a catch-all such as ':ok:all:::' or ':bad:all:::'");
  return m;
}

const XattrMap::Rule* XattrMap::match(unsigned scope, std::string_view name) const {
  for (const auto& r : rules_)
    if ((r.scope & scope) && name.starts_with(scope == kClient ? r.key : r.prepend)) return &r;
  return nullptr;  // not reached: parse() demands a catch-all
}

Result<std::string> XattrMap::to_host(std::string_view client) const {
  const Rule* r = match(kClient, client);
  if (r == nullptr || r->type == Type::kBad) return Error{-EPERM};
  if (r->type == Type::kUnsupported) return Error{-ENOTSUP};
  if (r->type == Type::kPrefix) return r->prepend + std::string(client);
  return std::string(client);
}

std::optional<std::string> XattrMap::to_client(std::string_view host) const {
  const Rule* r = match(kServer, host);
  if (r == nullptr || r->type == Type::kBad || r->type == Type::kUnsupported) return std::nullopt;
  if (r->type == Type::kPrefix) return std::string(host.substr(r->prepend.size()));
  return std::string(host);
}

}  // namespace fsd
