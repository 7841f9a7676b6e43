// A reader of the s-expressions Guix writes for a system's boot parameters
// (its `parameters` file): lists, strings, symbols and booleans, which is
// all that file holds. Numbers and any other atom read as symbols.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace fsd::launcher {

struct Sexp {
  enum class Kind { kList, kSymbol, kString, kBool } kind = Kind::kList;
  std::string text;         // a symbol's name or a string's value
  bool truth = false;       // kBool
  std::vector<Sexp> items;  // kList

  bool is_list() const { return kind == Kind::kList; }
  bool is_string() const { return kind == Kind::kString; }
  // In a list of (NAME VALUE ...) lists, the first whose head is the symbol
  // `name`; null if none.
  const Sexp* field(std::string_view name) const;
  // That field's first value if it is a string; "" otherwise.
  std::string string_of(std::string_view name) const;
};

// The one datum in `text`; throws std::invalid_argument with the line of a
// problem (unbalanced parentheses, an unterminated string, a second datum,
// nesting deeper than 64 lists).
Sexp read_sexp(std::string_view text);

}  // namespace fsd::launcher
