// The vhost-user back-end's control side: the front-end's messages (features,
// memory tables, vrings, config space) on the device's control thread.
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "fsd/vhost/device.h"

namespace fsd {
namespace vhost_detail {

bool Device::reply(int conn, vu::Request r, const vu::Payload& p) {
  std::byte buf[512];
  auto n = vu::encode_reply(buf, r, p);
  if (!n) return false;
  // Never waits: a front-end that leaves its replies unread until the
  // socket is full is dropped rather than holding the control thread.
  return ::send(conn, buf, *n, MSG_NOSIGNAL | MSG_DONTWAIT) == static_cast<ssize_t>(*n);
}

void Device::maybe_start(unsigned i) {
  Queue& q = *queues_[i];
  bool need_enable = features_ & vu::kFProtocolFeatures;
  if (q.started || !q.kick || !q.addr_set || q.num == 0 || (need_enable && !q.enabled)) return;
  if (!memory_) {
    spdlog::error("{} queue {}: started before the memory table", device().name, i);
    return;
  }
  uint16_t num = static_cast<uint16_t>(q.num);
  auto* desc = reinterpret_cast<virtio::Desc*>(memory_->mem.translate_uva(q.addr.desc_user_addr, 16u * num));
  auto* avail = memory_->mem.translate_uva(q.addr.avail_user_addr, virtio::SplitQueue::avail_size(num));
  auto* used = memory_->mem.translate_uva(q.addr.used_user_addr, virtio::SplitQueue::used_size(num));
  if (!desc || !avail || !used) {
    spdlog::error("{} queue {}: ring addresses are outside guest memory", device().name, i);
    return;
  }
  virtio::SplitQueue::Layout layout{desc, avail, used};
  if (!virtio::SplitQueue::aligned(layout)) {
    spdlog::error("{} queue {}: ring addresses are not aligned as virtio requires", device().name, i);
    return;
  }
  // The queue is stopped, so no worker reads these now; the post publishes them.
  q.split = virtio::SplitQueue(layout, num, features_ & vu::kFRingEventIdx, q.base);
  q.memory = memory_;
  q.server = server_;
  q.chains = chains_;
  q.quiet_descs = 0;
  q.kick_fd = q.kick.get();
  {
    std::lock_guard g(q.used_mu);
    q.call_fd = q.call;
  }
  post(owner(i), [this, i, w = &owner(i)] { return cmd_start(*w, i); });
  q.started = true;
}

void Device::stop_queue(unsigned i) {
  Queue& q = *queues_[i];
  if (!q.started) return;
  uint16_t last = 0;
  post(owner(i), [this, i, w = &owner(i), &last] { return cmd_stop(*w, i, &last); });
  q.base = last;
  q.started = false;
}

void Device::reset() {
  for (unsigned i = 0; i < queues_.size(); i++) stop_queue(i);
  for (auto& q : queues_) {  // in place: a worker may still look at a queue it just finished
    q->kick.reset();
    q->call.reset();
    q->num = 0;
    q->addr = {};
    q->addr_set = false;
    q->base = 0;
    q->enabled = false;
    q->split = {};
    q->memory.reset();
    q->server.reset();
    q->chains.reset();
  }
  memory_.reset();
  call_stalled = false;
  post(*workers_[0], [this] { return cmd_new_server(); });
  regions_.clear();
  region_fds_.clear();
  features_ = protocol_features_ = 0;
}

bool Device::handle(int conn, const vu::Message& m, std::vector<Fd>& fds) {
  using R = vu::Request;
  Outcome o;
  switch (m.request) {
    case R::GetFeatures: case R::SetFeatures: case R::GetProtocolFeatures: case R::SetProtocolFeatures:
    case R::GetConfig: case R::GetQueueNum: case R::GetMaxMemSlots: case R::SetOwner: case R::ResetOwner:
    case R::ResetDevice: case R::SetStatus: case R::GetStatus:
      o = device_request(conn, m);
      break;
    case R::SetMemTable: case R::AddMemReg: case R::RemMemReg:
      o = memory_request(m, fds);
      break;
    case R::SetVringNum: case R::SetVringAddr: case R::SetVringBase: case R::GetVringBase:
    case R::SetVringEnable:
      o = vring_state_request(conn, m);
      break;
    case R::SetVringKick: case R::SetVringCall: case R::SetVringErr:
      o = vring_file_request(m, fds);
      break;
    default:
      spdlog::warn("vhost-user: unsupported request {} ({})", static_cast<uint32_t>(m.request),
                   request_name(static_cast<uint32_t>(m.request)));
      o.ok = false;
      break;
  }
  if (o.drop) return false;
  if (!o.replied && m.need_reply() && (protocol_features_ & vu::kPfReplyAck)) {
    if (!reply(conn, m.request, uint64_t{o.ok ? 0u : 1u})) return false;
  }
  return true;
}

Device::Outcome Device::device_request(int conn, const vu::Message& m) {
  using R = vu::Request;
  Outcome o;
  switch (m.request) {
    case R::GetFeatures:
      o.replied = reply(conn, m.request, uint64_t{device_features()});
      break;
    case R::SetFeatures: {
      uint64_t f = std::get<uint64_t>(m.payload);
      o.ok = (f & ~device_features()) == 0;
      features_ = f & device_features();
      break;
    }
    case R::GetProtocolFeatures:
      o.replied = reply(conn, m.request, uint64_t{protocol_features()});
      break;
    case R::SetProtocolFeatures:
      protocol_features_ = std::get<uint64_t>(m.payload) & protocol_features();
      break;
    case R::GetConfig: {
      auto c = std::get<vu::Config>(m.payload);
      const auto& space = device().config;
      // Bytes outside the device's config space read as zero.
      for (uint32_t i = 0; i < c.size; i++)
        c.payload[i] = c.offset + i < space.size() ? space[c.offset + i] : std::byte{0};
      o.replied = reply(conn, m.request, c);
      break;
    }
    case R::GetQueueNum:
      o.replied = reply(conn, m.request, uint64_t{queues_.size()});
      break;
    case R::GetMaxMemSlots:
      o.replied = reply(conn, m.request, uint64_t{kMaxMemSlots});
      break;
    case R::ResetOwner: case R::ResetDevice:
      reset();
      break;
    case R::GetStatus:
      o.replied = reply(conn, m.request, uint64_t{0});
      break;
    default:  // SET_OWNER, SET_STATUS: nothing to do
      break;
  }
  return o;
}

// Maps the control thread's region list and hands the mapping to the worker.
bool Device::remap() {
  if (std::string why = check_regions(regions_, region_fds_); !why.empty()) {
    spdlog::error("{}: refusing the front-end's memory table: {}", device().name, why);
    return false;
  }
  std::vector<Fd> dup;
  for (auto& f : region_fds_) dup.emplace_back(::fcntl(f.get(), F_DUPFD_CLOEXEC, 0));
  auto map = map_regions(regions_, dup);
  if (!map) {
    spdlog::error("{}: cannot map guest memory: {}", device().name, std::strerror(-map.error()));
    return false;
  }
  memory_ = *map;
  return true;
}

// A running queue's rings were translated through the current mapping, and
// its requests in flight point into it: stop the running queues (draining
// them), change the mapping, and start them again on the new one. A table
// that is refused or cannot be mapped drops the front-end.
Device::Outcome Device::memory_request(const vu::Message& m,
                                                                           std::vector<Fd>& fds) {
  std::vector<unsigned> running;
  for (unsigned i = 0; i < queues_.size(); i++) {
    if (!queues_[i]->started) continue;
    stop_queue(i);
    running.push_back(i);
  }
  Outcome o = change_memory(m, fds);
  if (o.drop) return o;
  for (unsigned i : running) maybe_start(i);
  return o;
}

Device::Outcome Device::change_memory(const vu::Message& m,
                                                                          std::vector<Fd>& fds) {
  using R = vu::Request;
  Outcome o;
  if (m.request == R::SetMemTable) {
    const auto& t = std::get<vu::MemTable>(m.payload);
    regions_.assign(t.regions.begin(), t.regions.begin() + t.nregions);
    region_fds_ = std::move(fds);
    o.drop = !remap();
    o.ok = !o.drop;
  } else if (m.request == R::AddMemReg) {
    o.ok = regions_.size() < kMaxMemSlots;
    if (o.ok) {
      regions_.push_back(std::get<vu::MemRegion>(m.payload));
      region_fds_.push_back(std::move(fds[0]));
      o.drop = !remap();
      o.ok = !o.drop;
    }
  } else {  // REM_MEM_REG
    const auto& r = std::get<vu::MemRegion>(m.payload);
    o.ok = false;
    for (size_t i = 0; i < regions_.size(); i++) {
      if (regions_[i].guest_phys_addr != r.guest_phys_addr || regions_[i].memory_size != r.memory_size) continue;
      regions_.erase(regions_.begin() + static_cast<ptrdiff_t>(i));
      region_fds_.erase(region_fds_.begin() + static_cast<ptrdiff_t>(i));
      if (regions_.empty()) memory_.reset();
      o.drop = !regions_.empty() && !remap();
      o.ok = !o.drop;
      break;
    }
  }
  return o;
}

Device::Queue* Device::queue_of(const vu::Message& m, uint32_t index) {
  if (index < queues_.size()) return queues_[index].get();
  spdlog::warn("vhost-user {}: queue index {} out of range", request_name(static_cast<uint32_t>(m.request)), index);
  return nullptr;
}

Device::Outcome Device::vring_state_request(int conn, const vu::Message& m) {
  using R = vu::Request;
  Outcome o;
  if (m.request == R::SetVringAddr) {
    auto a = std::get<vu::VringAddr>(m.payload);
    Queue* q = queue_of(m, a.index);
    o.ok = q && !q->started;
    if (o.ok) {
      q->addr = a;
      q->addr_set = true;
    }
    return o;
  }
  auto s = std::get<vu::VringState>(m.payload);
  Queue* q = queue_of(m, s.index);
  if (!q) {
    o.ok = false;
    o.drop = m.request == R::GetVringBase;  // it must be answered, and cannot be
    return o;
  }
  switch (m.request) {
    case R::SetVringNum:
      o.ok = !q->started && virtio::SplitQueue::valid_size(s.num);
      if (o.ok) q->num = s.num;
      break;
    case R::SetVringBase:
      o.ok = !q->started && s.num <= UINT16_MAX;
      if (o.ok) q->base = static_cast<uint16_t>(s.num);
      break;
    case R::GetVringBase:
      stop_queue(s.index);  // GET_VRING_BASE stops the ring
      q->kick.reset();
      q->enabled = false;
      if (chains_ && std::none_of(queues_.begin(), queues_.end(), [](auto& x) { return x->started; }))
        post(*workers_[0], [this] { return cmd_device_stopped(); });
      o.replied = reply(conn, m.request, vu::VringState{s.index, q->base});
      break;
    default:  // SET_VRING_ENABLE
      q->enabled = s.num != 0;
      if (q->enabled) {
        maybe_start(s.index);
      } else {
        stop_queue(s.index);
      }
      break;
  }
  return o;
}

Device::Outcome Device::vring_file_request(const vu::Message& m, std::vector<Fd>& fds) {
  using R = vu::Request;
  Outcome o;
  auto f = std::get<vu::VringFile>(m.payload);
  const char* what = m.request == R::SetVringKick ? "kick" : m.request == R::SetVringCall ? "call" : "error";
  if (f.has_fd && !is_eventfd(fds[0].get())) {
    spdlog::error("{}: the front-end's {} fd for queue {} is not an eventfd; disconnecting", device().name, what,
                  f.index);
    o.ok = false;
    o.drop = true;
    return o;
  }
  if (m.request == R::SetVringErr) return o;  // its fd (if any) closes here; errors are logged instead
  Queue* q = queue_of(m, f.index);
  if (!q) {
    o.ok = false;
    return o;
  }
  if (m.request == R::SetVringKick) {
    if (!f.has_fd) {
      spdlog::error("vhost-user: polling mode (no kick fd) is not supported");
      o.ok = false;
      return o;
    }
    stop_queue(f.index);
    q->kick = std::move(fds[0]);
    if (!(features_ & vu::kFProtocolFeatures)) q->enabled = true;
    maybe_start(f.index);
    return o;
  }
  // SET_VRING_CALL. Signalled without waiting (see signal_call).
  std::shared_ptr<const Fd> fresh;
  if (f.has_fd) {
    int flags = ::fcntl(fds[0].get(), F_GETFL);
    if (flags < 0 || ::fcntl(fds[0].get(), F_SETFL, flags | O_NONBLOCK) < 0) {
      spdlog::error("{}: cannot make the call fd of queue {} non-blocking: {}", device().name, f.index,
                    std::strerror(errno));
      o.ok = false;
      return o;
    }
    fresh = std::make_shared<const Fd>(std::move(fds[0]));
  }
  if (q->started) {
    std::lock_guard g(q->used_mu);
    q->call_fd = fresh;
  }
  q->call = std::move(fresh);
  return o;
}

}  // namespace vhost_detail
}  // namespace fsd
