#include "launcher/sexp.h"

#include <cctype>

namespace fsd::launcher {
namespace {

class Reader {
 public:
  explicit Reader(std::string_view t) : t_(t) {}

  Sexp datum(int depth) {
    skip();
    if (at_end()) fail("a datum is missing");
    char c = t_[pos_];
    if (c == '(' || c == '[') {
      if (depth >= 64) fail("lists nested deeper than 64");
      char close = c == '(' ? ')' : ']';
      pos_++;
      Sexp list;
      for (;;) {
        skip();
        if (at_end()) fail("a list is not closed");
        if (t_[pos_] == ')' || t_[pos_] == ']') {
          if (t_[pos_] != close) fail("a list is closed by the wrong bracket");
          pos_++;
          return list;
        }
        list.items.push_back(datum(depth + 1));
      }
    }
    if (c == ')' || c == ']') fail("a ')' closes no list");
    if (c == '"') return string();
    if (c == '\'' || c == '`') {  // quoted: the datum itself
      pos_++;
      return datum(depth);
    }
    std::string atom;
    while (!at_end() && !std::isspace(static_cast<unsigned char>(t_[pos_])) && t_[pos_] != '(' && t_[pos_] != ')' &&
           t_[pos_] != '[' && t_[pos_] != ']' && t_[pos_] != '"' && t_[pos_] != ';')
      atom += t_[pos_++];
    Sexp a;
    if (atom == "#f" || atom == "#false" || atom == "#t" || atom == "#true") {
      a.kind = Sexp::Kind::kBool;
      a.truth = atom[1] == 't';
    } else {
      a.kind = Sexp::Kind::kSymbol;
      a.text = std::move(atom);
    }
    return a;
  }
  void end() {
    skip();
    if (!at_end()) fail("more follows the datum");
  }

 private:
  Sexp string() {
    pos_++;  // the opening quote
    Sexp s;
    s.kind = Sexp::Kind::kString;
    for (;;) {
      if (at_end()) fail("a string is not closed");
      char c = t_[pos_++];
      if (c == '"') return s;
      if (c != '\\') {
        if (c == '\n') line_++;
        s.text += c;
        continue;
      }
      if (at_end()) fail("a string is not closed");
      char e = t_[pos_++];
      switch (e) {
        case 'n': s.text += '\n'; break;
        case 't': s.text += '\t'; break;
        case 'x': {  // \xHH;
          size_t semi = t_.find(';', pos_);
          if (semi == std::string_view::npos || semi == pos_ || semi - pos_ > 6) fail("a bad \\x escape");
          for (size_t i = pos_; i < semi; i++)
            if (!std::isxdigit(static_cast<unsigned char>(t_[i]))) fail("a bad \\x escape");
          unsigned long v = std::stoul(std::string(t_.substr(pos_, semi - pos_)), nullptr, 16);
          if (v > 0x7f) fail("a \\x escape past ASCII");
          s.text += static_cast<char>(v);
          pos_ = semi + 1;
          break;
        }
        default: s.text += e;  // \" \\ and the rest as themselves
      }
    }
  }
  void skip() {
    while (!at_end()) {
      char c = t_[pos_];
      if (c == '\n') line_++;
      if (std::isspace(static_cast<unsigned char>(c))) {
        pos_++;
      } else if (c == ';') {
        while (!at_end() && t_[pos_] != '\n') pos_++;
      } else {
        break;
      }
    }
  }
  bool at_end() const { return pos_ >= t_.size(); }
  [[noreturn]] void fail(const std::string& why) const {
    throw std::invalid_argument("line " + std::to_string(line_) + ": " + why);
  }

  std::string_view t_;
  size_t pos_ = 0;
  size_t line_ = 1;
};

}  // namespace

const Sexp* Sexp::field(std::string_view name) const {
  for (const auto& i : items)
    if (i.is_list() && !i.items.empty() && i.items[0].kind == Kind::kSymbol && i.items[0].text == name) return &i;
  return nullptr;
}

std::string Sexp::string_of(std::string_view name) const {
  const Sexp* f = field(name);
  return f && f->items.size() > 1 && f->items[1].is_string() ? f->items[1].text : "";
}

Sexp read_sexp(std::string_view text) {
  Reader r(text);
  Sexp d = r.datum(0);
  r.end();
  return d;
}

}  // namespace fsd::launcher
