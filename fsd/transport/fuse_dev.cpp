#include "fsd/transport/fuse_dev.h"

#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>

#include <cstring>
#include <stdexcept>
#include <thread>

#include "fsd/core/buffer.h"
#include "common/fd.h"

namespace fsd {

namespace {
constexpr unsigned kReadersPerThread = 4;
constexpr size_t kBufferSize = FuseMount::kMaxWrite + 4096;
}  // namespace

class FuseMount::Worker {
 public:
  Worker(FuseMount& m) : m_(m) {
    ring_.set_metadata_io(m.metadata_io_);
    wake_.reset(::eventfd(0, EFD_CLOEXEC));
    if (!wake_) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
  }
  void start() {
    thread_ = std::thread([this] {
      server_ = m_.servers_(ring_);
      loop();
    });
  }
  void request_stop() {
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  Task<void> reader() {
    running_++;
    Buffer in(kBufferSize), out(kBufferSize);
    while (!stopping_) {
      int n = co_await ring_.read(m_.fd_, in.data(), static_cast<unsigned>(in.capacity()), 0);
      if (n == -EINTR || n == -EAGAIN) continue;
      if (n == -ENOENT) continue;  // the request was interrupted before we read it
      if (n <= 0) break;  // ENODEV after unmount, ECANCELED on stop
      // The kernel wrote the request into fsd's own buffer: it can be
      // decoded in place.
      auto request = RequestBytes::in_private({in.data(), static_cast<size_t>(n)});
      iovec reply{out.data(), out.capacity()};
      Ring::Active active(ring_);
      auto len = co_await server_->handle(ring_, request, {&reply, 1});
      if (!len) {
        spdlog::warn("fuse {}: malformed request dropped", m_.mountpoint_);
        continue;
      }
      if (*len == 0) continue;
      int w = co_await ring_.write(m_.fd_, out.data(), static_cast<unsigned>(*len), 0);
      // ENOENT: the request was interrupted meanwhile; not an error.
      if (w < 0 && w != -ENOENT) spdlog::debug("fuse {}: reply: {}", m_.mountpoint_, std::strerror(-w));
    }
    running_--;
  }

  Task<void> wait_stop() {
    uint64_t v;
    co_await ring_.read(wake_.get(), &v, sizeof v, 0);
    stopping_ = true;
    co_await ring_.cancel_fd(m_.fd_);
    stop_done_ = true;
  }

  void loop() {
    for (unsigned i = 0; i < kReadersPerThread; i++) spawn(reader());
    spawn(wait_stop());
    // Run until the readers and this worker's stop coroutine have finished.
    while (running_ > 0 || !stop_done_) ring_.run_once();
  }

  FuseMount& m_;
  Ring ring_{256};
  std::shared_ptr<MessageServer> server_;
  Fd wake_;
  std::thread thread_;
  unsigned running_ = 0;
  bool stopping_ = false;
  bool stop_done_ = false;
};

FuseMount::FuseMount(std::string name, std::string mountpoint, MessageServerFactory servers, unsigned threads,
                     Ring::MetadataIo metadata_io)
    : name_(std::move(name)),
      mountpoint_(std::move(mountpoint)),
      servers_(std::move(servers)),
      threads_(threads ? threads : 1),
      metadata_io_(metadata_io) {
  auto fail = [&](const std::string& why) {
    throw std::runtime_error("--fuse-mount " + name_ + "=" + mountpoint_ + ": " + why);
  };
  struct stat st{};
  if (::stat(mountpoint_.c_str(), &st) < 0) fail(std::string("mount point: ") + std::strerror(errno));
  if (!S_ISDIR(st.st_mode)) fail("mount point is not a directory");

  std::string fsname = "fsname=fsd:" + name_;
  std::vector<std::string> argv_s{"fsd", "-o", fsname, "-o", "subtype=fsd", "-o", "default_permissions"};
  if (::geteuid() == 0) argv_s.insert(argv_s.end(), {"-o", "allow_other"});
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  // No ops: libfuse only mounts; fsd reads and answers the requests itself.
  fuse_lowlevel_ops ops{};
  session_ = fuse_session_new(&args, &ops, sizeof ops, nullptr);
  fuse_opt_free_args(&args);
  if (!session_) fail("cannot create a FUSE session");
  if (fuse_session_mount(session_, mountpoint_.c_str()) != 0) {
    fuse_session_destroy(session_);
    session_ = nullptr;
    fail("mount failed (is /dev/fuse there, and are you root or is fusermount3 installed?)");
  }
  fd_ = fuse_session_fd(session_);
}

FuseMount::~FuseMount() { stop(); }

void FuseMount::start() {
  for (unsigned i = 0; i < threads_; i++) workers_.push_back(std::make_unique<Worker>(*this));
  for (auto& w : workers_) w->start();
}

void FuseMount::stop() {
  if (stopped_) return;
  stopped_ = true;
  // The workers' reads are cancelled first, on the session's fd: unmounting
  // closes that fd, after which no cancel can name it, and while a process
  // still holds the mount (its working directory there, say), the lazily
  // unmounted connection would live on and the reads with it. With no
  // reader left, the unmount's close ends the connection: the holders then
  // get ENOTCONN.
  for (auto& w : workers_) w->request_stop();
  for (auto& w : workers_) w->join();
  if (session_) fuse_session_unmount(session_);
  if (session_) fuse_session_destroy(session_);
  session_ = nullptr;
}

}  // namespace fsd
