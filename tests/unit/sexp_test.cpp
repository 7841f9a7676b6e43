// The s-expression reader for Guix's boot parameters: what the file holds,
// and each kind of malformed text refused with its line.
#include <gtest/gtest.h>

#include "launcher/sexp.h"

namespace fsd::launcher {
namespace {

// The shape of a Guix system's `parameters` (as `guix system` writes it).
constexpr const char* kParameters = R"((boot-parameters
  (version 0)
  (label "GNU with Linux-Libre 6.1.0")
  (root-device "my-root")
  (kernel "/gnu/store/kkkk-linux-libre-6.1.0/bzImage")
  (kernel-arguments ("quiet" "loglevel=3"))  ; a comment
  (initrd "/gnu/store/iiii-raw-initrd/initrd.cpio.gz")
  (multiboot-modules ())
  (locale "en_US.utf8")
  (store (device #f) (mount-point "/gnu/store") (directory-prefix #f) (crypto-devices ()))
  (bootloader-name grub)
  (bootloader-menu-entries ())
  (name "with \"quotes\" and \\ and \x41;"))
)";

TEST(Sexp, ReadsGuixBootParameters) {
  Sexp p = read_sexp(kParameters);
  ASSERT_TRUE(p.is_list());
  EXPECT_EQ(p.items[0].kind, Sexp::Kind::kSymbol);
  EXPECT_EQ(p.items[0].text, "boot-parameters");
  EXPECT_EQ(p.string_of("kernel"), "/gnu/store/kkkk-linux-libre-6.1.0/bzImage");
  EXPECT_EQ(p.string_of("root-device"), "my-root");
  const Sexp* args = p.field("kernel-arguments");
  ASSERT_NE(args, nullptr);
  ASSERT_EQ(args->items[1].items.size(), 2u);
  EXPECT_EQ(args->items[1].items[1].text, "loglevel=3");
  const Sexp* store = p.field("store");
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->string_of("mount-point"), "/gnu/store");
  ASSERT_NE(store->field("device"), nullptr);
  EXPECT_EQ(store->field("device")->items[1].kind, Sexp::Kind::kBool);
  EXPECT_FALSE(store->field("device")->items[1].truth);
  EXPECT_EQ(p.string_of("name"), "with \"quotes\" and \\ and A");
  EXPECT_EQ(p.string_of("bootloader-name"), "");  // a symbol, not a string
  EXPECT_EQ(p.field("no-such-field"), nullptr);
}

TEST(Sexp, MalformedTextIsRefusedWithItsLine) {
  auto error_of = [](std::string_view text) {
    try {
      read_sexp(text);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(error_of("(a\n(b \"c"), "line 2: a string is not closed");
  EXPECT_EQ(error_of("(a (b)"), "line 1: a list is not closed");
  EXPECT_EQ(error_of("(a))"), "line 1: more follows the datum");
  EXPECT_EQ(error_of("(a]"), "line 1: a list is closed by the wrong bracket");
  EXPECT_EQ(error_of(")"), "line 1: a ')' closes no list");
  EXPECT_EQ(error_of("; only a comment\n"), "line 2: a datum is missing");
  EXPECT_EQ(error_of("(\"\\xZZ;\")"), "line 1: a bad \\x escape");
  EXPECT_EQ(error_of(std::string(65, '(') + std::string(65, ')')), "line 1: lists nested deeper than 64");
  EXPECT_EQ(error_of(std::string(64, '(') + std::string(64, ')')), "(no error)");
}

}  // namespace
}  // namespace fsd::launcher
