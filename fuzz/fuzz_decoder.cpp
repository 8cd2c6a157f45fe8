// Fuzz target: the wire Decoder with every typed decode.
//
// Input: byte 0 picks a decode cap (max_alloc), byte 1 and 2 pick two types from
// the table below, the rest is the message. Each type is decoded from the message,
// then from what remains; a value that decodes is encoded again and must decode to
// the same value. Whatever the bytes, a decode ends in a value or a named error, never
// reads outside the span, and an allocation never exceeds the cap.
#include <apir/call.hpp>
#include <apir/wire.hpp>

#include "demo_protocol.hpp"

#include <array>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

[[noreturn]] void violated(const char* what) {
    fmt::print(stderr, "fuzz-decoder: invariant violated: {}\n", what);
    std::abort();
}
void require(bool ok, const char* what) {
    if (!ok) violated(what);
}

struct Nested {
    uint8_t small = 0;
    std::optional<std::vector<uint32_t>> ids;
    std::vector<std::string> names;
    std::array<int64_t, 2> pair{};
    bool flag = false;
    static constexpr auto wire_fields =
        apir::fields(&Nested::small, &Nested::ids, &Nested::names, &Nested::pair, &Nested::flag);
    friend bool operator==(const Nested&, const Nested&) = default;
};

template <class T>
bool same(const T& a, const T& b) {
    if constexpr (apir::WireStruct<T>) {
        // Structs without operator==: compare their wire fields one by one.
        return std::apply([&](auto... m) { return (same(a.*m, b.*m) && ...); },
                          T::wire_fields.members);
    } else if constexpr (std::is_floating_point_v<T>) {
        return std::memcmp(&a, &b, sizeof(T)) == 0; // NaN payloads travel unchanged
    } else if constexpr (std::is_same_v<T, apir::Bytes>) {
        return a.size() == b.size() &&
               (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
    } else {
        return a == b;
    }
}

// Views decode in place: the value must lie inside the message.
bool inside(apir::Bytes whole, const void* p, size_t n) {
    auto b = reinterpret_cast<const std::byte*>(p);
    return n == 0 || (b >= whole.data() && b + n <= whole.data() + whole.size());
}

template <class T>
void check_views(apir::Bytes whole, const T& v) {
    if constexpr (std::is_same_v<T, apir::Bytes>)
        require(inside(whole, v.data(), v.size()), "a Bytes view points outside the message");
    else if constexpr (std::is_same_v<T, std::string_view>)
        require(inside(whole, v.data(), v.size() + 1), "a string view points outside the message");
}

template <class T>
void decode_one(apir::Decoder& d, apir::Bytes whole) {
    const size_t before = d.consumed();
    T v{};
    const bool ok = d.get_into(v);
    require(d.consumed() >= before && d.consumed() <= whole.size(),
            "decoder position out of range");
    if (!ok) {
        require(d.remaining() == 0, "a failed decoder still has bytes to read");
        auto st = d.status();
        require(!st, "a failed decoder reports success");
        require(st.error().code() < apir::Errc::count_, "an unnamed decode error");
        require(st.error().name() != "UNKNOWN_ERROR", "an unnamed decode error");
        (void)st.error().message();
        return;
    }
    check_views(whole, v);
    const size_t used = d.consumed() - before;
    require(used % 4 == 0, "a field took a size that is not a multiple of 4");

    // Round trip: the value encodes into at most the bytes it came from and decodes
    // to itself.
    std::vector<std::byte> buf(used);
    apir::Encoder e(buf);
    e.put(v);
    require(e.ok(), "a decoded value does not encode into the bytes it came from");
    require(e.size() == used, "a decoded value encodes to a different size");
    apir::Decoder again(e.written(), d.max_alloc());
    T w{};
    require(again.get_into(w), "a re-encoded value does not decode");
    require(again.remaining() == 0, "a re-encoded value leaves trailing bytes");
    require(same(v, w), "a value changed in a round trip");
}

using DecodeFn = void (*)(apir::Decoder&, apir::Bytes);

// Every kind of field the codec knows, alone and nested.
constexpr std::array<DecodeFn, 32> decoders{
    &decode_one<bool>,
    &decode_one<uint8_t>,
    &decode_one<int8_t>,
    &decode_one<std::byte>,
    &decode_one<uint32_t>,
    &decode_one<int32_t>,
    &decode_one<uint64_t>,
    &decode_one<int64_t>,
    &decode_one<float>,
    &decode_one<double>,
    &decode_one<apir::CommandType>,
    &decode_one<std::array<uint8_t, 3>>,
    &decode_one<std::array<char, 9>>,
    &decode_one<std::array<uint32_t, 4>>,
    &decode_one<apir::Bytes>,
    &decode_one<std::vector<uint8_t>>,
    &decode_one<std::vector<uint32_t>>,
    &decode_one<std::vector<uint64_t>>,
    &decode_one<std::vector<std::string>>,
    &decode_one<std::vector<std::vector<uint8_t>>>,
    &decode_one<std::string>,
    &decode_one<std::string_view>,
    &decode_one<std::optional<uint64_t>>,
    &decode_one<std::optional<std::string>>,
    &decode_one<apir::Empty>,
    &decode_one<apir::HandshakeRequest>,
    &decode_one<apir::HandshakeReply>,
    &decode_one<demo::EchoRequest>,
    &decode_one<demo::BlobRange>,
    &decode_one<demo::BigReply>,
    &decode_one<Nested>,
    &decode_one<std::vector<Nested>>,
};

// Decode caps from tiny to the default, so that the cap itself gets exercised.
constexpr std::array<size_t, 4> caps{0, 16, 4096, apir::Decoder::default_max_alloc};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 3) return 0;
    const size_t cap = caps[data[0] % caps.size()];
    const DecodeFn first = decoders[data[1] % decoders.size()];
    const DecodeFn second = decoders[data[2] % decoders.size()];
    // An exact-size copy: ASan sees any read past the message.
    std::vector<std::byte> msg(size - 3);
    if (!msg.empty()) std::memcpy(msg.data(), data + 3, msg.size());
    apir::Bytes whole(msg);

    apir::Decoder d(whole, cap);
    first(d, whole);
    second(d, whole); // after an error this must read zeros, not memory

    // The raw readers on what is left, and a lying count.
    apir::Decoder raw(whole, cap);
    (void)raw.read_u32();
    const size_t n = raw.read_count(4, 1024);
    require(!raw.ok() || n <= raw.remaining() / 4, "read_count let a count past the bytes");
    (void)raw.read_bytes(n * 4);
    (void)raw.read_u64();
    return 0;
}
