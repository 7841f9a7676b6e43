#include "launcher/disks.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

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

// A directory of vmlaunch's own under $TMPDIR, removed when it goes.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = (fs::temp_directory_path() / "vmlaunch-disk.XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error(std::string("cannot make a scratch directory: ") + std::strerror(errno));
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  std::string operator/(const char* name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// blkid -p on what a guest would see at the start of the disk: 0 when it
// finds a file system (or a partition table), 2 when none. A qcow2 image is
// read through qemu-img (its backing chain too) into a raw copy of its first
// MiB, which holds the superblock of every file system mkfs_command makes:
// no root, no nbd.
int probe(const std::string& file, bool qcow2, const std::string& log) {
  if (!qcow2) return run_logged({system_tool("blkid"), "-p", file}, log);
  ScratchDir dir;
  std::string head = dir / "head.raw";
  if (int st = run_logged({"qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=1M", "count=1", "if=" + file, "of=" + head}, log);
      st != 0)
    throw std::runtime_error("qemu-img could not read " + file + ":\n" + read_tail(log));
  return run_logged({system_tool("blkid"), "-p", head}, log);
}

// `qemu-img info --output=json file`, read once.
nlohmann::json image_info(const std::string& file, const std::string& log) {
  ScratchDir dir;
  std::string out = dir / "info.json";
  {
    Fd to = open_log(out), err = open_log(log), devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    Child c = Child::spawn({"qemu-img", "info", "--output=json", file}, devnull.get(), to.get(), err.get());
    c.reap(true);
    if (c.status() != 0) throw std::runtime_error("qemu-img could not read " + file + ":\n" + read_tail(log));
  }
  std::ifstream in(out);
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("virtual-size") || !j["virtual-size"].is_number_unsigned())
    throw std::runtime_error("qemu-img info " + file + ": unexpected output");
  return j;
}

// A sparse file of `bytes` at `path`, which must not exist yet.
void make_sparse(const std::string& path, uint64_t bytes, const std::string& what) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  bool ok = fd >= 0 && ::ftruncate(fd, static_cast<off_t>(bytes)) == 0;
  int err = errno;
  if (fd >= 0) ::close(fd);
  if (!ok) throw std::runtime_error("cannot create " + what + ": " + std::strerror(err));
}

// mkfs for disk `d` on the raw image `raw` (its file, or a scratch copy).
void run_mkfs(const DiskSpec& d, const std::string& raw, const std::string& log) {
  if (int st = run_logged(mkfs_command(d.fs_type, d.label, raw), log); st != 0)
    throw std::runtime_error("cannot format " + d.file + " as " + d.fs_type +
                             (st == 127 ? " (is mkfs." + d.fs_type + " installed?)" : "") + ":\n" + read_tail(log));
}

// Formats an empty qcow2 image: mkfs on a sparse raw image of its size,
// converted to qcow2 beside it and renamed over it (so a failure leaves the
// original). One with a backing file is refused: replacing it would drop
// the chain.
void format_qcow2(const DiskSpec& d, const std::string& log) {
  nlohmann::json info = image_info(d.file, log);
  if (std::string backing = info.value("backing-filename", std::string()); !backing.empty())
    throw std::runtime_error(d.file + ": autoFormat found no file system in this qcow2 image, and it has a backing file (" +
                             backing + "); vmlaunch formats only images that stand alone");
  ScratchDir dir;
  std::string raw = dir / "format.raw";
  make_sparse(raw, info["virtual-size"].get<uint64_t>(), "a scratch image to format " + d.file);
  run_mkfs(d, raw, log);
  std::string next = d.file + ".vmlaunch-new";
  if (int st = run_logged({"qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, next}, log); st != 0) {
    std::error_code ec;
    fs::remove(next, ec);
    throw std::runtime_error("qemu-img could not write " + next + ":\n" + read_tail(log));
  }
  fs::rename(next, d.file);
}

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
      make_sparse(d.file, d.size_mib << 20, d.file);
    } else if (int st = run_logged({"qemu-img", "create", "-q", "-f", "qcow2", d.file, std::to_string(d.size_mib) + "M"}, log);
               st != 0) {
      throw std::runtime_error("qemu-img could not create " + d.file + ":\n" + read_tail(log));
    }
  }
  const bool qcow2 = is_qcow2(d.file);
  out.format = qcow2 ? "qcow2" : "raw";
  if (!format) return out;
  // blkid -p exits 2 when it finds no file system (and no partition table).
  int found = probe(d.file, qcow2, log);
  if (found == 0) return out;
  if (found != 2) throw std::runtime_error("blkid could not probe " + d.file + ":\n" + read_tail(log));
  if (qcow2) {
    format_qcow2(d, log);
  } else {
    run_mkfs(d, d.file, log);
  }
  out.formatted = true;
  return out;
}

std::string store_image(StoreImage kind, const std::string& store, const std::string& cache, const std::string& log,
                        const fsd::Closure* closure) {
  if (closure && kind != StoreImage::kSquashfs)
    throw std::invalid_argument("an image of a closure is made with squashfs (mkfs.erofs takes no list of what to leave out)");
  // The key: a hash of a walk of the tree, without reading file contents.
  std::string manifest = std::string(name_of(kind)) + (closure ? ";closure;" : ";");
  std::string excluded;  // the top-level entries a closure leaves out, one per line (mksquashfs -ef)
  std::error_code ec;
  fs::recursive_directory_iterator it(store, fs::directory_options::none, ec), end;
  if (ec) throw std::runtime_error("store: cannot read " + store + ": " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) throw std::runtime_error("store: cannot read " + store + ": " + ec.message());
    if (closure && it.depth() == 0 && !closure->shows(it->path().filename().string())) {
      std::string name = it->path().filename().string();
      if (name.find('\n') != std::string::npos) throw std::runtime_error("store: an entry's name holds a newline: " + name);
      excluded += name + "\n";
      it.disable_recursion_pending();
      continue;
    }
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
  std::string exclude_file = tmp + ".exclude";
  if (closure) {
    std::ofstream(exclude_file, std::ios::binary) << excluded;
    argv.insert(argv.end(), {"-ef", exclude_file});
  }
  int st = run_logged(argv, log);
  if (closure) fs::remove(exclude_file, ec);
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
