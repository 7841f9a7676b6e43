#include "fsd/p9/session.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>

#include "fsd/core/iovec.h"

namespace fsd::p9 {

// Reads of at least this many bytes go straight into the transport's room
// when it offers one (ReplySink::space); shorter ones cost less copied.
constexpr uint32_t kReadInPlace = 16 * 1024;

// In an op: looks up a fid, or ends the op with its error (EBADF).
#define FSD_FID_OR_RETURN(var, id)                   \
  auto var##_or = fid(id);                           \
  if (!var##_or) co_return Error{var##_or.error()}; \
  FidPtr var = *var##_or

// In an op: looks up two fids of one export, or ends the op with its error
// (EBADF, or EXDEV across exports).
#define FSD_FIDS_OR_RETURN(a, b, id_a, id_b)             \
  auto a##_##b##_or = one_export(id_a, id_b);            \
  if (!a##_##b##_or) co_return Error{a##_##b##_or.error()}; \
  auto [a, b] = *a##_##b##_or

// Bytes of xattr buffers a fid holds, counted in its session's total until
// the fid goes.
struct Session::XattrCharge {
  size_t* total = nullptr;
  size_t bytes = 0;
  XattrCharge() = default;
  XattrCharge(const XattrCharge&) = delete;
  XattrCharge& operator=(const XattrCharge&) = delete;
  ~XattrCharge() {
    if (total) *total -= bytes;
  }
};

struct Session::Fid {
  Vfs* vfs = nullptr;
  NodeRef node;
  // The name it was walked by (or created under) in `parent`: Tremove and
  // Trename act on that name, not on another link of the same inode. No
  // parent: unknown (the root, or a walk that ended in "." or "..").
  NodeRef parent;
  std::string name;
  Credentials::Ref who;  // the identity its requests act as (null: fsd itself)
  OpenFile file;  // valid after Tlopen / Tlcreate
  enum class Xattr { kNone, kRead, kWrite } xattr = Xattr::kNone;
  std::vector<std::byte> xattr_data;
  XattrCharge charge;  // xattr_data's bytes, against the session's budget
  std::string xattr_name;
  uint64_t xattr_size = 0;
  int xattr_flags = 0;
};

struct Session::Request {
  uint16_t tag = 0;
  const TMessage* msg = nullptr;
  Buffer reply;
  bool sent = false;  // the reply went out already (from a ReplySpace)
  Event done;
};

Session::Session(const ExportSet& exports, Ring& ring, ReplySink& sink, SessionConfig config, Peer peer)
    : exports_(exports), ring_(ring), sink_(sink), config_(config), peer_(std::move(peer)) {
  config_.max_msize = std::clamp(config_.max_msize, SessionConfig::kMinMsize, SessionConfig::kMaxMsize);
}

Session::~Session() = default;

StreamSessionFactory session_factory(const ExportSet& exports, SessionConfig config) {
  return [&exports, config](Ring& ring, ReplySink& sink, const Peer& peer) -> std::unique_ptr<StreamSession> {
    return std::make_unique<Session>(exports, ring, sink, config, peer);
  };
}

template <class M>
void Session::set_reply(Request& rq, const M& m) {
  if (rq.reply.capacity() == 0) rq.reply = sink_.buffer(BufferPool::kSmall);
  auto n = encode(rq.reply.room(), rq.tag, m);
  if (!n) {  // cannot happen for bounded replies; answer something valid
    n = encode(rq.reply.room(), rq.tag, Rlerror{.ecode = EIO});
  }
  rq.reply.set_size(*n);
}

Task<void> Session::handle(Buffer frame) {
  auto hdr = decode_header(frame.bytes());
  if (!hdr || hdr->size != frame.size()) {
    sink_.protocol_error("bad frame header");
    sink_.recycle(std::move(frame));
    co_return;
  }
  Request rq;
  rq.tag = hdr->tag;
  if (!in_flight_.emplace(rq.tag, &rq).second) {
    sink_.protocol_error("tag already in use by a request in flight");
    sink_.recycle(std::move(frame));
    co_return;
  }
  Result<void> res;
  auto msg = decode_t(frame.bytes());
  if (msg) {
    rq.msg = &msg->msg;
    res = co_await dispatch(rq);
  } else if (msg.error() == -EOPNOTSUPP) {
    res = Error{-EOPNOTSUPP};  // well framed, unknown type: answer it, keep serving
  } else {
    const char* name = type_name(hdr->type);
    sink_.protocol_error(std::string("malformed ") + (name ? name : "message"));
    in_flight_.erase(rq.tag);
    sink_.recycle(std::move(frame));
    rq.done.set();
    co_return;
  }
  if (!res) set_reply(rq, Rlerror{.ecode = static_cast<uint32_t>(-res.error())});
  if (!rq.sent) sink_.reply(std::move(rq.reply));
  in_flight_.erase(rq.tag);
  sink_.recycle(std::move(frame));
  rq.done.set();  // releases any Tflush waiting for this tag
}

Task<Result<void>> Session::dispatch(Request& rq) {
  return std::visit([&](const auto& m) { return op(rq, m); }, *rq.msg);
}

Result<Session::FidPtr> Session::fid(uint32_t id) const {
  auto it = fids_.find(id);
  if (it == fids_.end()) return Error{-EBADF};
  ring_.act_as(it->second->who.get());
  return it->second;
}

Result<void> Session::act_as_creator(const Fid& dir, uint32_t client_gid) {
  auto who = dir.vfs->creator(dir.who.get(), client_gid, peer_.trusted);
  if (!who) return Error{who.error()};
  ring_.act_as(who->get());
  return {};
}

Result<std::pair<Session::FidPtr, Session::FidPtr>> Session::one_export(uint32_t a, uint32_t b) const {
  auto fa = fid(a);
  if (!fa) return Error{fa.error()};
  auto fb = fid(b);
  if (!fb) return Error{fb.error()};
  if ((*fa)->vfs != (*fb)->vfs) return Error{-EXDEV};
  return std::pair{*fa, *fb};
}

template <class R>
Result<void> Session::reply_empty(Request& rq, Result<void> done) {
  if (!done) return done;
  set_reply(rq, R{});
  return {};
}

template <class R>
Result<void> Session::reply_qid(Request& rq, const Fid& dir, Result<Entry> made) {
  if (!made) return Error{made.error()};
  set_reply(rq, R{.qid = qid_of(*dir.vfs, *made->node, made->st)});
  return {};
}

Result<void> Session::check_new_fid(uint32_t id, uint32_t except) const {
  if (id == kNoFid) return Error{-EBADF};
  if (id == except) return {};  // replaces a fid: no new one
  if (fids_.contains(id)) return Error{-EBADF};
  if (fids_.size() >= config_.max_fids) return Error{-EMFILE};
  return {};
}

Result<void> Session::charge_xattr(Fid& f, size_t bytes) {
  if (bytes > config_.max_xattr_bytes - std::min(xattr_bytes_, config_.max_xattr_bytes)) return Error{-ENOMEM};
  xattr_bytes_ += bytes;
  f.charge.total = &xattr_bytes_;
  f.charge.bytes += bytes;
  return {};
}

Qid Session::qid_of(Vfs& vfs, const Node& n, const struct statx& st) const {
  Qid q;
  q.type = n.is_dir() ? kQtDir : n.is_symlink() ? kQtSymlink : kQtFile;
  q.path = vfs.unique_ino(n.dev, n.ino);
  // Directories and symlinks keep version 0: a changing version makes Linux
  // (cache=loose) instantiate a new inode, which is only right for content.
  q.version = (n.is_dir() || n.is_symlink()) ? 0 : Vfs::version_of(st);
  return q;
}

// ---- session set-up

Task<Result<void>> Session::op(Request& rq, const Tversion& m) {
  if (m.msize < SessionConfig::kMinMsize) co_return Error{-EINVAL};
  // A new version aborts everything: drop all fids.
  fids_.clear();
  msize_ = std::min(m.msize, config_.max_msize);
  std::string_view v = m.version.starts_with(kVersion9P2000L) ? kVersion9P2000L : "unknown";
  set_reply(rq, Rversion{.msize = msize_, .version = v});
  co_return Result<void>{};
}

// fsd does no 9p authentication. ENOENT is how diod says "not required",
// and what its client library (and Linux, which never sends Tauth) accept.
Task<Result<void>> Session::op(Request&, const Tauth&) { co_return Error{-ENOENT}; }

Task<Result<void>> Session::op(Request& rq, const Tattach& m) {
  if (auto r = check_new_fid(m.fid); !r) co_return Error{r.error()};
  Vfs* vfs = exports_.find(m.aname);
  if (vfs == nullptr) co_return Error{-ENOENT};
  auto st = co_await vfs->getattr(ring_, *vfs->root());
  if (!st) co_return Error{st.error()};
  auto f = std::make_shared<Fid>();
  f->vfs = vfs;
  f->node = vfs->root();
  // An untrusted peer acts as itself, whatever it names. A trusted one's
  // uid is the client's: the export may map it, or forbid it.
  f->who = peer_.who;
  if (peer_.trusted && m.n_uname != kNoFid) {
    auto user = vfs->user(m.n_uname);
    if (!user) co_return Error{user.error()};
    if (*user) f->who = std::move(*user);
  }
  if (f->who && !f->who->mapped()) co_return Error{-EPERM};  // a peer fsd's user namespace does not map
  fids_[m.fid] = f;
  set_reply(rq, Rattach{.qid = qid_of(*vfs, *f->node, *st)});
  co_return Result<void>{};
}

Task<Result<void>> Session::op(Request& rq, const Tflush& m) {
  auto it = in_flight_.find(m.oldtag);
  if (it != in_flight_.end() && it->second != &rq) co_await it->second->done.wait();
  set_reply(rq, Rflush{});
  co_return Result<void>{};
}

// ---- walking and attributes

Task<Result<void>> Session::op(Request& rq, const Twalk& m) {
  auto f = fid(m.fid);
  if (!f) co_return Error{f.error()};
  if (auto r = check_new_fid(m.newfid, m.fid); !r) co_return Error{r.error()};
  FidPtr from = *f;
  if (from->xattr != Fid::Xattr::kNone) co_return Error{-EINVAL};
  Rwalk out{};
  NodeRef cur = from->node, parent = from->parent;
  std::string_view last = from->name;
  for (uint16_t i = 0; i < m.wnames.count; i++) {
    auto e = co_await from->vfs->lookup(ring_, cur, m.wnames[i]);
    if (!e) {
      if (i == 0) co_return Error{e.error()};
      break;  // partial walk: the qids so far, newfid untouched
    }
    out.wqids.qids[i] = qid_of(*from->vfs, *e->node, e->st);
    out.wqids.count = static_cast<uint16_t>(i + 1);
    parent = std::exchange(cur, std::move(e->node));
    last = m.wnames[i];
  }
  if (out.wqids.count == m.wnames.count) {
    auto nf = std::make_shared<Fid>();
    nf->vfs = from->vfs;
    nf->node = std::move(cur);
    nf->who = from->who;
    if (parent && last != "." && last != "..") {
      nf->parent = std::move(parent);
      nf->name = std::string(last);
    }
    fids_[m.newfid] = std::move(nf);
  }
  set_reply(rq, out);
  co_return Result<void>{};
}

Task<Result<void>> Session::op(Request& rq, const Tgetattr& m) {
  FSD_FID_OR_RETURN(fp, m.fid);
  auto st = co_await fp->vfs->getattr(ring_, *fp->node);
  if (!st) co_return Error{st.error()};
  Rgetattr r{};
  r.valid = kGetattrBasic | ((st->stx_mask & STATX_BTIME) ? kGetattrBtime : 0);
  r.qid = qid_of(*fp->vfs, *fp->node, *st);
  r.mode = st->stx_mode;
  r.uid = st->stx_uid;
  r.gid = st->stx_gid;
  r.nlink = st->stx_nlink;
  r.rdev = Vfs::rdev_of(*st);
  r.size = st->stx_size;
  r.blksize = st->stx_blksize;
  r.blocks = st->stx_blocks;
  r.atime_sec = static_cast<uint64_t>(st->stx_atime.tv_sec);
  r.atime_nsec = st->stx_atime.tv_nsec;
  r.mtime_sec = static_cast<uint64_t>(st->stx_mtime.tv_sec);
  r.mtime_nsec = st->stx_mtime.tv_nsec;
  r.ctime_sec = static_cast<uint64_t>(st->stx_ctime.tv_sec);
  r.ctime_nsec = st->stx_ctime.tv_nsec;
  r.btime_sec = static_cast<uint64_t>(st->stx_btime.tv_sec);
  r.btime_nsec = st->stx_btime.tv_nsec;
  set_reply(rq, r);
  co_return Result<void>{};
}

static_assert(kSetattrMode == SetAttr::kMode && kSetattrUid == SetAttr::kUid && kSetattrGid == SetAttr::kGid &&
              kSetattrSize == SetAttr::kSize && kSetattrAtime == SetAttr::kAtime && kSetattrMtime == SetAttr::kMtime &&
              kSetattrCtime == SetAttr::kCtime);

Task<Result<void>> Session::op(Request& rq, const Tsetattr& m) {
  FSD_FID_OR_RETURN(fp, m.fid);
  // 9P sets a time to "now" unless its *_SET bit gives the value.
  uint32_t valid = m.valid & (SetAttr::kWireBits | SetAttr::kCtime);
  if ((m.valid & kSetattrAtime) && !(m.valid & kSetattrAtimeSet)) valid |= SetAttr::kAtimeNow;
  if ((m.valid & kSetattrMtime) && !(m.valid & kSetattrMtimeSet)) valid |= SetAttr::kMtimeNow;
  SetAttr a{.valid = valid, .mode = m.mode, .uid = m.uid, .gid = m.gid, .size = m.size,
            .atime = {static_cast<time_t>(m.atime_sec), static_cast<long>(m.atime_nsec)},
            .mtime = {static_cast<time_t>(m.mtime_sec), static_cast<long>(m.mtime_nsec)}};
  if (auto r = fp->vfs->setattr(*fp->node, a, fp->file.valid() ? &fp->file : nullptr); !r)
    co_return Error{r.error()};
  set_reply(rq, Rsetattr{});
  co_return Result<void>{};
}

// ---- opening, reading, writing

Task<Result<void>> Session::op(Request& rq, const Tlopen& m) {
  FSD_FID_OR_RETURN(fp, m.fid);
  if (fp->file.valid() || fp->xattr != Fid::Xattr::kNone) co_return Error{-EBADF};
  auto st = co_await fp->vfs->getattr(ring_, *fp->node);
  if (!st) co_return Error{st.error()};
  auto file = co_await fp->vfs->open(ring_, *fp->node, static_cast<int>(m.flags));
  if (!file) co_return Error{file.error()};
  fp->file = std::move(*file);
  set_reply(rq, Rlopen{.qid = qid_of(*fp->vfs, *fp->node, *st), .iounit = 0});
  co_return Result<void>{};
}

Task<Result<void>> Session::op(Request& rq, const Tlcreate& m) {
  FSD_FID_OR_RETURN(fp, m.fid);
  if (fp->file.valid() || fp->xattr != Fid::Xattr::kNone) co_return Error{-EBADF};
  if (auto r = act_as_creator(*fp, m.gid); !r) co_return Error{r.error()};
  auto c = co_await fp->vfs->create(ring_, fp->node, m.name, static_cast<int>(m.flags), m.mode);
  if (!c) co_return Error{c.error()};
  fp->parent = std::exchange(fp->node, c->entry.node);
  fp->name = std::string(m.name);
  fp->file = std::move(c->file);
  set_reply(rq, Rlcreate{.qid = qid_of(*fp->vfs, *fp->node, c->entry.st), .iounit = 0});
  co_return Result<void>{};
}

Task<Result<void>> Session::op(Request& rq, const Tread& m) {
  FSD_FID_OR_RETURN(fp, m.fid);
  uint32_t count = std::min<uint32_t>(m.count, msize_ - kIoHeaderSize);
  if (fp->xattr == Fid::Xattr::kNone && count >= kReadInPlace) {
    if (auto space = sink_.space(kRreadHeaderSize + count)) {
      // The file's data goes straight to where the transport sends it from.
      auto n = co_await fp->vfs->read(ring_, fp->file, space->iov(kRreadHeaderSize), m.offset);
      if (!n) co_return Error{n.error()};  // the space goes back unused
      std::array<std::byte, kRreadHeaderSize> header;
      put_rread_header(header, rq.tag, static_cast<uint32_t>(*n));
      scatter(header, space->iov());
      space->send(kRreadHeaderSize + *n);
      rq.sent = true;
      co_return Result<void>{};
    }
  }
  rq.reply = sink_.buffer(kRreadHeaderSize + count);
  std::byte* data = rq.reply.data() + kRreadHeaderSize;
  if (fp->xattr == Fid::Xattr::kRead) {
    uint64_t size = fp->xattr_data.size();
    uint32_t n = m.offset >= size ? 0 : static_cast<uint32_t>(std::min<uint64_t>(count, size - m.offset));
    if (n) std::memcpy(data, fp->xattr_data.data() + m.offset, n);
    count = n;
  } else {
    iovec to{data, count};
    auto n = co_await fp->vfs->read(ring_, fp->file, {&to, 1}, m.offset);
    if (!n) co_return Error{n.error()};
    count = static_cast<uint32_t>(*n);
  }
  put_rread_header(rq.reply.room(), rq.tag, count);
  rq.reply.set_size(kRreadHeaderSize + count);
  co_return Result<void>{};
}

Task<Result<void>> Session::op(Request& rq, const Twrite& m) {
  FSD_FID_OR_RETURN(fp, m.fid);
  auto data = m.data.bytes;
  if (fp->xattr == Fid::Xattr::kWrite) {
    if (m.offset != fp->xattr_data.size() || m.offset + data.size() > fp->xattr_size) co_return Error{-EINVAL};
    fp->xattr_data.insert(fp->xattr_data.end(), data.begin(), data.end());
    set_reply(rq, Rwrite{.count = static_cast<uint32_t>(data.size())});
    co_return Result<void>{};
  }
  iovec from{const_cast<std::byte*>(data.data()), data.size()};
  auto n = co_await fp->vfs->write(ring_, fp->file, {&from, 1}, m.offset);
  if (!n) co_return Error{n.error()};
  set_reply(rq, Rwrite{.count = static_cast<uint32_t>(*n)});
  co_return Result<void>{};
}

Task<Result<void>> Session::op(Request& rq, const Treaddir& m) {
  FSD_FID_OR_RETURN(fp, m.fid);
  if (!fp->file.valid() || !fp->node->is_dir()) co_return Error{-EBADF};
  uint32_t count = std::min<uint32_t>(m.count, msize_ - kIoHeaderSize);
  rq.reply = sink_.buffer(kRreadHeaderSize + count);
  DirentWriter w(rq.reply.room().subspan(kRreadHeaderSize, count));
  // Host records are no smaller than the 9P entries they become minus 8
  // bytes each, so reading about `count` bytes of them fills the reply.
  auto r = co_await fp->vfs->read_dir(ring_, fp->file, m.offset, count, [&](const DirEntry& d) {
    Dirent e;
    e.qid.type = d.type == DT_DIR ? kQtDir : d.type == DT_LNK ? kQtSymlink : kQtFile;
    e.qid.path = d.ino;
    e.offset = d.next;
    e.type = d.type;
    e.name = d.name;
    return w.add(e);
  });
  if (!r) co_return Error{r.error()};
  put_rread_header(rq.reply.room(), rq.tag, static_cast<uint32_t>(w.size()));
  rq.reply.data()[4] = static_cast<std::byte>(Type::Rreaddir);
  rq.reply.set_size(kRreadHeaderSize + w.size());
  co_return Result<void>{};
}

Task<Result<void>> Session::op(Request& rq, const Tclunk& m) {
  FSD_FID_OR_RETURN(fp, m.fid);
  fids_.erase(m.fid);
  if (fp->xattr == Fid::Xattr::kWrite) {
    Result<void> r;
    if (fp->xattr_size == 0 && fp->xattr_data.empty() && fp->xattr_flags == XATTR_REPLACE) {
      r = fp->vfs->removexattr(*fp->node, fp->xattr_name);
    } else if (fp->xattr_data.size() != fp->xattr_size) {
      r = Error{-EINVAL};
    } else {
      r = fp->vfs->setxattr(*fp->node, fp->xattr_name, fp->xattr_data, fp->xattr_flags);
    }
    if (!r) co_return Error{r.error()};
  }
  set_reply(rq, Rclunk{});
  co_return Result<void>{};
}

Task<Result<void>> Session::op(Request& rq, const Tremove& m) {
  FSD_FID_OR_RETURN(fp, m.fid);
  fids_.erase(m.fid);  // clunked even if the removal fails
  co_return reply_empty<Rremove>(rq, co_await fp->vfs->remove(ring_, *fp->node, fp->parent, fp->name));
}

// ---- namespace changes

Task<Result<void>> Session::op(Request& rq, const Tmkdir& m) {
  FSD_FID_OR_RETURN(fp, m.dfid);
  if (auto r = act_as_creator(*fp, m.gid); !r) co_return Error{r.error()};
  co_return reply_qid<Rmkdir>(rq, *fp, co_await fp->vfs->mkdir(ring_, fp->node, m.name, m.mode));
}

Task<Result<void>> Session::op(Request& rq, const Tsymlink& m) {
  FSD_FID_OR_RETURN(fp, m.dfid);
  if (auto r = act_as_creator(*fp, m.gid); !r) co_return Error{r.error()};
  co_return reply_qid<Rsymlink>(rq, *fp,
                                co_await fp->vfs->symlink(ring_, fp->node, m.name, m.symtgt));
}

Task<Result<void>> Session::op(Request& rq, const Tmknod& m) {
  FSD_FID_OR_RETURN(fp, m.dfid);
  dev_t rdev = Vfs::device_number(m.major, m.minor);
  if (auto r = act_as_creator(*fp, m.gid); !r) co_return Error{r.error()};
  co_return reply_qid<Rmknod>(rq, *fp, co_await fp->vfs->mknod(ring_, fp->node, m.name, m.mode, rdev));
}

Task<Result<void>> Session::op(Request& rq, const Trename& m) {
  FSD_FIDS_OR_RETURN(fp, dp, m.fid, m.dfid);
  auto r = co_await fp->vfs->rename_node(ring_, *fp->node, fp->parent, fp->name, dp->node, m.name);
  if (r && fp->parent) {  // the fid now names the node by its new name
    fp->parent = dp->node;
    fp->name = std::string(m.name);
  }
  co_return reply_empty<Rrename>(rq, std::move(r));
}

Task<Result<void>> Session::op(Request& rq, const Trenameat& m) {
  FSD_FIDS_OR_RETURN(from, to, m.olddirfid, m.newdirfid);
  co_return reply_empty<Rrenameat>(rq, co_await from->vfs->rename(ring_, from->node, m.oldname, to->node, m.newname, 0));
}

Task<Result<void>> Session::op(Request& rq, const Tunlinkat& m) {
  FSD_FID_OR_RETURN(fp, m.dirfid);
  int flags = (m.flags & kAtRemoveDir) ? AT_REMOVEDIR : 0;
  co_return reply_empty<Runlinkat>(rq, co_await fp->vfs->unlink(ring_, fp->node, m.name, flags));
}

Task<Result<void>> Session::op(Request& rq, const Tlink& m) {
  FSD_FIDS_OR_RETURN(dp, fp, m.dfid, m.fid);
  co_return reply_empty<Rlink>(rq, co_await fp->vfs->link(ring_, *fp->node, dp->node, m.name));
}

Task<Result<void>> Session::op(Request& rq, const Treadlink& m) {
  auto f = fid(m.fid);
  if (!f) co_return Error{f.error()};
  auto target = (*f)->vfs->readlink(*(*f)->node);
  if (!target) co_return Error{target.error()};
  set_reply(rq, Rreadlink{.target = *target});
  co_return Result<void>{};
}

Task<Result<void>> Session::op(Request& rq, const Tstatfs& m) {
  auto f = fid(m.fid);
  if (!f) co_return Error{f.error()};
  auto s = (*f)->vfs->statfs(*(*f)->node);
  if (!s) co_return Error{s.error()};
  uint64_t fsid;
  std::memcpy(&fsid, &s->f_fsid, sizeof fsid);
  set_reply(rq, Rstatfs{.type = static_cast<uint32_t>(s->f_type),
                        .bsize = static_cast<uint32_t>(s->f_bsize),
                        .blocks = s->f_blocks, .bfree = s->f_bfree, .bavail = s->f_bavail,
                        .files = s->f_files, .ffree = s->f_ffree, .fsid = fsid,
                        .namelen = static_cast<uint32_t>(s->f_namelen)});
  co_return Result<void>{};
}

Task<Result<void>> Session::op(Request& rq, const Tfsync& m) {
  FSD_FID_OR_RETURN(fp, m.fid);
  co_return reply_empty<Rfsync>(rq, co_await fp->vfs->fsync(ring_, fp->file, m.datasync != 0));
}

// ---- xattrs

Task<Result<void>> Session::op(Request& rq, const Txattrwalk& m) {
  auto f = fid(m.fid);
  if (!f) co_return Error{f.error()};
  if (auto r = check_new_fid(m.newfid, m.fid); !r) co_return Error{r.error()};
  FidPtr fp = *f;
  std::string name(m.name);
  auto fetch = [&](std::span<std::byte> out) {
    return name.empty() ? fp->vfs->listxattr(*fp->node, out) : fp->vfs->getxattr(*fp->node, name, out);
  };
  auto nf = std::make_shared<Fid>();
  for (int attempt = 0;; attempt++) {  // the value may grow between the two calls
    auto size = fetch({});
    if (!size) co_return Error{size.error()};
    if (*size > nf->charge.bytes)
      if (auto c = charge_xattr(*nf, *size - nf->charge.bytes); !c) co_return Error{c.error()};
    nf->xattr_data.resize(*size);
    auto got = fetch(nf->xattr_data);
    if (got) {
      nf->xattr_data.resize(*got);
      break;
    }
    if (got.error() != -ERANGE || attempt == 3) co_return Error{got.error()};
  }
  nf->vfs = fp->vfs;
  nf->node = fp->node;
  nf->who = fp->who;
  nf->xattr = Fid::Xattr::kRead;
  uint64_t size = nf->xattr_data.size();
  fids_[m.newfid] = std::move(nf);
  set_reply(rq, Rxattrwalk{.size = size});
  co_return Result<void>{};
}

Task<Result<void>> Session::op(Request& rq, const Txattrcreate& m) {
  FSD_FID_OR_RETURN(fp, m.fid);
  if (fp->vfs->read_only()) co_return Error{-EROFS};
  if (fp->file.valid() || fp->xattr != Fid::Xattr::kNone) co_return Error{-EBADF};
  if (m.attr_size > XATTR_SIZE_MAX) co_return Error{-E2BIG};
  if (m.name.empty() || m.name.size() > XATTR_NAME_MAX) co_return Error{-EINVAL};
  if (m.flags & ~static_cast<uint32_t>(XATTR_CREATE | XATTR_REPLACE)) co_return Error{-EINVAL};
  if (auto c = charge_xattr(*fp, m.attr_size); !c) co_return Error{c.error()};
  fp->xattr = Fid::Xattr::kWrite;
  fp->xattr_name = std::string(m.name);
  fp->xattr_size = m.attr_size;
  fp->xattr_flags = static_cast<int>(m.flags);
  fp->xattr_data.reserve(m.attr_size);
  set_reply(rq, Rxattrcreate{});
  co_return Result<void>{};
}

// ---- locks (the backend's open file locks: one owner per opened fid)

namespace {
Result<FileLock> to_lock(uint8_t type, uint64_t start, uint64_t length) {
  if (type > kLockTypeUnlck) return Error{-EINVAL};
  FileLock l;
  l.type = type == kLockTypeRdlck ? FileLock::Type::kRead
           : type == kLockTypeWrlck ? FileLock::Type::kWrite
                                    : FileLock::Type::kUnlock;
  l.start = start;
  l.length = length;
  return l;
}
}  // namespace

Task<Result<void>> Session::op(Request& rq, const Tlock& m) {
  FSD_FID_OR_RETURN(fp, m.fid);
  if (!fp->file.valid()) co_return Error{-EBADF};
  auto want = to_lock(m.type, m.start, m.length);
  if (!want) co_return Error{want.error()};
  // The backend never waits: the Linux client retries while we answer BLOCKED.
  auto r = fp->vfs->set_lock(fp->file, *want, locks_);
  uint8_t status = r ? kLockSuccess : r.error() == -EAGAIN ? kLockBlocked : kLockError;
  set_reply(rq, Rlock{.status = status});
  co_return Result<void>{};
}

Task<Result<void>> Session::op(Request& rq, const Tgetlock& m) {
  FSD_FID_OR_RETURN(fp, m.fid);
  auto want = to_lock(m.type, m.start, m.length);
  if (!want) co_return Error{want.error()};
  auto held = fp->vfs->get_lock(fp->file, *want);  // EBADF unless the fid is open
  if (!held) co_return Error{held.error()};
  Rgetlock r{};
  r.type = held->type == FileLock::Type::kRead    ? kLockTypeRdlck
           : held->type == FileLock::Type::kWrite ? kLockTypeWrlck
                                                  : kLockTypeUnlck;
  r.start = held->start;
  r.length = held->length;
  r.proc_id = held->type == FileLock::Type::kUnlock ? m.proc_id : static_cast<uint32_t>(held->pid);
  r.client_id = m.client_id;
  set_reply(rq, r);
  co_return Result<void>{};
}

}  // namespace fsd::p9
