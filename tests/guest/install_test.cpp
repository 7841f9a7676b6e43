// What `cmake --install` and `cpack -G DEB` deliver, checked from where
// they put it: the installed binaries run (fsd --version, its capabilities,
// vmlaunch --dry-run, and a guest booted from the installed paths alone),
// the man pages, the bash completions, the systemd units, and QEMU's
// vhost-user descriptor naming the installed fsd. Everything goes to temporary directories; the
// package is inspected and unpacked, not installed on the host.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

std::string sh_quote(const std::string& s) { return "'" + s + "'"; }

class Install : public ::testing::Test {
 protected:
  std::string run(const std::string& cmd, int expect = 0) {
    int status = -1;
    std::string out = run_command(cmd + " 2>&1", &status);
    EXPECT_EQ(status, expect) << cmd << "\n" << out;
    return out;
  }
  TempDir tmp_;
};

TEST_F(Install, InstalledTreeRunsAndBootsAGuest) {
  ASSERT_FALSE(guest_kernel_dir().empty()) << "no guest kernel: run scripts/setup";
  fs::path prefix = tmp_.path() / "prefix";
  run(std::string(CMAKE_COMMAND) + " --install " + sh_quote(FSD_BUILD_DIR) + " --prefix " + sh_quote(prefix.string()));
  for (const char* f : {"bin/fsd", "bin/vmlaunch", "libexec/fsd/fsd-guest-init", "share/man/man1/fsd.1",
                        "share/man/man1/vmlaunch.1", "share/man/man5/fsd-spec.5",
                        "share/bash-completion/completions/fsd", "share/bash-completion/completions/vmlaunch",
                        "share/qemu/vhost-user/50-fsd.json", "lib/systemd/system/fsd@.service",
                        "lib/systemd/system/fsd@.socket"})
    EXPECT_TRUE(fs::exists(prefix / f)) << f;
  // systemd finds nothing to object to in the units (an instance of each),
  // and the service runs the installed fsd.
  fs::path units = prefix / "lib/systemd/system";
  EXPECT_EQ(run("SYSTEMD_UNIT_PATH=" + sh_quote(units.string()) + ": systemd-analyze verify --man=no " +
                sh_quote((units / "fsd@vm1.service").string()) + " " + sh_quote((units / "fsd@vm1.socket").string())),
            "");
  EXPECT_NE(read_file(units / "fsd@.service").find("ExecStart=" + (prefix / "bin/fsd").string() + " "), std::string::npos);
  auto descriptor = nlohmann::json::parse(read_file(prefix / "share/qemu/vhost-user/50-fsd.json"));
  EXPECT_EQ(descriptor["type"], "fs");
  EXPECT_EQ(descriptor["binary"], (prefix / "bin/fsd").string());
  EXPECT_EQ(descriptor["features"], nlohmann::json::array({"separate-options"}));
  EXPECT_TRUE(run(sh_quote((prefix / "bin/fsd").string()) + " --version").starts_with("fsd "));
  EXPECT_EQ(nlohmann::json::parse(run(sh_quote((prefix / "bin/fsd").string()) + " --print-capabilities"))["type"], "fs");
  // The man pages are roff, with their names.
  EXPECT_NE(read_file(prefix / "share/man/man1/fsd.1").find(".TH \"fsd\" \"1\""), std::string::npos);
  EXPECT_NE(read_file(prefix / "share/man/man5/fsd-spec.5").find(".TH \"fsd-spec\" \"5\""), std::string::npos);
  // The completions complete flags from the installed binaries' help.
  std::string completed = run("bash -c " + sh_quote("source " + (prefix / "share/bash-completion/completions/fsd").string() +
                                                  "; COMP_WORDS=(" + (prefix / "bin/fsd").string() +
                                                  " --virtiofs-s); COMP_CWORD=1; _fsd; echo \"${COMPREPLY[@]}\""));
  EXPECT_EQ(completed, "--virtiofs-socket\n");
  // vmlaunch finds the installed fsd and guest init by itself, and boots.
  fs::path tmp = tmp_.path() / "tmp";
  fs::create_directories(tmp);
  std::string env = "env -u QEMU_OPTS TMPDIR=" + sh_quote(tmp.string()) + " PATH=/usr/bin:/bin ";
  std::string dry = run(env + sh_quote((prefix / "bin/vmlaunch").string()) + " --dry-run");
  EXPECT_NE(dry.find((prefix / "bin/fsd").string() + " --log-level"), std::string::npos) << dry;
  std::string out = run(env + sh_quote((prefix / "bin/vmlaunch").string()) +
                        " --accel tcg --timeout 300 -- sh -c 'echo booted-from-$((6 * 7))'");
  EXPECT_NE(out.find("booted-from-42"), std::string::npos) << out;
}

TEST_F(Install, DebianPackageHoldsTheInstallAndItsDependencies) {
  fs::path out = tmp_.path() / "pkg";
  run("cpack -G DEB -B " + sh_quote(out.string()) + " --config " + sh_quote((fs::path(FSD_BUILD_DIR) / "CPackConfig.cmake").string()));
  fs::path deb;
  for (auto& e : fs::directory_iterator(out))
    if (e.path().extension() == ".deb") deb = e.path();
  ASSERT_FALSE(deb.empty()) << "no .deb in " << out;
  std::string depends = run("dpkg-deb -f " + sh_quote(deb.string()) + " Depends");
  for (const char* d : {"libc6", "liburing2", "libfuse3-3", "libseccomp2", "busybox-static", "qemu-system-x86"})
    EXPECT_NE(depends.find(d), std::string::npos) << d << " missing from: " << depends;
  fs::path root = tmp_.path() / "root";
  run("dpkg-deb -x " + sh_quote(deb.string()) + " " + sh_quote(root.string()));
  for (const char* f : {"usr/bin/fsd", "usr/bin/vmlaunch", "usr/libexec/fsd/fsd-guest-init",
                        "usr/share/man/man1/fsd.1", "usr/share/qemu/vhost-user/50-fsd.json"})
    EXPECT_TRUE(fs::exists(root / f)) << f;
  auto descriptor = nlohmann::json::parse(read_file(root / "usr/share/qemu/vhost-user/50-fsd.json"));
  EXPECT_EQ(descriptor["binary"], "/usr/bin/fsd");  // where the package puts it
  EXPECT_TRUE(run(sh_quote((root / "usr/bin/fsd").string()) + " --version").starts_with("fsd "));
}

}  // namespace
}  // namespace fsd::testing
