// vmlaunch end to end, under TCG, in as few boots as the checks allow:
// exit statuses, xchg and shared seen from the host, the store read-only
// underneath but writable through the overlay, a 9p-qemu share; and every
// way a run can end (timeout, fsd killed, QEMU killed, Ctrl-C) with its
// documented status, no processes left and no temporary directory left.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <nlohmann/json.hpp>
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
    ::setenv("TMPDIR", (tmp_.path() / "tmp").c_str(), 1);
    ::setenv("SHARED_DIR", (tmp_.path() / "shared").c_str(), 1);
  }
  void TearDown() override {
    ::unsetenv("TMPDIR");
    ::unsetenv("SHARED_DIR");
  }
  std::string spec(const std::string& command, int timeout = 0) {
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
      "echo guest-says-hello; "
      "echo from-guest > /tmp/xchg/x.txt; echo to-shared > /tmp/shared/s.txt; "
      "cat /nix/store/*-thing/data.txt; "
      "if touch /nix/.ro-store/nope 2>/tmp/err; then echo RO-STORE-WRITABLE; else grep -q 'Read-only' /tmp/err && echo ro-store-refuses; fi; "
      "mkdir /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-new && echo made > /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-new/f && "
      "ls /nix/store | wc -l | sed 's/^/store-entries-/'; "
      "cat /data/hello.txt; exit 3";
  int st = run({spec(script)}, &out);
  EXPECT_EQ(st, 3) << out;
  EXPECT_NE(out.find("guest-says-hello"), std::string::npos) << out;
  EXPECT_NE(out.find("store content"), std::string::npos) << out;
  EXPECT_NE(out.find("ro-store-refuses"), std::string::npos) << out;
  EXPECT_NE(out.find("store-entries-2"), std::string::npos) << out;  // the new path, in the overlay
  EXPECT_NE(out.find("served by QEMU's 9p"), std::string::npos) << out;
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
  // A failing command's status, given on the command line.
  st = run({spec("true"), "--", "/bin/sh", "-c", "no-such-program"}, &out);
  EXPECT_EQ(st, 127) << out;
  expect_clean();
}

TEST_F(Vmlaunch, DisksAndEmptyDisks) {
  auto disk = tmp_.path() / "disk.qcow2";
  nlohmann::json j = nlohmann::json::parse(read_file(spec("cat /sys/block/vda/size /sys/block/vdb/size; "
                                                          "echo written > /tmp/w && dd if=/tmp/w of=/dev/vda bs=512 count=1 2>/dev/null && sync")));
  nlohmann::json d = nlohmann::json::object();
  d["file"] = disk.string();
  d["size"] = 64;
  j["disks"] = nlohmann::json::array({d});
  j["emptyDisks"] = nlohmann::json::array({32});
  write_file(tmp_.path() / "disks.json", j.dump());
  std::string out;
  int st = run({(tmp_.path() / "disks.json").string()}, &out);
  EXPECT_EQ(st, 0) << out;
  // 64 MiB and 32 MiB, in 512-byte sectors (the serial console ends lines with \r\n)
  EXPECT_NE(out.find("131072\r\n65536"), std::string::npos) << out;
  ASSERT_TRUE(std::filesystem::exists(disk));  // created as qcow2, and kept
  EXPECT_EQ(read_file(disk).substr(0, 4), std::string("QFI\xfb", 4));
  expect_clean();  // the empty disk went with the temporary directory
}

TEST_F(Vmlaunch, UserNetworkBringsUpTheGuestInterface) {
  nlohmann::json j = nlohmann::json::parse(read_file(spec("ip addr show eth0; ip route")));
  j["network"] = "user";
  nlohmann::json f = nlohmann::json::object();
  f["from"] = "host";
  f["proto"] = "tcp";
  f["host"] = {{"address", "127.0.0.1"}, {"port", 2222}};
  f["guest"] = {{"address", ""}, {"port", 22}};
  j["forwardPorts"] = nlohmann::json::array({f});
  write_file(tmp_.path() / "net.json", j.dump());
  std::string out;
  // The QEMU side of the forwards, as planned.
  int st = run({"--dry-run", (tmp_.path() / "net.json").string()}, &out);
  EXPECT_EQ(st, 0);
  EXPECT_NE(out.find("-netdev user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22 -device virtio-net-pci,netdev=n0"), std::string::npos) << out;
  // The guest side: eth0 up with QEMU's user-network address and route.
  st = run({(tmp_.path() / "net.json").string()}, &out);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("inet 10.0.2.15/24"), std::string::npos) << out;
  EXPECT_NE(out.find("default via 10.0.2.2 dev eth0"), std::string::npos) << out;
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
  for (std::string how : {"fsd", "qemu", "sigint"}) {
    SCOPED_TRACE(how);
    auto log = tmp_.path() / ("kill-" + how + ".log");
    std::vector<std::string> argv{VMLAUNCH_BINARY, spec("echo up; sleep 600")};
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
    int expect = 0;
    if (how == "fsd") ::kill(fsd, SIGKILL), expect = 125;
    if (how == "qemu") ::kill(qemu, SIGKILL), expect = 126;
    if (how == "sigint") ::kill(vm, SIGINT), expect = 128 + SIGINT;
    auto status = p.wait(std::chrono::seconds(60));
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(*status, expect) << read_file(log);
    // no process outlives it
    EXPECT_NE(::kill(fsd, 0), 0);
    EXPECT_NE(::kill(qemu, 0), 0);
    expect_clean();
  }
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
