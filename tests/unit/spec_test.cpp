// vmlaunch's spec: defaults, and one exact message per kind of mistake.
#include <gtest/gtest.h>

#include "launcher/spec.h"
#include "tests/support/test_support.h"

namespace fsd::launcher {
namespace {

using nlohmann::json;
using fsd::testing::TempDir;
using fsd::testing::write_file;

class SpecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_file(tmp_.path() / "vmlinuz", "not really a kernel");
    std::filesystem::create_directories(tmp_.path() / "store");
    std::filesystem::create_directories(tmp_.path() / "data");
    std::filesystem::create_directories(tmp_.path() / "xchg");
    ctx_.file = "spec.json";
    ctx_.xchg_dir = (tmp_.path() / "xchg").string();
  }
  json base() const {
    return json{{"kernel", (tmp_.path() / "vmlinuz").string()}, {"store", {{"path", (tmp_.path() / "store").string()}}}};
  }
  std::string error_of(const json& j) {
    try {
      parse_spec(j, ctx_);
    } catch (const SpecError& e) {
      return e.what();
    }
    return "(no error)";
  }
  std::string tmp(const std::string& rel) const { return (tmp_.path() / rel).string(); }

  TempDir tmp_;
  SpecContext ctx_;
};

TEST_F(SpecTest, DefaultsIncludeXchgAndShared) {
  Spec s = parse_spec(base(), ctx_);
  EXPECT_EQ(s.memory_mib, 1024u);
  EXPECT_EQ(s.cpus, 1u);
  EXPECT_EQ(s.accel, Accel::kAuto);
  EXPECT_EQ(s.store.mount_point, "/nix/store");
  EXPECT_EQ(s.store.writable, Writable::kTmpfs);
  EXPECT_EQ(s.store.proto, Proto::kVirtiofs);
  EXPECT_TRUE(s.rng);
  EXPECT_EQ(s.store.cache, Cache::kAlways);
  ASSERT_EQ(s.shares.size(), 2u);
  EXPECT_EQ(s.shares[0].tag, "xchg");
  EXPECT_EQ(s.shares[0].target, "/tmp/xchg");
  EXPECT_EQ(s.shares[0].source, tmp("xchg"));
  EXPECT_EQ(s.shares[1].tag, "shared");
  EXPECT_EQ(s.shares[1].source, tmp("xchg"));  // no $SHARED_DIR: xchg
  EXPECT_FALSE(s.has_command());
  ctx_.shared_dir = tmp("data");
  EXPECT_EQ(parse_spec(base(), ctx_).shares[1].source, tmp("data"));
}

TEST_F(SpecTest, ReadsEveryField) {
  json j = base();
  j["name"] = "builder";
  j["memory"] = 2048;
  j["cpus"] = 2;
  j["accel"] = "tcg";
  j["cmdline"] = "quiet";
  j["store"]["mountPoint"] = "/gnu/store";
  j["store"]["writable"] = "none";
  j["shares"] = json::array({{{"tag", "data"}, {"source", tmp("data")}, {"target", "/data"}, {"readOnly", true}, {"proto", "9p"}, {"msize", 1048576}}});
  j["command"] = json::array({"/bin/sh", "-c", "exit 3"});
  j["env"] = {{"FOO", "bar"}};
  j["timeout"] = 600;
  j["console"] = "quiet";
  j["network"] = "user";
  j["forwardPorts"] = json::array({{{"from", "host"}, {"proto", "tcp"}, {"host", {{"address", "127.0.0.1"}, {"port", 2222}}}, {"guest", {{"port", 22}}}}});
  j["qemu"] = {{"binary", "qemu-system-x86_64"}, {"extraArgs", {"-snapshot"}}};
  j["disks"] = json::array({{{"file", tmp("disk.qcow2")}, {"size", 64}}});
  j["emptyDisks"] = {16};
  j["graphics"] = true;
  j["resolution"] = {{"x", 1280}, {"y", 800}};
  j["usbTablet"] = false;
  j["diskInterface"] = "scsi";
  j["guestAgent"] = tmp("qga.sock");
  j["nixDb"] = tmp("data");
  Spec s = parse_spec(j, ctx_);
  EXPECT_EQ(s.resolution.x, 1280u);
  EXPECT_FALSE(s.usb_tablet);
  EXPECT_EQ(s.disk_interface, DiskInterface::kScsi);
  EXPECT_TRUE(s.guest_agent);
  EXPECT_EQ(s.guest_agent_socket, tmp("qga.sock"));
  EXPECT_EQ(s.accel, Accel::kTcg);
  EXPECT_EQ(s.store.writable, Writable::kNone);
  EXPECT_EQ(s.shares.size(), 3u);
  EXPECT_EQ(s.shares[0].proto, Proto::k9p);
  EXPECT_EQ(s.shares[0].cache, Cache::kAlways);  // read-only default
  EXPECT_EQ(s.command_argv.size(), 3u);
  EXPECT_EQ(s.forward_ports[0].guest.port, 22);
  EXPECT_EQ(s.disks[0].size_mib, 64u);
  // and --print-spec's JSON parses back to the same spec
  Spec again = parse_spec(to_json(s), ctx_);
  EXPECT_EQ(to_json(again), to_json(s));
}

TEST_F(SpecTest, StoreOverrideFromTheCommandLine) {
  ctx_.store_override = tmp("data");
  EXPECT_EQ(parse_spec(base(), ctx_).store.path, tmp("data"));
  ctx_.store_override = tmp("nope");
  EXPECT_EQ(error_of(base()), "spec.json: store (--store): \"" + tmp("nope") + "\" is not a directory");
}

TEST_F(SpecTest, UnknownFields) {
  json j = base();
  j["memroy"] = 512;
  EXPECT_EQ(error_of(j),
            "spec.json: memroy: unknown field (known here: accel, arch, bootLoader, cmdline, command, console, cpus, diskInterface, "
            "disks, efiVars, emptyDisks, env, firmware, forwardPorts, graphics, guestAgent, initrd, kernel, memory, modules, name, "
            "network, nixDb, qemu, resolution, rng, root, shares, store, system, systemMode, timeout, usbTablet, vlanHost, vlans)");
  j = base();
  j["shares"] = json::array({{{"tag", "d"}, {"sorce", tmp("data")}, {"target", "/d"}}});
  EXPECT_EQ(error_of(j), "spec.json: shares[0].sorce: unknown field (known here: cache, msize, proto, readOnly, source, tag, target, writeback)");
}

TEST_F(SpecTest, WrongTypes) {
  json j = base();
  j["memory"] = "lots";
  EXPECT_EQ(error_of(j), "spec.json: memory: expected a whole number, got the string \"lots\"");
  j = base();
  j["cpus"] = 0;
  EXPECT_EQ(error_of(j), "spec.json: cpus: 0 is out of range (1 to 256)");
  j = base();
  j["accel"] = "hvf";
  EXPECT_EQ(error_of(j), "spec.json: accel: \"hvf\" is not one of: auto, kvm, tcg");
  j = base();
  j["command"] = 42;
  EXPECT_EQ(error_of(j), "spec.json: command: expected a string or a list of strings, got the number 42");
  j = base();
  j["env"] = {{"X", 1}};
  EXPECT_EQ(error_of(j), "spec.json: env.X: expected a string, got the number 1");
  j = base();
  j["shares"] = json::array({json::array({"tag", "x"})});
  EXPECT_EQ(error_of(j), "spec.json: shares[0]: expected an object, got a list");
  j["shares"] = {{"tag", "x"}};
  EXPECT_EQ(error_of(j), "spec.json: shares: expected a list, got an object");
  j = base();
  j["shares"] = json::array({{{"tag", "d"}, {"source", tmp("data")}, {"target", "/d"}, {"readOnly", "yes"}}});
  EXPECT_EQ(error_of(j), "spec.json: shares[0].readOnly: expected true or false, got the string \"yes\"");
}

TEST_F(SpecTest, MissingKernel) {
  json j = base();
  j.erase("kernel");
  EXPECT_EQ(error_of(j), "spec.json: kernel: is required (scripts/setup fetches a default guest kernel)");
  j["kernel"] = "/boot/no-such-kernel";
  EXPECT_EQ(error_of(j), "spec.json: kernel: \"/boot/no-such-kernel\" does not exist");
}

TEST_F(SpecTest, ShareSourceMustExist) {
  json j = base();
  j["shares"] = json::array({{{"tag", "d"}, {"source", "/no/such/dir"}, {"target", "/d"}}});
  EXPECT_EQ(error_of(j), "spec.json: shares[0].source: \"/no/such/dir\" is not an existing directory");
}

TEST_F(SpecTest, WritebackIsForWritableVirtiofsShares) {
  json j = base();
  j["shares"] = json::array({{{"tag", "d"}, {"source", tmp("data")}, {"target", "/d"}, {"proto", "9p"}, {"writeback", true}}});
  EXPECT_EQ(error_of(j), "spec.json: shares[0].writeback: is for virtio-fs shares (FUSE's writeback cache); 9p clients have "
                         "their own cache= modes");
  j["shares"][0]["proto"] = "virtiofs";
  j["shares"][0]["readOnly"] = true;
  EXPECT_EQ(error_of(j), "spec.json: shares[0].writeback: a read-only share takes no writes");
  j["shares"][0]["readOnly"] = false;
  EXPECT_EQ(error_of(j), "(no error)");
}

TEST_F(SpecTest, DuplicateTags) {
  json j = base();
  j["shares"] = json::array({{{"tag", "d"}, {"source", tmp("data")}, {"target", "/d"}},
                             {{"tag", "d"}, {"source", tmp("data")}, {"target", "/e"}}});
  EXPECT_EQ(error_of(j), "spec.json: shares[1].tag: \"d\" is used by shares[0] too");
  j["shares"] = json::array({{{"tag", "store"}, {"source", tmp("data")}, {"target", "/d"}}});
  EXPECT_EQ(error_of(j), "spec.json: shares[0].tag: \"store\" is used by the store too");
}

TEST_F(SpecTest, NixDb) {
  json j = base();
  j["nixDb"] = tmp("data");
  EXPECT_EQ(parse_spec(j, ctx_).nix_db, tmp("data"));
  j["nixDb"] = tmp("nope");
  EXPECT_EQ(error_of(j), "spec.json: nixDb: \"" + tmp("nope") + "\" is not a directory");
  j["nixDb"] = 1;
  EXPECT_EQ(error_of(j), "spec.json: nixDb: expected true, false or a directory, got the number 1");
  j["nixDb"] = false;
  EXPECT_EQ(parse_spec(j, ctx_).nix_db, "");
  // true: the host's database, which must be there.
  j["nixDb"] = true;
  if (std::filesystem::is_directory(kNixDb))
    EXPECT_EQ(parse_spec(j, ctx_).nix_db, kNixDb);
  else
    EXPECT_EQ(error_of(j), std::string("spec.json: nixDb: true, but this host has no Nix database at ") + kNixDb +
                               " (give a directory, or false)");
  j["nixDb"] = false;
  j["shares"] = json::array({{{"tag", "nix-db"}, {"source", tmp("data")}, {"target", "/d"}}});
  EXPECT_EQ(error_of(j), "spec.json: shares[0].tag: \"nix-db\" is used by the Nix database (nixDb) too");
}

// store.closure: a list fsd can read, for fsd's share of the store, and
// one that holds the system.
TEST_F(SpecTest, AStoreClosureIsAListForFsdsShareThatHoldsTheSystem) {
  json j = base();
  write_file(tmp_.path() / "closure", "/nix/store/aaaa-x\n");
  j["store"]["closure"] = tmp("closure");
  EXPECT_EQ(parse_spec(j, ctx_).store.closure, tmp("closure"));
  j["store"]["closure"] = tmp("nope");
  EXPECT_EQ(error_of(j), "spec.json: store.closure: closure '" + tmp("nope") + "': no such file");
  write_file(tmp_.path() / "bad", "/nix/store/..\n");
  j["store"]["closure"] = tmp("bad");
  EXPECT_EQ(error_of(j), "spec.json: store.closure: " + tmp("bad") + ":1: '/nix/store/..' names no store entry");
  j["store"]["closure"] = tmp("closure");
  j["store"]["proto"] = "9p-qemu";
  EXPECT_EQ(error_of(j), "spec.json: store.closure: needs fsd's share of the store (\"proto\": \"virtiofs\" or \"9p\"); "
                         "QEMU's own 9p shows the whole directory");
  j["store"]["proto"] = "9p";
  j["store"]["image"] = "erofs";
  EXPECT_EQ(error_of(j), "spec.json: store.closure: an erofs image holds the whole store (mkfs.erofs takes no list of what to "
                         "leave out): use \"image\": \"squashfs\", or no image");
  j["store"]["image"] = "squashfs";
  EXPECT_EQ(error_of(j), "(no error)");
  j["store"].erase("image");
  j["nixDb"] = tmp("data");
  EXPECT_EQ(error_of(j), "spec.json: store.closure: the shared Nix database (nixDb) holds every path of the host's store "
                         "as valid, those the closure hides too; leave nixDb out");
  j.erase("nixDb");
  auto top = tmp("store/ssss-system");
  write_file(top + "/kernel", "a kernel");
  j.erase("kernel");
  j["system"] = top;
  EXPECT_EQ(error_of(j), "spec.json: store.closure: does not list the system's store path (ssss-system), so the guest "
                         "could not reach it");
  write_file(tmp_.path() / "closure", "/nix/store/aaaa-x\n/nix/store/ssss-system\n");
  EXPECT_EQ(error_of(j), "(no error)");
}

// store.registration: a registration, a closureInfo or a list, of paths
// in the store, for a Nix system with a writable store.
TEST_F(SpecTest, AStoreRegistrationIsForANixSystemAndNamesPathsInTheStore) {
  const std::string sys = "0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system", dep = "1jpg5v8rcf4d08rlpq51vnd1w800l64h-dep";
  json j = base();
  write_file(tmp("store/" + sys + "/kernel"), "a kernel");
  write_file(tmp("store/" + sys + "/init"), "#!/bin/sh\n");
  std::filesystem::create_directories(tmp("store/" + dep));
  std::string hash = "sha256:" + std::string(52, '0');
  std::string reg = "/nix/store/" + sys + "\n" + hash + "\n120\n\n1\n/nix/store/" + dep + "\n/nix/store/" + dep + "\n" + hash + "\n8\n\n0\n";
  write_file(tmp("info/registration"), reg);
  write_file(tmp("info/store-paths"), "/nix/store/" + sys + "\n/nix/store/" + dep + "\n");
  j["store"]["registration"] = tmp("info");

  EXPECT_EQ(error_of(j), "spec.json: store.registration: the guest system's Nix loads it: needs a \"system\" with sw/bin/nix-store");
  j["system"] = tmp("store/" + sys);
  EXPECT_EQ(error_of(j), "spec.json: store.registration: the system " + tmp("store/" + sys) + " has no sw/bin/nix-store to load it with");
  write_file(tmp("store/" + sys + "/sw/bin/nix-store"), "");
  // A closureInfo: its registration file.
  Spec s = parse_spec(j, ctx_);
  EXPECT_EQ(s.store.registration, tmp("info/registration"));
  EXPECT_FALSE(s.store.registration_is_list);
  // A list of store paths: vmlaunch registers them.
  j["store"]["registration"] = tmp("info/store-paths");
  s = parse_spec(j, ctx_);
  EXPECT_EQ(s.store.registration, tmp("info/store-paths"));
  EXPECT_TRUE(s.store.registration_is_list);
  // --registration overrides the field.
  ctx_.registration_override = tmp("info/registration");
  EXPECT_EQ(parse_spec(j, ctx_).store.registration, tmp("info/registration"));
  ctx_.registration_override = tmp("nope");
  EXPECT_EQ(error_of(j), "spec.json: store.registration (--registration): \"" + tmp("nope") + "\" does not exist");
  ctx_.registration_override.clear();

  j["store"]["registration"] = tmp("data");
  EXPECT_EQ(error_of(j), "spec.json: store.registration: \"" + tmp("data") + "\" is a directory without a registration file (a closureInfo's)");
  write_file(tmp("bad"), "/nix/store/" + sys + "\nsha256:nope\n1\n\n0\n");
  j["store"]["registration"] = tmp("bad");
  EXPECT_EQ(error_of(j), "spec.json: store.registration: " + tmp("bad") + ":2: \"sha256:nope\" is not a NAR hash (sha256: and 52 base32 or 64 hex digits)");
  write_file(tmp("list"), "/nix/store/" + sys + "\n/nix/store/aaaa-not-nix\n");
  j["store"]["registration"] = tmp("list");
  EXPECT_EQ(error_of(j), "spec.json: store.registration: " + tmp("list") + ": \"aaaa-not-nix\" is not a store path's name (HASH-NAME, as Nix makes them)");
  write_file(tmp("list"), "/nix/store/" + sys + "\n/nix/store/34r0bw4vkb6z3qlk089kaaaaaaaaaaaa-gone\n");
  EXPECT_EQ(error_of(j), "spec.json: store.registration: " + tmp("list") + ": 34r0bw4vkb6z3qlk089kaaaaaaaaaaaa-gone is not in the store (" + tmp("store") + ")");

  j["store"]["registration"] = tmp("info");
  write_file(tmp("closure"), "/nix/store/" + sys + "\n");
  j["store"]["closure"] = tmp("closure");
  EXPECT_EQ(error_of(j), "spec.json: store.registration: " + tmp("info/registration") + ": " + dep +
                         " is hidden by store.closure, so the guest could not reach it");
  j["store"].erase("closure");
  j["store"]["writable"] = "none";
  EXPECT_EQ(error_of(j), "spec.json: store.registration: Nix writes to the store it opens: needs a writable store (\"writable\": \"tmpfs\" or \"disk\")");
  j["store"].erase("writable");
  j["nixDb"] = tmp("data");
  EXPECT_EQ(error_of(j), "spec.json: store.registration: gives the guest a database of its own; leave nixDb out");
  j.erase("nixDb");
  EXPECT_EQ(error_of(j), "(no error)");
}

// arch: the QEMU binary follows it, a binary of another architecture is
// refused, and what the virt machine lacks is refused by name.
TEST_F(SpecTest, ArchPicksTheQemuAndRefusesWhatVirtLacks) {
  json j = base();
  EXPECT_EQ(parse_spec(j, ctx_).qemu_binary, "qemu-system-x86_64");
  j["arch"] = "aarch64";
  EXPECT_EQ(parse_spec(j, ctx_).qemu_binary, "qemu-system-aarch64");
  EXPECT_EQ(to_json(parse_spec(j, ctx_))["arch"], "aarch64");
  j["qemu"] = {{"binary", "/opt/qemu/bin/qemu-system-aarch64"}};
  EXPECT_EQ(parse_spec(j, ctx_).qemu_binary, "/opt/qemu/bin/qemu-system-aarch64");
  j.erase("arch");
  EXPECT_EQ(error_of(j), "spec.json: qemu.binary: \"/opt/qemu/bin/qemu-system-aarch64\" runs aarch64 guests, and \"arch\" is "
                         "x86_64 (give \"arch\": \"aarch64\", or leave qemu.binary out)");
  j["qemu"] = {{"binary", "kvm"}};  // a name that says no architecture is the user's to choose
  EXPECT_EQ(error_of(j), "(no error)");
  j.erase("qemu");
  j["arch"] = "riscv64";
  EXPECT_NE(error_of(j).find("spec.json: arch: "), std::string::npos) << error_of(j);
  j["arch"] = "aarch64";
  j["graphics"] = true;
  EXPECT_EQ(error_of(j), "spec.json: graphics: the aarch64 virt machine has no VGA; aarch64 guests have the serial console only");
  j.erase("graphics");
  j["diskInterface"] = "ide";
  EXPECT_EQ(error_of(j), "spec.json: diskInterface: the aarch64 virt machine has no IDE: use virtio or scsi");
  j.erase("diskInterface");
  j["firmware"] = "uefi";
  EXPECT_EQ(error_of(j), "spec.json: firmware: uefi is x86_64's here; an aarch64 guest boots its kernel directly");
}

TEST_F(SpecTest, TagTooLong) {
  json j = base();
  std::string tag(37, 't');
  j["shares"] = json::array({{{"tag", tag}, {"source", tmp("data")}, {"target", "/d"}}});
  EXPECT_EQ(error_of(j), "spec.json: shares[0].tag: \"" + tag + "\" is 37 bytes; virtio-fs allows at most 36");
  j["shares"][0]["tag"] = std::string(36, 't');
  EXPECT_EQ(error_of(j), "(no error)");
}

// Strings that name options or files elsewhere (a tag is a socket's file
// name, a device option and the guest's mount source; an address sits
// between hostfwd's separators; the store's mount point is in an overlay's
// options) are refused, naming the field, where they could say more.
TEST_F(SpecTest, StringsThatWouldSayMoreAreRefused) {
  for (std::string tag : {"a,b", "x=y", "../up", "sp ace", "$(id)", "new\nline", "q'uote", "."}) {
    json j = base();
    j["shares"] = json::array({{{"tag", tag}, {"source", tmp("data")}, {"target", "/d"}}});
    EXPECT_EQ(error_of(j), "spec.json: shares[0].tag: \"" + tag +
                               "\" may hold only letters, digits, '.', '_', '+' and '-' (it names a socket file, a device "
                               "option and the guest's mount source)");
  }
  for (std::string address : {"127.0.0.1,guestfwd=tcp:1.2.3.4:1-cmd:sh", "$(touch x)", "a b", "-x", "h:1"}) {
    json j = base();
    j["network"] = "user";
    j["forwardPorts"] = json::array({{{"from", "guest"}, {"host", {{"address", address}, {"port", 80}}},
                                      {"guest", {{"address", "10.0.2.100"}, {"port", 80}}}}});
    EXPECT_EQ(error_of(j), "spec.json: forwardPorts[0].host.address: \"" + address + "\" is not a host name or an IPv4 address");
  }
  json j = base();
  j["store"]["mountPoint"] = "/nix/store,upperdir=/x";
  EXPECT_EQ(error_of(j), "spec.json: store.mountPoint: \"/nix/store,upperdir=/x\" may not hold ',', ':' or '\\' (an overlay "
                         "mount's options name it)");
  j = base();
  j["shares"] = json::array({{{"tag", "ok-1.2_x+y"}, {"source", tmp("data")}, {"target", "/d"}}});
  EXPECT_EQ(error_of(j), "(no error)");
}

TEST_F(SpecTest, FileErrors) {
  EXPECT_THROW(load_spec(tmp("missing.json"), ctx_), SpecError);
  write_file(tmp_.path() / "bad.json", "{ \"memory\": ");
  try {
    load_spec(tmp("bad.json"), ctx_);
    FAIL();
  } catch (const SpecError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(tmp("bad.json") + ": not valid JSON", 0), 0u) << e.what();
  }
  write_file(tmp_.path() / "named.json", "{\"kernel\": 5}");
  try {
    load_spec(tmp("named.json"), ctx_);
    FAIL();
  } catch (const SpecError& e) {
    EXPECT_EQ(std::string(e.what()), tmp("named.json") + ": kernel: expected a string, got the number 5");
  }
}

}  // namespace
}  // namespace fsd::launcher

namespace fsd::launcher {
namespace {

TEST_F(SpecTest, DisksWithFileSystems) {
  json j = base();
  j["disks"] = json::array({{{"file", tmp("data.img")}, {"size", 64}, {"fsType", "ext4"}, {"mountPoint", "/data"},
                             {"label", "data"}, {"autoFormat", true}}});
  Spec s = parse_spec(j, ctx_);
  EXPECT_EQ(s.disks[0].fs_type, "ext4");
  EXPECT_EQ(s.disks[0].mount_point, "/data");
  EXPECT_TRUE(s.disks[0].auto_format);
  EXPECT_EQ(to_json(parse_spec(to_json(s), ctx_)), to_json(s));

  auto with = [&](json disk) {
    json k = base();
    k["disks"] = json::array({disk});
    return error_of(k);
  };
  EXPECT_EQ(with({{"file", tmp("d.img")}, {"size", 8}, {"mountPoint", "/data"}}), "spec.json: disks[0].mountPoint: needs an fsType");
  EXPECT_EQ(with({{"file", tmp("d.img")}, {"size", 8}, {"fsType", "ext4"}, {"mountPoint", "data"}}),
            "spec.json: disks[0].mountPoint: must be an absolute path in the guest");
  EXPECT_EQ(with({{"file", tmp("d.img")}, {"size", 8}, {"fsType", "ext4"}, {"mountPoint", "/data"}}),
            "spec.json: disks[0].file: \"" + tmp("d.img") + "\" does not exist, and a new disk is blank: set autoFormat to format it");
  EXPECT_EQ(with({{"file", tmp("d.img")}, {"size", 8}, {"autoFormat", true}}), "spec.json: disks[0].autoFormat: needs an fsType");
  EXPECT_EQ(with({{"file", tmp("d.img")}, {"size", 8}, {"fsType", "zfs"}, {"autoFormat", true}}),
            "spec.json: disks[0].autoFormat: vmlaunch cannot format zfs (it formats ext2, ext3, ext4, xfs, btrfs, vfat)");
  EXPECT_EQ(with({{"file", tmp("d.img")}, {"size", 8}, {"fsType", "ext4;rm"}}),
            "spec.json: disks[0].fsType: \"ext4;rm\" is not a file system type");
  json k = base();
  k["disks"] = json::array({{{"file", tmp("a.img")}, {"size", 8}, {"fsType", "ext4"}, {"mountPoint", "/d"}, {"autoFormat", true}},
                            {{"file", tmp("b.img")}, {"size", 8}, {"fsType", "ext4"}, {"mountPoint", "/d"}, {"autoFormat", true}}});
  EXPECT_EQ(error_of(k), "spec.json: disks[1].mountPoint: \"/d\" is where disks[0].mountPoint is mounted too");
  // A share's target and a disk's mount point are one namespace: the later would hide the earlier.
  k["disks"] = json::array({{{"file", tmp("a.img")}, {"size", 8}, {"fsType", "ext4"}, {"mountPoint", "/d/"}, {"autoFormat", true}}});
  k["shares"] = json::array({{{"tag", "d"}, {"source", tmp("data")}, {"target", "/d"}}});
  EXPECT_EQ(error_of(k), "spec.json: disks[0].mountPoint: \"/d/\" is where shares[0].target is mounted too");
  k["disks"] = json::array();
  k["shares"] = json::array({{{"tag", "d"}, {"source", tmp("data")}, {"target", "/nix/store"}}});
  EXPECT_EQ(error_of(k), "spec.json: shares[0].target: \"/nix/store\" is where store.mountPoint is mounted too");
}

TEST_F(SpecTest, StoreTransportAndWritableDisk) {
  json j = base();
  j["store"]["proto"] = "9p";
  j["store"]["msize"] = 1 << 20;
  j["store"]["writable"] = "disk";
  j["store"]["disk"] = {{"file", tmp("rw.img")}, {"size", 128}};
  Spec s = parse_spec(j, ctx_);
  EXPECT_EQ(s.store.proto, Proto::k9p);
  EXPECT_EQ(s.store.msize, 1u << 20);
  EXPECT_EQ(s.store.writable, Writable::kDisk);
  // The store's disk defaults: ext4, formatted when new.
  EXPECT_EQ(s.store.disk.fs_type, "ext4");
  EXPECT_TRUE(s.store.disk.auto_format);
  EXPECT_EQ(s.store.disk.label, "nix-rw-store");
  EXPECT_EQ(to_json(parse_spec(to_json(s), ctx_)), to_json(s));

  j["store"]["disk"] = {{"size", 128}};
  EXPECT_EQ(error_of(j), "spec.json: store.disk.file: is required");
  j["store"]["disk"] = {{"file", tmp("rw.img")}, {"size", 128}, {"mountPoint", "/x"}};
  EXPECT_EQ(error_of(j), "spec.json: store.disk.mountPoint: is the store's own (/nix/.rw-store)");
  j["store"]["writable"] = "tmpfs";
  j["store"]["disk"] = {{"file", tmp("rw.img")}, {"size", 128}};
  EXPECT_EQ(error_of(j), "spec.json: store.disk: needs \"writable\": \"disk\"");
  j["store"]["writable"] = "floppy";
  EXPECT_EQ(error_of(j), "spec.json: store.writable: \"floppy\" is not one of: tmpfs, none, disk");
}

}  // namespace
}  // namespace fsd::launcher

namespace fsd::launcher {
namespace {

TEST_F(SpecTest, Vlans) {
  json j = base();
  j["vlans"] = {1, 2};
  EXPECT_EQ(error_of(j), "spec.json: vlanHost: is required with vlans (1 to 254: this guest is 192.168.VLAN.vlanHost)");
  j["vlanHost"] = 3;
  Spec s = parse_spec(j, ctx_);
  EXPECT_EQ(s.vlans, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(s.vlan_host, 3u);
  j["vlanHost"] = 255;
  EXPECT_EQ(error_of(j), "spec.json: vlanHost: 255 is out of range (0 to 254)");
  j["vlanHost"] = 3;
  j["vlans"] = {1, 1};
  EXPECT_EQ(error_of(j), "spec.json: vlans[1]: 1 is listed twice");
  j["vlans"] = {0};
  EXPECT_EQ(error_of(j), "spec.json: vlans[0]: 0 is out of range (1 to 255)");
}

}  // namespace
}  // namespace fsd::launcher

namespace fsd::launcher {
namespace {

TEST_F(SpecTest, SystemMustBeInTheStoreAndGivesTheKernel) {
  auto top = tmp("store/sssssssssssssssssssssssssssssssss-system");
  std::filesystem::create_directories(top + "/kernel-modules/lib/modules/6.1.0-test");
  std::filesystem::create_directories(top + "/sw/bin");
  fsd::testing::write_file(top + "/kernel", "a kernel");
  fsd::testing::write_file(top + "/sw/bin/bash", "");
  json j = base();
  j.erase("kernel");
  j["system"] = top;
  Spec s = parse_spec(j, ctx_);
  EXPECT_EQ(s.kernel, top + "/kernel");
  EXPECT_EQ(s.modules, top + "/kernel-modules/lib/modules/6.1.0-test");
  EXPECT_EQ(s.system.in_guest, "/nix/store/sssssssssssssssssssssssssssssssss-system");
  EXPECT_TRUE(s.system.has_bash);
  EXPECT_FALSE(s.system.has_init);
  j["systemMode"] = "boot";
  EXPECT_EQ(error_of(j), "spec.json: systemMode: boot needs the system's init, and \"" + top + "\" has none");
  j.erase("systemMode");
  j["system"] = tmp("xchg");  // a directory outside the store
  EXPECT_EQ(error_of(j), "spec.json: system: \"" + tmp("xchg") + "\" is not inside the store (" +
                             std::filesystem::canonical(tmp("store")).string() + "), where the guest would find it");
  j.erase("system");
  j["systemMode"] = "exec";
  EXPECT_EQ(error_of(j), "spec.json: systemMode: needs a system");
  j.erase("systemMode");
  // A root disk, from the spec or $NIX_DISK_IMAGE: ext4, 1 GiB, formatted when new.
  j["system"] = top;
  j["root"] = {{"file", tmp("root.img")}};
  s = parse_spec(j, ctx_);
  EXPECT_EQ(s.root.fs_type, "ext4");
  EXPECT_EQ(s.root.size_mib, 1024u);
  EXPECT_TRUE(s.root.auto_format);
  EXPECT_EQ(to_json(parse_spec(to_json(s), ctx_)), to_json(s));
  j.erase("root");
  ctx_.root_disk_override = tmp("nix-disk.img");
  EXPECT_EQ(parse_spec(j, ctx_).root.file, tmp("nix-disk.img"));
  j.erase("system");
  j["kernel"] = tmp("vmlinuz");
  EXPECT_EQ(error_of(j), "spec.json: root (NIX_DISK_IMAGE): a root disk holds a system's root (\"system\"): without one, the command's tools are the initramfs's, which are not on the disk");
  ctx_.root_disk_override.clear();
}

}  // namespace
}  // namespace fsd::launcher
