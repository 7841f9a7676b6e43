// Session: the 9P2000.L server state of one connection (msize, fids,
// requests in flight), on top of the shared Vfs backends.
//
// A transport hands it complete frames (already checked to be no larger than
// max_frame()) with handle(); every request produces exactly one reply through
// the ReplySink, in completion order, except that a malformed frame makes the
// session call ReplySink::protocol_error() instead (the transport then drops
// the connection). Tflush is answered only after the flushed request's reply.
//
// Thread-safety: a Session is used by one thread (its Ring's).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fsd/p9/buffer.h"
#include "fsd/uring/ring.h"
#include "fsd/vfs/vfs.h"
#include "protocol/p9/codec.h"

namespace fsd::p9 {

// The exports a server offers; attach picks one by aname.
class ExportSet {
 public:
  void add(std::unique_ptr<Vfs> vfs) {
    exports_.push_back(vfs.get());
    owned_.push_back(std::move(vfs));
  }
  // An export owned elsewhere (it must outlive this set).
  void add_borrowed(Vfs* vfs) { exports_.push_back(vfs); }
  // By tag, by host path, or the only export for an empty aname.
  Vfs* find(std::string_view aname) const;
  const std::vector<Vfs*>& all() const { return exports_; }

 private:
  std::vector<Vfs*> exports_;
  std::vector<std::unique_ptr<Vfs>> owned_;
};

struct SessionConfig {
  uint32_t max_msize = 1 << 20;  // the most this server agrees to
  static constexpr uint32_t kMinMsize = 4096;
  static constexpr uint32_t kInitialMsize = 8192;  // until Tversion
  static constexpr uint32_t kMaxMsize = 16 << 20;
};

class ReplySink {
 public:
  virtual ~ReplySink() = default;
  virtual Buffer buffer(size_t capacity) = 0;
  virtual void reply(Buffer frame) = 0;
  virtual void recycle(Buffer frame) = 0;
  virtual void protocol_error(std::string_view why) = 0;
};

class Session {
 public:
  Session(const ExportSet& exports, Ring& ring, ReplySink& sink, SessionConfig config);
  ~Session();

  // The largest frame the client may send now (the negotiated msize).
  uint32_t max_frame() const { return msize_; }
  // Handles one frame; completes after its reply was handed to the sink.
  Task<void> handle(Buffer frame);
  size_t in_flight() const { return in_flight_.size(); }
  size_t fid_count() const { return fids_.size(); }

 private:
  struct Fid;
  struct Request;
  using FidPtr = std::shared_ptr<Fid>;

  Task<Result<void>> dispatch(Request& rq);
  template <class M>
  void set_reply(Request& rq, const M& m);

  Result<FidPtr> fid(uint32_t id) const;
  Result<void> check_new_fid(uint32_t id, uint32_t except = kNoFid) const;
  Qid qid_of(Vfs& vfs, const Node& n, const struct statx& st) const;

  Task<Result<void>> op(Request&, const Tversion&);
  Task<Result<void>> op(Request&, const Tauth&);
  Task<Result<void>> op(Request&, const Tattach&);
  Task<Result<void>> op(Request&, const Tflush&);
  Task<Result<void>> op(Request&, const Twalk&);
  Task<Result<void>> op(Request&, const Tgetattr&);
  Task<Result<void>> op(Request&, const Tsetattr&);
  Task<Result<void>> op(Request&, const Tlopen&);
  Task<Result<void>> op(Request&, const Tlcreate&);
  Task<Result<void>> op(Request&, const Tread&);
  Task<Result<void>> op(Request&, const Twrite&);
  Task<Result<void>> op(Request&, const Treaddir&);
  Task<Result<void>> op(Request&, const Tclunk&);
  Task<Result<void>> op(Request&, const Tremove&);
  Task<Result<void>> op(Request&, const Tmkdir&);
  Task<Result<void>> op(Request&, const Tsymlink&);
  Task<Result<void>> op(Request&, const Tmknod&);
  Task<Result<void>> op(Request&, const Trename&);
  Task<Result<void>> op(Request&, const Trenameat&);
  Task<Result<void>> op(Request&, const Tunlinkat&);
  Task<Result<void>> op(Request&, const Tlink&);
  Task<Result<void>> op(Request&, const Treadlink&);
  Task<Result<void>> op(Request&, const Tstatfs&);
  Task<Result<void>> op(Request&, const Tfsync&);
  Task<Result<void>> op(Request&, const Txattrwalk&);
  Task<Result<void>> op(Request&, const Txattrcreate&);
  Task<Result<void>> op(Request&, const Tlock&);
  Task<Result<void>> op(Request&, const Tgetlock&);

  const ExportSet& exports_;
  Ring& ring_;
  ReplySink& sink_;
  SessionConfig config_;
  uint32_t msize_ = SessionConfig::kInitialMsize;
  std::unordered_map<uint32_t, FidPtr> fids_;
  std::unordered_map<uint16_t, Request*> in_flight_;  // by tag
};

}  // namespace fsd::p9
