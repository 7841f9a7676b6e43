// p9::Client: a small blocking 9P2000.L client over a stream socket, for
// tests, tools and benchmarks. One request at a time per call(), or
// pipelined with send() / receive().
//
// Replies returned by call() hold views (strings, data) into the client's
// receive buffer: they stay valid until the next call() or receive().
// Errors: Rlerror becomes its ecode; transport failures are EIO/ECONNRESET,
// a reply that does not decode is EBADMSG, a reply of the wrong type EPROTO.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/fd.h"
#include "protocol/p9/codec.h"

namespace fsd::p9 {

class Client {
 public:
  static Result<Client> connect_unix(const std::string& path);
  static Result<Client> connect_tcp(const std::string& host, uint16_t port);
  explicit Client(Fd fd) : fd_(std::move(fd)), tx_(kInitialBuffer), rx_(kInitialBuffer) {}

  // Negotiates the version; returns the msize the server agreed to.
  Result<uint32_t> version(uint32_t msize, std::string_view version = kVersion9P2000L);
  uint32_t msize() const { return msize_; }
  uint32_t new_fid() { return next_fid_++; }

  // Sends T and waits for its reply; Rlerror becomes an Error.
  template <class R, class T>
  Result<R> call(const T& t) {
    uint16_t tag = next_tag();
    if (auto r = send(tag, t); !r) return Error{r.error()};
    auto f = receive();
    if (!f) return Error{f.error()};
    if (f->tag != tag) return Error{-EPROTO};
    if (auto* e = std::get_if<Rlerror>(&f->msg)) return Error{e->ecode ? -static_cast<int>(e->ecode) : -EIO};
    if (auto* r = std::get_if<R>(&f->msg)) return *r;
    return Error{-EPROTO};
  }

  template <class T>
  Result<void> send(uint16_t tag, const T& t) {
    size_t need = 64 + wire_size(t);
    if (tx_.size() < need) tx_.resize(need);
    auto n = encode(tx_, tag, t);
    if (!n) return Error{n.error()};
    return send_raw({tx_.data(), *n});
  }
  Result<void> send_raw(Bytes frame);
  // Reads one whole reply frame and decodes it.
  Result<RFrame> receive();
  // Reads one whole frame without decoding (for hostile-input tests).
  Result<Bytes> receive_raw();
  uint16_t next_tag() { return next_tag_ = static_cast<uint16_t>((next_tag_ + 1) % kNoTag); }

  // ---- conveniences over call()
  Result<Qid> attach(uint32_t fid, std::string_view aname, uint32_t uid = 0);
  // Walks `path` ("a/b/c"; "" clones) from fid to newfid.
  Result<Qid> walk(uint32_t fid, uint32_t newfid, std::string_view path);
  Result<Rgetattr> getattr(uint32_t fid, uint64_t mask = kGetattrBasic);
  Result<Qid> lopen(uint32_t fid, uint32_t flags);
  Result<Qid> lcreate(uint32_t fid, std::string_view name, uint32_t flags, uint32_t mode, uint32_t gid = 0);
  Result<std::string> read_all(uint32_t fid);  // an opened fid, from offset 0 to EOF
  Result<uint32_t> write(uint32_t fid, uint64_t offset, std::string_view data);
  Result<void> clunk(uint32_t fid);
  struct DirEntry {
    Qid qid;
    uint64_t offset;
    uint8_t type;
    std::string name;
  };
  Result<std::vector<DirEntry>> readdir_all(uint32_t fid);  // an opened directory fid

 private:
  static constexpr size_t kInitialBuffer = 64 * 1024;
  template <class T>
  static size_t wire_size(const T& t) {
    size_t n = 0;
    auto add = [&](const auto& f) {
      using F = std::decay_t<decltype(f)>;
      if constexpr (std::is_same_v<F, std::string_view>) n += 2 + f.size();
      else if constexpr (std::is_same_v<F, Data>) n += 4 + f.bytes.size();
      else if constexpr (std::is_same_v<F, WalkNames>) {
        n += 2;
        for (size_t i = 0; i < f.count; i++) n += 2 + f.names[i].size();
      } else n += sizeof(F) + 16;
    };
    std::apply([&](const auto&... f) { (add(f), ...); }, t.fields());
    return n;
  }
  Result<void> read_exact(std::byte* p, size_t n);

  Fd fd_;
  std::vector<std::byte> tx_, rx_;
  uint32_t msize_ = 8192;
  uint32_t next_fid_ = 1;
  uint16_t next_tag_ = 0;
};

}  // namespace fsd::p9
