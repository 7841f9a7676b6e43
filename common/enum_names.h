// One string table per enum: the names a command line, a spec or a log
// uses for its values, kept beside the enum and nowhere else.
//
// An enum E opts in by an overload `names(E)`, found by argument-dependent
// lookup, returning its table:
//     inline constexpr EnumName<Color> kColorNames[] = {{"red", Color::kRed}, ...};
//     constexpr std::span<const EnumName<Color>> names(Color) { return kColorNames; }
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace fsd {

template <class E>
struct EnumName {
  std::string_view name;
  E value;
};

// The name of `v` ("?" for a value the table lacks).
template <class E>
constexpr std::string_view name_of(E v) {
  for (const auto& n : names(E{}))
    if (n.value == v) return n.name;
  return "?";
}

// The value named `s`, if any.
template <class E>
constexpr std::optional<E> value_of(std::string_view s) {
  for (const auto& n : names(E{}))
    if (n.name == s) return n.value;
  return std::nullopt;
}

// "a, b, c": every name, for error messages and help.
template <class E>
std::string name_list() {
  std::string out;
  for (const auto& n : names(E{})) out += (out.empty() ? "" : ", ") + std::string(n.name);
  return out;
}

}  // namespace fsd
