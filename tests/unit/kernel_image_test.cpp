// The uncompressed PVH kernel vmlaunch boots in place of a bzImage: made
// from the guest kernel scripts/setup fetches, an x86-64 ELF with the PVH
// entry note and the size the bzImage announces, made once and reused; a
// file that is no bzImage gets nothing (and is remembered as such).
#include <gtest/gtest.h>

#include <fstream>

#include "launcher/kernel_image.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

std::string contents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(KernelImage, BzImageBecomesAPvhElfOnce) {
  std::string kdir = guest_kernel_dir();
  if (kdir.empty()) GTEST_SKIP() << "no guest kernel: run scripts/setup";
  TempDir cache;
  std::string bz = kdir + "/vmlinuz";
  std::string elf = launcher::pvh_kernel(bz, cache.path().string());
  ASSERT_FALSE(elf.empty()) << "the Debian kernel has a PVH entry point; nothing was made of it";
  std::string bytes = contents(elf);
  EXPECT_TRUE(launcher::has_pvh_entry(bytes));
  // Its size is the one the bzImage's payload ends with.
  std::string img = contents(bz);
  uint32_t setup = static_cast<unsigned char>(img[0x1f1]), off, len, size;
  std::memcpy(&off, img.data() + 0x248, 4);
  std::memcpy(&len, img.data() + 0x24c, 4);
  std::memcpy(&size, img.data() + (setup + 1) * 512 + off + len - 4, 4);
  EXPECT_EQ(bytes.size(), size);
  auto made = fs::last_write_time(elf);
  EXPECT_EQ(launcher::pvh_kernel(bz, cache.path().string()), elf);
  EXPECT_EQ(fs::last_write_time(elf), made) << "made again instead of reused";
}

TEST(KernelImage, NothingForWhatIsNoBzImage) {
  TempDir tmp;
  write_file(tmp.path() / "not-a-kernel", std::string(100000, 'x'));
  EXPECT_EQ(launcher::pvh_kernel((tmp.path() / "not-a-kernel").string(), (tmp.path() / "cache").string()), "");
  EXPECT_EQ(launcher::pvh_kernel((tmp.path() / "missing").string(), (tmp.path() / "cache").string()), "");
  EXPECT_FALSE(launcher::has_pvh_entry(std::string(64, '\0')));
  EXPECT_FALSE(launcher::has_pvh_entry("\x7f" "ELF"));
}

}  // namespace
}  // namespace fsd::testing
