// Initramfs: writes a gzip-compressed newc cpio archive (what Linux unpacks
// as its initial root) with libarchive.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>

struct archive;

namespace fsd::launcher {

class Initramfs {
 public:
  // Starts writing to `path` (throws std::runtime_error on failure).
  explicit Initramfs(const std::string& path);
  ~Initramfs();
  Initramfs(const Initramfs&) = delete;

  void add_dir(const std::string& path, mode_t mode = 0755);
  void add_file(const std::string& path, std::string_view content, mode_t mode = 0644);
  // Copies a host file (throws if it cannot be read).
  void add_host_file(const std::string& path, const std::string& host_path, mode_t mode);
  void add_symlink(const std::string& path, const std::string& target);
  void add_char_device(const std::string& path, unsigned major, unsigned minor, mode_t mode = 0600);
  // Finishes the archive (also done by the destructor, which cannot report errors).
  void close();

 private:
  void entry(const std::string& path, unsigned type, mode_t mode, std::string_view content,
             const std::string& link = {}, dev_t rdev = 0);

  struct archive* a_ = nullptr;
  std::string path_;
};

}  // namespace fsd::launcher
