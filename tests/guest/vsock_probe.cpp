// fsd-vsock-probe: run inside a test guest, a process speaking 9P to the
// host over vsock by itself (not through the kernel's mount), to see what
// fsd lets it do. A static binary.
//
//   fsd-vsock-probe UID LOCAL_PORT ANAME N_UNAME NAME
//
// Becomes UID (when not 0), binds vsock LOCAL_PORT (0: any), connects to
// the host's port 564, attaches ANAME as N_UNAME and creates NAME in the
// export's root. Prints one line per step: "bind ok|ERRNO-NAME",
// "connect ok|...", "attach ok|...", "create ok|...".
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "fsd/client/p9_client.h"

namespace {

void say(const char* step, int err) { std::printf("%s %s\n", step, err == 0 ? "ok" : strerrorname_np(err)); }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: fsd-vsock-probe UID LOCAL_PORT ANAME N_UNAME NAME\n");
    return 2;
  }
  uid_t uid = static_cast<uid_t>(std::strtoul(argv[1], nullptr, 10));
  unsigned local = static_cast<unsigned>(std::strtoul(argv[2], nullptr, 10));
  uint32_t n_uname = static_cast<uint32_t>(std::strtoul(argv[4], nullptr, 10));
  if (uid != 0 && (::setresgid(uid, uid, uid) != 0 || ::setresuid(uid, uid, uid) != 0)) {
    std::perror("setresuid");
    return 1;
  }
  int fd = ::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    say("socket", errno);
    return 1;
  }
  if (local) {
    sockaddr_vm me{};
    me.svm_family = AF_VSOCK;
    me.svm_cid = VMADDR_CID_ANY;
    me.svm_port = local;
    int err = ::bind(fd, reinterpret_cast<sockaddr*>(&me), sizeof me) == 0 ? 0 : errno;
    say("bind", err);
    if (err) return 0;
  }
  sockaddr_vm host{};
  host.svm_family = AF_VSOCK;
  host.svm_cid = VMADDR_CID_HOST;
  host.svm_port = 564;
  int err = ::connect(fd, reinterpret_cast<sockaddr*>(&host), sizeof host) == 0 ? 0 : errno;
  say("connect", err);
  if (err) return 0;
  fsd::p9::Client c{fsd::Fd(fd)};
  if (auto v = c.version(65536); !v) {
    say("version", -v.error());
    return 0;
  }
  auto a = c.attach(1, argv[3], n_uname);
  say("attach", a ? 0 : -a.error());
  if (!a) return 0;
  auto made = c.lcreate(1, argv[5], O_WRONLY, 0644);
  say("create", made ? 0 : -made.error());
  return 0;
}
