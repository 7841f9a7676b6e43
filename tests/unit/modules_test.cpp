// Kernel-module lookup against the guest kernel scripts/setup fetches:
// soft dependencies, the modules found beside a kernel in the layouts
// kernels come in, and depmod's index made for a directory without one.
#include <gtest/gtest.h>

#include <algorithm>

#include "launcher/modules.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

using launcher::ModuleFile;

class Modules : public ::testing::Test {
 protected:
  void SetUp() override {
    kdir_ = guest_kernel_dir();
    if (kdir_.empty()) GTEST_SKIP() << "no guest kernel: run scripts/setup";
    for (auto& e : fs::directory_iterator(kdir_ + "/lib/modules")) modules_ = e.path().string();
    version_ = fs::path(modules_).filename().string();
  }
  static std::string name(const ModuleFile& m) { return fs::path(m.path).filename().string(); }
  static ptrdiff_t index_of(const std::vector<ModuleFile>& v, const std::string& prefix) {
    auto it = std::find_if(v.begin(), v.end(), [&](auto& m) { return name(m).starts_with(prefix); });
    return it == v.end() ? -1 : it - v.begin();
  }

  std::string kdir_, modules_, version_;
  TempDir tmp_;
};

TEST_F(Modules, SoftDependenciesComeFirstAndAreOptional) {
  auto mods = launcher::resolve_modules(modules_, {"ext4"});
  ptrdiff_t ext4 = index_of(mods, "ext4."), jbd2 = index_of(mods, "jbd2."), crc32c = index_of(mods, "crc32c");
  ASSERT_GE(ext4, 0);
  ASSERT_GE(jbd2, 0);
  ASSERT_GE(crc32c, 0) << "ext4's softdep (modules.softdep: crypto-crc32c) was not followed";
  EXPECT_LT(jbd2, ext4);
  EXPECT_LT(crc32c, ext4);
  EXPECT_FALSE(mods[ext4].optional);
  EXPECT_FALSE(mods[jbd2].optional);
  EXPECT_TRUE(mods[crc32c].optional);
  // No module twice.
  for (size_t i = 0; i < mods.size(); i++)
    for (size_t j = i + 1; j < mods.size(); j++) EXPECT_NE(mods[i].path, mods[j].path);
  EXPECT_THROW(launcher::resolve_modules(modules_, {"no_such_module"}), std::runtime_error);
}

TEST_F(Modules, FoundBesideTheKernelInEachLayout) {
  // scripts/setup's: DIR/vmlinuz, DIR/lib/modules/VERSION.
  EXPECT_EQ(launcher::find_module_dir(kdir_ + "/vmlinuz"), modules_);
  // A package: PKG/boot/bzImage with PKG/lib/modules/VERSION beside a
  // second version; the version inside the bzImage picks.
  fs::path pkg = tmp_.path() / "pkg";
  fs::create_directories(pkg / "boot");
  fs::create_directories(pkg / "lib/modules/0.0.1-other");
  fs::create_symlink(kdir_ + "/vmlinuz", pkg / "boot/bzImage");
  fs::create_symlink(modules_, pkg / "lib/modules" / version_);
  EXPECT_EQ(launcher::find_module_dir((pkg / "boot/bzImage").string()), (pkg / "lib/modules" / version_).string());
  // Nothing anywhere: "".
  fs::create_directories(tmp_.path() / "bare");
  fs::create_symlink(kdir_ + "/vmlinuz", tmp_.path() / "bare/vmlinuz");
  EXPECT_EQ(launcher::find_module_dir((tmp_.path() / "bare/vmlinuz").string()), "");
}

TEST_F(Modules, DepmodIndexesADirectoryWithoutModulesDep) {
  // The modules alone, as a kernel package may ship them: no modules.dep.
  fs::path plain = tmp_.path() / "plain/lib/modules" / version_;
  fs::create_directories(plain);
  fs::create_symlink(modules_ + "/kernel", plain / "kernel");
  fs::copy_file(modules_ + "/modules.order", plain / "modules.order");
  EXPECT_THROW(launcher::resolve_modules(plain.string(), {"virtiofs"}), std::runtime_error);
  std::string cache = (tmp_.path() / "cache").string();
  std::string indexed = launcher::indexed_module_dir(plain.string(), cache);
  EXPECT_NE(indexed, plain.string());
  EXPECT_TRUE(indexed.starts_with(cache));
  EXPECT_TRUE(fs::exists(fs::path(indexed) / "modules.dep"));
  EXPECT_FALSE(fs::exists(plain / "modules.dep")) << "the kernel's own directory was written to";
  auto mods = launcher::resolve_modules(indexed, {"virtiofs", "ext4"});
  EXPECT_GE(index_of(mods, "virtiofs."), 0);
  EXPECT_GE(index_of(mods, "jbd2."), 0);
  // Made once: the second call finds it.
  EXPECT_EQ(launcher::indexed_module_dir(plain.string(), cache), indexed);
  // A directory that has an index is used as it is.
  EXPECT_EQ(launcher::indexed_module_dir(modules_, cache), modules_);
}

}  // namespace
}  // namespace fsd::testing
