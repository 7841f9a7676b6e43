// FuseMount: a FUSE mount on the host through the kernel's FUSE driver
// (/dev/fuse), its requests served by a MessageServer (fuse::Server, the same
// code that serves virtiofs guests). libfuse3 performs only the mount
// (directly as root, or via fusermount3); requests are read and answered
// here, each read into one buffer and answered from another.
#pragma once

#include <memory>
#include <string>

#include <vector>

#include "fsd/core/server.h"
#include "fsd/uring/ring.h"

struct fuse_session;

namespace fsd {

class FuseMount {
 public:
  // The largest WRITE the mount's server may accept: every request buffer
  // holds one whole (the kernel refuses reads into smaller ones).
  static constexpr uint32_t kMaxWrite = 1 << 20;

  // Mounts (throws std::runtime_error with a one-line message on failure).
  // `name` is the file system's name in the mount table (fsd:NAME). Every
  // worker thread asks `servers` for its server once.
  FuseMount(std::string name, std::string mountpoint, MessageServerFactory servers, unsigned threads,
            Ring::MetadataIo metadata_io = Ring::MetadataIo::kAdaptive);
  ~FuseMount();
  FuseMount(const FuseMount&) = delete;

  const std::string& mountpoint() const { return mountpoint_; }
  void start();
  // Cancels pending reads, joins the workers and unmounts (lazily where a
  // process still holds the mount). Idempotent.
  void stop();

 private:
  class Worker;

  std::string name_;
  std::string mountpoint_;
  MessageServerFactory servers_;
  unsigned threads_;
  Ring::MetadataIo metadata_io_;
  fuse_session* session_ = nullptr;
  int fd_ = -1;  // owned by the libfuse session
  std::vector<std::unique_ptr<Worker>> workers_;
  bool stopped_ = false;
};

}  // namespace fsd
