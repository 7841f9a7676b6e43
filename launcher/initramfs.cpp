#include "launcher/initramfs.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/sysmacros.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace fsd::launcher {

Initramfs::Initramfs(const std::string& path) : path_(path) {
  a_ = archive_write_new();
  if (archive_write_set_format_cpio_newc(a_) != ARCHIVE_OK || archive_write_add_filter_gzip(a_) != ARCHIVE_OK ||
      archive_write_open_filename(a_, path.c_str()) != ARCHIVE_OK) {
    std::string why = archive_error_string(a_) ? archive_error_string(a_) : "unknown error";
    archive_write_free(a_);
    a_ = nullptr;
    throw std::runtime_error("initramfs " + path + ": " + why);
  }
}

Initramfs::~Initramfs() {
  if (a_) archive_write_free(a_);  // closes too
}

void Initramfs::close() {
  if (!a_) return;
  int r = archive_write_close(a_);
  std::string why = r != ARCHIVE_OK && archive_error_string(a_) ? archive_error_string(a_) : "";
  archive_write_free(a_);
  a_ = nullptr;
  if (r != ARCHIVE_OK) throw std::runtime_error("initramfs " + path_ + ": " + why);
}

void Initramfs::entry(const std::string& path, unsigned type, mode_t mode, std::string_view content,
                      const std::string& link, dev_t rdev) {
  archive_entry* e = archive_entry_new();
  archive_entry_set_pathname(e, path.c_str());
  archive_entry_set_filetype(e, type);
  archive_entry_set_perm(e, mode);
  archive_entry_set_uid(e, 0);
  archive_entry_set_gid(e, 0);
  archive_entry_set_mtime(e, 0, 0);  // reproducible archives: the same inputs give the same bytes
  archive_entry_set_size(e, static_cast<la_int64_t>(content.size()));
  if (!link.empty()) archive_entry_set_symlink(e, link.c_str());
  if (rdev) archive_entry_set_rdev(e, rdev);
  int r = archive_write_header(a_, e);
  if (r == ARCHIVE_OK && !content.empty() &&
      archive_write_data(a_, content.data(), content.size()) != static_cast<la_ssize_t>(content.size()))
    r = ARCHIVE_FATAL;
  archive_entry_free(e);
  if (r != ARCHIVE_OK) throw std::runtime_error("initramfs " + path_ + ": writing " + path + ": " + archive_error_string(a_));
}

void Initramfs::add_dir(const std::string& path, mode_t mode) { entry(path, AE_IFDIR, mode, {}); }

void Initramfs::add_file(const std::string& path, std::string_view content, mode_t mode) {
  entry(path, AE_IFREG, mode, content);
}

void Initramfs::add_host_file(const std::string& path, const std::string& host_path, mode_t mode) {
  std::ifstream in(host_path, std::ios::binary);
  if (!in) throw std::runtime_error("initramfs: cannot read " + host_path);
  std::stringstream ss;
  ss << in.rdbuf();
  add_file(path, ss.str(), mode);
}

void Initramfs::add_symlink(const std::string& path, const std::string& target) {
  entry(path, AE_IFLNK, 0777, {}, target);
}

void Initramfs::add_char_device(const std::string& path, unsigned major, unsigned minor, mode_t mode) {
  entry(path, AE_IFCHR, mode, {}, {}, makedev(major, minor));
}

}  // namespace fsd::launcher
