// Disk images on the host: created when missing, formatted when asked
// (autoFormat), before QEMU starts. The guest only mounts them.
#pragma once

#include <string>
#include <vector>

#include "common/closure.h"
#include "launcher/spec.h"

namespace fsd::launcher {

// The command that formats `file` as `fs_type` with `label`, or {} when
// vmlaunch does not know how to make that file system.
std::vector<std::string> mkfs_command(const std::string& fs_type, const std::string& label, const std::string& file);
// The file systems mkfs_command makes, for messages: "ext2, ext3, ...".
std::string formattable_file_systems();

// Whether `file` is a qcow2 image (else QEMU is told it is raw).
bool is_qcow2(const std::string& file);

struct PreparedDisk {
  std::string format;     // "raw" or "qcow2", as QEMU is told
  bool created = false;   // vmlaunch made the file in this run
  bool formatted = false; // and formatted it (or an empty one it found)
};

// Makes the disk ready: a missing file is created (a raw image when it is
// to be formatted, else qcow2), and formatted when autoFormat is set and
// the image has no file system yet (blkid finds none at its start, read
// through qemu-img for a qcow2 image and its backing chain). An image that
// has one is never touched, whatever its format; an empty qcow2 image is
// formatted as a new image of the same size (a standalone one only: with a
// backing file it is refused). `log` takes the tools' output. Throws
// std::runtime_error with that output when a tool fails.
PreparedDisk prepare_disk(const DiskSpec& d, const std::string& log);

// An image of the directory `store` (erofs or squashfs, made with Debian's
// erofs-utils or squashfs-tools), in `cache`, made when missing. Images are
// keyed by what is in the directory: every entry's path, type, mode, size,
// modification time and link target, so a changed store gets a new image
// and an unchanged one is reused. Throws std::runtime_error with the tool's
// output when it fails. With a `closure`, only the top-level entries it
// lists are in the image (and in its key): squashfs only, since mkfs.erofs
// takes no list of what to leave out (std::invalid_argument for erofs).
std::string store_image(StoreImage kind, const std::string& store, const std::string& cache, const std::string& log,
                        const fsd::Closure* closure = nullptr);

}  // namespace fsd::launcher
