// 9P2000.L messages, named and laid out as on the wire (see docs: Linux
// include/net/9p/9p.h and diod's protocol.md). Each struct lists its fields
// in wire order through P9_FIELDS; the generic codec in codec.h walks them.
//
// Decoded strings and data are views into the frame they came from: a
// decoded message is valid only while that frame's bytes are.
#pragma once

#include <cstdint>
#include <string_view>
#include <tuple>
#include <variant>

#include "protocol/p9/wire.h"

namespace fsd::p9 {

enum class Type : uint8_t {
  Tlerror = 6, Rlerror = Tlerror + 1,
  Tstatfs = 8, Rstatfs = Tstatfs + 1,
  Tlopen = 12, Rlopen = Tlopen + 1,
  Tlcreate = 14, Rlcreate = Tlcreate + 1,
  Tsymlink = 16, Rsymlink = Tsymlink + 1,
  Tmknod = 18, Rmknod = Tmknod + 1,
  Trename = 20, Rrename = Trename + 1,
  Treadlink = 22, Rreadlink = Treadlink + 1,
  Tgetattr = 24, Rgetattr = Tgetattr + 1,
  Tsetattr = 26, Rsetattr = Tsetattr + 1,
  Txattrwalk = 30, Rxattrwalk = Txattrwalk + 1,
  Txattrcreate = 32, Rxattrcreate = Txattrcreate + 1,
  Treaddir = 40, Rreaddir = Treaddir + 1,
  Tfsync = 50, Rfsync = Tfsync + 1,
  Tlock = 52, Rlock = Tlock + 1,
  Tgetlock = 54, Rgetlock = Tgetlock + 1,
  Tlink = 70, Rlink = Tlink + 1,
  Tmkdir = 72, Rmkdir = Tmkdir + 1,
  Trenameat = 74, Rrenameat = Trenameat + 1,
  Tunlinkat = 76, Runlinkat = Tunlinkat + 1,
  Tversion = 100, Rversion = Tversion + 1,
  Tauth = 102, Rauth = Tauth + 1,
  Tattach = 104, Rattach = Tattach + 1,
  Tflush = 108, Rflush = Tflush + 1,
  Twalk = 110, Rwalk = Twalk + 1,
  Tread = 116, Rread = Tread + 1,
  Twrite = 118, Rwrite = Twrite + 1,
  Tclunk = 120, Rclunk = Tclunk + 1,
  Tremove = 122, Rremove = Tremove + 1,
};

// Tgetattr request_mask / Rgetattr valid bits.
inline constexpr uint64_t kGetattrMode = 0x1, kGetattrNlink = 0x2, kGetattrUid = 0x4,
                          kGetattrGid = 0x8, kGetattrRdev = 0x10, kGetattrAtime = 0x20,
                          kGetattrMtime = 0x40, kGetattrCtime = 0x80, kGetattrIno = 0x100,
                          kGetattrSize = 0x200, kGetattrBlocks = 0x400, kGetattrBasic = 0x7ff,
                          kGetattrBtime = 0x800, kGetattrGen = 0x1000,
                          kGetattrDataVersion = 0x2000, kGetattrAll = 0x3fff;

// Tsetattr valid bits.
inline constexpr uint32_t kSetattrMode = 0x1, kSetattrUid = 0x2, kSetattrGid = 0x4,
                          kSetattrSize = 0x8, kSetattrAtime = 0x10, kSetattrMtime = 0x20,
                          kSetattrCtime = 0x40, kSetattrAtimeSet = 0x80,
                          kSetattrMtimeSet = 0x100;

// Tlock type / flags and Rlock status.
inline constexpr uint8_t kLockTypeRdlck = 0, kLockTypeWrlck = 1, kLockTypeUnlck = 2;
inline constexpr uint32_t kLockFlagsBlock = 1, kLockFlagsReclaim = 2;
inline constexpr uint8_t kLockSuccess = 0, kLockBlocked = 1, kLockError = 2, kLockGrace = 3;

// Tunlinkat flags.
inline constexpr uint32_t kAtRemoveDir = 0x200;

#define P9_FIELDS(...)                                             \
  auto fields() { return std::tie(__VA_ARGS__); }                  \
  auto fields() const { return std::tie(__VA_ARGS__); }

#define P9_MESSAGE(Name) static constexpr Type kType = Type::Name

struct Rlerror { P9_MESSAGE(Rlerror); uint32_t ecode; P9_FIELDS(ecode) };

struct Tstatfs { P9_MESSAGE(Tstatfs); uint32_t fid; P9_FIELDS(fid) };
struct Rstatfs {
  P9_MESSAGE(Rstatfs);
  uint32_t type, bsize;
  uint64_t blocks, bfree, bavail, files, ffree, fsid;
  uint32_t namelen;
  P9_FIELDS(type, bsize, blocks, bfree, bavail, files, ffree, fsid, namelen)
};

struct Tlopen { P9_MESSAGE(Tlopen); uint32_t fid, flags; P9_FIELDS(fid, flags) };
struct Rlopen { P9_MESSAGE(Rlopen); Qid qid; uint32_t iounit; P9_FIELDS(qid, iounit) };

struct Tlcreate {
  P9_MESSAGE(Tlcreate);
  uint32_t fid; std::string_view name; uint32_t flags, mode, gid;
  P9_FIELDS(fid, name, flags, mode, gid)
};
struct Rlcreate { P9_MESSAGE(Rlcreate); Qid qid; uint32_t iounit; P9_FIELDS(qid, iounit) };

struct Tsymlink {
  P9_MESSAGE(Tsymlink);
  uint32_t dfid; std::string_view name, symtgt; uint32_t gid;
  P9_FIELDS(dfid, name, symtgt, gid)
};
struct Rsymlink { P9_MESSAGE(Rsymlink); Qid qid; P9_FIELDS(qid) };

struct Tmknod {
  P9_MESSAGE(Tmknod);
  uint32_t dfid; std::string_view name; uint32_t mode, major, minor, gid;
  P9_FIELDS(dfid, name, mode, major, minor, gid)
};
struct Rmknod { P9_MESSAGE(Rmknod); Qid qid; P9_FIELDS(qid) };

struct Trename {
  P9_MESSAGE(Trename);
  uint32_t fid, dfid; std::string_view name;
  P9_FIELDS(fid, dfid, name)
};
struct Rrename { P9_MESSAGE(Rrename); P9_FIELDS() };

struct Treadlink { P9_MESSAGE(Treadlink); uint32_t fid; P9_FIELDS(fid) };
struct Rreadlink { P9_MESSAGE(Rreadlink); std::string_view target; P9_FIELDS(target) };

struct Tgetattr { P9_MESSAGE(Tgetattr); uint32_t fid; uint64_t request_mask; P9_FIELDS(fid, request_mask) };
struct Rgetattr {
  P9_MESSAGE(Rgetattr);
  uint64_t valid; Qid qid; uint32_t mode, uid, gid;
  uint64_t nlink, rdev, size, blksize, blocks;
  uint64_t atime_sec, atime_nsec, mtime_sec, mtime_nsec, ctime_sec, ctime_nsec;
  uint64_t btime_sec, btime_nsec, gen, data_version;
  P9_FIELDS(valid, qid, mode, uid, gid, nlink, rdev, size, blksize, blocks, atime_sec, atime_nsec,
            mtime_sec, mtime_nsec, ctime_sec, ctime_nsec, btime_sec, btime_nsec, gen, data_version)
};

struct Tsetattr {
  P9_MESSAGE(Tsetattr);
  uint32_t fid, valid, mode, uid, gid; uint64_t size;
  uint64_t atime_sec, atime_nsec, mtime_sec, mtime_nsec;
  P9_FIELDS(fid, valid, mode, uid, gid, size, atime_sec, atime_nsec, mtime_sec, mtime_nsec)
};
struct Rsetattr { P9_MESSAGE(Rsetattr); P9_FIELDS() };

struct Txattrwalk {
  P9_MESSAGE(Txattrwalk);
  uint32_t fid, newfid; std::string_view name;
  P9_FIELDS(fid, newfid, name)
};
struct Rxattrwalk { P9_MESSAGE(Rxattrwalk); uint64_t size; P9_FIELDS(size) };

struct Txattrcreate {
  P9_MESSAGE(Txattrcreate);
  uint32_t fid; std::string_view name; uint64_t attr_size; uint32_t flags;
  P9_FIELDS(fid, name, attr_size, flags)
};
struct Rxattrcreate { P9_MESSAGE(Rxattrcreate); P9_FIELDS() };

struct Treaddir {
  P9_MESSAGE(Treaddir);
  uint32_t fid; uint64_t offset; uint32_t count;
  P9_FIELDS(fid, offset, count)
};
// data holds directory entries; see DirentWriter / DirentReader.
struct Rreaddir { P9_MESSAGE(Rreaddir); Data data; P9_FIELDS(data) };

struct Tfsync { P9_MESSAGE(Tfsync); uint32_t fid, datasync; P9_FIELDS(fid, datasync) };
struct Rfsync { P9_MESSAGE(Rfsync); P9_FIELDS() };

struct Tlock {
  P9_MESSAGE(Tlock);
  uint32_t fid; uint8_t type; uint32_t flags; uint64_t start, length; uint32_t proc_id;
  std::string_view client_id;
  P9_FIELDS(fid, type, flags, start, length, proc_id, client_id)
};
struct Rlock { P9_MESSAGE(Rlock); uint8_t status; P9_FIELDS(status) };

struct Tgetlock {
  P9_MESSAGE(Tgetlock);
  uint32_t fid; uint8_t type; uint64_t start, length; uint32_t proc_id;
  std::string_view client_id;
  P9_FIELDS(fid, type, start, length, proc_id, client_id)
};
struct Rgetlock {
  P9_MESSAGE(Rgetlock);
  uint8_t type; uint64_t start, length; uint32_t proc_id; std::string_view client_id;
  P9_FIELDS(type, start, length, proc_id, client_id)
};

struct Tlink {
  P9_MESSAGE(Tlink);
  uint32_t dfid, fid; std::string_view name;
  P9_FIELDS(dfid, fid, name)
};
struct Rlink { P9_MESSAGE(Rlink); P9_FIELDS() };

struct Tmkdir {
  P9_MESSAGE(Tmkdir);
  uint32_t dfid; std::string_view name; uint32_t mode, gid;
  P9_FIELDS(dfid, name, mode, gid)
};
struct Rmkdir { P9_MESSAGE(Rmkdir); Qid qid; P9_FIELDS(qid) };

struct Trenameat {
  P9_MESSAGE(Trenameat);
  uint32_t olddirfid; std::string_view oldname; uint32_t newdirfid; std::string_view newname;
  P9_FIELDS(olddirfid, oldname, newdirfid, newname)
};
struct Rrenameat { P9_MESSAGE(Rrenameat); P9_FIELDS() };

struct Tunlinkat {
  P9_MESSAGE(Tunlinkat);
  uint32_t dirfid; std::string_view name; uint32_t flags;
  P9_FIELDS(dirfid, name, flags)
};
struct Runlinkat { P9_MESSAGE(Runlinkat); P9_FIELDS() };

struct Tversion { P9_MESSAGE(Tversion); uint32_t msize; std::string_view version; P9_FIELDS(msize, version) };
struct Rversion { P9_MESSAGE(Rversion); uint32_t msize; std::string_view version; P9_FIELDS(msize, version) };

struct Tauth {
  P9_MESSAGE(Tauth);
  uint32_t afid; std::string_view uname, aname; uint32_t n_uname;
  P9_FIELDS(afid, uname, aname, n_uname)
};
struct Rauth { P9_MESSAGE(Rauth); Qid aqid; P9_FIELDS(aqid) };

struct Tattach {
  P9_MESSAGE(Tattach);
  uint32_t fid, afid; std::string_view uname, aname; uint32_t n_uname;
  P9_FIELDS(fid, afid, uname, aname, n_uname)
};
struct Rattach { P9_MESSAGE(Rattach); Qid qid; P9_FIELDS(qid) };

struct Tflush { P9_MESSAGE(Tflush); uint16_t oldtag; P9_FIELDS(oldtag) };
struct Rflush { P9_MESSAGE(Rflush); P9_FIELDS() };

struct Twalk {
  P9_MESSAGE(Twalk);
  uint32_t fid, newfid; WalkNames wnames;
  P9_FIELDS(fid, newfid, wnames)
};
struct Rwalk { P9_MESSAGE(Rwalk); WalkQids wqids; P9_FIELDS(wqids) };

struct Tread { P9_MESSAGE(Tread); uint32_t fid; uint64_t offset; uint32_t count; P9_FIELDS(fid, offset, count) };
struct Rread { P9_MESSAGE(Rread); Data data; P9_FIELDS(data) };

struct Twrite { P9_MESSAGE(Twrite); uint32_t fid; uint64_t offset; Data data; P9_FIELDS(fid, offset, data) };
struct Rwrite { P9_MESSAGE(Rwrite); uint32_t count; P9_FIELDS(count) };

struct Tclunk { P9_MESSAGE(Tclunk); uint32_t fid; P9_FIELDS(fid) };
struct Rclunk { P9_MESSAGE(Rclunk); P9_FIELDS() };

struct Tremove { P9_MESSAGE(Tremove); uint32_t fid; P9_FIELDS(fid) };
struct Rremove { P9_MESSAGE(Rremove); P9_FIELDS() };

#undef P9_MESSAGE

using TMessage = std::variant<Tstatfs, Tlopen, Tlcreate, Tsymlink, Tmknod, Trename, Treadlink,
                              Tgetattr, Tsetattr, Txattrwalk, Txattrcreate, Treaddir, Tfsync,
                              Tlock, Tgetlock, Tlink, Tmkdir, Trenameat, Tunlinkat, Tversion,
                              Tauth, Tattach, Tflush, Twalk, Tread, Twrite, Tclunk, Tremove>;

using RMessage = std::variant<Rlerror, Rstatfs, Rlopen, Rlcreate, Rsymlink, Rmknod, Rrename,
                              Rreadlink, Rgetattr, Rsetattr, Rxattrwalk, Rxattrcreate, Rreaddir,
                              Rfsync, Rlock, Rgetlock, Rlink, Rmkdir, Rrenameat, Runlinkat,
                              Rversion, Rauth, Rattach, Rflush, Rwalk, Rread, Rwrite, Rclunk,
                              Rremove>;

// Human-readable message name ("Twalk"), or nullptr for an unknown type.
const char* type_name(uint8_t type);

}  // namespace fsd::p9
