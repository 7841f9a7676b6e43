// The two interfaces between transports (fsd/transport) and protocol servers
// (fsd/fuse, fsd/p9). A transport moves bytes and never looks inside them;
// main.cpp hands each transport a factory for the server it carries.
//
//  - MessageServer: one request in, one reply out. The request comes as
//    RequestBytes (fsd/core/request_bytes.h), which a server copies from
//    before it decodes anything where the memory is shared; the reply goes
//    into scatter-gather buffers. Virtqueues (a descriptor chain's readable
//    and writable parts, in guest memory) and /dev/fuse (one buffer each
//    way) carry it.
//  - StreamSession: length-prefixed frames on a byte stream (sockets), with
//    replies sent back in any order through a ReplySink.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>

#include "fsd/core/buffer.h"
#include "fsd/core/credentials.h"
#include "fsd/core/request_bytes.h"
#include "common/result.h"
#include "fsd/core/task.h"

namespace fsd {

class Ring;

class MessageServer {
 public:
  virtual ~MessageServer() = default;
  // Handles the request held in `in` and writes its reply into `out`.
  // Returns the reply's length (0: the request has no reply), or an error
  // (-EBADMSG) for a malformed request, which the transport drops or counts.
  // The buffers stay valid until the task finishes. Shared ones may be
  // written by their owner (a guest) at any time: what the server decodes
  // it copies out of `in` first, and it writes its reply without reading
  // `out` back.
  // Runs on the calling thread's `ring`; several calls may be in flight at
  // once, on one or several threads, as the server documents.
  virtual Task<Result<size_t>> handle(Ring& ring, const RequestBytes& in, std::span<const iovec> out) = 0;
};

// Makes the server for a new client of a transport (a vhost-user front-end
// connection, a FUSE mount), on the thread that will run it.
using MessageServerFactory = std::function<std::shared_ptr<MessageServer>(Ring& ring)>;

// Room for one reply where the transport sends it from (a guest's receive
// buffers), so that a server reads file data straight into it: the data is
// written once, with no copy after. Made by ReplySink::space(); destroyed
// unsent, it gives the room back unused.
//
// The room is write-only: it may be memory the client shares and changes
// at any time, so a server never reads it back.
class ReplySpace {
 public:
  virtual ~ReplySpace() = default;
  // The room after its first `skip` bytes (at least the capacity asked for,
  // in all); valid until send() or destruction.
  virtual std::span<const iovec> iov(size_t skip = 0) = 0;
  // Sends the room's first `n` bytes as one complete reply frame.
  virtual void send(size_t n) = 0;
};

// Where a StreamSession sends its replies; owned by the transport.
class ReplySink {
 public:
  virtual ~ReplySink() = default;
  // A buffer of at least `capacity` bytes to encode a reply into.
  virtual Buffer buffer(size_t capacity) = 0;
  // Room for a reply of up to `capacity` bytes in place, when the
  // transport has it to offer now (null: encode into buffer() instead).
  // Replies go out in the order they are sent; while a space is held,
  // later replies wait behind it, so a session holds one only for the I/O
  // that fills it.
  virtual std::unique_ptr<ReplySpace> space(size_t /*capacity*/) { return nullptr; }
  // Sends one complete reply frame.
  virtual void reply(Buffer frame) = 0;
  // Returns a request frame (or an unused buffer) for reuse.
  virtual void recycle(Buffer frame) = 0;
  // The client sent something malformed: the transport drops the stream.
  virtual void protocol_error(std::string_view why) = 0;
};

// Framing on streams: every frame begins with its own length as a
// little-endian uint32 that counts those four bytes too (9P's size[4]).
class StreamSession {
 public:
  virtual ~StreamSession() = default;
  // The largest frame the client may send now.
  virtual uint32_t max_frame() const = 0;
  // Handles one complete frame; every frame gets exactly one reply through
  // the sink, or a protocol_error(). Completes after its reply was sent.
  virtual Task<void> handle(Buffer frame) = 0;
  // Whether the client holds anything of the session's (9P fids): a
  // connection that holds nothing may be closed once idle.
  virtual bool holds_state() const { return false; }
};

// Who is at the other end of a connection, as far as its transport can tell.
struct Peer {
  // The identity its requests act as (null: fsd itself).
  Credentials::Ref who;
  // It may name the user each request acts as (9P's n_uname): a root peer,
  // such as QEMU relaying its guest, or a listener marked trusted.
  bool trusted = false;
};

// Makes the session of a new connection, on the thread that will serve it.
using StreamSessionFactory =
    std::function<std::unique_ptr<StreamSession>(Ring& ring, ReplySink& sink, const Peer& peer)>;

}  // namespace fsd
