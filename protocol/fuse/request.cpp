#include "protocol/fuse/request.h"

#include <cstring>

namespace fsd::fuse {
namespace {

// Sequential reader over the argument bytes after fuse_in_header.
class ArgReader {
 public:
  explicit ArgReader(Bytes b) : b_(b) {}
  bool ok() const { return ok_; }
  size_t remaining() const { return b_.size() - pos_; }

  // Copies a fixed struct (the wire is not necessarily aligned for it).
  template <class T>
  T take() {
    T v{};
    if (!ok_ || remaining() < sizeof(T)) {
      ok_ = false;
      return v;
    }
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  // Like take(), for structs that grew over protocol versions: copies what
  // is there, up to sizeof(T), and zero-fills the rest. `min` must be present.
  template <class T>
  T take_prefix(size_t min, size_t present) {
    T v{};
    size_t n = present < sizeof(T) ? present : sizeof(T);
    if (!ok_ || n < min || remaining() < n) {
      ok_ = false;
      return v;
    }
    std::memcpy(&v, b_.data() + pos_, n);
    pos_ += n;
    return v;
  }
  // A NUL-terminated string; the view excludes the NUL.
  std::string_view cstr() {
    if (!ok_) return {};
    const auto* start = reinterpret_cast<const char*>(b_.data() + pos_);
    const void* nul = std::memchr(start, 0, remaining());
    if (nul == nullptr) {
      ok_ = false;
      return {};
    }
    size_t len = static_cast<size_t>(static_cast<const char*>(nul) - start);
    pos_ += len + 1;
    return {start, len};
  }
  Bytes bytes(size_t n) {
    if (!ok_ || remaining() < n) {
      ok_ = false;
      return {};
    }
    Bytes out = b_.subspan(pos_, n);
    pos_ += n;
    return out;
  }
  Bytes rest() { return bytes(remaining()); }

 private:
  Bytes b_;
  size_t pos_ = 0;
  bool ok_ = true;
};

template <class T>
Args one(ArgReader& r) {
  return T{r.take<decltype(T::in)>()};
}

Result<Args> decode_args(uint32_t opcode, ArgReader& r, size_t total_args, bool& allow_short) {
  switch (opcode) {
    case FUSE_INIT: {
      // fuse_init_in grew in 7.36 (flags2, unused); older clients send 16 bytes.
      return Args{Init{r.take_prefix<fuse_init_in>(16, r.remaining())}};
    }
    case FUSE_LOOKUP: return Args{Lookup{r.cstr()}};
    case FUSE_FORGET: return one<Forget>(r);
    case FUSE_BATCH_FORGET: {
      auto in = r.take<fuse_batch_forget_in>();
      if (!r.ok() || in.count > r.remaining() / sizeof(fuse_forget_one)) return Error{-EBADMSG};
      return Args{BatchForget{r.bytes(in.count * sizeof(fuse_forget_one)), in.count}};
    }
    case FUSE_GETATTR: return one<Getattr>(r);
    case FUSE_SETATTR: return one<Setattr>(r);
    case FUSE_READLINK: return Args{Readlink{}};
    case FUSE_SYMLINK: {
      auto name = r.cstr();
      auto target = r.cstr();
      return Args{Symlink{name, target, r.rest()}};
    }
    case FUSE_MKNOD: {
      auto in = r.take<fuse_mknod_in>();
      auto name = r.cstr();
      return Args{Mknod{in, name, r.rest()}};
    }
    case FUSE_MKDIR: {
      auto in = r.take<fuse_mkdir_in>();
      auto name = r.cstr();
      return Args{Mkdir{in, name, r.rest()}};
    }
    case FUSE_UNLINK: return Args{Unlink{r.cstr()}};
    case FUSE_RMDIR: return Args{Rmdir{r.cstr()}};
    case FUSE_RENAME: {
      auto in = r.take<fuse_rename_in>();
      auto o = r.cstr();
      auto n = r.cstr();
      return Args{Rename{in, o, n}};
    }
    case FUSE_RENAME2: {
      auto in = r.take<fuse_rename2_in>();
      auto o = r.cstr();
      auto n = r.cstr();
      return Args{Rename2{in, o, n}};
    }
    case FUSE_LINK: {
      auto in = r.take<fuse_link_in>();
      return Args{Link{in, r.cstr()}};
    }
    case FUSE_OPEN: return one<Open>(r);
    case FUSE_READ: return one<Read>(r);
    case FUSE_WRITE: {
      auto in = r.take<fuse_write_in>();
      if (!r.ok()) return Error{-EBADMSG};
      // The payload follows; all of it in total_args, maybe only part in `r`.
      if (total_args != sizeof(fuse_write_in) + in.size) return Error{-EBADMSG};
      allow_short = true;
      return Args{Write{in, r.rest()}};
    }
    case FUSE_STATFS: return Args{Statfs{}};
    case FUSE_RELEASE: return one<Release>(r);
    case FUSE_FSYNC: return one<Fsync>(r);
    case FUSE_SETXATTR: {
      // Without FUSE_SETXATTR_EXT (never negotiated by fsd) the struct is the
      // old 8-byte one: size, flags.
      auto in = r.take_prefix<fuse_setxattr_in>(FUSE_COMPAT_SETXATTR_IN_SIZE, FUSE_COMPAT_SETXATTR_IN_SIZE);
      auto name = r.cstr();
      auto value = r.bytes(in.size);
      return Args{Setxattr{in, name, value}};
    }
    case FUSE_GETXATTR: {
      auto in = r.take<fuse_getxattr_in>();
      return Args{Getxattr{in, r.cstr()}};
    }
    case FUSE_LISTXATTR: return one<Listxattr>(r);
    case FUSE_REMOVEXATTR: return Args{Removexattr{r.cstr()}};
    case FUSE_FLUSH: return one<Flush>(r);
    case FUSE_OPENDIR: return one<Opendir>(r);
    case FUSE_READDIR: return one<Readdir>(r);
    case FUSE_RELEASEDIR: return one<Releasedir>(r);
    case FUSE_FSYNCDIR: return one<Fsyncdir>(r);
    case FUSE_ACCESS: return one<Access>(r);
    case FUSE_CREATE: {
      auto in = r.take<fuse_create_in>();
      auto name = r.cstr();
      return Args{Create{in, name, r.rest()}};
    }
    case FUSE_INTERRUPT: return one<Interrupt>(r);
    case FUSE_DESTROY: return Args{Destroy{}};
    case FUSE_READDIRPLUS: return one<Readdirplus>(r);
    case FUSE_FALLOCATE: return one<Fallocate>(r);
    case FUSE_LSEEK: return one<Lseek>(r);
    case FUSE_COPY_FILE_RANGE: return one<CopyFileRange>(r);
    case FUSE_SYNCFS: return one<Syncfs>(r);
    default: return Args{Unknown{}};
  }
}

}  // namespace

Result<Request> decode(Bytes in, size_t total_len) {
  if (in.size() < sizeof(fuse_in_header) || in.size() > total_len) return Error{-EBADMSG};
  fuse_in_header h;
  std::memcpy(&h, in.data(), sizeof h);
  if (h.len != total_len) return Error{-EBADMSG};
  // Extensions end the request: the arguments end where they start.
  size_t ext = size_t{h.total_extlen} * 8;
  if (ext > total_len - sizeof h || (ext != 0 && in.size() != total_len)) return Error{-EBADMSG};
  ArgReader r(in.subspan(sizeof h, in.size() - sizeof h - ext));
  bool allow_short = false;
  auto args = decode_args(h.opcode, r, total_len - sizeof h - ext, allow_short);
  if (!args || !r.ok()) return Error{-EBADMSG};
  if (ext != 0) {
    // The creations' extra bytes are their extensions alone; other requests'
    // extensions (supplementary groups, never negotiated) are not read.
    Bytes ext_bytes = in.subspan(in.size() - ext);
    std::visit(
        [&](auto& a) {
          if constexpr (requires { a.extra; }) a.extra = ext_bytes;
        },
        *args);
  }
  // Trailing bytes are tolerated (newer clients may append fields), but a
  // short request is only legitimate for WRITE's separately carried payload.
  if (!allow_short && in.size() != total_len) return Error{-EBADMSG};
  return Request{h, std::move(*args)};
}

Result<std::optional<SecurityContext>> security_context(Bytes extra) {
  std::optional<SecurityContext> found;
  while (!extra.empty()) {
    fuse_ext_header eh;
    if (extra.size() < sizeof eh) return Error{-EBADMSG};
    std::memcpy(&eh, extra.data(), sizeof eh);
    if (eh.size < sizeof eh || eh.size > extra.size()) return Error{-EBADMSG};
    Bytes record = extra.subspan(0, eh.size);
    extra = extra.subspan(eh.size);
    if (eh.type > FUSE_MAX_NR_SECCTX) continue;  // another extension
    if (eh.type == 0) continue;                  // a client LSM with no context for this file
    if (eh.type > 1 || found) return Error{-EBADMSG};
    ArgReader r(record.subspan(sizeof(fuse_secctx_header)));
    auto ctx = r.take<fuse_secctx>();
    auto name = r.cstr();
    auto value = r.bytes(ctx.size);
    if (!r.ok() || name.empty()) return Error{-EBADMSG};
    found = SecurityContext{name, value};
  }
  return found;
}

const char* opcode_name(uint32_t op) {
  switch (op) {
#define N(x) case FUSE_##x: return #x
    N(LOOKUP); N(FORGET); N(GETATTR); N(SETATTR); N(READLINK); N(SYMLINK); N(MKNOD); N(MKDIR);
    N(UNLINK); N(RMDIR); N(RENAME); N(LINK); N(OPEN); N(READ); N(WRITE); N(STATFS); N(RELEASE);
    N(FSYNC); N(SETXATTR); N(GETXATTR); N(LISTXATTR); N(REMOVEXATTR); N(FLUSH); N(INIT);
    N(OPENDIR); N(READDIR); N(RELEASEDIR); N(FSYNCDIR); N(GETLK); N(SETLK); N(SETLKW);
    N(ACCESS); N(CREATE); N(INTERRUPT); N(BMAP); N(DESTROY); N(IOCTL); N(POLL);
    N(NOTIFY_REPLY); N(BATCH_FORGET); N(FALLOCATE); N(READDIRPLUS); N(RENAME2); N(LSEEK);
    N(COPY_FILE_RANGE); N(SETUPMAPPING); N(REMOVEMAPPING); N(SYNCFS); N(TMPFILE);
#undef N
    default: return nullptr;
  }
}

}  // namespace fsd::fuse
