// Writes seed sessions for vhost_session_fuzz: the start-up sequence (step
// 10), then FUSE requests (step 5) and memory-table changes (step 0) as that
// target reads its input. Each step is spelled out byte by byte; if the
// target's input format changes, these still run, only less usefully.
#include <linux/fuse.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace {
using Bytes = std::vector<uint8_t>;

constexpr uint8_t kNegotiate = 10, kFuse = 5, kMemTable = 0, kKick = 8;

// A FUSE request on the request queue: queue, opcode (u8 % 8 != 0, then
// u8 % 52), node (root), argument bytes, reply size (u16), pieces.
Bytes fuse(uint8_t opcode, const std::string& args, uint16_t reply = 0x1000) {
  Bytes b{kFuse, 1, 1, opcode, 1, static_cast<uint8_t>(args.size())};
  b.insert(b.end(), args.begin(), args.end());
  b.push_back(static_cast<uint8_t>(reply));
  b.push_back(static_cast<uint8_t>(reply >> 8));
  b.push_back(0);
  return b;
}

void write(const std::string& dir, const std::string& name, const std::vector<Bytes>& steps) {
  std::ofstream out(dir + "/" + name, std::ios::binary);
  for (const auto& s : steps) out.write(reinterpret_cast<const char*>(s.data()), static_cast<std::streamsize>(s.size()));
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::string dir = argv[1];
  std::string name_a("a\0", 2), name_sub("sub\0", 4);
  write(dir, "start", {{kNegotiate}});
  write(dir, "lookup", {{kNegotiate}, fuse(FUSE_LOOKUP, name_a), fuse(FUSE_LOOKUP, name_sub)});
  write(dir, "getattr", {{kNegotiate}, fuse(FUSE_GETATTR, std::string(sizeof(fuse_getattr_in), '\0'))});
  // The same memory table again while the queues run (one region, valid),
  // then a request that must be served from the new mapping.
  write(dir, "remap", {{kNegotiate}, {kMemTable, 1, 7, 1, 0}, fuse(FUSE_LOOKUP, name_a), {kKick, 1}});
  return 0;
}
