#include "launcher/registration.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>

#include "common/fd.h"

namespace fsd::launcher {
namespace {

constexpr std::string_view kBase32 = "0123456789abcdfghijklmnpqrsvwxyz";  // Nix's: no e, o, t, u
constexpr size_t kHashPartLen = 32;

bool is_base32(char c) { return kBase32.find(c) != std::string_view::npos; }

[[noreturn]] void fail_errno(const std::string& what, const std::string& path) {
  throw std::runtime_error(what + " " + path + ": " + std::strerror(errno));
}

// The NAR format: every field a string (a little-endian 64-bit length, the
// bytes, zeros to a multiple of 8); a node is "(" "type" KIND ... ")", a
// directory's entries sorted by name in byte order.
class NarWriter {
 public:
  explicit NarWriter(const std::function<void(std::string_view)>& out) : out_(out) {}

  void archive(const std::string& path) {
    str("nix-archive-1");
    node(path);
  }

 private:
  void str(std::string_view s) {
    length(s.size());
    if (!s.empty()) out_(s);
    pad(s.size());
  }
  void length(uint64_t n) {
    char b[8];
    for (int i = 0; i < 8; i++) b[i] = static_cast<char>(n >> (8 * i));
    out_({b, 8});
  }
  void pad(uint64_t n) {
    static constexpr char kZeros[8] = {};
    if (n % 8) out_({kZeros, 8 - n % 8});
  }

  void node(const std::string& path) {
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) fail_errno("cannot read", path);
    str("(");
    str("type");
    if (S_ISREG(st.st_mode)) {
      str("regular");
      if (st.st_mode & S_IXUSR) {
        str("executable");
        str("");
      }
      str("contents");
      contents(path);
    } else if (S_ISLNK(st.st_mode)) {
      str("symlink");
      str("target");
      std::string target(st.st_size + 1, '\0');
      ssize_t n = ::readlink(path.c_str(), target.data(), target.size());
      if (n < 0 || static_cast<size_t>(n) >= target.size()) fail_errno("cannot read the link", path);
      target.resize(n);
      str(target);
    } else if (S_ISDIR(st.st_mode)) {
      str("directory");
      for (const auto& name : entries(path)) {
        str("entry");
        str("(");
        str("name");
        str(name);
        str("node");
        node(path + "/" + name);
        str(")");
      }
    } else {
      throw std::runtime_error(path + " is neither a file, a directory nor a symlink: a store path holds no other kind");
    }
    str(")");
  }

  // A file's bytes as one string, streamed; its size is the one it had
  // when opened (a file that changes under the reading is an error).
  void contents(const std::string& path) {
    Fd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    struct stat st;
    if (!fd || ::fstat(fd.get(), &st) != 0) fail_errno("cannot read", path);
    uint64_t size = st.st_size, done = 0;
    length(size);
    buf_.resize(256 << 10);
    while (done < size) {
      ssize_t n = ::read(fd.get(), buf_.data(), std::min<uint64_t>(buf_.size(), size - done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail_errno("cannot read", path);
      if (n == 0) throw std::runtime_error(path + " got shorter while it was read");
      out_({buf_.data(), static_cast<size_t>(n)});
      done += n;
    }
    pad(size);
  }

  static std::vector<std::string> entries(const std::string& path) {
    std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(path.c_str()), ::closedir);
    if (!d) fail_errno("cannot list", path);
    std::vector<std::string> names;
    errno = 0;
    while (dirent* e = ::readdir(d.get())) {
      std::string_view n = e->d_name;
      if (n != "." && n != "..") names.emplace_back(n);
    }
    if (errno != 0) fail_errno("cannot list", path);
    std::sort(names.begin(), names.end());  // char_traits<char> compares as unsigned bytes
    return names;
  }

  const std::function<void(std::string_view)>& out_;
  std::vector<char> buf_;
};

// Finds the hash parts that occur in a stream given in pieces, as Nix's
// reference scanner does: every run of 32 base32 characters is looked up.
class HashScanner {
 public:
  explicit HashScanner(const HashParts& wanted) : wanted_(wanted) {}

  void feed(std::string_view piece) {
    // The last 31 bytes of what came before, so a hash split across pieces is found.
    window_.append(piece);
    size_t n = window_.size();
    for (size_t i = 0; i + kHashPartLen <= n;) {
      size_t bad = kHashPartLen;
      for (size_t k = kHashPartLen; k-- > 0;)
        if (!is_base32(window_[i + k])) {
          bad = k;
          break;
        }
      if (bad != kHashPartLen) {
        i += bad + 1;
        continue;
      }
      std::string_view candidate(window_.data() + i, kHashPartLen);
      if (auto it = wanted_.find(candidate); it != wanted_.end()) found_.insert(*it);
      i++;
    }
    if (n > kHashPartLen - 1) window_.erase(0, n - (kHashPartLen - 1));
  }
  HashParts take() { return std::move(found_); }

 private:
  const HashParts& wanted_;
  std::string window_;
  HashParts found_;
};

struct Sha256 {
  Sha256() : ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw std::runtime_error("SHA-256 is not available");
  }
  void update(std::string_view s) { EVP_DigestUpdate(ctx.get(), s.data(), s.size()); }
  std::array<uint8_t, 32> digest() {
    std::array<uint8_t, 32> d{};
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx.get(), d.data(), &len);
    return d;
  }
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx;
};

// STORE_DIR/NAME -> NAME, or "" if `path` is not a store path of `store_dir`.
std::string_view store_name(std::string_view path, const std::string& store_dir) {
  if (!path.starts_with(store_dir) || path.size() <= store_dir.size() + 1 || path[store_dir.size()] != '/') return {};
  std::string_view name = path.substr(store_dir.size() + 1);
  return is_store_name(name) ? name : std::string_view{};
}

bool is_nar_hash(std::string_view h) {
  if (!h.starts_with("sha256:")) return false;
  h.remove_prefix(7);
  if (h.size() == 52) return std::all_of(h.begin(), h.end(), is_base32);
  return h.size() == 64 && std::all_of(h.begin(), h.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

}  // namespace

std::string nix_base32(const std::array<uint8_t, 32>& digest) {
  constexpr size_t kLen = (32 * 8 - 1) / 5 + 1;  // 52
  std::string s;
  s.reserve(kLen);
  // The last 5-bit group first; group n holds bits 5n .. 5n+4 of the digest, least significant byte first.
  for (size_t n = kLen; n-- > 0;) {
    size_t bit = n * 5, i = bit / 8, j = bit % 8;
    unsigned c = digest[i] >> j;
    if (i + 1 < 32) c |= static_cast<unsigned>(digest[i + 1]) << (8 - j);
    s.push_back(kBase32[c & 0x1f]);
  }
  return s;
}

bool is_store_name(std::string_view name) {
  if (name.size() < kHashPartLen + 2 || name.size() > kHashPartLen + 1 + 211 || name[kHashPartLen] != '-') return false;
  if (!std::all_of(name.begin(), name.begin() + kHashPartLen, is_base32)) return false;
  std::string_view rest = name.substr(kHashPartLen + 1);
  if (rest[0] == '.') return false;
  return std::all_of(rest.begin(), rest.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::string_view("+-._?=").find(c) != std::string_view::npos;
  });
}

void write_nar(const std::string& host_path, const std::function<void(std::string_view)>& out) {
  NarWriter(out).archive(host_path);
}

NarSummary summarise_nar(const std::string& host_path, const HashParts& hash_parts) {
  Sha256 sha;
  HashScanner scan(hash_parts);
  NarSummary s;
  write_nar(host_path, [&](std::string_view piece) {
    sha.update(piece);
    scan.feed(piece);
    s.size += piece.size();
  });
  s.sha256 = sha.digest();
  s.found = scan.take();
  return s;
}

std::vector<ValidPath> parse_registration(std::string_view text, const std::string& store_dir, const std::string& origin) {
  std::vector<std::string_view> lines;
  for (size_t at = 0; at < text.size();) {
    size_t end = text.find('\n', at);
    if (end == std::string_view::npos) end = text.size();
    lines.push_back(text.substr(at, end - at));
    at = end + 1;
  }
  size_t line = 0;
  auto fail = [&](const std::string& why) -> void {
    throw std::runtime_error(origin + ":" + std::to_string(line) + ": " + why);
  };
  auto next = [&](const char* what) {
    if (line >= lines.size()) {
      line = lines.size() + 1;
      fail(std::string("ends before ") + what);
    }
    return lines[line++];
  };
  auto number = [&](std::string_view s, const char* what) {
    uint64_t n = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc{} || end != s.data() + s.size() || s.empty()) fail(std::string(what) + " \"" + std::string(s) + "\" is not a number");
    return n;
  };
  std::vector<ValidPath> paths;
  std::map<std::string, size_t, std::less<>> index;
  std::vector<std::pair<size_t, std::string>> refs_at;  // (line, reference), checked once every path is known
  while (line < lines.size()) {
    if (lines[line].empty() && line + 1 == lines.size()) break;  // the last newline's
    ValidPath p;
    p.path = next("a path");
    if (store_name(p.path, store_dir).empty()) fail("\"" + p.path + "\" is not a store path of " + store_dir);
    if (index.contains(p.path)) fail(p.path + " is registered twice");
    p.nar_hash = next("the NAR hash");
    if (!is_nar_hash(p.nar_hash)) fail("\"" + p.nar_hash + "\" is not a NAR hash (sha256: and 52 base32 or 64 hex digits)");
    p.nar_size = number(next("the NAR size"), "the NAR size");
    if (p.nar_size == 0) fail("a NAR size of 0 (no NAR is empty)");
    p.deriver = next("the deriver");
    if (!p.deriver.empty() && store_name(p.deriver, store_dir).empty())
      fail("the deriver \"" + p.deriver + "\" is not a store path of " + store_dir);
    uint64_t n = number(next("the number of references"), "the number of references");
    if (n > lines.size()) fail("more references (" + std::to_string(n) + ") than the file has lines");
    for (uint64_t i = 0; i < n; i++) {
      std::string ref(next("a reference"));
      refs_at.emplace_back(line, ref);
      p.references.push_back(std::move(ref));
    }
    std::sort(p.references.begin(), p.references.end());
    index.emplace(p.path, paths.size());
    paths.push_back(std::move(p));
  }
  for (const auto& [at, ref] : refs_at)
    if (!index.contains(ref)) {
      line = at;
      fail("the reference \"" + ref + "\" is not one of the registration's paths");
    }
  if (paths.empty()) throw std::runtime_error(origin + ": registers no paths");
  return paths;
}

std::string format_registration(const std::vector<ValidPath>& paths) {
  std::string s;
  for (const auto& p : paths) {
    s += p.path + "\n" + p.nar_hash + "\n" + std::to_string(p.nar_size) + "\n" + p.deriver + "\n" +
         std::to_string(p.references.size()) + "\n";
    for (const auto& r : p.references) s += r + "\n";
  }
  return s;
}

bool is_registration(std::string_view text) {
  size_t first = text.find('\n');
  return first != std::string_view::npos && text.substr(first + 1).starts_with("sha256:");
}

std::vector<ValidPath> compute_registration(const std::string& host_store, const std::string& store_dir,
                                            const std::vector<std::string>& names) {
  std::map<std::string, std::string, std::less<>> by_hash;  // hash part -> name
  for (const auto& name : names) {
    if (!is_store_name(name))
      throw std::runtime_error("\"" + name + "\" is not a store path's name (32 characters of Nix's base32, '-', a name)");
    auto [it, fresh] = by_hash.emplace(name.substr(0, kHashPartLen), name);
    if (!fresh && it->second != name) throw std::runtime_error(name + " and " + it->second + " have the same hash part");
  }
  HashParts parts;
  for (const auto& [hash, name] : by_hash) parts.insert(hash);
  std::vector<ValidPath> out;
  for (const auto& [hash, name] : by_hash) {
    std::string host = host_store + "/" + name;
    struct stat st;
    if (::lstat(host.c_str(), &st) != 0) fail_errno("cannot register", host);
    NarSummary nar = summarise_nar(host, parts);
    ValidPath p{.path = store_dir + "/" + name, .nar_hash = "sha256:" + nix_base32(nar.sha256), .nar_size = nar.size};
    for (const auto& h : nar.found) p.references.push_back(store_dir + "/" + by_hash.find(h)->second);
    std::sort(p.references.begin(), p.references.end());
    out.push_back(std::move(p));
  }
  std::sort(out.begin(), out.end(), [](const ValidPath& a, const ValidPath& b) { return a.path < b.path; });
  return out;
}

}  // namespace fsd::launcher
