// Session: the 9P2000.L server state of one connection (msize, fids,
// requests in flight), on top of the shared Vfs backends.
//
// A transport hands it complete frames (already checked to be no larger than
// max_frame()) with handle(); every request produces exactly one reply through
// the ReplySink, in completion order, except that a malformed frame makes the
// session call ReplySink::protocol_error() instead (the transport then drops
// the connection). Tflush is answered only after the flushed request's reply.
// The session only translates: every host call is the Vfs's.
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

#include "fsd/core/buffer.h"
#include "fsd/vfs/export_set.h"
#include "fsd/core/server.h"
#include "fsd/uring/ring.h"
#include "fsd/vfs/vfs.h"
#include "protocol/p9/codec.h"

namespace fsd::p9 {

struct SessionConfig {
  uint32_t max_msize = 1 << 20;  // the most this server agrees to
  // Per connection: fids (past it, a new fid is EMFILE), and bytes of xattr
  // values held by Txattrwalk/Txattrcreate fids (past it, ENOMEM).
  uint32_t max_fids = 1 << 18;
  size_t max_xattr_bytes = 4 << 20;
  static constexpr uint32_t kMinMsize = 4096;
  static constexpr uint32_t kInitialMsize = 8192;  // until Tversion
  static constexpr uint32_t kMaxMsize = 16 << 20;
};

class Session : public StreamSession {
 public:
  // Requests act as `peer`'s identity; a trusted peer's act as the user its
  // Tattach names (n_uname), looked up in the host's user database.
  Session(const ExportSet& exports, Ring& ring, ReplySink& sink, SessionConfig config, Peer peer);
  ~Session() override;

  // The largest frame the client may send now (the negotiated msize).
  uint32_t max_frame() const override { return msize_; }
  // Handles one frame; completes after its reply was handed to the sink.
  Task<void> handle(Buffer frame) override;
  size_t in_flight() const { return in_flight_.size(); }
  size_t fid_count() const { return fids_.size(); }
  bool holds_state() const override { return !fids_.empty(); }

 private:
  struct Fid;
  struct Request;
  struct XattrCharge;
  using FidPtr = std::shared_ptr<Fid>;

  Task<Result<void>> dispatch(Request& rq);
  template <class M>
  void set_reply(Request& rq, const M& m);

  // The fid; the request acts as the identity it was attached with from now on.
  Result<FidPtr> fid(uint32_t id) const;
  // For a create with a client-chosen group: acts as the fid's identity with
  // that primary group, if the peer is trusted or the identity is in it.
  Result<void> act_as_creator(const Fid& dir, uint32_t client_gid);
  // Two fids on one export (EXDEV across exports).
  Result<std::pair<FidPtr, FidPtr>> one_export(uint32_t a, uint32_t b) const;
  // Ends an op: the backend's error, or the reply R (empty, or the qid of
  // the object the op made).
  template <class R>
  Result<void> reply_empty(Request& rq, Result<void> done);
  template <class R>
  Result<void> reply_qid(Request& rq, const Fid& dir, Result<Entry> made);
  Result<void> check_new_fid(uint32_t id, uint32_t except = kNoFid) const;
  // Counts `bytes` more of xattr buffers against the connection's budget.
  Result<void> charge_xattr(Fid& f, size_t bytes);
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
  Peer peer_;
  uint32_t msize_ = SessionConfig::kInitialMsize;
  size_t xattr_bytes_ = 0;  // declared before fids_: fids release their charge into it
  // The files this connection keeps open for its locks (Vfs::set_lock);
  // shared with those files, which may outlive the session.
  std::shared_ptr<LockAccount> locks_ = std::make_shared<LockAccount>();
  std::unordered_map<uint32_t, FidPtr> fids_;
  std::unordered_map<uint16_t, Request*> in_flight_;  // by tag
};

// Sessions for a stream transport (SocketServer): one per connection, acting
// as the peer the transport identified.
StreamSessionFactory session_factory(const ExportSet& exports, SessionConfig config);

}  // namespace fsd::p9
