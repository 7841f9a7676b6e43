// IdMap: virtiofsd's --translate-uid/--translate-gid rules.
#include "fsd/vfs/id_map.h"

#include <gtest/gtest.h>

#include <stdexcept>

namespace fsd {
namespace {

TEST(IdMap, AnEmptyMapChangesNothing) {
  IdMap m;
  EXPECT_TRUE(m.empty());
  EXPECT_EQ(m.to_host(0), 0u);
  EXPECT_EQ(m.to_host(4294967295u), 4294967295u);
  EXPECT_EQ(m.to_client(1000), 1000u);
}

TEST(IdMap, MapShiftsARangeBothWays) {
  IdMap m;
  m.add("map:0:100000:65536");
  EXPECT_EQ(m.to_host(0), 100000u);
  EXPECT_EQ(m.to_host(65535), 165535u);
  EXPECT_EQ(m.to_host(65536), 65536u);  // past the range: itself
  EXPECT_EQ(m.to_client(100000), 0u);
  EXPECT_EQ(m.to_client(165535), 65535u);
  EXPECT_EQ(m.to_client(99999), 99999u);
}

TEST(IdMap, GuestAndHostRulesGoOneWayEach) {
  IdMap m;
  m.add("guest:1000:2000:10");
  EXPECT_EQ(m.to_host(1005), 2005u);
  EXPECT_EQ(m.to_client(2005), 2005u);  // no host rule: unchanged
  m.add("host:2000:500:10");
  EXPECT_EQ(m.to_client(2005), 505u);
  EXPECT_EQ(m.to_host(505), 505u);
}

// virtiofsd's example for an unprivileged daemon (uid 1001): every guest uid
// becomes 1001 on the host, and 1001 shows in the guest as 1000.
TEST(IdMap, SquashingServesAGuestFromOneHostUser) {
  IdMap m;
  m.add("squash-guest:0:1001:4294967295");
  m.add("host:1001:1000:1");
  EXPECT_EQ(m.to_host(0), 1001u);
  EXPECT_EQ(m.to_host(12345), 1001u);
  EXPECT_EQ(m.to_host(4294967294u), 1001u);
  EXPECT_EQ(m.to_host(4294967295u), 4294967295u);  // the range ends one short (0 + count)
  EXPECT_EQ(m.to_client(1001), 1000u);
  EXPECT_EQ(m.to_client(0), 0u);
  m.add("squash-host:5000:7:100");
  EXPECT_EQ(m.to_client(5050), 7u);
}

TEST(IdMap, ForbiddenIdsHaveNoHostId) {
  IdMap m;
  m.add("forbid-guest:0:1000");
  m.add("map:1000:1000:1");
  m.add("forbid-guest:1001:4294967295");  // runs past the top: ends there
  EXPECT_EQ(m.to_host(0), std::nullopt);
  EXPECT_EQ(m.to_host(999), std::nullopt);
  EXPECT_EQ(m.to_host(1000), 1000u);
  EXPECT_EQ(m.to_host(1001), std::nullopt);
  EXPECT_EQ(m.to_host(4294967295u), std::nullopt);
}

TEST(IdMap, BadRulesAreRefusedNamingThem) {
  auto refused = [](std::initializer_list<const char*> rules) {
    IdMap m;
    try {
      for (const char* r : rules) m.add(r);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(refused({"squash:0:1:2"}).find("unknown type 'squash'"), std::string::npos);
  EXPECT_NE(refused({"map:0:1"}).find("FROM:TO:COUNT"), std::string::npos);
  EXPECT_NE(refused({"forbid-guest:0:1:2"}).find("FROM:COUNT"), std::string::npos);
  EXPECT_NE(refused({"map:0:x:1"}).find("'x' is not an id"), std::string::npos);
  EXPECT_NE(refused({"map:0:1:-1"}).find("is not an id"), std::string::npos);
  EXPECT_NE(refused({"map:0:4294967296:1"}).find("is not an id"), std::string::npos);
  EXPECT_NE(refused({"map:0:1:0"}).find("COUNT 0"), std::string::npos);
  EXPECT_NE(refused({"guest:0:4294967290:10"}).find("runs past"), std::string::npos);
  EXPECT_NE(refused({"nothing"}).find("expected"), std::string::npos);
  // Overlapping sources in one direction; the other direction is free.
  EXPECT_NE(refused({"guest:0:100:10", "squash-guest:5:1:10"}).find("overlaps"), std::string::npos);
  EXPECT_NE(refused({"map:0:100:10", "host:105:0:1"}).find("host range overlaps"), std::string::npos);
  EXPECT_EQ(refused({"guest:0:100:10", "host:0:100:10", "guest:10:0:1"}), "");
}

}  // namespace
}  // namespace fsd
