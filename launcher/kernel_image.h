// The kernel QEMU boots. A bzImage decompresses itself in the guest before
// the kernel's clock starts: an xz-compressed Debian kernel spends 3.4 s of
// a 5.6 s TCG boot there (bench/boot_vs_9p.sh). Where the kernel inside is
// an ELF with a PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY, which QEMU's
// -kernel boots directly), vmlaunch decompresses it once on the host into
// its cache and boots that instead.
#pragma once

#include <string>

namespace fsd::launcher {

// The uncompressed kernel of `bzimage` in `cache_dir` (made on first use,
// keyed by the bzImage's contents), or "" when it has none to offer: not a
// bzImage, a compression libarchive cannot read, no PVH entry point. Never
// throws for such kernels; throws std::runtime_error when the cache cannot
// be written.
std::string pvh_kernel(const std::string& bzimage, const std::string& cache_dir);

// Whether `elf` (an uncompressed kernel's bytes) is an x86-64 ELF with a
// PVH entry point.
bool has_pvh_entry(const std::string& elf);

}  // namespace fsd::launcher
