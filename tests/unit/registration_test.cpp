// Registrations (launcher/registration.h): NAR hashes and sizes as Nix
// computes them, references found wherever a hash part occurs, the text
// form read back with the line of each problem, and, where Debian's Nix is
// installed, what vmlaunch computes loaded by the real `nix-store
// --load-db` and checked against the files by `nix-store --verify`.
#include "launcher/registration.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <stdexcept>
#include <string>

#include "tests/support/test_support.h"

namespace fsd::launcher {
namespace {

using fsd::testing::read_file;
using fsd::testing::run_command;
using fsd::testing::TempDir;
using fsd::testing::write_file;
namespace fs = std::filesystem;

// Valid hash parts (no e, o, t or u).
const std::string kA = "0c6kzph7l0dcbfmjap64f0czdafn3b7x";
const std::string kB = "1jpg5v8rcf4d08rlpq51vnd1w800l64h";
const std::string kC = "34r0bw4vkb6z3qlk089kaaaaaaaaaaaa";

std::string nar_of(const std::string& path) {
  std::string nar;
  write_nar(path, [&](std::string_view s) { nar += s; });
  return nar;
}

TEST(Registration, ANarHashesAsNixHashesIt) {
  // A directory holding the file f ("hi\n", mode 0644): `nix-store --dump`
  // of it is 288 bytes, and `nix-hash --type sha256 --to-base32` of their
  // SHA-256 is this.
  TempDir tmp;
  fs::path dir = tmp.path() / (kA + "-hello");
  write_file(dir / "f", "hi\n");
  ::chmod((dir / "f").c_str(), 0644);
  NarSummary s = summarise_nar(dir.string(), {});
  EXPECT_EQ(s.size, 288u);
  EXPECT_EQ(nix_base32(s.sha256), "1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k");
  EXPECT_EQ(nar_of(dir.string()).size(), 288u);
}

TEST(Registration, StoreNamesAreNixs) {
  EXPECT_TRUE(is_store_name(kA + "-hello-1.0"));
  EXPECT_TRUE(is_store_name(kA + "-a+b_c?d=e.drv"));
  for (const std::string& bad : std::vector<std::string>{kA, kA + "-", kA + "-.hidden", kA + "-a/b", kA + "-a b", "7r8s9t0u1v2w3x4y5z6a7b8c9d0e1f2g-hello",
                          kA.substr(1) + "-short", kA + "_x", kA + "-" + std::string(212, 'x')})
    EXPECT_FALSE(is_store_name(bad)) << bad;
}

TEST(Registration, ReferencesAreFoundInBytesNamesAndLinks) {
  TempDir tmp;
  fs::path store = tmp.path() / "store";
  // A's file holds B's hash part across the 256 KiB read boundary; C is
  // named by a symlink's target; B names itself in a file name; nothing
  // names A.
  std::string big(256 << 10, 'x');
  big.replace(big.size() - 10, kB.size(), kB);
  big += std::string(100, 'y');
  write_file(store / (kA + "-a") / "lib/data", big);
  write_file(store / (kB + "-b") / ("share/" + kB), "");
  fs::create_directories(store / (kC + "-c"));
  fs::create_symlink("/nix/store/" + kC + "-c/bin", store / (kA + "-a") / "c");
  write_file(store / (kC + "-c") / "note", "nothing here names " + kA.substr(0, 31) + ", which is one short\n");

  auto reg = compute_registration(store.string(), "/nix/store", {kC + "-c", kA + "-a", kB + "-b"});
  ASSERT_EQ(reg.size(), 3u);
  EXPECT_EQ(reg[0].path, "/nix/store/" + kA + "-a");
  EXPECT_EQ(reg[0].references, (std::vector<std::string>{"/nix/store/" + kB + "-b", "/nix/store/" + kC + "-c"}));
  EXPECT_EQ(reg[1].references, std::vector<std::string>{"/nix/store/" + kB + "-b"});
  EXPECT_TRUE(reg[2].references.empty());
  for (const auto& p : reg) {
    EXPECT_EQ(p.nar_size, nar_of((store / fs::path(p.path).filename()).string()).size());
    EXPECT_EQ(p.nar_hash.size(), 7u + 52u);
  }
}

TEST(Registration, ComputingRefusesWhatIsNoStorePath) {
  TempDir tmp;
  fs::create_directories(tmp.path() / (kA + "-a"));
  EXPECT_THROW(compute_registration(tmp.path().string(), "/nix/store", {"7r8s9t0u1v2w3x4y5z6a7b8c9d0e1f2g-x"}), std::runtime_error);
  EXPECT_THROW(compute_registration(tmp.path().string(), "/nix/store", {kB + "-missing"}), std::runtime_error);
  ::mkfifo((tmp.path() / (kA + "-a") / "fifo").c_str(), 0644);
  try {
    compute_registration(tmp.path().string(), "/nix/store", {kA + "-a"});
    ADD_FAILURE() << "a fifo was archived";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("fifo"), std::string::npos) << e.what();
  }
}

TEST(Registration, TheTextFormRoundTrips) {
  std::vector<ValidPath> reg = {
      {.path = "/nix/store/" + kA + "-a", .nar_hash = "sha256:" + std::string(52, '1'), .nar_size = 120,
       .references = {"/nix/store/" + kA + "-a", "/nix/store/" + kB + "-b"}},
      {.path = "/nix/store/" + kB + "-b", .nar_hash = "sha256:" + std::string(64, 'f'), .nar_size = 8,
       .deriver = "/nix/store/" + kC + "-b.drv"},
  };
  std::string text = format_registration(reg);
  EXPECT_EQ(text.substr(0, text.find('\n', text.find('\n') + 1)),
            "/nix/store/" + kA + "-a\nsha256:" + std::string(52, '1'));
  auto back = parse_registration(text, "/nix/store", "reg");
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].references, reg[0].references);
  EXPECT_EQ(back[1].deriver, reg[1].deriver);
  EXPECT_EQ(back[1].nar_size, 8u);
  EXPECT_EQ(format_registration(back), text);
}

TEST(Registration, AProblemIsNamedWithItsLine) {  // lines counted from 1
  std::string a = "/nix/store/" + kA + "-a\n", h = "sha256:" + std::string(52, '1') + "\n";
  struct Case {
    std::string text, where, why;
  } cases[] = {
      {"/gnu/store/" + kA + "-a\n" + h + "1\n\n0\n", "reg:1", "not a store path"},
      {a + "sha256:xyz\n1\n\n0\n", "reg:2", "not a NAR hash"},
      {a + h + "12k\n\n0\n", "reg:3", "not a number"},
      {a + h + "0\n\n0\n", "reg:3", "NAR size of 0"},
      {a + h + "1\nnot-a-path\n0\n", "reg:4", "deriver"},
      {a + h + "1\n\n2\n" + a, "reg:7", "ends before a reference"},
      {a + h + "1\n\n1\n/nix/store/" + kB + "-b\n", "reg:6", "not one of the registration's paths"},
      {a + h + "1\n\n0\n" + a + h + "1\n\n0\n", "reg:6", "registered twice"},
      {"", "reg", "registers no paths"},
  };
  for (const auto& c : cases) {
    try {
      parse_registration(c.text, "/nix/store", "reg");
      ADD_FAILURE() << "taken: " << c.text;
    } catch (const std::runtime_error& e) {
      std::string what = e.what();
      EXPECT_NE(what.find(c.where + ":"), std::string::npos) << what;
      EXPECT_NE(what.find(c.why), std::string::npos) << what;
    }
  }
}

// The real tool: Debian's nix-bin, in a store and state directory of the
// test's own.
class RealNix : public ::testing::Test {
 protected:
  void SetUp() override {
    int st = 0;
    run_command("command -v nix-store >/dev/null", &st);
    if (st != 0) GTEST_SKIP() << "no nix-store (Debian's nix-bin) to check against";
    fs::create_directories(store_);
    env_ = "NIX_STORE_DIR=" + store_.string() + " NIX_STATE_DIR=" + (tmp_.path() / "state").string() +
           " NIX_LOG_DIR=" + (tmp_.path() / "log").string() + " NIX_CONF_DIR=" + (tmp_.path() / "conf").string() +
           " NIX_REMOTE= ";
  }
  std::string nix(const std::string& args, int* status) {
    return run_command(env_ + "nix-store " + args + " 2>" + (tmp_.path() / "nix.err").string(), status);
  }
  std::string err() { return read_file(tmp_.path() / "nix.err"); }

  TempDir tmp_;
  fs::path store_ = tmp_.path() / "store";
  std::string env_;
};

TEST_F(RealNix, ItsDumpIsOurNarAndItLoadsAndVerifiesOurRegistration) {
  fs::path a = store_ / (kA + "-tool"), b = store_ / (kB + "-lib"), c = store_ / (kC + "-script");
  write_file(a / "bin/tool", "#!" + store_.string() + "/" + kC + "-script\nuses " + store_.string() + "/" + kB + "-lib/lib\n");
  ::chmod((a / "bin/tool").c_str(), 0755);
  fs::create_directories(a / "empty-dir");
  write_file(a / "empty-file", "");
  write_file(a / "share/Zeta", "upper case sorts first\n");
  write_file(a / "share/alpha", std::string(70000, '\x01'));
  fs::create_symlink("../bin/tool", a / "share/link");
  write_file(b / "lib/libx.so", "a library\n");
  write_file(c, "a single file, executable\n");
  ::chmod(c.c_str(), 0555);

  int st = 0;
  for (const fs::path& p : {a, b, c}) {
    std::string dump = nix("--dump " + p.string(), &st);
    ASSERT_EQ(st, 0) << err();
    EXPECT_EQ(dump, nar_of(p.string())) << p;
  }

  auto reg = compute_registration(store_.string(), store_.string(), {a.filename(), b.filename(), c.filename()});
  write_file(tmp_.path() / "registration", format_registration(reg));
  nix("--load-db < " + (tmp_.path() / "registration").string(), &st);
  ASSERT_EQ(st, 0) << err();

  // Every path valid, with our hash, and matching its files.
  std::string valid = nix("--check-validity --print-invalid " + a.string() + " " + b.string() + " " + c.string(), &st);
  EXPECT_EQ(st, 0) << err();
  EXPECT_EQ(valid, "");
  nix("--verify --check-contents", &st);
  EXPECT_EQ(st, 0) << err();
  EXPECT_EQ(err().find("was modified"), std::string::npos) << err();
  EXPECT_EQ(nix("-q --hash " + a.string(), &st), reg[0].nar_hash + "\n");
  EXPECT_EQ(nix("-q --references " + a.string(), &st), b.string() + "\n" + c.string() + "\n");
  EXPECT_EQ(nix("-q --references " + b.string(), &st), "");
  // The database holds exactly those paths.
  std::string all = nix("-q --requisites " + a.string(), &st);
  EXPECT_EQ(st, 0) << err();
  EXPECT_EQ(std::count(all.begin(), all.end(), '\n'), 3);

  // A path whose files are not what was registered: Nix's own check sees it.
  write_file(b / "lib/libx.so", "changed\n");
  nix("--verify --check-contents", &st);
  EXPECT_NE(err().find("was modified"), std::string::npos) << err();
}

}  // namespace
}  // namespace fsd::launcher
