// Export: one host directory served to clients under a tag.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/cache_policy.h"
#include "fsd/vfs/id_map.h"
#include "fsd/vfs/xattr_map.h"

namespace fsd {

struct ExportConfig {
  std::string tag;   // 9p aname / virtio-fs tag
  std::string path;  // host directory (absolute after parse)
  bool read_only = false;
  CachePolicy cache = CachePolicy::kAuto;
  // Callers may create device nodes (still only callers the host kernel
  // lets: CAP_MKNOD, i.e. root ones). Off: mknod of a device is EPERM.
  bool devices = false;
  // O_DIRECT from clients is honoured (virtiofsd's --allow-direct-io); off,
  // it is dropped and the host's page cache serves them.
  bool direct_io = false;
  // virtio-fs/FUSE: READDIRPLUS is offered (where the cache policy makes it
  // worth it); off, clients read directories with plain READDIR.
  bool readdirplus = true;
  // virtio-fs/FUSE with cache=never: clients may still mmap files
  // (FUSE_DIRECT_IO_ALLOW_MMAP, Linux 6.6 and later; virtiofsd's --allow-mmap).
  bool allow_mmap = false;
  // virtio-fs/FUSE: clients enforce POSIX ACLs themselves and leave the
  // umask to fsd (FUSE_POSIX_ACL; virtiofsd's --posix-acl). Not with id
  // maps: ACLs hold host ids.
  bool posix_acl = false;
  // virtio-fs: directories that are mount points on the host are announced
  // as submounts (FUSE_ATTR_SUBMOUNT), so the guest mounts them with their
  // own device number (virtiofsd's --announce-submounts).
  bool submounts = false;
  // virtio-fs/FUSE: clients keep written data in their page cache and send
  // it later, in large writes (FUSE_WRITEBACK_CACHE; virtiofsd's
  // --writeback). Off: every write goes through to the host.
  bool writeback = false;
  // virtio-fs/FUSE: clients send the security label their LSM gives each
  // new file (FUSE_SECURITY_CTX), and fsd sets it on the file before its
  // name appears (virtiofsd's --security-label). Checked at start: the
  // host must hold security.selinux (as the xattr map names it).
  bool security_label = false;
  // Client ids to host ids and back (virtiofsd's --translate-uid/-gid).
  IdMap uids, gids;
  // Renaming, hiding or refusing xattrs (virtiofsd's --xattrmap).
  std::optional<XattrMap> xattrs;
  // A file listing the store paths the root shows (common/closure.h);
  // empty: every entry. Read-only exports only.
  std::string closure;
};

// Parses "TAG=PATH[,ro][,rw][,cache=never|auto|always][,devices]
// [,direct-io][,no-readdirplus][,allow-mmap][,posix-acl][,submounts][,writeback][,security-label]
// [,translate-uid=RULE][,translate-gid=RULE][,xattrmap=RULES][,closure=FILE]".
// In the path and in option values ",," stands for a comma. Read-only
// exports default to cache=always. Throws std::invalid_argument with a one-line
// message naming the problem. Does not touch the filesystem.
ExportConfig parse_export(std::string_view spec);

}  // namespace fsd
