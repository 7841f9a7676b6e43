// fsd's --export TAG=PATH[,OPTIONS]: any path can be given (",," is a comma
// of the path), and nothing in a path becomes an option.
#include <gtest/gtest.h>

#include "fsd/vfs/export.h"

namespace fsd {
namespace {

TEST(ParseExport, DoubledCommasBelongToThePath) {
  auto e = parse_export("odd=/x/a,,path=,,devices:b $(x) 'q\",ro,cache=never");
  EXPECT_EQ(e.tag, "odd");
  EXPECT_EQ(e.path, "/x/a,path=,devices:b $(x) 'q\"");
  EXPECT_TRUE(e.read_only);
  EXPECT_FALSE(e.devices);
  EXPECT_EQ(e.cache, CachePolicy::kNever);
  auto trailing = parse_export("t=/x,,,devices");
  EXPECT_EQ(trailing.path, "/x,");
  EXPECT_TRUE(trailing.devices);
  EXPECT_EQ(parse_export("t=/plain").path, "/plain");
  EXPECT_THROW(parse_export("t=/x,nodev"), std::invalid_argument);
}

}  // namespace
}  // namespace fsd
