// FUSE request decoding and reply building, from literal bytes.
#include <dirent.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "protocol/fuse/reply.h"
#include "protocol/fuse/request.h"

namespace fsd::fuse {
namespace {

// Builds a request: header, then the given parts, with header.len filled in.
class Req {
 public:
  Req(uint32_t opcode, uint64_t nodeid) {
    h_.opcode = opcode;
    h_.unique = 77;
    h_.nodeid = nodeid;
    h_.uid = 1000;
    h_.gid = 100;
  }
  template <class T>
  Req& add(const T& v) {
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    body_.insert(body_.end(), p, p + sizeof v);
    return *this;
  }
  Req& str(std::string_view s) {
    for (char c : s) body_.push_back(static_cast<std::byte>(c));
    body_.push_back(std::byte{0});
    return *this;
  }
  Req& bytes(const std::vector<std::byte>& b) {
    body_.insert(body_.end(), b.begin(), b.end());
    return *this;
  }
  Req& extlen(uint16_t units) {
    h_.total_extlen = units;
    return *this;
  }
  Req& raw(std::string_view s) {
    for (char c : s) body_.push_back(static_cast<std::byte>(c));
    return *this;
  }
  std::vector<std::byte> bytes() const {
    fuse_in_header h = h_;
    h.len = static_cast<uint32_t>(sizeof h + body_.size());
    std::vector<std::byte> out(sizeof h);
    std::memcpy(out.data(), &h, sizeof h);
    out.insert(out.end(), body_.begin(), body_.end());
    return out;
  }

 private:
  fuse_in_header h_{};
  std::vector<std::byte> body_;
};

// A fuse_secctx_header record as the kernel's get_security_context() writes
// it: header, then per context a fuse_secctx, the name and its NUL, the
// value; the whole padded to 8 bytes.
std::vector<std::byte> secctx(std::vector<std::pair<std::string, std::string>> contexts) {
  std::vector<std::byte> out(sizeof(fuse_secctx_header));
  for (const auto& [name, value] : contexts) {
    fuse_secctx c{.size = static_cast<uint32_t>(value.size()), .padding = 0};
    const auto* p = reinterpret_cast<const std::byte*>(&c);
    out.insert(out.end(), p, p + sizeof c);
    for (char ch : name) out.push_back(static_cast<std::byte>(ch));
    out.push_back(std::byte{0});
    for (char ch : value) out.push_back(static_cast<std::byte>(ch));
  }
  out.resize((out.size() + 7) / 8 * 8);
  fuse_secctx_header h{.size = static_cast<uint32_t>(out.size()), .nr_secctx = static_cast<uint32_t>(contexts.size())};
  std::memcpy(out.data(), &h, sizeof h);
  return out;
}

TEST(FuseDecode, CreationsCarryTheirSecurityContext) {
  const std::string label = "system_u:object_r:tmp_t:s0";
  auto ctx = secctx({{"security.selinux", label}});
  uint16_t units = static_cast<uint16_t>(ctx.size() / 8);
  auto expect_label = [&](Bytes extra) {
    auto sc = security_context(extra);
    ASSERT_TRUE(sc.ok());
    ASSERT_TRUE(sc->has_value());
    EXPECT_EQ((*sc)->name, "security.selinux");
    EXPECT_EQ(std::string(reinterpret_cast<const char*>((*sc)->value.data()), (*sc)->value.size()), label);
  };
  // Protocol 7.38: an extension, which header.total_extlen measures.
  fuse_create_in ci{.flags = 0, .mode = 0100644, .umask = 022, .open_flags = 0};
  auto create = Req(FUSE_CREATE, 1).add(ci).str("new").bytes(ctx).extlen(units).bytes();
  auto r = decode(create);
  ASSERT_TRUE(r.ok());
  const auto& c = std::get<Create>(r->args);
  EXPECT_EQ(c.name, "new");
  expect_label(c.extra);
  auto symlink = Req(FUSE_SYMLINK, 1).str("link").str("target").bytes(ctx).extlen(units).bytes();
  r = decode(symlink);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(std::get<Symlink>(r->args).target, "target");
  expect_label(std::get<Symlink>(r->args).extra);
  // Older clients: the same record, after the last argument.
  fuse_mkdir_in mi{.mode = 0755, .umask = 022};
  auto mkdir = Req(FUSE_MKDIR, 1).add(mi).str("dir").bytes(ctx).bytes();  // the decoded views point into it
  r = decode(mkdir);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(std::get<Mkdir>(r->args).name, "dir");
  expect_label(std::get<Mkdir>(r->args).extra);

  // No context (the client's LSM had none), or another extension only.
  auto none = security_context(secctx({}));
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  std::vector<std::byte> groups(16);
  fuse_ext_header gh{.size = 16, .type = 32};  // FUSE_EXT_GROUPS
  std::memcpy(groups.data(), &gh, sizeof gh);
  auto skipped = security_context(groups);
  ASSERT_TRUE(skipped.ok());
  EXPECT_FALSE(skipped->has_value());
  groups.insert(groups.end(), ctx.begin(), ctx.end());
  auto after = security_context(groups);
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(after->has_value());
}

TEST(FuseDecode, MalformedSecurityContextsAreRefused) {
  auto bad = [](std::vector<std::byte> b) { return security_context(b).error() == -EBADMSG; };
  EXPECT_TRUE(bad(secctx({{"security.selinux", "a"}, {"security.SMACK64", "b"}})));  // more than one
  auto ctx = secctx({{"security.selinux", "label"}});
  auto big = ctx;
  uint32_t huge = 4096;
  std::memcpy(big.data(), &huge, 4);  // the record claims more than there is
  EXPECT_TRUE(bad(big));
  auto overlong = ctx;
  uint32_t value_size = 4096;
  std::memcpy(overlong.data() + sizeof(fuse_secctx_header), &value_size, 4);  // the value runs past the record
  EXPECT_TRUE(bad(overlong));
  std::vector<std::byte> no_nul = secctx({{"x", ""}});
  for (size_t i = sizeof(fuse_secctx_header) + sizeof(fuse_secctx); i < no_nul.size(); i++) no_nul[i] = std::byte{'x'};
  EXPECT_TRUE(bad(no_nul));
  EXPECT_TRUE(bad(std::vector<std::byte>(4)));  // not even a header
  // total_extlen past the request's end.
  fuse_create_in ci{};
  EXPECT_EQ(decode(Req(FUSE_CREATE, 1).add(ci).str("n").extlen(200).bytes()).error(), -EBADMSG);
  // Extensions are not arguments: a name cut off by them is malformed.
  auto cut = Req(FUSE_CREATE, 1).add(ci).raw("name-without-nul").bytes(ctx).extlen(static_cast<uint16_t>(ctx.size() / 8)).bytes();
  EXPECT_EQ(decode(cut).error(), -EBADMSG);
}

TEST(FuseDecode, LookupFromLiteralBytes) {
  // len=45, opcode=1 (LOOKUP), unique=2, nodeid=1, uid=0, gid=0, pid=5, "hello\0"
  std::vector<std::byte> b(40 + 6);
  uint32_t len = 46, op = FUSE_LOOKUP, pid = 5;
  uint64_t unique = 2, nodeid = 1;
  std::memcpy(&b[0], &len, 4);
  std::memcpy(&b[4], &op, 4);
  std::memcpy(&b[8], &unique, 8);
  std::memcpy(&b[16], &nodeid, 8);
  std::memcpy(&b[32], &pid, 4);
  std::memcpy(&b[40], "hello", 6);
  auto r = decode(b);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->header.unique, 2u);
  EXPECT_EQ(r->header.pid, 5u);
  EXPECT_EQ(std::get<Lookup>(r->args).name, "hello");
}

TEST(FuseDecode, FixedArgumentsAndTwoNames) {
  fuse_rename2_in rn{};
  rn.newdir = 9;
  rn.flags = RENAME_NOREPLACE;
  auto b = Req(FUSE_RENAME2, 3).add(rn).str("old").str("new").bytes();
  auto r = decode(b);
  ASSERT_TRUE(r.ok());
  const auto& a = std::get<Rename2>(r->args);
  EXPECT_EQ(a.in.newdir, 9u);
  EXPECT_EQ(a.oldname, "old");
  EXPECT_EQ(a.newname, "new");
  auto sb = Req(FUSE_SYMLINK, 1).str("link").str("../target").bytes();  // decoded views point into it
  auto s = decode(sb);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(std::get<Symlink>(s->args).target, "../target");
}

TEST(FuseDecode, InitAcceptsOldAndNewLayouts) {
  fuse_init_in in{};
  in.major = 7;
  in.minor = 38;
  in.flags = FUSE_INIT_EXT | FUSE_ASYNC_READ;
  in.flags2 = 1;
  auto r = decode(Req(FUSE_INIT, 0).add(in).bytes());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(std::get<Init>(r->args).in.flags2, 1u);
  // A 7.3x-but-pre-7.36 client sends only the first 16 bytes.
  std::vector<std::byte> old = Req(FUSE_INIT, 0).add(in).bytes();
  old.resize(40 + 16);
  uint32_t len = 56;
  std::memcpy(old.data(), &len, 4);
  auto r2 = decode(old);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(std::get<Init>(r2->args).in.minor, 38u);
  EXPECT_EQ(std::get<Init>(r2->args).in.flags2, 0u);
}

TEST(FuseDecode, WritePayloadMayBeCarriedSeparately) {
  fuse_write_in w{};
  w.fh = 4;
  w.size = 5;
  auto whole = Req(FUSE_WRITE, 2).add(w).raw("abcde").bytes();
  auto r = decode(whole);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(std::get<Write>(r->args).data.size(), 5u);
  // Only header + fuse_write_in in the first buffer: allowed for WRITE...
  auto head = std::span<const std::byte>(whole).first(40 + sizeof w);
  auto r2 = decode(head, whole.size());
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(std::get<Write>(r2->args).data.size(), 0u);
  // ...but the declared size must match the request's length.
  w.size = 6;
  EXPECT_EQ(decode(Req(FUSE_WRITE, 2).add(w).raw("abcde").bytes()).error(), -EBADMSG);
  // and no other request may be short.
  auto lookup = Req(FUSE_LOOKUP, 1).str("name").bytes();
  EXPECT_EQ(decode(std::span<const std::byte>(lookup).first(42), lookup.size()).error(), -EBADMSG);
}

TEST(FuseDecode, RejectsMalformedRequests) {
  // shorter than a header
  std::vector<std::byte> tiny(20);
  EXPECT_EQ(decode(tiny).error(), -EBADMSG);
  // header.len disagrees with the bytes
  auto b = Req(FUSE_LOOKUP, 1).str("x").bytes();
  b.push_back(std::byte{0});
  EXPECT_EQ(decode(b).error(), -EBADMSG);
  // name without its NUL
  EXPECT_EQ(decode(Req(FUSE_LOOKUP, 1).raw("abc").bytes()).error(), -EBADMSG);
  // fixed struct cut short
  EXPECT_EQ(decode(Req(FUSE_OPEN, 1).raw("abc").bytes()).error(), -EBADMSG);
  // BATCH_FORGET whose count exceeds the entries present
  fuse_batch_forget_in bf{};
  bf.count = 1000000;
  EXPECT_EQ(decode(Req(FUSE_BATCH_FORGET, 0).add(bf).add(fuse_forget_one{}).bytes()).error(), -EBADMSG);
  // SETXATTR whose value size exceeds the request
  fuse_setxattr_in sx{};
  sx.size = 100;
  std::vector<std::byte> sxb = Req(FUSE_SETXATTR, 1).raw(std::string_view(reinterpret_cast<const char*>(&sx), 8)).str("user.a").raw("v").bytes();
  EXPECT_EQ(decode(sxb).error(), -EBADMSG);
}

TEST(FuseDecode, UnknownOpcodeDecodesToUnknown) {
  auto r = decode(Req(4242, 1).raw("whatever").bytes());
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(std::holds_alternative<Unknown>(r->args));
  EXPECT_STREQ(opcode_name(FUSE_READDIRPLUS), "READDIRPLUS");
  EXPECT_EQ(opcode_name(4242), nullptr);
}

TEST(FuseReply, ScatterWriterSpansBuffers) {
  char a[5], b[3], c[10];
  iovec iov[] = {{a, sizeof a}, {b, sizeof b}, {c, sizeof c}};
  ScatterWriter w(iov);
  EXPECT_EQ(w.room(), 18u);
  EXPECT_TRUE(w.write("0123456", 7));
  EXPECT_EQ(std::string(a, 5), "01234");
  EXPECT_EQ(std::string(b, 2), "56");
  iovec scratch[4];
  size_t n = w.next_iovecs(6, scratch);
  ASSERT_EQ(n, 2u);
  EXPECT_EQ(scratch[0].iov_base, b + 2);
  EXPECT_EQ(scratch[0].iov_len, 1u);
  EXPECT_EQ(scratch[1].iov_base, c);
  EXPECT_EQ(scratch[1].iov_len, 5u);
  w.skip(6);
  EXPECT_EQ(w.written(), 13u);
  EXPECT_FALSE(w.write("0123456", 7));  // does not fit: nothing written
  EXPECT_EQ(w.written(), 13u);
  EXPECT_TRUE(w.write_at(3, "XYZ", 3));
  EXPECT_EQ(std::string(a, 5), "012XY");
  EXPECT_EQ(b[0], 'Z');
  EXPECT_FALSE(w.write_at(12, "ab", 2));  // past what was written
}

TEST(FuseReply, DirentsAreAlignedAndBounded) {
  std::vector<std::byte> area(64);
  DirentPacker p(area);
  EXPECT_TRUE(p.add(11, 1, DT_REG, "abc"));
  EXPECT_EQ(p.size(), 32u);  // 24 + 3, rounded up to 8
  fuse_dirent d;
  std::memcpy(&d, area.data(), sizeof d);
  EXPECT_EQ(d.ino, 11u);
  EXPECT_EQ(d.namelen, 3u);
  EXPECT_EQ(std::memcmp(area.data() + FUSE_NAME_OFFSET, "abc", 3), 0);
  EXPECT_TRUE(p.add(12, 2, DT_DIR, "12345678"));
  EXPECT_EQ(p.size(), 64u);
  EXPECT_FALSE(p.add(13, 3, DT_REG, "x"));
  EXPECT_FALSE(p.fits_plus("x"));
}

}  // namespace
}  // namespace fsd::fuse
