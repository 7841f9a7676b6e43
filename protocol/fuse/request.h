// FUSE requests as a Linux 6.x client (the kernel's FUSE or virtiofs driver)
// sends them, decoded from <linux/fuse.h> wire layouts.
//
// decode() takes the readable part of one request. For virtiofs, WRITE's
// payload may live in separate guest buffers: then `in` holds only the
// header and fuse_write_in, and Write::data is shorter than Write::in.size
// (the transport supplies the rest). Every other request must be whole.
// Names are NUL-terminated on the wire; the views exclude the NUL.
// CREATE, MKDIR, MKNOD and SYMLINK keep the bytes after their arguments
// (`extra`): the request's extensions (header.total_extlen, protocol 7.38),
// or, from older clients, the security context that trails the arguments;
// security_context() reads one from them.
// Malformed input yields EBADMSG (drop the request / channel); an opcode not
// listed here decodes to Unknown, which a server answers with ENOSYS.
#pragma once

#include <linux/fuse.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <variant>

#include "common/result.h"

namespace fsd::fuse {

using Bytes = std::span<const std::byte>;

// Minor protocol version this codec understands (fuse.h 7.38).
inline constexpr uint32_t kMinor = 38;

struct Init { fuse_init_in in; };           // flags2 valid only with FUSE_INIT_EXT
struct Lookup { std::string_view name; };
struct Forget { fuse_forget_in in; };
struct BatchForget { std::span<const std::byte> entries; uint32_t count; };  // fuse_forget_one[count]
struct Getattr { fuse_getattr_in in; };
struct Setattr { fuse_setattr_in in; };
struct Readlink {};
struct Symlink { std::string_view name, target; Bytes extra; };
struct Mknod { fuse_mknod_in in; std::string_view name; Bytes extra; };
struct Mkdir { fuse_mkdir_in in; std::string_view name; Bytes extra; };
struct Unlink { std::string_view name; };
struct Rmdir { std::string_view name; };
struct Rename { fuse_rename_in in; std::string_view oldname, newname; };
struct Rename2 { fuse_rename2_in in; std::string_view oldname, newname; };
struct Link { fuse_link_in in; std::string_view newname; };
struct Open { fuse_open_in in; };
struct Read { fuse_read_in in; };
struct Write { fuse_write_in in; Bytes data; };
struct Statfs {};
struct Release { fuse_release_in in; };
struct Fsync { fuse_fsync_in in; };
struct Setxattr { fuse_setxattr_in in; std::string_view name; Bytes value; };  // in.setxattr_flags unused
struct Getxattr { fuse_getxattr_in in; std::string_view name; };
struct Listxattr { fuse_getxattr_in in; };
struct Removexattr { std::string_view name; };
struct Flush { fuse_flush_in in; };
struct Opendir { fuse_open_in in; };
struct Readdir { fuse_read_in in; };
struct Releasedir { fuse_release_in in; };
struct Fsyncdir { fuse_fsync_in in; };
struct Access { fuse_access_in in; };
struct Create { fuse_create_in in; std::string_view name; Bytes extra; };
struct Interrupt { fuse_interrupt_in in; };
struct Destroy {};
struct Readdirplus { fuse_read_in in; };
struct Fallocate { fuse_fallocate_in in; };
struct Lseek { fuse_lseek_in in; };
struct CopyFileRange { fuse_copy_file_range_in in; };
struct Syncfs { fuse_syncfs_in in; };
struct Unknown {};

using Args = std::variant<Init, Lookup, Forget, BatchForget, Getattr, Setattr, Readlink, Symlink,
                          Mknod, Mkdir, Unlink, Rmdir, Rename, Rename2, Link, Open, Read, Write,
                          Statfs, Release, Fsync, Setxattr, Getxattr, Listxattr, Removexattr, Flush,
                          Opendir, Readdir, Releasedir, Fsyncdir, Access, Create, Interrupt,
                          Destroy, Readdirplus, Fallocate, Lseek, CopyFileRange, Syncfs, Unknown>;

struct Request {
  fuse_in_header header;
  Args args;
};

// `total_len` is the length of the whole request as the client sent it
// (header.len must equal it); `in` is its first bytes (all of it, except
// possibly WRITE's payload).
Result<Request> decode(Bytes in, size_t total_len);
inline Result<Request> decode(Bytes in) { return decode(in, in.size()); }

// A security context a client's LSM gave a new file (FUSE_SECURITY_CTX):
// the xattr that holds it ("security.selinux") and its value.
struct SecurityContext {
  std::string_view name;
  Bytes value;
};
// The security context in a creation's `extra` bytes, if there is one:
// fuse_ext_header records, of which a type up to FUSE_MAX_NR_SECCTX is a
// fuse_secctx_header (nr_secctx contexts); others are skipped. EBADMSG for
// records that do not fit, a context without its name's NUL, or more than
// one context (the kernel sends at most one).
Result<std::optional<SecurityContext>> security_context(Bytes extra);

// The name of an opcode ("LOOKUP"), or nullptr.
const char* opcode_name(uint32_t opcode);

}  // namespace fsd::fuse
