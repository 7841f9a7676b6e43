// Vfs: extended attributes, by the client's names (the export's xattr map
// turns them into the host's), with the privileged namespaces' local rules.
#include <sys/xattr.h>

#include <cstring>

#include "fsd/vfs/caller_rules.h"
#include "fsd/vfs/vfs.h"

namespace fsd {
namespace {
using vfs_rules::privileged_caller;
bool is_trusted_xattr(std::string_view name) { return name.starts_with("trusted."); }
bool is_privileged_xattr(std::string_view name) { return is_trusted_xattr(name) || name.starts_with("security."); }
}  // namespace
// Names are the client's: mapped to the host's (config().xattrs) before a
// host call, and the host's listed names mapped back (or hidden).
Result<std::string> Vfs::mapped_xattr_name(const std::string& name) const {
  if (!config_.xattrs) return name;
  auto mapped = config_.xattrs->to_host(name);
  if (!mapped) return Error{mapped.error()};
  if (mapped->size() > XATTR_NAME_MAX) return Error{-ERANGE};
  return std::move(*mapped);
}

Result<std::string> Vfs::host_xattr_name(const std::string& name, bool changing) const {
  if (name.empty() || name.size() > XATTR_NAME_MAX) return Error{-ERANGE};
  // ACLs hold ids: with ids translated, the host would read a client's ids as its own.
  if ((!config_.uids.empty() || !config_.gids.empty()) && name.starts_with("system.posix_acl_")) return Error{-EOPNOTSUPP};
  auto mapped = mapped_xattr_name(name);
  if (!mapped) return mapped;
  std::string host = std::move(*mapped);
  // The privileged namespaces guard the host: they are checked on the host's
  // name. (A client's security.* renamed into user.* is only as safe as the
  // host file's permissions make it, as it would be with virtiofsd.)
  if (!privileged_caller()) {
    if (changing && is_privileged_xattr(host)) return Error{-EPERM};
    if (!changing && is_trusted_xattr(host)) return Error{-ENODATA};
  }
  return host;
}

Result<size_t> Vfs::getxattr(Node& n, const std::string& name, std::span<std::byte> out) {
  auto host = host_xattr_name(name, false);
  if (!host) return Error{host.error()};
  auto pfd = path_fd(n);
  if (!pfd) return Error{pfd.error()};
  std::string path = pfd->proc_path();
  ssize_t r = ::getxattr(path.c_str(), host->c_str(), out.data(), out.size());
  if (r < 0) return errno_error();
  return static_cast<size_t>(r);
}

Result<size_t> Vfs::listxattr(Node& n, std::span<std::byte> out) {
  auto pfd = path_fd(n);
  if (!pfd) return Error{pfd.error()};
  std::string path = pfd->proc_path();
  bool privileged = privileged_caller();
  if (privileged && !config_.xattrs) {
    ssize_t r = ::listxattr(path.c_str(), reinterpret_cast<char*>(out.data()), out.size());
    if (r < 0) return errno_error();
    return static_cast<size_t>(r);
  }
  // Listed whole, then mapped and filtered (a size-only query still needs
  // the names, to count what the client will see).
  std::vector<char> all;
  for (;;) {
    ssize_t size = ::listxattr(path.c_str(), nullptr, 0);
    if (size < 0) return errno_error();
    all.resize(static_cast<size_t>(size));
    ssize_t r = ::listxattr(path.c_str(), all.data(), all.size());
    if (r >= 0) {
      all.resize(static_cast<size_t>(r));
      break;
    }
    if (errno != ERANGE) return errno_error();  // grew meanwhile: again
  }
  size_t used = 0;
  for (size_t at = 0; at < all.size();) {
    std::string_view host(all.data() + at);
    at += host.size() + 1;
    std::optional<std::string> mapped;
    std::string_view shown = host;
    if (config_.xattrs) {
      mapped = config_.xattrs->to_client(host);
      if (!mapped || mapped->empty()) continue;
      shown = *mapped;
    }
    if (!privileged && is_trusted_xattr(host)) continue;
    size_t len = shown.size() + 1;
    if (!out.empty()) {
      if (used + len > out.size()) return Error{-ERANGE};
      std::memcpy(out.data() + used, shown.data(), shown.size());
      out[used + shown.size()] = std::byte{0};
    }
    used += len;
  }
  return used;
}

Result<void> Vfs::setxattr(Node& n, const std::string& name, std::span<const std::byte> value, int flags) {
  if (read_only()) return Error{-EROFS};
  if (value.size() > XATTR_SIZE_MAX) return Error{-E2BIG};
  auto host = host_xattr_name(name, true);
  if (!host) return Error{host.error()};
  auto pfd = path_fd(n);
  if (!pfd) return Error{pfd.error()};
  std::string path = pfd->proc_path();
  if (::setxattr(path.c_str(), host->c_str(), value.data(), value.size(), flags) < 0) return errno_error();
  return {};
}

Result<void> Vfs::removexattr(Node& n, const std::string& name) {
  if (read_only()) return Error{-EROFS};
  auto host = host_xattr_name(name, true);
  if (!host) return Error{host.error()};
  auto pfd = path_fd(n);
  if (!pfd) return Error{pfd.error()};
  std::string path = pfd->proc_path();
  if (::removexattr(path.c_str(), host->c_str()) < 0) return errno_error();
  return {};
}

void Vfs::drop_mapped_capability(const std::string& path) {
  if (mapped_capability_.empty()) return;
  Credentials::AsSelf self;
  (void)::removexattr(path.c_str(), mapped_capability_.c_str());  // ENODATA: none to drop
}


}  // namespace fsd
