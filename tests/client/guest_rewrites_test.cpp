// A guest that rewrites its own requests while fsd serves them. Guest
// memory stays writable by the guest (another vCPU) after a request is
// queued, so a server that checks a field there and reads it again (a
// double fetch) can be made to use what it never checked: a name that is
// valid when checked and "../NAME" when used reaches outside the export.
//
// A thread of the test plays the other vCPU: while a request is in flight
// it keeps rewriting a part of it between two contents. Whatever fsd sees,
// nothing may appear, vanish or change outside the export, fsd must not
// crash, and every reply must be well-formed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "fsd/client/vhost_frontend.h"
#include "protocol/p9/codec.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

using frontend::VhostFrontend;

// Rewrites one place of guest memory from a thread of its own, while
// armed: its bytes alternate between two contents, with every torn mix of
// the two in between.
class Rewriter {
 public:
  Rewriter() : thread_([this] { run(); }) {}
  ~Rewriter() {
    stop_ = true;
    thread_.join();
  }
  void arm(std::byte* at, std::string a, std::string b) {
    at_ = at;
    a_ = std::move(a);
    b_ = std::move(b);
    gen_.fetch_add(1, std::memory_order_release);  // odd: armed
  }
  // Returns once the thread no longer writes.
  void disarm() {
    uint64_t g = gen_.fetch_add(1, std::memory_order_acq_rel) + 1;
    while (ack_.load(std::memory_order_acquire) < g) std::this_thread::yield();
  }
  uint64_t rewrites() const { return rewrites_.load(); }

 private:
  void run() {
    while (!stop_) {
      uint64_t g = gen_.load(std::memory_order_acquire);
      if (g % 2 == 0) {
        ack_.store(g, std::memory_order_release);
        std::this_thread::yield();
        continue;
      }
      uint64_t n = 0;
      while (gen_.load(std::memory_order_relaxed) == g) {
        for (size_t i = 0; i < a_.size(); i++) store(i, a_[i]);
        for (size_t i = 0; i < b_.size(); i++) store(i, b_[i]);
        n++;
      }
      rewrites_ += n;
    }
  }
  void store(size_t i, char c) { __atomic_store_n(reinterpret_cast<char*>(at_) + i, c, __ATOMIC_RELAXED); }

  std::byte* at_ = nullptr;
  std::string a_, b_;
  std::atomic<uint64_t> gen_{0}, ack_{0}, rewrites_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

template <class T>
std::vector<std::byte> with_names(const T* v, std::initializer_list<std::string_view> names) {
  std::vector<std::byte> out;
  if (v) {
    out.resize(sizeof *v);
    std::memcpy(out.data(), v, sizeof *v);
  }
  for (auto n : names) {
    for (char c : n) out.push_back(static_cast<std::byte>(c));
    out.push_back(std::byte{0});
  }
  return out;
}

// Every file under `dir` but `except` (its relative paths), with what
// identifies it and its contents.
std::map<std::string, std::string> snapshot(const fs::path& dir, const fs::path& except) {
  std::map<std::string, std::string> out;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
    if (it->path() == except) {
      it.disable_recursion_pending();
      continue;
    }
    struct stat st{};
    ::lstat(it->path().c_str(), &st);
    std::string what = std::to_string(st.st_ino) + " " + std::to_string(st.st_mode) + " " + std::to_string(st.st_nlink);
    if (S_ISREG(st.st_mode)) what += " " + read_file(it->path());
    out[fs::relative(it->path(), dir).string()] = what;
  }
  return out;
}

// An export with the host's files beside it, and fsd serving it on a
// vhost-user device of its own.
class RewriteTarget : public ::testing::Test {
 protected:
  void start_fsd(const std::vector<std::string>& device_args) {
    root_ = tmp_.path();
    exp_ = root_ / "export";
    fs::create_directories(exp_);
    write_file(root_ / "outside/secret", "host secret\n");
    fs::permissions(root_ / "outside/secret", fs::perms::owner_read | fs::perms::owner_write);
    write_file(root_ / "outside/keep", "keep me\n");
    fs::create_directories(root_ / "outside/kdir");
    write_file(exp_ / "file", "in the export\n");
    fs::create_directories(root_ / "run");
    sock_ = (root_ / "run/dev.sock").string();
    std::vector<std::string> args = device_args;
    args.push_back("rw=" + sock_);
    fsd_ = std::make_unique<FsdProcess>(FsdProcess::Options{.args = args});
    fsd_->wait_for_log("listening on " + sock_);
    before_ = snapshot(root_, exp_);
  }
  void TearDown() override {
    f_.reset();
    if (fsd_) {
      EXPECT_EQ(fsd_->stop(), 0) << fsd_->log();
    }
  }

  TempDir tmp_;
  fs::path root_, exp_;
  std::string sock_;
  std::unique_ptr<FsdProcess> fsd_;
  std::unique_ptr<VhostFrontend> f_;
  std::map<std::string, std::string> before_;
  Rewriter rewriter_;
};

class GuestRewrites : public RewriteTarget {
 protected:
  void SetUp() override {
    start_fsd({"--export", "rw=" + (tmp_.path() / "export").string() + ",cache=never", "--virtiofs-socket"});
    auto f = VhostFrontend::connect(sock_);
    ASSERT_TRUE(f.ok()) << std::strerror(-f.error());
    f_ = std::move(*f);
    ASSERT_TRUE(f_->negotiate().ok()) << fsd_->log();
    auto init = f_->fuse_init();
    ASSERT_TRUE(init.ok() && init->error == 0);
  }

  // Sends one request whose bytes [offset, offset + valid.size()) of its
  // arguments alternate between `valid` and `evil` while fsd serves it.
  // Returns the reply's error (0 or -errno); fails the test on a reply
  // that is not well-formed.
  int race(uint32_t opcode, uint64_t nodeid, const std::vector<std::byte>& args, size_t offset,
           const std::string& valid, const std::string& evil, std::vector<std::byte>* body = nullptr) {
    auto p = f_->submit_fuse(1, opcode, nodeid, args, 4096);
    rewriter_.arm(f_->host(p.in_gpa) + sizeof(fuse_in_header) + offset, valid, evil);
    auto u = f_->wait_used(1);
    rewriter_.disarm();
    requests_++;
    if (!u) {
      ADD_FAILURE() << "no reply: " << std::strerror(-u.error()) << fsd_->log();
      return -EIO;
    }
    auto r = f_->reply_of(p, *u);
    if (!r || r->error > 0 || r->error < -4095) {
      ADD_FAILURE() << "malformed reply to opcode " << opcode;
      return -EIO;
    }
    if (body) body->assign(r->body.begin(), r->body.end());
    return r->error;
  }

  unsigned requests_ = 0;
};

// Every name-taking FUSE operation, with a name that is valid when checked
// and climbs out of the export when used: before the fix, MKDIR made a
// directory outside after a few tries.
TEST_F(GuestRewrites, NamesThatClimbOutOfTheExportNeverReachTheHost) {
  constexpr int kRounds = 1500;
  for (int k = 0; k < kRounds; k++) write_file(exp_ / ("r" + std::to_string(k)), "r");
  auto file = f_->fuse_lookup(FUSE_ROOT_ID, "file");
  ASSERT_TRUE(file.ok() && file->error == 0);
  uint64_t file_id = 0;
  std::memcpy(&file_id, file->body.data(), sizeof file_id);
  struct stat secret{};
  ASSERT_EQ(::stat((root_ / "outside/secret").c_str(), &secret), 0);

  std::map<int, unsigned> outcomes;
  for (int k = 0; k < kRounds; k++) {
    // What "../X" would make in the export's parent; the valid twin "___X"
    // is made in the export.
    std::string x = "n" + std::to_string(100000 + k);
    std::string valid = "___" + x, evil = "../" + x;

    fuse_mkdir_in mk{};
    mk.mode = 0755;
    outcomes[race(FUSE_MKDIR, FUSE_ROOT_ID, with_names(&mk, {valid}), sizeof mk, valid, evil)]++;

    fuse_mknod_in mn{};
    mn.mode = S_IFIFO | 0644;
    std::string vf = "_f_" + x, ef = "../f" + x.substr(1);
    outcomes[race(FUSE_MKNOD, FUSE_ROOT_ID, with_names(&mn, {vf}), sizeof mn, vf, ef)]++;

    std::string vs = "_s_" + x, es = "../s" + x.substr(1);
    outcomes[race(FUSE_SYMLINK, FUSE_ROOT_ID, with_names<int>(nullptr, {vs, "target"}), 0, vs, es)]++;

    fuse_create_in cr{};
    cr.flags = O_RDWR | O_CREAT;
    cr.mode = 0644;
    std::string vc = "_c_" + x, ec = "../c" + x.substr(1);
    std::vector<std::byte> created;
    int err = race(FUSE_CREATE, FUSE_ROOT_ID, with_names(&cr, {vc}), sizeof cr, vc, ec, &created);
    outcomes[err]++;
    if (err == 0 && created.size() >= sizeof(fuse_entry_out) + sizeof(fuse_open_out)) {
      fuse_open_out oo{};
      std::memcpy(&oo, created.data() + sizeof(fuse_entry_out), sizeof oo);
      fuse_release_in rl{};
      rl.fh = oo.fh;
      auto r = f_->fuse(1, FUSE_RELEASE, FUSE_ROOT_ID, with_names(&rl, {}), 4096);
      EXPECT_TRUE(r.ok() && r->error == 0);
    }

    fuse_link_in ln{};
    ln.oldnodeid = file_id;
    std::string vl = "_l_" + x, el = "../l" + x.substr(1);
    outcomes[race(FUSE_LINK, FUSE_ROOT_ID, with_names(&ln, {vl}), sizeof ln, vl, el)]++;

    // A rename that would move a file out, and one that would pull the
    // host's secret in.
    fuse_rename_in rn{};
    rn.newdir = FUSE_ROOT_ID;
    std::string src = "r" + std::to_string(k), vr = "_r_" + x, er = "../r" + x.substr(1);
    outcomes[race(FUSE_RENAME, FUSE_ROOT_ID, with_names(&rn, {src, vr}), sizeof rn + src.size() + 1, vr, er)]++;
    std::string vin = "___outside_secret", ein = "../outside/secret";
    outcomes[race(FUSE_RENAME, FUSE_ROOT_ID, with_names(&rn, {vin, "pulled"}), sizeof rn, vin, ein)]++;
    fuse_rename2_in rn2{};
    rn2.newdir = FUSE_ROOT_ID;
    outcomes[race(FUSE_RENAME2, FUSE_ROOT_ID, with_names(&rn2, {vin, "pulled2"}), sizeof rn2, vin, ein)]++;

    // Removals that would delete the host's files.
    outcomes[race(FUSE_UNLINK, FUSE_ROOT_ID, with_names<int>(nullptr, {"___outside_keep"}), 0, "___outside_keep",
                  "../outside/keep")]++;
    outcomes[race(FUSE_RMDIR, FUSE_ROOT_ID, with_names<int>(nullptr, {"___outside_kdir"}), 0, "___outside_kdir",
                  "../outside/kdir")]++;

    // A lookup that would hand the guest the host's secret.
    std::vector<std::byte> found;
    if (race(FUSE_LOOKUP, FUSE_ROOT_ID, with_names<int>(nullptr, {vin}), 0, vin, ein, &found) == 0) {
      fuse_entry_out e{};
      std::memcpy(&e, found.data(), std::min(sizeof e, found.size()));
      EXPECT_NE(e.attr.ino, secret.st_ino) << "LOOKUP reached the host's file outside the export";
    }
  }
  ASSERT_FALSE(HasFailure());
  // The rewriting really raced fsd: each request was rewritten many times.
  EXPECT_GT(rewriter_.rewrites(), static_cast<uint64_t>(requests_));
  EXPECT_EQ(snapshot(root_, exp_), before_) << "something outside the export changed";
  EXPECT_FALSE(fs::exists(exp_ / "pulled"));
  EXPECT_FALSE(fs::exists(exp_ / "pulled2"));
  auto alive = f_->fuse_lookup(FUSE_ROOT_ID, "file");
  EXPECT_TRUE(alive.ok() && alive->error == 0) << fsd_->log();
  for (auto [err, n] : outcomes) std::printf("  error %d: %u requests\n", err, n);
}

// The header and the fixed arguments change under fsd's feet: lengths,
// opcodes, node ids, modes. fsd must answer each chain with a well-formed
// reply or none, and stay alive.
TEST_F(GuestRewrites, RewrittenHeadersAndArgumentsGetWellFormedRepliesOrNone) {
  std::mt19937_64 rng(29);
  constexpr int kRequests = 6000;
  unsigned replied = 0, dropped = 0;
  for (int k = 0; k < kRequests; k++) {
    std::string name = "h" + std::to_string(k);
    fuse_mkdir_in mk{};
    mk.mode = 0755;
    auto args = with_names(&mk, {name});
    auto p = f_->submit_fuse(1, k % 3 == 0 ? FUSE_MKDIR : (k % 3 == 1 ? FUSE_LOOKUP : FUSE_GETATTR), FUSE_ROOT_ID,
                             k % 3 == 1 ? with_names<int>(nullptr, {name}) : args, 4096);
    std::byte* req = f_->host(p.in_gpa);
    // A field of the header (len, opcode, nodeid) or the arguments, and
    // random bytes to alternate with it.
    static constexpr size_t kFields[][2] = {{0, 4}, {4, 4}, {16, 8}, {40, 8}, {48, 4}};
    auto [off, len] = std::pair{kFields[k % 5][0], kFields[k % 5][1]};
    std::string now(len, '\0'), other(len, '\0');
    std::memcpy(now.data(), req + off, len);
    for (auto& c : other) c = static_cast<char>(rng());
    rewriter_.arm(req + off, now, other);
    auto u = f_->wait_used(1);
    rewriter_.disarm();
    ASSERT_TRUE(u.ok()) << "no answer to chain " << k << "\n" << fsd_->log();
    if (u->len == 0) {
      dropped++;
      continue;
    }
    ASSERT_GE(u->len, sizeof(fuse_out_header));
    fuse_out_header oh;
    std::memcpy(&oh, f_->host(p.out_gpa), sizeof oh);
    EXPECT_EQ(oh.len, u->len);
    EXPECT_LE(oh.error, 0);
    EXPECT_GE(oh.error, -4095);
    replied++;
  }
  std::printf("  %u replies, %u chains dropped as malformed\n", replied, dropped);
  EXPECT_GT(replied, 0u);
  EXPECT_EQ(snapshot(root_, exp_), before_) << "something outside the export changed";
  auto alive = f_->fuse_lookup(FUSE_ROOT_ID, "file");
  EXPECT_TRUE(alive.ok() && alive->error == 0) << fsd_->log();
}

// The same attack on 9P over a virtqueue (virtio-9p): each T-message's
// name alternates between a valid name and "../NAME" while fsd serves it.
class GuestRewrites9p : public RewriteTarget {
 protected:
  void SetUp() override {
    start_fsd({"--export", "rw=" + (tmp_.path() / "export").string(), "--virtio9p-socket"});
    VhostFrontend::Options o;
    o.queues = 1;
    o.features |= 1;  // VIRTIO_9P_MOUNT_TAG
    auto f = VhostFrontend::connect(sock_, o);
    ASSERT_TRUE(f.ok());
    f_ = std::move(*f);
    ASSERT_TRUE(f_->negotiate().ok()) << fsd_->log();
    ASSERT_EQ(send(p9::Tversion{.msize = 65536, .version = "9P2000.L"}, "", ""), 0);
    ASSERT_EQ(send(p9::Tattach{.fid = 1, .afid = p9::kNoFid, .uname = "", .aname = "rw", .n_uname = 0}, "", ""), 0);
  }
  // Sends a T-message in whose frame the bytes of `valid` alternate with
  // `evil` (of the same length) while fsd serves it; returns 0 or the
  // Rlerror's -errno, and fails the test on a reply that is not well-formed.
  template <class T>
  int send(const T& t, const std::string& valid, const std::string& evil) {
    std::vector<std::byte> frame(4096);
    auto n = p9::encode(frame, 7, t);
    if (!n) {
      ADD_FAILURE() << "encode";
      return -EIO;
    }
    uint64_t in = f_->alloc(*n), out = f_->alloc(4096);
    std::memcpy(f_->host(in), frame.data(), *n);
    std::byte* at = nullptr;
    if (!valid.empty()) {
      std::string_view text(reinterpret_cast<const char*>(f_->host(in)), *n);
      auto pos = text.find(valid);
      if (pos == std::string_view::npos) {
        ADD_FAILURE() << "no " << valid << " in the frame";
        return -EIO;
      }
      at = f_->host(in) + pos;
    }
    VhostFrontend::Buf bufs[] = {{in, static_cast<uint32_t>(*n), false}, {out, 4096, true}};
    uint16_t head = f_->add_chain(0, bufs);
    f_->publish(0, head);
    f_->kick(0);
    if (at) rewriter_.arm(at, valid, evil);
    auto u = f_->wait_used(0);
    if (at) rewriter_.disarm();
    if (!u || u->len == 0) {
      ADD_FAILURE() << "no reply\n" << fsd_->log();
      return -EIO;
    }
    std::vector<std::byte> reply(f_->host(out), f_->host(out) + u->len);
    auto r = p9::decode_r(reply);
    if (!r || r->tag != 7) {
      ADD_FAILURE() << "malformed reply";
      return -EIO;
    }
    if (auto* e = std::get_if<p9::Rlerror>(&r->msg)) return -static_cast<int>(e->ecode);
    return 0;
  }
};

TEST_F(GuestRewrites9p, NamesThatClimbOutOfTheExportNeverReachTheHost) {
  std::map<int, unsigned> outcomes;
  ASSERT_EQ(send(p9::Twalk{.fid = 1, .newfid = 2, .wnames = {.count = 1, .names = {"file"}}}, "", ""), 0);
  for (int k = 0; k < 800; k++) {
    std::string x = std::to_string(100000 + k);
    auto pair = [&](char op) { return std::pair{"__" + std::string(1, op) + x, "../" + std::string(1, op) + x.substr(1)}; };
    auto [vm, em] = pair('m');
    outcomes[send(p9::Tmkdir{.dfid = 1, .name = vm, .mode = 0755, .gid = 0}, vm, em)]++;
    auto [vn, en] = pair('n');
    outcomes[send(p9::Tmknod{.dfid = 1, .name = vn, .mode = S_IFIFO | 0644, .major = 0, .minor = 0, .gid = 0}, vn, en)]++;
    auto [vs, es] = pair('s');
    outcomes[send(p9::Tsymlink{.dfid = 1, .name = vs, .symtgt = "t", .gid = 0}, vs, es)]++;
    auto [vl, el] = pair('l');
    outcomes[send(p9::Tlink{.dfid = 1, .fid = 2, .name = vl}, vl, el)]++;
    auto [vc, ec] = pair('c');
    ASSERT_EQ(send(p9::Twalk{.fid = 1, .newfid = 3, .wnames = {}}, "", ""), 0);
    int err = send(p9::Tlcreate{.fid = 3, .name = vc, .flags = O_RDWR | O_CREAT, .mode = 0644, .gid = 0}, vc, ec);
    outcomes[err]++;
    ASSERT_EQ(send(p9::Tclunk{.fid = 3}, "", ""), 0);
    outcomes[send(p9::Trenameat{.olddirfid = 1, .oldname = "___outside_secret", .newdirfid = 1, .newname = "pulled"},
                  "___outside_secret", "../outside/secret")]++;
    outcomes[send(p9::Tunlinkat{.dirfid = 1, .name = "___outside_keep", .flags = 0}, "___outside_keep", "../outside/keep")]++;
    auto walked = send(p9::Twalk{.fid = 1, .newfid = 4, .wnames = {.count = 1, .names = {"___outside_secret"}}},
                       "___outside_secret", "../outside/secret");
    outcomes[walked]++;
    if (walked == 0) {
      EXPECT_EQ(send(p9::Tclunk{.fid = 4}, "", ""), 0);
      ADD_FAILURE() << "Twalk reached a name outside the export";
    }
  }
  EXPECT_GT(rewriter_.rewrites(), 800u);
  EXPECT_EQ(snapshot(root_, exp_), before_) << "something outside the export changed";
  EXPECT_FALSE(fs::exists(exp_ / "pulled"));
  EXPECT_EQ(send(p9::Tclunk{.fid = 2}, "", ""), 0) << "fsd stopped serving";
  for (auto [e, n] : outcomes) std::printf("  error %d: %u requests\n", e, n);
}

}  // namespace
}  // namespace fsd::testing
