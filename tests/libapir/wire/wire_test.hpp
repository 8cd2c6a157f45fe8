// Helpers shared by the wire-layer tests.
//
// Golden bytes are written as hex strings ("7f 00 00 00"): hex() prints encoded
// bytes that way and bytes() parses such a string back. The Catch printers make a
// failed check show error names ("DECODE_OVERRUN") instead of numbers.
#pragma once

#include "catch.hpp"

#include <apir/error.hpp>
#include <apir/wire.hpp>

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace apir_test {

/// "7f 00 00 00": lower-case bytes separated by single spaces.
inline std::string hex(std::span<const std::byte> b) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s;
    for (std::byte x : b) {
        if (!s.empty()) s += ' ';
        s += digits[static_cast<unsigned>(x) >> 4];
        s += digits[static_cast<unsigned>(x) & 0xf];
    }
    return s;
}

/// Parses hex() output; spaces are ignored. Test data only: other characters read as 0.
inline std::vector<std::byte> bytes(std::string_view text) {
    auto nibble = [](char c) -> unsigned {
        if (c >= '0' && c <= '9') return static_cast<unsigned>(c - '0');
        if (c >= 'a' && c <= 'f') return static_cast<unsigned>(c - 'a' + 10);
        return 0;
    };
    std::vector<std::byte> out;
    unsigned acc = 0;
    bool high_done = false;
    for (char c : text) {
        if (c == ' ') continue;
        acc = acc << 4 | nibble(c);
        if (high_done) {
            out.push_back(static_cast<std::byte>(acc));
            acc = 0;
        }
        high_done = !high_done;
    }
    return out;
}

/// Encodes v into a 4 KiB buffer and returns its bytes as hex, or "overflow".
template <class T>
std::string encoded(const T& v) {
    std::vector<std::byte> buf(4096);
    apir::Encoder e(buf);
    e.put(v);
    if (!e.ok()) return "overflow";
    return hex(e.written());
}

/// Encodes v into a fresh, exactly sized vector. The encoder writes into one 1 MiB
/// scratch buffer made once per thread: a zero-filled 1 MiB vector per call cost the
/// random round-trip test most of its time (memset and page faults).
template <class T>
std::vector<std::byte> encode_to_vector(const T& v) {
    thread_local std::vector<std::byte> scratch(size_t{1} << 20);
    apir::Encoder e(scratch);
    e.put(v);
    REQUIRE(e.ok());
    auto out = e.written();
    return {out.begin(), out.end()};
}

} // namespace apir_test

namespace Catch {
template <>
struct StringMaker<apir::Errc> {
    static std::string convert(apir::Errc e) { return std::string(apir::error_info(e).name); }
};
template <>
struct StringMaker<apir::Category> {
    static std::string convert(apir::Category c) { return std::string(apir::category_name(c)); }
};
template <>
struct StringMaker<apir::Error> {
    static std::string convert(const apir::Error& e) { return e.message(); }
};
template <class T>
struct StringMaker<apir::Expected<T>> {
    static std::string convert(const apir::Expected<T>& r) {
        if (!r) return "error: " + r.error().message();
        if constexpr (std::is_void_v<T>)
            return "success";
        else
            return "value: " + Catch::Detail::stringify(*r);
    }
};
} // namespace Catch
