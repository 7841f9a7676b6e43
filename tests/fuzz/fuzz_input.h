// The bytes of one fuzz input, taken from the front a field at a time; past
// the end every field reads as zero, so a target never runs out mid-step.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fsd::fuzz {

struct Input {
  const uint8_t* p;
  size_t n;
  bool empty() const { return n == 0; }
  uint8_t byte() {
    if (n == 0) return 0;
    n--;
    return *p++;
  }
  uint16_t u16() { return static_cast<uint16_t>(byte() | byte() << 8); }
  uint32_t u32() { return u16() | uint32_t{u16()} << 16; }
};

}  // namespace fsd::fuzz
