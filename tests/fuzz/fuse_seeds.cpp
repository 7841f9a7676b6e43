// Writes a few valid FUSE requests into a directory: the seed corpus for
// fuse_decode_fuzz (each prefixed with the fuzzer's "cut" byte, 0).
#include <linux/fuse.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace {
void seed(const std::string& dir, const char* name, uint32_t opcode, const void* arg, size_t arg_len,
          const char* s1 = nullptr, const char* s2 = nullptr, const std::vector<char>& ext = {}) {
  std::vector<char> body(static_cast<const char*>(arg), static_cast<const char*>(arg) + arg_len);
  for (const char* s : {s1, s2})
    if (s) body.insert(body.end(), s, s + std::strlen(s) + 1);
  body.insert(body.end(), ext.begin(), ext.end());
  fuse_in_header h{};
  h.total_extlen = static_cast<uint16_t>(ext.size() / 8);
  h.len = static_cast<uint32_t>(sizeof h + body.size());
  h.opcode = opcode;
  h.unique = 1;
  h.nodeid = 1;
  std::ofstream out(dir + "/" + name, std::ios::binary);
  out.put(0);
  out.write(reinterpret_cast<const char*>(&h), sizeof h);
  out.write(body.data(), static_cast<std::streamsize>(body.size()));
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  std::string d = argv[1];
  fuse_init_in init{7, 38, 128 * 1024, FUSE_INIT_EXT, 0, {}};
  seed(d, "init", FUSE_INIT, &init, sizeof init);
  seed(d, "lookup", FUSE_LOOKUP, nullptr, 0, "name");
  fuse_rename2_in rn{};
  seed(d, "rename2", FUSE_RENAME2, &rn, sizeof rn, "a", "b");
  struct {
    fuse_write_in w;
    char data[4];
  } wr{{1, 0, 4, 0, 0, 0, 0}, {'d', 'a', 't', 'a'}};
  seed(d, "write", FUSE_WRITE, &wr, sizeof wr);
  struct {
    fuse_batch_forget_in in;
    fuse_forget_one one[2];
  } bf{{2, 0}, {{2, 1}, {3, 1}}};
  seed(d, "batch_forget", FUSE_BATCH_FORGET, &bf, sizeof bf);
  struct {
    uint32_t size, flags;
  } sx{1, 0};
  std::vector<char> sxb(reinterpret_cast<char*>(&sx), reinterpret_cast<char*>(&sx) + 8);
  sxb.insert(sxb.end(), {'u', 's', 'e', 'r', '.', 'a', 0, 'v'});
  seed(d, "setxattr", FUSE_SETXATTR, sxb.data(), sxb.size());
  fuse_read_in rd{};
  seed(d, "readdirplus", FUSE_READDIRPLUS, &rd, sizeof rd);
  // A creation with its security label, as a 7.38 extension.
  std::vector<char> label(16);
  const char ctx[] = "security.selinux\0unlabeled";
  label.insert(label.end(), ctx, ctx + sizeof ctx - 1);
  label.resize((label.size() + 7) / 8 * 8);
  fuse_secctx_header sh{static_cast<uint32_t>(label.size()), 1};
  fuse_secctx sc{9, 0};
  std::memcpy(label.data(), &sh, sizeof sh);
  std::memcpy(label.data() + sizeof sh, &sc, sizeof sc);
  fuse_create_in cr{};
  seed(d, "create_labelled", FUSE_CREATE, &cr, sizeof cr, "new", nullptr, label);
  return 0;
}
