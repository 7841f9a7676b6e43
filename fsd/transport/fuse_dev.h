// FuseMount: mounts one export on the host through the kernel's FUSE driver
// (/dev/fuse) and serves it with fuse::Server, the same code that serves
// virtiofs guests. libfuse3 performs only the mount (directly as root, or via
// fusermount3); requests are read and answered here.
#pragma once

#include <memory>
#include <string>

#include "fsd/fuse/server.h"

struct fuse_session;

namespace fsd {

class FuseMount {
 public:
  // Mounts (throws std::runtime_error with a one-line message on failure).
  FuseMount(Vfs& vfs, std::string mountpoint, unsigned threads,
            Ring::MetadataIo metadata_io = Ring::MetadataIo::kAdaptive);
  ~FuseMount();
  FuseMount(const FuseMount&) = delete;

  const std::string& mountpoint() const { return mountpoint_; }
  void start();
  // Unmounts, cancels pending reads and joins the workers. Idempotent.
  void stop();

 private:
  class Worker;

  Vfs& vfs_;
  std::string mountpoint_;
  unsigned threads_;
  Ring::MetadataIo metadata_io_;
  fuse_session* session_ = nullptr;
  int fd_ = -1;  // owned by the libfuse session
  std::unique_ptr<fuse::Server> server_;
  std::vector<std::unique_ptr<Worker>> workers_;
  bool stopped_ = false;
};

}  // namespace fsd
