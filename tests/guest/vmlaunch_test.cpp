// vmlaunch end to end, under TCG, in as few boots as the checks allow:
// exit statuses, xchg and shared seen from the host, the store read-only
// underneath but writable through the overlay, a 9p-qemu share, a 9p share
// served by fsd, the Nix database overlay; port forwards both ways; the
// interactive shell; and every way a run can end (timeout, fsd killed, QEMU
// killed, Ctrl-C, SIGTERM's graceful power-off) with its documented status,
// no processes left and no temporary directory left.
#include <gtest/gtest.h>
#include <sys/utsname.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <nlohmann/json.hpp>
#include <atomic>
#include <fcntl.h>
#include <functional>
#include <thread>
#include <set>

#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

std::set<std::string> vmlaunch_dirs(const std::string& tmp) {
  std::set<std::string> out;
  for (auto& e : std::filesystem::directory_iterator(tmp))
    if (e.path().filename().string().starts_with("vmlaunch-")) out.insert(e.path().string());
  return out;
}

// Direct children of a process (from /proc).
std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> out;
  std::string s = read_file("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::istringstream in(s);
  for (pid_t c; in >> c;) out.push_back(c);
  return out;
}
std::string comm(pid_t pid) {
  std::string c = read_file("/proc/" + std::to_string(pid) + "/comm");
  return c.empty() ? c : c.substr(0, c.size() - 1);
}

class Vmlaunch : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(guest_kernel_dir().empty()) << "no guest kernel: run scripts/setup";
    std::filesystem::create_directories(tmp_.path() / "tmp");
    std::filesystem::create_directories(tmp_.path() / "shared");
    write_file(tmp_.path() / "store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-thing/data.txt", "store content\n");
    write_file(tmp_.path() / "ninep/hello.txt", "served by QEMU's 9p\n");
    write_file(tmp_.path() / "fsd9p/hello.txt", "served by fsd's 9p\n");
    write_file(tmp_.path() / "nixdb/db.sqlite", "host database\n");
    ::setenv("TMPDIR", (tmp_.path() / "tmp").c_str(), 1);
    ::setenv("SHARED_DIR", (tmp_.path() / "shared").c_str(), 1);
  }
  void TearDown() override {
    ::unsetenv("TMPDIR");
    ::unsetenv("SHARED_DIR");
  }
  std::string spec(const std::string& command, int timeout = 0, const std::function<void(nlohmann::json&)>& edit = {}) {
    nlohmann::json j{{"kernel", guest_kernel_dir() + "/vmlinuz"},
                     {"memory", 512},
                     {"accel", "tcg"},
                     {"console", "quiet"},
                     {"store", {{"path", (tmp_.path() / "store").string()}}},
                     {"command", command}};
    if (timeout) j["timeout"] = timeout;
    nlohmann::json share = nlohmann::json::object();
    share["tag"] = "ninep";
    share["source"] = (tmp_.path() / "ninep").string();
    share["target"] = "/data";
    share["proto"] = "9p-qemu";
    share["readOnly"] = true;
    j["shares"] = nlohmann::json::array({share});
    if (edit) edit(j);
    std::string path = (tmp_.path() / ("spec" + std::to_string(n_++) + ".json")).string();
    write_file(path, j.dump());
    return path;
  }
  // Runs vmlaunch to completion; returns its status and fills *out.
  int run(const std::vector<std::string>& args, std::string* out) {
    auto log = tmp_.path() / ("run" + std::to_string(n_++) + ".log");
    std::vector<std::string> argv{VMLAUNCH_BINARY};
    argv.insert(argv.end(), args.begin(), args.end());
    ChildProcess p(argv, log);
    auto st = p.wait(std::chrono::seconds(300));
    *out = read_file(log);
    return st.value_or(-1);
  }
  void expect_clean() {
    EXPECT_TRUE(vmlaunch_dirs((tmp_.path() / "tmp").string()).empty()) << "a temporary directory was left";
  }

  TempDir tmp_;
  int n_ = 0;
};

TEST_F(Vmlaunch, CommandsStoreXchgSharedAnd9p) {
  std::string out;
  std::string script =
      "echo guest-says-hello; cat /tmp/xchg/prefilled.txt; "
      "echo from-guest > /tmp/xchg/x.txt; echo to-shared > /tmp/shared/s.txt; "
      "cat /nix/store/*-thing/data.txt; "
      "if touch /nix/.ro-store/nope 2>/tmp/err; then echo RO-STORE-WRITABLE; else grep -q 'Read-only' /tmp/err && echo ro-store-refuses; fi; "
      "mkdir /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-new && echo made > /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-new/f && "
      "ls /nix/store | wc -l | sed 's/^/store-entries-/'; "
      "cat /data/hello.txt; cat /fsd9p/hello.txt; echo guest-9p-write > /fsd9p/w.txt; "
      "grep -q ' /fsd9p 9p .*trans=fd' /proc/mounts && echo fsd-9p-over-vsock; "
      "cat /nix/var/nix/db/db.sqlite; echo guest-change >> /nix/var/nix/db/db.sqlite && echo db-writable; exit 3";
  // USE_TMPDIR=1: xchg is $TMPDIR/xchg itself, filled before and kept after.
  write_file(tmp_.path() / "tmp/xchg/prefilled.txt", "prefilled-by-host\n");
  ::setenv("USE_TMPDIR", "1", 1);
  int st = run({spec(script, 0, [&](nlohmann::json& j) {
                 nlohmann::json share = nlohmann::json::object();
                 share["tag"] = "fsd9p";
                 share["source"] = (tmp_.path() / "fsd9p").string();
                 share["target"] = "/fsd9p";
                 share["proto"] = "9p";
                 j["shares"].push_back(share);
                 j["nixDb"] = (tmp_.path() / "nixdb").string();
               })},
               &out);
  ::unsetenv("USE_TMPDIR");
  EXPECT_EQ(st, 3) << out;
  EXPECT_NE(out.find("guest-says-hello"), std::string::npos) << out;
  EXPECT_EQ(out.find("fsd-guest-init: mounted"), std::string::npos) << out;  // quiet: the init's steps are console stage1's
  EXPECT_NE(out.find("prefilled-by-host"), std::string::npos) << out;
  EXPECT_EQ(read_file(tmp_.path() / "tmp/xchg/x.txt"), "from-guest\n");
  EXPECT_NE(out.find("store content"), std::string::npos) << out;
  EXPECT_NE(out.find("ro-store-refuses"), std::string::npos) << out;
  EXPECT_NE(out.find("store-entries-2"), std::string::npos) << out;  // the new path, in the overlay
  EXPECT_NE(out.find("served by QEMU's 9p"), std::string::npos) << out;
  EXPECT_NE(out.find("served by fsd's 9p"), std::string::npos) << out;
  EXPECT_NE(out.find("fsd-9p-over-vsock"), std::string::npos) << out;
  EXPECT_EQ(read_file(tmp_.path() / "fsd9p/w.txt"), "guest-9p-write\n");
  EXPECT_NE(out.find("host database"), std::string::npos) << out;
  EXPECT_NE(out.find("db-writable"), std::string::npos) << out;
  EXPECT_EQ(read_file(tmp_.path() / "nixdb/db.sqlite"), "host database\n");  // the guest's change stayed in its overlay
  EXPECT_EQ(read_file(tmp_.path() / "shared/s.txt"), "to-shared\n");
  // the host store is unchanged
  EXPECT_FALSE(std::filesystem::exists(tmp_.path() / "store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-new"));
  expect_clean();  // xchg went with the temporary directory...
  // ...unless --keep.
  st = run({"--keep", spec("echo kept > /tmp/xchg/k.txt")}, &out);
  EXPECT_EQ(st, 0) << out;
  auto dirs = vmlaunch_dirs((tmp_.path() / "tmp").string());
  ASSERT_EQ(dirs.size(), 1u);
  EXPECT_EQ(read_file(*dirs.begin() + "/xchg/k.txt"), "kept\n");
  std::filesystem::remove_all(*dirs.begin());
  // A failing command's status, given on the command line (a bare name is
  // found on the command's PATH), with the spec's own xchg share.
  std::filesystem::create_directories(tmp_.path() / "own-xchg");
  st = run({spec("true", 0,
                 [&](nlohmann::json& j) {
                   j["shares"].push_back({{"tag", "xchg"}, {"source", (tmp_.path() / "own-xchg").string()}, {"target", "/x"}});
                 }),
            "--", "sh", "-c", "echo own > /x/own.txt; no-such-program"},
           &out);
  EXPECT_EQ(st, 127) << out;
  EXPECT_EQ(read_file(tmp_.path() / "own-xchg/own.txt"), "own\n");
  expect_clean();
}

// Disks: a bare one and an empty one as block devices, an ext4 data disk
// formatted on first use, and the store's overlay upper on a disk of its
// own; the second run finds what the first wrote on both.

// The store (read-only, loose cache, a tmpfs overlay on it, a closure
// view that hides one of its paths), xchg and shared, all over fsd's 9P
// on virtio-vsock: no virtio-fs device at all.
TEST_F(Vmlaunch, StoreXchgAndSharedAllOverNinePOnVsock) {
  std::filesystem::create_directories(tmp_.path() / "xchg9p");
  write_file(tmp_.path() / "store/dddddddddddddddddddddddddddddddd-hidden/secret", "not in the closure\n");
  write_file(tmp_.path() / "closure", "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-thing\n");
  std::string script =
      "grep -c ' 9p .*trans=fd' /proc/mounts | sed 's/^/fd-mounts-/'; "
      "grep -q virtiofs /proc/mounts && echo HAS-VIRTIOFS; "
      "cat /nix/store/*-thing/data.txt; "
      "if touch /nix/.ro-store/nope 2>/tmp/err; then echo RO-STORE-WRITABLE; else echo ro-store-refuses; fi; "
      "mkdir /nix/store/cccccccccccccccccccccccccccccccc-new && echo made > /nix/store/cccccccccccccccccccccccccccccccc-new/f "
      "&& ls /nix/store | wc -l | sed 's/^/store-entries-/'; "
      "echo to-xchg > /tmp/xchg/x.txt; echo to-shared > /tmp/shared/s.txt; "
      "dd if=/dev/zero of=/tmp/xchg/big bs=1M count=3 2>/dev/null && echo big-written; "
      "cat /nix/store/dddddddddddddddddddddddddddddddd-hidden/secret 2>/dev/null || echo hidden-path-absent";
  std::string out;
  int st = run({spec(script, 0, [&](nlohmann::json& j) {
                 j["store"]["proto"] = "9p";
                 j["store"]["closure"] = (tmp_.path() / "closure").string();
                 j["shares"] = nlohmann::json::array();
                 for (auto [tag, dir] : {std::pair{"xchg", "xchg9p"}, {"shared", "shared"}})
                   j["shares"].push_back({{"tag", tag},
                                          {"source", (tmp_.path() / dir).string()},
                                          {"target", std::string("/tmp/") + tag},
                                          {"proto", "9p"},
                                          {"cache", "never"}});
               })},
               &out);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("fd-mounts-3"), std::string::npos) << out;  // the store's lower layer, xchg, shared
  EXPECT_EQ(out.find("HAS-VIRTIOFS"), std::string::npos) << out;
  EXPECT_NE(out.find("store content"), std::string::npos) << out;
  EXPECT_NE(out.find("ro-store-refuses"), std::string::npos) << out;
  EXPECT_NE(out.find("store-entries-2"), std::string::npos) << out;  // the thing and the new path, not the hidden one
  EXPECT_NE(out.find("hidden-path-absent"), std::string::npos) << out;
  EXPECT_EQ(out.find("not in the closure"), std::string::npos) << out;
  EXPECT_NE(out.find("big-written"), std::string::npos) << out;
  EXPECT_EQ(read_file(tmp_.path() / "xchg9p/x.txt"), "to-xchg\n");
  EXPECT_EQ(std::filesystem::file_size(tmp_.path() / "xchg9p/big"), 3u << 20);
  EXPECT_EQ(read_file(tmp_.path() / "shared/s.txt"), "to-shared\n");
  EXPECT_FALSE(std::filesystem::exists(tmp_.path() / "store/cccccccccccccccccccccccccccccccc-new"));
  expect_clean();
}
TEST_F(Vmlaunch, DisksKeepTheirFileSystemsAcrossRuns) {
  auto disk = tmp_.path() / "disk.qcow2", data = tmp_.path() / "data.img", rw = tmp_.path() / "rw-store.img";
  std::string run1 =
      "cat /sys/block/vda/size /sys/block/vdc/size; "
      "echo written > /tmp/w && dd if=/tmp/w of=/dev/vda bs=512 count=1 2>/dev/null && sync; "
      "grep -q ' /srv/data ext4 rw' /proc/mounts && echo data-is-ext4; echo kept-on-disk > /srv/data/f; "
      "grep -q 'driver *: crc32c-generic' /proc/crypto && echo crc32c-loaded; "
      "mkdir /nix/store/cccccccccccccccccccccccccccccccc-built && echo built > /nix/store/cccccccccccccccccccccccccccccccc-built/out";
  std::string run2 = "cat /srv/data/f; cat /nix/store/cccccccccccccccccccccccccccccccc-built/out; ls /nix/store | wc -l | sed 's/^/store-entries-/'; "
                     "grep -o '^/dev/[sv]d[a-z] /srv/data' /proc/mounts";
  auto edit = [&](nlohmann::json& j) {
    j["disks"] = nlohmann::json::array(
        {{{"file", disk.string()}, {"size", 64}},
         {{"file", data.string()}, {"size", 64}, {"fsType", "ext4"}, {"mountPoint", "/srv/data"}, {"label", "data"}, {"autoFormat", true}}});
    j["emptyDisks"] = nlohmann::json::array({32});
    j["store"]["writable"] = "disk";
    j["store"]["disk"] = {{"file", rw.string()}, {"size", 64}};
  };
  std::string out;
  int st = run({spec(run1, 0, edit)}, &out);
  EXPECT_EQ(st, 0) << out;
  // 64 MiB and 32 MiB, in 512-byte sectors (the serial console ends lines with \r\n)
  EXPECT_NE(out.find("131072\r\n65536"), std::string::npos) << out;
  EXPECT_NE(out.find("data-is-ext4"), std::string::npos) << out;
  EXPECT_NE(out.find("vmlaunch: formatted " + data.string() + " as ext4"), std::string::npos) << out;
  // ext4's soft dependency came along (without it: "EXT4-fs: Cannot load crc32c driver").
  EXPECT_NE(out.find("crc32c-loaded"), std::string::npos) << out;
  ASSERT_TRUE(std::filesystem::exists(disk));  // created as qcow2, and kept
  EXPECT_EQ(read_file(disk).substr(0, 4), std::string("QFI\xfb", 4));
  expect_clean();  // the empty disk went with the temporary directory

  // The same disks again, on virtio-scsi and then IDE (diskInterface),
  // each found by its WWN (the kernel names SCSI disks in no fixed order).
  for (const char* via : {"scsi", "ide"}) {
    SCOPED_TRACE(via);
    st = run({spec(run2, 0, [&](nlohmann::json& j) {
               edit(j);
               j["diskInterface"] = via;
             })},
             &out);
    EXPECT_EQ(st, 0) << out;
    EXPECT_NE(out.find("kept-on-disk"), std::string::npos) << out;
    EXPECT_NE(out.find("built"), std::string::npos) << out;  // the store path from the first run
    EXPECT_NE(out.find("store-entries-2"), std::string::npos) << out;
    EXPECT_NE(out.find("/dev/sd"), std::string::npos) << out;  // mounted /srv/data from an sd disk
    EXPECT_EQ(out.find("vmlaunch: formatted"), std::string::npos) << "a disk with a file system was formatted again\n" << out;
  }
  EXPECT_FALSE(std::filesystem::exists(tmp_.path() / "store/cccccccccccccccccccccccccccccccc-built"));
  expect_clean();
}

// A loopback TCP listener on a free port.
int listen_loopback(uint16_t* port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 4) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    throw std::runtime_error("cannot listen on loopback");
  *port = ntohs(a.sin_port);
  return fd;
}

TEST_F(Vmlaunch, UserNetworkAndPortForwardsBothWays) {
  // guest -> host: a host listener the guest reaches at 10.0.2.100:80.
  uint16_t to_host = 0, from_host = 0, net_opts_port = 0;
  int listener = listen_loopback(&to_host);
  ::close(listen_loopback(&from_host));  // a free port for the host -> guest forward
  ::close(listen_loopback(&net_opts_port));  // and one for QEMU_NET_OPTS's, to the guest's port 22
  std::atomic<bool> guest_is_up = false;
  std::thread host_side([&] {
    pollfd p{listener, POLLIN, 0};
    if (::poll(&p, 1, 120000) == 1) {
      int c = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      (void)!::write(c, "hello-from-host\n", 16);
      ::close(c);
    }
    guest_is_up = true;
  });
  nlohmann::json j = nlohmann::json::parse(read_file(spec(
      "ip addr show eth0; ip route; nc 10.0.2.100 80 </dev/null | sed 's/^/guest-got-/'; "
      "echo hello-from-guest | nc -l -p 8000 && echo guest-served; echo hello-on-22 | nc -l -p 22 && echo guest-served-22")));
  j["network"] = "user";
  auto forward = [](const char* from, uint16_t host_port, const char* guest_address, uint16_t guest_port) {
    nlohmann::json f = nlohmann::json::object();
    f["from"] = from;
    f["proto"] = "tcp";
    f["host"] = {{"address", "127.0.0.1"}, {"port", host_port}};
    f["guest"] = {{"address", guest_address}, {"port", guest_port}};
    return f;
  };
  j["forwardPorts"] = nlohmann::json::array({forward("host", from_host, "", 8000), forward("guest", to_host, "10.0.2.100", 80)});
  write_file(tmp_.path() / "net.json", j.dump());
  std::string out;
  // The QEMU side of the forwards, as planned.
  int st = run({"--dry-run", (tmp_.path() / "net.json").string()}, &out);
  EXPECT_EQ(st, 0);
  EXPECT_NE(out.find("user,id=n0,hostfwd=tcp:127.0.0.1:" + std::to_string(from_host) + "-:8000,guestfwd=tcp:10.0.2.100:80-cmd:"),
            std::string::npos) << out;
  EXPECT_NE(out.find("--relay-to '127.0.0.1:" + std::to_string(to_host) + "'"), std::string::npos) << out;

  // The run: host -> guest connects until the guest listens (QEMU accepts
  // on the host side at once, and closes when the guest refuses). It starts
  // once the guest's network is up: before that, QEMU's SYNs to the guest
  // are lost and retried with back-off, for many seconds.
  std::string from_guest, from_guest_22;
  std::atomic<bool> running = true;
  std::thread client([&] {
    while (running && !guest_is_up) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    for (auto [port, got] : {std::pair{from_host, &from_guest}, std::pair{net_opts_port, &from_guest_22}}) {
      while (running && got->empty()) {
        int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
          char b[64];
          ssize_t n = ::read(c, b, sizeof b);
          if (n > 0) got->assign(b, static_cast<size_t>(n));
        }
        ::close(c);
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    }
  });
  // QEMU_NET_OPTS, as qemu-vm.nix users set it for ssh.
  ::setenv("QEMU_NET_OPTS", ("hostfwd=tcp:127.0.0.1:" + std::to_string(net_opts_port) + "-:22").c_str(), 1);
  st = run({(tmp_.path() / "net.json").string()}, &out);
  ::unsetenv("QEMU_NET_OPTS");
  running = false;
  client.join();
  host_side.join();
  ::close(listener);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("inet 10.0.2.15/24"), std::string::npos) << out;
  EXPECT_NE(out.find("default via 10.0.2.2 dev eth0"), std::string::npos) << out;
  EXPECT_NE(out.find("guest-got-hello-from-host"), std::string::npos) << out;
  EXPECT_NE(out.find("guest-served"), std::string::npos) << out;
  EXPECT_EQ(from_guest, "hello-from-guest\n");
  EXPECT_NE(out.find("guest-served-22"), std::string::npos) << out;
  EXPECT_EQ(from_guest_22, "hello-on-22\n");
  expect_clean();
}

// store.image: the store as an erofs or squashfs image on a read-only
// disk, made on the host and cached by what the store holds; a program
// from it runs, and the overlay still takes writes.
TEST_F(Vmlaunch, StoreImagesReplaceTheShare) {
  write_file(tmp_.path() / "store/dddddddddddddddddddddddddddddddd-hello/bin/hello", "#!/bin/sh\necho hello-from-the-image\n");
  fs::permissions(tmp_.path() / "store/dddddddddddddddddddddddddddddddd-hello/bin/hello", fs::perms::owner_all);
  fs::path cache = tmp_.path() / "cache";
  auto images = [&] {
    size_t n = 0;
    for (auto& e : fs::directory_iterator(cache / "store-images")) n += e.path().filename().string().find(".tmp.") == std::string::npos;
    return n;
  };
  std::string command = "/nix/store/*-hello/bin/hello; grep ' /nix/.ro-store ' /proc/mounts | cut -d' ' -f3,4; "
                        "touch /nix/store/new && echo overlay-takes-writes";
  for (const char* kind : {"erofs", "squashfs", "erofs"}) {
    SCOPED_TRACE(kind);
    std::string path = spec(command, 0, [&](nlohmann::json& j) { j["store"]["image"] = kind; });
    ::setenv("FSD_CACHE", cache.c_str(), 1);  // the images go with the test
    std::string out;
    int st = run({path}, &out);
    ::unsetenv("FSD_CACHE");
    EXPECT_EQ(st, 0) << out;
    EXPECT_NE(out.find("hello-from-the-image"), std::string::npos) << out;
    EXPECT_NE(out.find(std::string(kind) + " ro"), std::string::npos) << out;
    EXPECT_NE(out.find("overlay-takes-writes"), std::string::npos) << out;
  }
  EXPECT_EQ(images(), 2u) << "the second erofs run made a new image of an unchanged store";
  // An image of a closure (store.closure, squashfs): only its paths.
  write_file(tmp_.path() / "closure", "/nix/store/dddddddddddddddddddddddddddddddd-hello\n");
  std::string path = spec("/nix/store/*-hello/bin/hello; ls /nix/store | tr '\\n' ' '; echo", 0, [&](nlohmann::json& j) {
    j["store"]["image"] = "squashfs";
    j["store"]["closure"] = (tmp_.path() / "closure").string();
  });
  ::setenv("FSD_CACHE", cache.c_str(), 1);
  std::string out;
  int st = run({path}, &out);
  ::unsetenv("FSD_CACHE");
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("hello-from-the-image"), std::string::npos) << out;
  EXPECT_NE(out.find("\ndddddddddddddddddddddddddddddddd-hello \r"), std::string::npos) << out;  // and nothing else
  EXPECT_EQ(images(), 3u);
  expect_clean();
}

// Two vmlaunch processes, two guests on vlan 1: one listens, the other
// sends over TCP, and both exit 0.
TEST_F(Vmlaunch, TwoGuestsTalkOverAVlan) {
  auto vlan = [](int host) {
    return [host](nlohmann::json& j) {
      j["vlans"] = {1};
      j["vlanHost"] = host;
    };
  };
  std::string listener = spec("ip -4 addr show | grep -o '192.168.1.1/24' && nc -l -p 5000 > /tmp/got && cat /tmp/got", 240, vlan(1));
  std::string sender = spec("for i in $(seq 120); do echo hello-over-vlan | nc -w 5 192.168.1.1 5000 && exit 0; sleep 1; done; exit 1",
                            240, vlan(2));
  auto log_a = tmp_.path() / "vlan-a.log", log_b = tmp_.path() / "vlan-b.log";
  ChildProcess a({VMLAUNCH_BINARY, listener}, log_a);
  ChildProcess b({VMLAUNCH_BINARY, sender}, log_b);
  auto st_b = b.wait(std::chrono::seconds(300));
  auto st_a = a.wait(std::chrono::seconds(60));
  EXPECT_EQ(st_a.value_or(-1), 0) << read_file(log_a);
  EXPECT_EQ(st_b.value_or(-1), 0) << read_file(log_b);
  EXPECT_NE(read_file(log_a).find("192.168.1.1/24"), std::string::npos) << read_file(log_a);
  EXPECT_NE(read_file(log_a).find("hello-over-vlan"), std::string::npos) << read_file(log_a);
  expect_clean();
}

// A small NixOS-style system toplevel in the test's store: busybox as
// sw/bin (with a "bash" that marks what it ran), an etc/ with os-release
// and passwd, the guest kernel and its modules, and an init that reports
// what it sees and powers off.
std::string synthetic_system(const fs::path& store) {
  const std::string name = "ssssssssssssssssssssssssssssssss-nixos-system-synth";
  fs::path top = store / name;
  std::string in_guest = "/nix/store/" + name;
  fs::create_directories(top / "sw/bin");
  fs::copy_file("/bin/busybox", top / "sw/bin/busybox");
  for (const char* applet : {"sh", "env", "cat", "echo", "ls", "readlink", "id", "poweroff", "sync", "sleep", "mkdir", "wc", "grep", "sed"})
    fs::create_symlink("busybox", top / "sw/bin" / applet);
  // A stand-in for Nix's nix-store (store.registration): it keeps what it
  // is fed where Nix keeps its database, and says how it was called.
  write_file(top / "sw/bin/nix-store", "#!" + in_guest + "/sw/bin/sh\n"
                                       "mkdir -p /nix/var/nix/db && cat > /nix/var/nix/db/registration\n"
                                       "cat /nix/var/nix/db/registration > /tmp/shared/registration\n"
                                       "echo \"$0 $*\" > /tmp/shared/nix-store-args\n");
  fs::permissions(top / "sw/bin/nix-store", fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read |
                                                fs::perms::group_exec | fs::perms::others_exec);
  write_file(top / "sw/bin/bash", "#!" + in_guest + "/sw/bin/sh\nexport RUN_BY=synthetic-bash\nexec " + in_guest +
                                      "/sw/bin/sh \"$@\"\n");
  fs::permissions(top / "sw/bin/bash", fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read |
                                           fs::perms::group_exec | fs::perms::others_exec);
  write_file(top / "kernel-params", "synthetic.param=from-system\n");
  write_file(top / "etc/os-release", "NAME=Synthetic\nID=synthetic\nPRETTY_NAME=\"Synthetic test system\"\n");
  write_file(top / "etc/passwd", "root:x:0:0:root:/root:" + in_guest + "/sw/bin/sh\n");
  std::string kdir = guest_kernel_dir();
  fs::create_symlink(kdir + "/vmlinuz", top / "kernel");
  fs::create_directories(top / "kernel-modules/lib/modules");
  for (auto& e : fs::directory_iterator(kdir + "/lib/modules"))
    fs::create_symlink(e.path(), top / "kernel-modules/lib/modules" / e.path().filename());
  write_file(top / "init", "#!" + in_guest + "/sw/bin/sh\n"
                           "export PATH=" + in_guest + "/sw/bin\n"
                           "echo \"synthetic-init: pid $$\"\n"
                           "cat /nix/store/*-thing/data.txt\n"
                           "[ -d /tmp/xchg ] && echo synthetic-init: xchg is there\n"
                           "echo booted-by-synthetic-init > /tmp/shared/booted.txt\n"
                           "echo \"synthetic-init: root had: $(cat /state 2>/dev/null)\"; echo kept-on-root > /state\n"
                           "echo \"synthetic-init: cmdline: $(cat /proc/cmdline)\"\n"
                           "[ -s /nix/var/nix/db/registration ] && echo synthetic-init: the store is registered\n"
                           "sync; poweroff -f\n");
  fs::permissions(top / "init", fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read |
                                    fs::perms::group_exec | fs::perms::others_exec);
  return top.string();
}

// --system: exec mode runs the command in the system's context (its PATH,
// /etc, /run/current-system, its bash); boot mode runs its init as PID 1
// on a root put together from the store and the shares.
TEST_F(Vmlaunch, SystemExecAndBoot) {
  std::string top = synthetic_system(tmp_.path() / "store");
  std::string out;
  // No kernel in the spec: the system's.
  auto no_kernel = [](nlohmann::json& j) { j.erase("kernel"); };
  std::string in_guest = "/nix/store/" + fs::path(top).filename().string();
  // A closureInfo (--registration): its registration loaded before the command.
  std::string registration = in_guest + "\nsha256:" + std::string(52, '0') + "\n4096\n\n0\n";
  write_file(tmp_.path() / "closure-info/registration", registration);
  int st = run({"--system", top, "--registration", (tmp_.path() / "closure-info").string(), spec("", 0, no_kernel), "--",
                "echo $PATH; cat /etc/os-release; readlink /run/current-system; echo by=$RUN_BY; "
                "readlink /bin/sh; ls /lib/modules; id -un; echo home=$HOME; "
                "echo \"db: $(cat /nix/var/nix/db/registration)\"; exit 5"},
               &out);
  EXPECT_EQ(st, 5) << out;
  EXPECT_NE(out.find("db: " + in_guest + "\r\nsha256:"), std::string::npos) << out;
  EXPECT_EQ(read_file(tmp_.path() / "shared/nix-store-args"), in_guest + "/sw/bin/nix-store --load-db\n");
  EXPECT_NE(out.find("fsd-guest-init: loaded the store's registration"), std::string::npos) << out;
  EXPECT_NE(out.find("/run/current-system/sw/bin\r\n"), std::string::npos) << out;
  EXPECT_NE(out.find("PRETTY_NAME=\"Synthetic test system\""), std::string::npos) << out;
  EXPECT_NE(out.find(in_guest + "\r\n"), std::string::npos) << out;
  EXPECT_NE(out.find("by=synthetic-bash"), std::string::npos) << out;
  EXPECT_NE(out.find(in_guest + "/sw/bin/sh\r\n"), std::string::npos) << out;
  EXPECT_NE(out.find(fs::path(*fs::directory_iterator(guest_kernel_dir() + "/lib/modules")).filename().string()),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("root\r\n"), std::string::npos) << out;  // the system's passwd
  EXPECT_NE(out.find("home=/root"), std::string::npos) << out;
  expect_clean();

  // Boot: no command, so the system's init. With store.registration a
  // list of paths, which vmlaunch registers: loaded into the new root's
  // database before the system's init runs.
  write_file(tmp_.path() / "paths", "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-thing\n" + in_guest + "\n");
  std::string boot_registered = spec("", 0, [&](nlohmann::json& j) {
    no_kernel(j);
    j.erase("command");
    j["system"] = top;
    j["console"] = "serial";
    j["store"]["registration"] = (tmp_.path() / "paths").string();
  });
  fs::remove(tmp_.path() / "shared/nix-store-args");
  st = run({boot_registered}, &out);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("vmlaunch: registered 2 store paths"), std::string::npos) << out;
  EXPECT_NE(out.find("synthetic-init: the store is registered"), std::string::npos) << out;
  EXPECT_EQ(read_file(tmp_.path() / "shared/nix-store-args"), in_guest + "/sw/bin/nix-store --load-db\n");
  {
    // The thing (no references), then the system, whose bash script names itself.
    std::string reg = read_file(tmp_.path() / "shared/registration");
    EXPECT_TRUE(reg.starts_with("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-thing\nsha256:")) << reg;
    EXPECT_NE(reg.find("\n\n0\n" + in_guest + "\nsha256:"), std::string::npos) << reg;
    EXPECT_TRUE(reg.ends_with("\n\n1\n" + in_guest + "\n")) << reg;
  }
  std::string boot = spec("", 0, [&](nlohmann::json& j) {
    no_kernel(j);
    j.erase("command");
    j["system"] = top;
    j["console"] = "serial";
  });
  EXPECT_NE(out.find("fsd-guest-init: starting " + in_guest + "/init"), std::string::npos) << out;
  EXPECT_NE(out.find("synthetic-init: pid 1"), std::string::npos) << out;
  EXPECT_NE(out.find("store content"), std::string::npos) << out;
  EXPECT_NE(out.find("synthetic-init: xchg is there"), std::string::npos) << out;
  EXPECT_EQ(read_file(tmp_.path() / "shared/booted.txt"), "booted-by-synthetic-init\n");
  EXPECT_NE(out.find("synthetic-init: root had: \r\n"), std::string::npos) << out;  // a tmpfs root: nothing
  {
    size_t at = out.find("synthetic-init: cmdline: ");
    ASSERT_NE(at, std::string::npos) << out;
    std::string line = out.substr(at, out.find('\n', at) - at);
    EXPECT_NE(line.find("synthetic.param=from-system"), std::string::npos) << line;  // the system's kernel-params
  }
  // On a root disk ($NIX_DISK_IMAGE, made and formatted on first use), the
  // second boot finds what the first wrote.
  ::setenv("NIX_DISK_IMAGE", (tmp_.path() / "root.img").c_str(), 1);
  for (const char* had : {"", "kept-on-root"}) {
    st = run({boot}, &out);
    EXPECT_EQ(st, 0) << out;
    EXPECT_EQ(out.find("synthetic-init: the store is registered"), std::string::npos) << out;  // none asked for
    EXPECT_NE(out.find("synthetic-init: root had: " + std::string(had) + "\r\n"), std::string::npos) << out;
  }
  // A command (exec mode) on the same root disk runs on it, in the
  // system's context, and what it writes stays on the disk.
  st = run({"--system", top, spec("", 0, no_kernel), "--",
            "echo \"state=$(cat /state)\"; readlink /run/current-system; grep -c Synthetic /etc/os-release; pwd; "
            "echo exec-on-root > /state"},
           &out);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("state=kept-on-root\r\n"), std::string::npos) << out;
  EXPECT_NE(out.find(in_guest + "\r\n"), std::string::npos) << out;
  EXPECT_NE(out.find("/tmp/xchg\r\n"), std::string::npos) << out;
  {
    auto log = tmp_.path() / "debugfs.log";
    ChildProcess debugfs({"/sbin/debugfs", "-R", "cat /state", (tmp_.path() / "root.img").string()}, log);
    EXPECT_EQ(debugfs.wait(std::chrono::seconds(30)), 0) << read_file(log);
    EXPECT_NE(read_file(log).find("exec-on-root"), std::string::npos) << read_file(log);
  }
  ::unsetenv("NIX_DISK_IMAGE");
  EXPECT_TRUE(fs::exists(tmp_.path() / "root.img"));
  // A command with systemMode boot is refused before anything starts.
  st = run({"--system-mode", "boot", boot, "--", "true"}, &out);
  EXPECT_EQ(st, 2) << out;
  EXPECT_NE(out.find("systemMode boot runs the system's own init; a command needs systemMode exec"), std::string::npos) << out;
  expect_clean();
}

// store.registration with the real Nix: the system's nix-store is the
// host's (Debian's nix-bin, run in the guest from a read-only share of the
// host's /usr), so the guest's database is what Nix itself loaded from the
// registration vmlaunch computed, and Nix checks every registered path
// against the files the guest sees over fsd.
TEST_F(Vmlaunch, TheGuestsNixLoadsTheRegistrationAndVerifiesThePaths) {
  if (!fs::is_regular_file("/usr/bin/nix") || !fs::exists("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"))
    GTEST_SKIP() << "no Debian nix-bin to run in the guest (scripts/setup installs it)";
  std::string top = synthetic_system(tmp_.path() / "store");
  std::string in_guest = "/nix/store/" + fs::path(top).filename().string();
  const std::string thing = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-thing";
  fs::remove(fs::path(top) / "sw/bin/nix-store");
  write_file(fs::path(top) / "sw/bin/nix-store",
             "#!" + in_guest + "/sw/bin/sh\n"
             "exec /host/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path "
             "/host/usr/lib/x86_64-linux-gnu:/host/usr/lib/nix --argv0 nix-store /host/usr/bin/nix \"$@\"\n");
  fs::permissions(fs::path(top) / "sw/bin/nix-store", fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read |
                                                          fs::perms::group_exec | fs::perms::others_exec);
  write_file(tmp_.path() / "paths", thing + "\n" + in_guest + "\n");
  std::string out;
  int st = run({spec("nix-store --check-validity " + thing + " " + in_guest + " 2>/dev/null && echo both-valid; "
                     "echo \"refs: $(nix-store -q --references " + in_guest + " 2>/dev/null)\"; "
                     "echo \"requisites: $(nix-store -q --requisites " + in_guest + " 2>/dev/null | wc -l)\"; "
                     "nix-store --verify --check-contents 2>&1 | grep -c 'was modified' | sed 's/^/modified-before-/'; "
                     "echo changed > " + thing + "/data.txt; "
                     "nix-store --verify --check-contents 2>&1 | grep -c 'was modified' | sed 's/^/modified-after-/'",
                     0,
                     [&](nlohmann::json& j) {
                       j.erase("kernel");
                       j["system"] = top;
                       j["store"]["registration"] = (tmp_.path() / "paths").string();
                       j["shares"] = nlohmann::json::array(
                           {{{"tag", "hostusr"}, {"source", "/usr"}, {"target", "/host/usr"}, {"readOnly", true}}});
                     })},
               &out);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("fsd-guest-init: loaded the store's registration"), std::string::npos) << out;
  EXPECT_NE(out.find("both-valid\r\n"), std::string::npos) << out;
  EXPECT_NE(out.find("refs: " + in_guest + "\r\n"), std::string::npos) << out;  // its bash script names itself
  EXPECT_NE(out.find("requisites: 1\r\n"), std::string::npos) << out;
  EXPECT_NE(out.find("modified-before-0\r\n"), std::string::npos) << out;
  EXPECT_NE(out.find("modified-after-1\r\n"), std::string::npos) << out;  // Nix's own check sees a changed path
  expect_clean();
}

// "arch": "aarch64": Debian's arm64 kernel on QEMU's virt machine (TCG),
// with the cross-built guest init and Debian's arm64 busybox, runs a
// command over fsd's shares: the store on 9P over vsock, xchg on virtio-fs.
// With console "stage1", the init's steps show and the kernel's log does not.
TEST_F(Vmlaunch, AnAarch64GuestRunsACommandOverFsdsShares) {
  std::string kdir = guest_kernel_dir("kernel-arm64");
  int st = 0;
  run_command("command -v qemu-system-aarch64 >/dev/null", &st);
  if (kdir.empty() || st != 0 || !fs::exists(fs::path(VMLAUNCH_BINARY).parent_path() / "fsd-guest-init-aarch64"))
    GTEST_SKIP() << "no arm64 guest kernel, qemu-system-aarch64 or cross-built init (scripts/setup installs them)";
  std::string out;
  st = run({spec("uname -m; cat /nix/store/*-thing/data.txt; grep -c 'trans=fd' /proc/mounts; "
                 "echo from-aarch64 > /tmp/xchg/out; cat /tmp/xchg/out; exit 9",
                 0,
                 [&](nlohmann::json& j) {
                   j["arch"] = "aarch64";
                   j["kernel"] = kdir + "/vmlinuz";
                   j["store"]["proto"] = "9p";
                   j.erase("shares");  // QEMU's 9p: not fsd's
                   j["console"] = "stage1";  // and the init tells its steps
                 })},
           &out);
  EXPECT_EQ(st, 9) << out;
  EXPECT_NE(out.find("fsd-guest-init: loaded module 9pnet_fd.ko"), std::string::npos) << out;
  EXPECT_NE(out.find("fsd-guest-init: mounted 9p store on /nix/.ro-store"), std::string::npos) << out;
  EXPECT_NE(out.find("fsd-guest-init: mounted virtiofs xchg on /tmp/xchg"), std::string::npos) << out;
  EXPECT_EQ(out.find("] Booting Linux"), std::string::npos) << out;  // not the kernel's log
  EXPECT_NE(out.find("aarch64\r\n"), std::string::npos) << out;
  EXPECT_NE(out.find("store content"), std::string::npos) << out;
  EXPECT_NE(out.find("\n1\r\n"), std::string::npos) << out;  // the store's 9P mount
  EXPECT_NE(out.find("from-aarch64\r\n"), std::string::npos) << out;
  expect_clean();
}

// A Guix-shaped system: its parameters name the kernel (in the store, with
// its modules) and its arguments; its boot script runs as PID 1, with the
// store at /gnu/store and told where the system is, as Guix's VM script does.
TEST_F(Vmlaunch, AGuixSystemBoots) {
  fs::path store = tmp_.path() / "store";
  const std::string busybox = "/gnu/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-busybox";
  const std::string sys = "/gnu/store/gggggggggggggggggggggggggggggggg-system";
  const std::string linux = "/gnu/store/kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk-linux-libre";
  auto host = [&](const std::string& in_guest) { return store / in_guest.substr(std::string("/gnu/store/").size()); };
  fs::create_directories(host(busybox) / "bin");
  fs::copy_file("/bin/busybox", host(busybox) / "bin/busybox");
  for (const char* applet : {"sh", "cat", "ls", "grep", "poweroff", "sync"}) fs::create_symlink("busybox", host(busybox) / "bin" / applet);
  fs::create_directories(host(linux) / "lib/modules");
  fs::create_symlink(guest_kernel_dir() + "/vmlinuz", host(linux) / "bzImage");
  for (auto& e : fs::directory_iterator(guest_kernel_dir() + "/lib/modules"))
    fs::create_symlink(e.path(), host(linux) / "lib/modules" / e.path().filename());
  write_file(host(sys) / "parameters", "(boot-parameters (version 0) (label \"GNU with Linux-Libre\")\n"
                                       "  (root-device \"my-root\")\n"
                                       "  (kernel \"" + linux + "/bzImage\")\n"
                                       "  (kernel-arguments (\"guix.synthetic=1\"))\n"
                                       "  (initrd \"/gnu/store/iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii-raw-initrd/initrd.cpio.gz\")\n"
                                       "  (store (device #f) (mount-point \"/gnu/store\") (directory-prefix #f)))\n");
  write_file(host(sys) / "boot", "#!" + busybox + "/bin/sh\n"
                                 "export PATH=" + busybox + "/bin\n"
                                 "echo \"guix-boot: pid $$\"\n"
                                 "echo \"guix-boot: cmdline: $(cat /proc/cmdline)\"\n"
                                 "cat /gnu/store/*-thing/data.txt\n"
                                 "echo booted-guix > /tmp/shared/guix.txt\n"
                                 "sync; poweroff -f\n");
  fs::permissions(host(sys) / "boot", fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                          fs::perms::others_read | fs::perms::others_exec);
  std::string out;
  int st = run({spec("", 0, [&](nlohmann::json& j) {
                 j.erase("kernel");
                 j.erase("command");
                 j["system"] = host(sys).string();
                 j["store"]["mountPoint"] = "/gnu/store";
                 j["console"] = "serial";
               })},
               &out);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("guix-boot: pid 1"), std::string::npos) << out;
  EXPECT_NE(out.find("store content"), std::string::npos) << out;
  EXPECT_EQ(read_file(tmp_.path() / "shared/guix.txt"), "booted-guix\n");
  size_t at = out.find("guix-boot: cmdline: ");
  ASSERT_NE(at, std::string::npos) << out;
  std::string line = out.substr(at, out.find('\n', at) - at);
  EXPECT_NE(line.find("--root=my-root gnu.system=" + sys + " gnu.load=" + sys + "/boot guix.synthetic=1"), std::string::npos)
      << line;
  expect_clean();
}

// firmware uefi with bootLoader: OVMF boots a disk the test makes (an EFI
// system partition with a standalone GRUB, which loads the guest kernel and
// a small initramfs from it), with the VM's own variables file, made from
// OVMF's template on the first run and kept for the next.
TEST_F(Vmlaunch, AUefiDiskBootsThroughOvmf) {
  fs::path w = tmp_.path() / "esp";
  fs::create_directories(w / "initrd/bin");
  fs::copy_file("/bin/busybox", w / "initrd/bin/busybox");
  write_file(w / "initrd/init", "#!/bin/busybox sh\n/bin/busybox echo booted-through-uefi\n/bin/busybox poweroff -f\n");
  fs::permissions(w / "initrd/init", fs::perms::owner_all);
  write_file(w / "grub.cfg", "set timeout=0\nlinux ($root)/vmlinuz console=ttyS0 panic=-1 quiet\ninitrd ($root)/initrd.gz\nboot\n");
  write_file(w / "embed.cfg", "search --no-floppy --file --set=root /vmlinuz\nconfigfile ($root)/grub.cfg\n");
  std::string esp = (w / "esp.img").string();
  std::string script = "set -e; cd '" + w.string() + "'; (cd initrd && find . | cpio -o -H newc --quiet | gzip > ../initrd.gz); "
                       "grub-mkstandalone -O x86_64-efi -o BOOTX64.EFI --modules='fat search linux normal configfile' "
                       "boot/grub/grub.cfg=embed.cfg; truncate -s 32M esp.img; mformat -i esp.img ::; "
                       "mmd -i esp.img ::/EFI ::/EFI/BOOT; mcopy -i esp.img BOOTX64.EFI ::/EFI/BOOT/; "
                       "mcopy -i esp.img '" + guest_kernel_dir() + "/vmlinuz' ::/vmlinuz; mcopy -i esp.img initrd.gz grub.cfg ::/";
  auto log = tmp_.path() / "esp.log";
  ChildProcess make({"/bin/sh", "-c", script}, log);
  ASSERT_EQ(make.wait(std::chrono::seconds(120)), 0) << read_file(log) << "(scripts/setup installs grub-efi-amd64-bin and mtools)";
  fs::path vars = tmp_.path() / "vm-efi-vars.fd";
  auto uefi = spec("", 0, [&](nlohmann::json& j) {
    j.erase("kernel");
    j.erase("command");
    j["firmware"] = "uefi";
    j["efiVars"] = vars.string();
    j["bootLoader"] = true;
    j["console"] = "serial";
    j["disks"] = nlohmann::json::array({{{"file", esp}}});
  });
  for (bool first : {true, false}) {
    SCOPED_TRACE(first ? "first run" : "second run");
    std::string out;
    int st = run({uefi}, &out);
    EXPECT_EQ(st, 0) << out;
    EXPECT_NE(out.find("booted-through-uefi"), std::string::npos) << out;
    EXPECT_EQ(out.find("made the UEFI variables file") != std::string::npos, first) << out;
    EXPECT_EQ(fs::file_size(vars), fs::file_size("/usr/share/OVMF/OVMF_VARS_4M.fd"));
  }
  expect_clean();
}

TEST_F(Vmlaunch, WithoutACommandTheConsoleIsAShell) {
  nlohmann::json j = nlohmann::json::parse(read_file(spec("true")));
  j.erase("command");
  write_file(tmp_.path() / "shell.json", j.dump());
  int in[2];
  ASSERT_EQ(::pipe2(in, O_CLOEXEC), 0);
  auto log = tmp_.path() / "shell.log";
  ChildProcess p({VMLAUNCH_BINARY, (tmp_.path() / "shell.json").string()}, log, in[0]);
  ::close(in[0]);
  // Type only once the shell prompts: the serial line drops what comes before.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (read_file(log).find("/tmp/xchg # ") == std::string::npos && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::string typed = "echo typed-$((6*7)); exit 4\n";
  EXPECT_EQ(::write(in[1], typed.data(), typed.size()), static_cast<ssize_t>(typed.size()));
  auto st = p.wait(std::chrono::seconds(60));
  ::close(in[1]);
  std::string out = read_file(log);
  EXPECT_EQ(st, 4) << out;  // the shell's status
  EXPECT_NE(out.find("typed-42"), std::string::npos) << out;
  expect_clean();
}

TEST_F(Vmlaunch, EveryWayARunEnds) {
  std::string out;
  // timeout
  int st = run({spec("sleep 600", 3)}, &out);
  EXPECT_EQ(st, 124) << out;
  EXPECT_NE(out.find("timeout after 3 s"), std::string::npos) << out;
  expect_clean();

  // fsd killed, QEMU killed, SIGINT: start a long run and end it from outside.
  for (std::string how : {"fsd", "qemu", "sigint", "sigterm"}) {
    SCOPED_TRACE(how);
    auto log = tmp_.path() / ("kill-" + how + ".log");
    // A guest agent's socket at a path of the spec's: QEMU makes it, and it goes however the run ends.
    fs::path agent = tmp_.path() / ("qga-" + how + ".sock");
    std::vector<std::string> argv{VMLAUNCH_BINARY, spec("echo up; sleep 600", 0, [&](nlohmann::json& j) { j["guestAgent"] = agent.string(); })};
    ChildProcess p(argv, log);
    // wait until the guest is up (its command printed)
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (read_file(log).find("up") == std::string::npos && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_NE(read_file(log).find("up"), std::string::npos) << read_file(log);
    pid_t vm = p.pid();
    std::vector<pid_t> kids = children_of(vm);
    pid_t fsd = 0, qemu = 0;
    for (pid_t k : kids) {
      if (comm(k) == "fsd") fsd = k;
      if (comm(k).starts_with("qemu")) qemu = k;
    }
    ASSERT_TRUE(fsd && qemu) << "children: " << kids.size();
    EXPECT_TRUE(fs::exists(agent)) << agent;
    int expect = 0;
    if (how == "fsd") ::kill(fsd, SIGKILL), expect = 125;
    if (how == "qemu") ::kill(qemu, SIGKILL), expect = 126;
    if (how == "sigint") ::kill(vm, SIGINT), expect = 128 + SIGINT;
    if (how == "sigterm") ::kill(vm, SIGTERM), expect = 128 + SIGTERM;
    auto status = p.wait(std::chrono::seconds(60));
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(*status, expect) << read_file(log);
    if (how == "sigterm") {  // through QMP and the guest's power button, not a kill
      EXPECT_NE(read_file(log).find("fsd-guest-init: power button: stopping the command"), std::string::npos) << read_file(log);
      EXPECT_NE(read_file(log).find("the guest powered off as asked"), std::string::npos) << read_file(log);
    }
    // no process outlives it
    EXPECT_NE(::kill(fsd, 0), 0);
    EXPECT_NE(::kill(qemu, 0), 0);
    EXPECT_FALSE(fs::exists(agent)) << agent;
    expect_clean();
  }
}

// The dry run shows what arch, console stage1 and store.registration make
// of the command lines and the mount plan, and --print-spec their values;
// KVM for a guest of another architecture is refused by name.
TEST_F(Vmlaunch, TheDryRunShowsArchStage1AndTheRegistration) {
  std::string top = synthetic_system(tmp_.path() / "store");
  std::string in_guest = "/nix/store/" + fs::path(top).filename().string();
  write_file(tmp_.path() / "paths", in_guest + "\n");
  std::string out;
  std::string s = spec("true", 0, [&](nlohmann::json& j) {
    j["arch"] = "aarch64";
    j["console"] = "stage1";
    j["system"] = top;
    j["store"]["registration"] = (tmp_.path() / "paths").string();
  });
  int st = run({"--dry-run", s}, &out);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("qemu-system-aarch64 -name guest=vm -machine virt -accel tcg"), std::string::npos) << out;
  EXPECT_NE(out.find("-cpu max"), std::string::npos) << out;
  EXPECT_NE(out.find("console=ttyAMA0 panic=-1 quiet loglevel=1"), std::string::npos) << out;
  EXPECT_NE(out.find("then: " + in_guest + "/sw/bin/nix-store --load-db < a registration of the store paths " +
                     (tmp_.path() / "paths").string() + ", before the command"),
            std::string::npos)
      << out;
  st = run({"--print-spec", s}, &out);
  EXPECT_EQ(st, 0) << out;
  auto printed = nlohmann::json::parse(out);
  EXPECT_EQ(printed["arch"], "aarch64");
  EXPECT_EQ(printed["console"], "stage1");
  EXPECT_EQ(printed["qemu"]["binary"], "qemu-system-aarch64");
  EXPECT_EQ(printed["store"]["registration"], (tmp_.path() / "paths").string());
  utsname host{};
  ::uname(&host);
  if (std::string(host.machine) != "aarch64") {
    st = run({"--dry-run", "--accel", "kvm", s}, &out);
    EXPECT_EQ(st, 2) << out;
    EXPECT_NE(out.find("accel kvm: KVM runs " + std::string(host.machine) + " guests on this host, and \"arch\" is aarch64"),
              std::string::npos)
        << out;
  }
  expect_clean();
}

TEST_F(Vmlaunch, BadSpecsFailBeforeAnythingStarts) {
  write_file(tmp_.path() / "bad.json", "{\"kernel\": \"/no/kernel\"}");
  std::string out;
  int st = run({(tmp_.path() / "bad.json").string()}, &out);
  EXPECT_EQ(st, 2);
  EXPECT_EQ(out, "vmlaunch: " + (tmp_.path() / "bad.json").string() + ": kernel: \"/no/kernel\" does not exist\n");
  expect_clean();
  st = run({"--dry-run", spec("true")}, &out);
  EXPECT_EQ(st, 0);
  EXPECT_NE(out.find("vhost-user-fs-pci,chardev=fs0,tag=store"), std::string::npos) << out;
  EXPECT_NE(out.find("memory-backend-memfd,id=mem,size=512M,share=on"), std::string::npos) << out;
  EXPECT_NE(out.find("overlay /nix/.ro-store + /nix/.rw-store/upper -> /nix/store (writable)"), std::string::npos) << out;
  EXPECT_NE(out.find("-virtfs local,path="), std::string::npos) << out;
  expect_clean();
}

}  // namespace
}  // namespace fsd::testing
