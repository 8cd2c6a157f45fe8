// The wire codec: Encoder and Decoder over byte spans, and the wire_traits
// customization point that says how a type travels (APIR 0.2 "command stream").
//
// Rules (little-endian, every field a multiple of 4 bytes):
//   bool, 8-bit integers      4 bytes, value in the first byte, the rest zero
//   32-bit integers, float    4 bytes
//   64-bit integers, double   8 bytes (size_t always travels as 64 bits)
//   std::array<T, N>          N elements, no prefix (byte arrays padded to 4)
//   apir::Bytes (a blob)      uint64 byte count, then the bytes padded to 4
//   std::vector<T>            uint64 element count, then the elements
//   string / string_view      uint64 strlen+1, then the chars and NUL, padded to 4
//   std::optional<T>          uint64 1 or 0, then the value if present
//   a struct                  its wire_fields, in order
//
// A struct says once how it travels:
//
//     struct AddRequest {
//         int32_t a;
//         int32_t b;
//         static constexpr auto wire_fields = apir::fields(&AddRequest::a, &AddRequest::b);
//     };
//     apir::Encoder enc(buffer);
//     enc.put(AddRequest{1, 2});                // 8 bytes
//     apir::Decoder dec(enc.written());
//     auto req = dec.get<AddRequest>();          // Expected<AddRequest>
//
// Both sides are bounds-checked: a write past the end or a read past the end sets a
// sticky error (ok() turns false, status() names it) and never touches memory
// outside the span. Views (Bytes, std::string_view) decode in place without copying.
#pragma once

#include "apir/export.hpp"

#include "apir/error.hpp"

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

static_assert(std::endian::native == std::endian::little,
              "the APIR wire format is little-endian; this codec assumes a little-endian host");

namespace apir {

/// A blob: travels as a uint64 byte count and the bytes, padded to 4.
/// Decodes in place (a view into the decoder's buffer).
using Bytes = std::span<const std::byte>;

[[nodiscard]] constexpr size_t wire_align(size_t n) noexcept {
    return (n + 3) & ~size_t{3};
}

template <class T, class Enable = void>
struct wire_traits; // specialize to teach the codec a type

class Encoder;
class Decoder;

/// A type the codec knows how to encode and decode.
template <class T>
concept Wire = requires(Encoder& e, Decoder& d, const T& cv, T& v) {
    wire_traits<T>::encode(e, cv);
    wire_traits<T>::decode(d, v);
};

/// Writes the wire format into a caller-owned span. Never writes outside it.
class Encoder {
public:
    Encoder() = default;
    explicit Encoder(std::span<std::byte> buf) noexcept
        : begin_(buf.data()), cur_(buf.data()), end_(buf.data() + buf.size()) {}

    /// Bytes written so far.
    [[nodiscard]] size_t size() const noexcept { return static_cast<size_t>(cur_ - begin_); }
    [[nodiscard]] size_t remaining() const noexcept { return static_cast<size_t>(end_ - cur_); }
    [[nodiscard]] std::span<const std::byte> written() const noexcept { return {begin_, size()}; }
    [[nodiscard]] bool ok() const noexcept { return !overflow_; }
    [[nodiscard]] Expected<void> status() const {
        if (!overflow_) return {};
        return fail(Errc::encode_overflow,
                    fmt::format("{} byte buffer", static_cast<size_t>(end_ - begin_)));
    }

    void write_u32(uint32_t v) noexcept { write_scalar(v); }
    void write_u64(uint64_t v) noexcept { write_scalar(v); }

    /// n bytes, then zero padding to a multiple of 4. No length prefix.
    void write_bytes(const void* data, size_t n) noexcept {
        std::byte* p = reserve(n);
        if (p && n) std::memcpy(p, data, n);
    }
    void write_bytes(Bytes b) noexcept { write_bytes(b.data(), b.size()); }

    /// Reserves n bytes (plus zeroed padding) for the caller to fill in place.
    /// Returns nullptr (and sets the overflow flag) when they do not fit.
    [[nodiscard]] std::byte* reserve(size_t n) noexcept {
        size_t padded = wire_align(n);
        if (overflow_ || padded < n || padded > remaining()) {
            overflow_ = true;
            return nullptr;
        }
        std::byte* p = cur_;
        if (padded != n) std::memset(p + n, 0, padded - n);
        cur_ += padded;
        return p;
    }

    /// Encodes any Wire type.
    template <class T>
    Encoder& put(const T& v) noexcept {
        static_assert(Wire<T>, "apir::Encoder::put: no wire_traits for this type; give the "
                               "struct a 'static constexpr auto wire_fields = apir::fields(...)' "
                               "or specialize apir::wire_traits");
        wire_traits<T>::encode(*this, v);
        return *this;
    }
    template <class... T>
    Encoder& put_all(const T&... v) noexcept {
        (put(v), ...);
        return *this;
    }

private:
    template <class U>
    void write_scalar(U v) noexcept {
        if (overflow_ || remaining() < sizeof(U)) {
            overflow_ = true;
            return;
        }
        std::memcpy(cur_, &v, sizeof(U));
        cur_ += sizeof(U);
    }

    std::byte* begin_ = nullptr;
    std::byte* cur_ = nullptr;
    std::byte* end_ = nullptr;
    bool overflow_ = false;
};

/// Reads the wire format from a span. A read past the end, a lying size prefix or a
/// malformed value sets a sticky error; later reads return zeros and empty views.
class Decoder {
public:
    /// Largest allocation a single owning decode (std::string, std::vector) may make.
    static constexpr size_t default_max_alloc = size_t{64} << 20;

    Decoder() = default;
    explicit Decoder(std::span<const std::byte> buf, size_t max_alloc = default_max_alloc) noexcept
        : begin_(buf.data()), cur_(buf.data()), end_(buf.data() + buf.size()),
          max_alloc_(max_alloc) {}

    [[nodiscard]] size_t consumed() const noexcept { return static_cast<size_t>(cur_ - begin_); }
    [[nodiscard]] size_t remaining() const noexcept { return static_cast<size_t>(end_ - cur_); }
    [[nodiscard]] std::span<const std::byte> rest() const noexcept { return {cur_, remaining()}; }
    [[nodiscard]] size_t max_alloc() const noexcept { return max_alloc_; }
    [[nodiscard]] bool ok() const noexcept { return !failed_; }
    /// The first error, with the offset where it happened.
    [[nodiscard]] Expected<void> status() const {
        if (!failed_) return {};
        return fail(
            err_, fmt::format("at byte {} of {}", err_offset_, static_cast<size_t>(end_ - begin_)));
    }
    /// Records an error (the first one wins) and stops further reads.
    void set_error(Errc e) noexcept {
        if (failed_) return;
        failed_ = true;
        err_ = e;
        err_offset_ = consumed();
        cur_ = end_;
    }

    [[nodiscard]] uint32_t read_u32() noexcept { return read_scalar<uint32_t>(); }
    [[nodiscard]] uint64_t read_u64() noexcept { return read_scalar<uint64_t>(); }

    /// n bytes in place (and skips the padding to 4). Empty on error.
    [[nodiscard]] Bytes read_bytes(size_t n) noexcept {
        size_t padded = wire_align(n);
        if (failed_ || padded < n || padded > remaining()) {
            set_error(Errc::decode_overrun);
            return {};
        }
        const std::byte* p = cur_;
        cur_ += padded;
        return {p, n};
    }

    /// A uint64 size prefix counting elements of elem_size bytes. Validated before
    /// use: the elements must fit the remaining bytes and max_count.
    [[nodiscard]] size_t read_count(size_t elem_size, uint64_t max_count = UINT64_MAX) noexcept {
        uint64_t n = read_u64();
        if (failed_) return 0;
        if (n > max_count || (elem_size && n > remaining() / elem_size)) {
            set_error(Errc::decode_size_too_large);
            return 0;
        }
        return static_cast<size_t>(n);
    }

    /// Decodes into an existing object; false (and a sticky error) on failure.
    template <class T>
    bool get_into(T& out) noexcept {
        static_assert(Wire<T>, "apir::Decoder::get: no wire_traits for this type");
        wire_traits<T>::decode(*this, out);
        return ok();
    }
    /// Decodes one value.
    template <class T>
    [[nodiscard]] Expected<T> get() {
        T v{};
        if (!get_into(v)) return Unexpected{status().error()};
        return v;
    }

private:
    template <class U>
    U read_scalar() noexcept {
        U v{};
        if (failed_ || remaining() < sizeof(U)) {
            set_error(Errc::decode_overrun);
            return v;
        }
        std::memcpy(&v, cur_, sizeof(U));
        cur_ += sizeof(U);
        return v;
    }

    const std::byte* begin_ = nullptr;
    const std::byte* cur_ = nullptr;
    const std::byte* end_ = nullptr;
    size_t max_alloc_ = default_max_alloc;
    size_t err_offset_ = 0;
    Errc err_ = Errc::decode_overrun;
    bool failed_ = false;
};

// ---------------------------------------------------------------------------
// wire_traits for the built-in types

namespace detail {
template <class T>
inline constexpr bool is_scalar_wire_v = (std::is_arithmetic_v<T> ||
                                          std::is_enum_v<T>)&&!std::is_const_v<T>;
template <class T>
inline constexpr bool is_byte_like_v = sizeof(T) == 1 &&
                                       (std::is_integral_v<T> || std::is_same_v<T, std::byte>);
} // namespace detail

/// Scalars: 1- and 4-byte types take 4 bytes, 8-byte types 8.
template <class T>
struct wire_traits<T, std::enable_if_t<detail::is_scalar_wire_v<T>>> {
    static_assert(sizeof(T) == 1 || sizeof(T) == 4 || sizeof(T) == 8,
                  "APIR has no 2-byte scalar; widen the field to 32 bits");
    static constexpr size_t wire_size = sizeof(T) == 8 ? 8 : 4;

    static void encode(Encoder& e, const T& v) noexcept {
        if constexpr (sizeof(T) == 8) {
            uint64_t u;
            std::memcpy(&u, &v, 8);
            e.write_u64(u);
        } else if constexpr (sizeof(T) == 4) {
            uint32_t u;
            std::memcpy(&u, &v, 4);
            e.write_u32(u);
        } else {
            uint8_t b;
            if constexpr (std::is_same_v<T, bool>)
                b = v ? 1 : 0;
            else
                std::memcpy(&b, &v, 1);
            e.write_u32(b); // the other 3 bytes are zero
        }
    }
    static void decode(Decoder& d, T& v) noexcept {
        if constexpr (sizeof(T) == 8) {
            uint64_t u = d.read_u64();
            std::memcpy(&v, &u, 8);
        } else if constexpr (sizeof(T) == 4) {
            uint32_t u = d.read_u32();
            std::memcpy(&v, &u, 4);
        } else {
            // ggml writes only the first byte; the other three may hold garbage.
            uint8_t b = static_cast<uint8_t>(d.read_u32() & 0xff);
            if constexpr (std::is_same_v<T, bool>)
                v = b != 0;
            else
                std::memcpy(&v, &b, 1);
        }
    }
};

/// Fixed-size arrays: no prefix. Byte arrays are a char array padded to 4.
template <class T, size_t N>
struct wire_traits<std::array<T, N>> {
    static void encode(Encoder& e, const std::array<T, N>& a) noexcept {
        if constexpr (detail::is_byte_like_v<T>)
            e.write_bytes(a.data(), N);
        else
            for (const T& x : a)
                e.put(x);
    }
    static void decode(Decoder& d, std::array<T, N>& a) noexcept {
        if constexpr (detail::is_byte_like_v<T>) {
            Bytes b = d.read_bytes(N);
            if (d.ok() && N)
                std::memcpy(a.data(), b.data(), N);
            else
                a.fill(T{}); // like every other read after an error: zeros
        } else {
            for (T& x : a)
                d.get_into(x);
        }
    }
};

/// A blob view: uint64 byte count, bytes padded to 4; decodes in place.
template <>
struct wire_traits<Bytes> {
    static constexpr bool is_view = true;
    static void encode(Encoder& e, const Bytes& b) noexcept {
        e.write_u64(b.size());
        e.write_bytes(b);
    }
    static void decode(Decoder& d, Bytes& b) noexcept {
        size_t n = d.read_count(1);
        b = d.read_bytes(n);
    }
};

/// A variable array: uint64 element count, then the elements (decoded by copy,
/// allocation capped by the decoder's max_alloc and the remaining bytes).
template <class T>
struct wire_traits<std::vector<T>> {
    static_assert(!std::is_same_v<T, bool>, "std::vector<bool> has no wire layout; use "
                                            "std::vector<uint8_t>");
    static_assert(!std::is_empty_v<T>, "a vector of empty elements has no wire layout");
    static void encode(Encoder& e, const std::vector<T>& v) noexcept {
        e.write_u64(v.size());
        if constexpr (detail::is_byte_like_v<T>)
            e.write_bytes(v.data(), v.size());
        else
            for (const T& x : v)
                e.put(x);
    }
    static void decode(Decoder& d, std::vector<T>& v) {
        // Every element takes at least one byte (4 for non-byte types) on the wire.
        constexpr size_t min_wire = detail::is_byte_like_v<T> ? 1 : 4;
        size_t n = d.read_count(min_wire, d.max_alloc() / sizeof(T));
        v.clear();
        if (!d.ok()) return;
        if constexpr (detail::is_byte_like_v<T>) {
            Bytes b = d.read_bytes(n);
            if (!d.ok()) return;
            v.resize(n);
            if (n) std::memcpy(v.data(), b.data(), n);
        } else {
            v.resize(n);
            for (T& x : v)
                if (!d.get_into(x)) break;
            if (!d.ok()) v.clear();
        }
    }
};

namespace detail {
inline void encode_string(Encoder& e, std::string_view s) noexcept {
    e.write_u64(s.size() + 1);
    std::byte* p = e.reserve(s.size() + 1);
    if (!p) return;
    if (!s.empty()) std::memcpy(p, s.data(), s.size());
    p[s.size()] = std::byte{0};
}
/// Validates the size prefix and the terminating NUL; returns the chars without it.
inline std::string_view decode_string(Decoder& d, size_t cap) noexcept {
    size_t n = d.read_count(1, cap);
    if (!d.ok()) return {};
    if (n == 0) {
        d.set_error(Errc::decode_missing_nul);
        return {};
    }
    Bytes b = d.read_bytes(n);
    if (!d.ok()) return {};
    if (b[n - 1] != std::byte{0}) {
        d.set_error(Errc::decode_missing_nul);
        return {};
    }
    return {reinterpret_cast<const char*>(b.data()), n - 1};
}
} // namespace detail

/// A string view decodes in place (pointing into the decoder's buffer).
template <>
struct wire_traits<std::string_view> {
    static constexpr bool is_view = true;
    static void encode(Encoder& e, const std::string_view& s) noexcept {
        detail::encode_string(e, s);
    }
    static void decode(Decoder& d, std::string_view& s) noexcept {
        s = detail::decode_string(d, UINT64_MAX);
    }
};

template <>
struct wire_traits<std::string> {
    static void encode(Encoder& e, const std::string& s) noexcept { detail::encode_string(e, s); }
    static void decode(Decoder& d, std::string& s) {
        s.assign(detail::decode_string(d, d.max_alloc()));
    }
};

/// An optional pointer: uint64 1 (present) or 0 (absent), then the value.
template <class T>
struct wire_traits<std::optional<T>> {
    static void encode(Encoder& e, const std::optional<T>& o) noexcept {
        e.write_u64(o ? 1 : 0);
        if (o) e.put(*o);
    }
    static void decode(Decoder& d, std::optional<T>& o) {
        uint64_t flag = d.read_u64();
        o.reset();
        if (!d.ok()) return;
        if (flag > 1) {
            d.set_error(Errc::decode_bad_value);
            return;
        }
        if (flag) {
            o.emplace();
            if (!d.get_into(*o)) o.reset();
        }
    }
};

// ---------------------------------------------------------------------------
// Structs: a list of member pointers

template <class... M>
struct FieldList {
    std::tuple<M...> members;
};

/// Lists a struct's members in wire order (see the example at the top).
template <class... M>
requires(std::is_member_object_pointer_v<M>&&...) constexpr FieldList<M...> fields(
    M... m) noexcept {
    return {std::tuple<M...>{m...}};
}

/// The empty message (a call without request or reply payload).
struct Empty {
    static constexpr auto wire_fields = FieldList<>{};
    friend bool operator==(const Empty&, const Empty&) = default;
};

template <class T>
concept WireStruct = requires {
    T::wire_fields.members;
};

template <WireStruct T>
struct wire_traits<T> {
    static void encode(Encoder& e, const T& v) noexcept {
        std::apply([&](auto... m) { (e.put(v.*m), ...); }, T::wire_fields.members);
    }
    static void decode(Decoder& d, T& v) {
        std::apply([&](auto... m) { (d.get_into(v.*m), ...); }, T::wire_fields.members);
    }
};

namespace detail {
template <class T>
struct member_type;
template <class C, class M>
struct member_type<M C::*> {
    using type = M;
};

template <class T>
constexpr bool wire_has_view() {
    if constexpr (requires { wire_traits<T>::is_view; }) {
        return wire_traits<T>::is_view;
    } else if constexpr (WireStruct<T>) {
        return std::apply(
            [](auto... m) {
                return (false || ... || wire_has_view<typename member_type<decltype(m)>::type>());
            },
            T::wire_fields.members);
    } else if constexpr (requires { typename T::value_type; }) {
        // Containers (std::optional, std::vector, std::array) hold views if their
        // elements do.
        return wire_has_view<std::remove_cv_t<typename T::value_type>>();
    } else {
        return false;
    }
}
} // namespace detail

/// True when decoding T yields views into the decoder's buffer (Bytes,
/// std::string_view), so a decoded T must not outlive that buffer.
template <class T>
inline constexpr bool wire_has_view_v = detail::wire_has_view<T>();

/// Encodes one value into buf; returns the bytes written or ENCODE_OVERFLOW.
template <class T>
[[nodiscard]] Expected<size_t> encode(std::span<std::byte> buf, const T& v) {
    Encoder e(buf);
    e.put(v);
    APIR_TRY(e.status());
    return e.size();
}

/// Decodes one value that must fill the whole of buf.
template <class T>
[[nodiscard]] Expected<T> decode_exact(std::span<const std::byte> buf) {
    Decoder d(buf);
    auto v = d.get<T>();
    if (v && d.remaining() != 0)
        return fail(Errc::decode_bad_value, fmt::format("{} trailing bytes", d.remaining()));
    return v;
}

} // namespace apir
