// libFuzzer target: FUSE request decoding, as a hostile guest would feed it
// through a virtqueue. The first byte picks how much of the input counts as
// "present" (a WRITE may carry its payload separately).
#include <cstring>
#include <string>

#include "protocol/fuse/reply.h"
#include "protocol/fuse/request.h"

using namespace fsd::fuse;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  uint8_t cut = data[0];
  Bytes in(reinterpret_cast<const std::byte*>(data + 1), size - 1);
  (void)decode(in);
  if (in.size() > cut) (void)decode(in.first(in.size() - cut), in.size());
  if (auto r = decode(in); r.ok()) {
    // Touch every view the decoder returned, so ASan checks their bounds.
    std::visit(
        [](const auto& a) {
          using A = std::decay_t<decltype(a)>;
          if constexpr (requires { a.name; }) (void)std::strlen(std::string(a.name).c_str());
          if constexpr (requires { a.data; }) {
            unsigned sum = 0;
            for (auto b : a.data) sum += static_cast<unsigned>(b);
            volatile unsigned sink = sum;
            (void)sink;
          }
          if constexpr (requires { a.extra; }) {
            // A creation's security context, as a server with labels reads it.
            if (auto sc = security_context(a.extra); sc.ok() && sc->has_value()) {
              (void)std::strlen(std::string((*sc)->name).c_str());
              std::string value(reinterpret_cast<const char*>((*sc)->value.data()), (*sc)->value.size());
              volatile size_t sink = value.size();
              (void)sink;
            }
          }
          if constexpr (std::is_same_v<A, BatchForget>) {
            for (uint32_t i = 0; i < a.count; i++) {
              fuse_forget_one f;
              std::memcpy(&f, a.entries.data() + i * sizeof f, sizeof f);
            }
          }
        },
        r->args);
  }
  return 0;
}
