#include "fsd/uring/ring.h"

#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace fsd {

// ---- coroutine frame recycling

namespace {
constexpr std::size_t kFrameClass = 64;
constexpr std::size_t kFrameClasses = 160;  // frames up to 10 KiB are recycled
constexpr std::size_t kFramesKeptPerClass = 1024;

struct FramePool {
  std::array<std::vector<void*>, kFrameClasses> free;
  ~FramePool() {
    for (auto& v : free)
      for (void* p : v) ::operator delete(p);
  }
};
thread_local FramePool t_frames;
}  // namespace

void* frame_alloc(std::size_t size) {
  std::size_t cls = (size + kFrameClass - 1) / kFrameClass;
  if (cls < kFrameClasses) {
    auto& v = t_frames.free[cls];
    if (!v.empty()) {
      void* p = v.back();
      v.pop_back();
      return p;
    }
    return ::operator new(cls * kFrameClass);
  }
  return ::operator new(size);
}

void frame_free(void* p, std::size_t size) noexcept {
  std::size_t cls = (size + kFrameClass - 1) / kFrameClass;
  if (cls < kFrameClasses && t_frames.free[cls].size() < kFramesKeptPerClass) {
    try {
      t_frames.free[cls].push_back(p);
      return;
    } catch (...) {
    }
  }
  ::operator delete(p);
}

// ---- io_uring restrictions

namespace {
// The opcodes fsd submits, and the register calls it makes once a ring
// runs: io_uring requests do not pass through seccomp, so a ring allows
// nothing else (IORING_REGISTER_RESTRICTIONS).
constexpr uint8_t kRingOpcodes[] = {
    IORING_OP_READ,   IORING_OP_WRITE,   IORING_OP_READV,   IORING_OP_WRITEV,       IORING_OP_FSYNC,
    IORING_OP_FALLOCATE, IORING_OP_RECV, IORING_OP_SEND,    IORING_OP_ACCEPT,       IORING_OP_ASYNC_CANCEL,
    IORING_OP_TIMEOUT, IORING_OP_OPENAT2, IORING_OP_STATX,  IORING_OP_MKDIRAT,      IORING_OP_UNLINKAT,
    IORING_OP_RENAMEAT, IORING_OP_LINKAT, IORING_OP_SYMLINKAT};
constexpr uint8_t kRingRegisterOps[] = {IORING_REGISTER_PERSONALITY, IORING_UNREGISTER_PERSONALITY};

// Creates a ring that starts disabled (to be restricted, then enabled);
// false if the kernel cannot (then the ring is created without it).
bool init_disabled(unsigned entries, io_uring* ring, unsigned flags) {
  io_uring_params p{};
  p.flags = flags | IORING_SETUP_R_DISABLED;
  int r = io_uring_queue_init_params(entries, ring, &p);
  if (r == 0) return true;
  p = {};
  p.flags = flags;
  r = io_uring_queue_init_params(entries, ring, &p);
  if (r == -EINVAL) {  // older kernels lack the flags
    p = {};
    r = io_uring_queue_init_params(entries, ring, &p);
  }
  if (r < 0) throw std::runtime_error(std::string("io_uring_queue_init: ") + std::strerror(-r));
  return false;
}

// Restricts a disabled ring to `opcodes` and `register_ops`, then enables it.
void restrict_and_enable(io_uring* ring, std::span<const uint8_t> opcodes, std::span<const uint8_t> register_ops) {
  std::vector<io_uring_restriction> res;
  for (uint8_t op : opcodes) {
    io_uring_restriction r{};
    r.opcode = IORING_RESTRICTION_SQE_OP;
    r.sqe_op = op;
    res.push_back(r);
  }
  for (uint8_t op : register_ops) {
    io_uring_restriction r{};
    r.opcode = IORING_RESTRICTION_REGISTER_OP;
    r.register_op = op;
    res.push_back(r);
  }
  // Straight system calls: Debian 12's liburing declares these but does not export them.
  if (syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_RESTRICTIONS, res.data(), res.size()) < 0)
    throw std::runtime_error(std::string("io_uring restrictions: ") + std::strerror(errno));
  if (syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) < 0)
    throw std::runtime_error(std::string("io_uring enabling a ring: ") + std::strerror(errno));
}
}  // namespace

// ---- the blocking pool

namespace {
// Marks the user_data of a pool's result (Ops are 8-byte aligned).
constexpr uint64_t kOffloadedTag = 1;
static_assert(alignof(Op) >= 2);

// A few threads, started on first use and shared by every ring, for calls
// io_uring has no opcode for. Each result goes back to the ring that asked
// as a CQE with the Op as its user_data, posted by the pool thread's own
// small ring (IORING_OP_MSG_RING), so no ring is touched by two threads.
class BlockingPool {
 public:
  static constexpr unsigned kThreads = 4;

  static BlockingPool& get() {
    static BlockingPool* pool = new BlockingPool;  // never destroyed: threads may outlive main's statics
    return *pool;
  }
  void run(int ring_fd, Op* op, FunctionRef<int()> call, Credentials::Ref who) {
    {
      std::lock_guard g(mu_);
      jobs_.push_back({ring_fd, op, call, std::move(who)});
    }
    cv_.notify_one();
  }

 private:
  struct Job {
    int ring_fd;
    Op* op;
    FunctionRef<int()> call;
    Credentials::Ref who;
  };
  BlockingPool() {
    Credentials::AsSelf self;  // a thread starts as its creator acts now
    for (unsigned i = 0; i < kThreads; i++) std::thread([this] { serve(); }).detach();
  }
  void serve() {
    io_uring ring{};
    // This ring only posts results to others.
    constexpr uint8_t kPoolOpcodes[] = {IORING_OP_MSG_RING};
    if (init_disabled(4, &ring, 0)) restrict_and_enable(&ring, kPoolOpcodes, {});
    for (;;) {
      Job job;
      {
        std::unique_lock g(mu_);
        cv_.wait(g, [&] { return !jobs_.empty(); });
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      Credentials::apply(job.who.get());
      int res = job.call();
      job.who.reset();
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      io_uring_prep_msg_ring(sqe, job.ring_fd, static_cast<unsigned>(res),
                             reinterpret_cast<uint64_t>(job.op) | kOffloadedTag, 0);
      io_uring_submit_and_wait(&ring, 1);
      io_uring_cqe* cqe;
      if (io_uring_peek_cqe(&ring, &cqe) == 0) io_uring_cqe_seen(&ring, cqe);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
};
}  // namespace

// ---- Op

Op::Op(Ring* ring, const io_uring_sqe& sqe) : ring_(ring), sqe_(sqe), who_(ring->current_) {}
Op::Op(Ring* ring, FunctionRef<int()> call) : ring_(ring), who_(ring->current_), call_(call), offloaded_(true) {}

void Op::await_suspend(std::coroutine_handle<> h) noexcept {
  waiter_ = h;
  if (offloaded_) {
    ring_->offloaded_++;
    BlockingPool::get().run(ring_->ring_.ring_fd, this, call_, who_);
    return;
  }
  ring_->submit(this);
}

void Op::complete(int res) {
  if (offloaded_) ring_->offloaded_--;
  // Regular files and sockets should not report EAGAIN to a blocking-mode
  // submitter, but some drivers do; resubmit a few times before giving up.
  if (res == -EAGAIN && !offloaded_ && eagain_retries_ < 8) {
    eagain_retries_++;
    ring_->submit(this);
    return;
  }
  res_ = res;
  if (ring_->current_ != who_) ring_->act_as(who_.get());
  waiter_.resume();
}

// ---- Ring

Ring::Ring(unsigned entries) {
  restricted_ = init_disabled(entries, &ring_, IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN);
  if (io_uring_probe* probe = io_uring_get_probe_ring(&ring_)) {
    for (int op = 0; op < 256 && op <= probe->last_op; op++)
      supported_[op] = io_uring_opcode_supported(probe, op);
    io_uring_free_probe(probe);
  }
  can_message_ = supported_[IORING_OP_MSG_RING];
  if (restricted_) {
    try {
      restrict_and_enable(&ring_, kRingOpcodes, kRingRegisterOps);
    } catch (...) {
      io_uring_queue_exit(&ring_);
      throw;
    }
  }
  if (Credentials::switching()) {
    // Every SQE carries a personality once fsd acts as others: one without
    // would run as whoever the thread acts as when the batch is submitted.
    Credentials::AsSelf self;
    int id = io_uring_register_personality(&ring_);
    if (id < 0) {
      io_uring_queue_exit(&ring_);
      throw std::runtime_error(std::string("io_uring personality: ") + std::strerror(-id));
    }
    self_personality_ = static_cast<uint16_t>(id);
  }
}

void Ring::act_as(const Credentials* who) {
  if (who != nullptr && who->is_self()) who = nullptr;
  if (current_.get() != who) current_ = Credentials::Ref(who);
  Credentials::apply(who);
}

uint16_t Ring::personality_for(const Credentials* who) {
  if (!Credentials::switching()) return 0;
  if (who == nullptr || who->is_self()) return self_personality_;
  for (size_t i = 0; i < personalities_.size(); i++) {
    if (personalities_[i].first != who->id()) continue;
    if (i != 0) std::rotate(personalities_.begin(), personalities_.begin() + static_cast<long>(i),
                            personalities_.begin() + static_cast<long>(i) + 1);
    return personalities_.front().second;
  }
  constexpr size_t kKept = 32;
  if (personalities_.size() == kKept) {
    // SQEs already queued may name the oldest: they go to the kernel (which
    // takes its own reference to the credentials) before it is dropped.
    io_uring_submit(&ring_);
    io_uring_unregister_personality(&ring_, personalities_.back().second);
    personalities_.pop_back();
  }
  const Credentials* before = Credentials::applied();
  Credentials::apply(who);
  int id = io_uring_register_personality(&ring_);
  Credentials::apply(before);
  if (id < 0) {
    std::fprintf(stderr, "fsd: io_uring personality: %s\n", std::strerror(-id));
    std::abort();  // the request would run as fsd itself
  }
  personalities_.insert(personalities_.begin(), {who->id(), static_cast<uint16_t>(id)});
  return static_cast<uint16_t>(id);
}

Ring::~Ring() {
  // A pool thread still working for this ring would post its result to
  // whatever ring next gets this fd number: wait for those results (their
  // coroutines are abandoned, as every other one still suspended here is).
  while (offloaded_ > 0) {
    io_uring_cqe* cqe;
    if (io_uring_wait_cqe(&ring_, &cqe) < 0) break;
    if (io_uring_cqe_get_data64(cqe) & kOffloadedTag) offloaded_--;
    io_uring_cqe_seen(&ring_, cqe);
  }
  io_uring_queue_exit(&ring_);
}

void Ring::submit(Op* op) {
  uint16_t personality = personality_for(op->who_.get());  // may submit what is queued: first
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) std::abort();  // the SQ is empty right after submit
  }
  *sqe = op->sqe_;
  sqe->personality = personality;
  io_uring_sqe_set_data(sqe, op);
  submitted_++;
}

void Ring::run_once(bool wait) {
  int r = io_uring_submit_and_wait(&ring_, wait ? 1 : 0);
  if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
    throw std::runtime_error(std::string("io_uring_submit_and_wait: ") + std::strerror(-r));
  }
  // Copy completions out and retire them before resuming anyone: resumed
  // coroutines submit new work, and that must not race with CQ iteration.
  constexpr unsigned kBatch = 64;
  io_uring_cqe* cqes[kBatch];
  struct Done {
    Op* op;
    int res;
  };
  Done done[kBatch];
  for (;;) {
    unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, kBatch);
    if (n == 0) break;
    unsigned k = 0;
    for (unsigned i = 0; i < n; i++) {
      auto* op = reinterpret_cast<Op*>(io_uring_cqe_get_data64(cqes[i]) & ~kOffloadedTag);
      if (op != nullptr) done[k++] = {op, cqes[i]->res};
    }
    io_uring_cq_advance(&ring_, n);
    completed_ += n;
    for (unsigned i = 0; i < k; i++) done[i].op->complete(done[i].res);
    if (n < kBatch) break;
  }
}

namespace {
inline int sys(long r) { return r < 0 ? -errno : static_cast<int>(r); }
}  // namespace

// Every method prepares an SQE on the stack (liburing's prep helpers fill
// every field they use) and hands it to an Op, which copies it into the ring
// when awaited.
#define FSD_PREP(prep_call)  \
  io_uring_sqe sqe{};        \
  prep_call;                 \
  return Op(this, sqe)

Op Ring::read(int fd, void* buf, unsigned len, uint64_t off) {
  FSD_PREP(io_uring_prep_read(&sqe, fd, buf, len, off));
}
Op Ring::write(int fd, const void* buf, unsigned len, uint64_t off) {
  FSD_PREP(io_uring_prep_write(&sqe, fd, buf, len, off));
}
Op Ring::readv(int fd, const iovec* iov, unsigned n, uint64_t off) {
  FSD_PREP(io_uring_prep_readv(&sqe, fd, iov, n, off));
}
Op Ring::writev(int fd, const iovec* iov, unsigned n, uint64_t off) {
  FSD_PREP(io_uring_prep_writev(&sqe, fd, iov, n, off));
}
Op Ring::write_cached(int fd, const iovec* iov, unsigned n, uint64_t off) {
  if (!use_ring_for(IORING_OP_WRITEV, true)) return Op(sys(::pwritev(fd, iov, static_cast<int>(n), static_cast<off_t>(off))));
  if (n == 1) {
    FSD_PREP(io_uring_prep_write(&sqe, fd, iov[0].iov_base, static_cast<unsigned>(iov[0].iov_len), off));
  }
  FSD_PREP(io_uring_prep_writev(&sqe, fd, iov, n, off));
}
Op Ring::fsync(int fd, bool datasync) {
  FSD_PREP(io_uring_prep_fsync(&sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0));
}
Op Ring::fallocate(int fd, int mode, uint64_t offset, uint64_t length) {
  if (!supports(IORING_OP_FALLOCATE))
    return Op(sys(::fallocate(fd, mode, static_cast<off_t>(offset), static_cast<off_t>(length))));
  FSD_PREP(io_uring_prep_fallocate(&sqe, fd, mode, offset, length));
}
Op Ring::recv(int fd, void* buf, unsigned len) {
  FSD_PREP(io_uring_prep_recv(&sqe, fd, buf, len, 0));
}
Op Ring::send(int fd, const void* buf, unsigned len) {
  FSD_PREP(io_uring_prep_send(&sqe, fd, buf, len, MSG_NOSIGNAL));
}
Op Ring::accept(int fd) {
  FSD_PREP(io_uring_prep_accept(&sqe, fd, nullptr, nullptr, SOCK_CLOEXEC));
}

Op Ring::sleep(const __kernel_timespec& ts) {
  if (!supports(IORING_OP_TIMEOUT)) {
    timespec t{static_cast<time_t>(ts.tv_sec), static_cast<long>(ts.tv_nsec)};
    ::nanosleep(&t, nullptr);
    return Op(-ETIME);
  }
  FSD_PREP(io_uring_prep_timeout(&sqe, const_cast<__kernel_timespec*>(&ts), 0, 0));
}

Op Ring::blocking(FunctionRef<int()> call, Offload when) {
  if (!can_message_ || (when == Offload::kWhenBusy && active_ <= 1)) return Op(call());
  return Op(this, call);
}

Op Ring::cancel_all() {
  FSD_PREP(io_uring_prep_cancel64(&sqe, 0, IORING_ASYNC_CANCEL_ANY));
}

Op Ring::cancel_fd(int fd) {
  FSD_PREP(io_uring_prep_cancel_fd(&sqe, fd, IORING_ASYNC_CANCEL_ALL));
}

Op Ring::openat2(int dirfd, const char* path, const open_how& how) {
  if (!use_ring_for(IORING_OP_OPENAT2, how.flags & O_CREAT)) {
    open_how h = how;
    return Op(sys(syscall(SYS_openat2, dirfd, path, &h, sizeof h)));
  }
  // The kernel copies `how` at submission; the caller keeps it alive anyway.
  FSD_PREP(io_uring_prep_openat2(&sqe, dirfd, path, const_cast<open_how*>(&how)));
}
Op Ring::statx(int dirfd, const char* path, int flags, unsigned mask, struct statx* out) {
  if (!use_ring_for(IORING_OP_STATX, false)) return Op(sys(::statx(dirfd, path, flags, mask, out)));
  FSD_PREP(io_uring_prep_statx(&sqe, dirfd, path, flags, mask, out));
}
Op Ring::mkdirat(int dirfd, const char* path, mode_t mode) {
  if (!use_ring_for(IORING_OP_MKDIRAT, true)) return Op(sys(::mkdirat(dirfd, path, mode)));
  FSD_PREP(io_uring_prep_mkdirat(&sqe, dirfd, path, mode));
}
Op Ring::unlinkat(int dirfd, const char* path, int flags) {
  if (!use_ring_for(IORING_OP_UNLINKAT, true)) return Op(sys(::unlinkat(dirfd, path, flags)));
  FSD_PREP(io_uring_prep_unlinkat(&sqe, dirfd, path, flags));
}
Op Ring::renameat(int olddir, const char* oldpath, int newdir, const char* newpath,
                  unsigned flags) {
  if (!use_ring_for(IORING_OP_RENAMEAT, true))
    return Op(sys(::renameat2(olddir, oldpath, newdir, newpath, flags)));
  FSD_PREP(io_uring_prep_renameat(&sqe, olddir, oldpath, newdir, newpath, flags));
}
Op Ring::linkat(int olddir, const char* oldpath, int newdir, const char* newpath, int flags) {
  if (!use_ring_for(IORING_OP_LINKAT, true))
    return Op(sys(::linkat(olddir, oldpath, newdir, newpath, flags)));
  FSD_PREP(io_uring_prep_linkat(&sqe, olddir, oldpath, newdir, newpath, flags));
}
Op Ring::symlinkat(const char* target, int newdir, const char* linkpath) {
  if (!use_ring_for(IORING_OP_SYMLINKAT, true)) return Op(sys(::symlinkat(target, newdir, linkpath)));
  FSD_PREP(io_uring_prep_symlinkat(&sqe, target, newdir, linkpath));
}

#undef FSD_PREP

}  // namespace fsd
