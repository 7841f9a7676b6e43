// vmlaunch's plan: what a spec turns into on the fsd and QEMU command lines
// and in the guest's plan. (The guest tests run these plans for real.)
#include <gtest/gtest.h>

#include <algorithm>

#include "launcher/plan.h"
#include "tests/support/test_support.h"

namespace fsd::launcher {
namespace {

using nlohmann::json;

class PlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fsd::testing::write_file(tmp_.path() / "vmlinuz", "not really a kernel");
    for (const char* d : {"store", "data", "xchg", "db"}) std::filesystem::create_directories(tmp_.path() / d);
    ctx_.xchg_dir = tmp("xchg");
    in_.fsd_binary = "fsd";
    in_.run_dir = "/run/vm";
    in_.initrd = "/run/initrd";
    in_.qmp_socket = "/run/vm/qmp.sock";
    in_.relay_binary = "/bin/vmlaunch";
  }
  Plan plan(const json& extra) {
    json j{{"kernel", tmp("vmlinuz")}, {"store", {{"path", tmp("store")}}}};
    for (const auto& [k, v] : extra.items()) j[k] = v;
    return make_plan(parse_spec(j, ctx_), in_);
  }
  static std::string joined(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& w : v) s += w + " ";
    return s;
  }
  static bool has(const std::vector<std::string>& v, const std::string& w) { return std::find(v.begin(), v.end(), w) != v.end(); }
  std::string tmp(const std::string& rel) const { return (tmp_.path() / rel).string(); }

  fsd::testing::TempDir tmp_;
  SpecContext ctx_;
  PlanInputs in_;
};

TEST_F(PlanTest, FsdNinePSharesGoOverVsockToFsd) {
  json share{{"tag", "data"}, {"source", tmp("data")}, {"target", "/data"}, {"proto", "9p"}, {"msize", 1048576}, {"cache", "always"}};
  Plan p = plan({{"shares", json::array({share})}});
  std::string fsd = joined(p.fsd_argv), qemu = joined(p.qemu_argv);
  EXPECT_NE(fsd.find("--export data=" + tmp("data") + ",cache=always"), std::string::npos) << fsd;
  EXPECT_NE(fsd.find("--vsock-socket /run/vm/vsock.sock,cid=3,port=564"), std::string::npos) << fsd;
  EXPECT_EQ(fsd.find("--virtiofs-socket data="), std::string::npos) << fsd;
  EXPECT_EQ(fsd.find("--listen"), std::string::npos) << fsd;
  EXPECT_NE(qemu.find("-chardev socket,id=vsock0,path=/run/vm/vsock.sock -device vhost-user-vsock-pci,chardev=vsock0"),
            std::string::npos) << qemu;
  // No "network": no network at all.
  EXPECT_EQ(qemu.find("-netdev"), std::string::npos) << qemu;
  std::string mounts = p.guest["mounts"].dump();
  EXPECT_NE(mounts.find(R"("options":"aname=data,version=9p2000.L,msize=1048576,cache=loose")"), std::string::npos) << mounts;
  EXPECT_NE(mounts.find(R"("vsock_port":564)"), std::string::npos) << mounts;
  EXPECT_TRUE(has(p.modules, "9pnet_fd") && has(p.modules, "vmw_vsock_virtio_transport")) << joined(p.modules);
  EXPECT_FALSE(has(p.modules, "virtio_net")) << joined(p.modules);
  EXPECT_EQ(p.guest["setup"].dump().find("10.0.2.15/24"), std::string::npos);
}

TEST_F(PlanTest, AWritebackShareIsAWritebackExport) {
  json share{{"tag", "data"}, {"source", tmp("data")}, {"target", "/data"}, {"writeback", true}};
  Plan p = plan({{"shares", json::array({share})}});
  std::string fsd = joined(p.fsd_argv);
  EXPECT_NE(fsd.find("--export data=" + tmp("data") + ",cache=auto,writeback --virtiofs-socket data="), std::string::npos) << fsd;
  EXPECT_NE(fsd.find("--export xchg=" + tmp("xchg") + ",cache=never --virtiofs-socket"), std::string::npos) << fsd;
}

TEST_F(PlanTest, AStoreClosureIsTheStoreExportsClosureView) {
  fsd::testing::write_file(tmp_.path() / "odd,name", "/nix/store/aaaa-x\n");
  for (const char* proto : {"virtiofs", "9p"}) {
    Plan p = plan({{"store", {{"path", tmp("store")}, {"proto", proto}, {"closure", tmp("odd,name")}}}});
    std::string fsd = joined(p.fsd_argv);
    EXPECT_NE(fsd.find("--export store=" + tmp("store") + ",ro,cache=always,closure=" + tmp("odd,,name") + " "),
              std::string::npos) << fsd;
    EXPECT_EQ(fsd.find("xchg,closure"), std::string::npos) << fsd;
  }
}

TEST_F(PlanTest, GuestToHostForwardsRunARelayPerConnection) {
  json f{{"from", "guest"}, {"host", {{"address", "127.0.0.1"}, {"port", 8080}}}, {"guest", {{"address", "10.0.2.100"}, {"port", 80}}}};
  Plan p = plan({{"network", "user"}, {"forwardPorts", json::array({f})}});
  EXPECT_TRUE(has(p.qemu_argv, "user,id=n0,guestfwd=tcp:10.0.2.100:80-cmd:'/bin/vmlaunch' --relay-to '127.0.0.1:8080'"))
      << joined(p.qemu_argv);
}

// Spec strings are data: a comma in a path cannot add a QEMU option or an
// export option, and no spec string is a shell's (before, a share source
// with a comma added -virtfs options: a guest read the host's /etc through
// "path=/").
TEST_F(PlanTest, SpecStringsCannotAddOptions) {
  std::string odd = tmp("a,path=,readonly=off:b $(touch x) 'q\"\n");
  std::filesystem::create_directories(odd);
  json fsd_share{{"tag", "odd"}, {"source", odd}, {"target", "/odd"}, {"readOnly", true}};
  json qemu_share{{"tag", "q9"}, {"source", odd}, {"target", "/q9"}, {"proto", "9p-qemu"}, {"readOnly", true}};
  in_.relay_binary = "/opt/it's here/vmlaunch";
  json f{{"from", "guest"}, {"host", {{"address", "127.0.0.1"}, {"port", 8080}}}, {"guest", {{"address", "10.0.2.100"}, {"port", 80}}}};
  Plan p = plan({{"name", "vm,debug-threads=on"}, {"network", "user"}, {"shares", json::array({fsd_share, qemu_share})},
                 {"forwardPorts", json::array({f})}});
  std::string doubled = tmp("a,,path=,,readonly=off:b $(touch x) 'q\"\n");
  EXPECT_TRUE(has(p.fsd_argv, "odd=" + doubled + ",ro,cache=always")) << joined(p.fsd_argv);
  EXPECT_TRUE(has(p.qemu_argv, "local,path=" + doubled + ",security_model=none,mount_tag=q9,readonly=on"))
      << joined(p.qemu_argv);
  EXPECT_TRUE(has(p.qemu_argv, "guest=vm,,debug-threads=on")) << joined(p.qemu_argv);
  EXPECT_TRUE(has(p.qemu_argv, "user,id=n0,guestfwd=tcp:10.0.2.100:80-cmd:'/opt/it'\\''s here/vmlaunch' --relay-to "
                               "'127.0.0.1:8080'"))
      << joined(p.qemu_argv);
}

// QEMU_NET_OPTS are options of the user network's -netdev, as qemu-vm.nix
// appends them (a hostfwd, say), not QEMU arguments of their own; without
// a user network there is nothing to append them to.
TEST_F(PlanTest, TheDisplaysSizeAndATabletComeWithGraphics) {
  std::string text = joined(plan({{"graphics", true}, {"resolution", {{"x", 1920}, {"y", 1080}}}}).qemu_argv);
  EXPECT_NE(text.find("-device VGA,edid=on,xres=1920,yres=1080 "), std::string::npos) << text;
  EXPECT_NE(text.find("-device qemu-xhci,id=usb0 -device usb-tablet,bus=usb0.0"), std::string::npos) << text;
  text = joined(plan({{"graphics", true}, {"usbTablet", false}}).qemu_argv);
  EXPECT_NE(text.find("-device VGA "), std::string::npos) << text;
  EXPECT_EQ(text.find("usb-tablet"), std::string::npos) << text;
  text = joined(plan(json::object()).qemu_argv);
  EXPECT_EQ(text.find("usb-tablet"), std::string::npos) << text;  // no display, no tablet
  try {
    plan({{"resolution", {{"x", 1920}, {"y", 1080}}}});
    ADD_FAILURE() << "a resolution without graphics was taken";
  } catch (const SpecError& e) {
    EXPECT_STREQ(e.what(), "spec.json: resolution: is the display's: needs \"graphics\": true");
  }
  try {
    plan({{"graphics", true}, {"resolution", {{"x", 100}, {"y", 1080}}}});
    ADD_FAILURE() << "a 100-pixel-wide display was taken";
  } catch (const SpecError& e) {
    EXPECT_STREQ(e.what(), "spec.json: resolution.x: 100 is out of range (320 to 16384)");
  }
}

// firmware uefi: OVMF's code read-only and the VM's own variables; with
// console: serial shows the kernel's log; quiet and stage1 silence it,
// and stage1 (vm-exec's --initrd-console) has the init tell each step.
TEST_F(PlanTest, TheConsoleModesQuietTheKernelAndStage1HasTheInitTellItsSteps) {
  auto append = [](const Plan& p) { return *(std::find(p.qemu_argv.begin(), p.qemu_argv.end(), "-append") + 1); };
  Plan serial = plan({{"console", "serial"}}), quiet = plan({{"console", "quiet"}}), stage1 = plan({{"console", "stage1"}});
  EXPECT_EQ(append(serial), "console=ttyS0 panic=-1");
  EXPECT_EQ(append(quiet), "console=ttyS0 panic=-1 quiet loglevel=1");
  EXPECT_EQ(append(stage1), "console=ttyS0 panic=-1 quiet loglevel=1");
  EXPECT_FALSE(serial.guest.contains("narrate"));
  EXPECT_FALSE(quiet.guest.contains("narrate"));
  EXPECT_EQ(stage1.guest["narrate"], true);
  EXPECT_THROW(plan({{"console", "loud"}}), SpecError);
}

// aarch64: QEMU's virt machine with -cpu max (host under KVM), the console
// on its PL011, the status on a virtio console (virt has one UART), and the
// power button a GPIO key.
TEST_F(PlanTest, AnAarch64GuestGetsTheVirtMachine) {
  in_.status_file = "/run/vm/status";
  Plan p = plan({{"arch", "aarch64"}, {"command", "true"}});
  std::string argv = joined(p.qemu_argv);
  EXPECT_EQ(p.qemu_argv[0], "qemu-system-aarch64");
  EXPECT_NE(argv.find(" -machine virt "), std::string::npos) << argv;
  EXPECT_NE(argv.find(" -cpu max "), std::string::npos) << argv;
  EXPECT_EQ(argv.find("q35"), std::string::npos) << argv;
  EXPECT_NE(argv.find("-append console=ttyAMA0 panic=-1 "), std::string::npos) << argv;
  EXPECT_EQ(argv.find("ttyS"), std::string::npos) << argv;
  EXPECT_NE(argv.find("-device virtio-serial-pci,id=vstatus -chardev file,id=status,path=/run/vm/status -device "
                      "virtconsole,bus=vstatus.0,chardev=status"),
            std::string::npos)
      << argv;
  EXPECT_EQ(argv.find("-serial file:"), std::string::npos) << argv;
  EXPECT_EQ(p.guest["status_file"], kStatusPortAarch64);
  for (const char* m : {"gpio_keys", "evdev", "virtio_console"}) EXPECT_TRUE(has(p.modules, m)) << m;
  EXPECT_FALSE(has(p.modules, "button"));
  in_.accel = Accel::kKvm;
  EXPECT_NE(joined(plan({{"arch", "aarch64"}}).qemu_argv).find(" -cpu host "), std::string::npos);
  // x86_64 as before: q35, ttyS0, the status on the second UART.
  in_.accel = Accel::kTcg;
  argv = joined(plan({{"command", "true"}}).qemu_argv);
  EXPECT_TRUE(argv.starts_with("qemu-system-x86_64 ")) << argv;
  EXPECT_NE(argv.find(" -machine q35 "), std::string::npos) << argv;
  EXPECT_EQ(argv.find("-cpu"), std::string::npos) << argv;
  EXPECT_NE(argv.find("-serial file:/run/vm/status"), std::string::npos) << argv;
}

// bootLoader the first disk boots, without -kernel, -initrd, -append or
// the status port (there is no vmlaunch init to report one).
TEST_F(PlanTest, UefiFirmwareAndBootingTheDisksBootloader) {
  in_.ovmf_code = "/ovmf/CODE.fd";
  Plan p = plan({{"firmware", "uefi"}, {"efiVars", tmp("data/vm,vars.fd")}});
  std::string text = joined(p.qemu_argv);
  EXPECT_NE(text.find("-drive if=pflash,format=raw,unit=0,readonly=on,file=/ovmf/CODE.fd -drive if=pflash,format=raw,unit=1,file=" +
                      tmp("data/vm,,vars.fd")),
            std::string::npos) << text;
  EXPECT_NE(text.find("-kernel "), std::string::npos) << text;  // direct kernel boot works through OVMF too
  std::filesystem::create_directories(tmp("img"));
  fsd::testing::write_file(tmp("img/esp.img"), "x");
  in_.disks = {{tmp("img/esp.img"), "raw"}};
  in_.status_file = "/run/vm/status";
  json j{{"store", {{"path", tmp("store")}}}, {"firmware", "uefi"}, {"efiVars", tmp("data/vars.fd")}, {"bootLoader", true},
         {"disks", json::array({{{"file", tmp("img/esp.img")}}})}};
  p = make_plan(parse_spec(j, ctx_), in_);
  text = joined(p.qemu_argv);
  for (const char* absent : {"-kernel", "-initrd", "-append", "file:/run/vm/status"})
    EXPECT_EQ(text.find(absent), std::string::npos) << absent << ": " << text;
  EXPECT_NE(text.find("file=" + tmp("img/esp.img") + ",if=virtio"), std::string::npos) << text;
  auto error_of = [&](json spec_json) {
    try {
      make_plan(parse_spec(spec_json, ctx_), in_);
    } catch (const SpecError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  // qemu-vm.nix's useBootLoader boots the root disk: no system needed.
  json root = j;
  root.erase("disks");
  root["root"] = {{"file", tmp("img/esp.img")}};
  EXPECT_EQ(error_of(root), "(no error)");
  json bad = j;
  bad["command"] = "true";
  EXPECT_EQ(error_of(bad), "spec.json: bootLoader: the disk's bootloader boots what it holds; a command needs vmlaunch's own kernel boot");
  bad = j;
  bad["kernel"] = tmp("vmlinuz");
  EXPECT_EQ(error_of(bad), "spec.json: bootLoader: the disk's bootloader loads its own kernel; leave \"kernel\" out");
  bad = j;
  bad.erase("disks");
  EXPECT_EQ(error_of(bad), "spec.json: bootLoader: needs a disk to boot from (\"root\" or \"disks\")");
  bad = j;
  bad["firmware"] = "bios";
  EXPECT_EQ(error_of(bad), "spec.json: efiVars: is UEFI's: needs \"firmware\": \"uefi\"");
  bad["firmware"] = "coreboot";
  EXPECT_NE(error_of(bad).find("spec.json: firmware: "), std::string::npos) << error_of(bad);
  bad = j;
  bad["efiVars"] = tmp("nope/vars.fd");
  EXPECT_EQ(error_of(bad), "spec.json: efiVars: \"" + tmp("nope/vars.fd") + "\": its directory does not exist");
}

TEST_F(PlanTest, AGuestAgentGetsAChannelAndASocket) {
  Plan p = plan({{"guestAgent", true}});
  std::string text = joined(p.qemu_argv);
  EXPECT_NE(text.find("-device virtio-serial-pci,id=vser0 -chardev socket,id=qga0,path=/run/vm/qga.sock,server=on,wait=off "
                      "-device virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"),
            std::string::npos) << text;
  EXPECT_EQ(p.guest_agent_socket, "/run/vm/qga.sock");
  EXPECT_TRUE(has(p.modules, "virtio_console")) << joined(p.modules);
  p = plan({{"guestAgent", tmp("qga,sock")}});
  EXPECT_NE(joined(p.qemu_argv).find("path=" + tmp("qga,,sock") + ",server=on"), std::string::npos) << joined(p.qemu_argv);
  EXPECT_EQ(p.guest_agent_socket, tmp("qga,sock"));
  p = plan(json::object());
  EXPECT_EQ(joined(p.qemu_argv).find("qga"), std::string::npos);
  EXPECT_FALSE(has(p.modules, "virtio_console"));
  using Case = std::pair<json, std::string>;
  for (const auto& [value, error] : {Case{"relative.sock", "\"relative.sock\" is not an absolute path (the guest agent's socket)"},
                                     Case{tmp("nope/qga.sock"), "\"" + tmp("nope/qga.sock") + "\": its directory does not exist"},
                                     Case{tmp("data"), "\"" + tmp("data") + "\" exists and is not a socket (QEMU would replace it)"},
                                     Case{3, "expected true, false or the socket's path, got the number 3"}}) {
    try {
      plan({{"guestAgent", value}});
      ADD_FAILURE() << value.dump() << " was taken";
    } catch (const SpecError& e) {
      EXPECT_EQ(std::string(e.what()), "spec.json: guestAgent: " + error);
    }
  }
}

TEST_F(PlanTest, QemuNetOptsJoinTheUserNetdev) {
  in_.net_opts = "hostfwd=tcp::2222-:22";
  Plan p = plan({{"network", "user"}});
  auto netdev = std::find(p.qemu_argv.begin(), p.qemu_argv.end(), "-netdev");
  ASSERT_NE(netdev, p.qemu_argv.end());
  EXPECT_TRUE(netdev[1].starts_with("user,id=n0")) << netdev[1];
  EXPECT_TRUE(netdev[1].ends_with(",hostfwd=tcp::2222-:22")) << netdev[1];
  EXPECT_FALSE(has(p.qemu_argv, "hostfwd=tcp::2222-:22")) << joined(p.qemu_argv);
  EXPECT_THROW(plan({}), SpecError);
}

TEST_F(PlanTest, GraphicsAddsADisplayAndKeepsTheSerialConsole) {
  std::string text = joined(plan(json::object()).qemu_argv);
  EXPECT_NE(text.find("-display none"), std::string::npos);
  EXPECT_EQ(text.find("-device VGA"), std::string::npos);
  text = joined(plan({{"graphics", true}}).qemu_argv);
  EXPECT_NE(text.find("-device VGA"), std::string::npos) << text;
  EXPECT_EQ(text.find("-display none"), std::string::npos) << text;
  EXPECT_NE(text.find("console=tty0 console=ttyS0"), std::string::npos) << text;  // the last is /dev/console
}

TEST_F(PlanTest, NixDbIsAReadOnlyShareUnderATmpfsOverlay) {
  Plan p = plan({{"nixDb", tmp("db")}});
  EXPECT_NE(joined(p.fsd_argv).find("--export nix-db=" + tmp("db") + ",ro"), std::string::npos);
  std::string mounts = p.guest["mounts"].dump();
  EXPECT_NE(mounts.find(R"("target":"/nix/.ro-db")"), std::string::npos) << mounts;
  EXPECT_NE(mounts.find(R"("options":"lowerdir=/nix/.ro-db,upperdir=/nix/.rw-db/upper,workdir=/nix/.rw-db/work")"), std::string::npos)
      << mounts;
  EXPECT_NE(mounts.find(R"("target":"/nix/var/nix/db")"), std::string::npos) << mounts;
}

TEST_F(PlanTest, MonitorAndPowerButtonForGracefulStop) {
  Plan p = plan(json::object());
  EXPECT_TRUE(has(p.qemu_argv, "unix:/run/vm/qmp.sock,server=on,wait=off"));
  EXPECT_TRUE(has(p.modules, "button") && has(p.modules, "evdev"));
}

// Under TCG QEMU's threads relay every notification, so fsd must not spin
// on the CPU they need; with KVM it polls (its default).
TEST_F(PlanTest, FsdPollsOnlyWhenTheGuestRunsOnKvm) {
  in_.accel = Accel::kTcg;
  EXPECT_NE(joined(plan(json::object()).fsd_argv).find("--poll-us 0"), std::string::npos);
  in_.accel = Accel::kKvm;
  EXPECT_EQ(joined(plan(json::object()).fsd_argv).find("--poll-us"), std::string::npos);
}

}  // namespace
}  // namespace fsd::launcher

namespace fsd::launcher {
namespace {

// The status comes back on a serial port of its own, whatever the shares
// are (a spec's own xchg used to lose it).
TEST_F(PlanTest, TheStatusHasASerialPortOfItsOwn) {
  in_.status_file = "/run/vm/status";
  Plan p = plan({{"shares", json::array({{{"tag", "xchg"}, {"source", tmp("data")}, {"target", "/x"}, {"readOnly", true}}})}});
  std::string q = joined(p.qemu_argv);
  EXPECT_NE(q.find("-serial stdio -serial file:/run/vm/status "), std::string::npos) << q;  // stdio is ttyS0, this ttyS1
  EXPECT_EQ(p.guest.value("status_file", ""), kStatusPort);
  in_.status_file.clear();
  p = plan(json::object());
  EXPECT_EQ(joined(p.qemu_argv).find("file:"), std::string::npos);
  EXPECT_FALSE(p.guest.contains("status_file"));
}

}  // namespace
}  // namespace fsd::launcher

namespace fsd::launcher {
namespace {

// A disk with a file system is mounted from its /dev/vdX; its file
// system's module (by the kernel's fs-TYPE alias) is loaded first.
TEST_F(PlanTest, DisksAreMountedFromTheirDevices) {
  std::filesystem::create_directories(tmp("img"));
  for (const char* f : {"a.qcow2", "b.img"}) fsd::testing::write_file(tmp("img/") + f, "x");
  in_.disks = {{tmp("img/a.qcow2"), "qcow2"}, {tmp("img/b.img"), "raw"}, {"/run/vm/empty-0.qcow2", "qcow2"},
               {tmp("img/rw.img"), "raw"}};
  Plan p = plan({{"disks", json::array({{{"file", tmp("img/a.qcow2")}},
                                        {{"file", tmp("img/b.img")}, {"fsType", "xfs"}, {"mountPoint", "/data"}}})},
                 {"emptyDisks", {8}},
                 {"store", {{"path", tmp("store")}, {"writable", "disk"}, {"disk", {{"file", tmp("img/rw.img")}, {"size", 64}}}}}});
  std::string mounts = p.guest["mounts"].dump();
  EXPECT_NE(mounts.find(R"({"flags":[],"fstype":"xfs","source":"/dev/vdb","target":"/data"})"), std::string::npos) << mounts;
  // The store's upper on the fourth disk, after the empty one.
  EXPECT_NE(mounts.find(R"({"flags":[],"fstype":"ext4","source":"/dev/vdd","target":"/nix/.rw-store"})"), std::string::npos)
      << mounts;
  EXPECT_EQ(mounts.find("tmpfs\",\"source\":\"tmpfs\",\"target\":\"/nix/.rw-store"), std::string::npos) << mounts;
  EXPECT_TRUE(has(p.modules, "fs-xfs") && has(p.modules, "fs-ext4") && has(p.modules, "virtio_blk"));
  std::string text = joined(p.mount_plan);
  EXPECT_NE(text.find("/nix/store (writable, kept on the disk)"), std::string::npos) << text;
}

// diskInterface: the same disks on virtio-scsi or IDE (q35's AHCI), each
// with a WWN by which the guest finds it, with their drivers loaded.
TEST_F(PlanTest, DisksCanBeScsiOrIde) {
  std::filesystem::create_directories(tmp("img"));
  for (const char* f : {"a.qcow2", "b.img"}) fsd::testing::write_file(tmp("img/") + f, "x");
  in_.disks = {{tmp("img/a.qcow2"), "qcow2"}, {tmp("img/b.img"), "raw"}};
  json disks = json::array({{{"file", tmp("img/a.qcow2")}}, {{"file", tmp("img/b.img")}, {"fsType", "xfs"}, {"mountPoint", "/data"}}});
  Plan p = plan({{"disks", disks}, {"diskInterface", "scsi"}});
  std::string text = joined(p.qemu_argv);
  EXPECT_NE(text.find("-device virtio-scsi-pci,id=scsi0 -drive file=" + tmp("img/a.qcow2") +
                      ",if=none,id=disk0,format=qcow2 -device scsi-hd,drive=disk0,bus=scsi0.0,channel=0,scsi-id=0,lun=0,"
                      "wwn=0x5f5d000000000001 -drive file=" + tmp("img/b.img") +
                      ",if=none,id=disk1,format=raw -device scsi-hd,drive=disk1,bus=scsi0.0,channel=0,scsi-id=1,lun=0,"
                      "wwn=0x5f5d000000000002"),
            std::string::npos) << text;
  EXPECT_EQ(text.find("if=virtio"), std::string::npos) << text;
  EXPECT_NE(p.guest["mounts"].dump().find(R"("source":"wwn:naa.5f5d000000000002","target":"/data")"), std::string::npos)
      << p.guest["mounts"].dump();
  EXPECT_TRUE(has(p.modules, "virtio_scsi") && has(p.modules, "sd_mod") && !has(p.modules, "virtio_blk")) << joined(p.modules);
  p = plan({{"disks", disks}, {"diskInterface", "ide"}});
  text = joined(p.qemu_argv);
  EXPECT_NE(text.find("-device ide-hd,drive=disk0,bus=ide.0,wwn=0x5f5d000000000001 "), std::string::npos) << text;
  EXPECT_NE(text.find("-device ide-hd,drive=disk1,bus=ide.1,wwn=0x5f5d000000000002"), std::string::npos) << text;
  EXPECT_TRUE(has(p.modules, "ahci") && has(p.modules, "sd_mod")) << joined(p.modules);
  EXPECT_NE(p.guest["mounts"].dump().find(R"("source":"wwn:naa.5f5d000000000002","target":"/data")"), std::string::npos);
  // More disks than q35 has AHCI ports.
  json seven = json::array();
  in_.disks.clear();
  for (int i = 0; i < 7; i++) {
    std::string f = tmp("img/d" + std::to_string(i));
    fsd::testing::write_file(f, "x");
    seven.push_back({{"file", f}});
    in_.disks.push_back({f, "raw"});
  }
  try {
    plan({{"disks", seven}, {"diskInterface", "ide"}});
    ADD_FAILURE() << "seven IDE disks were taken";
  } catch (const SpecError& e) {
    EXPECT_STREQ(e.what(), "diskInterface: ide attaches at most 6 disks (q35's AHCI ports); this VM has 7 (the root, disks, "
                           "emptyDisks, store.disk and the store's image)");
  }
  EXPECT_THROW(plan({{"diskInterface", "sata"}}), SpecError);
  in_.disks = {{tmp("img/a.qcow2"), "qcow2", true}};
  try {
    plan({{"disks", json::array({{{"file", tmp("img/a.qcow2")}, {"readOnly", true}}})}, {"diskInterface", "ide"}});
    ADD_FAILURE() << "a read-only IDE disk was taken";
  } catch (const SpecError& e) {
    EXPECT_EQ(std::string(e.what()), "diskInterface: QEMU's IDE disks cannot be read-only, and " + tmp("img/a.qcow2") +
                                         " is (readOnly, or the store's image): use virtio or scsi");
  }
}

TEST_F(PlanTest, TheStoreCanGoOverNineP) {
  Plan p = plan({{"store", {{"path", tmp("store")}, {"proto", "9p"}, {"msize", 1048576}, {"writable", "none"}}}});
  std::string mounts = p.guest["mounts"].dump();
  EXPECT_NE(mounts.find(R"("options":"aname=store,version=9p2000.L,msize=1048576,cache=loose")"), std::string::npos)
      << mounts;
  EXPECT_NE(mounts.find(R"("vsock_port":564)"), std::string::npos) << mounts;
  EXPECT_NE(joined(p.fsd_argv).find("--export store=" + tmp("store") + ",ro,cache=always"), std::string::npos);
  EXPECT_EQ(joined(p.fsd_argv).find("--virtiofs-socket store="), std::string::npos);
  p = plan({{"store", {{"path", tmp("store")}, {"proto", "9p-qemu"}}}});
  EXPECT_NE(joined(p.qemu_argv).find("-virtfs local,path=" + tmp("store") + ",security_model=none,mount_tag=store,readonly=on"),
            std::string::npos);
  EXPECT_TRUE(has(p.modules, "9pnet_virtio"));
}

TEST_F(PlanTest, ARandomNumberGeneratorByDefault) {
  Plan p = plan(json::object());
  EXPECT_TRUE(has(p.qemu_argv, "virtio-rng-pci"));
  EXPECT_TRUE(has(p.modules, "virtio_rng"));
  p = plan({{"rng", false}});
  EXPECT_FALSE(has(p.qemu_argv, "virtio-rng-pci"));
}

}  // namespace
}  // namespace fsd::launcher

namespace fsd::launcher {
namespace {

// vlans: a NIC per vlan on the user's multicast group, numbered as
// qemu-vm.nix numbers them, configured by its MAC in the guest.
TEST_F(PlanTest, VlansJoinTheUsersMulticastGroups) {
  in_.uid = 1000;  // 0x03e8
  Plan p = plan({{"vlans", {1, 7}}, {"vlanHost", 2}});
  std::string q = joined(p.qemu_argv);
  EXPECT_NE(q.find("-netdev socket,id=vlan1,mcast=230.3.232.1:21000,localaddr=127.0.0.1 -device "
                   "virtio-net-pci,netdev=vlan1,mac=52:54:00:12:01:02"),
            std::string::npos)
      << q;
  EXPECT_NE(q.find("mcast=230.3.232.7:21000"), std::string::npos) << q;
  EXPECT_NE(q.find("mac=52:54:00:12:07:02"), std::string::npos) << q;
  std::string setup = p.guest["setup"].dump();
  EXPECT_NE(setup.find("= 52:54:00:12:07:02 ]"), std::string::npos) << setup;
  EXPECT_NE(setup.find("ip addr add 192.168.7.2/24"), std::string::npos) << setup;
  EXPECT_TRUE(has(p.modules, "virtio_net"));
  // Another user's vlan 1 is another group.
  EXPECT_NE(vlan_group(1000, 1), vlan_group(1001, 1));
  // Without vlans: no NIC at all.
  EXPECT_EQ(joined(plan(json::object()).qemu_argv).find("virtio-net-pci"), std::string::npos);
}

}  // namespace
}  // namespace fsd::launcher

namespace fsd::launcher {
namespace {

class SystemPlanTest : public PlanTest {
 protected:
  void SetUp() override {
    PlanTest::SetUp();
    top_ = tmp("store/sssssssssssssssssssssssssssssssss-system");
    for (const char* d : {"etc", "sw/bin", "kernel-modules/lib/modules/6.1.0-test"}) std::filesystem::create_directories(top_ + "/" + d);
    for (const char* f : {"init", "kernel", "sw/bin/bash", "sw/bin/sh", "sw/bin/env"}) fsd::testing::write_file(top_ + "/" + f, "");
  }
  std::string top_, in_guest_ = "/nix/store/sssssssssssssssssssssssssssssssss-system";
};

TEST_F(SystemPlanTest, ExecPutsTheCommandInTheSystemsContext) {
  Plan p = plan({{"system", top_}, {"command", "echo hi"}});
  const json& g = p.guest;
  EXPECT_EQ(g["command"], json({"/run/current-system/sw/bin/bash", "-c", "echo hi"}));
  EXPECT_EQ(g["env"]["PATH"], "/run/current-system/sw/bin");
  EXPECT_EQ(g["links"]["/run/current-system"], in_guest_);
  EXPECT_EQ(g["links"]["/lib/modules"], in_guest_ + "/kernel-modules/lib/modules");
  EXPECT_EQ(g["links"]["/bin/sh"], in_guest_ + "/sw/bin/sh");
  EXPECT_EQ(g["links"]["/usr/bin/env"], in_guest_ + "/sw/bin/env");
  EXPECT_NE(g["late_files"]["/etc/group"].get<std::string>().find("nixbld:x:30000:"), std::string::npos);
  EXPECT_NE(g["mounts"].dump().find("lowerdir=" + in_guest_ + "/etc,upperdir=/run/vmlaunch/etc/upper"), std::string::npos);
  EXPECT_FALSE(g.contains("switch_root"));
}

TEST_F(SystemPlanTest, BootRunsTheSystemsInitOnANewRoot) {
  Plan p = plan({{"system", top_}});
  const json& g = p.guest;
  EXPECT_EQ(g["switch_root"], "/sysroot");
  EXPECT_EQ(g["init"], in_guest_ + "/init");
  EXPECT_EQ(g["mounts"][0]["target"], "/sysroot");  // before anything is mounted
  EXPECT_NE(joined(p.qemu_argv).find("tag=nix-store"), std::string::npos);  // qemu-vm.nix's tag
  EXPECT_EQ(g["links"], json::object());
  EXPECT_THROW(plan({{"system", top_}, {"systemMode", "boot"}, {"command", "true"}}), SpecError);
  // On a root disk: the disk is the new root, mounted first.
  in_.disks = {{tmp("root.img"), "raw"}};
  p = plan({{"system", top_}, {"root", {{"file", tmp("root.img")}}}});
  EXPECT_EQ(p.guest["mounts"][0].dump(), R"({"flags":[],"fstype":"ext4","source":"/dev/vda","target":"/sysroot"})");
  EXPECT_EQ(p.guest["mounts"].dump().find(R"("fstype":"tmpfs","source":"tmpfs","target":"/sysroot")"), std::string::npos);
  // In exec mode too: the command runs on the disk, mounted first, and the
  // init goes on there (no init of the system's).
  p = plan({{"system", top_}, {"root", {{"file", tmp("root.img")}}}, {"command", "true"}});
  EXPECT_EQ(p.guest["mounts"][0].dump(), R"({"flags":[],"fstype":"ext4","source":"/dev/vda","target":"/sysroot"})");
  EXPECT_EQ(p.guest["switch_root"], "/sysroot");
  EXPECT_FALSE(p.guest.contains("init"));
  EXPECT_EQ(p.guest["command"], json({"/run/current-system/sw/bin/bash", "-c", "true"}));
  // The root disk is /dev/vda, as qemu-vm.nix puts it; the spec's disks follow.
  fsd::testing::write_file(tmp("data.img"), "x");
  in_.disks = {{tmp("root.img"), "raw"}, {tmp("data.img"), "raw"}};
  p = plan({{"system", top_}, {"root", {{"file", tmp("root.img")}}},
            {"disks", json::array({{{"file", tmp("data.img")}, {"fsType", "ext4"}, {"mountPoint", "/data"}}})}});
  std::string mounts = p.guest["mounts"].dump();
  EXPECT_EQ(p.guest["mounts"][0].dump(), R"({"flags":[],"fstype":"ext4","source":"/dev/vda","target":"/sysroot"})");
  EXPECT_NE(mounts.find(R"({"flags":[],"fstype":"ext4","source":"/dev/vdb","target":"/data"})"), std::string::npos) << mounts;
  std::string argv = joined(p.qemu_argv);
  EXPECT_LT(argv.find("root.img"), argv.find("data.img")) << argv;
}

// store.registration: the initramfs holds it and the system's own
// nix-store loads it, before the system's init or the command.
TEST_F(SystemPlanTest, TheSystemsNixStoreLoadsTheRegistration) {
  fsd::testing::write_file(top_ + "/sw/bin/nix-store", "");
  const std::string path = "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-x";
  std::filesystem::create_directories(tmp("store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-x"));
  fsd::testing::write_file(tmp("paths"), path + "\n");
  json store{{"path", tmp("store")}, {"registration", tmp("paths")}};
  for (bool boot : {true, false}) {
    json j{{"system", top_}, {"store", store}};
    if (!boot) j["command"] = "true";
    Plan p = plan(j);
    EXPECT_EQ(p.guest["registration"], kGuestRegistration);
    EXPECT_EQ(p.guest["nix_store"], in_guest_ + "/sw/bin/nix-store");
    std::string line = "then: " + in_guest_ + "/sw/bin/nix-store --load-db < a registration of the store paths " + tmp("paths") +
                       (boot ? ", before the system's init" : ", before the command");
    EXPECT_NE(std::find(p.mount_plan.begin(), p.mount_plan.end(), line), p.mount_plan.end()) << joined(p.mount_plan);
  }
  EXPECT_FALSE(plan({{"system", top_}}).guest.contains("registration"));
}

// Boot mode passes the system's kernel-params, then the spec's cmdline,
// then $QEMU_KERNEL_PARAMS, as qemu-vm.nix orders them; exec mode does not.
TEST_F(SystemPlanTest, BootPassesTheSystemsKernelParams) {
  fsd::testing::write_file(top_ + "/kernel-params", "quiet  loglevel=4\n\tmitigations=off\n");
  in_.extra_kernel_params = "from-env=1";
  auto append = [](const Plan& p) {
    auto it = std::find(p.qemu_argv.begin(), p.qemu_argv.end(), "-append");
    return it == p.qemu_argv.end() ? std::string() : *(it + 1);
  };
  std::string a = append(plan({{"system", top_}, {"cmdline", "from-spec=1"}}));
  EXPECT_NE(a.find(" quiet loglevel=4 mitigations=off from-spec=1 from-env=1"), std::string::npos) << a;
  a = append(plan({{"system", top_}, {"command", "true"}}));
  EXPECT_EQ(a.find("mitigations=off"), std::string::npos) << a;
  // A file that no kernel command line holds is refused, naming it.
  fsd::testing::write_file(top_ + "/kernel-params", std::string(3000, 'x'));
  try {
    plan({{"system", top_}});
    ADD_FAILURE() << "accepted 3000 bytes of kernel parameters";
  } catch (const SpecError& e) {
    EXPECT_NE(std::string(e.what()).find("kernel-params"), std::string::npos) << e.what();
  }
}

// A Guix system (its parameters and boot script): the kernel its parameters
// name (in the host's store), their kernel arguments after gnu.system and
// gnu.load as Guix's VM script passes them, its boot script as PID 1, the
// store at /gnu/store; exec mode and a store elsewhere are refused.
TEST_F(PlanTest, AGuixSystemBootsFromItsParameters) {
  std::string sys = tmp("store/gggg-system"), linux = tmp("store/kkkk-linux-libre-6.1.0");
  std::filesystem::create_directories(linux + "/lib/modules/6.1.0-gnu");
  fsd::testing::write_file(linux + "/bzImage", "a kernel");
  fsd::testing::write_file(sys + "/boot", "#!/gnu/store/gggg-guile/bin/guile\n");
  fsd::testing::write_file(sys + "/parameters", R"((boot-parameters (version 0) (label "GNU")
    (root-device "my-root") (kernel "/gnu/store/kkkk-linux-libre-6.1.0/bzImage")
    (kernel-arguments ("quiet" "loglevel=3")) (initrd "/gnu/store/iiii-raw-initrd/initrd.cpio.gz")
    (store (device #f) (mount-point "/gnu/store") (directory-prefix #f))))");
  json store{{"path", tmp("store")}, {"mountPoint", "/gnu/store"}};
  json j{{"system", sys}, {"store", store}};
  Spec spec = parse_spec(j, ctx_);
  EXPECT_TRUE(spec.system.guix);
  EXPECT_EQ(spec.kernel, linux + "/bzImage");
  EXPECT_EQ(spec.modules, linux + "/lib/modules/6.1.0-gnu");
  EXPECT_EQ(spec.system.kernel_params, "quiet loglevel=3");
  Plan p = make_plan(spec, in_);
  auto append = *(std::find(p.qemu_argv.begin(), p.qemu_argv.end(), "-append") + 1);
  EXPECT_NE(append.find(" --root=my-root gnu.system=/gnu/store/gggg-system gnu.load=/gnu/store/gggg-system/boot quiet loglevel=3"),
            std::string::npos) << append;
  EXPECT_EQ(p.guest["init"], "/gnu/store/gggg-system/boot");
  EXPECT_NE(p.guest["mounts"].dump().find(R"("target":"/gnu/store")"), std::string::npos) << p.guest["mounts"].dump();
  auto error_of = [&](json spec_json, bool with_command = false) {
    if (with_command) spec_json["command"] = "true";
    try {
      make_plan(parse_spec(spec_json, ctx_), in_);
    } catch (const SpecError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(error_of(j, true), "system: " + sys + " is a Guix system, which boots (leave the command out, or systemMode boot); "
                                                  "exec mode's context is a NixOS system's");
  json registered = j;
  registered["store"]["registration"] = tmp("store/kkkk-linux-libre-6.1.0/bzImage");
  EXPECT_EQ(error_of(registered), "spec.json: store.registration: is Nix's; a Guix system keeps its store's database itself");
  EXPECT_EQ(error_of({{"system", sys}, {"store", {{"path", tmp("store")}}}}),
            "spec.json: store.mountPoint: the Guix system " + sys + " finds its store at /gnu/store (its parameters say so): "
            "give \"mountPoint\": \"/gnu/store\"");
  fsd::testing::write_file(sys + "/parameters", "(boot-parameters (kernel \"/gnu/store/kkkk\"");
  EXPECT_EQ(error_of(j), "spec.json: system: " + sys + "/parameters: line 1: a list is not closed");
  fsd::testing::write_file(sys + "/parameters", "(menu-entry)");
  EXPECT_EQ(error_of(j), "spec.json: system: " + sys + "/parameters holds no (boot-parameters ...): it is not a Guix system's");
  fsd::testing::write_file(sys + "/parameters", "(boot-parameters (kernel \"/elsewhere/bzImage\"))");
  EXPECT_EQ(error_of(j), "spec.json: system: its kernel /elsewhere/bzImage is not in the store (/gnu/store)");
}

// With graphics, a booted system's /dev/console (the last console=) is the
// display, as in qemu-vm.nix; a command's output stays on the serial port.
TEST_F(SystemPlanTest, ABootedSystemWithADisplayHasItsConsoleThere) {
  auto append = [](const Plan& p) { return *(std::find(p.qemu_argv.begin(), p.qemu_argv.end(), "-append") + 1); };
  EXPECT_TRUE(append(plan({{"system", top_}, {"graphics", true}})).starts_with("console=ttyS0 console=tty0 "));
  EXPECT_TRUE(append(plan({{"system", top_}, {"graphics", true}, {"command", "true"}})).starts_with("console=tty0 console=ttyS0 "));
  EXPECT_TRUE(append(plan({{"system", top_}})).starts_with("console=ttyS0 panic"));
}

}  // namespace
}  // namespace fsd::launcher

namespace fsd::launcher {
namespace {

// store.image: the store is a read-only disk (after every other disk) in
// place of the share, under the same overlay.
TEST_F(PlanTest, AStoreImageReplacesTheShare) {
  in_.disks = {{"/run/vm/empty-0.qcow2", "qcow2"}, {"/cache/store.erofs", "raw", true}};
  Plan p = plan({{"store", {{"path", tmp("store")}, {"image", "erofs"}}}, {"emptyDisks", {8}}});
  std::string mounts = p.guest["mounts"].dump();
  EXPECT_NE(mounts.find(R"({"flags":["ro"],"fstype":"erofs","source":"/dev/vdb","target":"/nix/.ro-store"})"), std::string::npos)
      << mounts;
  EXPECT_EQ(joined(p.fsd_argv).find("store="), std::string::npos);
  EXPECT_EQ(joined(p.qemu_argv).find("tag=store"), std::string::npos);
  EXPECT_NE(joined(p.qemu_argv).find("file=/cache/store.erofs,if=virtio,format=raw,readonly=on"), std::string::npos);
  EXPECT_TRUE(has(p.modules, "fs-erofs"));
  EXPECT_NE(joined(p.mount_plan).find("erofs /dev/vdb (/cache/store.erofs) -> /nix/.ro-store (read-only)"), std::string::npos);
}

}  // namespace
}  // namespace fsd::launcher
