// The event loop's blocking pool: a call io_uring cannot do runs on the pool
// and completes through the ring, so the thread keeps serving meanwhile.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
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

}  // namespace
}  // namespace fsd
