#include "launcher/kernel_image.h"

#include <archive.h>
#include <archive_entry.h>
#include <elf.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string_view>

namespace fsd::launcher {
namespace {

namespace fs = std::filesystem;

// Xen's ELF note that gives a kernel's 32-bit PVH entry point.
constexpr uint32_t kPhys32Entry = 18;

template <class T>
std::optional<T> load(std::string_view s, size_t at) {
  if (at > s.size() || s.size() - at < sizeof(T)) return std::nullopt;
  T v;
  std::memcpy(&v, s.data() + at, sizeof v);
  return v;
}

// The compressed kernel inside a bzImage (boot protocol 2.08 and later give
// its place in the setup header: payload_offset, payload_length).
std::optional<std::string_view> payload(std::string_view img) {
  if (img.size() < 0x250 || img.substr(0x202, 4) != "HdrS") return std::nullopt;
  if (*load<uint16_t>(img, 0x206) < 0x208) return std::nullopt;
  unsigned setup_sects = static_cast<unsigned char>(img[0x1f1]);
  size_t protected_mode = (setup_sects == 0 ? 4 : setup_sects) * 512 + 512;
  uint32_t off = *load<uint32_t>(img, 0x248), len = *load<uint32_t>(img, 0x24c);
  if (len < 4 || protected_mode > img.size() || off > img.size() - protected_mode ||
      len > img.size() - protected_mode - off)
    return std::nullopt;
  return img.substr(protected_mode + off, len);
}

// Decompresses `data` (any compression libarchive knows) up to `size`
// bytes: exactly `size` bytes, or "".
std::string decompress(std::string_view data, size_t size) {
  std::unique_ptr<archive, decltype(&archive_read_free)> a(archive_read_new(), archive_read_free);
  archive_read_support_filter_all(a.get());
  archive_read_support_format_raw(a.get());
  archive_entry* entry = nullptr;
  if (archive_read_open_memory(a.get(), data.data(), data.size()) != ARCHIVE_OK ||
      archive_read_next_header(a.get(), &entry) != ARCHIVE_OK)
    return "";
  std::string out(size, '\0');
  size_t got = 0;
  while (got < size) {
    la_ssize_t n = archive_read_data(a.get(), out.data() + got, size - got);
    if (n <= 0) return "";
    got += static_cast<size_t>(n);
  }
  return out;
}

// FNV-1a: the cache key of a bzImage's contents.
std::string content_key(std::string_view s) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  std::ostringstream o;
  o << std::hex << h << "-" << std::dec << s.size();
  return o.str();
}

}  // namespace

bool has_pvh_entry(const std::string& elf_bytes) {
  std::string_view elf = elf_bytes;
  auto eh = load<Elf64_Ehdr>(elf, 0);
  if (!eh || std::memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
      eh->e_machine != EM_X86_64 || eh->e_phentsize != sizeof(Elf64_Phdr))
    return false;
  for (unsigned i = 0; i < eh->e_phnum; i++) {
    auto ph = load<Elf64_Phdr>(elf, eh->e_phoff + i * sizeof(Elf64_Phdr));
    if (!ph) return false;
    if (ph->p_type != PT_NOTE || ph->p_offset > elf.size() || ph->p_filesz > elf.size() - ph->p_offset) continue;
    std::string_view notes = elf.substr(ph->p_offset, ph->p_filesz);
    for (size_t at = 0; at + sizeof(Elf64_Nhdr) <= notes.size();) {
      auto nh = *load<Elf64_Nhdr>(notes, at);
      size_t name_at = at + sizeof nh, desc_at = name_at + ((nh.n_namesz + 3) & ~3u);
      size_t next = desc_at + ((nh.n_descsz + 3) & ~3u);
      if (next > notes.size() || next <= at) break;
      if (nh.n_type == kPhys32Entry && nh.n_namesz == 4 && notes.substr(name_at, 4) == std::string_view("Xen\0", 4))
        return true;
      at = next;
    }
  }
  return false;
}

std::string pvh_kernel(const std::string& bzimage, const std::string& cache_dir) {
  std::ifstream in(bzimage, std::ios::binary);
  if (!in) return "";
  std::string img((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  fs::path dir = fs::path(cache_dir) / "kernel-pvh";
  fs::path out = dir / (content_key(img) + ".vmlinux");
  fs::path none = dir / (content_key(img) + ".none");  // looked at before: nothing to offer
  std::error_code ec;
  if (fs::exists(out, ec)) return out.string();
  if (fs::exists(none, ec)) return "";
  auto compressed = payload(img);
  std::string elf;
  // The payload ends with the uncompressed size: gzip's own ISIZE, or 4
  // bytes the kernel's build appends after the other compressions' streams
  // (which liblzma, for one, refuses to read past).
  if (compressed) {
    uint32_t size = *load<uint32_t>(*compressed, compressed->size() - 4);
    elf = decompress(compressed->substr(0, compressed->size() - 4), size);
    if (elf.empty()) elf = decompress(*compressed, size);  // gzip
  }
  bool usable = !elf.empty() && has_pvh_entry(elf);
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error("cannot create " + dir.string() + ": " + ec.message());
  fs::path tmp = dir / (".tmp-" + std::to_string(::getpid()));
  {
    std::ofstream o(tmp, std::ios::binary | std::ios::trunc);
    if (usable) o.write(elf.data(), static_cast<std::streamsize>(elf.size()));
    if (!o) throw std::runtime_error("cannot write " + tmp.string());
  }
  fs::rename(tmp, usable ? out : none, ec);
  if (ec) throw std::runtime_error("cannot write " + out.string() + ": " + ec.message());
  return usable ? out.string() : "";
}

}  // namespace fsd::launcher
