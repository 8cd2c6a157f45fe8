// The wire codec (apir/wire.hpp): the APIR 0.2 command-stream encoding.
//
// The golden bytes below are written out by hand from the encoding rules (every
// field a multiple of 4 bytes, little-endian); each golden case is checked in both
// directions: the value encodes to the bytes and the bytes decode to the value.
#include "wire_test.hpp"

#include <apir/wire.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

using apir::Errc;
using apir_test::bytes;
using apir_test::encoded;
using apir_test::hex;

namespace {

enum class Small : uint8_t { value = 0x7f };
enum class Signed : int32_t { minus_two = -2 };
enum class Wide : uint64_t { big = 0x1'0000'0002 };

struct Record {
    uint8_t tag = 0;
    uint64_t id = 0;
    std::string name;
    static constexpr auto wire_fields = apir::fields(&Record::tag, &Record::id, &Record::name);
    friend bool operator==(const Record&, const Record&) = default;
};

/// Wire order is the order of wire_fields, not of the declaration.
struct Swapped {
    uint32_t first = 0;
    uint32_t second = 0;
    static constexpr auto wire_fields = apir::fields(&Swapped::second, &Swapped::first);
    friend bool operator==(const Swapped&, const Swapped&) = default;
};

struct Outer {
    Record record;
    std::vector<Swapped> pairs;
    static constexpr auto wire_fields = apir::fields(&Outer::record, &Outer::pairs);
    friend bool operator==(const Outer&, const Outer&) = default;
};

struct WithViews {
    apir::Bytes blob;
    std::string_view text;
    static constexpr auto wire_fields = apir::fields(&WithViews::blob, &WithViews::text);
};

/// Checks a golden case both ways: v encodes to `golden`, and `golden` decodes
/// (consuming every byte) to v.
template <class T>
void check_golden(const T& v, std::string_view golden) {
    INFO("golden bytes: " << golden);
    CHECK(encoded(v) == golden);
    auto buf = bytes(golden); // outlives `back`, which may hold views into it
    auto back = apir::decode_exact<T>(buf);
    REQUIRE(back.has_value());
    CHECK(*back == v);
}

/// Decodes `golden` as a T; the decoder must succeed and consume everything.
template <class T>
T decode_all(std::string_view golden) {
    static_assert(!apir::wire_has_view_v<T>, "the decoded views would outlive their buffer");
    INFO("bytes: " << golden);
    auto buf = bytes(golden);
    auto r = apir::decode_exact<T>(buf);
    REQUIRE(r.has_value());
    return *r;
}

/// Decodes `input` as a T and returns the error code (the decode must fail).
template <class T>
Errc decode_error(std::span<const std::byte> input,
                  size_t max_alloc = apir::Decoder::default_max_alloc) {
    apir::Decoder d(input, max_alloc);
    auto r = d.get<T>();
    REQUIRE_FALSE(r.has_value());
    REQUIRE_FALSE(d.ok());
    auto status = d.status();
    REQUIRE_FALSE(status.has_value());
    CHECK(status.error().code() == r.error().code());
    CHECK(status.error().message().find(status.error().name()) != std::string::npos);
    return r.error().code();
}

template <class T>
Errc decode_error(std::string_view golden, size_t max_alloc = apir::Decoder::default_max_alloc) {
    INFO("bytes: " << golden);
    return decode_error<T>(bytes(golden), max_alloc);
}

} // namespace

// ---------------------------------------------------------------------------
// Encoding rules, one per wire type

TEST_CASE("an 8-bit value takes 4 bytes: the value, then three zero bytes", "[wire][golden]") {
    check_golden(uint8_t{0x7f}, "7f 00 00 00");
    check_golden(uint8_t{0xff}, "ff 00 00 00");
    check_golden(int8_t{-1}, "ff 00 00 00");
    check_golden('a', "61 00 00 00");
    check_golden(std::byte{0xab}, "ab 00 00 00");
}

TEST_CASE("bool travels as 1 or 0 in the first of 4 bytes", "[wire][golden]") {
    check_golden(true, "01 00 00 00");
    check_golden(false, "00 00 00 00");
}

TEST_CASE("32-bit integers take 4 little-endian bytes", "[wire][golden]") {
    check_golden(int32_t{-1}, "ff ff ff ff");
    check_golden(int32_t{0x12345678}, "78 56 34 12");
    check_golden(std::numeric_limits<int32_t>::min(), "00 00 00 80");
    check_golden(uint32_t{0xdeadbeef}, "ef be ad de");
    check_golden(uint32_t{1}, "01 00 00 00");
}

TEST_CASE("64-bit integers, size_t and uintptr_t take 8 little-endian bytes", "[wire][golden]") {
    check_golden(uint64_t{0x0102030405060708}, "08 07 06 05 04 03 02 01");
    check_golden(int64_t{-2}, "fe ff ff ff ff ff ff ff");
    check_golden(size_t{5}, "05 00 00 00 00 00 00 00");
    check_golden(uintptr_t{0x1000}, "00 10 00 00 00 00 00 00");
    STATIC_REQUIRE(apir::wire_traits<size_t>::wire_size == 8);
}

TEST_CASE("float and double travel as their IEEE-754 bits", "[wire][golden]") {
    check_golden(1.0f, "00 00 80 3f");
    check_golden(-2.5f, "00 00 20 c0");
    check_golden(1.0, "00 00 00 00 00 00 f0 3f");
    check_golden(-0.5, "00 00 00 00 00 00 e0 bf");
}

TEST_CASE("enums travel as their underlying integer", "[wire][golden]") {
    check_golden(Small::value, "7f 00 00 00");
    check_golden(Signed::minus_two, "fe ff ff ff");
    check_golden(Wide::big, "02 00 00 00 01 00 00 00");
    check_golden(apir::CommandType::forward, "02 00 00 00");
}

TEST_CASE("std::array of 32-bit values has no length prefix", "[wire][golden]") {
    check_golden(std::array<uint32_t, 3>{1, 2, 0xffffffff}, "01 00 00 00 02 00 00 00 ff ff ff ff");
    check_golden(std::array<uint64_t, 1>{7}, "07 00 00 00 00 00 00 00");
    check_golden(std::array<bool, 0>{}, "");
}

TEST_CASE("byte arrays are packed and padded to a multiple of 4 with zeros", "[wire][golden]") {
    check_golden(std::array<char, 5>{'h', 'e', 'l', 'l', 'o'}, "68 65 6c 6c 6f 00 00 00");
    check_golden(std::array<uint8_t, 4>{1, 2, 3, 4}, "01 02 03 04");
    check_golden(std::array<std::byte, 1>{std::byte{0xaa}}, "aa 00 00 00");
    check_golden(std::array<char, 0>{}, "");
}

TEST_CASE("a blob (apir::Bytes) is a uint64 byte count, then the bytes padded to 4",
          "[wire][golden]") {
    auto five = bytes("01 02 03 04 05");
    CHECK(encoded(apir::Bytes(five)) == "05 00 00 00 00 00 00 00 01 02 03 04 05 00 00 00");
    auto four = bytes("01 02 03 04");
    CHECK(encoded(apir::Bytes(four)) == "04 00 00 00 00 00 00 00 01 02 03 04");
    CHECK(encoded(apir::Bytes()) == "00 00 00 00 00 00 00 00");

    auto buf = bytes("05 00 00 00 00 00 00 00 01 02 03 04 05 00 00 00");
    auto back = apir::decode_exact<apir::Bytes>(buf);
    REQUIRE(back.has_value());
    CHECK(hex(*back) == "01 02 03 04 05");
}

TEST_CASE("a std::vector is a uint64 element count, then the elements", "[wire][golden]") {
    check_golden(std::vector<uint32_t>{1, 0x01020304},
                 "02 00 00 00 00 00 00 00 01 00 00 00 04 03 02 01");
    check_golden(std::vector<uint32_t>{}, "00 00 00 00 00 00 00 00");
    check_golden(std::vector<uint64_t>{1}, "01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00");
    // Vectors of bytes are packed like a blob.
    check_golden(std::vector<uint8_t>{1, 2, 3}, "03 00 00 00 00 00 00 00 01 02 03 00");
    check_golden(std::vector<std::string>{"a"}, "01 00 00 00 00 00 00 00 "
                                                "02 00 00 00 00 00 00 00 61 00 00 00");
}

TEST_CASE("a string is strlen+1, then the chars and the NUL, padded to 4", "[wire][golden]") {
    check_golden(std::string("ab"), "03 00 00 00 00 00 00 00 61 62 00 00");
    check_golden(std::string(""), "01 00 00 00 00 00 00 00 00 00 00 00");
    check_golden(std::string("abc"), "04 00 00 00 00 00 00 00 61 62 63 00");
    check_golden(std::string("abcd"), "05 00 00 00 00 00 00 00 61 62 63 64 00 00 00 00");

    SECTION("std::string_view encodes exactly like std::string") {
        check_golden(std::string_view("ab"), "03 00 00 00 00 00 00 00 61 62 00 00");
        check_golden(std::string_view(), "01 00 00 00 00 00 00 00 00 00 00 00");
    }
}

TEST_CASE("std::optional is a uint64 presence flag, then the value if present", "[wire][golden]") {
    check_golden(std::optional<uint32_t>(7), "01 00 00 00 00 00 00 00 07 00 00 00");
    check_golden(std::optional<uint32_t>(), "00 00 00 00 00 00 00 00");
    check_golden(std::optional<std::string>("a"),
                 "01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 61 00 00 00");
}

TEST_CASE("a struct travels as its wire_fields, in the order they are listed", "[wire][golden]") {
    check_golden(Record{0x7f, 0x0102, "ab"}, "7f 00 00 00 "
                                             "02 01 00 00 00 00 00 00 "
                                             "03 00 00 00 00 00 00 00 61 62 00 00");
    check_golden(Swapped{1, 2}, "02 00 00 00 01 00 00 00");
    check_golden(Outer{{1, 2, ""}, {{3, 4}}}, "01 00 00 00 "
                                              "02 00 00 00 00 00 00 00 "
                                              "01 00 00 00 00 00 00 00 00 00 00 00 "
                                              "01 00 00 00 00 00 00 00 04 00 00 00 03 00 00 00");
    check_golden(apir::Empty{}, "");
}

TEST_CASE("wire_align rounds a size up to a multiple of 4", "[wire]") {
    STATIC_REQUIRE(apir::wire_align(0) == 0);
    STATIC_REQUIRE(apir::wire_align(1) == 4);
    STATIC_REQUIRE(apir::wire_align(4) == 4);
    STATIC_REQUIRE(apir::wire_align(5) == 8);
}

// ---------------------------------------------------------------------------
// Decoding what ggml sends

TEST_CASE("decoding ignores the three padding bytes of 8-bit values", "[wire][decode]") {
    // ggml writes only the first byte; the rest of the word is whatever was there.
    CHECK(decode_all<uint8_t>("7f ff ff ff") == 0x7f);
    CHECK(decode_all<int8_t>("ff 12 34 56") == -1);
    CHECK(decode_all<char>("61 ee ee ee") == 'a');
    CHECK(decode_all<Small>("7f 01 02 03") == Small::value);
}

TEST_CASE("bool is decoded from its first byte alone", "[wire][decode]") {
    CHECK(decode_all<bool>("01 00 00 00") == true);
    CHECK(decode_all<bool>("02 ff ff ff") == true);
    CHECK(decode_all<bool>("00 00 00 00") == false);
    CHECK(decode_all<bool>("00 01 01 01") == false);
}

TEST_CASE("decode_exact rejects trailing bytes", "[wire][decode]") {
    auto buf = bytes("01 00 00 00 02 00 00 00");
    auto r = apir::decode_exact<uint32_t>(buf);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == Errc::decode_bad_value);
}

TEST_CASE("a decoder reports how far it has read", "[wire][decode]") {
    auto buf = bytes("01 00 00 00 02 00 00 00 03 00 00 00");
    apir::Decoder d(buf);
    CHECK(d.read_u32() == 1);
    CHECK(d.consumed() == 4);
    CHECK(d.remaining() == 8);
    CHECK(d.rest().data() == buf.data() + 4);
    CHECK(d.read_u64() == 0x0000000300000002);
    CHECK(d.remaining() == 0);
    CHECK(d.ok());
}

// ---------------------------------------------------------------------------
// Zero copy

TEST_CASE("Bytes and std::string_view decode in place, pointing into the input", "[wire][decode]") {
    auto buf = bytes("05 00 00 00 00 00 00 00 01 02 03 04 05 00 00 00 "
                     "03 00 00 00 00 00 00 00 61 62 00 00");
    apir::Decoder d(buf);
    auto blob = d.get<apir::Bytes>();
    auto text = d.get<std::string_view>();
    REQUIRE(blob.has_value());
    REQUIRE(text.has_value());
    CHECK(blob->data() == buf.data() + 8);
    CHECK(blob->size() == 5);
    CHECK(text->data() == reinterpret_cast<const char*>(buf.data() + 24));
    CHECK(*text == "ab");

    SECTION("so does a struct holding views") {
        apir::Decoder again(buf);
        auto v = again.get<WithViews>();
        REQUIRE(v.has_value());
        CHECK(v->blob.data() == buf.data() + 8);
        CHECK(v->text.data() == reinterpret_cast<const char*>(buf.data() + 24));
    }
}

TEST_CASE("wire_has_view_v tells which types decode to views into the buffer", "[wire]") {
    STATIC_REQUIRE(apir::wire_has_view_v<apir::Bytes>);
    STATIC_REQUIRE(apir::wire_has_view_v<std::string_view>);
    STATIC_REQUIRE(apir::wire_has_view_v<WithViews>);
    STATIC_REQUIRE(apir::wire_has_view_v<std::optional<std::string_view>>);
    STATIC_REQUIRE(apir::wire_has_view_v<std::vector<apir::Bytes>>);
    STATIC_REQUIRE(apir::wire_has_view_v<std::array<std::string_view, 2>>);
    STATIC_REQUIRE_FALSE(apir::wire_has_view_v<std::string>);
    STATIC_REQUIRE_FALSE(apir::wire_has_view_v<std::vector<uint8_t>>);
    STATIC_REQUIRE_FALSE(apir::wire_has_view_v<std::optional<std::string>>);
    STATIC_REQUIRE_FALSE(apir::wire_has_view_v<Outer>);
    STATIC_REQUIRE_FALSE(apir::wire_has_view_v<uint32_t>);
}

// ---------------------------------------------------------------------------
// Malformed input

TEST_CASE("reading past the end fails with DECODE_OVERRUN and names the offset", "[wire][errors]") {
    auto buf = bytes("01 00 00 00 02 00");
    apir::Decoder d(buf);
    CHECK(d.read_u32() == 1);
    CHECK(d.read_u32() == 0);
    CHECK_FALSE(d.ok());
    auto status = d.status();
    REQUIRE_FALSE(status.has_value());
    CHECK(status.error().code() == Errc::decode_overrun);
    CHECK(status.error().category() == apir::Category::protocol);
    CHECK(status.error().detail() == "at byte 4 of 6");

    CHECK(decode_error<uint8_t>("7f 00 00") == Errc::decode_overrun);
    CHECK(decode_error<uint64_t>("01 00 00 00") == Errc::decode_overrun);
    CHECK(decode_error<uint32_t>("") == Errc::decode_overrun);
}

TEST_CASE("a default-constructed decoder fails cleanly on every read", "[wire][errors]") {
    apir::Decoder d;
    CHECK(d.read_u64() == 0);
    CHECK(d.read_bytes(1).empty());
    CHECK(d.status().error().code() == Errc::decode_overrun);
}

TEST_CASE("a size prefix larger than the remaining bytes fails with DECODE_SIZE_TOO_LARGE",
          "[wire][errors]") {
    // Blob of 9 bytes announced, 8 present.
    CHECK(decode_error<apir::Bytes>("09 00 00 00 00 00 00 00 01 02 03 04 05 06 07 08") ==
          Errc::decode_size_too_large);
    // String of 100 chars announced, 4 present.
    CHECK(decode_error<std::string>("64 00 00 00 00 00 00 00 61 62 63 00") ==
          Errc::decode_size_too_large);
    // Three uint32 elements announced, two present.
    CHECK(decode_error<std::vector<uint32_t>>("03 00 00 00 00 00 00 00 01 00 00 00 02 00 00 00") ==
          Errc::decode_size_too_large);
}

TEST_CASE("a size prefix of UINT64_MAX or near it fails without allocating", "[wire][errors]") {
    auto lie = GENERATE(as<std::string>{}, "ff ff ff ff ff ff ff ff", "fe ff ff ff ff ff ff ff",
                        "00 00 00 00 00 00 00 40", "fd ff ff ff ff ff ff 3f");
    std::string input = lie + " 61 62 63 00";
    CHECK(decode_error<apir::Bytes>(input) == Errc::decode_size_too_large);
    CHECK(decode_error<std::string>(input) == Errc::decode_size_too_large);
    CHECK(decode_error<std::string_view>(input) == Errc::decode_size_too_large);
    CHECK(decode_error<std::vector<uint32_t>>(input) == Errc::decode_size_too_large);
    CHECK(decode_error<std::vector<uint64_t>>(input) == Errc::decode_size_too_large);
    CHECK(decode_error<std::vector<uint8_t>>(input) == Errc::decode_size_too_large);
    CHECK(decode_error<std::vector<std::string>>(input) == Errc::decode_size_too_large);

    SECTION("the raw reads cannot be tricked by a length that overflows when padded") {
        auto buf = bytes("61 62 63 00");
        apir::Decoder d(buf);
        CHECK(d.read_bytes(std::numeric_limits<size_t>::max()).empty());
        CHECK(d.status().error().code() == Errc::decode_overrun);
    }
}

TEST_CASE("owning decodes are capped by the decoder's max_alloc; views are not", "[wire][errors]") {
    const std::string three_words = "03 00 00 00 00 00 00 00 01 00 00 00 02 00 00 00 03 00 00 00";
    CHECK(decode_error<std::vector<uint32_t>>(three_words, 8) == Errc::decode_size_too_large);
    {
        auto buf = bytes(three_words);
        apir::Decoder d(buf, 12);
        CHECK(d.max_alloc() == 12);
        auto v = d.get<std::vector<uint32_t>>();
        REQUIRE(v.has_value());
        CHECK(*v == std::vector<uint32_t>{1, 2, 3});
    }

    const std::string abc = "04 00 00 00 00 00 00 00 61 62 63 00"; // 4 bytes with the NUL
    CHECK(decode_error<std::string>(abc, 3) == Errc::decode_size_too_large);
    CHECK(decode_error<std::vector<uint8_t>>("03 00 00 00 00 00 00 00 01 02 03 00", 2) ==
          Errc::decode_size_too_large);
    {
        auto buf = bytes(abc);
        apir::Decoder d(buf, 4);
        CHECK(d.get<std::string>().value() == "abc");
    }
    {
        // A view allocates nothing, so max_alloc does not apply.
        auto buf = bytes(abc);
        apir::Decoder d(buf, 0);
        CHECK(d.get<std::string_view>().value() == "abc");
    }
}

TEST_CASE("a string with a zero size prefix fails with DECODE_MISSING_NUL", "[wire][errors]") {
    CHECK(decode_error<std::string>("00 00 00 00 00 00 00 00") == Errc::decode_missing_nul);
    CHECK(decode_error<std::string_view>("00 00 00 00 00 00 00 00 00 00 00 00") ==
          Errc::decode_missing_nul);
}

TEST_CASE("a string whose last counted byte is not NUL fails with DECODE_MISSING_NUL",
          "[wire][errors]") {
    CHECK(decode_error<std::string>("02 00 00 00 00 00 00 00 61 62 00 00") ==
          Errc::decode_missing_nul);
    // A NUL in the padding does not count.
    CHECK(decode_error<std::string>("03 00 00 00 00 00 00 00 61 62 63 00") ==
          Errc::decode_missing_nul);
    CHECK(decode_error<std::string_view>("04 00 00 00 00 00 00 00 61 62 63 64") ==
          Errc::decode_missing_nul);
}

TEST_CASE("an optional flag other than 0 or 1 fails with DECODE_BAD_VALUE", "[wire][errors]") {
    CHECK(decode_error<std::optional<uint32_t>>("02 00 00 00 00 00 00 00 07 00 00 00") ==
          Errc::decode_bad_value);
    CHECK(decode_error<std::optional<uint32_t>>("01 00 00 00 01 00 00 00 07 00 00 00") ==
          Errc::decode_bad_value);
    CHECK(decode_error<std::optional<uint32_t>>("ff ff ff ff ff ff ff ff") ==
          Errc::decode_bad_value);
}

TEST_CASE("an optional announced present but missing its value fails with DECODE_OVERRUN",
          "[wire][errors]") {
    CHECK(decode_error<std::optional<uint32_t>>("01 00 00 00 00 00 00 00") == Errc::decode_overrun);
}

TEST_CASE("decoder errors are sticky: later reads return zeros and empties, the first error "
          "is kept",
          "[wire][errors]") {
    // A bad optional flag, followed by bytes that would decode fine on their own.
    auto buf = bytes("02 00 00 00 00 00 00 00 "
                     "07 00 00 00 07 00 00 00 07 00 00 00 07 00 00 00 "
                     "03 00 00 00 00 00 00 00 61 62 00 00");
    apir::Decoder d(buf);
    std::optional<uint32_t> opt = 5;
    CHECK_FALSE(d.get_into(opt));
    CHECK_FALSE(opt.has_value());

    CHECK(d.read_u32() == 0);
    CHECK(d.read_u64() == 0);
    CHECK(d.read_bytes(4).empty());
    CHECK(d.remaining() == 0);

    uint32_t word = 9;
    d.get_into(word);
    CHECK(word == 0);
    std::string text = "keep";
    d.get_into(text);
    CHECK(text.empty());
    std::string_view view = "keep";
    d.get_into(view);
    CHECK(view.empty());
    apir::Bytes blob = std::as_bytes(std::span<const char>("keep", 4));
    d.get_into(blob);
    CHECK(blob.empty());
    std::vector<uint32_t> list{1, 2};
    d.get_into(list);
    CHECK(list.empty());
    std::array<char, 4> chars{'k', 'e', 'e', 'p'};
    d.get_into(chars);
    CHECK(chars == std::array<char, 4>{});
    std::array<uint32_t, 2> words{1, 2};
    d.get_into(words);
    CHECK(words == std::array<uint32_t, 2>{});
    Record rec{1, 2, "x"};
    d.get_into(rec);
    CHECK(rec == Record{});

    d.set_error(Errc::decode_missing_nul);
    auto r = d.get<uint32_t>();
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == Errc::decode_bad_value);
    CHECK(d.status().error().code() == Errc::decode_bad_value);
}

TEST_CASE("a vector whose elements run out is cleared and fails", "[wire][errors]") {
    // Count 3 fits the bytes left for 4-byte elements, not for 8-byte ones.
    auto buf = bytes("03 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00");
    apir::Decoder d(buf);
    std::vector<uint64_t> v{9};
    CHECK_FALSE(d.get_into(v));
    CHECK(v.empty());
    CHECK(d.status().error().code() == Errc::decode_overrun);
}

// ---------------------------------------------------------------------------
// The encoder never writes out of bounds

namespace {
constexpr auto canary = std::byte{0xcc};

bool untouched(std::span<const std::byte> region) {
    return std::all_of(region.begin(), region.end(), [](std::byte b) { return b == canary; });
}
} // namespace

TEST_CASE("an encoder filled to exactly its end is fine", "[wire][encode]") {
    std::array<std::byte, 12> buf{};
    apir::Encoder e(buf);
    e.put_all(uint32_t{1}, uint64_t{2});
    CHECK(e.ok());
    CHECK(e.remaining() == 0);
    CHECK(e.size() == 12);
    CHECK(e.status().has_value());
    CHECK(hex(e.written()) == "01 00 00 00 02 00 00 00 00 00 00 00");
}

TEST_CASE("one byte past the end fails with ENCODE_OVERFLOW and writes nothing past the span",
          "[wire][encode]") {
    std::array<std::byte, 32> backing;
    backing.fill(canary);
    auto span = std::span<std::byte>(backing).first(11);

    SECTION("scalars") {
        apir::Encoder e(span);
        e.put_all(uint32_t{1}, uint32_t{2}, uint32_t{3});
        CHECK_FALSE(e.ok());
        CHECK(e.size() == 8);
        CHECK(hex(std::span(backing).first(8)) == "01 00 00 00 02 00 00 00");
        CHECK(untouched(std::span(backing).subspan(8)));
    }
    SECTION("a padded byte array") {
        apir::Encoder e(std::span<std::byte>(backing).first(7));
        e.put(std::array<char, 5>{'h', 'e', 'l', 'l', 'o'});
        CHECK_FALSE(e.ok());
        CHECK(untouched(backing));
    }
    SECTION("a string whose padding would cross the end") {
        apir::Encoder e(std::span<std::byte>(backing).first(15));
        e.put(std::string("abcd")); // 8 + 8 bytes
        CHECK_FALSE(e.ok());
        CHECK(untouched(std::span(backing).subspan(15)));
    }
    SECTION("a blob") {
        auto five = bytes("01 02 03 04 05");
        apir::Encoder e(span);
        e.put(apir::Bytes(five)); // 8 + 8 bytes
        CHECK_FALSE(e.ok());
        CHECK(untouched(std::span(backing).subspan(11)));
    }

    apir::Encoder full(span);
    full.put(std::array<uint32_t, 3>{});
    auto status = full.status();
    REQUIRE_FALSE(status.has_value());
    CHECK(status.error().code() == Errc::encode_overflow);
    CHECK(status.error().category() == apir::Category::exhausted);
    CHECK(status.error().message().find("ENCODE_OVERFLOW") != std::string::npos);
    CHECK(untouched(std::span(backing).subspan(11)));
}

TEST_CASE("encoder overflow is sticky: a later write that would fit is dropped", "[wire][encode]") {
    std::array<std::byte, 12> buf{};
    apir::Encoder e(buf);
    e.write_u64(1);
    e.write_u64(2); // does not fit
    e.write_u32(3); // would fit, but the message is already broken
    CHECK_FALSE(e.ok());
    CHECK(e.size() == 8);
    CHECK(e.reserve(0) == nullptr);
}

TEST_CASE("reserve hands out space in place with the padding already zeroed", "[wire][encode]") {
    std::array<std::byte, 16> buf;
    buf.fill(canary);
    apir::Encoder e(buf);
    std::byte* p = e.reserve(5);
    REQUIRE(p == buf.data());
    std::memcpy(p, "hello", 5);
    CHECK(e.size() == 8);
    CHECK(hex(e.written()) == "68 65 6c 6c 6f 00 00 00");
    CHECK(e.reserve(std::numeric_limits<size_t>::max()) == nullptr);
    CHECK_FALSE(e.ok());
    CHECK(untouched(std::span(buf).subspan(8)));
}

TEST_CASE("a default-constructed encoder has no room", "[wire][encode]") {
    apir::Encoder e;
    e.write_u32(1);
    CHECK_FALSE(e.ok());
    CHECK(e.size() == 0);
}

TEST_CASE("apir::encode returns the size written or ENCODE_OVERFLOW", "[wire][encode]") {
    std::array<std::byte, 32> buf{};
    auto n = apir::encode(buf, Record{1, 2, "ab"});
    REQUIRE(n.has_value());
    CHECK(*n == 4 + 8 + 12);
    auto too_long = apir::encode(buf, std::string("a string longer than the buffer"));
    REQUIRE_FALSE(too_long.has_value());
    CHECK(too_long.error().code() == Errc::encode_overflow);
}

// ---------------------------------------------------------------------------
// Properties over random messages

namespace {

/// One field of every kind the codec supports.
struct Everything {
    uint8_t u8 = 0;
    int8_t i8 = 0;
    bool flag = false;
    char ch = 0;
    std::byte octet{};
    int32_t i32 = 0;
    uint32_t u32 = 0;
    int64_t i64 = 0;
    uint64_t u64 = 0;
    size_t size = 0;
    float f32 = 0;
    double f64 = 0;
    Small e8{};
    Signed e32{};
    Wide e64{};
    std::array<uint32_t, 3> words{};
    std::array<char, 5> tag{};
    std::array<uint8_t, 3> triple{};
    apir::Bytes blob;
    std::vector<uint32_t> list;
    std::vector<uint8_t> octets;
    std::vector<std::string> names;
    std::string text;
    std::string_view view;
    std::optional<uint64_t> maybe;
    std::optional<std::string> maybe_text;
    Record record;
    std::vector<Record> records;
    std::optional<Record> maybe_record;

    static constexpr auto wire_fields = apir::fields(
        &Everything::u8, &Everything::i8, &Everything::flag, &Everything::ch, &Everything::octet,
        &Everything::i32, &Everything::u32, &Everything::i64, &Everything::u64, &Everything::size,
        &Everything::f32, &Everything::f64, &Everything::e8, &Everything::e32, &Everything::e64,
        &Everything::words, &Everything::tag, &Everything::triple, &Everything::blob,
        &Everything::list, &Everything::octets, &Everything::names, &Everything::text,
        &Everything::view, &Everything::maybe, &Everything::maybe_text, &Everything::record,
        &Everything::records, &Everything::maybe_record);
};

/// Makes random Everything values; owns the storage their views point at.
class Generator {
public:
    explicit Generator(uint64_t seed) : rng_(seed) {}

    Everything next() {
        Everything v;
        v.u8 = num<uint8_t>();
        v.i8 = num<int8_t>();
        v.flag = (rng_() & 1) != 0;
        v.ch = num<char>();
        v.octet = num<std::byte>();
        v.i32 = num<int32_t>();
        v.u32 = num<uint32_t>();
        v.i64 = num<int64_t>();
        v.u64 = num<uint64_t>();
        v.size = num<size_t>();
        v.f32 = std::bit_cast<float>(num<uint32_t>()); // any bit pattern, NaNs included
        v.f64 = std::bit_cast<double>(num<uint64_t>());
        v.e8 = num<Small>();
        v.e32 = num<Signed>();
        v.e64 = num<Wide>();
        for (auto& w : v.words)
            w = num<uint32_t>();
        for (auto& c : v.tag)
            c = num<char>();
        for (auto& b : v.triple)
            b = num<uint8_t>();
        auto& blob = blobs_.emplace_back(len(40));
        for (auto& b : blob)
            b = num<std::byte>();
        v.blob = blob;
        v.list.resize(len(10));
        for (auto& x : v.list)
            x = num<uint32_t>();
        v.octets.resize(len(13));
        for (auto& x : v.octets)
            x = num<uint8_t>();
        v.names.resize(len(4));
        for (auto& s : v.names)
            s = string(12);
        v.text = string(30);
        v.view = strings_.emplace_back(string(30));
        if (rng_() & 1) v.maybe = num<uint64_t>();
        if (rng_() & 1) v.maybe_text = string(8);
        v.record = record();
        v.records.resize(len(3));
        for (auto& r : v.records)
            r = record();
        if (rng_() & 1) v.maybe_record = record();
        return v;
    }

    std::mt19937_64& rng() { return rng_; }

private:
    template <class T>
    T num() {
        if constexpr (std::is_enum_v<T>)
            return static_cast<T>(static_cast<std::underlying_type_t<T>>(rng_()));
        else
            return static_cast<T>(rng_());
    }
    size_t len(size_t max) { return static_cast<size_t>(rng_() % (max + 1)); }
    /// Any chars but NUL (the wire string is NUL-terminated).
    std::string string(size_t max) {
        std::string s(len(max), ' ');
        for (auto& c : s)
            c = static_cast<char>(1 + rng_() % 255);
        return s;
    }
    Record record() { return {num<uint8_t>(), num<uint64_t>(), string(10)}; }

    std::mt19937_64 rng_;
    std::deque<std::vector<std::byte>> blobs_;
    std::deque<std::string> strings_;
};

template <class T>
uint64_t bits(T v) {
    if constexpr (sizeof(T) == 4)
        return std::bit_cast<uint32_t>(v);
    else
        return std::bit_cast<uint64_t>(v);
}

void check_same(const Everything& a, const Everything& b) {
    CHECK(a.u8 == b.u8);
    CHECK(a.i8 == b.i8);
    CHECK(a.flag == b.flag);
    CHECK(a.ch == b.ch);
    CHECK(a.octet == b.octet);
    CHECK(a.i32 == b.i32);
    CHECK(a.u32 == b.u32);
    CHECK(a.i64 == b.i64);
    CHECK(a.u64 == b.u64);
    CHECK(a.size == b.size);
    CHECK(bits(a.f32) == bits(b.f32));
    CHECK(bits(a.f64) == bits(b.f64));
    CHECK(a.e8 == b.e8);
    CHECK(a.e32 == b.e32);
    CHECK(a.e64 == b.e64);
    CHECK(a.words == b.words);
    CHECK(a.tag == b.tag);
    CHECK(a.triple == b.triple);
    CHECK(hex(a.blob) == hex(b.blob));
    CHECK(a.list == b.list);
    CHECK(a.octets == b.octets);
    CHECK(a.names == b.names);
    CHECK(a.text == b.text);
    CHECK(a.view == b.view);
    CHECK(a.maybe == b.maybe);
    CHECK(a.maybe_text == b.maybe_text);
    CHECK(a.record == b.record);
    CHECK(a.records == b.records);
    CHECK(a.maybe_record == b.maybe_record);
}

} // namespace

TEST_CASE("random messages of every type round-trip exactly", "[wire][property]") {
    Generator gen(0x5eed'a91f'0002);
    for (int i = 0; i < 2000; ++i) {
        INFO("iteration " << i);
        Everything v = gen.next();
        auto buf = apir_test::encode_to_vector(v);
        REQUIRE(buf.size() % 4 == 0);

        apir::Decoder d(buf);
        auto back = d.get<Everything>();
        REQUIRE(back.has_value());
        CHECK(d.remaining() == 0);
        check_same(v, *back);
        // Decoded views point into the message, not into the original storage.
        if (!back->view.empty()) {
            auto* p = reinterpret_cast<const std::byte*>(back->view.data());
            CHECK((p >= buf.data() && p < buf.data() + buf.size()));
        }
        // Re-encoding the decoded value gives the same bytes.
        CHECK(apir_test::encode_to_vector(*back) == buf);
    }
}

TEST_CASE("every truncated prefix of a message fails to decode, naming the error",
          "[wire][property][errors]") {
    Generator gen(0x7a11);
    for (int i = 0; i < 8; ++i) {
        Everything v = gen.next();
        auto msg = apir_test::encode_to_vector(v);
        for (size_t n = 0; n < msg.size(); ++n) {
            INFO("message " << i << ": prefix of " << n << " of " << msg.size() << " bytes");
            // A separate heap block of exactly n bytes, so a sanitizer sees any over-read.
            std::vector<std::byte> prefix(msg.begin(), msg.begin() + static_cast<ptrdiff_t>(n));
            Errc e = decode_error<Everything>(prefix);
            CHECK((e == Errc::decode_overrun || e == Errc::decode_size_too_large));
        }
    }

    SECTION("and the golden record too") {
        auto msg = bytes("7f 00 00 00 02 01 00 00 00 00 00 00 03 00 00 00 00 00 00 00 61 62 00 00");
        for (size_t n = 0; n < msg.size(); ++n) {
            INFO("prefix of " << n << " bytes");
            std::vector<std::byte> prefix(msg.begin(), msg.begin() + static_cast<ptrdiff_t>(n));
            Errc e = decode_error<Record>(prefix);
            CHECK((e == Errc::decode_overrun || e == Errc::decode_size_too_large));
        }
    }
}

TEST_CASE("encoding a message into every shorter span overflows without writing past it",
          "[wire][property][encode]") {
    Generator gen(0xc0de);
    for (int i = 0; i < 4; ++i) {
        Everything v = gen.next();
        auto reference = apir_test::encode_to_vector(v);
        std::vector<std::byte> backing(reference.size() + 16);
        for (size_t n = 0; n <= reference.size(); ++n) {
            INFO("message " << i << ": span of " << n << " for " << reference.size() << " bytes");
            std::fill(backing.begin(), backing.end(), canary);
            apir::Encoder e(std::span<std::byte>(backing).first(n));
            e.put(v);
            CHECK(untouched(std::span(backing).subspan(n)));
            if (n < reference.size()) {
                CHECK_FALSE(e.ok());
                CHECK(e.status().error().code() == Errc::encode_overflow);
            } else {
                REQUIRE(e.ok());
                CHECK(hex(e.written()) == hex(reference));
            }
        }
    }
}

TEST_CASE("corrupted messages decode or fail with a decode error, never crash",
          "[wire][property][errors]") {
    Generator gen(0xbad'b17e);
    const std::set<Errc> decode_errors{Errc::decode_overrun, Errc::decode_size_too_large,
                                       Errc::decode_missing_nul, Errc::decode_bad_value};
    int failures = 0;
    for (int i = 0; i < 3000; ++i) {
        Everything v = gen.next();
        auto msg = apir_test::encode_to_vector(v);
        // Flip one to four random bytes, sometimes cut the message short too.
        int flips = 1 + static_cast<int>(gen.rng()() % 4);
        for (int f = 0; f < flips; ++f)
            msg[gen.rng()() % msg.size()] = static_cast<std::byte>(gen.rng()());
        if (gen.rng()() % 4 == 0) msg.resize(gen.rng()() % msg.size());

        apir::Decoder d(msg);
        auto r = d.get<Everything>();
        if (!r) {
            ++failures;
            INFO("iteration " << i << ": " << r.error().message());
            CHECK(decode_errors.count(r.error().code()) == 1);
        }
    }
    // Most corruptions hit a prefix, flag or NUL; make sure the loop exercised errors.
    CHECK(failures > 100);
}
