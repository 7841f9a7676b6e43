// Encoding and decoding of whole 9P2000.L frames.
//
// Decoders take exactly one frame (size[4] included) and check that its
// size field equals the span's length, that every field fits, and that no
// bytes are left over. Malformed input yields EBADMSG; a well-formed frame of
// a type this codec does not know yields EOPNOTSUPP (the caller may still
// read the tag with decode_header and answer Rlerror). Nothing here allocates.
#pragma once

#include <optional>

#include "protocol/p9/messages.h"
#include "common/result.h"

namespace fsd::p9 {

struct Header {
  uint32_t size;
  uint8_t type;
  uint16_t tag;
};

// Reads the 7-byte header. EBADMSG if fewer than 7 bytes or size < 7.
Result<Header> decode_header(Bytes in);

struct TFrame {
  uint16_t tag;
  TMessage msg;
};
struct RFrame {
  uint16_t tag;
  RMessage msg;
};

Result<TFrame> decode_t(Bytes frame);
Result<RFrame> decode_r(Bytes frame);

// Encodes `m` with `tag` into `out`; returns the frame size, or EMSGSIZE if
// `out` is too small or a field is out of range (a string over 65535 bytes).
template <class M>
Result<size_t> encode(MutableBytes out, uint16_t tag, const M& m) {
  Writer w(out);
  w.put(uint32_t{0});
  w.put(static_cast<uint8_t>(M::kType));
  w.put(tag);
  std::apply([&](const auto&... f) { (w.put(f), ...); }, m.fields());
  if (!w.ok() || w.size() > UINT32_MAX) return Error{-EMSGSIZE};
  w.patch_u32(0, static_cast<uint32_t>(w.size()));
  return w.size();
}

// Encodes whichever message the variant holds.
template <class... M>
Result<size_t> encode(MutableBytes out, uint16_t tag, const std::variant<M...>& m) {
  return std::visit([&](const auto& msg) { return encode(out, tag, msg); }, m);
}

// Writes an Rread header for `count` data bytes that the caller has already
// placed (or will place) at out[kRreadHeaderSize ...]. `out` must hold at
// least kRreadHeaderSize bytes. Lets a server read file data in place.
void put_rread_header(MutableBytes out, uint16_t tag, uint32_t count);

// One Rreaddir entry: qid[13] offset[8] type[1] name[s].
struct Dirent {
  Qid qid;
  uint64_t offset;  // where the next Treaddir should start to continue after this entry
  uint8_t type;     // DT_* value
  std::string_view name;
};

// Packs directory entries into an Rreaddir data area.
class DirentWriter {
 public:
  explicit DirentWriter(MutableBytes out) : w_(out) {}
  // Appends the entry, or returns false (writing nothing) if it does not fit.
  bool add(const Dirent& d);
  size_t size() const { return w_.size(); }
  static size_t entry_size(std::string_view name) { return kQidSize + 8 + 1 + 2 + name.size(); }

 private:
  Writer w_;
};

// Iterates over an Rreaddir data area.
class DirentReader {
 public:
  explicit DirentReader(Bytes in) : r_(in) {}
  // The next entry; nullopt at the end; EBADMSG if an entry is truncated.
  Result<std::optional<Dirent>> next();

 private:
  Reader r_;
};

}  // namespace fsd::p9
