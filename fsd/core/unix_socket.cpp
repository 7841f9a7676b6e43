#include "fsd/core/unix_socket.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

namespace fsd {

mode_t parse_socket_mode(const std::string& text) {
  size_t used = 0;
  unsigned long mode = 0;
  try {
    mode = std::stoul(text, &used, 8);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size() || mode > 0777)
    throw std::invalid_argument("--socket-mode: '" + text + "' is not an octal mode from 0 to 0777 (e.g. 0660)");
  return static_cast<mode_t>(mode);
}

gid_t parse_socket_group(const std::string& text) {
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
    unsigned long gid = std::stoul(text);
    if (gid < static_cast<gid_t>(-1)) return static_cast<gid_t>(gid);
  }
  std::vector<char> buf(16384);
  group g{};
  group* found = nullptr;
  if (::getgrnam_r(text.c_str(), &g, buf.data(), buf.size(), &found) == 0 && found) return found->gr_gid;
  throw std::invalid_argument("--socket-group: no group '" + text + "'");
}

namespace {
sockaddr_un address_of(const std::string& path) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sa.sun_path)
    throw std::runtime_error(path.empty() ? "empty path" : "path too long (at most " + std::to_string(sizeof sa.sun_path - 1) + " bytes)");
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  return sa;
}
}  // namespace

Fd listen_unix(const std::string& path, const SocketAccess& access, int backlog) {
  sockaddr_un sa = address_of(path);
  auto slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
  struct stat st{};
  if (::stat(dir.c_str(), &st) < 0 || !S_ISDIR(st.st_mode))
    throw std::runtime_error("directory '" + dir + "' does not exist");
  // A socket file left by a dead server is replaced; a live one is not.
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) throw std::runtime_error("exists and is not a socket");
    Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0)
      throw std::runtime_error("another server is listening there");
  }
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  // Bound under a private name first: its mode is then whatever the umask
  // gave, and nobody knows the name.
  std::string tmp = path + ".fsd" + std::to_string(std::random_device{}() % 1000000);
  sockaddr_un ta = address_of(tmp);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ta), sizeof ta) < 0)
    throw std::runtime_error(std::string("bind: ") + std::strerror(errno));
  auto fail = [&](const std::string& what) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw std::runtime_error(what + ": " + std::strerror(e));
  };
  if (::chmod(tmp.c_str(), access.mode) < 0) fail("chmod");
  if (access.group != static_cast<gid_t>(-1) && ::chown(tmp.c_str(), static_cast<uid_t>(-1), access.group) < 0)
    fail("setting its group to " + std::to_string(access.group));
  if (::listen(fd.get(), backlog) < 0) fail("listen");
  if (::rename(tmp.c_str(), path.c_str()) < 0) fail("rename into place");
  return fd;
}

SocketFile::SocketFile(const std::string& path) {
  auto slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
  name_ = slash == std::string::npos ? path : path.substr(slash + 1);
  dir_.reset(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
}

void SocketFile::remove() {
  if (!dir_) return;
  struct stat st{};
  if (::fstatat(dir_.get(), name_.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISSOCK(st.st_mode))
    ::unlinkat(dir_.get(), name_.c_str(), 0);
  dir_.reset();
}

}  // namespace fsd
