#include "fsd/client/vhost_frontend.h"

#include "fsd/client/connect.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

namespace fsd::frontend {
namespace vu = vhost_user;

Result<std::unique_ptr<VhostFrontend>> VhostFrontend::connect(const std::string& path, Options o) {
  auto connected = connect_unix(path);
  if (!connected) return Error{connected.error()};
  Fd sock = std::move(*connected);
  Fd memfd(::memfd_create("fsd-frontend-guest", MFD_CLOEXEC));
  if (!memfd) return errno_error();
  if (::ftruncate(memfd.get(), static_cast<off_t>(o.memfd_size ? o.memfd_size : o.memory)) < 0) return errno_error();
  void* p = ::mmap(nullptr, o.memory, PROT_READ | PROT_WRITE, MAP_SHARED | (o.populate ? MAP_POPULATE : 0), memfd.get(), 0);
  if (p == MAP_FAILED) return errno_error();
  auto f = std::unique_ptr<VhostFrontend>(new VhostFrontend(std::move(sock), std::move(memfd), static_cast<std::byte*>(p), o));
  f->next_desc_.assign(o.queues, 0);
  f->avail_idx_.assign(o.queues, 0);
  f->last_used_.assign(o.queues, 0);
  f->kicked_idx_.assign(o.queues, 0);
  f->busy_.assign(o.queues, std::vector<uint8_t>(o.queue_size, 0));
  f->chain_len_.assign(o.queues, std::vector<uint16_t>(o.queue_size, 0));
  return f;
}

VhostFrontend::~VhostFrontend() { ::munmap(mem_, o_.memory); }

Result<vu::Message> VhostFrontend::send(vu::Request r, const vu::Payload& p, std::vector<int> fds, bool need_reply,
                                        bool expect_reply) {
  if (!sock_) return Error{-ENOTCONN};
  std::byte buf[512];
  auto n = vu::encode_request(buf, r, p, need_reply);
  if (!n) return Error{n.error()};
  iovec iov{buf, *n};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * vu::kMaxFds)];
  if (!fds.empty()) {
    mh.msg_control = control;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  if (::sendmsg(sock_.get(), &mh, MSG_NOSIGNAL) != static_cast<ssize_t>(*n)) return errno_error();
  if (!need_reply && !expect_reply) return vu::Message{r, 0, vu::None{}};
  std::byte in[vu::kHeaderSize + 512];
  ssize_t got = ::recv(sock_.get(), in, vu::kHeaderSize, MSG_WAITALL);
  if (got != static_cast<ssize_t>(vu::kHeaderSize)) return Error{-ECONNRESET};
  auto h = vu::decode_header({in, vu::kHeaderSize});
  if (!h || h->size > 512) return Error{-EBADMSG};
  if (h->size && ::recv(sock_.get(), in + vu::kHeaderSize, h->size, MSG_WAITALL) != static_cast<ssize_t>(h->size))
    return Error{-ECONNRESET};
  if (h->request != static_cast<uint32_t>(r) || !(h->flags & vu::kFlagReply)) return Error{-EPROTO};
  // Replies reuse the request's payload shapes, except that acks are u64.
  vu::Message m{r, h->flags, vu::None{}};
  if (r == vu::Request::GetConfig) {
    auto c = vu::decode(std::span<const std::byte>(in, vu::kHeaderSize + h->size), 0);
    if (!c) return Error{c.error()};
    m.payload = c->payload;
  } else if (h->size == 8) {
    uint64_t v;
    std::memcpy(&v, in + vu::kHeaderSize, 8);
    if (r == vu::Request::GetVringBase) {
      vu::VringState s;
      std::memcpy(&s, &v, 8);
      m.payload = s;
    } else {
      m.payload = v;
    }
  }
  return m;
}

Result<void> VhostFrontend::negotiate() {
  using R = vu::Request;
  auto f = send(R::GetFeatures, vu::None{}, {}, false, true);
  if (!f) return Error{f.error()};
  features_ = std::get<uint64_t>(f->payload) & o_.features;
  if (features_ & vu::kFProtocolFeatures) {
    auto pf = send(R::GetProtocolFeatures, vu::None{}, {}, false, true);
    if (!pf) return Error{pf.error()};
    protocol_features_ = std::get<uint64_t>(pf->payload) & (vu::kPfMq | vu::kPfReplyAck);
    if (auto r = send(R::SetProtocolFeatures, uint64_t{protocol_features_}); !r) return Error{r.error()};
  }
  bool ack = protocol_features_ & vu::kPfReplyAck;
  auto checked = [&](R r, const vu::Payload& p, std::vector<int> fds = {}) -> Result<void> {
    auto m = send(r, p, std::move(fds), ack, false);
    if (!m) return Error{m.error()};
    if (ack && std::get<uint64_t>(m->payload) != 0) return Error{-EPROTO};
    return {};
  };
  if (auto r = send(R::SetOwner, vu::None{}); !r) return Error{r.error()};
  if (auto r = checked(R::SetFeatures, uint64_t{features_}); !r) return r;
  if (auto r = set_mem_table(); !r) return r;
  for (unsigned q = 0; q < o_.queues; q++) {
    kick_.emplace_back(::eventfd(0, EFD_CLOEXEC));
    call_.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    uint64_t uva = reinterpret_cast<uint64_t>(mem_);
    if (auto r = checked(R::SetVringNum, vu::VringState{q, o_.queue_size}); !r) return r;
    if (auto r = checked(R::SetVringAddr, vu::VringAddr{q, 0, uva + ring_offset(q), uva + used_offset(q), uva + avail_offset(q), 0}); !r)
      return r;
    if (auto r = checked(R::SetVringBase, vu::VringState{q, 0}); !r) return r;
    if (auto r = checked(R::SetVringKick, vu::VringFile{q, true}, {kick_[q].get()}); !r) return r;
    if (auto r = checked(R::SetVringCall, vu::VringFile{q, true}, {call_[q].get()}); !r) return r;
    if (features_ & vu::kFProtocolFeatures)
      if (auto r = checked(R::SetVringEnable, vu::VringState{q, 1}); !r) return r;
  }
  return {};
}

Result<void> VhostFrontend::set_mem_table() {
  bool ack = protocol_features_ & vu::kPfReplyAck;
  vu::MemTable t{};
  t.nregions = 1;
  t.regions[0] = vu::MemRegion{o_.gpa_base, o_.memory, reinterpret_cast<uint64_t>(mem_), 0};
  auto m = send(vu::Request::SetMemTable, t, {memfd_.get()}, ack, false);
  if (!m) return Error{m.error()};
  if (ack && std::get<uint64_t>(m->payload) != 0) return Error{-EPROTO};
  return {};
}

uint64_t VhostFrontend::alloc(size_t n) {
  n = (n + 63) & ~size_t{63};
  if (data_next_ + n > o_.memory) data_next_ = kDataStart;
  uint64_t g = o_.gpa_base + data_next_;
  data_next_ += n;
  return g;
}

// Chains take consecutive descriptors from the first free run at or after
// the last one, as the back-end may return them in any order; when no run is
// free (a hostile test's chains that never come back), the next ones anyway.
uint16_t VhostFrontend::add_chain(unsigned q, std::span<const Buf> bufs) {
  uint16_t num = o_.queue_size;
  auto& busy = busy_[q];
  auto free_run = [&](uint16_t start) {
    for (size_t i = 0; i < bufs.size(); i++)
      if (busy[(start + i) % num]) return false;
    return true;
  };
  uint16_t head = next_desc_[q];
  for (unsigned tries = 0; tries < num && !free_run(head); tries++) head = static_cast<uint16_t>((head + 1) % num);
  if (!free_run(head)) head = next_desc_[q];
  for (size_t i = 0; i < bufs.size(); i++) {
    uint16_t idx = static_cast<uint16_t>((head + i) % num);
    bool last = i + 1 == bufs.size();
    desc(q)[idx] = virtio::Desc{bufs[i].gpa, bufs[i].len,
                                static_cast<uint16_t>((bufs[i].writable ? virtio::kDescWrite : 0) | (last ? 0 : virtio::kDescNext)),
                                static_cast<uint16_t>((idx + 1) % num)};
    busy[idx] = 1;
  }
  chain_len_[q][head] = static_cast<uint16_t>(bufs.size());
  next_desc_[q] = static_cast<uint16_t>((head + bufs.size()) % num);
  return head;
}

uint16_t VhostFrontend::add_indirect(unsigned q, std::span<const Buf> bufs) {
  uint64_t table_gpa = alloc(bufs.size() * sizeof(virtio::Desc));
  auto* table = reinterpret_cast<virtio::Desc*>(host(table_gpa));
  for (size_t i = 0; i < bufs.size(); i++) {
    bool last = i + 1 == bufs.size();
    table[i] = virtio::Desc{bufs[i].gpa, bufs[i].len,
                            static_cast<uint16_t>((bufs[i].writable ? virtio::kDescWrite : 0) | (last ? 0 : virtio::kDescNext)),
                            static_cast<uint16_t>(i + 1)};
  }
  Buf one{table_gpa, static_cast<uint32_t>(bufs.size() * sizeof(virtio::Desc)), false};
  uint16_t head = add_chain(q, std::span(&one, 1));
  desc(q)[head].flags = virtio::kDescIndirect;
  return head;
}

void VhostFrontend::publish(unsigned q, uint16_t head) {
  std::byte* avail = mem_ + avail_offset(q);
  uint16_t idx = avail_idx_[q];
  std::memcpy(avail + 4 + 2 * (idx % o_.queue_size), &head, 2);
  avail_idx_[q] = ++idx;
  __atomic_store_n(reinterpret_cast<uint16_t*>(avail + 2), idx, __ATOMIC_RELEASE);
}

void VhostFrontend::set_avail_idx(unsigned q, uint16_t idx) {
  avail_idx_[q] = idx;
  __atomic_store_n(reinterpret_cast<uint16_t*>(mem_ + avail_offset(q) + 2), idx, __ATOMIC_RELEASE);
}

void VhostFrontend::kick(unsigned q) {
  uint64_t one = 1;
  (void)!::write(kick_[q].get(), &one, sizeof one);
}

void VhostFrontend::kick_if_needed(unsigned q) {
  uint16_t old_idx = kicked_idx_[q], new_idx = avail_idx_[q];
  kicked_idx_[q] = new_idx;
  if (!(features_ & vhost_user::kFRingEventIdx)) return kick(q);
  // The back-end's avail_event sits after the used ring; read it after the
  // avail index is published.
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  uint16_t event = __atomic_load_n(reinterpret_cast<uint16_t*>(mem_ + used_offset(q) + 4 + 8 * o_.queue_size), __ATOMIC_ACQUIRE);
  if (static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx)) kick(q);
}

std::optional<VhostFrontend::Used> VhostFrontend::take_used(unsigned q) {
  std::byte* used = mem_ + used_offset(q);
  for (bool armed = false;; armed = true) {
    uint16_t idx = __atomic_load_n(reinterpret_cast<uint16_t*>(used + 2), __ATOMIC_ACQUIRE);
    if (idx != last_used_[q]) {
      Used u;
      std::memcpy(&u, used + 4 + 8 * (last_used_[q] % o_.queue_size), sizeof u);
      last_used_[q]++;
      if (u.id < o_.queue_size) {  // its descriptors are free again
        uint16_t n = std::exchange(chain_len_[q][u.id], 0);
        for (uint16_t i = 0; i < n; i++) busy_[q][(u.id + i) % o_.queue_size] = 0;
      }
      return u;
    }
    if (armed) return std::nullopt;
    // As a driver does with EVENT_IDX: ask to be interrupted for the next
    // used entry (used_event = the index we wait for), then look again.
    __atomic_store_n(reinterpret_cast<uint16_t*>(mem_ + avail_offset(q) + 4 + 2 * o_.queue_size), last_used_[q],
                     __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
  }
}

Result<VhostFrontend::Used> VhostFrontend::wait_used(unsigned q, int timeout_ms) {
  auto u = wait_used_any(std::span(&q, 1), timeout_ms);
  if (!u) return Error{u.error()};
  return u->used;
}

Result<VhostFrontend::Used> VhostFrontend::poll_used(unsigned q, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    if (auto u = take_used(q)) return *u;
    if (std::chrono::steady_clock::now() > deadline) return Error{-ETIMEDOUT};
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

Result<VhostFrontend::UsedOn> VhostFrontend::wait_used_any(std::span<const unsigned> queues, int timeout_ms) {
  std::array<pollfd, 64> p{};
  if (queues.empty() || queues.size() > p.size()) return Error{-EINVAL};
  for (;;) {
    for (unsigned q : queues)
      if (auto u = take_used(q)) return UsedOn{q, *u};
    for (size_t i = 0; i < queues.size(); i++) p[i] = {call_[queues[i]].get(), POLLIN, 0};
    int r = ::poll(p.data(), queues.size(), timeout_ms);
    if (r == 0) return Error{-ETIMEDOUT};
    if (r < 0 && errno != EINTR) return errno_error();
    for (size_t i = 0; i < queues.size(); i++) {
      uint64_t v;
      if (p[i].revents & POLLIN) (void)!::read(p[i].fd, &v, sizeof v);
    }
  }
}

VhostFrontend::Pending VhostFrontend::submit_fuse(unsigned q, uint32_t opcode, uint64_t nodeid,
                                                  std::span<const std::byte> args, size_t reply_size,
                                                  std::span<const std::byte> payload, size_t reply_pages, bool indirect) {
  fuse_in_header h{};
  h.len = static_cast<uint32_t>(sizeof h + args.size() + payload.size());
  h.opcode = opcode;
  h.unique = unique();
  h.nodeid = nodeid;
  h.total_extlen = std::exchange(extlen_, 0);
  uint64_t in_gpa = alloc(sizeof h + args.size());
  std::memcpy(host(in_gpa), &h, sizeof h);
  if (!args.empty()) std::memcpy(host(in_gpa) + sizeof h, args.data(), args.size());
  auto& bufs = chain_;  // reused: no allocation per request
  bufs.clear();
  bufs.push_back({in_gpa, static_cast<uint32_t>(sizeof h + args.size()), false});
  if (!payload.empty()) {
    // On a page of its own, as a guest's page cache pages are.
    uint64_t p = (alloc(payload.size() + 4095) + 4095) & ~uint64_t{4095};
    std::memcpy(host(p), payload.data(), payload.size());
    bufs.push_back({p, static_cast<uint32_t>(payload.size()), false});
  }
  uint64_t out_gpa = 0;
  size_t off = 0;
  if (!reply_pages || reply_size <= sizeof(fuse_out_header)) {
    out_gpa = alloc(reply_size);
  } else {
    // As Linux's driver lays out a reply: the header in a descriptor of its
    // own, the data in pages (a copy into memory not aligned as the page
    // cache is runs at a third of the speed, which would skew benchmarks).
    uint64_t base = alloc(reply_size + 4096);
    out_gpa = ((base + sizeof(fuse_out_header) + 4095) & ~uint64_t{4095}) - sizeof(fuse_out_header);
    bufs.push_back({out_gpa, static_cast<uint32_t>(sizeof(fuse_out_header)), true});
    off = sizeof(fuse_out_header);
  }
  if (o_.poison_replies) std::memset(host(out_gpa), 0xAA, reply_size);
  size_t piece = reply_pages ? reply_pages : reply_size;
  for (; off < reply_size; off += piece)
    bufs.push_back({out_gpa + off, static_cast<uint32_t>(std::min(piece, reply_size - off)), true});
  uint16_t head = indirect ? add_indirect(q, bufs) : add_chain(q, bufs);
  publish(q, head);
  kick_if_needed(q);
  return {head, h.unique, out_gpa, in_gpa};
}

Result<VhostFrontend::ReplyView> VhostFrontend::reply_of(const Pending& p, const Used& u) {
  if (u.id != p.head) return Error{-EPROTO};
  if (u.len == 0) return ReplyView{};  // no reply (FORGET) or a refused chain
  if (u.len < sizeof(fuse_out_header)) return Error{-EBADMSG};
  fuse_out_header oh;
  std::memcpy(&oh, host(p.out_gpa), sizeof oh);
  if (oh.len != u.len || oh.unique != p.unique) return Error{-EPROTO};
  return ReplyView{oh.error, {host(p.out_gpa) + sizeof oh, u.len - sizeof oh}};
}

Result<VhostFrontend::FuseReply> VhostFrontend::fuse(unsigned q, uint32_t opcode, uint64_t nodeid,
                                                     std::span<const std::byte> args, size_t reply_size,
                                                     std::span<const std::byte> payload, size_t reply_pages,
                                                     bool indirect) {
  Pending p = submit_fuse(q, opcode, nodeid, args, reply_size, payload, reply_pages, indirect);
  auto u = wait_used(q);
  if (!u) return Error{u.error()};
  auto v = reply_of(p, *u);
  if (!v) return Error{v.error()};
  FuseReply r;
  r.used_len = u->len;
  r.error = v->error;
  r.body.assign(v->body.begin(), v->body.end());
  return r;
}

Result<VhostFrontend::FuseReply> VhostFrontend::fuse_init() {
  fuse_init_in in{};
  in.major = FUSE_KERNEL_VERSION;
  in.minor = FUSE_KERNEL_MINOR_VERSION;
  in.max_readahead = 128 * 1024;
  in.flags = FUSE_ASYNC_READ | FUSE_DO_READDIRPLUS | FUSE_MAX_PAGES | FUSE_PARALLEL_DIROPS | FUSE_CACHE_SYMLINKS |
             FUSE_BIG_WRITES | FUSE_INIT_EXT | FUSE_WRITEBACK_CACHE;
  in.flags2 = static_cast<uint32_t>(FUSE_SECURITY_CTX >> 32);
  return fuse(1, FUSE_INIT, 0, std::as_bytes(std::span(&in, 1)), 4096);
}

Result<VhostFrontend::FuseReply> VhostFrontend::fuse_lookup(uint64_t parent, std::string_view name) {
  std::string arg(name);
  arg.push_back('\0');
  return fuse(1, FUSE_LOOKUP, parent, std::as_bytes(std::span(arg)), 4096);
}

}  // namespace fsd::frontend
