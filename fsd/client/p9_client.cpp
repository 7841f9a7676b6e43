#include "fsd/client/p9_client.h"

#include "fsd/client/connect.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace fsd::p9 {

Result<Client> Client::connect_unix(const std::string& path) {
  auto fd = fsd::connect_unix(path);
  if (!fd) return Error{fd.error()};
  return Client(std::move(*fd));
}

Result<Client> Client::connect_tcp(const std::string& host, uint16_t port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1) return Error{-EINVAL};
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return errno_error();
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) return errno_error();
  return Client(std::move(fd));
}

Result<void> Client::send_raw(Bytes frame) {
  size_t off = 0;
  while (off < frame.size()) {
    ssize_t n = ::send(fd_.get(), frame.data() + off, frame.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_error();
    }
    off += static_cast<size_t>(n);
  }
  return {};
}

Result<void> Client::read_exact(std::byte* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::recv(fd_.get(), p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno_error();
    if (r == 0) return Error{-ECONNRESET};
    p += r;
    n -= static_cast<size_t>(r);
  }
  return {};
}

Result<Bytes> Client::receive_raw() {
  if (auto r = read_exact(rx_.data(), 4); !r) return Error{r.error()};
  uint32_t size;
  std::memcpy(&size, rx_.data(), 4);
  if (size < kHeaderSize || size > (64u << 20)) return Error{-EBADMSG};
  if (rx_.size() < size) rx_.resize(size);
  if (auto r = read_exact(rx_.data() + 4, size - 4); !r) return Error{r.error()};
  return Bytes(rx_.data(), size);
}

Result<RFrame> Client::receive() {
  auto raw = receive_raw();
  if (!raw) return Error{raw.error()};
  return decode_r(*raw);
}

Result<uint32_t> Client::version(uint32_t msize, std::string_view v) {
  uint16_t saved = next_tag_;
  if (auto r = send(kNoTag, Tversion{.msize = msize, .version = v}); !r) return Error{r.error()};
  auto f = receive();
  next_tag_ = saved;
  if (!f) return Error{f.error()};
  if (auto* e = std::get_if<Rlerror>(&f->msg)) return Error{e->ecode ? -static_cast<int>(e->ecode) : -EIO};
  auto* rv = std::get_if<Rversion>(&f->msg);
  if (!rv) return Error{-EPROTO};
  if (rv->version != v) return Error{-EPROTONOSUPPORT};
  msize_ = rv->msize;
  if (tx_.size() < msize_) tx_.resize(msize_);
  if (rx_.size() < msize_) rx_.resize(msize_);
  return msize_;
}

Result<Qid> Client::attach(uint32_t fid, std::string_view aname, uint32_t uid) {
  auto r = call<Rattach>(Tattach{.fid = fid, .afid = kNoFid, .uname = "", .aname = aname, .n_uname = uid});
  if (!r) return Error{r.error()};
  return r->qid;
}

Result<Qid> Client::walk(uint32_t fid, uint32_t newfid, std::string_view path) {
  Twalk t{.fid = fid, .newfid = newfid, .wnames = {}};
  while (!path.empty()) {
    auto slash = path.find('/');
    std::string_view part = path.substr(0, slash);
    if (!part.empty()) {
      if (t.wnames.count == kMaxWalkElements) return Error{-ENAMETOOLONG};
      t.wnames.names[t.wnames.count++] = part;
    }
    path = slash == std::string_view::npos ? std::string_view{} : path.substr(slash + 1);
  }
  auto r = call<Rwalk>(t);
  if (!r) return Error{r.error()};
  if (r->wqids.count != t.wnames.count) return Error{-ENOENT};  // partial walk
  return t.wnames.count ? r->wqids.qids[t.wnames.count - 1] : Qid{};
}

Result<Rgetattr> Client::getattr(uint32_t fid, uint64_t mask) {
  return call<Rgetattr>(Tgetattr{.fid = fid, .request_mask = mask});
}

Result<Qid> Client::lopen(uint32_t fid, uint32_t flags) {
  auto r = call<Rlopen>(Tlopen{.fid = fid, .flags = flags});
  if (!r) return Error{r.error()};
  return r->qid;
}

Result<Qid> Client::lcreate(uint32_t fid, std::string_view name, uint32_t flags, uint32_t mode, uint32_t gid) {
  auto r = call<Rlcreate>(Tlcreate{.fid = fid, .name = name, .flags = flags, .mode = mode, .gid = gid});
  if (!r) return Error{r.error()};
  return r->qid;
}

Result<std::string> Client::read_all(uint32_t fid) {
  std::string out;
  for (;;) {
    auto r = call<Rread>(Tread{.fid = fid, .offset = out.size(), .count = static_cast<uint32_t>(msize_ - kIoHeaderSize)});
    if (!r) return Error{r.error()};
    if (r->data.bytes.empty()) return out;
    out.append(reinterpret_cast<const char*>(r->data.bytes.data()), r->data.bytes.size());
  }
}

Result<uint32_t> Client::write(uint32_t fid, uint64_t offset, std::string_view data) {
  auto r = call<Rwrite>(Twrite{.fid = fid, .offset = offset, .data = {std::as_bytes(std::span(data))}});
  if (!r) return Error{r.error()};
  return r->count;
}

Result<void> Client::clunk(uint32_t fid) {
  auto r = call<Rclunk>(Tclunk{.fid = fid});
  if (!r) return Error{r.error()};
  return {};
}

Result<std::vector<Client::DirEntry>> Client::readdir_all(uint32_t fid) {
  std::vector<DirEntry> out;
  uint64_t offset = 0;
  for (;;) {
    auto r = call<Rreaddir>(Treaddir{.fid = fid, .offset = offset, .count = static_cast<uint32_t>(msize_ - kIoHeaderSize)});
    if (!r) return Error{r.error()};
    if (r->data.bytes.empty()) return out;
    DirentReader dr(r->data.bytes);
    for (;;) {
      auto e = dr.next();
      if (!e) return Error{e.error()};
      if (!e->has_value()) break;
      const Dirent& d = **e;
      out.push_back({d.qid, d.offset, d.type, std::string(d.name)});
      offset = d.offset;
    }
  }
}

}  // namespace fsd::p9
