// prepare_disk with autoFormat on images of both formats: a disk that holds
// a file system is never touched, whatever its image format; an empty one
// is formatted and keeps its format and size; an empty qcow2 image with a
// backing file is refused. Uses qemu-img, blkid and mkfs.ext4 as vmlaunch
// does.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>

#include "launcher/disks.h"
#include "launcher/process.h"
#include "tests/support/test_support.h"

namespace fsd::launcher {
namespace {

using fsd::testing::TempDir;
namespace fs = std::filesystem;

class Disks : public ::testing::Test {
 protected:
  std::string path(const char* name) { return (tmp_.path() / name).string(); }
  std::string log() { return path("tools.log"); }
  void run(const std::vector<std::string>& argv) { ASSERT_EQ(run_logged(argv, log()), 0) << read_tail(log()); }
  DiskSpec spec(const std::string& file) {
    DiskSpec d;
    d.file = file;
    d.size_mib = 32;
    d.fs_type = "ext4";
    d.label = "data";
    d.auto_format = true;
    return d;
  }
  // What blkid says of the disk's start as a guest sees it ("" when nothing).
  std::string blkid_of(const std::string& file) {
    std::string raw = file;
    if (is_qcow2(file)) {
      raw = path("seen.raw");
      fs::remove(raw);
      run({"qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=1M", "count=1", "if=" + file, "of=" + raw});
    }
    if (run_logged({system_tool("blkid"), "-p", raw}, log()) != 0) return "";
    return read_tail(log());
  }
  struct timespec mtime(const std::string& file) {
    struct stat st{};
    ::stat(file.c_str(), &st);
    return st.st_mtim;
  }

  TempDir tmp_;
};

TEST_F(Disks, AQcow2ImageWithAFileSystemIsNeverReformatted) {
  std::string raw = path("made.raw"), image = path("kept.qcow2");
  run({"truncate", "-s", "32M", raw});
  run({system_tool("mkfs.ext4"), "-qF", "-L", "mine", raw});
  run({"qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, image});
  auto before = mtime(image);
  PreparedDisk p = prepare_disk(spec(image), log());
  EXPECT_EQ(p.format, "qcow2");
  EXPECT_FALSE(p.created);
  EXPECT_FALSE(p.formatted);
  auto after = mtime(image);
  EXPECT_TRUE(before.tv_sec == after.tv_sec && before.tv_nsec == after.tv_nsec) << "the image was written";
  EXPECT_NE(blkid_of(image).find("LABEL=\"mine\""), std::string::npos);
}

TEST_F(Disks, AnEmptyQcow2ImageIsFormattedAndStaysQcow2OfItsSize) {
  std::string image = path("empty.qcow2");
  run({"qemu-img", "create", "-q", "-f", "qcow2", image, "48M"});
  PreparedDisk p = prepare_disk(spec(image), log());
  EXPECT_EQ(p.format, "qcow2");
  EXPECT_TRUE(p.formatted);
  EXPECT_TRUE(is_qcow2(image));
  std::string seen = blkid_of(image);
  EXPECT_NE(seen.find("TYPE=\"ext4\""), std::string::npos) << seen;
  EXPECT_NE(seen.find("LABEL=\"data\""), std::string::npos) << seen;
  run({"qemu-img", "info", image});
  EXPECT_NE(read_tail(log()).find("48 MiB"), std::string::npos) << read_tail(log());
  EXPECT_FALSE(fs::exists(image + ".vmlaunch-new"));
  // Once formatted, it is a disk with a file system: left alone.
  EXPECT_FALSE(prepare_disk(spec(image), log()).formatted);
}

TEST_F(Disks, AnEmptyQcow2ImageWithABackingFileIsRefused) {
  std::string base = path("base.qcow2"), top = path("top.qcow2");
  run({"qemu-img", "create", "-q", "-f", "qcow2", base, "32M"});
  run({"qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top});
  try {
    prepare_disk(spec(top), log());
    FAIL() << "formatted an image with a backing file";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("backing file"), std::string::npos) << e.what();
  }
  EXPECT_EQ(blkid_of(top), "");
}

TEST_F(Disks, RawImagesAreFormattedOnlyWhenEmpty) {
  std::string kept = path("kept.img"), empty = path("empty.img");
  run({"truncate", "-s", "32M", kept});
  run({system_tool("mkfs.ext4"), "-qF", "-L", "mine", kept});
  run({"truncate", "-s", "32M", empty});
  EXPECT_FALSE(prepare_disk(spec(kept), log()).formatted);
  EXPECT_NE(blkid_of(kept).find("LABEL=\"mine\""), std::string::npos);
  PreparedDisk p = prepare_disk(spec(empty), log());
  EXPECT_EQ(p.format, "raw");
  EXPECT_TRUE(p.formatted);
  EXPECT_NE(blkid_of(empty).find("LABEL=\"data\""), std::string::npos);
}

TEST_F(Disks, AMissingImageIsCreatedAndFormatted) {
  std::string image = path("new.img");
  PreparedDisk p = prepare_disk(spec(image), log());
  EXPECT_TRUE(p.created);
  EXPECT_TRUE(p.formatted);
  EXPECT_EQ(p.format, "raw");
  EXPECT_EQ(fs::file_size(image), 32u << 20);
  EXPECT_NE(blkid_of(image).find("TYPE=\"ext4\""), std::string::npos);
}

}  // namespace
}  // namespace fsd::launcher
