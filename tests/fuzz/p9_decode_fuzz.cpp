// libFuzzer target: the 9P T-message decoder (what a server reads from an
// untrusted client), plus the R decoder and the readdir entry reader.
// Any input must decode or be rejected without crashing or over-reading;
// a decoded message must re-encode to the identical frame.
#include <cstdlib>
#include <cstring>
#include <vector>

#include "protocol/p9/codec.h"

using namespace fsd::p9;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(reinterpret_cast<const std::byte*>(data), size);
  if (auto t = decode_t(in); t.ok()) {
    std::vector<std::byte> out(size);
    auto n = encode(out, t->tag, t->msg);
    if (!n.ok() || *n != size || std::memcmp(out.data(), data, size) != 0) std::abort();
  }
  if (auto r = decode_r(in); r.ok()) {
    std::vector<std::byte> out(size);
    auto n = encode(out, r->tag, r->msg);
    if (!n.ok() || *n != size || std::memcmp(out.data(), data, size) != 0) std::abort();
  }
  DirentReader dr(in);
  for (int i = 0; i < 1 << 16; i++) {
    auto e = dr.next();
    if (!e.ok() || !e->has_value()) break;
  }
  return 0;
}
