// Ring: one io_uring and the event loop of one thread.
//
// Every operation is an awaitable returning the syscall's result: >= 0 on
// success, -errno on failure (the cqe->res convention). Submissions made
// while coroutines run are batched and go to the kernel together at the next
// run_once(). An operation the running kernel's io_uring lacks (probed at
// start) is performed synchronously instead, with the same result convention.
//
// Thread-safety: a Ring and everything awaiting on it belong to one thread.
#pragma once

#include <fcntl.h>
#include <liburing.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <bitset>
#include <coroutine>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "fsd/core/credentials.h"
#include "common/function_ref.h"
#include "fsd/core/task.h"

namespace fsd {

class Ring;

// One submitted (or synchronously completed) operation. Lives in the awaiting
// coroutine's frame, so its address is stable while it is in flight; that
// address is the SQE's user_data. It runs as the identity its ring acts as
// when it is made, and its awaiter resumes acting as that identity again.
class [[nodiscard]] Op {
 public:
  Op(Ring* ring, const io_uring_sqe& sqe);
  // An already finished operation (synchronous fallback).
  explicit Op(int res) : res_(res), ready_(true) {}
  // A call run by the blocking pool (Ring::blocking).
  Op(Ring* ring, FunctionRef<int()> call);

  bool await_ready() const noexcept { return ready_; }
  void await_suspend(std::coroutine_handle<> h) noexcept;
  int await_resume() const noexcept { return res_; }

 private:
  friend class Ring;
  void complete(int res);

  Ring* ring_ = nullptr;
  io_uring_sqe sqe_{};
  Credentials::Ref who_;  // null: fsd itself
  int res_ = 0;
  FunctionRef<int()> call_;
  bool ready_ = false;
  bool offloaded_ = false;
  uint8_t eagain_retries_ = 0;
  std::coroutine_handle<> waiter_;
};

class Ring {
 public:
  explicit Ring(unsigned entries = 256);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  bool supports(uint8_t opcode) const { return supported_[opcode]; }
  // The ring accepts only the opcodes fsd submits: others complete with
  // EACCES (false on kernels without IORING_REGISTER_RESTRICTIONS).
  bool restricted() const { return restricted_; }

  // Who the operations made on this ring from now on act as, on the ring
  // and in inline calls (nullptr: fsd itself). Transports set it per
  // request; an Op restores it when its awaiter resumes, so a coroutine
  // keeps its identity across suspensions while others run in between.
  void act_as(const Credentials* who);
  const Credentials* acting_as() const { return current_.get(); }
  // Where metadata syscalls run (and writes to the page cache, see
  // write_cached); other data I/O always uses the ring.
  //   kRing:     through io_uring, which punts them to its worker threads:
  //              they overlap, but each costs those threads a wake-up.
  //   kInline:   as plain syscalls on the calling thread.
  //   kAdaptive: lookups (statx, open) inline; changes (create, mkdir,
  //              unlink, rename, link, symlink), which can take long and
  //              block, through the ring when other requests are in
  //              flight here, so they overlap; inline when alone.
  enum class MetadataIo { kRing, kInline, kAdaptive };
  void set_metadata_io(MetadataIo m) { meta_io_ = m; }
  // Counts a request in flight on this ring for kAdaptive (transports hold
  // one per request they serve).
  class Active {
   public:
    explicit Active(Ring& r) : r_(r) { r_.active_++; }
    ~Active() { r_.active_--; }
    Active(const Active&) = delete;

   private:
    Ring& r_;
  };

  // Requests counted in flight by Active.
  unsigned active() const { return active_; }

  // Submits pending SQEs, then handles completions. With `wait`, blocks until
  // at least one completion arrives.
  void run_once(bool wait = true);

  // Drives `t` to completion on this thread's loop and returns its value.
  template <class T>
  T run(Task<T> t);

  // ---- data I/O
  Op read(int fd, void* buf, unsigned len, uint64_t off);
  Op write(int fd, const void* buf, unsigned len, uint64_t off);
  Op readv(int fd, const iovec* iov, unsigned n, uint64_t off);
  Op writev(int fd, const iovec* iov, unsigned n, uint64_t off);
  // A write into the page cache: `fd` has none of O_DIRECT, O_SYNC and
  // O_DSYNC. On most filesystems (ext4 among them) io_uring cannot make
  // one without blocking, so it hands each to one of its worker threads: a
  // 4 KiB write took 16 us that way here, against 2.6 for pwrite. So it
  // follows the metadata policy for changes: kAdaptive runs it inline when
  // it is this ring's only request in flight, through the ring (where it
  // overlaps the others) when not.
  Op write_cached(int fd, const iovec* iov, unsigned n, uint64_t off);
  Op fsync(int fd, bool datasync);
  Op fallocate(int fd, int mode, uint64_t offset, uint64_t length);
  // ---- sockets and eventfds
  Op recv(int fd, void* buf, unsigned len);
  Op send(int fd, const void* buf, unsigned len);
  Op accept(int fd);
  // Cancels every operation in flight on `fd` (they complete with -ECANCELED).
  Op cancel_fd(int fd);
  // Cancels every other operation in flight on this ring.
  Op cancel_all();
  // Completes (with -ETIME) after `ts`, which must stay valid until then.
  Op sleep(const __kernel_timespec& ts);
  // A system call io_uring has no opcode for (copy_file_range, syncfs,
  // getdents, xattrs), which may block: `call` returns its result (>= 0, or
  // -errno). kAlways runs it on the blocking pool, a few threads shared by
  // every ring, whose completions arrive in this ring as a CQE
  // (IORING_OP_MSG_RING), so this thread serves other requests meanwhile.
  // kWhenBusy runs it inline when this ring has nothing else in flight (no
  // thread hop for a lone request), else on the pool. `call` must stay valid
  // until the Op completes.
  enum class Offload { kAlways, kWhenBusy };
  Op blocking(FunctionRef<int()> call, Offload when);
  // ---- metadata (paths must stay valid until the Op completes)
  Op openat2(int dirfd, const char* path, const open_how& how);
  Op statx(int dirfd, const char* path, int flags, unsigned mask, struct statx* out);
  Op mkdirat(int dirfd, const char* path, mode_t mode);
  Op unlinkat(int dirfd, const char* path, int flags);
  Op renameat(int olddir, const char* oldpath, int newdir, const char* newpath, unsigned flags);
  Op linkat(int olddir, const char* oldpath, int newdir, const char* newpath, int flags);
  Op symlinkat(const char* target, int newdir, const char* linkpath);

  // Counters, for benchmarks and tests.
  uint64_t submitted() const { return submitted_; }
  uint64_t completed() const { return completed_; }

 private:
  friend class Op;
  void submit(Op* op);
  // The registered personality that carries `who` (fsd itself for null),
  // registering it on first use; 0 when fsd cannot act as others.
  uint16_t personality_for(const Credentials* who);
  bool use_ring_for(uint8_t opcode, bool change) const {
    if (!supported_[opcode]) return false;
    switch (meta_io_) {
      case MetadataIo::kRing: return true;
      case MetadataIo::kInline: return false;
      case MetadataIo::kAdaptive: return change && active_ > 1;
    }
    return false;
  }

  io_uring ring_{};
  std::bitset<256> supported_;
  bool restricted_ = false;   // limited to the opcodes fsd submits (IORING_REGISTER_RESTRICTIONS)
  bool can_message_ = false;  // IORING_OP_MSG_RING, which the blocking pool needs
  unsigned offloaded_ = 0;    // Ops on the blocking pool now
  MetadataIo meta_io_ = MetadataIo::kRing;
  Credentials::Ref current_;
  // Registered personalities, most recently used first: (identity id, personality).
  std::vector<std::pair<uint64_t, uint16_t>> personalities_;
  uint16_t self_personality_ = 0;
  unsigned active_ = 0;
  uint64_t submitted_ = 0;
  uint64_t completed_ = 0;
};

namespace detail {
template <class T>
Task<void> store_result(Task<T> t, std::optional<T>* out) {
  out->emplace(co_await std::move(t));
}
inline Task<void> store_done(Task<void> t, bool* done) {
  co_await std::move(t);
  *done = true;
}
}  // namespace detail

template <class T>
T Ring::run(Task<T> t) {
  if constexpr (std::is_void_v<T>) {
    bool done = false;
    spawn(detail::store_done(std::move(t), &done));
    while (!done) run_once();
  } else {
    std::optional<T> out;
    spawn(detail::store_result(std::move(t), &out));
    while (!out) run_once();
    return std::move(*out);
  }
}

}  // namespace fsd
