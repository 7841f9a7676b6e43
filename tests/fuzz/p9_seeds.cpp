// Writes one valid frame per 9P message type into a directory: the seed
// corpus for p9_decode_fuzz, so that fuzzing starts from real messages
// instead of having to discover the framing.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "protocol/p9/codec.h"

using namespace fsd::p9;

namespace {

struct Filler {
  void operator()(uint8_t& v) { v = 1; }
  void operator()(uint16_t& v) { v = 2; }
  void operator()(uint32_t& v) { v = 3; }
  void operator()(uint64_t& v) { v = 4; }
  void operator()(std::string_view& s) { s = "name"; }
  void operator()(Qid& q) { q = Qid{kQtDir, 5, 6}; }
  void operator()(Data& d) { d.bytes = std::as_bytes(std::span("data", 4)); }
  void operator()(WalkNames& w) { w.count = 2; w.names[0] = "a"; w.names[1] = ".."; }
  void operator()(WalkQids& w) { w.count = 1; w.qids[0] = Qid{kQtFile, 1, 2}; }
};

template <class M>
void write_one(const std::string& dir) {
  M m{};
  Filler f;
  std::apply([&](auto&... x) { (f(x), ...); }, m.fields());
  std::vector<std::byte> buf(1024);
  auto n = encode(buf, 1, m);
  if (!n.ok()) return;
  std::ofstream(dir + "/" + type_name(static_cast<uint8_t>(M::kType)), std::ios::binary)
      .write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(*n));
}

template <class... M>
void write_all(const std::string& dir, std::variant<M...>*) {
  (write_one<M>(dir), ...);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  write_all(argv[1], static_cast<TMessage*>(nullptr));
  write_all(argv[1], static_cast<RMessage*>(nullptr));
  return 0;
}
