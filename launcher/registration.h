// Registration: the record of valid store paths that Nix's database is
// loaded from, in the text form `nix-store --load-db` reads and Nix's
// closureInfo writes as its `registration` file. Per path, one line each:
//
//   STORE_DIR/HASH-NAME
//   sha256:NIX-BASE32        (the hash of the path's NAR serialisation)
//   NAR-SIZE                 (bytes)
//   DERIVER                  (a store path, or empty)
//   N                        (how many references follow)
//   REFERENCE x N            (store paths)
//
// vmlaunch reads one (store.registration), or computes one from a list of
// store paths as Nix would: each path's NAR hashed, and its references
// found by scanning the NAR for the hash parts of the listed paths. The
// guest's Nix loads it at boot, so its database holds exactly those paths.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace fsd::launcher {

struct ValidPath {
  std::string path;
  std::string nar_hash;  // "sha256:" and 52 characters of Nix's base32
  uint64_t nar_size = 0;
  std::string deriver;                // "": none
  std::vector<std::string> references;  // store paths, sorted
};

// Nix's base32 of a digest (its own alphabet and digit order; 52 characters
// for SHA-256).
std::string nix_base32(const std::array<uint8_t, 32>& digest);

// True if `name` is a store path's last component as Nix takes it: 32
// characters of its base32 alphabet, '-', then 1 to 211 characters of
// [A-Za-z0-9+-._?=], not starting with '.'.
bool is_store_name(std::string_view name);

// Writes the NAR serialisation of the file, symlink or directory at
// `host_path` to `out`, in pieces. Throws std::runtime_error naming what
// cannot be read or has no NAR form (a device, a socket, a fifo).
void write_nar(const std::string& host_path, const std::function<void(std::string_view)>& out);

using HashParts = std::set<std::string, std::less<>>;  // of store names: their first 32 characters

struct NarSummary {
  std::array<uint8_t, 32> sha256{};
  uint64_t size = 0;
  HashParts found;  // those of the hash parts asked for that occur in the NAR
};
// The NAR's hash and size, and which of `hash_parts` it holds anywhere
// (in a file's bytes, a name, a link's target), as Nix finds a path's
// references.
NarSummary summarise_nar(const std::string& host_path, const HashParts& hash_parts);

// Parses a registration (throws std::runtime_error naming `origin` and the
// line of a problem). Every path must be STORE_DIR/NAME with a store name,
// every reference one of the registration's own paths.
std::vector<ValidPath> parse_registration(std::string_view text, const std::string& store_dir, const std::string& origin);
std::string format_registration(const std::vector<ValidPath>& paths);
// True if `text` is a registration rather than a list of store paths: its
// second line is a NAR hash.
bool is_registration(std::string_view text);

// The registration of `names` (store names, each in `host_store`), as
// paths under `store_dir` (the store's directory in the guest), sorted by
// path. Throws std::runtime_error for a name that is not a store name or
// not in the store.
std::vector<ValidPath> compute_registration(const std::string& host_store, const std::string& store_dir,
                                            const std::vector<std::string>& names);

}  // namespace fsd::launcher
