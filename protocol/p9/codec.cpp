#include "protocol/p9/codec.h"

#include <array>

namespace fsd::p9 {
namespace {

template <class M>
Result<M> decode_body(Reader& r) {
  M m{};
  std::apply([&](auto&... f) { (r.get(f), ...); }, m.fields());
  if (!r.ok() || r.remaining() != 0) return Error{-EBADMSG};
  return m;
}

// For each message type byte, the function that decodes that alternative of
// Variant. Built once at compile time from the variant's alternatives.
template <class Variant>
using DecodeFn = Result<Variant> (*)(Reader&);

template <class Variant, class M>
Result<Variant> decode_as(Reader& r) {
  auto m = decode_body<M>(r);
  if (!m) return Error{m.error()};
  return Variant{std::move(*m)};
}

template <class Variant>
struct DecodeTable;

template <class... M>
struct DecodeTable<std::variant<M...>> {
  using V = std::variant<M...>;
  static constexpr std::array<DecodeFn<V>, 256> make() {
    std::array<DecodeFn<V>, 256> t{};
    ((t[static_cast<uint8_t>(M::kType)] = &decode_as<V, M>), ...);
    return t;
  }
  static constexpr std::array<DecodeFn<V>, 256> table = make();
};

template <class Frame, class Variant>
Result<Frame> decode_frame(Bytes frame) {
  auto h = decode_header(frame);
  if (!h) return Error{h.error()};
  if (h->size != frame.size()) return Error{-EBADMSG};
  DecodeFn<Variant> fn = DecodeTable<Variant>::table[h->type];
  if (fn == nullptr) return Error{-EOPNOTSUPP};
  Reader r(frame.subspan(kHeaderSize));
  auto m = fn(r);
  if (!m) return Error{m.error()};
  return Frame{h->tag, std::move(*m)};
}

constexpr std::array<const char*, 256> make_names() {
  std::array<const char*, 256> n{};
#define NAME(x) n[static_cast<uint8_t>(Type::x)] = #x
  NAME(Tlerror); NAME(Rlerror); NAME(Tstatfs); NAME(Rstatfs); NAME(Tlopen); NAME(Rlopen);
  NAME(Tlcreate); NAME(Rlcreate); NAME(Tsymlink); NAME(Rsymlink); NAME(Tmknod); NAME(Rmknod);
  NAME(Trename); NAME(Rrename); NAME(Treadlink); NAME(Rreadlink); NAME(Tgetattr);
  NAME(Rgetattr); NAME(Tsetattr); NAME(Rsetattr); NAME(Txattrwalk); NAME(Rxattrwalk);
  NAME(Txattrcreate); NAME(Rxattrcreate); NAME(Treaddir); NAME(Rreaddir); NAME(Tfsync);
  NAME(Rfsync); NAME(Tlock); NAME(Rlock); NAME(Tgetlock); NAME(Rgetlock); NAME(Tlink);
  NAME(Rlink); NAME(Tmkdir); NAME(Rmkdir); NAME(Trenameat); NAME(Rrenameat); NAME(Tunlinkat);
  NAME(Runlinkat); NAME(Tversion); NAME(Rversion); NAME(Tauth); NAME(Rauth); NAME(Tattach);
  NAME(Rattach); NAME(Tflush); NAME(Rflush); NAME(Twalk); NAME(Rwalk); NAME(Tread);
  NAME(Rread); NAME(Twrite); NAME(Rwrite); NAME(Tclunk); NAME(Rclunk); NAME(Tremove);
  NAME(Rremove);
#undef NAME
  return n;
}
constexpr auto kNames = make_names();

}  // namespace

const char* type_name(uint8_t type) { return kNames[type]; }

Result<Header> decode_header(Bytes in) {
  if (in.size() < kHeaderSize) return Error{-EBADMSG};
  Reader r(in.first(kHeaderSize));
  Header h{};
  r.get(h.size);
  r.get(h.type);
  r.get(h.tag);
  if (h.size < kHeaderSize) return Error{-EBADMSG};
  return h;
}

Result<TFrame> decode_t(Bytes frame) { return decode_frame<TFrame, TMessage>(frame); }
Result<RFrame> decode_r(Bytes frame) { return decode_frame<RFrame, RMessage>(frame); }

void put_rread_header(MutableBytes out, uint16_t tag, uint32_t count) {
  Writer w(out.first(kRreadHeaderSize));
  w.put(static_cast<uint32_t>(kRreadHeaderSize + count));
  w.put(static_cast<uint8_t>(Type::Rread));
  w.put(tag);
  w.put(count);
}

bool DirentWriter::add(const Dirent& d) {
  if (d.name.size() > UINT16_MAX || entry_size(d.name) > w_.room()) return false;
  w_.put(d.qid);
  w_.put(d.offset);
  w_.put(d.type);
  w_.put(d.name);
  return w_.ok();
}

Result<std::optional<Dirent>> DirentReader::next() {
  if (r_.remaining() == 0) return std::optional<Dirent>{};
  Dirent d{};
  r_.get(d.qid);
  r_.get(d.offset);
  r_.get(d.type);
  r_.get(d.name);
  if (!r_.ok()) return Error{-EBADMSG};
  return std::optional<Dirent>{d};
}

}  // namespace fsd::p9
