// Who may connect to fsd, and who a client acts as once connected. These
// tests switch to the unprivileged user nobody (65534) on the host, so
// they need root; they are skipped without it.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <sys/xattr.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "fsd/client/p9_client.h"
#include "fsd/client/vhost_frontend.h"
#include "fsd/core/landlock.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;

// 0 if a unix-socket connect to `path` succeeds, else its errno.
int connect_errno(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
  int r = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 ? 0 : errno;
  ::close(fd);
  return r;
}

// What a 9P client gets when it tries each escalation on the prepared share
// (see Identity::SetUp): errno per attempt, 0 where it succeeded.
std::map<std::string, int> try_escalations(p9::Client& c, uint32_t uid_named, uint32_t create_gid) {
  std::map<std::string, int> got;
  auto err = [](const auto& r) { return r.ok() ? 0 : -r.error(); };
  if (auto v = c.version(65536); !v) return {{"version", -v.error()}};
  if (auto a = c.attach(1, "t", uid_named); !a) return {{"attach", -a.error()}};
  // Reading a 0600 root file.
  got["walk secret"] = err(c.walk(1, 2, "secret"));
  got["open secret"] = err(c.lopen(2, O_RDONLY));
  // Creating a setuid file asked to be in group create_gid, then giving it to root.
  got["walk clone"] = err(c.walk(1, 3, ""));
  got["create setuid"] = err(c.lcreate(3, "made", O_WRONLY | O_CREAT, 04755, create_gid));
  got["walk made"] = err(c.walk(1, 4, "made"));
  p9::Tsetattr chown{.fid = 4, .valid = p9::kSetattrUid, .uid = 0};
  got["chown made to root"] = err(c.call<p9::Rsetattr>(chown));
  // Changing a root file's mode and owner.
  got["walk rootfile"] = err(c.walk(1, 5, "rootfile"));
  p9::Tsetattr chmod{.fid = 5, .valid = p9::kSetattrMode, .mode = 04777};
  got["chmod rootfile"] = err(c.call<p9::Rsetattr>(chmod));
  p9::Tsetattr take{.fid = 5, .valid = p9::kSetattrUid | p9::kSetattrGid, .uid = uid_named, .gid = uid_named};
  got["chown rootfile"] = err(c.call<p9::Rsetattr>(take));
  // Privileged xattrs: setting a file capability or a trusted.* name, on
  // its own file; reading a trusted.* name root set.
  uint32_t fid = 10;
  for (const char* name : {"security.capability", "trusted.mine"}) {
    got[std::string("walk for ") + name] = err(c.walk(1, fid, "made"));
    std::string value = "\x01\x00\x00\x02\xc0\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    auto created = c.call<p9::Rxattrcreate>(p9::Txattrcreate{.fid = fid, .name = name, .attr_size = value.size(), .flags = 0});
    int e = err(created);
    if (e == 0) e = err(c.write(fid, 0, value));
    if (e == 0) e = err(c.clunk(fid));  // the value is set at clunk
    got[std::string("set ") + name] = e;
    fid++;
  }
  got["walk for trusted.hidden"] = err(c.walk(1, fid, "rootfile"));
  got["get trusted.hidden"] = err(c.call<p9::Rxattrwalk>(p9::Txattrwalk{.fid = fid, .newfid = fid + 1, .name = "trusted.hidden"}));
  return got;
}

std::string describe(const std::map<std::string, int>& m) {
  std::ostringstream out;
  for (auto& [k, v] : m) out << k << ": " << (v ? std::strerror(v) : "ok") << "\n";
  return out.str();
}

// Every escalation fails, and what the client made belongs to `owner`.
void expect_confined(const std::map<std::string, int>& got, const std::filesystem::path& share, uid_t owner, gid_t group) {
  SCOPED_TRACE(describe(got));
  for (auto step : {"walk secret", "walk clone", "create setuid", "walk made", "walk rootfile", "walk for trusted.hidden"})
    EXPECT_EQ(got.at(step), 0) << step;
  EXPECT_EQ(got.at("open secret"), EACCES);
  EXPECT_EQ(got.at("chown made to root"), EPERM);
  EXPECT_EQ(got.at("chmod rootfile"), EPERM);
  EXPECT_EQ(got.at("chown rootfile"), EPERM);
  EXPECT_EQ(got.at("set security.capability"), EPERM);
  EXPECT_EQ(got.at("set trusted.mine"), EPERM);
  EXPECT_EQ(got.at("get trusted.hidden"), ENODATA);
  struct stat st{};
  ASSERT_EQ(::lstat((share / "made").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, owner);
  EXPECT_EQ(st.st_gid, group);
  EXPECT_EQ(::getxattr((share / "made").c_str(), "security.capability", nullptr, 0), -1);
  ASSERT_EQ(::lstat((share / "rootfile").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
}

// A client on `sock` attaching as root reads the root-only secret.
void expect_root_reads_secret(const std::string& sock) {
  auto c = p9::Client::connect_unix(sock);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->version(65536).ok());
  ASSERT_TRUE(c->attach(1, "t", 0).ok());
  ASSERT_TRUE(c->walk(1, 2, "secret").ok());
  ASSERT_TRUE(c->lopen(2, O_RDONLY).ok());
  auto text = c->read_all(2);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "root's secret\n");
}

class Identity : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root, to act as nobody";
    // Everyone may reach the sockets' directory: only the sockets' own
    // modes keep nobody out.
    ::chmod(tmp_.path().c_str(), 0755);
    share_ = tmp_.path() / "share";
    std::filesystem::create_directory(share_);
    // A share anyone may create in, holding a root-only secret and a root
    // file with a trusted.* xattr.
    ::chmod(share_.c_str(), 0777);
    write_file(share_ / "secret", "root's secret\n");
    ::chmod((share_ / "secret").c_str(), 0600);
    write_file(share_ / "rootfile", "root's\n");
    ::chmod((share_ / "rootfile").c_str(), 0644);
    ASSERT_EQ(::setxattr((share_ / "rootfile").c_str(), "trusted.hidden", "x", 1, 0), 0);
    p9_ = (tmp_.path() / "p9.sock").string();
    vfs_ = (tmp_.path() / "vfs.sock").string();
  }
  // fsd serving the share on a 9P socket and a virtio-fs socket, started
  // under umask 000 so that nothing but fsd decides the sockets' modes.
  std::unique_ptr<FsdProcess> start(std::vector<std::string> extra) {
    std::vector<std::string> args{"--export", "t=" + share_.string(), "--listen", "unix:" + p9_,
                                  "--virtiofs-socket", "t=" + vfs_};
    args.insert(args.end(), extra.begin(), extra.end());
    mode_t old = ::umask(0);
    auto fsd = std::make_unique<FsdProcess>(FsdProcess::Options{.args = args});
    ::umask(old);
    fsd->wait_for_log("listening on " + vfs_);
    fsd->wait_listening("unix:");
    return fsd;
  }

  TempDir tmp_;
  std::filesystem::path share_;
  std::string p9_, vfs_;
};

TEST_F(Identity, SocketsAreOwnerOnlyWhateverTheUmask) {
  auto fsd = start({});
  for (const auto& sock : {p9_, vfs_}) {
    SCOPED_TRACE(sock);
    struct stat st{};
    ASSERT_EQ(::lstat(sock.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0600u);
    EXPECT_EQ(run_as(kNobody, kNogroup, [&] { return connect_errno(sock); }), EACCES);
  }
  // Root, the sockets' owner, still connects (the virtio-fs socket takes
  // one front-end at a time, so only the 9P one is tried here).
  EXPECT_EQ(connect_errno(p9_), 0);
  // Nothing but the sockets was left beside them (they are bound under a
  // temporary name first).
  size_t entries = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(tmp_.path())) entries++;
  EXPECT_EQ(entries, 3u);  // share, p9.sock, vfs.sock
}

TEST_F(Identity, SocketModeAndGroupLetOthersIn) {
  {
    auto fsd = start({"--socket-mode", "0660", "--socket-group", std::to_string(kNogroup)});
    for (const auto& sock : {p9_, vfs_}) {
      SCOPED_TRACE(sock);
      struct stat st{};
      ASSERT_EQ(::lstat(sock.c_str(), &st), 0);
      EXPECT_EQ(st.st_mode & 07777, 0660u);
      EXPECT_EQ(st.st_gid, kNogroup);
    }
    // In the group: in. Not in it (uid 65534 with another group): out.
    EXPECT_EQ(run_as(kNobody, kNogroup, [&] { return connect_errno(p9_); }), 0);
    EXPECT_EQ(run_as(kNobody, 65533, [&] { return connect_errno(p9_); }), EACCES);
  }
  auto fsd = start({"--socket-mode", "666"});
  EXPECT_EQ(run_as(kNobody, 65533, [&] { return connect_errno(p9_); }), 0);
  EXPECT_EQ(run_as(kNobody, 65533, [&] { return connect_errno(vfs_); }), 0);
}

TEST_F(Identity, BadSocketModeOrGroupIsRefused) {
  for (auto [flag, value] : {std::pair{"--socket-mode", "999"}, {"--socket-mode", "0x1ff"}, {"--socket-mode", "01777"},
                             {"--socket-mode", ""}, {"--socket-group", "no-such-group-here"}}) {
    SCOPED_TRACE(std::string(flag) + " '" + value + "'");
    FsdProcess fsd({.args = {"--export", "t=" + share_.string(), "--listen", "unix:" + p9_, flag, value}});
    auto status = fsd.wait_exit();
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(*status, 2) << fsd.log();
    EXPECT_NE(fsd.log().find(flag), std::string::npos) << fsd.log();
    EXPECT_FALSE(std::filesystem::exists(p9_));
  }
}

// The map a child found, sent back through a pipe as "errno name" lines.
std::map<std::string, int> escalations_as(uid_t uid, gid_t gid, const std::function<std::map<std::string, int>()>& body) {
  int fds[2];
  if (::pipe(fds) != 0) return {{"pipe", errno}};
  int status = run_as(uid, gid, [&] {
    ::close(fds[0]);
    std::string text;
    for (auto& [k, v] : body()) text += std::to_string(v) + " " + k + "\n";
    return ::write(fds[1], text.data(), text.size()) == static_cast<ssize_t>(text.size()) ? 0 : 1;
  });
  ::close(fds[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  std::map<std::string, int> got;
  if (status != 0) got["child exit status " + std::to_string(status)] = -1;
  std::istringstream in(text);
  for (int e; in >> e;) {
    std::string name;
    std::getline(in, name);
    got[name.substr(1)] = e;
  }
  return got;
}

// nobody on the host, let in by --socket-mode, names root in Tattach: it
// still acts as itself, and every escalation fails.
TEST_F(Identity, NobodyOnAUnixSocketActsAsItself) {
  auto fsd = start({"--socket-mode", "0666"});
  auto got = escalations_as(kNobody, kNogroup, [&] {
    auto c = p9::Client::connect_unix(p9_);
    if (!c) return std::map<std::string, int>{{"connect", -c.error()}};
    return try_escalations(*c, 0, 0);
  });
  expect_confined(got, share_, kNobody, kNogroup);
}

// A root peer (as QEMU relaying a guest is) acts as the user it names.
TEST_F(Identity, RootPeerActsAsTheUserItNames) {
  auto fsd = start({});
  auto c = p9::Client::connect_unix(p9_);
  ASSERT_TRUE(c.ok());
  expect_confined(try_escalations(*c, kNobody, kNogroup), share_, kNobody, kNogroup);
  // Named as root, it is root.
  expect_root_reads_secret(p9_);
}

// TCP peers act as nobody (or as=UID:GID) whatever they name, unless the
// listener is trusted.
TEST_F(Identity, TcpPeersActAsTheListenersIdentity) {
  {
    auto fsd = start({"--listen", "tcp:127.0.0.1:0"});
    auto port = fsd->wait_listening("tcp:127.0.0.1:");
    auto c = p9::Client::connect_tcp("127.0.0.1", static_cast<uint16_t>(std::stoi(port)));
    ASSERT_TRUE(c.ok());
    expect_confined(try_escalations(*c, 0, 0), share_, kNobody, kNogroup);
  }
  std::filesystem::remove(share_ / "made");
  {
    auto fsd = start({"--listen", "tcp:127.0.0.1:0,as=1234:5678"});
    auto port = fsd->wait_listening("tcp:127.0.0.1:");
    auto c = p9::Client::connect_tcp("127.0.0.1", static_cast<uint16_t>(std::stoi(port)));
    ASSERT_TRUE(c.ok());
    expect_confined(try_escalations(*c, 0, 0), share_, 1234, 5678);
  }
  auto fsd = start({"--listen", "tcp:127.0.0.1:0,trusted"});
  auto port = fsd->wait_listening("tcp:127.0.0.1:");
  auto c = p9::Client::connect_tcp("127.0.0.1", static_cast<uint16_t>(std::stoi(port)));
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->version(65536).ok());
  ASSERT_TRUE(c->attach(1, "t", 0).ok());
  ASSERT_TRUE(c->walk(1, 2, "secret").ok());
  EXPECT_TRUE(c->lopen(2, O_RDONLY).ok());
}

TEST_F(Identity, BadSandboxAndSeccompValuesAreRefused) {
  for (auto [args, flag] : {std::pair{std::vector<std::string>{"--sandbox", "bogus"}, "--sandbox"},
                            {{"--seccomp", "bogus"}, "--seccomp"},
                            {{"--sandbox", "namespace", "--fuse-mount", "t=" + tmp_.str()}, "--sandbox namespace"},
                            {{"--sandbox", "landlock", "--fuse-mount", "t=" + tmp_.str()}, "--sandbox landlock"},
                            {{"--seccomp", "kill", "--sandbox", "none", "--fuse-mount", "t=" + tmp_.str()}, "--seccomp kill"}}) {
    std::vector<std::string> all{"--export", "t=" + share_.string(), "--listen", "unix:" + p9_};
    all.insert(all.end(), args.begin(), args.end());
    expect_fsd_refuses(all, flag);
    EXPECT_FALSE(std::filesystem::exists(p9_));
  }
}

TEST_F(Identity, BadTcpIdentityOptionsAreRefused) {
  for (const char* spec : {"tcp:0,as=1", "tcp:0,as=x:1", "tcp:0,as=1:2,trusted", "tcp:0,bogus"}) {
    SCOPED_TRACE(spec);
    FsdProcess fsd({.args = {"--export", "t=" + share_.string(), "--listen", spec}});
    auto status = fsd.wait_exit();
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(*status, 2) << fsd.log();
    EXPECT_NE(fsd.log().find("--listen"), std::string::npos) << fsd.log();
  }
}

// The line "Key:<tab>value" of /proc/PID/status.
std::string status_of(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.starts_with(key + ":")) return line.substr(key.size() + 2);
  return "";
}

std::string ns_of(pid_t pid, const char* kind) {
  return std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/ns/" + kind).string();
}

// The process fsd started as waits outside the sandbox with nothing: no
// capabilities, no_new_privs, a seccomp filter.
void expect_bare_waiter(pid_t waiter) {
  EXPECT_EQ(status_of(waiter, "CapEff"), "0000000000000000");
  EXPECT_EQ(status_of(waiter, "CapPrm"), "0000000000000000");
  EXPECT_EQ(status_of(waiter, "NoNewPrivs"), "1");
#if !defined(__SANITIZE_ADDRESS__)
  EXPECT_EQ(status_of(waiter, "Seccomp"), "2");
#endif
}

// Started as root, fsd sandboxes itself by default, and still serves.
TEST_F(Identity, RootFsdSandboxesItself) {
  auto fsd = start({});
  pid_t pid = fsd->server_pid();
  ASSERT_NE(pid, fsd->pid()) << "no server inside a pid namespace";
  expect_bare_waiter(fsd->pid());
  EXPECT_EQ(status_of(pid, "NoNewPrivs"), "1");
#if !defined(__SANITIZE_ADDRESS__)
  EXPECT_EQ(status_of(pid, "Seccomp"), "2");  // a filter (sanitizer builds install none by default)
#endif
  uint64_t eff = std::stoull(status_of(pid, "CapEff"), nullptr, 16);
  EXPECT_EQ(eff & (uint64_t{1} << 21), 0u) << "CAP_SYS_ADMIN kept";
  EXPECT_EQ(eff & (uint64_t{1} << 12), 0u) << "CAP_NET_ADMIN kept";
  EXPECT_NE(eff & (uint64_t{1} << 7), 0u) << "CAP_SETUID dropped: fsd could not act as its callers";
  EXPECT_EQ(std::stoull(status_of(pid, "CapBnd"), nullptr, 16), eff);
  for (const char* kind : {"mnt", "net", "ipc", "pid"}) EXPECT_NE(ns_of(pid, kind), ns_of(::getpid(), kind)) << kind;
  EXPECT_EQ(status_of(pid, "NSpid").substr(status_of(pid, "NSpid").rfind('\t') + 1), "1") << "not pid 1 of its namespace";
  // Its root holds nothing but /proc and the exports.
  std::vector<std::string> root;
  for (auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/root"))
    root.push_back(e.path().filename().string());
  std::sort(root.begin(), root.end());
  EXPECT_EQ(root, (std::vector<std::string>{"exports", "proc"}));
  expect_root_reads_secret(p9_);
  EXPECT_EQ(fsd->stop(), 0) << "the waiter did not pass on the server's status";
  EXPECT_FALSE(std::filesystem::exists(p9_)) << "the socket file outlived fsd";
  EXPECT_FALSE(std::filesystem::exists(vfs_)) << "the socket file outlived fsd";
  EXPECT_NE(::kill(pid, 0), 0) << "the server outlived the waiter";
}

// The mount options of each mount point in `pid`'s namespace, and the mount
// id of each, from /proc/PID/mountinfo.
struct MountInfo {
  std::map<std::string, std::string> options;
  std::map<std::string, int> ids;
};
MountInfo mounts_of(pid_t pid) {
  MountInfo m;
  std::ifstream in("/proc/" + std::to_string(pid) + "/mountinfo");
  for (std::string line; std::getline(in, line);) {
    std::istringstream f(line);
    std::string id, parent, devno, root, point, options;
    f >> id >> parent >> devno >> root >> point >> options;
    m.options[point] = "," + options + ",";
    m.ids[point] = std::stoi(id);
  }
  return m;
}

// The sandbox reaches each export through a mount of its own: nodev (unless
// the export allows devices), nosuid, read-only for a read-only export, and
// every directory fd fsd holds on an export lies on that mount, so that
// ".." above an export's root is the sandbox's /exports, never the host's
// directory holding it.
TEST_F(Identity, TheSandboxReachesEachExportThroughAMountOfItsOwn) {
  auto ro = tmp_.path() / "ro";
  auto dev = tmp_.path() / "dev";
  write_file(ro / "file", "read-only\n");
  std::filesystem::create_directory(dev);
  FsdProcess fsd({.args = {"--export", "t=" + share_.string(), "--export", "ro=" + ro.string() + ",ro", "--export",
                           "dev=" + dev.string() + ",devices", "--listen", "unix:" + p9_}});
  fsd.wait_listening("unix:");
  pid_t pid = fsd.server_pid();
  ASSERT_NE(pid, fsd.pid());
  MountInfo m = mounts_of(pid);
  ASSERT_TRUE(m.options.contains("/exports/0") && m.options.contains("/exports/1") && m.options.contains("/exports/2"))
      << "no mounts of the exports in the sandbox";
  for (const char* point : {"/exports/0", "/exports/1", "/exports/2"}) {
    SCOPED_TRACE(point);
    EXPECT_NE(m.options[point].find(",nosuid,"), std::string::npos) << m.options[point];
  }
  EXPECT_NE(m.options["/exports/0"].find(",rw,"), std::string::npos);
  EXPECT_NE(m.options["/exports/0"].find(",nodev,"), std::string::npos);
  EXPECT_NE(m.options["/exports/1"].find(",ro,"), std::string::npos);
  EXPECT_NE(m.options["/exports/1"].find(",nodev,"), std::string::npos);
  EXPECT_EQ(m.options["/exports/2"].find(",nodev,"), std::string::npos) << "an export with devices lost them";
  // Every fd fsd holds on a directory of the exports' file system is on one
  // of those mounts.
  struct stat share_st{};
  ASSERT_EQ(::stat(share_.c_str(), &share_st), 0);
  std::string fds = "/proc/" + std::to_string(pid) + "/fd";
  int on_exports = 0;
  for (auto& e : std::filesystem::directory_iterator(fds)) {
    struct stat st{};
    if (::stat(e.path().c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_dev != share_st.st_dev) continue;
    std::string link = std::filesystem::read_symlink(e.path()).string();
    if (link == tmp_.str()) continue;  // the sockets' directory, kept to remove them at exit
    SCOPED_TRACE(link);
    std::ifstream info("/proc/" + std::to_string(pid) + "/fdinfo/" + e.path().filename().string());
    int mnt_id = -1;
    for (std::string line; std::getline(info, line);)
      if (line.starts_with("mnt_id:")) mnt_id = std::stoi(line.substr(7));
    EXPECT_TRUE(mnt_id == m.ids["/exports/0"] || mnt_id == m.ids["/exports/1"] || mnt_id == m.ids["/exports/2"])
        << "an fd on the host's mount";
    on_exports++;
    // Above it lies the sandbox's /exports.
    std::vector<std::string> above;
    for (auto& a : std::filesystem::directory_iterator(e.path() / ".."))
      above.push_back(a.path().filename().string());
    std::sort(above.begin(), above.end());
    EXPECT_EQ(above, (std::vector<std::string>{"0", "1", "2"}));
  }
  EXPECT_EQ(on_exports, 3) << "not one root fd per export";
  // And it still serves them.
  expect_root_reads_secret(p9_);
  EXPECT_EQ(fsd.stop(), 0);
}

// Killed outright, the waiter takes the server with it.
TEST_F(Identity, TheSandboxedServerDiesWithItsWaiter) {
  auto fsd = start({});
  pid_t server = fsd->server_pid();
  ASSERT_NE(server, fsd->pid());
  ::kill(fsd->pid(), SIGKILL);
  fsd->wait_exit();
  bool gone = false;
  for (int i = 0; i < 500 && !gone; i++) {
    gone = ::kill(server, 0) != 0 || status_of(server, "State").starts_with("Z");
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(gone) << "the server outlived its waiter";
}

// Every kind of change a client makes, as nobody over 9P on `sock`
// (export "t"): 0 if all went through, else the step that failed.
int change_everything(const std::string& sock) {
  return run_as(kNobody, kNogroup, [&] {
    auto c = p9::Client::connect_unix(sock);
    if (!c || !c->version(65536) || !c->attach(1, "t", kNobody)) return 1;
    if (!c->call<p9::Rmkdir>(p9::Tmkdir{.dfid = 1, .name = "a", .mode = 0700, .gid = kNogroup})) return 2;
    if (!c->call<p9::Rmkdir>(p9::Tmkdir{.dfid = 1, .name = "b", .mode = 0700, .gid = kNogroup})) return 3;
    if (!c->walk(1, 2, "a") || !c->lcreate(2, "file", O_RDWR | O_CREAT, 0600, kNogroup)) return 4;
    if (!c->write(2, 0, "written\n")) return 5;
    if (!c->walk(1, 3, "a") || !c->walk(1, 4, "b")) return 6;
    if (!c->call<p9::Rrenameat>(p9::Trenameat{.olddirfid = 3, .oldname = "file", .newdirfid = 4, .newname = "moved"}))
      return 7;
    if (!c->walk(4, 5, "moved") || !c->call<p9::Rlink>(p9::Tlink{.dfid = 3, .fid = 5, .name = "linked"})) return 8;
    if (!c->call<p9::Rsymlink>(p9::Tsymlink{.dfid = 3, .name = "sym", .symtgt = "moved", .gid = kNogroup})) return 9;
    if (!c->call<p9::Rmknod>(p9::Tmknod{.dfid = 3, .name = "fifo", .mode = S_IFIFO | 0600, .gid = kNogroup})) return 10;
    if (!c->call<p9::Rsetattr>(p9::Tsetattr{.fid = 5, .valid = p9::kSetattrSize, .size = 3})) return 11;
    if (!c->call<p9::Runlinkat>(p9::Tunlinkat{.dirfid = 3, .name = "linked"})) return 12;
    return 0;
  });
}

// Started by an ordinary user with no sandbox asked for, fsd confines
// itself with Landlock where the kernel has it (no id changes, unlike a
// user namespace), gains no privileges (no_new_privs), runs under its
// seccomp filter, says so, and still serves every kind of change;
// --seccomp none keeps it without a filter.
TEST_F(Identity, UnprivilegedFsdHasNoNewPrivsAndSeccompByDefault) {
  auto dir = tmp_.path() / "plain";
  std::filesystem::create_directories(dir / "share");
  for (auto& p : {dir, dir / "share"}) ASSERT_EQ(::chown(p.c_str(), kNobody, kNogroup), 0);
  std::string sock = (dir / "p9.sock").string();
  {
    std::string vfs = (dir / "vfs.sock").string();
    FsdProcess fsd({.args = {"--export", "t=" + (dir / "share").string(), "--listen", "unix:" + sock,
                             "--virtiofs-socket", "t=" + vfs},
                    .user = std::pair{kNobody, kNogroup}});
    fsd.wait_listening("unix:");
    EXPECT_EQ(status_of(fsd.server_pid(), "NoNewPrivs"), "1");
    EXPECT_NE(fsd.log().find("no_new_privs"), std::string::npos) << fsd.log();
    // A virtio-fs front-end's memory and eventfds are no files Landlock governs.
    EXPECT_EQ(run_as(kNobody, kNogroup, [&] {
                auto f = frontend::VhostFrontend::connect(vfs);
                if (!f || !(*f)->negotiate()) return 1;
                auto init = (*f)->fuse_init();
                if (!init || init->error != 0) return 2;
                auto none = (*f)->fuse_lookup(FUSE_ROOT_ID, "none");
                return none && none->error == -ENOENT ? 0 : 3;
              }),
              0)
        << fsd.log();
    EXPECT_EQ(fsd.server_pid(), fsd.pid()) << "a pid namespace, where no sandbox was asked for";
    if (landlock_abi() >= 2)
      EXPECT_NE(fsd.log().find("sandbox: Landlock"), std::string::npos) << fsd.log();
    else
      EXPECT_NE(fsd.log().find("no Landlock"), std::string::npos) << fsd.log();
    EXPECT_EQ(change_everything(sock), 0);
    EXPECT_EQ(read_file(dir / "share/b/moved"), "wri");
    EXPECT_EQ(std::filesystem::read_symlink(dir / "share/a/sym"), "moved");
    EXPECT_TRUE(std::filesystem::is_fifo(dir / "share/a/fifo"));
    EXPECT_FALSE(std::filesystem::exists(dir / "share/a/linked"));
#if !defined(__SANITIZE_ADDRESS__)  // sanitizer builds install no filter by default
    EXPECT_EQ(status_of(fsd.server_pid(), "Seccomp"), "2");  // a filter
    EXPECT_NE(fsd.log().find("seccomp: an allow-list"), std::string::npos) << fsd.log();
#endif
  }
  FsdProcess fsd({.args = {"--export", "t=" + (dir / "share").string(), "--listen", "unix:" + sock, "--seccomp", "none"},
                  .user = std::pair{kNobody, kNogroup}});
  fsd.wait_listening("unix:");
  EXPECT_EQ(status_of(fsd.server_pid(), "Seccomp"), "0");
}

// Started by an ordinary user, fsd sandboxes itself in a user namespace of
// its own when asked, and serves its own files.
TEST_F(Identity, UnprivilegedFsdSandboxesItselfInAUserNamespace) {
  auto dir = tmp_.path() / "nobodys";
  std::filesystem::create_directory(dir);
  write_file(dir / "share/file", "nobody's\n");
  for (auto& p : {dir, dir / "share", dir / "share/file"}) ASSERT_EQ(::chown(p.c_str(), kNobody, kNogroup), 0);
  std::string sock = (dir / "p9.sock").string();
  FsdProcess fsd({.args = {"--export", "t=" + (dir / "share").string(), "--listen", "unix:" + sock, "--sandbox", "namespace"},
                  .user = std::pair{kNobody, kNogroup}});
  fsd.wait_listening("unix:");
  pid_t pid = fsd.server_pid();
  ASSERT_NE(pid, fsd.pid());
  expect_bare_waiter(fsd.pid());
  EXPECT_EQ(status_of(pid, "NoNewPrivs"), "1");
  EXPECT_EQ(status_of(pid, "Uid").substr(0, 5), "65534");
  for (const char* kind : {"user", "mnt", "net", "ipc", "pid"}) EXPECT_NE(ns_of(pid, kind), ns_of(::getpid(), kind)) << kind;
  EXPECT_EQ(std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/root"), "/") << "no root of its own";
  EXPECT_NE(mounts_of(pid).options["/exports/0"].find(",nodev,"), std::string::npos) << "no nodev mount of the export";
  int read = run_as(kNobody, kNogroup, [&] {
    auto c = p9::Client::connect_unix(sock);
    if (!c || !c->version(65536) || !c->attach(1, "t", kNobody) || !c->walk(1, 2, "file") || !c->lopen(2, O_RDONLY)) return 1;
    auto text = c->read_all(2);
    if (!text || *text != "nobody's\n") return 2;
    if (!c->walk(1, 3, "") || !c->lcreate(3, "made", O_WRONLY | O_CREAT, 0600, kNogroup)) return 3;
    return 0;
  });
  EXPECT_EQ(read, 0);
  struct stat st{};
  ASSERT_EQ(::lstat((dir / "share/made").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kNobody);
  EXPECT_EQ(fsd.stop(), 0);
  EXPECT_FALSE(std::filesystem::exists(sock));
}

// --uid-map/--gid-map (virtiofsd's) make an unprivileged fsd's own ids
// root inside its user namespace: a guest sees its user's files as root's.
TEST_F(Identity, UidMapMakesAnUnprivilegedFsdRootInItsNamespace) {
  auto dir = tmp_.path() / "nobodys";
  write_file(dir / "share/file", "nobody's\n");
  for (auto& p : {dir, dir / "share", dir / "share/file"}) ASSERT_EQ(::chown(p.c_str(), kNobody, kNogroup), 0);
  std::string sock = (dir / "p9.sock").string();
  std::vector<std::string> args{"--export", "t=" + (dir / "share").string(), "--listen", "unix:" + sock};
  // Refused: as root; with --sandbox none; a range; another user's id.
  expect_fsd_refuses({args[0], args[1], args[2], args[3], "--uid-map", ":0:0:1:"}, "--uid-map: only for an fsd started by an ordinary user");
  auto refused_as_nobody = [&](std::vector<std::string> extra, const std::string& needle) {
    extra.insert(extra.begin(), args.begin(), args.end());
    expect_fsd_refuses(extra, needle, std::pair{kNobody, kNogroup});
  };
  refused_as_nobody({"--uid-map", ":0:65534:1:", "--sandbox", "none"}, "--uid-map: maps ids into the sandbox's user namespace");
  refused_as_nobody({"--uid-map", ":0:100000:65536:"}, "--uid-map maps ids beyond fsd's own, but --gid-map does not");
  refused_as_nobody({"--gid-map", "0:65534"}, "expected :INSIDE:HOST:COUNT:");
  refused_as_nobody({"--gid-map", ":0:65534:0:"}, "COUNT must be at least 1");
  refused_as_nobody({"--uid-map", ":0:65534:1:", "--uid-map", ":0:100000:10:", "--gid-map", ":0:100000:10:"},
                    "--uid-map: the ranges :0:65534:1: and :0:100000:10: overlap");

  args.insert(args.end(), {"--uid-map", ":0:65534:1:", "--gid-map=:0:65534:1:"});
  FsdProcess fsd({.args = args, .user = std::pair{kNobody, kNogroup}});
  fsd.wait_listening("unix:");
  ASSERT_NE(fsd.server_pid(), fsd.pid()) << "--uid-map did not imply the namespace sandbox";
  EXPECT_NE(ns_of(fsd.server_pid(), "user"), ns_of(::getpid(), "user"));
  int got = run_as(kNobody, kNogroup, [&] {
    auto c = p9::Client::connect_unix(sock);
    if (!c || !c->version(65536) || !c->attach(1, "t", 0) || !c->walk(1, 2, "file")) return 1;
    auto attr = c->getattr(2);
    if (!attr) return 2;
    if (attr->uid != 0 || attr->gid != 0) return 3;  // nobody's file shows as root's
    if (!c->walk(1, 3, "") || !c->lcreate(3, "made", O_WRONLY | O_CREAT, 0600, 0)) return 4;
    return 0;
  });
  EXPECT_EQ(got, 0);
  struct stat st{};
  ASSERT_EQ(::lstat((dir / "share/made").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kNobody);
  EXPECT_EQ(st.st_gid, kNogroup);
}

// With ranges of subordinate ids (newuidmap/newgidmap, as libvirt's session
// mode passes them), an unprivileged fsd acts as each caller inside its user
// namespace: the namespace's ids land on the host shifted, the kernel checks
// permissions between them, and ids it does not map are refused. The host's
// /etc/subuid and /etc/subgid are left alone: fsd sees test copies.
TEST_F(Identity, SubordinateIdsLetAnUnprivilegedFsdActAsItsCallers) {
  int found = 0;
  run_command("command -v newuidmap && command -v newgidmap", &found);
  ASSERT_EQ(found, 0) << "newuidmap/newgidmap missing: scripts/setup installs Debian's uidmap package";
  constexpr uint32_t kBase = 300000;  // inside 1.. is host kBase..
  auto dir = tmp_.path() / "subids";
  write_file(dir / "subuid", "nobody:" + std::to_string(kBase) + ":65536\n");
  write_file(dir / "subgid", "nobody:" + std::to_string(kBase) + ":65536\n");
  write_file(dir / "share/theirs", "inside uid 2000's\n");
  for (auto& p : {dir, dir / "share"}) ASSERT_EQ(::chown(p.c_str(), kNobody, kNogroup), 0);
  ASSERT_EQ(::chmod((dir / "share").c_str(), 0777), 0);
  ASSERT_EQ(::chown((dir / "share/theirs").c_str(), kBase + 1999, kBase + 1999), 0);
  ASSERT_EQ(::chmod((dir / "share/theirs").c_str(), 0600), 0);
  std::string sock = (dir / "p9.sock").string();
  std::vector<std::string> args{"--export", "t=" + (dir / "share").string(), "--listen", "unix:" + sock,
                                "--uid-map", ":0:65534:1:", "--uid-map", ":1:" + std::to_string(kBase) + ":65536:",
                                "--gid-map", ":0:65534:1:", "--gid-map", ":1:" + std::to_string(kBase) + ":65536:"};
  std::vector<std::pair<fs::path, fs::path>> subids{{dir / "subuid", "/etc/subuid"}, {dir / "subgid", "/etc/subgid"}};
  {
    // Ranges the subordinate ids do not grant: newuidmap says no, and fsd
    // stops naming the flag.
    auto wrong = args;
    wrong[7] = ":1:100000:65536:";
    FsdProcess fsd({.args = wrong, .user = std::pair{kNobody, kNogroup}, .bind_over = subids});
    auto status = fsd.wait_exit();
    ASSERT_TRUE(status.has_value()) << "fsd kept running";
    EXPECT_EQ(*status, 1) << fsd.log();
    EXPECT_NE(fsd.log().find("--uid-map: newuidmap could not map the ranges"), std::string::npos) << fsd.log();
  }
  FsdProcess fsd({.args = args, .user = std::pair{kNobody, kNogroup}, .bind_over = subids});
  fsd.wait_listening("unix:");
  EXPECT_NE(fsd.log().find("requests act as their callers"), std::string::npos) << fsd.log();
  // nobody connects: inside the namespace it is root, a peer that may name
  // whom it acts as. Each step returns 0, or the errno it got.
  auto step = [&](uint32_t uid, auto body) {
    return run_as(kNobody, kNogroup, [&]() -> int {
      auto c = p9::Client::connect_unix(sock);
      if (!c) return -c.error();
      if (auto v = c->version(65536); !v) return -v.error();
      if (auto a = c->attach(1, "t", uid); !a) return -a.error();
      return body(*c);
    });
  };
  auto err = [](const auto& r) { return r.ok() ? 0 : -r.error(); };
  EXPECT_EQ(step(1000, [&](p9::Client& c) {
              if (int e = err(c.walk(1, 2, ""))) return e;
              if (int e = err(c.lcreate(2, "made", O_WRONLY | O_CREAT, 0640, 1000))) return e;
              if (int e = err(c.walk(1, 3, "made"))) return e;
              auto made = c.getattr(3);
              if (!made) return -made.error();
              return made->uid == 1000 && made->gid == 1000 ? 0 : 200;  // the namespace's ids
            }),
            0);
  struct stat st{};
  ASSERT_EQ(::lstat((dir / "share/made").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kBase + 999);  // created as the caller, shifted onto the host
  EXPECT_EQ(st.st_gid, kBase + 999);
  auto read_theirs = [&](p9::Client& c) {
    if (int e = err(c.walk(1, 2, "theirs"))) return e;
    if (int e = err(c.lopen(2, O_RDONLY))) return e;
    auto text = c.read_all(2);
    if (!text) return -text.error();
    return *text == "inside uid 2000's\n" ? 0 : 201;
  };
  EXPECT_EQ(step(1000, read_theirs), EACCES);  // the kernel checks, between two mapped ids
  EXPECT_EQ(step(2000, read_theirs), 0);
  EXPECT_EQ(step(70000, [](p9::Client&) { return 0; }), EPERM);  // the namespace has no such id
  EXPECT_EQ(step(0, [&](p9::Client& c) {
              if (int e = err(c.walk(1, 2, "theirs"))) return e;
              auto a = c.getattr(2);
              if (!a) return -a.error();
              return a->uid == 2000 ? 0 : 202;
            }),
            0);
  EXPECT_EQ(fsd.stop(), 0) << fsd.log();
}

// virtiofsd's --modcaps changes what the sandbox keeps: here one capability
// less (mknod) and one more (sys_ptrace), and without setuid fsd can no
// longer act as its callers, and says so.
TEST_F(Identity, ModcapsChangesWhatTheSandboxKeeps) {
  constexpr int kMknod = 27, kSysPtrace = 19, kSetuid = 7;
  {
    auto fsd = start({"--modcaps=-mknod:+SYS_PTRACE"});
    uint64_t eff = std::stoull(status_of(fsd->server_pid(), "CapEff"), nullptr, 16);
    EXPECT_EQ(eff & (uint64_t{1} << kMknod), 0u) << "mknod kept";
    EXPECT_NE(eff & (uint64_t{1} << kSysPtrace), 0u) << "sys_ptrace not added";
    EXPECT_NE(eff & (uint64_t{1} << kSetuid), 0u);
    EXPECT_NE(fsd->log().find("sys_ptrace"), std::string::npos) << fsd->log();
  }
  {
    auto fsd = start({"--modcaps=-cap_setuid"});
    uint64_t eff = std::stoull(status_of(fsd->server_pid(), "CapEff"), nullptr, 16);
    EXPECT_EQ(eff & (uint64_t{1} << kSetuid), 0u);
    EXPECT_NE(fsd->log().find("requests act as fsd's own user"), std::string::npos) << fsd->log();
  }
  std::vector<std::string> base{"--export", "t=" + share_.string(), "--listen", "unix:" + p9_};
  auto with = [&](std::vector<std::string> extra) {
    auto all = base;
    all.insert(all.end(), extra.begin(), extra.end());
    return all;
  };
  expect_fsd_refuses(with({"--modcaps", "mknod"}), "--modcaps 'mknod': 'mknod' is not +NAME or -NAME");
  expect_fsd_refuses(with({"--modcaps", "+no_such_cap"}), "no capability 'no_such_cap'");
  expect_fsd_refuses(with({"--modcaps", "-mknod", "--sandbox", "none"}), "--modcaps: fsd drops capabilities");
}

TEST_F(Identity, SandboxNoneLeavesFsdAsItWas) {
  auto fsd = start({"--sandbox", "none"});
  EXPECT_EQ(status_of(fsd->pid(), "NoNewPrivs"), "0");
  EXPECT_EQ(status_of(fsd->pid(), "Seccomp"), "0");
  EXPECT_EQ(std::filesystem::read_symlink("/proc/" + std::to_string(fsd->pid()) + "/ns/mnt"),
            std::filesystem::read_symlink("/proc/self/ns/mnt"));
}

}  // namespace
}  // namespace fsd::testing
