// The demo backend's remote functions: shared by the guest (typed calls) and the
// backend library (which decodes the same structs). This is the file a user writes
// once per backend.
#pragma once

#include <apir/call.hpp>

#include <cstdint>
#include <string>

namespace demo {

enum Command : uint32_t {
    cmd_echo = 0,
    cmd_add = 1,
    cmd_checksum = 2,
    cmd_fail = 3,
    cmd_sleep = 4,
    cmd_big_reply = 5,
    cmd_fill = 6,
    cmd_count = 7,
};

struct EchoRequest {
    uint64_t tag = 0;
    std::string text;
    static constexpr auto wire_fields = apir::fields(&EchoRequest::tag, &EchoRequest::text);
};
struct EchoReply {
    uint64_t tag = 0;
    std::string text;
    static constexpr auto wire_fields = apir::fields(&EchoReply::tag, &EchoReply::text);
};

struct AddRequest {
    int64_t a = 0;
    int64_t b = 0;
    static constexpr auto wire_fields = apir::fields(&AddRequest::a, &AddRequest::b);
};
struct AddReply {
    int64_t sum = 0;
    static constexpr auto wire_fields = apir::fields(&AddReply::sum);
};

/// A range of a shared-memory blob, named by resource id.
struct BlobRange {
    uint32_t res_id = 0;
    uint64_t offset = 0;
    uint64_t size = 0;
    uint64_t seed = 0; // used by cmd_fill
    static constexpr auto wire_fields =
        apir::fields(&BlobRange::res_id, &BlobRange::offset, &BlobRange::size, &BlobRange::seed);
};
struct ChecksumReply {
    uint64_t checksum = 0;
    static constexpr auto wire_fields = apir::fields(&ChecksumReply::checksum);
};

struct FailRequest {
    uint32_t code = 0;
    static constexpr auto wire_fields = apir::fields(&FailRequest::code);
};
struct SleepRequest {
    uint32_t milliseconds = 0;
    static constexpr auto wire_fields = apir::fields(&SleepRequest::milliseconds);
};
/// Asks for a reply of `bytes` bytes: larger than the reply page, it fails.
struct BigReplyRequest {
    uint64_t bytes = 0;
    static constexpr auto wire_fields = apir::fields(&BigReplyRequest::bytes);
};
struct BigReply {
    std::vector<uint8_t> data;
    static constexpr auto wire_fields = apir::fields(&BigReply::data);
};

/// A command's name, for logs and tables; null for an id the backend does not know.
constexpr const char* command_name(uint32_t id) {
    switch (id) {
    case cmd_echo:
        return "Echo";
    case cmd_add:
        return "Add";
    case cmd_checksum:
        return "Checksum";
    case cmd_fail:
        return "Fail";
    case cmd_sleep:
        return "Sleep";
    case cmd_big_reply:
        return "BigReply";
    case cmd_fill:
        return "Fill";
    default:
        return nullptr;
    }
}

/// The backend's own return codes.
inline constexpr uint32_t error_bad_request = 1;
inline constexpr uint32_t error_bad_resource = 2;
inline constexpr uint32_t error_reply_overflow = 3;

using Echo = apir::Forward<cmd_echo, EchoRequest, EchoReply>;
using Add = apir::Forward<cmd_add, AddRequest, AddReply>;
using Checksum = apir::Forward<cmd_checksum, BlobRange, ChecksumReply>;
using Fill = apir::Forward<cmd_fill, BlobRange>;
using Fail = apir::Forward<cmd_fail, FailRequest>;
using Sleep = apir::Forward<cmd_sleep, SleepRequest>;
using Big = apir::Forward<cmd_big_reply, BigReplyRequest, BigReply>;

/// FNV-1a over 8-byte words (tail bytewise): fast enough for 64 MiB, order-sensitive.
inline uint64_t checksum(const std::byte* p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        h = (h ^ w) * 1099511628211ull;
    }
    for (; i < n; ++i)
        h = (h ^ static_cast<uint8_t>(p[i])) * 1099511628211ull;
    return h;
}

/// Deterministic bytes for cmd_fill and its checks.
inline void fill_pattern(std::byte* p, size_t n, uint64_t seed) {
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = static_cast<std::byte>(x);
    }
}

} // namespace demo
