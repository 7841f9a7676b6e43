// fsd's vhost-user virtio-9p device (id 9), driven by the project's own
// front-end: config space with the mount tag, and 9P2000.L frames on the
// request queue, with replies in the chains' writable buffers.
#include <fcntl.h>
#include <gtest/gtest.h>

#include <cstring>

#include "fsd/client/vhost_frontend.h"
#include "protocol/p9/codec.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

using frontend::VhostFrontend;
namespace vu = vhost_user;

class Virtio9p : public ::testing::Test {
 protected:
  void SetUp() override {
    big_ = random_bytes(1500 * 1024 + 11, 21);
    write_file(tmp_.path() / "x/big.bin", big_);
    write_file(tmp_.path() / "x/hello.txt", "hello over virtio-9p\n");
    sock_ = (tmp_.path() / "9p.sock").string();
    fsd_ = std::make_unique<FsdProcess>(FsdProcess::Options{
        .args = {"--export", "share9=" + (tmp_.path() / "x").string() + ",ro", "--virtio9p-socket", "share9=" + sock_}});
    fsd_->wait_for_log("listening on " + sock_);
    VhostFrontend::Options o;
    o.queues = 1;
    o.features |= 1;  // VIRTIO_9P_MOUNT_TAG
    auto f = VhostFrontend::connect(sock_, o);
    ASSERT_TRUE(f.ok());
    f_ = std::move(*f);
    ASSERT_TRUE(f_->negotiate().ok()) << fsd_->log();
  }
  void TearDown() override {
    f_.reset();
    if (fsd_) {
      EXPECT_EQ(fsd_->stop(), 0) << fsd_->log();
    }
  }

  // Sends one T-message on queue 0; returns the decoded reply (or its error),
  // with the writable buffer split into 4 KiB descriptors.
  template <class T>
  Result<p9::RFrame> call(uint16_t tag, const T& t, size_t reply_size = 8192) {
    std::vector<std::byte> frame(8192 + (1 << 20));
    auto n = p9::encode(frame, tag, t);
    if (!n) return Error{n.error()};
    return raw(std::span<const std::byte>(frame).first(*n), reply_size);
  }
  Result<p9::RFrame> raw(std::span<const std::byte> frame, size_t reply_size) {
    uint64_t in = f_->alloc(frame.size()), out = f_->alloc(reply_size);
    std::memcpy(f_->host(in), frame.data(), frame.size());
    std::vector<VhostFrontend::Buf> bufs{{in, static_cast<uint32_t>(frame.size()), false}};
    for (size_t off = 0; off < reply_size; off += 4096)
      bufs.push_back({out + off, static_cast<uint32_t>(std::min<size_t>(4096, reply_size - off)), true});
    uint16_t head = bufs.size() > 64 ? f_->add_indirect(0, bufs) : f_->add_chain(0, bufs);
    f_->publish(0, head);
    f_->kick(0);
    auto u = f_->wait_used(0);
    if (!u) return Error{u.error()};
    if (u->len == 0) return Error{-ENODATA};  // refused: no reply
    reply_.assign(f_->host(out), f_->host(out) + u->len);
    return p9::decode_r(reply_);
  }

  TempDir tmp_;
  std::string big_, sock_;
  std::unique_ptr<FsdProcess> fsd_;
  std::unique_ptr<VhostFrontend> f_;
  std::vector<std::byte> reply_;
};

TEST_F(Virtio9p, ConfigSpaceHoldsTheMountTag) {
  vu::Config c{};
  c.offset = 0;
  c.size = 8;
  auto r = f_->send(vu::Request::GetConfig, c, {}, false, true);
  ASSERT_TRUE(r.ok());
  const auto& got = std::get<vu::Config>(r->payload);
  uint16_t len;
  std::memcpy(&len, got.payload.data(), 2);
  EXPECT_EQ(len, 6);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(got.payload.data()) + 2, 6), "share9");
}

TEST_F(Virtio9p, ServesFilesOverTheVirtqueue) {
  auto v = call(p9::kNoTag, p9::Tversion{.msize = 1 << 20, .version = "9P2000.L"});
  ASSERT_TRUE(v.ok());
  uint32_t msize = std::get<p9::Rversion>(v->msg).msize;
  EXPECT_EQ(msize, 512u * 1024);  // capped where Linux's virtio transport stays
  ASSERT_TRUE(call(1, p9::Tattach{.fid = 1, .afid = p9::kNoFid, .uname = "", .aname = "share9", .n_uname = 0}).ok());
  p9::Twalk w{.fid = 1, .newfid = 2, .wnames = {1, {"big.bin"}}};
  auto walked = call(2, w);
  ASSERT_TRUE(walked.ok());
  ASSERT_EQ(std::get<p9::Rwalk>(walked->msg).wqids.count, 1);
  ASSERT_TRUE(std::holds_alternative<p9::Rlopen>(call(3, p9::Tlopen{.fid = 2, .flags = O_RDONLY})->msg));
  std::string got;
  for (;;) {
    auto r = call(4, p9::Tread{.fid = 2, .offset = got.size(), .count = msize - 24}, msize);
    ASSERT_TRUE(r.ok());
    auto& data = std::get<p9::Rread>(r->msg).data.bytes;
    if (data.empty()) break;
    got.append(reinterpret_cast<const char*>(data.data()), data.size());
  }
  EXPECT_TRUE(got == big_);
  // A read-only export refuses writes here too.
  auto rc = call(5, p9::Tlcreate{.fid = 1, .name = "new", .flags = O_RDWR | O_CREAT, .mode = 0644, .gid = 0});
  ASSERT_TRUE(rc.ok());
  ASSERT_TRUE(std::holds_alternative<p9::Rlerror>(rc->msg));
  EXPECT_EQ(std::get<p9::Rlerror>(rc->msg).ecode, static_cast<uint32_t>(EROFS));
}

TEST_F(Virtio9p, HostileFramesAreRefusedAndTheDeviceLives) {
  ASSERT_TRUE(call(p9::kNoTag, p9::Tversion{.msize = 65536, .version = "9P2000.L"}).ok());
  // A frame whose size field disagrees with the chain, and a truncated one.
  std::vector<std::byte> bad{std::byte{50}, {}, {}, {}, std::byte{120}, {}, {}, std::byte{1}, {}, {}, {}};
  EXPECT_FALSE(raw(bad, 4096).ok());
  std::vector<std::byte> tiny{std::byte{3}, {}, {}};
  EXPECT_FALSE(raw(tiny, 4096).ok());
  // A reply buffer too small for the reply: nothing is written.
  EXPECT_FALSE(call(9, p9::Tattach{.fid = 1, .afid = p9::kNoFid, .uname = "", .aname = "share9", .n_uname = 0}, 8).ok());
  // Still serving.
  auto a = call(10, p9::Tattach{.fid = 7, .afid = p9::kNoFid, .uname = "", .aname = "share9", .n_uname = 0});
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(std::holds_alternative<p9::Rattach>(a->msg));
}

}  // namespace
}  // namespace fsd::testing
