// Soak: several 9P clients and vhost-user (virtio-fs) front-ends run random
// operations at once against one read-write export of one fsd process. Each
// client works in its own directory, so a model of that directory (a map of
// paths to inodes, hard links sharing one) predicts every result exactly:
// success or the errno, the data read back, listings, modes, sizes, link
// targets and xattrs. Meanwhile fsd's resident memory and open fds are
// sampled, and clients are now and then killed with requests in flight.
// At the end every model is compared with the host directory itself.
//
// FSD_SOAK_SECONDS sets the run time (default 20, as in CI); run it longer
// by hand:  FSD_SOAK_SECONDS=600 build/tests/client/soak_tests
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "fsd/client/p9_client.h"
#include "fsd/client/vhost_frontend.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

using p9::Client;
using frontend::VhostFrontend;

// ---- what a client can do, whatever its protocol

struct Stat {
  uint32_t mode = 0;  // type and permission bits
  uint64_t size = 0;
};

class Fs {
 public:
  virtual ~Fs() = default;
  virtual Result<void> mkdir(const std::string& path, uint32_t mode) = 0;
  virtual Result<void> create(const std::string& path, uint32_t mode) = 0;  // exclusive
  virtual Result<void> write(const std::string& path, uint64_t offset, const std::string& data) = 0;
  virtual Result<std::string> read(const std::string& path) = 0;
  virtual Result<void> truncate(const std::string& path, uint64_t size) = 0;
  virtual Result<void> chmod(const std::string& path, uint32_t mode) = 0;
  virtual Result<Stat> stat(const std::string& path) = 0;
  virtual Result<void> unlink(const std::string& path, bool dir) = 0;
  virtual Result<void> rename(const std::string& from, const std::string& to) = 0;
  virtual Result<void> link(const std::string& from, const std::string& to) = 0;
  virtual Result<void> symlink(const std::string& target, const std::string& path) = 0;
  virtual Result<std::string> readlink(const std::string& path) = 0;
  virtual Result<std::set<std::string>> list(const std::string& path) = 0;
  virtual Result<void> setxattr(const std::string& path, const std::string& name, const std::string& value) = 0;
  virtual Result<std::string> getxattr(const std::string& path, const std::string& name) = 0;
  virtual Result<void> fsync(const std::string& path) = 0;
  // Sends a few reads and drops the connection without waiting for them.
  virtual void crash(const std::string& file) = 0;
};

std::pair<std::string, std::string> split(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return {"", path};  // in the export's root
  return {path.substr(0, slash), path.substr(slash + 1)};
}

// ---- 9P

class P9Fs : public Fs {
 public:
  P9Fs(std::string sock, std::string tag) : sock_(std::move(sock)), tag_(std::move(tag)) { connect(); }

  Result<void> mkdir(const std::string& path, uint32_t mode) override {
    auto [dir, name] = split(path);
    return with(dir, [&](uint32_t d) { return done(c_->call<p9::Rmkdir>(p9::Tmkdir{.dfid = d, .name = name, .mode = mode})); });
  }
  Result<void> create(const std::string& path, uint32_t mode) override {
    auto [dir, name] = split(path);
    return with(dir, [&](uint32_t d) { return done(c_->lcreate(d, name, O_RDWR | O_EXCL, mode)); });
  }
  Result<void> write(const std::string& path, uint64_t offset, const std::string& data) override {
    return opened(path, O_WRONLY, [&](uint32_t f) -> Result<void> {
      for (size_t at = 0; at < data.size();) {  // in pieces that fit the msize
        auto n = c_->write(f, offset + at, std::string_view(data).substr(at, 32768));
        if (!n) return Error{n.error()};
        if (*n == 0) return Error{-EIO};
        at += *n;
      }
      return {};
    });
  }
  Result<std::string> read(const std::string& path) override {
    std::string out;
    auto r = opened(path, O_RDONLY, [&](uint32_t f) -> Result<void> {
      auto s = c_->read_all(f);
      if (!s) return Error{s.error()};
      out = std::move(*s);
      return {};
    });
    if (!r) return Error{r.error()};
    return out;
  }
  Result<void> truncate(const std::string& path, uint64_t size) override {
    return with(path, [&](uint32_t f) { return done(c_->call<p9::Rsetattr>(p9::Tsetattr{.fid = f, .valid = 1 << 3, .size = size})); });
  }
  Result<void> chmod(const std::string& path, uint32_t mode) override {
    return with(path, [&](uint32_t f) { return done(c_->call<p9::Rsetattr>(p9::Tsetattr{.fid = f, .valid = 1 << 0, .mode = mode})); });
  }
  Result<Stat> stat(const std::string& path) override {
    Stat st;
    auto r = with(path, [&](uint32_t f) -> Result<void> {
      auto a = c_->getattr(f);
      if (!a) return Error{a.error()};
      st = {a->mode, a->size};
      return {};
    });
    if (!r) return Error{r.error()};
    return st;
  }
  Result<void> unlink(const std::string& path, bool dir) override {
    auto [d, name] = split(path);
    return with(d, [&](uint32_t f) {
      return done(c_->call<p9::Runlinkat>(p9::Tunlinkat{.dirfid = f, .name = name, .flags = dir ? 0x200u : 0u}));
    });
  }
  Result<void> rename(const std::string& from, const std::string& to) override {
    auto [fd, fname] = split(from);
    auto [td, tname] = split(to);
    return with(fd, [&](uint32_t a) {
      return with(td, [&](uint32_t b) {
        return done(c_->call<p9::Rrenameat>(
            p9::Trenameat{.olddirfid = a, .oldname = fname, .newdirfid = b, .newname = tname}));
      });
    });
  }
  Result<void> link(const std::string& from, const std::string& to) override {
    auto [td, tname] = split(to);
    return with(from, [&](uint32_t f) {
      return with(td, [&](uint32_t d) { return done(c_->call<p9::Rlink>(p9::Tlink{.dfid = d, .fid = f, .name = tname})); });
    });
  }
  Result<void> symlink(const std::string& target, const std::string& path) override {
    auto [d, name] = split(path);
    return with(d, [&](uint32_t f) {
      return done(c_->call<p9::Rsymlink>(p9::Tsymlink{.dfid = f, .name = name, .symtgt = target}));
    });
  }
  Result<std::string> readlink(const std::string& path) override {
    std::string out;
    auto r = with(path, [&](uint32_t f) -> Result<void> {
      auto l = c_->call<p9::Rreadlink>(p9::Treadlink{.fid = f});
      if (!l) return Error{l.error()};
      out = std::string(l->target);
      return {};
    });
    if (!r) return Error{r.error()};
    return out;
  }
  Result<std::set<std::string>> list(const std::string& path) override {
    std::set<std::string> names;
    auto r = opened(path, O_RDONLY | O_DIRECTORY, [&](uint32_t f) -> Result<void> {
      auto e = c_->readdir_all(f);
      if (!e) return Error{e.error()};
      for (auto& d : *e)
        if (d.name != "." && d.name != "..") names.insert(d.name);
      return {};
    });
    if (!r) return Error{r.error()};
    return names;
  }
  Result<void> setxattr(const std::string& path, const std::string& name, const std::string& value) override {
    return with(path, [&](uint32_t f) -> Result<void> {
      auto x = c_->call<p9::Rxattrcreate>(p9::Txattrcreate{.fid = f, .name = name, .attr_size = value.size(), .flags = 0});
      if (!x) return Error{x.error()};
      if (!value.empty()) {
        auto w = c_->write(f, 0, value);
        if (!w) return Error{w.error()};
      }
      auto c = c_->call<p9::Rclunk>(p9::Tclunk{.fid = f});  // the value is set when the fid is clunked
      clunked_ = true;
      return done(c);
    });
  }
  Result<std::string> getxattr(const std::string& path, const std::string& name) override {
    std::string out;
    auto r = with(path, [&](uint32_t f) -> Result<void> {
      uint32_t x = fid_++;
      auto w = c_->call<p9::Rxattrwalk>(p9::Txattrwalk{.fid = f, .newfid = x, .name = name});
      if (!w) return Error{w.error()};
      auto s = c_->read_all(x);
      (void)c_->clunk(x);
      if (!s) return Error{s.error()};
      out = std::move(*s);
      return {};
    });
    if (!r) return Error{r.error()};
    return out;
  }
  Result<void> fsync(const std::string& path) override {
    return opened(path, O_RDONLY, [&](uint32_t f) { return done(c_->call<p9::Rfsync>(p9::Tfsync{.fid = f, .datasync = 0})); });
  }
  void crash(const std::string& file) override {
    uint32_t f = fid_++;
    if (c_->walk(kRoot, f, file) && c_->lopen(f, O_RDONLY)) {
      for (uint16_t tag = 1; tag <= 8; tag++) (void)c_->send(tag, p9::Tread{.fid = f, .offset = 0, .count = 1 << 16});
    }
    c_.reset();
    connect();
  }

 private:
  static constexpr uint32_t kRoot = 1;
  void connect() {
    auto c = Client::connect_unix(sock_);
    if (!c) throw std::runtime_error("9p connect: " + std::string(std::strerror(-c.error())));
    c_ = std::make_unique<Client>(std::move(*c));
    if (!c_->version(1 << 16) || !c_->attach(kRoot, tag_)) throw std::runtime_error("9p attach failed");
    fid_ = 2;
  }
  template <class R>
  static Result<void> done(const Result<R>& r) {
    return r ? Result<void>{} : Error{r.error()};
  }
  // Walks a new fid to `path`, runs `fn` on it, clunks it.
  template <class Fn>
  Result<void> with(const std::string& path, Fn&& fn) {
    uint32_t f = fid_++;
    auto w = c_->walk(kRoot, f, path);
    if (!w) return Error{w.error()};
    clunked_ = false;
    Result<void> r = fn(f);
    if (!clunked_) (void)c_->clunk(f);
    clunked_ = false;
    return r;
  }
  template <class Fn>
  Result<void> opened(const std::string& path, uint32_t flags, Fn&& fn) {
    return with(path, [&](uint32_t f) -> Result<void> {
      if (auto o = c_->lopen(f, flags); !o) return Error{o.error()};
      return fn(f);
    });
  }

  std::string sock_, tag_;
  std::unique_ptr<Client> c_;
  uint32_t fid_ = 2;
  bool clunked_ = false;
};

// ---- virtio-fs (FUSE on virtqueues)

template <class T>
std::vector<std::byte> bytes_of(const T& v, std::initializer_list<std::string_view> names = {}) {
  std::vector<std::byte> out(sizeof v);
  std::memcpy(out.data(), &v, sizeof v);
  for (auto n : names) {
    for (char c : n) out.push_back(static_cast<std::byte>(c));
    out.push_back(std::byte{0});
  }
  return out;
}
std::vector<std::byte> names_of(std::initializer_list<std::string_view> names) {
  std::vector<std::byte> out;
  for (auto n : names) {
    for (char c : n) out.push_back(static_cast<std::byte>(c));
    out.push_back(std::byte{0});
  }
  return out;
}
template <class T>
T body_as(const VhostFrontend::FuseReply& r) {
  T v{};
  std::memcpy(&v, r.body.data(), std::min(sizeof v, r.body.size()));
  return v;
}

class FuseFs : public Fs {
 public:
  explicit FuseFs(std::string sock) : sock_(std::move(sock)) { connect(); }

  Result<void> mkdir(const std::string& path, uint32_t mode) override {
    auto [dir, name] = split(path);
    return at(dir, [&](uint64_t d) { return entry(call(FUSE_MKDIR, d, bytes_of(fuse_mkdir_in{mode, 0}, {name}))); });
  }
  Result<void> create(const std::string& path, uint32_t mode) override {
    auto [dir, name] = split(path);
    return at(dir, [&](uint64_t d) -> Result<void> {
      fuse_create_in in{};
      in.flags = O_RDWR | O_CREAT | O_EXCL;
      in.mode = S_IFREG | mode;
      auto r = call(FUSE_CREATE, d, bytes_of(in, {name}));
      if (!r) return Error{r.error()};
      auto e = body_as<fuse_entry_out>(*r);
      fuse_open_out o{};
      std::memcpy(&o, r->body.data() + sizeof e, sizeof o);
      release(e.nodeid, o.fh, false);
      forget(e.nodeid);
      return {};
    });
  }
  Result<void> write(const std::string& path, uint64_t offset, const std::string& data) override {
    return opened(path, O_WRONLY, false, [&](uint64_t n, uint64_t fh) -> Result<void> {
      fuse_write_in in{};
      in.fh = fh;
      in.offset = offset;
      in.size = static_cast<uint32_t>(data.size());
      auto r = call(FUSE_WRITE, n, bytes_of(in), std::as_bytes(std::span(data)));
      if (!r) return Error{r.error()};
      return body_as<fuse_write_out>(*r).size == data.size() ? Result<void>{} : Error{-EIO};
    });
  }
  Result<std::string> read(const std::string& path) override {
    std::string out;
    auto r = opened(path, O_RDONLY, false, [&](uint64_t n, uint64_t fh) -> Result<void> {
      for (;;) {
        fuse_read_in in{};
        in.fh = fh;
        in.offset = out.size();
        in.size = 1 << 16;
        auto r = call(FUSE_READ, n, bytes_of(in), {}, (1 << 16) + 64);
        if (!r) return Error{r.error()};
        if (r->body.empty()) return {};
        out.append(reinterpret_cast<const char*>(r->body.data()), r->body.size());
      }
    });
    if (!r) return Error{r.error()};
    return out;
  }
  Result<void> truncate(const std::string& path, uint64_t size) override {
    fuse_setattr_in in{};
    in.valid = FATTR_SIZE;
    in.size = size;
    return node(path, [&](uint64_t n) { return done(call(FUSE_SETATTR, n, bytes_of(in))); });
  }
  Result<void> chmod(const std::string& path, uint32_t mode) override {
    fuse_setattr_in in{};
    in.valid = FATTR_MODE;
    in.mode = mode;
    return node(path, [&](uint64_t n) { return done(call(FUSE_SETATTR, n, bytes_of(in))); });
  }
  Result<Stat> stat(const std::string& path) override {
    Stat st;
    auto r = node(path, [&](uint64_t n) -> Result<void> {
      auto a = call(FUSE_GETATTR, n, bytes_of(fuse_getattr_in{}));
      if (!a) return Error{a.error()};
      auto out = body_as<fuse_attr_out>(*a);
      st = {out.attr.mode, out.attr.size};
      return {};
    });
    if (!r) return Error{r.error()};
    return st;
  }
  Result<void> unlink(const std::string& path, bool dir) override {
    auto [d, name] = split(path);
    return at(d, [&](uint64_t n) { return done(call(dir ? FUSE_RMDIR : FUSE_UNLINK, n, names_of({name}))); });
  }
  Result<void> rename(const std::string& from, const std::string& to) override {
    auto [fd, fname] = split(from);
    auto [td, tname] = split(to);
    return at(fd, [&](uint64_t a) {
      return at(td, [&](uint64_t b) { return done(call(FUSE_RENAME, a, bytes_of(fuse_rename_in{b}, {fname, tname}))); });
    });
  }
  Result<void> link(const std::string& from, const std::string& to) override {
    auto [td, tname] = split(to);
    return node(from, [&](uint64_t f) {
      return at(td, [&](uint64_t d) { return entry(call(FUSE_LINK, d, bytes_of(fuse_link_in{f}, {tname}))); });
    });
  }
  Result<void> symlink(const std::string& target, const std::string& path) override {
    auto [d, name] = split(path);
    return at(d, [&](uint64_t n) { return entry(call(FUSE_SYMLINK, n, names_of({name, target}))); });
  }
  Result<std::string> readlink(const std::string& path) override {
    std::string out;
    auto r = node(path, [&](uint64_t n) -> Result<void> {
      auto l = call(FUSE_READLINK, n, {});
      if (!l) return Error{l.error()};
      out.assign(reinterpret_cast<const char*>(l->body.data()), l->body.size());
      return {};
    });
    if (!r) return Error{r.error()};
    return out;
  }
  Result<std::set<std::string>> list(const std::string& path) override {
    std::set<std::string> names;
    auto r = opened(path, O_RDONLY, true, [&](uint64_t n, uint64_t fh) -> Result<void> {
      uint64_t offset = 0;
      for (;;) {
        fuse_read_in in{};
        in.fh = fh;
        in.offset = offset;
        in.size = 8192;
        auto r = call(FUSE_READDIR, n, bytes_of(in), {}, 8192 + 64);
        if (!r) return Error{r.error()};
        if (r->body.empty()) return {};
        for (size_t at = 0; at + FUSE_NAME_OFFSET <= r->body.size();) {
          fuse_dirent d;
          std::memcpy(&d, r->body.data() + at, FUSE_NAME_OFFSET);
          std::string name(reinterpret_cast<const char*>(r->body.data() + at + FUSE_NAME_OFFSET), d.namelen);
          if (name != "." && name != "..") names.insert(name);
          offset = d.off;
          at += FUSE_DIRENT_SIZE(&d);
        }
      }
    });
    if (!r) return Error{r.error()};
    return names;
  }
  Result<void> setxattr(const std::string& path, const std::string& name, const std::string& value) override {
    fuse_setxattr_in in{};
    in.size = static_cast<uint32_t>(value.size());
    auto a = bytes_of(in, {name});
    for (char c : value) a.push_back(static_cast<std::byte>(c));
    // The classic setxattr_in is 8 bytes (no FUSE_SETXATTR_EXT); drop the rest.
    a.erase(a.begin() + 8, a.begin() + sizeof in);
    return node(path, [&](uint64_t n) { return done(call(FUSE_SETXATTR, n, a)); });
  }
  Result<std::string> getxattr(const std::string& path, const std::string& name) override {
    std::string out;
    auto r = node(path, [&](uint64_t n) -> Result<void> {
      fuse_getxattr_in in{};
      in.size = 4096;
      auto x = call(FUSE_GETXATTR, n, bytes_of(in, {name}), {}, 4096 + 64);
      if (!x) return Error{x.error()};
      out.assign(reinterpret_cast<const char*>(x->body.data()), x->body.size());
      return {};
    });
    if (!r) return Error{r.error()};
    return out;
  }
  Result<void> fsync(const std::string& path) override {
    return opened(path, O_RDONLY, false, [&](uint64_t n, uint64_t fh) {
      fuse_fsync_in in{};
      in.fh = fh;
      return done(call(FUSE_FSYNC, n, bytes_of(in)));
    });
  }
  void crash(const std::string& file) override {
    // Requests in the ring, kicked, never waited for; then the front-end goes.
    auto n = lookup_path(file);
    if (n) {
      for (int i = 0; i < 8; i++) (void)f_->submit_fuse(1, FUSE_GETATTR, *n, bytes_of(fuse_getattr_in{}), 4096);
    }
    f_.reset();
    connect();
  }

 private:
  void connect() {
    // The device serves one front-end at a time: the last one may still be
    // going away.
    for (int tries = 0;; tries++) {
      auto f = VhostFrontend::connect(sock_, {.memory = 16 << 20, .queue_size = 64, .poison_replies = false});
      if (f && (*f)->negotiate() && (*f)->fuse_init()) {
        f_ = std::move(*f);
        return;
      }
      if (tries == 100) throw std::runtime_error("vhost-user front-end could not start");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  // A request and its reply; a FUSE error becomes an Error.
  Result<VhostFrontend::FuseReply> call(uint32_t op, uint64_t node, std::span<const std::byte> args,
                                        std::span<const std::byte> payload = {}, size_t reply = 4096) {
    auto r = f_->fuse(1, op, node, args, reply, payload);
    if (!r) throw std::runtime_error("virtio-fs request failed: " + std::string(std::strerror(-r.error())));
    if (r->error) return Error{r->error};
    return r;
  }
  static Result<void> done(const Result<VhostFrontend::FuseReply>& r) { return r ? Result<void>{} : Error{r.error()}; }
  // A reply with an entry: the lookup it counts is given back.
  Result<void> entry(const Result<VhostFrontend::FuseReply>& r) {
    if (!r) return Error{r.error()};
    forget(body_as<fuse_entry_out>(*r).nodeid);
    return {};
  }
  void forget(uint64_t nodeid) { (void)f_->fuse(1, FUSE_FORGET, nodeid, bytes_of(fuse_forget_in{1}), 0); }
  // Looks up every component; the caller forgets what `looked` collects.
  Result<uint64_t> lookup_path(const std::string& path, std::vector<uint64_t>* looked = nullptr) {
    uint64_t n = FUSE_ROOT_ID;
    size_t at = 0;
    while (at <= path.size()) {
      size_t slash = path.find('/', at);
      std::string part = path.substr(at, slash == std::string::npos ? std::string::npos : slash - at);
      at = slash == std::string::npos ? path.size() + 1 : slash + 1;
      if (part.empty()) continue;
      auto r = call(FUSE_LOOKUP, n, names_of({part}));
      if (!r) return Error{r.error()};
      n = body_as<fuse_entry_out>(*r).nodeid;
      if (looked) looked->push_back(n);
      else forget(n);
    }
    return n;
  }
  template <class Fn>
  Result<void> node(const std::string& path, Fn&& fn) {
    std::vector<uint64_t> looked;
    auto n = lookup_path(path, &looked);
    Result<void> r = n ? fn(*n) : Result<void>(Error{n.error()});
    for (auto id : looked) forget(id);
    return r;
  }
  template <class Fn>
  Result<void> at(const std::string& dir, Fn&& fn) {
    return node(dir, std::forward<Fn>(fn));
  }
  template <class Fn>
  Result<void> opened(const std::string& path, uint32_t flags, bool dir, Fn&& fn) {
    return node(path, [&](uint64_t n) -> Result<void> {
      auto o = call(dir ? FUSE_OPENDIR : FUSE_OPEN, n, bytes_of(fuse_open_in{flags, 0}));
      if (!o) return Error{o.error()};
      uint64_t fh = body_as<fuse_open_out>(*o).fh;
      Result<void> r = fn(n, fh);
      release(n, fh, dir);
      return r;
    });
  }
  void release(uint64_t n, uint64_t fh, bool dir) {
    fuse_release_in in{};
    in.fh = fh;
    (void)call(dir ? FUSE_RELEASEDIR : FUSE_RELEASE, n, bytes_of(in));
  }

  std::string sock_;
  std::unique_ptr<VhostFrontend> f_;
};

// ---- the model of one client's directory

struct Inode {
  enum Kind { kFile, kDir, kLink } kind;
  uint32_t mode = 0;
  std::string data;  // a file's contents, or a link's target
  std::map<std::string, std::string> xattrs;
};

class Model {
 public:
  explicit Model(std::string root) : root_(std::move(root)) { tree_[root_] = dir(); }
  std::shared_ptr<Inode> find(const std::string& p) const {
    auto it = tree_.find(p);
    return it == tree_.end() ? nullptr : it->second;
  }
  // The errno a name's parent gives, or 0 if it is a directory. When an
  // ancestor further up is missing or not a directory, kPathError: a 9P walk
  // that stops part-way reports no errno, so ENOENT and ENOTDIR both pass.
  int parent_error(const std::string& p) const {
    auto [d, name] = split(p);
    if (auto n = find(d)) return n->kind == Inode::kDir ? 0 : -ENOTDIR;
    return kPathError;
  }
  static constexpr int kPathError = 1;
  bool empty_dir(const std::string& p) const {
    auto it = tree_.upper_bound(p + "/");
    return it == tree_.end() || it->first.compare(0, p.size() + 1, p + "/") != 0;
  }
  std::set<std::string> children(const std::string& p) const {
    std::set<std::string> out;
    for (auto it = tree_.upper_bound(p + "/"); it != tree_.end() && it->first.compare(0, p.size() + 1, p + "/") == 0; ++it)
      if (it->first.find('/', p.size() + 1) == std::string::npos) out.insert(it->first.substr(p.size() + 1));
    return out;
  }
  void put(const std::string& p, std::shared_ptr<Inode> n) { tree_[p] = std::move(n); }
  void erase(const std::string& p) { tree_.erase(p); }
  // Moves p and everything under it to q.
  void move(const std::string& p, const std::string& q) {
    std::vector<std::pair<std::string, std::shared_ptr<Inode>>> moved;
    for (auto it = tree_.lower_bound(p); it != tree_.end();) {
      bool under = it->first == p || it->first.compare(0, p.size() + 1, p + "/") == 0;
      if (!under) {
        if (it->first.compare(0, p.size(), p) != 0) break;
        ++it;
        continue;
      }
      moved.emplace_back(q + it->first.substr(p.size()), it->second);
      it = tree_.erase(it);
    }
    for (auto& [k, v] : moved) tree_[k] = v;
  }
  std::vector<std::string> paths(Inode::Kind kind) const {
    std::vector<std::string> out;
    for (auto& [p, n] : tree_)
      if (n->kind == kind && p != root_) out.push_back(p);
    return out;
  }
  const std::map<std::string, std::shared_ptr<Inode>>& tree() const { return tree_; }
  const std::string& root() const { return root_; }
  static std::shared_ptr<Inode> dir(uint32_t mode = 0755) {
    auto n = std::make_shared<Inode>();
    n->kind = Inode::kDir;
    n->mode = mode;
    return n;
  }

 private:
  std::string root_;
  std::map<std::string, std::shared_ptr<Inode>> tree_;
};

// ---- one client's random run

struct Totals {
  std::atomic<uint64_t> ops{0}, mismatches{0}, crashes{0};
};

class Runner {
 public:
  Runner(Fs& fs, std::string root, uint64_t seed, bool xattrs, Totals& totals)
      : fs_(fs), model_(root), rng_(seed), xattrs_(xattrs), totals_(totals) {}
  const Model& model() const { return model_; }
  std::string first_mismatch() const { return first_mismatch_; }

  void run(std::chrono::steady_clock::time_point until) {
    if (auto r = fs_.mkdir(model_.root(), 0755); !r) mismatch("mkdir root", r.error(), 0);
    while (std::chrono::steady_clock::now() < until) {
      step();
      totals_.ops++;
    }
  }

 private:
  std::string random_path() {
    static const char* kNames[] = {"a", "b", "c", "d", "e"};
    std::string p = model_.root();
    int depth = 1 + static_cast<int>(rng_() % 3);
    for (int i = 0; i < depth; i++) p += std::string("/") + kNames[rng_() % 5];
    return p;
  }
  // An existing path of that kind (most of the time), else a random one.
  std::string pick(Inode::Kind kind) {
    auto all = model_.paths(kind);
    if (all.empty() || rng_() % 8 == 0) return random_path();
    return all[rng_() % all.size()];
  }
  std::string random_data() {
    std::string s(rng_() % 3 == 0 ? rng_() % 100000 : rng_() % 300, 'x');
    for (auto& c : s) c = static_cast<char>('a' + rng_() % 26);
    return s;
  }
  void mismatch(const std::string& what, int got, int want) {
    report(what + ": got " + std::to_string(got) + " (" + std::strerror(-got) + "), model says " +
           std::to_string(want) + " (" + std::strerror(-want) + ")");
  }
  // Counts a mismatch; the first is kept, with the operations before it.
  void report(const std::string& what) {
    totals_.mismatches++;
    if (!first_mismatch_.empty()) return;
    first_mismatch_ = what + "\n  after:";
    for (const auto& h : history_) first_mismatch_ += "\n    " + h;
  }
  void remember(const std::string& what, int got) {
    if (history_.size() == 40) history_.pop_front();
    history_.push_back(what + " -> " + std::to_string(got));
  }
  // Compares an outcome with the model's; true if both succeeded.
  template <class R>
  bool check(const std::string& what, const R& r, int want) {
    int got = r ? 0 : r.error();
    remember(what, got);
    if (want == Model::kPathError && (got == -ENOENT || got == -ENOTDIR)) return false;
    if (got != want) mismatch(what, got, want);
    return got == 0 && want == 0;
  }
  void check_value(const std::string& what, const std::string& got, const std::string& want) {
    if (got == want) return;
    report(what + ": got " + std::to_string(got.size()) + " bytes, model says " + std::to_string(want.size()));
  }
  // The errno of making `p` anew (0 if it can be made).
  int create_error(const std::string& p) {
    if (int e = model_.parent_error(p)) return e;
    return model_.find(p) ? -EEXIST : 0;
  }

  void step() {
    switch (rng_() % 17) {
      case 0: {
        auto p = random_path();
        int want = create_error(p);
        if (check("mkdir " + p, fs_.mkdir(p, 0755), want)) model_.put(p, Model::dir());
        break;
      }
      case 1:
      case 2: {
        auto p = random_path();
        int want = create_error(p);
        if (check("create " + p, fs_.create(p, 0644), want)) {
          auto n = std::make_shared<Inode>();
          n->kind = Inode::kFile;
          n->mode = 0644;
          model_.put(p, n);
        }
        break;
      }
      case 3:
      case 4: {
        auto p = pick(Inode::kFile);
        auto n = model_.find(p);
        if (!n || n->kind != Inode::kFile) break;  // errors of open() differ by protocol; tested elsewhere
        uint64_t off = rng_() % 2 ? n->data.size() : rng_() % (n->data.size() + 100);
        std::string data = random_data();
        if (check("write " + p, fs_.write(p, off, data), 0) && !data.empty()) {  // writing nothing extends nothing
          if (n->data.size() < off + data.size()) n->data.resize(off + data.size(), '\0');
          n->data.replace(off, data.size(), data);
        }
        break;
      }
      case 5: {
        auto p = pick(Inode::kFile);
        auto n = model_.find(p);
        if (!n || n->kind != Inode::kFile) break;
        auto r = fs_.read(p);
        if (check("read " + p, r, 0)) check_value("read " + p, *r, n->data);
        break;
      }
      case 6: {
        auto p = pick(Inode::kFile);
        auto n = model_.find(p);
        if (!n || n->kind != Inode::kFile) break;
        uint64_t size = rng_() % 5000;
        if (check("truncate " + p, fs_.truncate(p, size), 0)) n->data.resize(size, '\0');
        break;
      }
      case 7: {
        auto p = pick(rng_() % 2 ? Inode::kFile : Inode::kDir);
        auto n = model_.find(p);
        if (!n || n->kind == Inode::kLink) break;  // a link's own mode cannot change
        uint32_t mode = 0700 | (rng_() % 0100);
        if (check("chmod " + p, fs_.chmod(p, mode), 0)) n->mode = mode;
        break;
      }
      case 8: {
        auto p = pick(static_cast<Inode::Kind>(rng_() % 2));
        auto n = model_.find(p);
        auto r = fs_.stat(p);
        // stat walks the whole path: a walk stopped part-way has no errno.
        int want = n ? 0 : model_.parent_error(p) ? Model::kPathError : -ENOENT;
        if (check("stat " + p, r, want)) {
          uint32_t type = n->kind == Inode::kFile ? S_IFREG : n->kind == Inode::kDir ? S_IFDIR : S_IFLNK;
          if ((r->mode & S_IFMT) != type || (r->mode & 07777) != n->mode ||
              (n->kind == Inode::kFile && r->size != n->data.size()))
            report("stat " + p + ": mode " + std::to_string(r->mode) + " size " + std::to_string(r->size) +
                   ", model says type " + std::to_string(type) + " mode " + std::to_string(n->mode) + " size " +
                   std::to_string(n->data.size()));
        }
        break;
      }
      case 9: {  // unlink a file or link, or rmdir
        bool dir = rng_() % 3 == 0;
        auto p = pick(dir ? Inode::kDir : static_cast<Inode::Kind>(rng_() % 2 ? Inode::kFile : Inode::kLink));
        auto n = model_.find(p);
        int want = !n ? (model_.parent_error(p) ? model_.parent_error(p) : -ENOENT)
                   : dir ? (n->kind != Inode::kDir ? -ENOTDIR : !model_.empty_dir(p) ? -ENOTEMPTY : 0)
                         : (n->kind == Inode::kDir ? -EISDIR : 0);
        if (check(std::string(dir ? "rmdir " : "unlink ") + p, fs_.unlink(p, dir), want)) model_.erase(p);
        break;
      }
      case 10:
      case 11: rename_step(); break;
      case 12: {
        auto from = pick(Inode::kFile);
        auto to = random_path();
        auto n = model_.find(from);
        if (!n || n->kind != Inode::kFile) break;
        if (check("link " + from + " " + to, fs_.link(from, to), create_error(to))) model_.put(to, n);
        break;
      }
      case 13: {
        auto p = random_path();
        std::string target = "t" + std::to_string(rng_() % 1000);
        if (check("symlink " + p, fs_.symlink(target, p), create_error(p))) {
          auto n = std::make_shared<Inode>();
          n->kind = Inode::kLink;
          n->mode = 0777;
          n->data = target;
          model_.put(p, n);
        }
        auto l = pick(Inode::kLink);
        if (auto n = model_.find(l); n && n->kind == Inode::kLink) {
          auto r = fs_.readlink(l);
          if (check("readlink " + l, r, 0)) check_value("readlink " + l, *r, n->data);
        }
        break;
      }
      case 14: {
        auto p = rng_() % 4 ? pick(Inode::kDir) : model_.root();
        auto n = model_.find(p);
        if (!n || n->kind != Inode::kDir) break;
        auto r = fs_.list(p);
        if (check("list " + p, r, 0) && *r != model_.children(p)) mismatch("list " + p + " (names)", 0, 0);
        break;
      }
      case 15: {
        if (!xattrs_) break;
        auto p = pick(Inode::kFile);
        auto n = model_.find(p);
        if (!n || n->kind != Inode::kFile) break;
        std::string name = "user.k" + std::to_string(rng_() % 3);
        if (rng_() % 2) {
          std::string value = random_data().substr(0, 200);
          if (check("setxattr " + p, fs_.setxattr(p, name, value), 0)) n->xattrs[name] = value;
        } else {
          auto it = n->xattrs.find(name);
          auto r = fs_.getxattr(p, name);
          if (check("getxattr " + p + " " + name, r, it == n->xattrs.end() ? -ENODATA : 0))
            check_value("getxattr " + p, *r, it->second);
        }
        break;
      }
      case 16: {
        if (rng_() % 50 == 0) {  // killed with requests in flight (reads only: the model stays right)
          auto files = model_.paths(Inode::kFile);
          fs_.crash(files.empty() ? model_.root() : files[rng_() % files.size()]);
          totals_.crashes++;
          break;
        }
        auto p = pick(Inode::kFile);
        if (auto n = model_.find(p); n && n->kind == Inode::kFile) check("fsync " + p, fs_.fsync(p), 0);
        break;
      }
    }
  }

  // rename(2)'s errors, in the kernel's order. When both names have a
  // problem, which is reported depends on which the client resolves first,
  // so either passes.
  void rename_step() {
    auto from = pick(static_cast<Inode::Kind>(rng_() % 3));
    auto to = rng_() % 3 ? random_path() : pick(static_cast<Inode::Kind>(rng_() % 3));
    auto src = model_.find(from);
    auto dst = model_.find(to);
    auto under = [](const std::string& a, const std::string& b) { return a.compare(0, b.size() + 1, b + "/") == 0; };
    int from_error = model_.parent_error(from);
    if (!from_error && !src) from_error = -ENOENT;
    int to_error = model_.parent_error(to);
    int want = 0;
    if (from_error || to_error) {
      auto r = fs_.rename(from, to);
      int got = r ? 0 : r.error();
      auto matches = [&](int w) {
        return w && (got == w || (w == Model::kPathError && (got == -ENOENT || got == -ENOTDIR)));
      };
      if (!matches(from_error) && !matches(to_error)) mismatch("rename " + from + " " + to, got, from_error ? from_error : to_error);
      return;
    }
    if (from == to || src == dst) want = 0;  // the same file: nothing happens
    else if (under(to, from)) want = -EINVAL;     // into itself
    else if (under(from, to)) want = -ENOTEMPTY;  // over its own ancestor
    else if (dst && src->kind == Inode::kDir && dst->kind != Inode::kDir) want = -ENOTDIR;
    else if (dst && src->kind != Inode::kDir && dst->kind == Inode::kDir) want = -EISDIR;
    else if (dst && dst->kind == Inode::kDir && !model_.empty_dir(to)) want = -ENOTEMPTY;
    if (!check("rename " + from + " " + to, fs_.rename(from, to), want)) return;
    if (from == to || src == dst) return;
    model_.erase(to);
    model_.move(from, to);
  }

  Fs& fs_;
  Model model_;
  std::mt19937_64 rng_;
  bool xattrs_;
  Totals& totals_;
  std::string first_mismatch_;
  std::deque<std::string> history_;
};

// Compares a model with the host directory it describes.
std::string compare_with_host(const Model& m, const std::filesystem::path& export_root) {
  std::set<std::string> host;
  for (auto it = std::filesystem::recursive_directory_iterator(export_root / m.root());
       it != std::filesystem::recursive_directory_iterator(); ++it)
    host.insert(m.root() + "/" + std::filesystem::relative(it->path(), export_root / m.root()).string());
  std::set<std::string> model;
  for (auto& [p, n] : m.tree()) {
    if (p == m.root()) continue;
    model.insert(p);
    auto path = export_root / p;
    struct stat st{};
    if (::lstat(path.c_str(), &st) != 0) return p + ": missing on the host";
    if (n->kind == Inode::kFile && read_file(path) != n->data) return p + ": contents differ on the host";
  }
  return host == model ? "" : "the host tree and the model list different paths";
}

size_t rss_bytes(pid_t pid) {
  std::ifstream statm("/proc/" + std::to_string(pid) + "/statm");
  size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

TEST(Soak, ClientsAndFrontEndsAgreeWithTheModel) {
  int seconds = 20;
  if (const char* s = std::getenv("FSD_SOAK_SECONDS")) seconds = std::max(1, std::atoi(s));
  constexpr int kP9Clients = 4, kFrontEnds = 2;
  TempDir tmp;
  auto rw = tmp.path() / "rw";
  std::filesystem::create_directories(rw);
  bool xattrs = ::setxattr(rw.c_str(), "user.probe", "1", 1, 0) == 0;
  std::string sock = (tmp.path() / "9p.sock").string();
  std::vector<std::string> args = {"--export", "rw=" + rw.string() + ",cache=never", "--listen", "unix:" + sock,
                                   "--fd-budget", "128", "--threads", "2"};
  std::vector<std::string> vsocks;
  for (int i = 0; i < kFrontEnds; i++) {
    vsocks.push_back((tmp.path() / ("fs" + std::to_string(i) + ".sock")).string());
    args.insert(args.end(), {"--virtiofs-socket", "rw=" + vsocks.back()});
  }
  FsdProcess fsd({.args = args});
  fsd.wait_listening("unix:");
  for (auto& v : vsocks) fsd.wait_for_log("listening on " + v);

  std::vector<std::unique_ptr<Fs>> clients;
  for (int i = 0; i < kP9Clients; i++) clients.push_back(std::make_unique<P9Fs>(sock, "rw"));
  for (auto& v : vsocks) clients.push_back(std::make_unique<FuseFs>(v));
  Totals totals;
  std::vector<std::unique_ptr<Runner>> runners;
  for (size_t i = 0; i < clients.size(); i++)
    runners.push_back(std::make_unique<Runner>(*clients[i], (i < kP9Clients ? "p" : "v") + std::to_string(i),
                                               1000 + i, xattrs, totals));
  auto start = std::chrono::steady_clock::now();
  auto until = start + std::chrono::seconds(seconds);
  std::vector<std::thread> threads;
  std::mutex errors_mu;
  std::vector<std::string> errors;
  for (auto& r : runners)
    threads.emplace_back([&, r = r.get()] {
      try {
        r->run(until);
      } catch (const std::exception& e) {
        std::lock_guard g(errors_mu);
        errors.push_back(e.what());
      }
    });
  // Samples: fsd's RSS and fds in each tenth of the run.
  std::vector<size_t> rss, fds;
  while (std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(seconds * 100));
    rss.push_back(rss_bytes(fsd.server_pid()));
    fds.push_back(fsd.open_fds());
  }
  for (auto& t : threads) t.join();
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  for (auto& e : errors) ADD_FAILURE() << "a client stopped: " << e << "\n" << fsd.log();
  for (auto& r : runners)
    if (!r->first_mismatch().empty()) ADD_FAILURE() << "model mismatch: " << r->first_mismatch();
  EXPECT_EQ(totals.mismatches.load(), 0u);
  for (auto& r : runners) EXPECT_EQ(compare_with_host(r->model(), rw), "");
  // Still serving, to a new client.
  P9Fs late(sock, "rw");
  EXPECT_TRUE(late.stat("p0").ok());

  size_t half = rss.size() / 2;
  size_t rss_first = *std::max_element(rss.begin(), rss.begin() + static_cast<long>(half));
  size_t rss_second = *std::max_element(rss.begin() + static_cast<long>(half), rss.end());
  size_t fds_peak = *std::max_element(fds.begin(), fds.end());
  std::printf("soak: %d clients (%d 9P, %d virtio-fs) ran %llu operations in %.0f s (%.0f/s), %llu kills; "
              "fsd peak RSS %.1f MiB (first half %.1f, second %.1f), peak fds %zu; %llu mismatches\n",
              kP9Clients + kFrontEnds, kP9Clients, kFrontEnds, static_cast<unsigned long long>(totals.ops.load()), took,
              static_cast<double>(totals.ops.load()) / took, static_cast<unsigned long long>(totals.crashes.load()),
              static_cast<double>(std::max(rss_first, rss_second)) / (1 << 20), static_cast<double>(rss_first) / (1 << 20),
              static_cast<double>(rss_second) / (1 << 20), fds_peak, static_cast<unsigned long long>(totals.mismatches.load()));
  RecordProperty("operations", static_cast<int>(totals.ops.load()));
  RecordProperty("peak_rss_kib", static_cast<int>(std::max(rss_first, rss_second) / 1024));
  // Levels off: the second half grows by no more than a quarter plus 16 MiB
  // (allocator noise) over the first; fds stay within the budget.
#ifndef __SANITIZE_ADDRESS__  // AddressSanitizer's quarantine keeps freed memory resident by design
  EXPECT_LE(rss_second, rss_first + rss_first / 4 + (16u << 20));
#endif
  EXPECT_LT(fds_peak, 128u + 48u);
  EXPECT_EQ(fsd.stop(), 0) << fsd.log();
}

}  // namespace
}  // namespace fsd::testing
