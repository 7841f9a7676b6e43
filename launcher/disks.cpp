#include "launcher/disks.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "launcher/process.h"

namespace fs = std::filesystem;

namespace fsd::launcher {
namespace {

struct MkfsTool {
  const char* fs_type;
  const char* program;
  const char* label_flag;
  const char* quiet_force;  // flags that make it quiet and let it format a regular file
};
constexpr MkfsTool kMkfs[] = {
    {"ext2", "mkfs.ext2", "-L", "-qF"}, {"ext3", "mkfs.ext3", "-L", "-qF"}, {"ext4", "mkfs.ext4", "-L", "-qF"},
    {"xfs", "mkfs.xfs", "-L", "-qf"},   {"btrfs", "mkfs.btrfs", "-L", "-qf"}, {"vfat", "mkfs.vfat", "-n", ""},
};

}  // namespace

bool is_qcow2(const std::string& file) {
  char magic[4] = {};
  std::ifstream(file, std::ios::binary).read(magic, 4);
  return std::string(magic, 4) == std::string("QFI\xfb", 4);
}

std::vector<std::string> mkfs_command(const std::string& fs_type, const std::string& label, const std::string& file) {
  for (const auto& t : kMkfs) {
    if (fs_type != t.fs_type) continue;
    std::vector<std::string> argv{system_tool(t.program)};
    if (*t.quiet_force) argv.emplace_back(t.quiet_force);
    if (!label.empty()) argv.insert(argv.end(), {t.label_flag, label});
    argv.push_back(file);
    return argv;
  }
  return {};
}

std::string formattable_file_systems() {
  std::string all;
  for (const auto& t : kMkfs) all += (all.empty() ? "" : ", ") + std::string(t.fs_type);
  return all;
}

PreparedDisk prepare_disk(const DiskSpec& d, const std::string& log) {
  PreparedDisk out;
  bool format = d.auto_format && !d.fs_type.empty();
  if (!fs::exists(d.file)) {
    out.created = true;
    if (format) {  // a sparse raw image, which mkfs can write to directly
      int fd = ::open(d.file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      bool ok = fd >= 0 && ::ftruncate(fd, static_cast<off_t>(d.size_mib << 20)) == 0;
      if (fd >= 0) ::close(fd);
      if (!ok) throw std::runtime_error("cannot create " + d.file + ": " + std::strerror(errno));
    } else if (int st = run_logged({"qemu-img", "create", "-q", "-f", "qcow2", d.file, std::to_string(d.size_mib) + "M"}, log);
               st != 0) {
      throw std::runtime_error("qemu-img could not create " + d.file + ":\n" + read_tail(log));
    }
  }
  out.format = is_qcow2(d.file) ? "qcow2" : "raw";
  if (!format) return out;
  if (out.format == "qcow2") {
    if (out.created) return out;  // not reached: new images to format are raw
    throw std::runtime_error(d.file + ": autoFormat formats raw images, and this one is qcow2 (format it yourself, or "
                             "let vmlaunch create the file)");
  }
  // blkid -p exits 2 when it finds no file system (and no partition table).
  int found = run_logged({system_tool("blkid"), "-p", d.file}, log);
  if (found == 0) return out;
  if (found != 2) throw std::runtime_error("blkid could not probe " + d.file + ":\n" + read_tail(log));
  if (int st = run_logged(mkfs_command(d.fs_type, d.label, d.file), log); st != 0)
    throw std::runtime_error("cannot format " + d.file + " as " + d.fs_type +
                             (st == 127 ? " (is mkfs." + d.fs_type + " installed?)" : "") + ":\n" + read_tail(log));
  out.formatted = true;
  return out;
}

std::string store_image(StoreImage kind, const std::string& store, const std::string& cache, const std::string& log) {
  // The key: a hash of a walk of the tree, without reading file contents.
  std::string manifest = std::string(name_of(kind)) + ";";
  std::error_code ec;
  fs::recursive_directory_iterator it(store, fs::directory_options::none, ec), end;
  if (ec) throw std::runtime_error("store: cannot read " + store + ": " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) throw std::runtime_error("store: cannot read " + store + ": " + ec.message());
    struct stat st{};
    if (::lstat(it->path().c_str(), &st) != 0) continue;
    manifest += it->path().lexically_relative(store).string() + ":" + std::to_string(st.st_mode) + ":" +
                std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
                std::to_string(st.st_mtim.tv_nsec);
    if (S_ISLNK(st.st_mode)) manifest += ">" + fs::read_symlink(it->path(), ec).string();
    manifest += "\n";
  }
  char key[40];
  std::snprintf(key, sizeof key, "%016zx-%zu", std::hash<std::string>{}(manifest), manifest.size());
  fs::create_directories(fs::path(cache) / "store-images");
  std::string image = (fs::path(cache) / "store-images" / (std::string(key) + "." + std::string(name_of(kind)))).string();
  if (fs::exists(image)) return image;
  std::string tmp = image + ".tmp." + std::to_string(::getpid());
  std::vector<std::string> argv;
  if (kind == StoreImage::kErofs) argv = {system_tool("mkfs.erofs"), "--quiet", tmp, store};
  else argv = {system_tool("mksquashfs"), store, tmp, "-quiet", "-noappend", "-no-progress", "-comp", "zstd"};
  int st = run_logged(argv, log);
  if (st != 0) {
    fs::remove(tmp, ec);
    std::string package = kind == StoreImage::kErofs ? "erofs-utils" : "squashfs-tools";
    throw std::runtime_error("cannot make the store's " + std::string(name_of(kind)) + " image" +
                             (st == 127 ? " (is " + package + " installed?)" : "") + ":\n" + read_tail(log));
  }
  fs::rename(tmp, image);
  return image;
}

}  // namespace fsd::launcher
