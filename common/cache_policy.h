// CachePolicy: how much clients may cache an export. 9p clients choose their
// own cache mode; FUSE clients are told through entry/attr timeouts and open
// flags. vmlaunch's spec uses the same names.
#pragma once

#include <span>

#include "common/enum_names.h"

namespace fsd {

enum class CachePolicy { kNever, kAuto, kAlways };

inline constexpr EnumName<CachePolicy> kCachePolicyNames[] = {
    {"never", CachePolicy::kNever}, {"auto", CachePolicy::kAuto}, {"always", CachePolicy::kAlways}};
constexpr std::span<const EnumName<CachePolicy>> names(CachePolicy) { return kCachePolicyNames; }

}  // namespace fsd
