// 9P wire primitives: little-endian integers, strings, qids; bounded reader and writer.
//
// Reader never reads past its span; any over-read or malformed field sets a
// sticky failure flag and yields zeros/empty values from then on. Writer never
// writes past its span; running out of room sets a sticky overflow flag.
// Neither allocates; decoded strings and data are views into the input span.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

namespace fsd::p9 {

using Bytes = std::span<const std::byte>;
using MutableBytes = std::span<std::byte>;

inline constexpr uint16_t kNoTag = 0xFFFF;
inline constexpr uint32_t kNoFid = 0xFFFFFFFF;
inline constexpr size_t kHeaderSize = 7;  // size[4] type[1] tag[2]
inline constexpr size_t kMaxWalkElements = 16;
// Bytes of a Tread/Twrite frame that are not data (P9_IOHDRSZ); count <= msize - kIoHeaderSize.
inline constexpr size_t kIoHeaderSize = 24;
// Rread: header + count[4]; data follows.
inline constexpr size_t kRreadHeaderSize = kHeaderSize + 4;
inline constexpr std::string_view kVersion9P2000L = "9P2000.L";

// qid.type bits
inline constexpr uint8_t kQtDir = 0x80;
inline constexpr uint8_t kQtSymlink = 0x02;
inline constexpr uint8_t kQtFile = 0x00;

struct Qid {
  uint8_t type = 0;
  uint32_t version = 0;
  uint64_t path = 0;
  friend bool operator==(const Qid&, const Qid&) = default;
};
inline constexpr size_t kQidSize = 13;

// Twalk's names: nwname[2] then that many strings; at most 16.
struct WalkNames {
  uint16_t count = 0;
  std::array<std::string_view, kMaxWalkElements> names{};
  std::string_view operator[](size_t i) const { return names[i]; }
};

// Rwalk's qids: nwqid[2] then that many qids; at most 16.
struct WalkQids {
  uint16_t count = 0;
  std::array<Qid, kMaxWalkElements> qids{};
};

// count[4] followed by count raw bytes (Rread, Twrite, Rreaddir).
struct Data {
  Bytes bytes;
};

class Reader {
 public:
  explicit Reader(Bytes in) : in_(in) {}

  bool ok() const { return ok_; }
  size_t remaining() const { return in_.size() - pos_; }
  void fail() { ok_ = false; pos_ = in_.size(); }

  void get(uint8_t& v) { v = take_int<uint8_t>(); }
  void get(uint16_t& v) { v = take_int<uint16_t>(); }
  void get(uint32_t& v) { v = take_int<uint32_t>(); }
  void get(uint64_t& v) { v = take_int<uint64_t>(); }
  void get(std::string_view& s) {
    uint16_t len = take_int<uint16_t>();
    Bytes b = take(len);
    s = std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
  }
  void get(Qid& q) { get(q.type); get(q.version); get(q.path); }
  void get(Data& d) {
    uint32_t n = take_int<uint32_t>();
    d.bytes = take(n);
  }
  void get(WalkNames& w) {
    get(w.count);
    if (w.count > kMaxWalkElements) return fail();
    for (size_t i = 0; i < w.count; i++) get(w.names[i]);
  }
  void get(WalkQids& w) {
    get(w.count);
    if (w.count > kMaxWalkElements) return fail();
    for (size_t i = 0; i < w.count; i++) get(w.qids[i]);
  }

  // Takes n bytes, or fails (and returns an empty span) if fewer remain.
  Bytes take(size_t n) {
    if (!ok_ || n > remaining()) {
      fail();
      return {};
    }
    Bytes b = in_.subspan(pos_, n);
    pos_ += n;
    return b;
  }

 private:
  template <class T>
  T take_int() {
    Bytes b = take(sizeof(T));
    if (b.empty()) return 0;
    T v;
    std::memcpy(&v, b.data(), sizeof v);
    if constexpr (std::endian::native == std::endian::big && sizeof(T) > 1) v = byteswap(v);
    return v;
  }
  template <class T>
  static T byteswap(T v) {
    if constexpr (sizeof(T) == 2) return __builtin_bswap16(v);
    if constexpr (sizeof(T) == 4) return __builtin_bswap32(v);
    if constexpr (sizeof(T) == 8) return __builtin_bswap64(v);
  }

  Bytes in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

class Writer {
 public:
  explicit Writer(MutableBytes out) : out_(out) {}

  bool ok() const { return ok_; }
  size_t size() const { return pos_; }
  size_t room() const { return out_.size() - pos_; }

  void put(uint8_t v) { put_int(v); }
  void put(uint16_t v) { put_int(v); }
  void put(uint32_t v) { put_int(v); }
  void put(uint64_t v) { put_int(v); }
  void put(std::string_view s) {
    if (s.size() > UINT16_MAX) return fail();
    put_int(static_cast<uint16_t>(s.size()));
    put_raw(s.data(), s.size());
  }
  void put(const Qid& q) { put(q.type); put(q.version); put(q.path); }
  void put(const Data& d) {
    if (d.bytes.size() > UINT32_MAX) return fail();
    put_int(static_cast<uint32_t>(d.bytes.size()));
    put_raw(d.bytes.data(), d.bytes.size());
  }
  void put(const WalkNames& w) {
    if (w.count > kMaxWalkElements) return fail();
    put(w.count);
    for (size_t i = 0; i < w.count; i++) put(w.names[i]);
  }
  void put(const WalkQids& w) {
    if (w.count > kMaxWalkElements) return fail();
    put(w.count);
    for (size_t i = 0; i < w.count; i++) put(w.qids[i]);
  }

  void put_raw(const void* p, size_t n) {
    if (!ok_ || n > room()) return fail();
    if (n) std::memcpy(out_.data() + pos_, p, n);
    pos_ += n;
  }
  // Overwrites 4 bytes at `at` (for back-patching a size or count).
  void patch_u32(size_t at, uint32_t v) {
    if (at + 4 > pos_) return fail();
    v = to_le(v);
    std::memcpy(out_.data() + at, &v, 4);
  }

 private:
  void fail() { ok_ = false; }
  template <class T>
  static T to_le(T v) {
    if constexpr (std::endian::native == std::endian::big && sizeof(T) == 2) return __builtin_bswap16(v);
    if constexpr (std::endian::native == std::endian::big && sizeof(T) == 4) return __builtin_bswap32(v);
    if constexpr (std::endian::native == std::endian::big && sizeof(T) == 8) return __builtin_bswap64(v);
    return v;
  }
  template <class T>
  void put_int(T v) {
    v = to_le(v);
    put_raw(&v, sizeof v);
  }

  MutableBytes out_;
  size_t pos_ = 0;
  bool ok_ = true;
};

}  // namespace fsd::p9
