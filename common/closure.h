// Closure: a list of store paths, as `nix-store -qR` or Nix's closureInfo
// write it, by their names in the store (the last component).
//
// fsd's export option closure=FILE shows only these in the export's root
// (fsd/vfs/vfs.h): every other name is absent, ENOENT on lookup whatever
// the client's path to the root ("..", a walk of many names, READDIRPLUS)
// and left out of the root's listing. Only read-only exports take one, so
// the view never changes under a client that caches it. vmlaunch checks
// with it that a guest's system is in the closure it is given.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

namespace fsd {

class Closure {
 public:
  // The names listed in the file at `path`, or, for a directory, in its
  // `store-paths` file (a closureInfo) or else in every regular file in it.
  // Throws std::runtime_error naming the file and line of a problem.
  static Closure load(const std::string& path);
  // One list's text: a store path per line ("/nix/store/HASH-NAME": its
  // last component is the name; a bare name is taken as it is). Blank lines
  // and lines starting with '#' are skipped. Throws std::invalid_argument
  // for a line that names no entry ("", ".", "..").
  void add_list(std::string_view text, const std::string& origin);

  bool shows(std::string_view name) const;
  size_t size() const { return names_.size(); }
  std::vector<std::string> names() const;  // sorted

 private:
  void add(std::string_view line, const std::string& where);

  struct Hash : std::hash<std::string_view> {
    using is_transparent = void;
  };
  std::unordered_set<std::string, Hash, std::equal_to<>> names_;
};

}  // namespace fsd
