// --syslog's sink: one datagram per message, in syslog(3)'s form, to a
// socket connected once.
#include "fsd/core/syslog_sink.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

namespace fsd {
namespace {

TEST(SyslogSink, SendsOneDatagramPerMessageWithFacilityAndSeverity) {
  char dir[] = "/tmp/fsd-syslog-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string path = std::string(dir) + "/log";
  int server = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
  ASSERT_EQ(::bind(server, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  {
    spdlog::logger log("t", std::make_shared<SyslogSink>("fsd", path.c_str()));
    log.set_pattern("%v");
    log.warn("disk {}", "full");
    log.info("hello");
  }
  char buf[512];
  ssize_t n = ::recv(server, buf, sizeof buf, MSG_DONTWAIT);
  ASSERT_GT(n, 0);
  std::string first(buf, static_cast<size_t>(n));
  EXPECT_TRUE(first.starts_with("<28>")) << first;  // daemon (3 << 3) | warning (4)
  EXPECT_TRUE(first.ends_with(" fsd[" + std::to_string(::getpid()) + "]: disk full")) << first;
  n = ::recv(server, buf, sizeof buf, MSG_DONTWAIT);
  ASSERT_GT(n, 0);
  std::string second(buf, static_cast<size_t>(n));
  EXPECT_TRUE(second.starts_with("<30>")) << second;  // daemon | info (6)
  EXPECT_TRUE(second.ends_with("]: hello")) << second;
  ::close(server);
  std::filesystem::remove_all(dir);
}

TEST(SyslogSink, AnUnreachableLogIsAnErrorNamingIt) {
  try {
    SyslogSink sink("fsd", "/nonexistent/log");
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("--syslog: cannot reach /nonexistent/log"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fsd
