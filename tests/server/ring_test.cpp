// The event loop's blocking pool: a call io_uring cannot do runs on the pool
// and completes through the ring, so the thread keeps serving meanwhile.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fcntl.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <vector>
#include <fstream>
#include <thread>

#include "fsd/uring/ring.h"

namespace fsd {
namespace {

using Clock = std::chrono::steady_clock;

Task<void> slow_call(Ring& ring, Clock::time_point* done, int* result) {
  auto call = [] {
    ::usleep(300 * 1000);  // a slow copy_file_range or syncfs, say
    return 42;
  };
  *result = co_await ring.blocking(call, Ring::Offload::kAlways);
  *done = Clock::now();
}

Task<void> quick_timer(Ring& ring, Clock::time_point* done) {
  __kernel_timespec ts{0, 10 * 1000 * 1000};
  (void)co_await ring.sleep(ts);
  *done = Clock::now();
}

TEST(Ring, BlockingCallsLeaveTheThreadFree) {
  Ring ring;
  Clock::time_point slow{}, quick{};
  int result = 0;
  auto start = Clock::now();
  spawn(slow_call(ring, &slow, &result));
  spawn(quick_timer(ring, &quick));
  while (slow == Clock::time_point{} || quick == Clock::time_point{}) ring.run_once();
  EXPECT_EQ(result, 42);
  EXPECT_LT(quick, slow) << "the timer waited for the blocking call";
  EXPECT_LT(quick - start, std::chrono::milliseconds(200));
}

Task<void> lone_call(Ring& ring, std::thread::id* ran_on) {
  auto call = [&] {
    *ran_on = std::this_thread::get_id();
    return 0;
  };
  (void)co_await ring.blocking(call, Ring::Offload::kWhenBusy);
}

// kWhenBusy: alone on its ring, the call runs inline (no thread hop).
TEST(Ring, LoneCallsRunInline) {
  Ring ring;
  std::thread::id ran_on;
  ring.run(lone_call(ring, &ran_on));
  EXPECT_TRUE(ran_on == std::this_thread::get_id());
}

// Writes "abcd" at `off` with write_cached, as a request counted in flight
// alongside `others` more.
Task<int> cached_write(Ring& ring, int fd, uint64_t off, int others) {
  std::vector<std::unique_ptr<Ring::Active>> busy;
  for (int i = 0; i <= others; i++) busy.push_back(std::make_unique<Ring::Active>(ring));
  char data[] = "abcd";
  iovec iov{data, 4};
  co_return co_await ring.write_cached(fd, &iov, 1, off);
}

// A write to the page cache runs as pwrite when it is the ring's only
// request (kAdaptive), and through the ring beside others; with kRing,
// always through the ring. Both write the same bytes.
TEST(Ring, CachedWritesRunInlineWhenAlone) {
  char path[] = "/tmp/fsd-ring-write-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::unlink(path);
  Ring ring;
  ring.set_metadata_io(Ring::MetadataIo::kAdaptive);
  uint64_t before = ring.submitted();
  EXPECT_EQ(ring.run(cached_write(ring, fd, 0, 0)), 4);
  EXPECT_EQ(ring.submitted(), before) << "a lone write went through the ring";
  EXPECT_EQ(ring.run(cached_write(ring, fd, 4, 1)), 4);
  EXPECT_EQ(ring.submitted(), before + 1) << "a write beside another request ran inline";
  ring.set_metadata_io(Ring::MetadataIo::kRing);
  EXPECT_EQ(ring.run(cached_write(ring, fd, 8, 0)), 4);
  EXPECT_EQ(ring.submitted(), before + 2);
  char back[13] = {};
  EXPECT_EQ(::pread(fd, back, 12, 0), 12);
  EXPECT_STREQ(back, "abcdabcdabcd");
  ::close(fd);
}

// Opens `path` three ways as `who`: through the ring, as a plain syscall on
// the thread after a suspension (others ran meanwhile, as someone else),
// and on the blocking pool. 0 or -errno each.
Task<void> open_as(Ring& ring, const Credentials* who, const char* path, std::array<int, 3>* out) {
  ring.act_as(who);
  auto open = [path] {
    int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ::close(fd);
    return 0;
  };
  open_how how{};
  how.flags = O_RDONLY | O_CLOEXEC;
  int r = co_await ring.openat2(AT_FDCWD, path, how);
  if (r >= 0) ::close(r);
  (*out)[0] = r < 0 ? r : 0;
  __kernel_timespec ts{0, 5 * 1000 * 1000};
  (void)co_await ring.sleep(ts);
  (*out)[1] = open();
  (*out)[2] = co_await ring.blocking(open, Ring::Offload::kAlways);
}

TEST(Ring, OperationsRunAsTheirCoroutinesIdentity) {
  if (!Credentials::switching()) GTEST_SKIP() << "needs CAP_SETUID and CAP_SETGID";
  char dir[] = "/tmp/fsd-ring-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string secret = std::string(dir) + "/secret";
  std::ofstream(secret) << "x";
  ::chmod(secret.c_str(), 0600);
  ::chmod(dir, 0755);
  Ring ring;
  ring.set_metadata_io(Ring::MetadataIo::kRing);
  auto nobody = Credentials::get(65534, 65534);
  std::array<int, 3> as_nobody{1, 1, 1}, as_root{1, 1, 1}, again{1, 1, 1};
  bool done = false;
  auto both = [&]() -> Task<void> {
    // Interleaved: each suspends while the other runs.
    Task<void> a = open_as(ring, nobody.get(), secret.c_str(), &as_nobody);
    Task<void> b = open_as(ring, nullptr, secret.c_str(), &as_root);
    spawn(std::move(a));
    co_await std::move(b);
    done = true;
  };
  spawn(both());
  while (!done || as_nobody[2] == 1) ring.run_once();
  EXPECT_EQ(as_nobody, (std::array<int, 3>{-EACCES, -EACCES, -EACCES}));
  EXPECT_EQ(as_root, (std::array<int, 3>{0, 0, 0}));
  // An identity used once more is served from the ring's personality cache.
  ring.run(open_as(ring, nobody.get(), secret.c_str(), &again));
  EXPECT_EQ(again, (std::array<int, 3>{-EACCES, -EACCES, -EACCES}));
  ring.act_as(nullptr);
  std::filesystem::remove_all(dir);
}


// A ring takes only the opcodes fsd submits: anything else (a NOP, or a
// splice a compromised worker might try) completes with EACCES, while the
// ring keeps working.
TEST(Ring, OpcodesFsdDoesNotSubmitAreRefused) {
  Ring ring;
  if (!ring.restricted()) GTEST_SKIP() << "this kernel has no IORING_REGISTER_RESTRICTIONS";
  auto submit = [&](io_uring_sqe sqe) -> Task<int> { co_return co_await Op(&ring, sqe); };
  io_uring_sqe nop{};
  io_uring_prep_nop(&nop);
  EXPECT_EQ(ring.run(submit(nop)), -EACCES);
  io_uring_sqe splice{};
  io_uring_prep_splice(&splice, 0, -1, 1, -1, 1, 0);
  EXPECT_EQ(ring.run(submit(splice)), -EACCES);
  __kernel_timespec ts{0, 1000};
  EXPECT_EQ(ring.run([&]() -> Task<int> { co_return co_await ring.sleep(ts); }()), -ETIME);
}

}  // namespace
}  // namespace fsd
