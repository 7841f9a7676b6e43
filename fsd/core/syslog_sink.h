// Logging to the host's syslog (--syslog) from inside the sandbox: the
// socket to /dev/log is connected once, at start, and every message goes
// through it. glibc's syslog(3) would reconnect by path, which the sandbox's
// empty root and seccomp filter do not allow.
#pragma once

#include <spdlog/sinks/base_sink.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <mutex>
#include <stdexcept>
#include <string>

namespace fsd {

class SyslogSink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  // Connects to `path`; throws std::runtime_error naming it if that fails.
  explicit SyslogSink(std::string ident, const char* path = "/dev/log") : ident_(std::move(ident)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
    if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      std::string why = std::strerror(errno);
      if (fd_ >= 0) ::close(fd_);
      throw std::runtime_error("--syslog: cannot reach " + std::string(path) + ": " + why);
    }
  }
  ~SyslogSink() override { ::close(fd_); }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    int severity = LOG_DEBUG;
    switch (msg.level) {
      case spdlog::level::critical: severity = LOG_CRIT; break;
      case spdlog::level::err: severity = LOG_ERR; break;
      case spdlog::level::warn: severity = LOG_WARNING; break;
      case spdlog::level::info: severity = LOG_INFO; break;
      default: break;
    }
    // RFC 3164's form, as syslog(3) sends it: <PRI>Mmm dd hh:mm:ss IDENT[PID]: MESSAGE
    std::time_t now = std::chrono::system_clock::to_time_t(msg.time);
    std::tm tm{};
    ::localtime_r(&now, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%b %e %H:%M:%S", &tm);
    std::string line = "<" + std::to_string(LOG_DAEMON | severity) + ">" + stamp + " " + ident_ + "[" +
                       std::to_string(::getpid()) + "]: ";
    line.append(msg.payload.data(), msg.payload.size());
    (void)::send(fd_, line.data(), line.size(), MSG_DONTWAIT | MSG_NOSIGNAL);  // a full log drops, never blocks
  }
  void flush_() override {}

 private:
  std::string ident_;
  int fd_ = -1;
};

}  // namespace fsd
