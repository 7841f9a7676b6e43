// Writes seed inputs for vsock_device_fuzz: a guest that connects, opens
// the big file over 9P and reads it (reads the device places straight into
// receive chains), then resets, stops the queue or reads again meanwhile.
// Each step is spelled out byte by byte as that target reads its input; if
// the format changes, these still run, only less usefully.
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace {
using Bytes = std::vector<uint8_t>;

// Steps (the selector byte, % 6, and its flag bits).
constexpr uint8_t kTransmit = 0;      // RW, from guest port 1020, honest credit
constexpr uint8_t kTransmitOp = 18;   // % 6 == 0, with 0x10: the op is the next byte
constexpr uint8_t kRxChains = 2, kRelease = 3, kReset = 4, kRun = 5;
constexpr uint8_t kRequest = 0, kRst = 2;  // op byte: 1 + b % 7 (REQUEST 1, RST 3)
constexpr uint8_t kWholeHeader = 1;   // the split byte: header and payload in two buffers

Bytes u32(uint32_t v) { return {uint8_t(v), uint8_t(v >> 8), uint8_t(v >> 16), uint8_t(v >> 24)}; }
Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes b;
  for (const auto& p : parts) b.insert(b.end(), p.begin(), p.end());
  return b;
}
// A 9P message in an RW packet: port 1020, then tag, fid, kind and fields.
Bytes nine_p(uint8_t tag, uint8_t fid, uint8_t kind, const Bytes& fields = {}) {
  return cat({{kTransmit, 0, tag, fid, kind}, fields, {kWholeHeader}});
}
Bytes control(uint8_t op) { return {kTransmitOp, 0, op, kWholeHeader}; }
Bytes rx16() { return cat({{kRxChains, 15}, Bytes(16, 1)}); }  // 16 chains of a header and 4 KiB
Bytes run() { return {kRun, 3}; }

Bytes open_big() {
  return cat({rx16(), rx16(), control(kRequest), run(),
              nine_p(0xff, 0, 0, u32(256 * 1024)), run(),  // Tversion, msize 256 KiB
              nine_p(1, 0, 1), run(),                      // Tattach fid 0
              nine_p(2, 0, 2, {1, 1}), run(),              // Twalk 0 -> 1 "big"
              nine_p(3, 1, 3), run()});                    // Tlopen 1
}
Bytes read(uint8_t tag, uint32_t offset, uint32_t count) { return nine_p(tag, 1, 4, cat({u32(offset), u32(count)})); }

void write(const std::string& dir, const std::string& name, const Bytes& input) {
  std::ofstream out(dir + "/" + name, std::ios::binary);
  Bytes all = cat({{0}, input});  // first byte: no untrusted identity
  out.write(reinterpret_cast<const char*>(all.data()), static_cast<std::streamsize>(all.size()));
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::string dir = argv[1];
  write(dir, "read", cat({open_big(), read(4, 0, 64 * 1024), run(), rx16(), run()}));
  write(dir, "read-past-end", cat({open_big(), read(4, 190 * 1024, 64 * 1024), run()}));
  write(dir, "read-reset", cat({open_big(), read(4, 0, 128 * 1024), control(kRst), run()}));
  write(dir, "read-release", cat({open_big(), read(4, 0, 128 * 1024), {kRelease}, rx16(), run()}));
  write(dir, "read-device-reset", cat({open_big(), read(4, 4096, 100 * 1024), {kReset}, run()}));
  write(dir, "two-reads", cat({open_big(), read(4, 0, 64 * 1024), read(5, 1000, 30 * 1024), run(), rx16(), run()}));
  return 0;
}
